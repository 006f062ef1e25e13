//! Epidemic broadcast trees, `ebt.replicate` version 3 in the classic
//! format: each side sends a vector clock (feed → `seq << 1 | !receive`, or
//! -1 for "not replicating"), then the messages the other lacks, live, on
//! the same duplex stream.
//!
//! The dialler opens the stream; the dialled side answers with its clock
//! first. A dialler that gets an error instead falls back to
//! `createHistoryStream` (see `session.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::history::{self, Outlet, Served};
use super::ingest::{forward, Ingest};
use super::muxrpc::{Frame, MAX_MESSAGE_FRAME};
use super::session::SessionError;
use crate::feed::FeedId;
use crate::node::Node;

/// How many feeds a peer may have us send at once.
const MAX_SENDERS: usize = 4096;
/// Feeds per frame of our clock: a clock of every feed in one frame would
/// pass the frame limit (256 KiB) at about 4,000 feeds. EBT notes are
/// incremental, so a clock may come in parts.
const CLOCK_FEEDS_PER_FRAME: usize = 1000;

/// One EBT stream with a peer.
pub struct Ebt {
    /// The request number our frames on it carry: the peer's, negated, when
    /// the peer opened it; ours when we did.
    pub wire: i32,
    /// Whether the peer has sent its clock. A stream we opened may still be
    /// refused until it does.
    pub established: bool,
    /// Feeds we are sending, each by its own task.
    senders: HashMap<FeedId, CancellationToken>,
}

impl Ebt {
    /// The stream the peer opened as its request `req`.
    pub fn answering(req: i32) -> Ebt {
        Ebt {
            wire: -req,
            established: true,
            senders: HashMap::new(),
        }
    }

    /// The stream we open as our request `req`.
    pub fn dialling(req: i32) -> Ebt {
        Ebt {
            wire: req,
            established: false,
            senders: HashMap::new(),
        }
    }

    /// The request number the peer's frames on this stream carry.
    pub fn incoming(&self) -> i32 {
        -self.wire
    }

    /// Stops sending every feed.
    pub fn stop_all(&mut self) {
        for token in self.senders.values() {
            token.cancel();
        }
        self.senders.clear();
    }

    /// Handles one frame of the peer's (not an end): a message, or its
    /// clock, which starts or stops our sending of each feed. Returns how
    /// far the peer's clock says it holds this machine's own feed, when
    /// that is past what we hold (this store was restored from an older
    /// copy).
    pub async fn handle(
        &mut self,
        node: &Arc<Node>,
        wanted: &HashSet<FeedId>,
        body: &[u8],
        outlet: &Outlet,
        ingest: &Ingest,
    ) -> Result<Option<u64>, SessionError> {
        // A frame too large for a message can only be a clock: parsed as
        // one, it fails at the first value that is not a note, instead of
        // building a large message first.
        let value: Value = if body.len() > MAX_MESSAGE_FRAME {
            let clock: serde_json::Map<String, Value> =
                serde_json::from_slice::<HashMap<String, i64>>(body)
                    .map_err(|e| {
                        SessionError::BadMessage(format!(
                            "EBT frame of {} bytes is not a clock: {e}",
                            body.len()
                        ))
                    })?
                    .into_iter()
                    .map(|(feed, note)| (feed, Value::from(note)))
                    .collect();
            Value::Object(clock)
        } else {
            serde_json::from_slice(body)
                .map_err(|e| SessionError::BadMessage(format!("malformed EBT frame: {e}")))?
        };
        if is_message(&value) {
            let author = value["author"]
                .as_str()
                .and_then(|a| FeedId::parse(a).ok())
                .ok_or_else(|| SessionError::BadMessage("EBT message with a bad author".into()))?;
            // Our own feed is written here only: a copy from a peer is at
            // best old news, at worst a fork from a restored backup; unless
            // a peer holds more of it than we do, which we then asked for.
            let own = author == node.id();
            if wanted.contains(&author) && (!own || node.notices.behind().is_some()) {
                forward(ingest, author, value).await?;
            }
            return Ok(None);
        }
        let Some(clock) = value.as_object() else {
            return Err(SessionError::BadMessage(
                "EBT frame is neither a message nor a clock".into(),
            ));
        };
        self.established = true;
        let me = node.id();
        let mut own_feed_claim = None;
        for (id, note) in clock {
            let (Ok(feed), Some(note)) = (FeedId::parse(id), note.as_i64()) else {
                continue;
            };
            if feed == me && note >= 0 {
                let theirs = (note >> 1) as u64;
                if theirs > node.store.tip(&me).map_or(0, |t| t.sequence) {
                    own_feed_claim = Some(theirs);
                }
            }
            let receive = note >= 0 && note & 1 == 0;
            if !receive {
                if let Some(token) = self.senders.remove(&feed) {
                    token.cancel();
                }
                continue;
            }
            if self.senders.contains_key(&feed) || self.senders.len() >= MAX_SENDERS {
                continue;
            }
            let token = CancellationToken::new();
            self.senders.insert(feed, token.clone());
            let args = json!({"id": feed.to_string(), "seq": (note >> 1) + 1, "live": true, "keys": false});
            let to = Served {
                wire: self.wire,
                outlet: outlet.clone(),
                cancel: token,
                ebt: true,
            };
            tokio::spawn(history::serve(node.clone(), args, to));
        }
        Ok(own_feed_claim)
    }
}

