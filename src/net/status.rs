//! The network's state as `status` shows it: the connected peers, when the
//! last one was seen, where this node listens, and the peers it dials
//! again after a restart. The network layer writes it; the query layer
//! reads it.

use crate::feed::FeedId;

/// What the network layer reports about one connected peer.
#[derive(Clone, Debug)]
pub struct PeerStatus {
    /// The peer's feed id.
    pub id: FeedId,
    /// `ip:port`.
    pub address: String,
    /// Messages received from it on this connection.
    pub received: u64,
    /// Messages sent to it on this connection.
    pub sent: u64,
    /// When the connection started (milliseconds since the epoch).
    pub since_ms: f64,
}

/// The network's state as the `status` views show it.
#[derive(Default, Clone, Debug)]
pub struct NetStatus {
    /// Connected peers.
    pub peers: Vec<PeerStatus>,
    /// When the last peer connection ended or was seen (ms since epoch).
    pub last_peer_ms: Option<f64>,
    /// The address the node listens on.
    pub listening: Option<String>,
    /// Where the status page listens (`serve --http`), once it does.
    pub http: Option<String>,
    /// Peers dialled again after a restart.
    pub remembered: Vec<crate::net::remembered::Remembered>,
}
