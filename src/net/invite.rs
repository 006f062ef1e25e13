//! Pub invites, as ssb-invite does them: a code names a pub and carries the
//! seed of a guest key pair. The redeemer handshakes with the pub as that
//! guest and calls `invite.use({feed})`; the pub follows the feed, and from
//! then on replicates it with the redeemer's own key.
//!
//! Codes come in two forms, both accepted:
//! - legacy: `HOST:PORT:@KEY.ed25519~SEED` (what ssb-server prints);
//! - multiserver: `net:HOST:PORT~shs:KEY:SEED`.
//!
//! IPv6 hosts are written in brackets. A room's invite is a multiserver
//! code whose seed is ssb-room's fixed [`ROOM_SEED`]: it names a room to
//! join with our own key, not a guest key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::address::PeerAddress;
use super::muxrpc::{Call, Frame, Wire};
use super::shs::{self, Connection, ShsError};
use crate::clock::now_ms;
use crate::config::write_private;
use crate::feed::{FeedId, Keypair};
use crate::node::Node;

/// The seed every ssb-room 1.x invite ends in: it marks a room, and its
/// guest key is never used.
pub const ROOM_SEED: &str = "SSB+Room+PSK3TLYC2T86EHQCUHBUHASCASE18JBV24=";

/// How long a guest may take to call `invite.use`, and a redeemer waits
/// for the answer.
const INVITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an invite cannot be used or made.
#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    /// The code does not parse.
    #[error("bad invite code {code:?}: {reason} (expected HOST:PORT:@KEY.ed25519~SEED or net:HOST:PORT~shs:KEY:SEED)")]
    Malformed {
        /// The code.
        code: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The pub could not be reached, or refused the handshake.
    #[error("cannot reach the pub at {address}: {source}")]
    Unreachable {
        /// The pub's address.
        address: String,
        /// Why.
        source: ShsError,
    },
    /// The pub refused the invite.
    #[error("the pub at {address} refused the invite ({message}): it was used up, or was made by another pub")]
    Refused {
        /// The pub's address.
        address: String,
        /// The pub's own words.
        message: String,
    },
    /// The pub did not answer.
    #[error("the pub at {0} did not answer the invite within 30 s")]
    NoAnswer(String),
    /// This machine cannot make invites.
    #[error("{0}")]
    CannotCreate(String),
    /// Storing the result failed.
    #[error("{0}")]
    Node(#[from] crate::node::NodeError),
}

/// A parsed invite code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invite {
    /// A pub invite: redeem with the guest key from `seed`.
    Pub {
        /// Where the pub listens, and its key.
        address: PeerAddress,
        /// The guest key pair's seed.
        seed: [u8; 32],
    },
    /// A room (ssb-room's open invite): connect with our own key.
    Room {
        /// Where the room listens, and its key.
        address: PeerAddress,
    },
}

impl Invite {
    /// Parses either form of code.
    pub fn parse(code: &str) -> Result<Invite, InviteError> {
        let code = code.trim();
        let bad = |reason| InviteError::Malformed {
            code: code.to_string(),
            reason,
        };
        let (address, seed_text) = if code.starts_with("net:") || code.contains("~shs:") {
            // Multiserver: the seed follows the last `:`, after the last
            // address of a possibly `;`-separated list.
            let (addresses, seed) = code.rsplit_once(':').ok_or_else(|| bad("no seed"))?;
            let address = PeerAddress::parse_many(addresses)
                .into_iter()
                .next()
                .ok_or_else(|| bad("no net:HOST:PORT~shs:KEY address"))?;
            (address, seed)
        } else {
            let (location, seed) = code.rsplit_once('~').ok_or_else(|| bad("no ~SEED"))?;
            let (hostport, key) = location
                .rsplit_once(':')
                .ok_or_else(|| bad("no :@KEY.ed25519"))?;
            let key = FeedId::parse(key).map_err(|_| bad("the pub's key is not @KEY.ed25519"))?;
            let (host, port) = hostport.rsplit_once(':').ok_or_else(|| bad("no :PORT"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(bad("no host"));
            }
            let port = port.parse().map_err(|_| bad("the port is not a number"))?;
            let address = PeerAddress {
                host: host.to_string(),
                port,
                key,
            };
            (address, seed)
        };
        if !is_host(&address.host) {
            return Err(bad("the host is not a name or an IP address"));
        }
        if seed_text == ROOM_SEED {
            return Ok(Invite::Room { address });
        }
        let seed = STANDARD
            .decode(seed_text)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| bad("the seed is not base64 of 32 bytes"))?;
        Ok(Invite::Pub { address, seed })
    }