/// Our clock: every feed in `wanted`, with what we have of it, in parts
/// of at most [`CLOCK_FEEDS_PER_FRAME`] feeds (one frame each). Our own
/// feed is in it (peers learn from it how far we are), marked as not to be
/// sent to us.
pub fn clock(node: &Node, wanted: &HashSet<FeedId>) -> Vec<Value> {
    let me = node.id();
    // Our own feed is asked for only while a peer holds more of it.
    let fetch_own = node.notices.behind().is_some();
    let mut feeds: Vec<&FeedId> = wanted.iter().collect();
    feeds.sort();
    let parts: Vec<Value> = feeds
        .chunks(CLOCK_FEEDS_PER_FRAME)
        .map(|part| {
            let mut clock = serde_json::Map::new();
            for feed in part {
                let seq = node.store.tip(feed).map_or(0, |t| t.sequence);
                clock.insert(
                    feed.to_string(),
                    json!(note(seq, **feed != me || fetch_own)),
                );
            }
            Value::Object(clock)
        })
        .collect();
    if parts.is_empty() {
        // Peers wait for a clock before they send: an empty one says "none".
        return vec![json!({})];
    }
    parts
}

/// Our request to open an EBT stream. `format` is safe to send to every
/// implementation (older ones ignore it).
pub fn request(req: i32) -> Frame {
    Frame::request(
        req,
        &["ebt", "replicate"],
        "duplex",
        json!([{"version": 3, "format": "classic"}]),
    )
}

/// An EBT note: the sequence we have, and whether we want to receive more.
fn note(seq: u64, receive: bool) -> i64 {
    ((seq as i64) << 1) | i64::from(!receive)
}

/// Whether an EBT frame holds a message rather than a vector clock.
fn is_message(value: &Value) -> bool {
    value["sequence"].as_u64().is_some_and(|s| s > 0)
        && value["author"].is_string()
        && !value["content"].is_null()
}

/// `ebt.replicate({version: 3, format?: "classic"})`: the only kind we speak.
pub fn is_v3_classic(args: &Value) -> bool {
    let opts = &args[0];
    opts["version"].as_u64() == Some(3)
        && matches!(
            opts.get("format").and_then(Value::as_str),
            None | Some("classic")
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_and_requests() {
        assert_eq!(note(0, true), 0);
        assert_eq!(note(5, true), 10);
        assert_eq!(note(5, false), 11);
        assert!(is_v3_classic(&json!([{"version": 3}])));
        assert!(is_v3_classic(&json!([{"version": 3, "format": "classic"}])));
        assert!(!is_v3_classic(&json!([{"version": 2}])));
        assert!(!is_v3_classic(
            &json!([{"version": 3, "format": "bendybutt-v1"}])
        ));
        let body = request(4).body_json().expect("json");
        assert_eq!(body["name"], json!(["ebt", "replicate"]));
        assert_eq!(body["type"], "duplex");
        assert!(is_v3_classic(&body["args"]));
    }
}
