//! Join codes: one line that brings a new machine into the network.
//!
//! A code carries the network key, the inviter's id, the routes to it
//! (its `--host`, its LAN addresses, the rooms it is in) and the seed of a
//! one-time guest key, with when it expires and a checksum. The new
//! machine handshakes as that guest (directly, or through a tunnel in one
//! of the rooms) and calls `invite.use` with its own id, as a pub invite
//! is redeemed: the inviter follows it, and it follows the inviter.
//!
//! The code is a secret: it holds the network key. It is never logged.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigError, Overrides};
use crate::feed::{FeedId, Keypair};
use crate::net::address::PeerAddress;
use crate::net::join::RedeemError;
use crate::net::remembered::{Memory, Source};
use crate::node::{Node, NodeError};

/// What every code begins with.
pub const PREFIX: &str = "scuttlefs-join:";
/// The format this build writes and reads.
const VERSION: u8 = 1;

/// One way to reach the inviter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Directly, at this host and port (the inviter's key is the code's).
    Direct {
        /// A name or an IP address.
        host: String,
        /// Its port.
        port: u16,
    },
    /// Through a tunnel in this room.
    Room {
        /// The room's address and key.
        address: PeerAddress,
        /// The room's network key, when it is not ours.
        caps: Option<[u8; 32]>,
    },
}

impl Route {
    /// The route as a person reads it: `host:port`, or `room host:port`.
    pub fn describe(&self) -> String {
        match self {
            Route::Direct { host, port } => format!("{host}:{port}"),
            Route::Room { address, .. } => format!("room {}:{}", address.host, address.port),
        }
    }
}

/// A parsed join code.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinCode {
    /// The network key every machine of the network uses.
    pub network_key: [u8; 32],
    /// The machine that made the code.
    pub inviter: FeedId,
    /// The one-time guest key's seed.
    pub seed: [u8; 32],
    /// When it stops working (ms since the epoch).
    pub expires_ms: f64,
    /// Where the inviter can be reached, best first.
    pub routes: Vec<Route>,
}

/// Why a code cannot be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// Not a scuttlefs join code at all.
    #[error("this is not a scuttlefs join code (those begin with {PREFIX}){hint}")]
    Foreign {
        /// What it looks like instead, if anything.
        hint: String,
    },
    /// A join code with a character lost or changed.
    #[error("this join code is damaged ({0}): copy it again, whole")]
    Damaged(&'static str),
    /// Made by a newer scuttlefs.
    #[error("this join code was made by a newer scuttlefs (format {0}): update this one")]
    Newer(u8),
}

impl JoinCode {
    /// The code as one line.
    pub fn encode(&self) -> String {
        let mut bytes = vec![VERSION];
        bytes.extend_from_slice(&self.network_key);
        bytes.extend_from_slice(&self.inviter.0);
        bytes.extend_from_slice(&self.seed);
        bytes.extend_from_slice(&(self.expires_ms.max(0.0) as u64).to_be_bytes());
        let routes: Vec<&Route> = self.routes.iter().take(255).collect();
        bytes.push(routes.len() as u8);
        for route in routes {
            match route {
                Route::Direct { host, port } => {
                    bytes.push(0);
                    put_host(&mut bytes, host, *port);
                }
                Route::Room { address, caps } => {
                    bytes.push(1);
                    put_host(&mut bytes, &address.host, address.port);
                    bytes.extend_from_slice(&address.key.0);
                    match caps {
                        Some(caps) => {
                            bytes.push(1);
                            bytes.extend_from_slice(caps);
                        }
                        None => bytes.push(0),
                    }
                }
            }
        }
        let sum = Sha256::digest(&bytes);
        bytes.extend_from_slice(&sum[..4]);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Reads a code, telling a damaged one from one that is not a join
    /// code at all.
    pub fn parse(text: &str) -> Result<JoinCode, CodeError> {
        let text: String = text.split_whitespace().collect();
        let Some(body) = text.strip_prefix(PREFIX) else {
            let hint = if text.starts_with("net:") || text.contains(".ed25519~") {
                ": it looks like a pub or room invite, which `scuttlefs invite accept` takes"
            } else {
                ""
            };
            return Err(CodeError::Foreign { hint: hint.into() });
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| CodeError::Damaged("a character that cannot be in a code"))?;
        if bytes.len() < 4 {
            return Err(CodeError::Damaged("it is cut short"));
        }
        let (payload, sum) = bytes.split_at(bytes.len() - 4);
        if payload.first().is_some_and(|v| *v > VERSION) && Sha256::digest(payload)[..4] == *sum {
            return Err(CodeError::Newer(payload[0]));
        }
        if Sha256::digest(payload)[..4] != *sum {
            return Err(CodeError::Damaged("its checksum does not match"));
        }
        let mut reader = Reader(payload);
        if reader.byte()? != VERSION {
            return Err(CodeError::Damaged("an unknown format"));
        }
        let network_key = reader.array()?;
        let inviter = FeedId(reader.array()?);
        let seed = reader.array()?;
        let expires_ms = u64::from_be_bytes(reader.array()?) as f64;
        let count = reader.byte()?;
        let mut routes = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            match reader.byte()? {
                0 => {
                    let (host, port) = reader.host()?;
                    routes.push(Route::Direct { host, port });
                }
                1 => {
                    let (host, port) = reader.host()?;
                    let key = FeedId(reader.array()?);
                    let caps = match reader.byte()? {
                        0 => None,
                        1 => Some(reader.array()?),
                        _ => return Err(CodeError::Damaged("a room's network key is garbled")),
                    };
                    routes.push(Route::Room {
                        address: PeerAddress { host, port, key },
                        caps,
                    });
                }
                _ => return Err(CodeError::Damaged("an unknown kind of route")),
            }
        }
        if !reader.0.is_empty() {
            return Err(CodeError::Damaged("bytes after its end"));
        }
        Ok(JoinCode {
            network_key,
            inviter,
            seed,
            expires_ms,
            routes,
        })
    }

