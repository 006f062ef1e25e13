//! One muxrpc session with a peer: what we serve, and what we replicate.
//!
//! Tasks per connection:
//! - a reader, which turns the box stream into frames;
//! - a writer, which batches outgoing frames and flushes;
//! - an ingester, which drops messages we already have, verifies the rest on
//!   every core and stores them (a peer that sends an invalid message is cut
//!   off, and nothing of that message is stored);
//! - one task per stream we serve (`createHistoryStream`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rayon::prelude::*;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::muxrpc::{self, Frame};
use super::shs::{Connection, Reader, Writer};
use crate::feed::{FeedError, FeedId, Message};
use crate::node::{Event, Node, NodeError};
use crate::store::StoreError;
use crate::view::kvt_line;

/// How many streams a peer may have us serve at once.
const MAX_SERVED_STREAMS: usize = 4096;
/// Messages read from the store per step when serving a history stream.
const SERVE_CHUNK: usize = 256;
/// Messages verified and stored per batch when receiving.
const INGEST_BATCH: usize = 1024;

/// Messages exchanged on one connection.
#[derive(Default, Debug)]
pub struct Counters {
    /// Messages received and stored.
    pub received: AtomicU64,
    /// Messages sent.
    pub sent: AtomicU64,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The connection failed or the peer left.
    #[error("{0}")]
    Connection(String),
    /// The peer sent an invalid message.
    #[error("invalid message from peer: {0}")]
    BadMessage(String),
}

/// Runs a session on `conn` until either side ends it or `close` fires.
pub async fn run(
    node: Arc<Node>,
    conn: Connection,
    counters: Arc<Counters>,
    close: CancellationToken,
) -> Result<(), SessionError> {
    let (out, out_rx) = mpsc::channel::<Frame>(1024);
    let writer = tokio::spawn(write_loop(conn.writer, out_rx, counters.clone()));
    let (frames_tx, mut frames) = mpsc::channel::<Result<Frame, String>>(256);
    let reader = tokio::spawn(read_loop(conn.reader, frames_tx));
    let (ingest_tx, ingest_rx) = mpsc::channel::<(FeedId, Value)>(4 * INGEST_BATCH);
    let failed = CancellationToken::new();
    let ingester = tokio::spawn(ingest_loop(
        node.clone(),
        ingest_rx,
        counters.clone(),
        failed.clone(),
    ));
    let mut events = node.subscribe();
    let mut state = State {
        next_req: 1,
        outgoing: HashMap::new(),
        requested: HashMap::new(),
        served: HashMap::new(),
        refused: std::collections::HashSet::new(),
        pings: std::collections::HashSet::new(),
        ebt: None,
        wanted: std::collections::HashSet::new(),
    };
    for frame in state.sync_requests(&node) {
        let _ = out.send(frame).await;
    }

    let result = loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                Some(Ok(frame)) => {
                    if let Err(e) = state.handle(&node, frame, &out, &ingest_tx).await {
                        break Err(e);
                    }
                }
                Some(Err(e)) => break Err(SessionError::Connection(e)),
                None => break Ok(()),
            },
            event = events.recv() => match event {
                Ok(Event::GraphChanged) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    for frame in state.sync_requests(&node) {
                        let _ = out.send(frame).await;
                    }
                }
                Ok(Event::Appended { .. }) => {}
                Err(broadcast::error::RecvError::Closed) => break Ok(()),
            },
            _ = failed.cancelled() => {
                break Err(SessionError::BadMessage("see the log above".into()));
            }
            _ = close.cancelled() => break Ok(()),
        }
    };

    for token in state.served.values() {
        token.cancel();
    }
    if let Some(ebt) = &state.ebt {
        ebt.stop_all();
    }
    drop(ingest_tx);
    drop(out);
    reader.abort();
    let _ = ingester.await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    result
}

