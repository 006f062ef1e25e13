//! Which peers to dial, and which connections to keep.
//!
//! Invariants:
//! - At most one session per peer. When both sides dial at once, each side
//!   keeps the connection dialled by the smaller key and closes the other,
//!   so both keep the same one. A peer that connects again later replaces
//!   its old connection: it would not redial a live one, so the old one is
//!   most likely dead (it lost power, or its network, without closing).
//! - At most [`MAX_CONNECTIONS`] sessions at a time.
//! - A failing address is retried with exponential backoff (1 s to 60 s);
//!   an address whose peer sent an invalid message waits the maximum.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::address::PeerAddress;
use super::invite;
use super::remembered::Source;
use super::room;
use super::session::{self, Counters, SessionError};
use super::shs::{self, Connection};
use super::Net;
use crate::feed::FeedId;
use crate::node::{now_ms, Node, PeerStatus};

/// Sessions open at once, dialled and accepted together.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a peer found by broadcast stays a candidate after its last packet.
const DISCOVERY_TTL: Duration = Duration::from_secs(30);
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

struct Active {
    conn_id: u64,
    dialer: FeedId,
    close: CancellationToken,
    address: String,
    counters: Arc<Counters>,
    since_ms: f64,
}

struct Candidate {
    last_seen: Instant,
    /// How it was found.
    source: Source,
    /// Kept without being seen again: named, or remembered.
    keep: bool,
    /// For a room: the network key to reach it with, when not ours.
    room_caps: Option<[u8; 32]>,
    next_try: Instant,
    delay: Duration,
    warned: bool,
}

#[derive(Default)]
struct Inner {
    connected: HashMap<FeedId, Active>,
    candidates: HashMap<PeerAddress, Candidate>,
    dialing: HashSet<FeedId>,
    next_conn_id: u64,
    warned_ips: HashSet<IpAddr>,
}

/// The peer table.
pub struct Peers {
    node: Arc<Node>,
    net: Arc<Net>,
    inner: Mutex<Inner>,
    wake: Notify,
}

impl Peers {
    /// An empty table for `node`.
    pub fn new(node: Arc<Node>, net: Arc<Net>) -> Arc<Peers> {
        Arc::new(Peers {
            node,
            net,
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
        })
    }

    /// Adds or refreshes an address to dial. Peers found by broadcast are
    /// dropped when they fall silent; all others are kept.
    pub fn add_candidate(&self, address: PeerAddress, source: Source) {
        self.add(address, source, source != Source::Lan);
    }

    /// Adds a remembered peer: kept, and dialled with backoff, whatever its
    /// source.
    pub fn add_remembered(&self, address: PeerAddress, source: Source) {
        self.add(address, source, true);
    }

    /// Adds a room to keep a connection to, reached with `caps` (the
    /// room's network key) when given, else with ours.
    pub fn add_room(&self, address: PeerAddress, caps: Option<[u8; 32]>) {
        self.add(address.clone(), Source::Room, true);
        if let Some(candidate) = self.lock().candidates.get_mut(&address) {
            candidate.source = Source::Room;
            candidate.room_caps = caps;
        }
    }

    /// Claims `peer` for a dial by other means (a tunnel): false when it is
    /// connected or already being dialled.
    pub fn try_begin_dial(&self, peer: &FeedId) -> bool {
        let mut inner = self.lock();
        if inner.connected.contains_key(peer) || inner.dialing.contains(peer) {
            return false;
        }
        inner.dialing.insert(*peer)
    }

    /// Ends a claim made with [`Peers::try_begin_dial`].
    pub fn end_dial(&self, peer: &FeedId) {
        self.lock().dialing.remove(peer);
    }

    /// Whether a session with `peer` is open.
    pub fn is_connected(&self, peer: &FeedId) -> bool {
        self.lock().connected.contains_key(peer)
    }

    fn add(&self, address: PeerAddress, source: Source, keep: bool) {
        if address.key == self.node.id() {
            return;
        }
        let mut inner = self.lock();
        let now = Instant::now();
        let new = !inner.candidates.contains_key(&address);
        // A LAN peer that dialled us first is remembered from its packets.
        let connected = inner.connected.contains_key(&address.key);
        let candidate = inner
            .candidates
            .entry(address.clone())
            .or_insert(Candidate {
                last_seen: now,
                source,
                keep,
                room_caps: None,
                next_try: now,
                delay: MIN_BACKOFF,
                warned: false,
            });
        candidate.last_seen = now;
        candidate.keep |= keep;
        drop(inner);
        if connected && !self.net.memory.knows(&address) {
            self.net.memory.succeeded(&address, source);
        }
        if new {
            self.wake.notify_one();
        }
    }