    /// The routes as a person reads them (no secret in them).
    pub fn describe_routes(&self) -> Vec<String> {
        self.routes.iter().map(Route::describe).collect()
    }
}

/// Why `scuttlefs join` did not join. Nothing is stored in any of these
/// cases.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The code itself.
    #[error(transparent)]
    Code(#[from] CodeError),
    /// Too late.
    #[error("this join code expired on {0}: ask for a new one (scuttlefs join-code, on a machine already set up)")]
    Expired(String),
    /// This data directory already belongs to another network.
    #[error(
        "{0} already holds other machines' feeds under another network key:          join with --path DIR to start this machine's feed elsewhere"
    )]
    OtherNetwork(String),
    /// A daemon holds the data directory.
    #[error("a daemon is running on {0}: stop it first, then join (the join writes its config)")]
    DaemonRunning(String),
    /// The inviter could not be reached, or refused.
    #[error(transparent)]
    Redeem(#[from] RedeemError),
    /// Saving the config or identity.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Storing the follow.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// No runtime for the network.
    #[error("cannot start the network: {0}")]
    Runtime(std::io::Error),
}

/// What a join did.
#[derive(Clone, Debug)]
pub struct Joined {
    /// This machine.
    pub me: FeedId,
    /// The machine that made the code.
    pub inviter: FeedId,
    /// How it was reached.
    pub route: String,
    /// The name this machine goes by.
    pub name: String,
}

/// `scuttlefs join CODE`: redeems the code and only then saves the
/// network key, the name (and the mount, when given) in `<path>/config`,
/// the identity, the follow of the inviter, and the routes to it (so that
/// a bare `serve` reaches it).
pub fn join_here(
    path: &Path,
    text: &str,
    name: Option<String>,
    mount: Option<PathBuf>,
) -> Result<Joined, JoinError> {
    let code = JoinCode::parse(text)?;
    if crate::clock::now_ms() > code.expires_ms {
        return Err(JoinError::Expired(crate::view::line::format_timestamp(
            code.expires_ms,
        )));
    }
    if std::os::unix::net::UnixStream::connect(path.join("scuttlefs.sock")).is_ok() {
        return Err(JoinError::DaemonRunning(path.display().to_string()));
    }
    refuse_other_network(path, &code)?;
    let secret = path.join("secret");
    let (keys, new_identity) = match std::fs::read_to_string(&secret) {
        Ok(text) => (
            Keypair::from_secret_file_text(&text).map_err(|source| ConfigError::Secret {
                path: secret.clone(),
                source,
            })?,
            false,
        ),
        Err(_) => (Keypair::generate(), true),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(JoinError::Runtime)?;
    let route = runtime.block_on(crate::net::join::redeem(&code, keys.id()))?;

    // Redeemed: from here on, store.
    let overrides = Overrides {
        path: Some(path.to_path_buf()),
        network_key: Some(STANDARD.encode(code.network_key)),
        name: name.clone(),
        mount: mount.map(|m| m.display().to_string()),
        ..Overrides::default()
    };
    let config = Config::load(&overrides, true)?;
    if new_identity {
        crate::config::write_private(&secret, keys.to_secret_file_text().as_bytes())?;
    }
    let me = keys.id();
    let node = Node::open(config.clone(), keys, false)?;
    node.ensure_name(&config.name)?;
    if !node.following().contains(&code.inviter) {
        node.follow(&code.inviter, true)?;
    }
    node.flush()?;
    drop(node);
    let memory = Memory::load(path);
    match &route {
        Route::Direct { host, port } => memory.remember(
            &PeerAddress {
                host: host.clone(),
                port: *port,
                key: code.inviter,
            },
            Source::Peer,
            None,
        ),
        Route::Room { .. } => {}
    }
    for room in &code.routes {
        if let Route::Room { address, caps } = room {
            memory.remember(address, Source::Room, caps.map(|c| STANDARD.encode(c)));
        }
    }
    Ok(Joined {
        me,
        inviter: code.inviter,
        route: route.describe(),
        name: config.name,
    })
}

/// Refuses a data directory that already replicated other machines under
/// another network key: switching keys would cut it off from them.
fn refuse_other_network(path: &Path, code: &JoinCode) -> Result<(), JoinError> {
    let Ok(text) = std::fs::read_to_string(path.join("config")) else {
        return Ok(());
    };
    let saved = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|c| c["caps"]["shs"].as_str().map(String::from))
        .and_then(|k| crate::config::parse_network_key(&k).ok());
    if saved.is_none_or(|key| key == code.network_key) {
        return Ok(());
    }
    let store = path.join("db");
    if !store.exists() {
        return Ok(());
    }
    let others = crate::store::Store::open(&store)
        .map(|s| s.feeds().len() > 1)
        .unwrap_or(false);
    if others {
        return Err(JoinError::OtherNetwork(path.display().to_string()));
    }
    Ok(())
}

