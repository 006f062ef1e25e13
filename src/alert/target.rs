//! Where alerts go: a target URL, parsed, shown without its secrets, and
//! named by a fingerprint that gives nothing away.
//!
//! The spellings follow Apprise where it has one, so that people can reuse
//! their URLs:
//! - `exec:/path/to/program`;
//! - `ntfy://[user:pass@]host[:port]/topic`, `ntfys://…` (HTTPS), and
//!   `ntfy://topic` for ntfy.sh (over HTTPS);
//! - `json://[user:pass@]host[:port]/path`, `jsons://…`: a webhook;
//! - `mailto://[user:pass@]smtp-host[:port]?to=ADDR[&from=ADDR]`: SMTP
//!   submission (port 587), with STARTTLS when offered and required with
//!   credentials; `mailtos://…` with implicit TLS (port 465);
//! - `desktop://`: a notification on this machine's desktop, over D-Bus.
//!
//! Credentials go only over TLS; for HTTP also to this machine
//! (loopback).

use std::fmt;
use std::path::PathBuf;

use percent_encoding::percent_decode_str;
use sha2::{Digest, Sha256};

/// Why a target URL was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TargetError {
    /// Not a scheme scuttlefs knows.
    #[error(
        "unknown alert target {0:?}: use ntfy://host/topic (ntfys:// for HTTPS), \
         json://host/path (jsons://), mailto://smtp-host?to=ADDR (mailtos://), desktop:// \
         or exec:/path/to/program"
    )]
    Unknown(String),
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
    /// Mail, through an SMTP server.
    Mail {
        /// The URL as given.
        url: String,
        /// The server and the addresses.
        mail: MailServer,
    },
    /// A notification on this machine's desktop.
    Desktop,
}

