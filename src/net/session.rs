//! One replication session with a peer: the muxrpc dispatch of what the
//! peer asks, and the choice of how we replicate.
//!
//! Each protocol lives in its own module: `history` (createHistoryStream),
//! `ebt` (epidemic broadcast trees), `ping` (keepalive) and `ingest`
//! (verifying and storing what arrives). This file routes frames to them.
//!
//! How a session replicates: the dialler opens EBT, and falls back to
//! `createHistoryStream` when the peer refuses it or does not answer. The
//! dialled side gives the dialler [`EBT_GRACE`] to open EBT before it asks
//! for feeds with `createHistoryStream` itself, and drops those requests if
//! EBT opens later: a connection never replicates a feed both ways at once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kuska_ssb::api::dto::WhoAmIOut;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::ebt::{self, Ebt};
use super::history::{self, Outlet, Served};
use super::ingest::{self, forward, Ingest, INGEST_BATCH};
use super::muxrpc::{Call, Frame, Link, Wire, MAX_MESSAGE_FRAME};
use super::shs::Connection;
use crate::feed::FeedId;
use crate::node::{Event, Node};

/// How many streams a peer may have us serve at once. Each costs a task;
/// what they read is bounded per connection (`history::READS_PER_CONNECTION`).
const MAX_SERVED_STREAMS: usize = 1024;
/// Our `createHistoryStream` requests sent per round (a round per second):
/// thousands at once would overflow our own queue of frames.
const REQUESTS_PER_ROUND: usize = 1024;
/// How long the dialled side waits for the dialler to open EBT.
pub const EBT_GRACE: Duration = Duration::from_secs(3);
/// How long a dialler waits for the peer's answer to `ebt.replicate`.
const EBT_ANSWER: Duration = Duration::from_secs(10);

/// Messages exchanged on one connection.
#[derive(Default, Debug)]
pub struct Counters {
    /// Messages received and stored.
    pub received: Arc<AtomicU64>,
    /// Messages sent.
    pub sent: Arc<AtomicU64>,
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

/// How a session replicates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Waiting to learn whether EBT opens, until the deadline.
    Deciding(Instant),
    /// EBT carries every feed.
    Ebt,
    /// One `createHistoryStream` per feed.
    History,
}

/// Runs a session on `conn` until either side ends it or `close` fires.
pub async fn run(
    node: Arc<Node>,
    conn: Connection,
    counters: Arc<Counters>,
    close: CancellationToken,
) -> Result<(), SessionError> {
    let mut wire = Wire::start(conn.reader, conn.writer);
    // A quarter of a batch waits while one is verified, one waits to be
    // stored and one is stored: each parsed message costs a few KiB, and
    // every peer has its own queue.
    let (ingest_tx, ingest_rx) = mpsc::channel::<(FeedId, Value)>(INGEST_BATCH / 4);
    let failed = CancellationToken::new();
    let ingester = tokio::spawn(ingest::ingest_loop(
        node.clone(),
        ingest_rx,
        counters.received.clone(),
        failed.clone(),
    ));
    let mut events = node.subscribe();
    let mut session = Session {
        node: node.clone(),
        outlet: Outlet::new(wire.out.clone(), counters.sent.clone()),
        link: Link::new(wire.control.clone()),
        ingest: ingest_tx,
        mode: Mode::Deciding(Instant::now() + EBT_GRACE),
        outgoing: HashMap::new(),
        requested: HashMap::new(),
        served: HashMap::new(),
        refused: HashSet::new(),
        ebt: None,
        wanted: HashSet::new(),
        peer: conn.peer,
        time_asked: None,
    };
    session.ask_time();
    if conn.dialled {
        let req = session.link.take_req();
        session.ebt = Some(Ebt::dialling(req));
        session.mode = Mode::Deciding(Instant::now() + EBT_ANSWER);
        session.link.send(ebt::request(req));
    }
    session.sync().await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let result = loop {
        tokio::select! {
            frame = wire.frames.recv() => match frame {
                Some(Ok(frame)) => {
                    session.link.keepalive.heard();
                    if let Err(e) = session.handle(frame).await {
                        break Err(e);
                    }
                    if let Some(why) = session.link.failure(true) {
                        break Err(SessionError::Connection(why));
                    }
                }
                Some(Err(e)) => break Err(SessionError::Connection(e)),
                None => break Ok(()),
            },
            event = events.recv() => match event {
                Ok(Event::GraphChanged) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    session.sync().await;
                }
                Ok(Event::Appended { .. }) => {}
                Err(broadcast::error::RecvError::Closed) => break Ok(()),
            },
            _ = tick.tick() => {
                if let Some(why) = session.link.failure(!wire.frames.is_empty()) {
                    break Err(SessionError::Connection(why));
                }
                session.on_tick().await;
                if let Some(why) = session.link.failure(true) {
                    break Err(SessionError::Connection(why));
                }
            }
            _ = failed.cancelled() => {
                break Err(SessionError::BadMessage("see the log above".into()));
            }
            _ = close.cancelled() => break Ok(()),
        }
    };

    for token in session.served.values() {
        token.cancel();
    }
    if let Some(ebt) = &mut session.ebt {
        ebt.stop_all();
    }
    drop(session);
    let _ = ingester.await;
    wire.close().await;
    result
}

