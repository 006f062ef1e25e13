//! Replication over the network: secret handshake, box stream, muxrpc,
//! createHistoryStream, LAN discovery, and the peer scheduler.

pub mod address;
pub mod discovery;
pub mod muxrpc;
pub mod peers;
pub mod session;
pub mod shs;

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::node::Node;
use address::PeerAddress;
use peers::Peers;

/// Starts listening, discovery and dialling. Returns once the listener is
/// bound; the work goes on in background tasks.
pub async fn start(
    node: Arc<Node>,
    static_peers: Vec<PeerAddress>,
    discovery: bool,
) -> std::io::Result<()> {
    if kuska_sodiumoxide::init().is_err() {
        return Err(std::io::Error::other("libsodium failed to initialise"));
    }
    let listener = TcpListener::bind(("0.0.0.0", node.config.port)).await?;
    let port = listener.local_addr()?.port();
    if let Ok(mut net) = node.net.write() {
        net.listening = Some(format!("0.0.0.0:{port}"));
    }
    tracing::info!("listening on port {port}");
    let peers = Peers::new(node.clone());
    for address in static_peers {
        peers.add_candidate(address, true);
    }
    tokio::spawn(peers.clone().accept_loop(listener));
    tokio::spawn(peers.clone().dial_loop());
    if discovery {
        discovery::start(node, peers, port)?;
    }
    Ok(())
}