    /// The pub's or room's address.
    pub fn address(&self) -> &PeerAddress {
        match self {
            Invite::Pub { address, .. } | Invite::Room { address } => address,
        }
    }
}

/// Whether `host` can be a host name or an IP address (v6 with an optional
/// zone): what the two forms of a code can carry unambiguously.
fn is_host(host: &str) -> bool {
    if host.contains(':') {
        // Only an IPv6 address has colons (`net:…` is not a host).
        let (address, zone) = host.split_once('%').unwrap_or((host, "x"));
        return address.parse::<std::net::Ipv6Addr>().is_ok()
            && !zone.is_empty()
            && zone
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    }
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// The legacy form of a code, as ssb-server prints it. An IPv6 host is
/// written bare, as ssb-server writes it (its parser takes the port and key
/// from the end; brackets would be kept as part of the host).
pub fn legacy_code(host: &str, port: u16, pub_id: &FeedId, seed: &[u8; 32]) -> String {
    format!("{host}:{port}:{pub_id}~{}", STANDARD.encode(seed))
}

/// Redeems a pub invite as `node`: calls `invite.use` with the guest key.
/// The caller then remembers the pub and follows it.
pub async fn redeem(
    node: &Arc<Node>,
    address: &PeerAddress,
    seed: &[u8; 32],
) -> Result<(), InviteError> {
    let guest = Keypair::from_seed(seed);
    let unreachable = |source| InviteError::Unreachable {
        address: address.to_string(),
        source,
    };
    let conn = shs::connect(
        &address.host,
        address.port,
        address.key,
        &guest,
        &node.config.network_key,
    )
    .await
    .map_err(unreachable)?;
    let answer = call_invite_use(conn, node.id()).await;
    match answer {
        Ok(()) => {}
        // The pub follows us already: the invite did its job before.
        Err(InviteError::Refused { message, .. }) if message.contains("already following") => {}
        Err(InviteError::Refused { message, .. }) => {
            return Err(InviteError::Refused {
                address: address.to_string(),
                message,
            })
        }
        Err(InviteError::NoAnswer(_)) => return Err(InviteError::NoAnswer(address.to_string())),
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Follows the pub whose invite was redeemed (unless already followed).
pub async fn follow_pub(node: &Arc<Node>, pub_id: FeedId) -> Result<(), InviteError> {
    let node = node.clone();
    tokio::task::spawn_blocking(move || {
        if !node.following().contains(&pub_id) {
            node.follow(&pub_id, true)?;
        }
        node.flush()
    })
    .await
    .map_err(|e| InviteError::CannotCreate(format!("following the pub: {e}")))??;
    Ok(())
}

/// `invite.use({feed: me})` on a guest connection; the first answer decides.
pub(crate) async fn call_invite_use(conn: Connection, me: FeedId) -> Result<(), InviteError> {
    let address = conn.address.clone();
    let mut wire = Wire::start(conn.reader, conn.writer);
    let request = Frame::request(
        1,
        &["invite", "use"],
        "async",
        json!([{ "feed": me.to_string() }]),
    );
    let _ = wire.out.send(request).await;
    let answer = tokio::time::timeout(INVITE_TIMEOUT, async {
        while let Some(frame) = wire.frames.recv().await {
            let frame = frame.map_err(|e| InviteError::Refused {
                address: address.clone(),
                message: format!("connection lost: {e}"),
            })?;
            if frame.req == -1 {
                return match frame.error_message() {
                    Some(message) => Err(InviteError::Refused {
                        address: address.clone(),
                        message,
                    }),
                    None => Ok(()),
                };
            }
            // The pub's own calls (ssb-server asks for blob wants): not a
            // guest's business.
            if frame.req > 0 && !frame.end {
                let _ = wire
                    .out
                    .send(Frame::error(
                        -frame.req,
                        frame.stream,
                        "not served to a pub",
                    ))
                    .await;
            }
        }
        Err(InviteError::Refused {
            address: address.clone(),
            message: "the pub closed the connection".into(),
        })
    })
    .await
    .unwrap_or_else(|_| Err(InviteError::NoAnswer(address.clone())));
    wire.close().await;
    answer
}

/// One invite this machine made, not yet used up.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Open {
    /// Uses left.
    uses: u32,
    /// When it was made (ms since the epoch).
    created_ms: f64,
    /// When it stops working (join codes; pub invites never expire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_ms: Option<f64>,
    /// A join code (`scuttlefs join-code`), not a pub invite.
    #[serde(default)]
    join: bool,
}

/// An invite or join code as `join-code --list` shows it: never its seed.
#[derive(Clone, Debug, PartialEq)]
pub struct InviteInfo {
    /// A short name for it: the start of its guest key.
    pub id: String,
    /// Uses left.
    pub uses: u32,
    /// When it was made.
    pub created_ms: f64,
    /// When it stops working.
    pub expires_ms: Option<f64>,
    /// A join code, not a pub invite.
    pub join: bool,
}

/// The short name of the invite with guest key `guest`.
fn short_id(guest: &FeedId) -> String {
    guest.to_string().chars().skip(1).take(8).collect()
}

#[derive(Default, Serialize, Deserialize)]
struct InvitesFile {
    /// Guest id → invite.
    invites: HashMap<String, Open>,
}

/// The invites this machine made, in `<path>/invites.json`, so that unused
/// ones survive restarts.
pub struct Invites {
    path: PathBuf,
    open: Mutex<HashMap<FeedId, Open>>,
}

impl Invites {
    /// Loads `<dir>/invites.json` (none yet is no invites).
    pub fn load(dir: &Path) -> Invites {
        let path = dir.join("invites.json");
        let file: InvitesFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    "{} is damaged ({e}): its invites no longer work",
                    path.display()
                );
                InvitesFile::default()
            }),
            Err(_) => InvitesFile::default(),
        };
        let open = file
            .invites
            .into_iter()
            .filter(|(_, open)| open.uses > 0)
            .filter_map(|(id, open)| Some((FeedId::parse(&id).ok()?, open)))
            .collect();
        Invites {
            path,
            open: Mutex::new(open),
        }
    }

    /// Makes an invite for `uses` redemptions; returns its guest seed.
    pub fn create(&self, uses: u32) -> Result<[u8; 32], InviteError> {
        self.create_with(uses, None, false)
    }

    /// Makes a join code's invite: `uses` redemptions until `expires_ms`;
    /// returns its guest seed and its short id (as `list` names it).
    pub fn create_join(
        &self,
        uses: u32,
        expires_ms: f64,
    ) -> Result<([u8; 32], String), InviteError> {
        let seed = self.create_with(uses, Some(expires_ms), true)?;
        Ok((seed, short_id(&Keypair::from_seed(&seed).id())))
    }

    /// The invites and join codes with uses left, oldest first.
    pub fn list(&self) -> Vec<InviteInfo> {
        let mut list: Vec<InviteInfo> = self
            .lock()
            .iter()
            .map(|(guest, open)| InviteInfo {
                id: short_id(guest),
                uses: open.uses,
                created_ms: open.created_ms,
                expires_ms: open.expires_ms,
                join: open.join,
            })
            .collect();
        list.sort_by(|a, b| a.created_ms.total_cmp(&b.created_ms));
        list
    }

    /// Revokes the invite whose short name is `id`; whether there was one.
    pub fn revoke(&self, id: &str) -> Result<bool, InviteError> {
        let mut open = self.lock();
        let before = open.len();
        open.retain(|guest, _| short_id(guest) != id.trim());
        if open.len() == before {
            return Ok(false);
        }
        self.save(&open)?;
        Ok(true)
    }

    fn create_with(
        &self,
        uses: u32,
        expires_ms: Option<f64>,
        join: bool,
    ) -> Result<[u8; 32], InviteError> {
        if uses == 0 {
            return Err(InviteError::CannotCreate(
                "an invite needs at least one use".into(),
            ));
        }
        let seed: [u8; 32] = rand::random();
        let guest = Keypair::from_seed(&seed).id();
        let mut open = self.lock();
        open.insert(
            guest,
            Open {
                uses,
                created_ms: now_ms(),
                expires_ms,
                join,
            },
        );
        self.save(&open)?;
        Ok(seed)
    }

    /// Whether `id` is the guest key of an invite with uses left.
    pub fn is_guest(&self, id: &FeedId) -> bool {
        self.lock().contains_key(id)
    }

    /// Takes one use of `guest`'s invite; why not, when it cannot.
    fn take_use(&self, guest: &FeedId) -> Result<(), &'static str> {
        let mut open = self.lock();
        let Some(invite) = open.get_mut(guest) else {
            // What ssb-server says of a used-up invite.
            return Err("method:invite,use is not in list of allowed methods");
        };
        if invite.expires_ms.is_some_and(|at| now_ms() > at) {
            return Err("this join code expired");
        }
        invite.uses = invite.uses.saturating_sub(1);
        if invite.uses == 0 {
            open.remove(guest);
        }
        if let Err(e) = self.save(&open) {
            tracing::warn!("{e}");
        }
        Ok(())
    }

    /// Gives a use back (the follow it paid for failed).
    fn give_back(&self, guest: &FeedId) {
        let mut open = self.lock();
        open.entry(*guest)
            .or_insert(Open {
                uses: 0,
                created_ms: now_ms(),
                expires_ms: None,
                join: false,
            })
            .uses += 1;
        if let Err(e) = self.save(&open) {
            tracing::warn!("{e}");
        }
    }

    fn save(&self, open: &HashMap<FeedId, Open>) -> Result<(), InviteError> {
        let file = InvitesFile {
            invites: open
                .iter()
                .map(|(id, o)| (id.to_string(), o.clone()))
                .collect(),
        };
        let text = serde_json::to_string_pretty(&file).unwrap_or_default();
        write_private(&self.path, text.as_bytes())
            .map_err(|e| InviteError::CannotCreate(format!("saving the invites: {e}")))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FeedId, Open>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serves a guest: `invite.use` and nothing else, as ssb-invite does. A
/// redeemed invite makes this machine follow the redeemer. Ends when the
/// guest leaves or dawdles.
pub async fn serve_guest(node: Arc<Node>, invites: Arc<Invites>, conn: Connection) {
    let guest = conn.peer;
    let mut wire = Wire::start(conn.reader, conn.writer);
    let deadline = tokio::time::Instant::now() + INVITE_TIMEOUT;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, wire.frames.recv()).await {
        if frame.req <= 0 || frame.end {
            continue;
        }
        let call = Call::parse(&frame);
        let reply = if call.name() == ["invite", "use"] && !call.is_stream() {
            match use_invite(&node, &invites, &guest, &call.args[0]["feed"]).await {
                Ok(body) => Frame::json(-frame.req, false, false, &body),
                Err(message) => Frame::error(-frame.req, false, &message),
            }
        } else {
            call.refusal(frame.req)
        };
        let _ = wire.out.send(reply).await;
    }
    wire.close().await;
}