struct State {
    next_req: i32,
    /// Our requests: request number → feed.
    outgoing: HashMap<i32, FeedId>,
    /// Feeds we asked for on this connection, and the request number.
    requested: HashMap<FeedId, i32>,
    /// Streams we serve: the peer's request number → cancel token.
    served: HashMap<i32, CancellationToken>,
    /// Peer streams we refused: later frames of them are not new requests.
    refused: std::collections::HashSet<i32>,
    /// The peer's `gossip.ping` streams: each timestamp it sends is answered.
    pings: std::collections::HashSet<i32>,
    /// The peer's `ebt.replicate` stream, when it opened one.
    ebt: Option<Ebt>,
    /// The feeds within our hops, as of the last graph change.
    wanted: std::collections::HashSet<FeedId>,
}

/// An epidemic-broadcast-trees session the peer opened: each side sends a
/// vector clock (feed → `seq << 1 | !receive`, or -1 for "not
/// replicating"), then the messages the other lacks, live.
struct Ebt {
    req: i32,
    /// Feeds we are sending, each by its own task.
    senders: HashMap<FeedId, CancellationToken>,
}

impl Ebt {
    /// Stops sending every feed.
    fn stop_all(&self) {
        for token in self.senders.values() {
            token.cancel();
        }
    }
}

/// Hands a received message to the ingester.
async fn forward(
    ingest: &mpsc::Sender<(FeedId, Value)>,
    feed: FeedId,
    value: Value,
) -> Result<(), SessionError> {
    ingest
        .send((feed, value))
        .await
        .map_err(|_| SessionError::Connection("ingester stopped".into()))
}

/// An EBT note: the sequence we have, and whether we want to receive more.
fn ebt_note(seq: u64, receive: bool) -> i64 {
    ((seq as i64) << 1) | i64::from(!receive)
}

/// Whether an EBT frame holds a message rather than a vector clock.
fn is_ebt_message(value: &Value) -> bool {
    value["sequence"].as_u64().is_some_and(|s| s > 0)
        && value["author"].is_string()
        && !value["content"].is_null()
}

impl State {
    /// Requests every wanted feed not yet requested, and ends requests for
    /// feeds no longer wanted (unfollowing stops replication).
    fn sync_requests(&mut self, node: &Node) -> Vec<Frame> {
        let me = node.id();
        let wanted = node.wanted_feeds();
        self.wanted = wanted.keys().copied().collect();
        let mut frames = Vec::new();
        if let Some(ebt) = &self.ebt {
            frames.push(Frame::json(-ebt.req, true, false, &self.ebt_clock(node)));
        }
        let stale: Vec<(FeedId, i32)> = self
            .requested
            .iter()
            .filter(|(feed, _)| !wanted.contains_key(feed))
            .map(|(f, r)| (*f, *r))
            .collect();
        for (feed, req) in stale {
            self.requested.remove(&feed);
            if self.outgoing.remove(&req).is_some() {
                frames.push(Frame::end(req));
            }
        }
        let mut new: Vec<&FeedId> = wanted
            .keys()
            .filter(|f| **f != me && !self.requested.contains_key(f))
            .collect();
        new.sort();
        for feed in new {
            let req = self.next_req;
            self.next_req += 1;
            let seq = node.store.tip(feed).map_or(0, |t| t.sequence) + 1;
            self.requested.insert(*feed, req);
            self.outgoing.insert(req, *feed);
            frames.push(Frame::json(
                req,
                true,
                false,
                &json!({
                    "name": ["createHistoryStream"],
                    "type": "source",
                    "args": [{"id": feed.to_string(), "seq": seq, "live": true, "keys": false}],
                }),
            ));
        }
        frames
    }

    /// Our vector clock: every feed within our hops, with what we have.
    fn ebt_clock(&self, node: &Node) -> Value {
        let mut clock = serde_json::Map::new();
        for feed in &self.wanted {
            let seq = node.store.tip(feed).map_or(0, |t| t.sequence);
            clock.insert(feed.to_string(), json!(ebt_note(seq, true)));
        }
        Value::Object(clock)
    }

