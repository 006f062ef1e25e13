//! `whoami`: this machine's id.

use serde_json::json;

use super::{io_err, Emit, RequestError};
use crate::node::Node;

/// Answers with `{"id": …}`.
pub(super) fn whoami(node: &Node, emit: Emit<'_>) -> Result<(), RequestError> {
    emit(json!({"id": node.id().to_string()})).map_err(io_err)
}
