//! Replication over the network: secret handshake, box stream, muxrpc,
//! createHistoryStream, and LAN discovery.

pub mod address;

use std::sync::Arc;

use crate::node::Node;

/// Starts listening, discovery and dialling. Returns once the listener is
/// bound; the work goes on in background tasks.
pub async fn start(
    _node: Arc<Node>,
    _peers: Vec<address::PeerAddress>,
    _discovery: bool,
) -> std::io::Result<()> {
    Ok(())
}
