//! `publish` and `publish --stdin`: sign and store, all or nothing.

use serde_json::{json, Map, Value};

use super::{io_err, Emit, RequestError};
use crate::node::Node;
use crate::publish::content_for_stdin_line;

/// Publishes `contents`; answers with every stored message.
pub(super) fn publish(
    node: &Node,
    contents: Vec<Value>,
    emit: Emit<'_>,
) -> Result<(), RequestError> {
    let stored = node.publish(contents)?;
    node.flush()?;
    for entry in stored {
        emit(entry.msg.to_kvt(entry.received_ms)).map_err(io_err)?;
    }
    Ok(())
}

/// Publishes each line as the text of a message with `fields`; answers
/// with one summary (it may be a whole log at once).
pub(super) fn publish_lines(
    node: &Node,
    fields: &Map<String, Value>,
    lines: &[String],
    emit: Emit<'_>,
) -> Result<(), RequestError> {
    let contents = lines
        .iter()
        .filter_map(|line| content_for_stdin_line(line, fields));
    let mut first: Option<(u64, String)> = None;
    let mut last: Option<(u64, String)> = None;
    let count = node.publish_with(contents, |stored| {
        if let (Some(a), Some(b)) = (stored.first(), stored.last()) {
            if first.is_none() {
                first = Some((a.msg.sequence, a.msg.key.to_string()));
            }
            last = Some((b.msg.sequence, b.msg.key.to_string()));
        }
    })?;
    node.flush()?;
    emit(json!({
        "published": count,
        "feed": node.id().to_string(),
        "first": first.map(|(seq, key)| json!({"sequence": seq, "key": key})),
        "last": last.map(|(seq, key)| json!({"sequence": seq, "key": key})),
    }))
    .map_err(io_err)
}
