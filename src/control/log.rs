//! `log`: every stored message, in receive order; with `follow`, each new
//! one as it is stored, after a cursor a reader kept (`log --follow
//! --cursor-file`, for log shippers).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{io_err, Emit, RequestError};
use crate::node::{Node, NodeError};
use crate::view::line::LineRenderer;

/// Where a reader of the log stopped: the last message it was given, and
/// where that message's record lies in the store's log. The message log
/// only grows, so the place stays valid across restarts; the key tells a
/// store that was replaced (or lost its last writes in a power cut) from
/// the one the cursor was made on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Where the message's record starts.
    pub start: u64,
    /// Where it ends: the next message starts here.
    pub end: u64,
    /// The message's id.
    pub key: String,
}

/// How a followed log is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Each message as `{key, value, timestamp}` (sbot's).
    #[default]
    Json,
    /// merged.log's line, for log messages; other messages print nothing.
    Text,
}

/// A long catch-up is flushed (and its cursor saved) this often.
const FLUSH_EVERY: usize = 4096;
/// How long a follower waits between looks at the log's end.
const POLL: Duration = Duration::from_millis(50);
/// How long a follower may hear nothing before it is sent a keepalive,
/// which also tells the daemon whether the reader is still there.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// Answers with each message as `{key, value, timestamp}`.
pub(super) fn log(node: &Node, emit: Emit<'_>) -> Result<(), RequestError> {
    for raw in node.store.receive_log() {
        let raw = raw.map_err(NodeError::from)?;
        let msg = raw.message().map_err(NodeError::from)?;
        emit(msg.to_kvt(raw.received_ms)).map_err(io_err)?;
    }
    Ok(())
}

/// Answers with each message after `after` (from the start without one),
/// as `{"cursor", "message"}` (or `"line"` in text), then, when
/// `follow`, with each new one as it is stored, until the reader goes.
pub(super) fn log_from(
    node: &Node,
    after: Option<Cursor>,
    follow: bool,
    format: LogFormat,
    emit: Emit<'_>,
) -> Result<(), RequestError> {
    let mut from = match after {
        None => 0,
        Some(cursor) => resume_at(node, &cursor)?,
    };
    // merged.log's own renderer: split lines joined (parts from before
    // the cursor read back from the store), names learned as they come.
    let mut renderer = LineRenderer::new(node.names());
    let mut quiet_since = Instant::now();
    loop {
        let mut sent = 0usize;
        for item in node.store.log_from(from) {
            let (start, end, raw) = item.map_err(NodeError::from)?;
            let msg = raw.message().map_err(NodeError::from)?;
            let cursor = Cursor {
                start,
                end,
                key: raw.key.to_string(),
            };
            let item = match format {
                LogFormat::Json => {
                    json!({"cursor": cursor, "message": msg.to_kvt(raw.received_ms)})
                }
                LogFormat::Text => {
                    let line = renderer
                        .render(&msg, |feed, seq| node.store.get(feed, seq).ok().flatten())
                        .map(|bytes| {
                            String::from_utf8_lossy(&bytes)
                                .trim_end_matches('\n')
                                .to_string()
                        });
                    json!({"cursor": cursor, "line": line})
                }
            };
            emit(item).map_err(io_err)?;
            from = end;
            sent += 1;
            if sent % FLUSH_EVERY == 0 {
                emit(json!({"flush": true})).map_err(io_err)?;
            }
        }
        if !follow {
            return Ok(());
        }
        if sent > 0 {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= KEEPALIVE {
            emit(json!({"keepalive": true})).map_err(io_err)?;
            quiet_since = Instant::now();
        }
        // Flushes what was written, so the reader sees it before the wait.
        emit(json!({"flush": true})).map_err(io_err)?;
        let waited = Instant::now();
        while node.store.log_end() <= from && waited.elapsed() < KEEPALIVE {
            std::thread::sleep(POLL);
        }
    }
}

/// Where to go on from `cursor`: after its message, when the store holds
/// that message there.
fn resume_at(node: &Node, cursor: &Cursor) -> Result<u64, RequestError> {
    let mismatch = || RequestError {
        kind: "invalid".into(),
        message: format!(
            "the cursor names message {} at log offset {}, which this store does not hold there \
             (a different or restored store, or one that lost its last writes): remove the \
             cursor file to start again from the beginning",
            cursor.key, cursor.start
        ),
    };
    if cursor.end > node.store.log_end() || cursor.start >= cursor.end {
        return Err(mismatch());
    }
    match node.store.log_from(cursor.start).next() {
        Some(Ok((_, end, raw))) if end == cursor.end && raw.key.to_string() == cursor.key => {
            Ok(end)
        }
        _ => Err(mismatch()),
    }
}

/// The items of a log answer, as the reader sees them.
#[derive(Debug, PartialEq)]
pub enum LogItem {
    /// A message (JSON, on one line: the objects `sbot log` prints), or a line (text, `None` for a message that
    /// prints nothing), with the cursor after it.
    Entry {
        /// After this message.
        cursor: Cursor,
        /// What to print.
        output: Option<String>,
    },
    /// The daemon wrote all it had: a moment to flush and save the cursor.
    Flush,
    /// Nothing new; the daemon checks that the reader is still there.
    Keepalive,
}

impl LogItem {
    /// Reads one item of a `log` answer with a cursor; `None` for anything
    /// else.
    pub fn parse(item: &Value) -> Option<LogItem> {
        if item.get("flush").is_some() {
            return Some(LogItem::Flush);
        }
        if item.get("keepalive").is_some() {
            return Some(LogItem::Keepalive);
        }
        let cursor: Cursor = serde_json::from_value(item.get("cursor")?.clone()).ok()?;
        let output = match (item.get("message"), item.get("line")) {
            (Some(message), _) => Some(crate::feed::json::to_js_compact(message)),
            (None, Some(Value::String(line))) => Some(line.clone()),
            _ => None,
        };
        Some(LogItem::Entry { cursor, output })
    }
}
