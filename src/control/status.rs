//! `status`: peers, feeds and replication progress, as the mount's
//! `status` file shows them.

use super::{io_err, Emit, RequestError};
use crate::node::Node;

/// Answers with the status report.
pub(super) fn status(node: &Node, emit: Emit<'_>) -> Result<(), RequestError> {
    emit(crate::query::status::report(node)).map_err(io_err)
}