/// Redeems one use of `guest`'s invite for `feed`: follows it, and answers
/// with the follow message as ssb-invite does.
async fn use_invite(
    node: &Arc<Node>,
    invites: &Arc<Invites>,
    guest: &FeedId,
    feed: &Value,
) -> Result<Value, String> {
    let feed = feed
        .as_str()
        .and_then(|f| FeedId::parse(f).ok())
        .ok_or("invite.use needs {feed: \"@KEY.ed25519\"}")?;
    if node.following().contains(&feed) {
        return Err("already following".into());
    }
    invites.take_use(guest)?;
    let node = node.clone();
    let followed = tokio::task::spawn_blocking(move || {
        let stored = node.follow(&feed, true)?;
        node.flush()?;
        Ok::<_, crate::node::NodeError>(stored)
    })
    .await;
    match followed {
        Ok(Ok(stored)) => {
            tracing::info!("invite redeemed by {feed}: following it");
            Ok(stored
                .first()
                .map(|s| s.msg.to_kvt(s.received_ms))
                .unwrap_or(Value::Bool(true)))
        }
        Ok(Err(e)) => {
            invites.give_back(guest);
            Err(format!("could not follow {feed}: {e}"))
        }
        Err(e) => {
            invites.give_back(guest);
            Err(format!("could not follow {feed}: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "@k8oSu2t6f/cd0jqqUbL2Oqy77J1AE39I+WoF2QK7BFg=.ed25519";
    const SEED: &str = "oIiKTK1hFlsbjk+K/TYI7V/YWegCjuoFh811OwkR5Zw=";

    #[test]
    fn both_forms_and_ipv6_parse() {
        let legacy = format!("10.231.0.1:8008:{KEY}~{SEED}");
        let ms = format!("net:10.231.0.1:8008~shs:{}:{SEED}", &KEY[1..KEY.len() - 8]);
        let a = Invite::parse(&legacy).expect("legacy");
        let b = Invite::parse(&ms).expect("multiserver");
        assert_eq!(a, b);
        assert_eq!(a.address().host, "10.231.0.1");
        assert_eq!(a.address().port, 8008);
        let v6 = Invite::parse(&format!("[fd00::1]:8008:{KEY}~{SEED}")).expect("v6");
        assert_eq!(v6.address().host, "fd00::1");
        let v6ms = Invite::parse(&format!(
            "net:[fd00::1]:8008~shs:{}:{SEED}",
            &KEY[1..KEY.len() - 8]
        ))
        .expect("v6 multiserver");
        assert_eq!(v6, v6ms);
        let Invite::Pub { seed, .. } = &a else {
            panic!("a pub invite")
        };
        assert_eq!(
            legacy_code("10.231.0.1", 8008, &a.address().key, seed),
            legacy
        );
        let bare = legacy_code("fd00::1", 8008, &a.address().key, seed);
        assert_eq!(bare, format!("fd00::1:8008:{KEY}~{SEED}"));
        assert_eq!(
            Invite::parse(&bare).expect("bare v6").address().host,
            "fd00::1"
        );
    }

    #[test]
    fn a_room_invite_is_a_room() {
        let code = format!(
            "net:10.0.0.3:8008~shs:{}:{ROOM_SEED}",
            &KEY[1..KEY.len() - 8]
        );
        assert!(matches!(Invite::parse(&code), Ok(Invite::Room { .. })));
    }

    #[test]
    fn bad_codes_say_what_is_wrong() {
        for (code, reason) in [
            ("", "no"),
            ("hello", "no ~SEED"),
            (&format!("host:80:{KEY}~short") as &str, "seed"),
            (&format!("host:port:{KEY}~{SEED}"), "port"),
            (&format!("host:80:@nokey~{SEED}"), "key"),
            (&format!("ho st:80:{KEY}~{SEED}"), "host"),
            (&format!("a~shs:b:80:{KEY}~{SEED}"), "address"),
            (
                &format!("net:net:h:8~shs:{}:{SEED}", &KEY[1..KEY.len() - 8]),
                "host",
            ),
            ("net:host:80~shs:AAAA:", "address"),
            (
                &format!("net:h:1~shs:{}:bad!", &KEY[1..KEY.len() - 8]),
                "seed",
            ),
        ] {
            match Invite::parse(code) {
                Err(e) => assert!(e.to_string().contains(reason), "{code}: {e}"),
                Ok(i) => panic!("{code} parsed as {i:?}"),
            }
        }
    }

    #[test]
    fn invites_survive_a_reload_and_are_used_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let invites = Invites::load(dir.path());
        let seed = invites.create(2).expect("created");
        let guest = Keypair::from_seed(&seed).id();
        let reloaded = Invites::load(dir.path());
        assert!(reloaded.is_guest(&guest));
        assert!(reloaded.take_use(&guest).is_ok());
        assert!(Invites::load(dir.path()).is_guest(&guest), "one use left");
        assert!(reloaded.take_use(&guest).is_ok());
        assert!(reloaded.take_use(&guest).is_err());
        assert!(!Invites::load(dir.path()).is_guest(&guest));
        assert!(invites.create(0).is_err());
    }
}