    /// A frame on the peer's EBT stream: a message, or its vector clock.
    async fn handle_ebt(
        &mut self,
        node: &Arc<Node>,
        frame: Frame,
        out: &mpsc::Sender<Frame>,
        ingest: &mpsc::Sender<(FeedId, Value)>,
    ) -> Result<(), SessionError> {
        let Some(ebt) = self.ebt.as_mut() else {
            return Ok(());
        };
        if frame.end {
            ebt.stop_all();
            let req = ebt.req;
            self.ebt = None;
            let _ = out.send(Frame::end(-req)).await;
            return Ok(());
        }
        let value: Value = serde_json::from_slice(&frame.body)
            .map_err(|e| SessionError::BadMessage(format!("malformed EBT frame: {e}")))?;
        if is_ebt_message(&value) {
            let author = value["author"]
                .as_str()
                .and_then(|a| FeedId::parse(a).ok())
                .ok_or_else(|| SessionError::BadMessage("EBT message with a bad author".into()))?;
            if self.wanted.contains(&author) {
                forward(ingest, author, value).await?;
            }
            return Ok(());
        }
        let Some(clock) = value.as_object() else {
            return Err(SessionError::BadMessage(
                "EBT frame is neither a message nor a clock".into(),
            ));
        };
        for (id, note) in clock {
            let (Ok(feed), Some(note)) = (FeedId::parse(id), note.as_i64()) else {
                continue;
            };
            let receive = note >= 0 && note & 1 == 0;
            if !receive {
                if let Some(token) = ebt.senders.remove(&feed) {
                    token.cancel();
                }
                continue;
            }
            if ebt.senders.contains_key(&feed) || ebt.senders.len() >= MAX_SERVED_STREAMS {
                continue;
            }
            let token = CancellationToken::new();
            ebt.senders.insert(feed, token.clone());
            let args = json!({"id": feed.to_string(), "seq": (note >> 1) + 1, "live": true, "keys": false});
            tokio::spawn(serve_history(
                node.clone(),
                ebt.req,
                args,
                out.clone(),
                token,
                true,
            ));
        }
        Ok(())
    }

