//! Membership of a room: a server that joins two online peers with a tunnel
//! (ssb-room 1.x's room API, and rooms 2.0's `room.attendants` where the
//! server offers it). The room never stores or replicates anything.
//!
//! On a room connection we
//! - learn who is present: `room.attendants` (2.0), else `tunnel.announce`
//!   and `tunnel.endpoints` (1.x, which sends the whole list again every
//!   10 s; when it lacks us, as after ssb-room 1.3 loses track of a
//!   reconnected peer, we announce again);
//! - dial each present feed within our hops through `tunnel.connect`;
//! - accept a tunnel only from a feed within our hops.
//!
//! Inside a tunnel runs an ordinary connection under *our* network key,
//! whatever key the room itself was reached with (`--room-caps`): a public
//! room can carry a private network's logs.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::muxrpc::{Call, Frame, Link, Wire};
use super::peers::Peers;
use super::session::SessionError;
use super::shs::{self, Connection};
use super::tunnel::{TunnelAddress, TunnelStream};
use crate::feed::FeedId;
use crate::node::{Event, Node};

/// The first wait before dialling a peer through the room again; it doubles
/// with each failure, up to [`MAX_REDIAL`].
const REDIAL: Duration = Duration::from_secs(10);
const MAX_REDIAL: Duration = Duration::from_secs(600);
/// How long a tunnel whose session does not read may hold up the room
/// connection before it is closed.
const TUNNEL_STALL: Duration = Duration::from_secs(30);
/// Tunnels open through one room at once.
const MAX_TUNNELS: usize = 64;

/// Keeps the connection to a room until it ends or `close` fires.
pub async fn run(
    node: Arc<Node>,
    peers: Arc<Peers>,
    conn: Connection,
    close: CancellationToken,
) -> Result<(), SessionError> {
    let mut wire = Wire::start(conn.reader, conn.writer);
    let mut room = Room {
        me: node.id(),
        room: conn.peer,
        out: wire.tunnels.clone(),
        link: Link::new(wire.control.clone()),
        resubscribe: None,
        refused_once: HashSet::new(),
        node: node.clone(),
        peers,
        tunnels: HashMap::new(),
        present: HashSet::new(),
        attendants: None,
        endpoints: None,
        last_dial: HashMap::new(),
    };
    // Rooms 2.0 first; a room 1 server refuses, and we fall back.
    let req = room.link.take_req();
    room.attendants = Some(req);
    room.link.send(Frame::request(
        req,
        &["room", "attendants"],
        "source",
        json!([]),
    ));
    let mut events = node.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            frame = wire.frames.recv() => match frame {
                Some(Ok(frame)) => {
                    room.link.keepalive.heard();
                    room.handle(frame).await;
                    if let Some(why) = room.link.failure(true) {
                        break Err(SessionError::Connection(why));
                    }
                }
                Some(Err(e)) => break Err(SessionError::Connection(e)),
                None => break Ok(()),
            },
            event = events.recv() => match event {
                Ok(Event::GraphChanged) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    room.dial_present().await;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Closed) => break Ok(()),
            },
            _ = tick.tick() => {
                if let Some(why) = room.link.failure(!wire.frames.is_empty()) {
                    break Err(SessionError::Connection(why));
                }
                room.link.tick();
                room.tunnels.retain(|_, t| !t.is_closed());
                if room.resubscribe.is_some_and(|at| Instant::now() >= at) {
                    room.resubscribe = None;
                    room.start_room1().await;
                }
                room.dial_present().await;
                if let Some(why) = room.link.failure(true) {
                    break Err(SessionError::Connection(why));
                }
            }
            _ = close.cancelled() => break Ok(()),
        }
    };
    // Ends every tunnel: their readers see the end of the stream.
    room.tunnels.clear();
    drop(room);
    wire.close().await;
    result
}

struct Room {
    me: FeedId,
    room: FeedId,
    node: Arc<Node>,
    peers: Arc<Peers>,
    /// Tunnel bytes (bulk).
    out: mpsc::Sender<Frame>,
    /// Our own frames, request numbers and keepalive.
    link: Link,
    /// When to ask for the endpoints again, after the room ended the list.
    resubscribe: Option<Instant>,
    /// Origins whose refused tunnels were logged already.
    refused_once: HashSet<FeedId>,
    /// Open tunnels, by the request number the room's frames of each carry.
    tunnels: HashMap<i32, mpsc::Sender<Vec<u8>>>,
    /// Feeds the room says are present.
    present: HashSet<FeedId>,
    /// Our `room.attendants` request, while it stands.
    attendants: Option<i32>,
    /// Our `tunnel.endpoints` request (room 1 API).
    endpoints: Option<i32>,
    /// When each peer may next be dialled through the room, and the wait
    /// after that.
    last_dial: HashMap<FeedId, (Instant, Duration)>,
}

