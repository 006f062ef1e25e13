//! The command-line verbs, served either in-process or by a running daemon
//! over its control socket (sled lets one process at a time open a store).
//!
//! The protocol is one JSON request line, answered by zero or more
//! `{"item": …}` lines and a final `{"ok": true}` or `{"error": …}` line, so
//! the command line prints the same thing whichever side did the work.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

mod health;
mod invite;
mod join;
mod log;
mod publish;
mod status;
mod whoami;

pub use log::{Cursor, LogFormat, LogItem};

use crate::feed::FeedError;
use crate::net::Net;
use crate::node::{Node, NodeError};
use crate::store::StoreError;

/// A command for the node.
///
/// Externally tagged (`{"health": {…}}`), not internally: serde buffers an
/// internally tagged enum's fields before it knows the variant, and that
/// buffer cannot hold the numbers of serde_json's `arbitrary_precision`
/// (which kuska-ssb turns on), so every number in a request was refused.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// This machine's id.
    Whoami,
    /// Sign and store these contents, all or nothing; answers with every
    /// stored message.
    Publish {
        /// Message contents.
        contents: Vec<Value>,
    },
    /// `publish --stdin`: each line is the text of one message with these
    /// fields, all or nothing. Answers with one summary, since it may
    /// publish a whole log at once.
    PublishLines {
        /// Content fields every message gets (`type`, `source`, …).
        fields: Map<String, Value>,
        /// The lines, without their newlines.
        lines: Vec<String>,
    },
    /// Every message in receive order (`sbot log`).
    Log,
    /// Every message after `after` with the cursor after it and, with
    /// `follow`, each new one as it is stored, until the reader goes
    /// (`log --follow --cursor-file`).
    LogFrom {
        /// Where the reader stopped last time.
        #[serde(default)]
        after: Option<Cursor>,
        /// Go on with new messages.
        #[serde(default)]
        follow: bool,
        /// JSON (`{key, value, timestamp}`) or merged.log's text.
        #[serde(default)]
        format: LogFormat,
    },
    /// Peers, feeds and replication progress.
    Status,
    /// Every job's and machine's health.
    Health {
        /// How long a machine may be silent before it counts as quiet (ms).
        max_silence_ms: Option<f64>,
        /// The whole report as JSON; else the table, rendered by the daemon
        /// (`{"text", "healthy"}`), which is much less to build and send.
        #[serde(default)]
        json: bool,
    },
    /// Redeem a pub's or a room's invite code.
    InviteAccept {
        /// The code.
        code: String,
        /// A room's network key, when it is not ours (base64, or `main`).
        #[serde(default)]
        room_caps: Option<String>,
    },
    /// Make an invite to this machine for `uses` redemptions.
    InviteCreate {
        /// How many machines may redeem it.
        uses: u32,
    },
    /// Make a join code for `uses` new machines, good for `expires_ms`.
    JoinCode {
        /// How many machines may join with it.
        uses: u32,
        /// How long it lasts (ms).
        expires_ms: f64,
    },
    /// The join codes and invites with uses left.
    JoinCodes,
    /// Revoke the join code (or invite) with this short id.
    JoinRevoke {
        /// As `JoinCodes` names it.
        id: String,
    },
}

/// Why a request failed, in a form that survives the socket.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// `too_large`, `invalid` or `internal`.
    pub kind: String,
    /// For the user.
    pub message: String,
}

impl From<NodeError> for RequestError {
    fn from(e: NodeError) -> Self {
        let kind = match &e {
            NodeError::Feed(FeedError::TooLarge(_))
            | NodeError::Store(StoreError::Rejected(FeedError::TooLarge(_))) => "too_large",
            NodeError::Feed(_) | NodeError::Store(StoreError::Rejected(_)) => "invalid",
            _ => "internal",
        };
        RequestError {
            kind: kind.into(),
            message: e.to_string(),
        }
    }
}

/// Where a verb's result items go, one at a time.
type Emit<'a> = &'a mut dyn FnMut(Value) -> std::io::Result<()>;

/// A failure to hand an item on: the other end went away.
fn io_err(e: std::io::Error) -> RequestError {
    RequestError {
        kind: "internal".into(),
        message: e.to_string(),
    }
}

/// Runs `request` on `node`, handing each result item to `emit`. Each verb
/// lives in its own file.
pub fn handle(
    node: &Arc<Node>,
    net: &Arc<Net>,
    request: Request,
    emit: Emit<'_>,
) -> Result<(), RequestError> {
    match request {
        Request::Whoami => whoami::whoami(node, emit),
        Request::Publish { contents } => publish::publish(node, contents, emit),
        Request::PublishLines { fields, lines } => {
            publish::publish_lines(node, &fields, &lines, emit)
        }
        Request::Log => log::log(node, emit),
        Request::LogFrom {
            after,
            follow,
            format,
        } => log::log_from(node, after, follow, format, emit),
        Request::Status => status::status(node, emit),
        Request::Health {
            max_silence_ms,
            json,
        } => health::health(node, max_silence_ms, json, emit),
        Request::InviteAccept { code, room_caps } => {
            invite::accept(node, net, &code, room_caps, emit)
        }
        Request::InviteCreate { uses } => invite::create(node, net, uses, emit),
        Request::JoinCode { uses, expires_ms } => join::create(node, net, uses, expires_ms, emit),
        Request::JoinCodes => join::list(net, emit),
        Request::JoinRevoke { id } => join::revoke(net, &id, emit),
    }
}

