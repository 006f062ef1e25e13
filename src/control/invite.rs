//! `invite accept` and `invite create`: joining a pub or room, and letting
//! others join this machine.

use std::sync::Arc;

use serde_json::Value;

use super::{block_on, io_err, Emit, RequestError};
use crate::net::invite::InviteError;
use crate::net::Net;
use crate::node::Node;

/// Redeems `code` (with a room's own network key, when given); answers
/// with what was joined.
pub(super) fn accept(
    node: &Arc<Node>,
    net: &Arc<Net>,
    code: &str,
    room_caps: Option<String>,
    emit: Emit<'_>,
) -> Result<(), RequestError> {
    let room_caps = room_caps
        .map(|c| crate::config::parse_room_caps(&c))
        .transpose()
        .map_err(|e| RequestError {
            kind: "invalid".into(),
            message: e.to_string(),
        })?;
    let answer = block_on(net.accept_invite(node, code, room_caps))?.map_err(invite_err)?;
    emit(answer).map_err(io_err)
}

/// Makes an invite to this machine for `uses` redemptions; answers with
/// the code.
pub(super) fn create(
    node: &Arc<Node>,
    net: &Arc<Net>,
    uses: u32,
    emit: Emit<'_>,
) -> Result<(), RequestError> {
    let port = listening_port(node).unwrap_or(node.config.port);
    let code = net.create_invite(node, uses, port).map_err(invite_err)?;
    emit(Value::String(code)).map_err(io_err)
}

/// An invite error as a request error, by kind.
fn invite_err(e: InviteError) -> RequestError {
    let kind = match e {
        InviteError::Malformed { .. } => "invalid",
        InviteError::Refused { .. } => "refused",
        InviteError::Unreachable { .. } | InviteError::NoAnswer(_) => "unreachable",
        _ => "internal",
    };
    RequestError {
        kind: kind.into(),
        message: e.to_string(),
    }
}

/// The port the daemon listens on (the configured one may be 0: any).
pub(super) fn listening_port(node: &Node) -> Option<u16> {
    let net = node.net.read().ok()?;
    net.listening.as_ref()?.rsplit(':').next()?.parse().ok()
}