    async fn handle(
        &mut self,
        node: &Arc<Node>,
        frame: Frame,
        out: &mpsc::Sender<Frame>,
        ingest: &mpsc::Sender<(FeedId, Value)>,
    ) -> Result<(), SessionError> {
        if frame.req < 0 {
            let req = -frame.req;
            let Some(feed) = self.outgoing.get(&req).copied() else {
                return Ok(()); // a late frame for a request we ended
            };
            if frame.end {
                // The peer ended (or refused) our request: end our side too.
                self.outgoing.remove(&req);
                if let Some(error) = frame.body_json().filter(|b| b.get("message").is_some()) {
                    tracing::debug!(
                        "peer refused createHistoryStream for {feed}: {}",
                        error["message"]
                    );
                }
                let _ = out.send(Frame::end(req)).await;
                return Ok(());
            }
            let value: Value = serde_json::from_slice(&frame.body)
                .map_err(|e| SessionError::BadMessage(format!("malformed JSON: {e}")))?;
            // With keys: true a peer sends {key, value, timestamp}.
            let value = match value.get("value") {
                Some(inner) if value.get("key").is_some() => inner.clone(),
                _ => value,
            };
            return forward(ingest, feed, value).await;
        }

        // A frame of a request the peer made.
        if self.ebt.as_ref().is_some_and(|e| e.req == frame.req) {
            return self.handle_ebt(node, frame, out, ingest).await;
        }
        if let Some(token) = self.served.get(&frame.req) {
            if frame.end {
                token.cancel();
                self.served.remove(&frame.req);
            }
            return Ok(());
        }
        if self.pings.contains(&frame.req) {
            if frame.end {
                self.pings.remove(&frame.req);
                let _ = out.send(Frame::end(-frame.req)).await;
            } else {
                let _ = out.send(pong(frame.req)).await;
            }
            return Ok(());
        }
        if self.refused.contains(&frame.req) {
            if frame.end {
                self.refused.remove(&frame.req);
            }
            return Ok(());
        }
        if frame.end {
            return Ok(());
        }
        let request = frame.body_json().unwrap_or(Value::Null);
        let name: Vec<&str> = request["name"]
            .as_array()
            .map(|parts| parts.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let kind = request["type"].as_str().unwrap_or("async");
        let is_stream = kind != "async" && kind != "sync";
        match name.as_slice() {
            ["createHistoryStream"] if self.served.len() < MAX_SERVED_STREAMS => {
                let args = request["args"].get(0).cloned().unwrap_or(Value::Null);
                let token = CancellationToken::new();
                self.served.insert(frame.req, token.clone());
                tokio::spawn(serve_history(
                    node.clone(),
                    frame.req,
                    args,
                    out.clone(),
                    token,
                    false,
                ));
            }
            // ssb-gossip's keepalive: a duplex stream of timestamps, each
            // answered once with ours. Peers drop connections whose ping
            // fails. Nothing is sent unprompted: pull-ping (the JS side)
            // answers a timestamp it did not ask for with a new one, so an
            // extra one would start an endless exchange.
            ["gossip", "ping"] if is_stream && self.pings.len() < 16 => {
                self.pings.insert(frame.req);
            }
            ["ebt", "replicate"] if self.ebt.is_none() && is_ebt_v3_classic(&request["args"]) => {
                self.ebt = Some(Ebt {
                    req: frame.req,
                    senders: HashMap::new(),
                });
                let clock = self.ebt_clock(node);
                let _ = out.send(Frame::json(-frame.req, true, false, &clock)).await;
            }
            ["whoami"] => {
                let _ = out
                    .send(Frame::json(
                        -frame.req,
                        false,
                        false,
                        &json!({"id": node.id().to_string()}),
                    ))
                    .await;
            }
            _ => {
                let method = name.join(".");
                tracing::debug!("peer called unsupported method {method:?}");
                if is_stream && self.refused.len() < MAX_SERVED_STREAMS {
                    self.refused.insert(frame.req);
                }
                let _ = out
                    .send(Frame::error(
                        -frame.req,
                        is_stream,
                        &format!("method:{method} is not in list of allowed methods"),
                    ))
                    .await;
            }
        }
        Ok(())
    }
}

/// A `gossip.ping` answer: our clock, on the peer's ping stream `req`.
fn pong(req: i32) -> Frame {
    Frame::json(-req, true, false, &json!(crate::node::now_ms()))
}

/// `ebt.replicate({version: 3, format?: "classic"})`: the only kind we speak.
fn is_ebt_v3_classic(args: &Value) -> bool {
    let opts = &args[0];
    opts["version"].as_u64() == Some(3)
        && matches!(
            opts.get("format").and_then(Value::as_str),
            None | Some("classic")
        )
}

async fn read_loop(mut reader: Reader, frames: mpsc::Sender<Result<Frame, String>>) {
    loop {
        let next = match muxrpc::read_frame(&mut reader).await {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => return,
            Err(e) => Err(e.to_string()),
        };
        let stop = next.is_err();
        if frames.send(next).await.is_err() || stop {
            return;
        }
    }
}

async fn write_loop(
    mut writer: Writer,
    mut frames: mpsc::Receiver<Frame>,
    counters: Arc<Counters>,
) {
    while let Some(frame) = frames.recv().await {
        let mut batch = vec![frame];
        while batch.len() < 256 {
            match frames.try_recv() {
                Ok(frame) => batch.push(frame),
                Err(_) => break,
            }
        }
        for frame in &batch {
            if frame.req < 0 && frame.stream && !frame.end {
                counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            if muxrpc::write_frame(&mut writer, frame).await.is_err() {
                return;
            }
        }
        if muxrpc::flush(&mut writer).await.is_err() {
            return;
        }
    }
    muxrpc::goodbye(&mut writer).await;
}

/// `createHistoryStream({id, seq, live, old, keys, limit})`: the feed's
/// messages from `seq` (inclusive) on; with `live`, new ones as they come.
async fn serve_history(
    node: Arc<Node>,
    req: i32,
    args: Value,
    out: mpsc::Sender<Frame>,
    cancel: CancellationToken,
    ebt: bool,
) {
    let feed = match args["id"].as_str().map(FeedId::parse) {
        Some(Ok(feed)) => feed,
        _ => {
            let _ = out
                .send(Frame::error(
                    -req,
                    true,
                    "createHistoryStream needs a valid id",
                ))
                .await;
            return;
        }
    };
    let live = args["live"].as_bool().unwrap_or(false);
    let old = args["old"].as_bool().unwrap_or(true);
    let keys = args["keys"].as_bool().unwrap_or(true);
    let limit = args["limit"].as_i64().filter(|l| *l >= 0).map(|l| l as u64);
    // Subscribe before reading history, so nothing falls between the two.
    let mut events = node.subscribe();
    let mut next = args["seq"].as_u64().unwrap_or(0).max(1);
    if !old {
        next = node.store.tip(&feed).map_or(0, |t| t.sequence) + 1;
    }
    let mut sent = 0u64;
    loop {
        // Send everything stored from `next` on.
        loop {
            let wanted = limit.map_or(SERVE_CHUNK as u64, |l| (l - sent).min(SERVE_CHUNK as u64));
            if wanted == 0 {
                if !ebt {
                    let _ = out.send(Frame::end(-req)).await;
                }
                return;
            }
            let store = node.store.clone();
            let from = next;
            let own_feed = feed == node.id();
            let chunk = tokio::task::spawn_blocking(move || {
                let chunk = store
                    .history(&feed, from)
                    .take(wanted as usize)
                    .collect::<Result<Vec<_>, StoreError>>()?;
                // This machine's own messages leave only once they would
                // survive a power loss: peers that had messages this
                // machine then lost would see its next ones as a fork.
                if own_feed && !chunk.is_empty() {
                    store.sync_log()?;
                }
                Ok::<_, StoreError>(chunk)
            })
            .await;
            let chunk = match chunk {
                Ok(Ok(chunk)) => chunk,
                _ => {
                    let _ = out
                        .send(Frame::error(-req, true, "store read failed"))
                        .await;
                    return;
                }
            };
            if chunk.is_empty() {
                break;
            }
            for (seq, raw) in chunk {
                let body = if keys {
                    let mut line = kvt_line(&raw);
                    line.pop();
                    line
                } else {
                    raw.json().to_vec()
                };
                tokio::select! {
                    sent_ok = out.send(Frame::raw_json(-req, true, body)) => {
                        if sent_ok.is_err() { return; }
                    }
                    _ = cancel.cancelled() => return,
                }
                next = seq + 1;
                sent += 1;
            }
        }
        if !live {
            if !ebt {
                let _ = out.send(Frame::end(-req)).await;
            }
            return;
        }
        // Wait for the feed to grow.
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(Event::Appended { feed: f, seq }) if f == feed && seq >= next => break,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = cancel.cancelled() => {
                    if !ebt {
                        let _ = out.send(Frame::end(-req)).await;
                    }
                    return;
                }
            }
        }
    }
}