/// Runs network work from a control request: on the daemon's runtime when
/// there is one (requests run on its blocking threads), else on a runtime
/// of its own.
fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, RequestError> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => Ok(handle.block_on(future)),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|runtime| runtime.block_on(future))
            .map_err(|e| RequestError {
                kind: "internal".into(),
                message: format!("cannot start a runtime: {e}"),
            }),
    }
}

/// Sends `request` to the daemon listening on `socket`. `Ok(None)` when no
/// daemon answers there.
pub fn call(
    socket: &Path,
    request: &Request,
    emit: &mut dyn FnMut(Value) -> std::io::Result<()>,
) -> std::io::Result<Option<Result<(), RequestError>>> {
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    // Streamed: a `publish --stdin` request holds a whole log.
    let mut writer = std::io::BufWriter::new(stream.try_clone()?);
    serde_json::to_writer(&mut writer, request).map_err(std::io::Error::other)?;
    writer.write_all(b"\n")?;
    writer.flush()?;
    drop(writer);
    for line in BufReader::new(stream).lines() {
        let reply: Value = serde_json::from_str(&line?).map_err(std::io::Error::other)?;
        if let Some(item) = reply.get("item") {
            emit(item.clone())?;
        } else if let Some(error) = reply.get("error") {
            let error: RequestError =
                serde_json::from_value(error.clone()).map_err(std::io::Error::other)?;
            return Ok(Some(Err(error)));
        } else {
            return Ok(Some(Ok(())));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the daemon closed the control socket mid-answer",
    ))
}

/// Serves the control socket at `socket` until the process ends.
pub async fn serve(node: Arc<Node>, net: Arc<Net>, socket: &Path) -> std::io::Result<()> {
    // A socket file left by a killed daemon would make bind fail.
    if UnixStream::connect(socket).is_err() {
        let _ = std::fs::remove_file(socket);
    }
    let listener = tokio::net::UnixListener::bind(socket)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let node = node.clone();
        let net = net.clone();
        tokio::spawn(async move {
            let std_stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("control socket: {e}");
                    return;
                }
            };
            // Requests touch sled and may stream a whole store: keep them
            // off the async workers.
            let result =
                tokio::task::spawn_blocking(move || serve_one(&node, &net, std_stream)).await;
            if let Ok(Err(e)) = result {
                tracing::debug!("control client went away: {e}");
            }
        });
    }
}

fn serve_one(node: &Arc<Node>, net: &Arc<Net>, stream: UnixStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = std::io::BufWriter::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let outcome = match serde_json::from_str::<Request>(&line) {
        Ok(request) => handle(node, net, request, &mut |item| {
            // A followed log says when what it sent should reach the reader.
            let flush = item.get("flush").is_some();
            serde_json::to_writer(&mut writer, &json!({ "item": item }))?;
            writer.write_all(b"\n")?;
            if flush {
                writer.flush()?;
            }
            Ok(())
        }),
        Err(e) => Err(RequestError {
            kind: "invalid".into(),
            message: format!("bad request: {e}"),
        }),
    };
    let last = match outcome {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({ "error": e }),
    };
    serde_json::to_writer(&mut writer, &last)?;
    writer.write_all(b"\n")?;
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request, with every option set, as the command line sends it:
    /// through text, as over the socket.
    #[test]
    fn every_request_survives_the_socket_encoding() {
        let mut fields = Map::new();
        fields.insert("type".into(), "log".into());
        let requests = vec![
            Request::Whoami,
            Request::Publish {
                contents: vec![json!({"type": "log", "n": 1.5, "big": 12345678901234567u64})],
            },
            Request::PublishLines {
                fields,
                lines: vec!["a".into()],
            },
            Request::Log,
            Request::LogFrom {
                after: Some(Cursor {
                    start: 0,
                    end: 1234,
                    key: "%x=.sha256".into(),
                }),
                follow: true,
                format: LogFormat::Text,
            },
            Request::Status,
            Request::Health {
                max_silence_ms: Some(93_600_000.0),
                json: true,
            },
            Request::Health {
                max_silence_ms: Some(0.5),
                json: false,
            },
            Request::InviteAccept {
                code: "net:h:1~shs:k:s".into(),
                room_caps: Some("main".into()),
            },
            Request::InviteCreate { uses: 7 },
            Request::JoinCode {
                uses: 2,
                expires_ms: 604_800_000.0,
            },
            Request::JoinCodes,
            Request::JoinRevoke {
                id: "abcd1234".into(),
            },
        ];
        for request in requests {
            let text = serde_json::to_string(&request).expect("encodes");
            let back: Request = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{text} does not decode: {e}"));
            assert_eq!(
                serde_json::to_string(&back).expect("encodes"),
                text,
                "{text} changed on the way"
            );
        }
    }
}