    /// Dials candidates until the process ends.
    pub async fn dial_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.wake.notified() => {}
            }
            self.publish_status();
            for address in self.due() {
                let peers = self.clone();
                tokio::spawn(async move { peers.dial(address).await });
            }
        }
    }

    /// Accepts connections until the process ends.
    pub async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (tcp, from) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if self.lock().connected.len() >= MAX_CONNECTIONS {
                tracing::debug!("refusing {from}: at the connection limit");
                continue;
            }
            let peers = self.clone();
            tokio::spawn(async move {
                let node = peers.node.clone();
                match shs::accept(tcp, &node.keys, &node.config.network_key).await {
                    Ok(conn) if peers.net.invites.is_guest(&conn.peer) => {
                        tracing::info!("a guest at {from} is redeeming an invite");
                        invite::serve_guest(node, peers.net.invites.clone(), conn).await;
                    }
                    Ok(conn) => peers.run(conn, None).await,
                    Err(e) => {
                        // Log once per address, then quietly.
                        let first = peers.lock().warned_ips.insert(from.ip());
                        if first {
                            tracing::info!("incoming connection from {from} failed: {e}");
                        } else {
                            tracing::debug!("incoming connection from {from} failed: {e}");
                        }
                    }
                }
            });
        }
    }

    /// Addresses to dial now; marks their peers as being dialled.
    fn due(&self) -> Vec<PeerAddress> {
        let mut inner = self.lock();
        let now = Instant::now();
        inner
            .candidates
            .retain(|_, c| c.keep || now.duration_since(c.last_seen) < DISCOVERY_TTL);
        let room = MAX_CONNECTIONS.saturating_sub(inner.connected.len() + inner.dialing.len());
        let mut due: Vec<PeerAddress> = inner
            .candidates
            .iter()
            .filter(|(a, c)| {
                c.next_try <= now
                    && !inner.connected.contains_key(&a.key)
                    && !inner.dialing.contains(&a.key)
            })
            .map(|(a, _)| a.clone())
            .collect();
        // One address per peer per round.
        let mut seen = HashSet::new();
        due.retain(|a| seen.insert(a.key));
        due.truncate(room);
        for a in &due {
            inner.dialing.insert(a.key);
        }
        due
    }

    async fn dial(self: Arc<Self>, address: PeerAddress) {
        let node = self.node.clone();
        let (source, room_caps) = self
            .lock()
            .candidates
            .get(&address)
            .map_or((Source::Peer, None), |c| (c.source, c.room_caps));
        let network_key = room_caps.unwrap_or(node.config.network_key);
        let result = shs::connect(
            &address.host,
            address.port,
            address.key,
            &node.keys,
            &network_key,
        )
        .await;
        self.lock().dialing.remove(&address.key);
        match result {
            Ok(conn) => {
                tracing::debug!("connected to {address}");
                self.reset_backoff(&address);
                self.net.memory.succeeded(&address, source);
                if source == Source::Room {
                    self.run_room(conn, &address).await;
                } else {
                    self.run(conn, Some(&address)).await;
                }
            }
            Err(e) => {
                self.net.memory.failed(&address);
                let first = self.back_off(&address, false);
                if first {
                    tracing::info!("cannot reach {address}: {e}");
                } else {
                    tracing::debug!("cannot reach {address}: {e}");
                }
            }
        }
    }

    /// Registers a connection to a room and keeps it until it ends.
    async fn run_room(self: &Arc<Self>, conn: Connection, address: &PeerAddress) {
        let room = conn.peer;
        let Some((conn_id, close, _)) = self.register(room, self.node.id(), &conn.address) else {
            return;
        };
        tracing::info!("joined the room {address}");
        let result = room::run(self.node.clone(), self.clone(), conn, close).await;
        self.unregister(&room, conn_id);
        match result {
            Ok(()) => tracing::info!("left the room {address}"),
            Err(e) => tracing::info!("lost the room {address}: {e}"),
        }
        self.wake.notify_one();
    }

    /// Runs a session over a tunnel through a room, like any other.
    pub async fn run_tunnel(self: &Arc<Self>, conn: Connection) {
        self.run(conn, None).await;
    }

    /// Registers `conn` and runs its session to the end.
    async fn run(self: &Arc<Self>, conn: Connection, address: Option<&PeerAddress>) {
        let peer = conn.peer;
        let dialer = if conn.dialled { self.node.id() } else { peer };
        let Some((conn_id, close, counters)) = self.register(peer, dialer, &conn.address) else {
            tracing::debug!("dropping a second connection with {peer}");
            return;
        };
        tracing::info!("connected with {peer} at {}", conn.address);
        let result = session::run(self.node.clone(), conn, counters, close).await;
        self.unregister(&peer, conn_id);
        match result {
            Ok(()) => tracing::info!("disconnected from {peer}"),
            Err(SessionError::BadMessage(e)) => {
                tracing::warn!("cut off {peer}: {e}");
                if let Some(address) = address {
                    self.back_off(address, true);
                }
            }
            Err(e) => tracing::info!("lost {peer}: {e}"),
        }
        self.wake.notify_one();
    }

    fn register(
        &self,
        peer: FeedId,
        dialer: FeedId,
        address: &str,
    ) -> Option<(u64, CancellationToken, Arc<Counters>)> {
        let mut inner = self.lock();
        if let Some(existing) = inner.connected.get(&peer) {
            let age = Duration::from_secs_f64((now_ms() - existing.since_ms).max(0.0) / 1000.0);
            if keeps_existing(&existing.dialer, &dialer, age) {
                return None;
            }
            existing.close.cancel();
        }
        inner.next_conn_id += 1;
        let conn_id = inner.next_conn_id;
        let close = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        inner.connected.insert(
            peer,
            Active {
                conn_id,
                dialer,
                close: close.clone(),
                address: address.to_string(),
                counters: counters.clone(),
                since_ms: now_ms(),
            },
        );
        drop(inner);
        self.publish_status();
        Some((conn_id, close, counters))
    }

    fn unregister(&self, peer: &FeedId, conn_id: u64) {
        {
            let mut inner = self.lock();
            if inner
                .connected
                .get(peer)
                .is_some_and(|a| a.conn_id == conn_id)
            {
                inner.connected.remove(peer);
            }
        }
        if let Ok(mut net) = self.node.net.write() {
            net.last_peer_ms = Some(now_ms());
        }
        self.publish_status();
    }

    /// Delays the next attempt at `address`; returns whether this is the
    /// first failure since it last worked (worth a log line).
    fn back_off(&self, address: &PeerAddress, long: bool) -> bool {
        let mut inner = self.lock();
        let Some(c) = inner.candidates.get_mut(address) else {
            return false;
        };
        c.delay = if long {
            MAX_BACKOFF
        } else {
            (c.delay * 2).min(MAX_BACKOFF)
        };
        c.next_try = Instant::now() + c.delay;
        let first = !c.warned;
        c.warned = true;
        first
    }

    fn reset_backoff(&self, address: &PeerAddress) {
        if let Some(c) = self.lock().candidates.get_mut(address) {
            c.delay = MIN_BACKOFF;
            c.next_try = Instant::now() + MIN_BACKOFF;
            c.warned = false;
        }
    }

    /// Copies the connection table into the node's status.
    pub fn publish_status(&self) {
        let peers: Vec<PeerStatus> = self
            .lock()
            .connected
            .iter()
            .map(|(id, a)| PeerStatus {
                id: *id,
                address: a.address.clone(),
                received: a
                    .counters
                    .received
                    .load(std::sync::atomic::Ordering::Relaxed),
                sent: a.counters.sent.load(std::sync::atomic::Ordering::Relaxed),
                since_ms: a.since_ms,
            })
            .collect();
        let remembered = self.net.memory.list();
        if let Ok(mut net) = self.node.net.write() {
            if !peers.is_empty() {
                net.last_peer_ms = Some(now_ms());
            }
            net.peers = peers;
            net.remembered = remembered;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Connections this close in time are taken for a simultaneous dial.
pub const SIMULTANEOUS_DIAL: Duration = Duration::from_secs(10);

/// With a session already open to a peer for `existing_age`, whether a
/// second connection to it is dropped (rather than replacing the first).
///
/// For a simultaneous dial both machines apply this to the same two
/// connections, identified by who dialled each, and so keep the same one:
/// the one dialled by the smaller key. A connection that comes later
/// replaces the old one, whoever dialled: the peer came back after losing
/// the old one without a word, which the old one may not notice for
/// minutes (and a survivor that kept it would lock the peer out).
pub fn keeps_existing(
    existing_dialer: &FeedId,
    new_dialer: &FeedId,
    existing_age: Duration,
) -> bool {
    existing_age < SIMULTANEOUS_DIAL && existing_dialer <= new_dialer
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{keeps_existing, SIMULTANEOUS_DIAL};
    use crate::feed::FeedId;

    #[test]
    fn both_sides_keep_the_same_connection_when_both_dial() {
        let (a, b) = (FeedId([1; 32]), FeedId([2; 32]));
        let just = Duration::from_millis(30);
        // Connection 1 was dialled by a, connection 2 by b. Whichever each
        // side registered first, both end with connection 1.
        // Side a registers 1 then 2, side b registers 2 then 1:
        assert!(keeps_existing(&a, &b, just), "a keeps 1 and drops 2");
        assert!(!keeps_existing(&b, &a, just), "b replaces 2 with 1");
        // A second dial by the same side at once does not replace the first.
        assert!(keeps_existing(&a, &a, just));
    }

    #[test]
    fn a_peer_that_connects_again_later_replaces_its_old_connection() {
        let (small, large) = (FeedId([1; 32]), FeedId([2; 32]));
        let later = SIMULTANEOUS_DIAL + Duration::from_secs(1);
        // Whichever key is larger and whoever dialled the old connection,
        // the survivor takes the new one.
        for (old_dialer, new_dialer) in [
            (small, large),
            (large, small),
            (small, small),
            (large, large),
        ] {
            assert!(!keeps_existing(&old_dialer, &new_dialer, later));
        }
    }
}