struct Session {
    node: Arc<Node>,
    /// Where served streams send, shared by all of them.
    outlet: Outlet,
    /// Our own frames, request numbers and keepalive.
    link: Link,
    ingest: Ingest,
    mode: Mode,
    /// Our `createHistoryStream` requests: request number → feed.
    outgoing: HashMap<i32, FeedId>,
    /// Feeds we asked for on this connection, and the request number.
    requested: HashMap<FeedId, i32>,
    /// Streams we serve: the peer's request number → cancel token.
    served: HashMap<i32, CancellationToken>,
    /// Peer streams we refused: later frames of them are not new requests.
    refused: HashSet<i32>,
    /// The EBT stream, whoever opened it.
    ebt: Option<Ebt>,
    /// The feeds within our hops, as of the last graph change.
    wanted: HashSet<FeedId>,
    /// Who the peer is.
    peer: FeedId,
    /// Our `scuttlefs.now` request and when we sent it.
    time_asked: Option<(i32, f64)>,
}

impl Session {
    /// Brings the peer up to date with what we want: our EBT clock, or a
    /// `createHistoryStream` for every wanted feed not yet requested (and
    /// an end for each feed no longer wanted: unfollowing stops it).
    async fn sync(&mut self) {
        // Our own feed is in the EBT clock (peers learn from it what we
        // have), but never asked for with createHistoryStream.
        self.wanted = self.node.wanted_feeds().keys().copied().collect();
        let frames = match self.mode {
            Mode::Deciding(_) => Vec::new(),
            Mode::Ebt => match &self.ebt {
                Some(ebt) if ebt.established => ebt::clock(&self.node, &self.wanted)
                    .iter()
                    .map(|part| Frame::json(ebt.wire, true, false, part))
                    .collect(),
                _ => Vec::new(),
            },
            Mode::History => self.history_requests(),
        };
        self.link.send_all(frames);
    }

    fn history_requests(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        let stale: Vec<(FeedId, i32)> = self
            .requested
            .iter()
            .filter(|(feed, _)| !self.wanted.contains(feed))
            .map(|(f, r)| (*f, *r))
            .collect();
        for (feed, req) in stale {
            self.requested.remove(&feed);
            if self.outgoing.remove(&req).is_some() {
                frames.push(Frame::end(req));
            }
        }
        let me = self.node.id();
        // Our own feed only while a peer holds more of it than we do.
        let fetch_own = self.node.notices.behind().is_some();
        let mut new: Vec<FeedId> = self
            .wanted
            .iter()
            .filter(|f| (**f != me || fetch_own) && !self.requested.contains_key(f))
            .copied()
            .collect();
        new.sort();
        // The rest follow round by round (`on_tick`).
        new.truncate(REQUESTS_PER_ROUND);
        for feed in new {
            let req = self.link.take_req();
            let seq = self.node.store.tip(&feed).map_or(0, |t| t.sequence) + 1;
            self.requested.insert(feed, req);
            self.outgoing.insert(req, feed);
            frames.push(history::request(req, &feed, seq));
        }
        frames
    }

