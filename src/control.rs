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

use crate::feed::FeedError;
use crate::net::invite::InviteError;
use crate::net::Net;
use crate::node::{Node, NodeError};
use crate::publish::content_for_stdin_line;
use crate::status;
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
    /// Every message in receive order.
    Log,
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

/// Runs `request` on `node`, handing each result item to `emit`.
pub fn handle(
    node: &Arc<Node>,
    net: &Arc<Net>,
    request: Request,
    emit: &mut dyn FnMut(Value) -> std::io::Result<()>,
) -> Result<(), RequestError> {
    let io_err = |e: std::io::Error| RequestError {
        kind: "internal".into(),
        message: e.to_string(),
    };
    match request {
        Request::Whoami => emit(json!({"id": node.id().to_string()})).map_err(io_err),
        Request::Publish { contents } => {
            let stored = node.publish(contents)?;
            node.flush()?;
            for entry in stored {
                emit(entry.msg.to_kvt(entry.received_ms)).map_err(io_err)?;
            }
            Ok(())
        }
        Request::PublishLines { fields, lines } => {
            let contents = lines
                .iter()
                .filter_map(|line| content_for_stdin_line(line, &fields));
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
        Request::Log => {
            for raw in node.store.receive_log() {
                let raw = raw.map_err(NodeError::from)?;
                let msg = raw.message().map_err(NodeError::from)?;
                emit(msg.to_kvt(raw.received_ms)).map_err(io_err)?;
            }
            Ok(())
        }
        Request::Status => emit(status::report(node)).map_err(io_err),
        Request::Health {
            max_silence_ms,
            json,
        } => {
            let max_silence = max_silence_ms.unwrap_or(node.config.max_silence_ms);
            let report = node
                .health(crate::clock::now_ms(), max_silence)
                .ok_or_else(|| RequestError {
                    kind: "internal".into(),
                    message: "health needs the daemon: start it with scuttlefs serve".into(),
                })?;
            let answer = if json {
                report.to_json()
            } else {
                json!({"text": report.render(), "healthy": report.healthy()})
            };
            emit(answer).map_err(io_err)
        }
        Request::InviteAccept { code, room_caps } => {
            let room_caps = room_caps
                .map(|c| crate::config::parse_room_caps(&c))
                .transpose()
                .map_err(|e| RequestError {
                    kind: "invalid".into(),
                    message: e.to_string(),
                })?;
            let answer =
                block_on(net.accept_invite(node, &code, room_caps))?.map_err(invite_err)?;
            emit(answer).map_err(io_err)
        }
        Request::InviteCreate { uses } => {
            let port = listening_port(node).unwrap_or(node.config.port);
            let code = net.create_invite(node, uses, port).map_err(invite_err)?;
            emit(Value::String(code)).map_err(io_err)
        }
    }
}

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
fn listening_port(node: &Node) -> Option<u16> {
    let net = node.net.read().ok()?;
    net.listening.as_ref()?.rsplit(':').next()?.parse().ok()
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
            serde_json::to_writer(&mut writer, &json!({ "item": item }))?;
            writer.write_all(b"\n")
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