/// Verifies and stores what the peer sends. Messages we already have are
/// dropped unverified; the rest are verified on all cores and stored in
/// order. Verifying one batch overlaps storing the one before. The first
/// invalid message ends the session.
async fn ingest_loop(
    node: Arc<Node>,
    mut incoming: mpsc::Receiver<(FeedId, Value)>,
    counters: Arc<Counters>,
    failed: CancellationToken,
) {
    let (verified_tx, mut verified_rx) = mpsc::channel::<Vec<Message>>(2);
    let storer = {
        let node = node.clone();
        let failed = failed.clone();
        tokio::spawn(async move {
            while let Some(msgs) = verified_rx.recv().await {
                let node = node.clone();
                match tokio::task::spawn_blocking(move || node.ingest_new(msgs)).await {
                    Ok(Ok(stored)) => {
                        counters
                            .received
                            .fetch_add(stored as u64, Ordering::Relaxed);
                    }
                    Ok(Err(NodeError::Store(StoreError::Rejected(e)))) => {
                        tracing::warn!("disconnecting a peer that sent an invalid message: {e}");
                        failed.cancel();
                        return;
                    }
                    Ok(Err(e)) => {
                        tracing::error!("storing replicated messages: {e}");
                        failed.cancel();
                        return;
                    }
                    // Cancelled: the runtime is shutting down.
                    Err(e) if e.is_cancelled() => return,
                    Err(e) => {
                        tracing::error!("ingest task failed: {e}");
                        failed.cancel();
                        return;
                    }
                }
            }
        })
    };
    // The next sequence expected per feed, counting batches still on their
    // way to the store.
    let mut expected: HashMap<FeedId, u64> = HashMap::new();
    while let Some(first) = incoming.recv().await {
        let mut batch = vec![first];
        while batch.len() < INGEST_BATCH {
            match incoming.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let node = node.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let verified = verify_batch(&node, batch, &mut expected);
            (verified, expected)
        })
        .await;
        let verified = match outcome {
            Ok((verified, back)) => {
                expected = back;
                verified
            }
            Err(e) if e.is_cancelled() => break,
            Err(e) => {
                tracing::error!("verification task failed: {e}");
                failed.cancel();
                break;
            }
        };
        match verified {
            Ok(msgs) if msgs.is_empty() => {}
            Ok(msgs) => {
                if verified_tx.send(msgs).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!("disconnecting a peer that sent an invalid message: {e}");
                failed.cancel();
                break;
            }
        }
    }
    drop(verified_tx);
    let _ = storer.await;
}