impl Room {
    async fn handle(&mut self, frame: Frame) {
        let incoming = frame.req;
        if let Some(tunnel) = self.tunnels.get(&incoming).cloned() {
            if frame.end {
                if let Some(message) = frame.error_message() {
                    tracing::debug!("a tunnel through the room failed: {message}");
                }
                self.tunnels.remove(&incoming);
                return;
            }
            // One connection carries every tunnel: a session that stops
            // reading holds up the others, for a while.
            match tokio::time::timeout(TUNNEL_STALL, tunnel.send(frame.body)).await {
                Ok(Ok(())) => {}
                // The session inside ended; its stream sent our end.
                Ok(Err(_)) => {
                    self.tunnels.remove(&incoming);
                }
                Err(_) => {
                    tracing::warn!("closing a tunnel whose session stopped reading for 30 s");
                    self.tunnels.remove(&incoming);
                    self.link
                        .send(Frame::error(-incoming, true, "tunnel stalled"));
                }
            }
            return;
        }
        if frame.req < 0 {
            if let Some(answer) = self.link.keepalive.on_reply(&frame) {
                self.link.send_all(answer);
            } else {
                self.handle_reply(frame).await;
            }
            return;
        }
        if let Some(answer) = self.link.keepalive.on_served(&frame) {
            self.link.send(answer);
            return;
        }
        if frame.end {
            return;
        }
        self.handle_request(frame).await;
    }

    /// An answer to one of our presence requests.
    async fn handle_reply(&mut self, frame: Frame) {
        let req = -frame.req;
        if Some(req) == self.attendants {
            if frame.end {
                // A room 1 server: announce, and follow the endpoints.
                self.attendants = None;
                self.start_room1().await;
            } else if let Some(update) = frame.body_json() {
                self.on_attendants(&update);
                self.dial_present().await;
            }
        } else if Some(req) == self.endpoints {
            if frame.end {
                // Ask again in a while: presence must not go stale.
                self.endpoints = None;
                self.resubscribe = Some(Instant::now() + REDIAL);
            } else if let Some(Value::Array(ids)) = frame.body_json() {
                self.present = ids
                    .iter()
                    .filter_map(|id| id.as_str().and_then(|id| FeedId::parse(id).ok()))
                    .collect();
                if !self.present.contains(&self.me) {
                    // The room lost track of us (ssb-room 1.3 does, when
                    // an older connection of ours closes).
                    self.announce().await;
                }
                self.dial_present().await;
            }
        }
    }

    async fn start_room1(&mut self) {
        self.announce().await;
        let req = self.link.take_req();
        self.endpoints = Some(req);
        self.link.send(Frame::request(
            req,
            &["tunnel", "endpoints"],
            "source",
            json!([]),
        ));
    }

    async fn announce(&mut self) {
        let req = self.link.take_req();
        self.link.send(Frame::request(
            req,
            &["tunnel", "announce"],
            "sync",
            json!([]),
        ));
    }

    /// `{"type":"state","ids":[…]}`, then `joined` and `left`.
    fn on_attendants(&mut self, update: &Value) {
        let id = || update["id"].as_str().and_then(|id| FeedId::parse(id).ok());
        match update["type"].as_str() {
            Some("state") => {
                self.present = update["ids"]
                    .as_array()
                    .map(|ids| {
                        ids.iter()
                            .filter_map(|id| id.as_str().and_then(|id| FeedId::parse(id).ok()))
                            .collect()
                    })
                    .unwrap_or_default();
            }
            Some("joined") => {
                if let Some(id) = id() {
                    self.present.insert(id);
                }
            }
            Some("left") => {
                if let Some(id) = id() {
                    self.present.remove(&id);
                }
            }
            _ => {}
        }
    }

