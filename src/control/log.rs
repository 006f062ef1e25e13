//! `log`: every stored message, in receive order.

use super::{io_err, Emit, RequestError};
use crate::node::{Node, NodeError};

/// Answers with each message as `{key, value, timestamp}`.
pub(super) fn log(node: &Node, emit: Emit<'_>) -> Result<(), RequestError> {
    for raw in node.store.receive_log() {
        let raw = raw.map_err(NodeError::from)?;
        let msg = raw.message().map_err(NodeError::from)?;
        emit(msg.to_kvt(raw.received_ms)).map_err(io_err)?;
    }
    Ok(())
}