/// An SMTP server to submit alerts to, and who they go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailServer {
    /// TLS from the first byte (`mailtos://`), rather than STARTTLS.
    pub implicit_tls: bool,
    /// The server's name (its certificate must match it).
    pub host: String,
    /// Its port: by default 587, or 465 with implicit TLS.
    pub port: u16,
    /// The login, when given: sent only over TLS.
    pub credentials: Option<(String, String)>,
    /// Where alerts go.
    pub to: Vec<String>,
    /// Who they come from, when given.
    pub from: Option<String>,
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
            "mailto" | "mailtos" => return mail(url, rest, scheme == "mailtos"),
            "desktop" if rest.trim_matches('/').is_empty() => return Ok(Target::Desktop),
            "desktop" => {
                return Err(TargetError::Malformed {
                    url: mask(url),
                    why: "desktop:// takes nothing after it: it is this machine's desktop",
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
            Target::Ntfy { url, .. } | Target::Json { url, .. } | Target::Mail { url, .. } => {
                url.clone()
            }
            Target::Desktop => "desktop://".into(),
        }
    }

    /// Whether other machines may alert the same place, so that the
    /// machines take turns ([`super::rank`]). A desktop is this machine's
    /// own: every machine with one shows its alerts there.
    pub fn shared(&self) -> bool {
        !matches!(self, Target::Desktop)
    }

    /// How long each machine waits after the one before it in an alert's
    /// turn: long enough for that one to deliver and announce it. A mail
    /// submission (connect, TLS, login, data) takes longer than a POST.
    pub fn handoff_ms(&self) -> f64 {
        match self {
            Target::Mail { .. } => 4.0 * super::HANDOFF_MS,
            _ => super::HANDOFF_MS,
        }
    }

    /// The URL with any password masked, for `alert list`, `status` and
    /// logs.
    pub fn masked(&self) -> String {
        mask(&self.url())
    }

    /// A short name for the target that neither shows nor reveals its
    /// URL: what the alert state and the feed record deliveries by. Made
    /// from the URL without its password, so that the feed gives nothing
    /// to guess a password against; a new password is the same place.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.masked().as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// A `mailto://` (or with `implicit_tls`, `mailtos://`) target; `rest` is
/// what follows the `://`.
fn mail(url: &str, rest: &str, implicit_tls: bool) -> Result<Target, TargetError> {
    let malformed = |why| TargetError::Malformed {
        url: mask(url),
        why,
    };
    let server = endpoint(url, rest, implicit_tls)?;
    let (host, port) = split_port(&server.host).ok_or(malformed("a port that is not a number"))?;
    if host.is_empty() {
        return Err(malformed(
            "no SMTP server (mailto://smtp.example.org?to=ADDR)",
        ));
    }
    let query = rest.split_once('?').map_or("", |(_, q)| q);
    let query = query.split('#').next().unwrap_or("");
    let (mut to, mut from) = (Vec::new(), None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        // RFC 6068: `+` is itself (me+alerts@example.org), not a space.
        let value = percent_decode_str(value).decode_utf8_lossy().into_owned();
        match name {
            "to" => to.extend(
                value
                    .split([',', ' '])
                    .filter(|a| !a.is_empty())
                    .map(str::to_string),
            ),
            "from" => from = Some(value),
            _ => {}
        }
    }
    // Apprise's shorthand: a login that is an address is also where the
    // mail goes.
    if to.is_empty() {
        match &server.credentials {
            Some((user, _)) if user.contains('@') => to.push(user.clone()),
            _ => return Err(malformed("no recipient: add ?to=you@example.org")),
        }
    }
    for address in to.iter().chain(&from) {
        if address.parse::<lettre::Address>().is_err() {
            return Err(malformed(
                "an address that is not one (to= and from= take user@domain)",
            ));
        }
    }
    Ok(Target::Mail {
        url: url.to_string(),
        mail: MailServer {
            implicit_tls,
            host: host.to_string(),
            port: port.unwrap_or(if implicit_tls { 465 } else { 587 }),
            credentials: server.credentials,
            to,
            from,
        },
    })
}

/// `host[:port]` apart; `None` when the port is not a number.
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let colon = match authority.strip_prefix('[') {
        // `[v6]:port`
        Some(v6) => v6
            .find(']')
            .map(|end| end + 2)
            .filter(|&at| at < authority.len()),
        None => authority.rfind(':'),
    };
    match colon {
        Some(at) if authority.as_bytes().get(at) == Some(&b':') => {
            let port = authority[at + 1..].parse().ok()?;
            let host = authority[..at]
                .trim_start_matches('[')
                .trim_end_matches(']');
            Some((host, Some(port)))
        }
        _ => Some((
            authority.trim_start_matches('[').trim_end_matches(']'),
            None,
        )),
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

/// `url` with the password of its `user:password@` (if any) replaced, a
/// password with a `/` in it too.
fn mask(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The credentials end at the authority's last `@`; failing that (a
    // password with an unencoded `/`), at the last `@` before the query.
    let query_start = rest.find(['?', '#']).unwrap_or(rest.len());
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end]
        .rfind('@')
        .or_else(|| rest[..query_start].rfind('@'));
    match at {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:****@{}", &rest[at + 1..])
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
        assert_eq!(Target::parse("desktop://"), Ok(Target::Desktop));
        assert!(!Target::Desktop.shared());
        assert!(Target::parse("desktop://elsewhere").is_err());
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

    #[test]
    fn mail_urls_name_a_server_and_recipients() {
        let Target::Mail { mail, .. } =
            Target::parse("mailto://smtp.example.org?to=me@example.org,you@example.org").unwrap()
        else {
            panic!("mail");
        };
        assert_eq!(
            mail,
            MailServer {
                implicit_tls: false,
                host: "smtp.example.org".into(),
                port: 587,
                credentials: None,
                to: vec!["me@example.org".into(), "you@example.org".into()],
                from: None,
            }
        );
        let target = Target::parse("mailtos://me%40example.org:s3cret@smtp.example.org").unwrap();
        let Target::Mail { mail, .. } = &target else {
            panic!("mail");
        };
        assert_eq!((mail.implicit_tls, mail.port), (true, 465));
        assert_eq!(mail.to, ["me@example.org"]);
        assert!(!target.masked().contains("s3cret"), "{}", target.masked());
        // A password with a slash, and its error, give nothing away.
        let error = Target::parse("mailto://me:ab/cd@smtp.example.org:x?to=a@b.example")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("ab/cd"), "{error}");
        assert_eq!(
            Target::parse("mailto://me:one@smtp.example.org?to=me+alerts@example.org")
                .unwrap()
                .fingerprint(),
            Target::parse("mailto://me:two@smtp.example.org?to=me+alerts@example.org")
                .unwrap()
                .fingerprint()
        );
        let Target::Mail { mail, .. } =
            Target::parse("mailto://127.0.0.1:2525/?to=a@b.example&from=nas%40example.org")
                .unwrap()
        else {
            panic!("mail");
        };
        assert_eq!((mail.host.as_str(), mail.port), ("127.0.0.1", 2525));
        assert_eq!(mail.from.as_deref(), Some("nas@example.org"));
        let Target::Mail { mail, .. } =
            Target::parse("mailto://smtp.example.org?to=me+alerts@example.org").unwrap()
        else {
            panic!("mail");
        };
        assert_eq!(mail.to, ["me+alerts@example.org"]);
        for bad in [
            "mailto://smtp.example.org",
            "mailto://smtp.example.org?to=nobody",
            "mailto://smtp.example.org:smtp?to=a@b.example",
            "mailto://?to=a@b.example",
        ] {
            assert!(
                matches!(Target::parse(bad), Err(TargetError::Malformed { .. })),
                "{bad}"
            );
        }
    }
}