    /// Dials, through the room, every present feed within our hops that
    /// has no session yet.
    async fn dial_present(&mut self) {
        let wanted = self.node.wanted_feeds();
        let mut targets: Vec<FeedId> = self
            .present
            .iter()
            .filter(|id| **id != self.me && **id != self.room && wanted.contains_key(id))
            .copied()
            .collect();
        targets.sort();
        for target in targets {
            if self.peers.is_connected(&target) {
                // Connected (through here or elsewhere): start afresh later.
                self.last_dial.remove(&target);
                continue;
            }
            let not_yet = self
                .last_dial
                .get(&target)
                .is_some_and(|(next, _)| Instant::now() < *next);
            if not_yet || self.tunnels.len() >= MAX_TUNNELS {
                continue;
            }
            if !self.peers.try_begin_dial(&target) {
                continue;
            }
            // Back off while dials fail (the target may not follow us).
            let wait = self
                .last_dial
                .get(&target)
                .map_or(REDIAL, |(_, wait)| (*wait * 2).min(MAX_REDIAL));
            self.last_dial.insert(target, (Instant::now() + wait, wait));
            let req = self.link.take_req();
            let (stream, tx) = TunnelStream::new(self.out.clone(), req);
            self.tunnels.insert(-req, tx);
            self.link.send(Frame::request(
                req,
                &["tunnel", "connect"],
                "duplex",
                json!([{"portal": self.room.to_string(), "target": target.to_string()}]),
            ));
            let address = TunnelAddress {
                room: self.room,
                target,
            }
            .to_string();
            let node = self.node.clone();
            let peers = self.peers.clone();
            tokio::spawn(async move {
                let conn = shs::connect_over(
                    stream,
                    target,
                    &node.keys,
                    &node.config.network_key,
                    address.clone(),
                )
                .await;
                peers.end_dial(&target);
                match conn {
                    Ok(conn) => peers.run_tunnel(conn).await,
                    Err(e) => tracing::debug!("no tunnel to {address}: {e}"),
                }
            });
        }
    }

    /// A call from the room: a tunnel someone opens to us, or a ping.
    async fn handle_request(&mut self, frame: Frame) {
        let call = Call::parse(&frame);
        match call.name().as_slice() {
            ["tunnel", "connect"] if call.kind == "duplex" => {
                self.accept_tunnel(frame.req, &call.args[0]).await;
            }
            ["gossip", "ping"]
                if call.is_stream() && self.link.keepalive.open_served(frame.req) => {}
            _ => self.link.send(call.refusal(frame.req)),
        }
    }

    /// Accepts a tunnel from a feed within our hops, or from the guest key
    /// of a join code made here; the handshake inside must prove that the
    /// far end is that feed.
    async fn accept_tunnel(&mut self, req: i32, args: &Value) {
        let origin = args["origin"].as_str().and_then(|o| FeedId::parse(o).ok());
        let for_us = args["target"].as_str() == Some(self.me.to_string().as_str());
        let refuse = |why: String| Frame::error(-req, true, &why);
        let Some(origin) = origin.filter(|_| for_us) else {
            self.link
                .send(refuse(format!("could not connect to {}", self.me)));
            return;
        };
        // A guest (a new machine redeeming a join code) may come in too.
        let guest = self.peers.is_guest(&origin);
        if !guest && !self.node.wanted_feeds().contains_key(&origin) {
            if self.refused_once.len() < 1024 && self.refused_once.insert(origin) {
                tracing::info!(
                    "refused a tunnel from {origin} through the room {}: not within {} hops",
                    self.room,
                    self.node.config.hops
                );
            } else {
                tracing::debug!("refused a tunnel from {origin} again");
            }
            self.link
                .send(refuse(format!("could not connect to {}", self.me)));
            return;
        }
        if self.tunnels.len() >= MAX_TUNNELS {
            self.link.send(refuse("too many tunnels".into()));
            return;
        }
        let (stream, tx) = TunnelStream::new(self.out.clone(), -req);
        self.tunnels.insert(req, tx);
        let address = TunnelAddress {
            room: self.room,
            target: origin,
        }
        .to_string();
        let node = self.node.clone();
        let peers = self.peers.clone();
        tokio::spawn(async move {
            match shs::accept_over(
                stream,
                &node.keys,
                &node.config.network_key,
                address.clone(),
            )
            .await
            {
                Ok(conn) if conn.peer == origin && guest => peers.serve_tunnelled_guest(conn).await,
                Ok(conn) if conn.peer == origin => peers.run_tunnel(conn).await,
                Ok(conn) => tracing::warn!(
                    "a tunnel announced as {origin} came from {}: closed",
                    conn.peer
                ),
                Err(e) => tracing::debug!("tunnel from {address} failed: {e}"),
            }
        });
    }
}
