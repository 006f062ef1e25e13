//! Replication over the network. One protocol per file:
//!
//! - `shs`: secret handshake and box stream (over TCP or a tunnel);
//! - `muxrpc`: frames, and the reader and writer tasks of a connection;
//! - `session`: one replication session, routing frames to
//!   `history` (createHistoryStream), `ebt` (epidemic broadcast trees),
//!   `ping` (keepalive) and `ingest` (verify and store);
//! - `invite`: pub invites, redeemed and served;
//! - `room`: membership of rooms, and `tunnel`: connections through them;
//! - `peers`: whom to dial and which connections to keep;
//! - `remembered`: peers dialled again after a restart;
//! - `discovery`: LAN broadcast;
//! - `address`: multiserver addresses.

pub mod address;
pub mod discovery;
pub mod ebt;
pub mod history;
pub mod ingest;
pub mod invite;
pub mod join;
pub mod muxrpc;
pub mod peers;
pub mod ping;
pub mod remembered;
pub mod room;
pub mod session;
pub mod shs;
pub mod status;
pub mod tunnel;

use std::sync::{Arc, OnceLock};

use base64::Engine;
use tokio::net::TcpListener;

use crate::node::Node;
use address::PeerAddress;
use invite::{Invite, InviteError, Invites};
use peers::Peers;
use remembered::{Memory, Source};

/// The network state that outlives connections: remembered peers and the
/// invites this machine made, and the peer scheduler once it runs. Owned by
/// the process that holds the store.
pub struct Net {
    /// Peers to dial again after a restart.
    pub memory: Memory,
    /// Invites made here.
    pub invites: Arc<Invites>,
    peers: OnceLock<Arc<Peers>>,
}

impl Net {
    /// Loads the state kept under the node's `--path`.
    pub fn open(node: &Node) -> Arc<Net> {
        Arc::new(Net {
            memory: Memory::load(&node.config.path),
            invites: Arc::new(Invites::load(&node.config.path)),
            peers: OnceLock::new(),
        })
    }

    /// Remembers `address` and, when the network runs, dials it.
    pub fn add_peer(&self, address: PeerAddress, source: Source) {
        self.memory.remember(&address, source, None);
        if let Some(peers) = self.peers.get() {
            peers.add_candidate(address, source);
        }
    }

    /// Remembers a room and, when the network runs, joins it. `caps` is
    /// the room's network key when it is not ours.
    pub fn add_room(&self, address: PeerAddress, caps: Option<[u8; 32]>) {
        let caps_text = caps.map(|c| base64::engine::general_purpose::STANDARD.encode(c));
        self.memory.remember(&address, Source::Room, caps_text);
        if let Some(peers) = self.peers.get() {
            peers.add_room(address, caps);
        }
    }

    /// Redeems an invite code: a pub's (with its guest key, then follows
    /// the pub) or a room's. Either way the pub or room is remembered and,
    /// when the network runs, dialled with our own key. Returns what to
    /// tell the user.
    pub async fn accept_invite(
        &self,
        node: &Arc<Node>,
        code: &str,
        room_caps: Option<[u8; 32]>,
    ) -> Result<serde_json::Value, InviteError> {
        if kuska_sodiumoxide::init().is_err() {
            return Err(InviteError::CannotCreate(
                "libsodium failed to initialise".into(),
            ));
        }
        match Invite::parse(code)? {
            Invite::Pub { address, seed } => {
                invite::redeem(node, &address, &seed).await?;
                tracing::info!("redeemed an invite to the pub {address}");
                // Remembered first: the pub follows us now, whatever
                // happens to our own follow of it.
                self.add_peer(address.clone(), Source::Invite);
                invite::follow_pub(node, address.key).await?;
                Ok(serde_json::json!({
                    "pub": address.key.to_string(),
                    "address": address.to_string(),
                    "following": true,
                }))
            }
            Invite::Room { address } => {
                self.add_room(address.clone(), room_caps);
                Ok(serde_json::json!({
                    "room": address.key.to_string(),
                    "address": address.to_string(),
                }))
            }
        }
    }

    /// Makes an invite with `uses` redemptions, naming this machine as
    /// `host` (from `serve --host`) and the port it listens on.
    pub fn create_invite(&self, node: &Node, uses: u32, port: u16) -> Result<String, InviteError> {
        let host = node.config.host.clone().ok_or_else(|| {
            InviteError::CannotCreate(
                "this machine has no public address for invites: start it once with \
                 `scuttlefs serve --host HOST`, HOST being the name or address other \
                 machines reach it at"
                    .into(),
            )
        })?;
        let seed = self.invites.create(uses)?;
        Ok(invite::legacy_code(&host, port, &node.id(), &seed))
    }
}

/// A LAN peer not reached for this long is no longer dialled at start
/// (it reappears by broadcast if it comes back).
const STALE_LAN_MS: f64 = 14.0 * 24.0 * 3600.0 * 1000.0;

/// Starts listening, discovery and dialling. Returns once the listener is
/// bound; the work goes on in background tasks.
pub async fn start(
    node: Arc<Node>,
    net: Arc<Net>,
    static_peers: Vec<PeerAddress>,
    rooms: Vec<(PeerAddress, Option<[u8; 32]>)>,
    discovery: bool,
) -> std::io::Result<()> {
    if kuska_sodiumoxide::init().is_err() {
        return Err(std::io::Error::other("libsodium failed to initialise"));
    }
    let listener = TcpListener::bind(("0.0.0.0", node.config.port)).await?;
    let port = listener.local_addr()?.port();
    if let Ok(mut status) = node.net.write() {
        status.listening = Some(format!("0.0.0.0:{port}"));
    }
    tracing::info!("listening on port {port}");
    let peers = Peers::new(node.clone(), net.clone());
    let _ = net.peers.set(peers.clone());
    for address in static_peers {
        peers.add_candidate(address, Source::Peer);
    }
    for (address, caps) in rooms {
        net.add_room(address, caps);
    }
    for remembered in net.memory.list() {
        let Ok(address) = PeerAddress::parse(&remembered.address) else {
            continue;
        };
        let stale_lan = remembered.source == Source::Lan
            && remembered
                .last_success_ms
                .is_none_or(|ms| crate::clock::now_ms() - ms > STALE_LAN_MS);
        if stale_lan {
            continue;
        }
        if remembered.source == Source::Room {
            let caps = remembered
                .caps
                .as_deref()
                .and_then(|c| crate::config::parse_network_key(c).ok());
            peers.add_room(address, caps);
        } else {
            peers.add_remembered(address, remembered.source);
        }
    }
    tokio::spawn(peers.clone().accept_loop(listener));
    tokio::spawn(peers.clone().dial_loop());
    if discovery {
        discovery::start(node, peers, port)?;
    }
    Ok(())
}
