//! `health`: every job's and machine's state.

use serde_json::json;

use super::{io_err, Emit, RequestError};
use crate::node::Node;

/// Answers with the report: as JSON with `json`, else the table, rendered
/// here (`{"text", "healthy"}`), which is much less to build and send.
pub(super) fn health(
    node: &Node,
    max_silence_ms: Option<f64>,
    json: bool,
    emit: Emit<'_>,
) -> Result<(), RequestError> {
    let max_silence = max_silence_ms.unwrap_or(node.config.max_silence_ms);
    let report =
        crate::query::health(node, crate::clock::now_ms(), max_silence).ok_or_else(|| {
            RequestError {
                kind: "internal".into(),
                message: "health needs the daemon: start it with scuttlefs serve".into(),
            }
        })?;
    let answer = if json {
        report.to_json()
    } else {
        json!({"text": report.render(), "healthy": report.healthy()})
    };
    emit(answer).map_err(io_err)
}