/// Drops what we already have (another peer may have sent it first) and
/// verifies the rest, one signature batch per core.
fn verify_batch(
    node: &Node,
    batch: Vec<(FeedId, Value)>,
    expected: &mut HashMap<FeedId, u64>,
) -> Result<Vec<Message>, String> {
    let mut fresh = Vec::with_capacity(batch.len());
    for (feed, value) in batch {
        let next = expected
            .entry(feed)
            .or_insert_with(|| node.store.tip(&feed).map_or(1, |t| t.sequence + 1));
        match value["sequence"].as_u64() {
            Some(seq) if seq < *next => continue,
            Some(seq) if seq == *next => *next += 1,
            _ => {}
        }
        fresh.push((feed, value));
    }
    if fresh.is_empty() {
        return Ok(Vec::new());
    }
    let per_core = fresh.len().div_ceil(rayon::current_num_threads().max(1));
    let (feeds, values): (Vec<FeedId>, Vec<Value>) = fresh.into_iter().unzip();
    let chunks: Vec<Vec<Value>> = values
        .chunks(per_core.max(1))
        .map(<[Value]>::to_vec)
        .collect();
    let results: Vec<Vec<Result<Message, FeedError>>> =
        chunks.into_par_iter().map(Message::verify_many).collect();
    results
        .into_iter()
        .flatten()
        .zip(feeds)
        .map(|(msg, feed)| {
            let msg = msg.map_err(|e| e.to_string())?;
            if msg.author != feed {
                return Err(format!("asked for {feed}, got a message by {}", msg.author));
            }
            Ok(msg)
        })
        .collect()
}