    /// Once a second: keepalive, and the end of the wait for EBT.
    async fn on_tick(&mut self) {
        self.link.tick();
        if self.mode == Mode::History && self.requested.len() + 1 < self.wanted.len() {
            let frames = self.history_requests();
            self.link.send_all(frames);
        }
        if let Mode::Deciding(deadline) = self.mode {
            if Instant::now() >= deadline {
                if let Some(ebt) = self.ebt.take() {
                    // Our EBT request went unanswered: withdraw it.
                    tracing::debug!("no answer to ebt.replicate; using createHistoryStream");
                    self.link.send(Frame::end(ebt.wire));
                }
                self.use_history().await;
            }
        }
    }

    async fn use_history(&mut self) {
        self.mode = Mode::History;
        self.sync().await;
    }

    /// EBT is open (and the peer's clock arrived): it replaces any
    /// `createHistoryStream` of ours.
    async fn use_ebt(&mut self) {
        self.mode = Mode::Ebt;
        let ended: Vec<i32> = self.outgoing.drain().map(|(req, _)| req).collect();
        self.requested.clear();
        for req in ended {
            self.link.send(Frame::end(req));
        }
        self.sync().await;
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), SessionError> {
        if let Some(ebt) = &self.ebt {
            if frame.req == ebt.incoming() {
                return self.handle_ebt(frame).await;
            }
        }
        if frame.req < 0 {
            return self.handle_reply(frame).await;
        }
        self.handle_request(frame).await
    }

    /// A frame on the EBT stream, whoever opened it.
    async fn handle_ebt(&mut self, frame: Frame) -> Result<(), SessionError> {
        let Some(ebt) = self.ebt.as_mut() else {
            return Ok(());
        };
        if frame.end {
            let was_established = ebt.established;
            ebt.stop_all();
            let wire = ebt.wire;
            self.ebt = None;
            self.link.send(Frame::end(wire));
            if !was_established {
                tracing::debug!(
                    "peer refused ebt.replicate ({}); using createHistoryStream",
                    frame.error_message().unwrap_or_default()
                );
            }
            if self.mode != Mode::History {
                self.use_history().await;
            }
            return Ok(());
        }
        let first_clock = !ebt.established;
        let own_feed_claim = ebt
            .handle(
                &self.node,
                &self.wanted,
                &frame.body,
                &self.outlet,
                &self.ingest,
            )
            .await?;
        if let Some(theirs) = own_feed_claim {
            if self.node.claim_own_feed(self.peer, theirs) {
                // Our clock now asks for our own feed.
                self.sync().await;
            }
        }
        let established = self.ebt.as_ref().is_some_and(|e| e.established);
        if first_clock && established && self.mode != Mode::Ebt {
            // The peer answered our request: send our clock in turn.
            self.use_ebt().await;
        }
        Ok(())
    }

    /// A frame answering one of our requests.
    async fn handle_reply(&mut self, frame: Frame) -> Result<(), SessionError> {
        if let Some((req, sent_ms)) = self.time_asked {
            if frame.req == -req {
                self.time_asked = None;
                // A peer that is not scuttlefs refuses the call: no news.
                if let Some(theirs) = frame.body_json().and_then(|v| v["now"].as_f64()) {
                    let skew = crate::clock::Skew::measure(sent_ms, theirs, crate::clock::now_ms());
                    self.node.notices.skew(self.peer, skew);
                }
                return Ok(());
            }
        }
        if let Some(answer) = self.link.keepalive.on_reply(&frame) {
            self.link.send_all(answer);
            return Ok(());
        }
        let req = -frame.req;
        let Some(feed) = self.outgoing.get(&req).copied() else {
            return Ok(()); // a late frame for a request we ended
        };
        if frame.end {
            // The peer ended (or refused) our request: end our side too.
            self.outgoing.remove(&req);
            if let Some(message) = frame.error_message() {
                tracing::debug!("peer refused createHistoryStream for {feed}: {message}");
            }
            self.link.send(Frame::end(req));
            return Ok(());
        }
        if frame.body.len() > MAX_MESSAGE_FRAME {
            return Err(SessionError::BadMessage(format!(
                "a message frame of {} bytes (the limit is {MAX_MESSAGE_FRAME})",
                frame.body.len()
            )));
        }
        let value: Value = serde_json::from_slice(&frame.body)
            .map_err(|e| SessionError::BadMessage(format!("malformed JSON: {e}")))?;
        // With keys: true a peer sends {key, value, timestamp}.
        let value = match value.get("value") {
            Some(inner) if value.get("key").is_some() => inner.clone(),
            _ => value,
        };
        forward(&self.ingest, feed, value).await
    }