fn put_host(bytes: &mut Vec<u8>, host: &str, port: u16) {
    let host = &host.as_bytes()[..host.len().min(255)];
    bytes.push(host.len() as u8);
    bytes.extend_from_slice(host);
    bytes.extend_from_slice(&port.to_be_bytes());
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CodeError> {
        if self.0.len() < n {
            return Err(CodeError::Damaged("it is cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, CodeError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn host(&mut self) -> Result<(String, u16), CodeError> {
        let len = usize::from(self.byte()?);
        let host = std::str::from_utf8(self.take(len)?)
            .map_err(|_| CodeError::Damaged("a host that is not text"))?
            .to_string();
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:%".contains(&b))
        {
            return Err(CodeError::Damaged(
                "a host that is not a name or an address",
            ));
        }
        let port = u16::from_be_bytes(self.array()?);
        Ok((host, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code() -> JoinCode {
        JoinCode {
            network_key: [7; 32],
            inviter: FeedId([1; 32]),
            seed: [9; 32],
            expires_ms: 1_800_000_000_000.0,
            routes: vec![
                Route::Direct {
                    host: "192.168.1.20".into(),
                    port: 8008,
                },
                Route::Direct {
                    host: "nas.example.org".into(),
                    port: 8008,
                },
                Route::Room {
                    address: PeerAddress {
                        host: "room.example.org".into(),
                        port: 8008,
                        key: FeedId([3; 32]),
                    },
                    caps: Some([4; 32]),
                },
            ],
        }
    }

    #[test]
    fn a_code_reads_back_as_written() {
        let text = code().encode();
        assert!(text.starts_with(PREFIX));
        assert!(text.len() < 400, "{} characters", text.len());
        assert_eq!(JoinCode::parse(&text), Ok(code()));
        // Wrapped by a mail program, or pasted with spaces.
        let (a, b) = text.split_at(60);
        assert_eq!(JoinCode::parse(&format!(" {a}\n{b} ")), Ok(code()));
    }

    #[test]
    fn damaged_and_foreign_codes_say_which() {
        let text = code().encode();
        let mut changed: Vec<char> = text.chars().collect();
        let at = changed.len() - 20;
        changed[at] = if changed[at] == 'A' { 'B' } else { 'A' };
        let changed: String = changed.into_iter().collect();
        assert!(matches!(
            JoinCode::parse(&changed),
            Err(CodeError::Damaged(_))
        ));
        assert!(matches!(
            JoinCode::parse(&text[..text.len() - 10]),
            Err(CodeError::Damaged(_))
        ));
        assert!(matches!(
            JoinCode::parse(&format!("{text}!")),
            Err(CodeError::Damaged(_))
        ));
        let pub_invite =
            "net:pub.example.org:8008~shs:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:BBBB";
        let foreign = JoinCode::parse(pub_invite).expect_err("not a join code");
        assert!(foreign.to_string().contains("invite accept"), "{foreign}");
        assert!(matches!(
            JoinCode::parse("hello"),
            Err(CodeError::Foreign { .. })
        ));
    }
}
