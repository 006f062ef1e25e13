//! Where alerts go: a target URL, parsed, shown without its secrets, and
//! named by a fingerprint that gives nothing away.
//!
//! The spellings follow Apprise where it has one, so that people can
//! reuse their URLs. Delivery is built for `exec:` so far; the other
//! schemes are recognised and refused with a clear message until their
//! delivery is.

use std::fmt;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

/// Why a target URL was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TargetError {
    /// Not a scheme scuttlefs knows.
    #[error(
        "unknown alert target {0:?}: use exec:/path/to/program (ntfy://, json://, mailto:// \
         and desktop:// are to come)"
    )]
    Unknown(String),
    /// A scheme whose delivery is not built yet.
    #[error("{scheme} alert targets are not built yet; exec:/path/to/program is")]
    NotYet {
        /// The scheme, with its `://`.
        scheme: String,
    },
    /// `exec:` with a relative path, which would depend on the daemon's
    /// working directory.
    #[error("exec: needs an absolute path, such as exec:/usr/local/bin/notify-me (got {0:?})")]
    RelativeProgram(String),
}

/// One place alerts go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A program, run with the alert in its environment and as JSON on
    /// its standard input.
    Exec {
        /// The program's absolute path.
        program: PathBuf,
    },
}

impl Target {
    /// Parses a target URL.
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let url = url.trim();
        if let Some(program) = url.strip_prefix("exec:") {
            if !program.starts_with('/') {
                return Err(TargetError::RelativeProgram(program.to_string()));
            }
            return Ok(Target::Exec {
                program: PathBuf::from(program),
            });
        }
        const LATER: [&str; 7] = [
            "ntfy://",
            "ntfys://",
            "json://",
            "jsons://",
            "mailto://",
            "mailtos://",
            "desktop://",
        ];
        match LATER.iter().find(|s| url.starts_with(*s)) {
            Some(scheme) => Err(TargetError::NotYet {
                scheme: scheme.to_string(),
            }),
            None => Err(TargetError::Unknown(url.to_string())),
        }
    }

    /// The URL as configured.
    pub fn url(&self) -> String {
        match self {
            Target::Exec { program } => format!("exec:{}", program.display()),
        }
    }

    /// The URL with any credentials masked, for `alert list`, `status` and
    /// logs.
    pub fn masked(&self) -> String {
        // exec: carries none.
        self.url()
    }

    /// A short name for the target that neither shows nor reveals its
    /// URL: what the alert state and the feed record deliveries by.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.url().as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_targets_parse_and_others_are_named() {
        let target = Target::parse("exec:/usr/local/bin/notify").expect("parses");
        assert_eq!(target.url(), "exec:/usr/local/bin/notify");
        assert_eq!(target.fingerprint().len(), 16);
        assert_ne!(
            target.fingerprint(),
            Target::parse("exec:/bin/true").unwrap().fingerprint()
        );
        assert_eq!(
            Target::parse("exec:notify"),
            Err(TargetError::RelativeProgram("notify".into()))
        );
        assert_eq!(
            Target::parse("ntfy://ntfy.sh/backups"),
            Err(TargetError::NotYet {
                scheme: "ntfy://".into()
            })
        );
        assert!(matches!(
            Target::parse("gopher://x"),
            Err(TargetError::Unknown(_))
        ));
    }
}