    /// A frame of a request the peer made.
    async fn handle_request(&mut self, frame: Frame) -> Result<(), SessionError> {
        if let Some(token) = self.served.get(&frame.req) {
            if frame.end {
                token.cancel();
                self.served.remove(&frame.req);
            }
            return Ok(());
        }
        if let Some(answer) = self.link.keepalive.on_served(&frame) {
            self.link.send(answer);
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
        let call = Call::parse(&frame);
        match call.name().as_slice() {
            ["createHistoryStream"] if self.served.len() < MAX_SERVED_STREAMS => {
                let args = call.args.get(0).cloned().unwrap_or(Value::Null);
                self.note_own_feed_request(&args).await;
                let token = CancellationToken::new();
                self.served.insert(frame.req, token.clone());
                let to = Served {
                    wire: -frame.req,
                    outlet: self.outlet.clone(),
                    cancel: token,
                    ebt: false,
                };
                tokio::spawn(history::serve(self.node.clone(), args, to));
            }
            ["gossip", "ping"]
                if call.is_stream() && self.link.keepalive.open_served(frame.req) => {}
            ["ebt", "replicate"] if ebt::is_v3_classic(&call.args) => {
                if self.ebt.as_ref().is_some_and(|e| e.established) {
                    // One EBT stream per connection: another would restart
                    // every feed's sender each time the peer asks.
                    if self.refused.len() < MAX_SERVED_STREAMS {
                        self.refused.insert(frame.req);
                    }
                    self.link.send(Frame::error(
                        -frame.req,
                        true,
                        "ebt.replicate is open already on this connection",
                    ));
                } else {
                    self.open_ebt_for_peer(frame.req).await;
                }
            }
            ["scuttlefs", "now"] => {
                let now = serde_json::json!({ "now": crate::clock::now_ms() });
                self.link.send(Frame::json(-frame.req, false, false, &now));
            }
            ["whoami"] => {
                let me = WhoAmIOut {
                    id: self.node.id().to_string(),
                };
                let body = serde_json::to_value(me).unwrap_or(Value::Null);
                self.link.send(Frame::json(-frame.req, false, false, &body));
            }
            _ => {
                tracing::debug!(
                    "peer called unsupported method {:?}",
                    call.printable_name(".")
                );
                if call.is_stream() && self.refused.len() < MAX_SERVED_STREAMS {
                    self.refused.insert(frame.req);
                }
                self.link.send(call.refusal(frame.req));
            }
        }
        Ok(())
    }

    /// Asks the peer for its clock (`scuttlefs.now`, which other
    /// implementations refuse), to name a machine whose clock is off.
    fn ask_time(&mut self) {
        let req = self.link.take_req();
        self.time_asked = Some((req, crate::clock::now_ms()));
        self.link.send(Frame::request(
            req,
            &["scuttlefs", "now"],
            "async",
            Value::Array(Vec::new()),
        ));
    }

    /// A peer asking for our own feed from past our tip holds more of it
    /// than we do.
    async fn note_own_feed_request(&mut self, args: &Value) {
        let me = self.node.id();
        let asks_for_own = args["id"].as_str().and_then(|id| FeedId::parse(id).ok()) == Some(me);
        let from = args["seq"].as_u64().unwrap_or(0);
        if asks_for_own && from > 1 && self.node.claim_own_feed(self.peer, from - 1) {
            self.sync().await;
        }
    }

    /// The peer opened EBT. It replaces ours while the peer has not
    /// answered it (both opened one at once); an established stream is
    /// never replaced (see `handle_request`).
    async fn open_ebt_for_peer(&mut self, req: i32) {
        if let Some(mut old) = self.ebt.take() {
            old.stop_all();
            self.link
                .send(Frame::error(old.wire, true, "reconnected to peer"));
        }
        self.ebt = Some(Ebt::answering(req));
        // Sends our clock first, as the dialled side must.
        self.use_ebt().await;
    }
}
