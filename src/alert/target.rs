//! Where alerts go: a target URL, parsed, shown without its secrets, and
//! named by a fingerprint that gives nothing away.
//!
//! The spellings follow Apprise where it has one, so that people can reuse
//! their URLs:
//! - `exec:/path/to/program`;
//! - `ntfy://[user:pass@]host[:port]/topic`, `ntfys://…` (HTTPS), and
//!   `ntfy://topic` for ntfy.sh (over HTTPS);
//! - `json://[user:pass@]host[:port]/path`, `jsons://…`: a webhook.
//!
//! Credentials go only over TLS, or to this machine (loopback).

use std::fmt;
use std::path::PathBuf;

use percent_encoding::percent_decode_str;
use sha2::{Digest, Sha256};

/// Why a target URL was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TargetError {
    /// Not a scheme scuttlefs knows.
    #[error(
        "unknown alert target {0:?}: use exec:/path/to/program, ntfy://host/topic, \
         ntfys://host/topic or json://host/path (jsons:// for HTTPS)"
    )]
    Unknown(String),
    /// A scheme whose delivery is not built yet.
    #[error("{scheme} alert targets are not built yet; exec:, ntfy:// and json:// are")]
    NotYet {
        /// The scheme, with its `://`.
        scheme: String,
    },
    /// `exec:` with a relative path, which would depend on the daemon's
    /// working directory.
    #[error("exec: needs an absolute path, such as exec:/usr/local/bin/notify-me (got {0:?})")]
    RelativeProgram(String),
    /// A URL that does not have the parts its scheme needs.
    #[error("{url}: {why}")]
    Malformed {
        /// The URL, masked.
        url: String,
        /// What is wrong.
        why: &'static str,
    },
    /// Credentials over plain HTTP to another machine.
    #[error(
        "{0}: a user and password would cross the network unencrypted; use the TLS scheme \
         (ntfys://, jsons://)"
    )]
    CredentialsInTheClear(String),
}

/// An HTTP endpoint: where, and who to say we are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// HTTPS rather than HTTP.
    pub tls: bool,
    /// `host` or `host:port`.
    pub host: String,
    /// The path, beginning with `/`.
    pub path: String,
    /// Basic authentication, when given.
    pub credentials: Option<(String, String)>,
}

impl Endpoint {
    /// The URL requests go to.
    pub fn request_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}", self.host, self.path)
    }
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
    /// An ntfy server's topic (HTTP publish).
    Ntfy {
        /// The URL as given.
        url: String,
        /// The topic's endpoint.
        endpoint: Endpoint,
    },
    /// A webhook: a POST of the alert as JSON.
    Json {
        /// The URL as given.
        url: String,
        /// Where to POST.
        endpoint: Endpoint,
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
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(TargetError::Unknown(url.to_string()));
        };
        let (tls, ntfy) = match scheme {
            "ntfy" => (false, true),
            "ntfys" => (true, true),
            "json" => (false, false),
            "jsons" => (true, false),
            "mailto" | "mailtos" | "desktop" => {
                return Err(TargetError::NotYet {
                    scheme: format!("{scheme}://"),
                })
            }
            _ => return Err(TargetError::Unknown(url.to_string())),
        };
        let mut endpoint = endpoint(url, rest, tls)?;
        if ntfy && !rest.contains(['/', ':', '@']) {
            // `ntfy://topic`: a topic on ntfy.sh, which is only served
            // over HTTPS.
            endpoint = Endpoint {
                tls: true,
                host: "ntfy.sh".into(),
                path: format!("/{}", endpoint.host),
                credentials: None,
            };
        }
        let malformed = |why| TargetError::Malformed {
            url: mask(url),
            why,
        };
        if endpoint.host.is_empty() {
            return Err(malformed("no host"));
        }
        if ntfy && endpoint.path.trim_matches('/').is_empty() {
            return Err(malformed("no topic (ntfy://host/topic)"));
        }
        if endpoint.credentials.is_some() && !endpoint.tls && !is_loopback(&endpoint.host) {
            return Err(TargetError::CredentialsInTheClear(mask(url)));
        }
        let url = url.to_string();
        Ok(if ntfy {
            Target::Ntfy { url, endpoint }
        } else {
            Target::Json { url, endpoint }
        })
    }

    /// The URL as configured.
    pub fn url(&self) -> String {
        match self {
            Target::Exec { program } => format!("exec:{}", program.display()),
            Target::Ntfy { url, .. } | Target::Json { url, .. } => url.clone(),
        }
    }

    /// The URL with any password masked, for `alert list`, `status` and
    /// logs.
    pub fn masked(&self) -> String {
        mask(&self.url())
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

/// `rest` (what follows `scheme://`) as an endpoint; the query, if any,
/// is left out.
fn endpoint(url: &str, rest: &str, tls: bool) -> Result<Endpoint, TargetError> {
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let (userinfo, host) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    let credentials = match userinfo {
        Some(info) => {
            let (user, password) = info.split_once(':').ok_or(TargetError::Malformed {
                url: mask(url),
                why: "a user without a password (user:password@host)",
            })?;
            Some((decode(user), decode(password)))
        }
        None => None,
    };
    Ok(Endpoint {
        tls,
        host: host.to_string(),
        path: path.to_string(),
        credentials,
    })
}

/// `url` with the password of its `user:password@` (if any) replaced.
fn mask(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let user = authority[..at].split(':').next().unwrap_or("");
            format!(
                "{scheme}://{user}:****@{}{}",
                &authority[at + 1..],
                &rest[authority_end..]
            )
        }
        None => url.to_string(),
    }
}

/// Whether `host` (with or without a port) is this machine.
fn is_loopback(host: &str) -> bool {
    let name = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
            Target::parse("mailto://smtp.example.org?to=me@example.org"),
            Err(TargetError::NotYet {
                scheme: "mailto://".into()
            })
        );
        assert!(matches!(
            Target::parse("gopher://x"),
            Err(TargetError::Unknown(_))
        ));
    }

    #[test]
    fn ntfy_and_json_urls_become_endpoints_with_their_secrets_masked() {
        let Target::Ntfy { endpoint, .. } = Target::parse("ntfy://backups-4f2a").unwrap() else {
            panic!("ntfy");
        };
        assert_eq!(endpoint.request_url(), "https://ntfy.sh/backups-4f2a");
        let target = Target::parse("ntfys://me:p%40ss@ntfy.example.org:8443/backups").unwrap();
        let Target::Ntfy { endpoint, .. } = &target else {
            panic!("ntfy");
        };
        assert_eq!(
            endpoint.request_url(),
            "https://ntfy.example.org:8443/backups"
        );
        assert_eq!(
            endpoint.credentials,
            Some(("me".to_string(), "p@ss".to_string()))
        );
        assert_eq!(
            target.masked(),
            "ntfys://me:****@ntfy.example.org:8443/backups"
        );
        assert!(!target.masked().contains("p%40ss"));
        let Target::Json { endpoint, .. } =
            Target::parse("json://127.0.0.1:9000/hooks/backup?x=1").unwrap()
        else {
            panic!("json");
        };
        assert_eq!(endpoint.request_url(), "http://127.0.0.1:9000/hooks/backup");
        // Credentials in the clear only to this machine.
        assert!(matches!(
            Target::parse("json://me:secret@example.org/hook"),
            Err(TargetError::CredentialsInTheClear(url)) if !url.contains("secret")
        ));
        assert!(Target::parse("ntfy://me:secret@127.0.0.1:8080/t").is_ok());
        assert!(matches!(
            Target::parse("ntfy://example.org/"),
            Err(TargetError::Malformed { .. })
        ));
    }
}
