//! Which peers to dial, and which connections to keep.
//!
//! Invariants:
//! - At most one session per peer. When both sides dial at once, each side
//!   keeps the connection dialled by the smaller key and closes the other,
//!   so both keep the same one. A peer that connects again later replaces
//!   its old connection: it would not redial a live one, so the old one is
//!   most likely dead (it lost power, or its network, without closing).
//! - At most [`MAX_CONNECTIONS`] sessions at a time, checked when a
//!   session registers (after its handshake). The last
//!   [`RESERVED_CONNECTIONS`] are for peers this node wants: dialled by it,
//!   followed within its hops, or remembered. When all are taken, such a
//!   peer replaces the oldest session with a peer it does not want.
//! - At most [`MAX_HANDSHAKES`] incoming handshakes at once, and
//!   [`MAX_HANDSHAKES_PER_SOURCE`] from one address; a connection beyond
//!   the per-address limit is closed at once, before a byte is read. When
//!   all are taken, a newcomer from an address with fewer handshakes in
//!   flight than the busiest one ends that one's oldest: a flood from a
//!   few addresses cannot keep out a peer from another. Strangers without
//!   the network key never get past a handshake, so these bound what they
//!   can hold: descriptors, tasks, memory.
//! - A failing address is retried with exponential backoff (1 s to 60 s);
//!   an address whose peer sent an invalid message waits the maximum.

use std::collections::{HashMap, HashSet, VecDeque};
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
use super::status::PeerStatus;
use super::Net;
use crate::clock::now_ms;
use crate::feed::FeedId;
use crate::node::Node;

/// Sessions open at once, dialled and accepted together.
pub const MAX_CONNECTIONS: usize = 16;
/// Of those, how many only peers this node wants may take.
pub const RESERVED_CONNECTIONS: usize = 4;
/// Incoming handshakes in flight at once, from everyone.
pub const MAX_HANDSHAKES: usize = 64;
/// Incoming handshakes in flight at once from one address (an IPv6 /64).
pub const MAX_HANDSHAKES_PER_SOURCE: u32 = 4;
/// Invite guests served at once.
const MAX_GUESTS: usize = 4;
/// Addresses whose failed handshakes were logged; past this the set starts
/// again (it only decides between an info line and a debug line).
const MAX_WARNED_SOURCES: usize = 1024;
/// Peers found by broadcast and not kept, at most; the longest silent
/// goes first.
const MAX_LAN_CANDIDATES: usize = 32;
/// How long a peer found by broadcast stays a candidate after its last packet.
const DISCOVERY_TTL: Duration = Duration::from_secs(30);
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

struct Active {
    conn_id: u64,
    /// A peer this node wants (see [`RESERVED_CONNECTIONS`]).
    wanted: bool,
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
    /// Incoming handshakes in flight, by source (see [`source_of`]),
    /// oldest first: each one's number and what ends it.
    handshaking: HashMap<IpAddr, VecDeque<(u64, CancellationToken)>>,
    handshakes: usize,
    next_handshake: u64,
    guests: usize,
    /// When a refused handshake was last logged at info level.
    flood_logged: Option<Instant>,
}

/// Why a session was not registered.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// A connection with the same peer is kept instead.
    Duplicate,
    /// Every place is taken by peers this node wants at least as much.
    Full,
}

/// A place for one incoming handshake; given back when dropped.
struct HandshakeSlot {
    peers: Arc<Peers>,
    source: IpAddr,
    number: u64,
    /// Fires when a newcomer takes this place.
    evicted: CancellationToken,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut inner = self.peers.lock();
        let Some(queue) = inner.handshaking.get_mut(&self.source) else {
            return;
        };
        let before = queue.len();
        queue.retain(|(n, _)| *n != self.number);
        let removed = before - queue.len();
        if queue.is_empty() {
            inner.handshaking.remove(&self.source);
        }
        inner.handshakes = inner.handshakes.saturating_sub(removed);
    }
}

/// A place for one invite guest; given back when dropped.
struct GuestSlot(Arc<Peers>);

impl Drop for GuestSlot {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.guests = inner.guests.saturating_sub(1);
    }
}

/// The address handshakes are counted by: the IP, or for IPv6 its /64
/// (one host usually holds a whole /64).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
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
        if new && !keep && !make_room_for_lan_candidate(&mut inner.candidates) {
            return;
        }
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
        // Remembered as working only once this node dials it and the
        // handshake proves the key (`dial`): a packet can name any host.
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
            // Closed at once, before a byte is read: a flood costs no
            // descriptor beyond the moment of accept.
            let Some(slot) = self.take_handshake_slot(from.ip()) else {
                continue;
            };
            let peers = self.clone();
            tokio::spawn(async move {
                let node = peers.node.clone();
                let accepted = tokio::select! {
                    accepted = shs::accept(tcp, &node.keys, &node.config.network_key) => accepted,
                    _ = slot.evicted.cancelled() => {
                        tracing::debug!("ended the handshake from {from} for a newcomer");
                        return;
                    }
                };
                drop(slot);
                match accepted {
                    Ok(conn) if peers.net.invites.is_guest(&conn.peer) => {
                        let Some(_guest) = peers.take_guest_slot() else {
                            tracing::info!(
                                "refusing a guest at {from}: {MAX_GUESTS} are redeeming already"
                            );
                            return;
                        };
                        tracing::info!("a guest at {from} is redeeming an invite");
                        invite::serve_guest(node, peers.net.invites.clone(), conn).await;
                    }
                    Ok(conn) => peers.run(conn, None).await,
                    Err(e) => {
                        // Log once per address, then quietly.
                        let first = {
                            let mut inner = peers.lock();
                            if inner.warned_ips.len() >= MAX_WARNED_SOURCES {
                                inner.warned_ips.clear();
                            }
                            inner.warned_ips.insert(from.ip())
                        };
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

    /// A place for an incoming handshake from `ip`: none when its address
    /// has [`MAX_HANDSHAKES_PER_SOURCE`] in flight, or when all
    /// [`MAX_HANDSHAKES`] are taken by addresses with no more than it has;
    /// otherwise, when all are taken, the busiest address's oldest
    /// handshake is ended to make room.
    fn take_handshake_slot(self: &Arc<Self>, ip: IpAddr) -> Option<HandshakeSlot> {
        let source = source_of(ip);
        let mut inner = self.lock();
        let from_source = inner.handshaking.get(&source).map_or(0, VecDeque::len) as u32;
        let mut refused = from_source >= MAX_HANDSHAKES_PER_SOURCE;
        if !refused && inner.handshakes >= MAX_HANDSHAKES {
            let busiest = inner
                .handshaking
                .iter()
                .max_by_key(|(_, queue)| queue.len())
                .filter(|(_, queue)| queue.len() as u32 > from_source + 1)
                .map(|(address, _)| *address);
            match busiest.and_then(|address| {
                let queue = inner.handshaking.get_mut(&address)?;
                let oldest = queue.pop_front();
                if queue.is_empty() {
                    inner.handshaking.remove(&address);
                }
                oldest
            }) {
                Some((_, token)) => {
                    token.cancel();
                    inner.handshakes -= 1;
                }
                None => refused = true,
            }
        }
        if refused {
            let now = Instant::now();
            let quiet = inner
                .flood_logged
                .is_some_and(|at| now.duration_since(at) < Duration::from_secs(60));
            let (total, mine) = (inner.handshakes, from_source);
            if !quiet {
                inner.flood_logged = Some(now);
            }
            drop(inner);
            if quiet {
                tracing::debug!(
                    "refused a connection from {ip}: {total} handshakes in flight, {mine} from it"
                );
            } else {
                tracing::warn!(
                    "refusing connections: {total} handshakes in flight, {mine} from {ip} \
                     (limits {MAX_HANDSHAKES}, {MAX_HANDSHAKES_PER_SOURCE} per address); \
                     someone without the network key may be flooding the port"
                );
            }
            return None;
        }
        inner.handshakes += 1;
        inner.next_handshake += 1;
        let number = inner.next_handshake;
        let evicted = CancellationToken::new();
        inner
            .handshaking
            .entry(source)
            .or_default()
            .push_back((number, evicted.clone()));
        Some(HandshakeSlot {
            peers: self.clone(),
            source,
            number,
            evicted,
        })
    }

    fn take_guest_slot(self: &Arc<Self>) -> Option<GuestSlot> {
        let mut inner = self.lock();
        if inner.guests >= MAX_GUESTS {
            return None;
        }
        inner.guests += 1;
        Some(GuestSlot(self.clone()))
    }

    /// Whether `peer` is the guest key of an invite or join code made here.
    pub fn is_guest(&self, peer: &FeedId) -> bool {
        self.net.invites.is_guest(peer)
    }

    /// Serves a guest that came through a room's tunnel: `invite.use`, as
    /// one that dialled directly.
    pub async fn serve_tunnelled_guest(self: &Arc<Self>, conn: Connection) {
        let Some(_guest) = self.take_guest_slot() else {
            tracing::info!("refusing a guest through a room: {MAX_GUESTS} are redeeming already");
            return;
        };
        tracing::info!("a guest is redeeming a join code through a room");
        invite::serve_guest(self.node.clone(), self.net.invites.clone(), conn).await;
    }

    /// Incoming handshakes in flight now (for tests and status).
    pub fn handshakes_in_flight(&self) -> usize {
        self.lock().handshakes
    }

    /// Whether this node wants `peer`: it follows it within its hops, or
    /// remembers an address of it.
    fn wants(&self, peer: &FeedId) -> bool {
        self.node.wanted_feeds().contains_key(peer) || self.net.memory.knows_key(peer)
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
        let Ok((conn_id, close, _)) = self.register(room, self.node.id(), &conn.address, true)
        else {
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
        let wanted = conn.dialled || self.wants(&peer);
        let (conn_id, close, counters) = match self.register(peer, dialer, &conn.address, wanted) {
            Ok(registered) => registered,
            Err(Refused::Duplicate) => {
                tracing::debug!("dropping a second connection with {peer}");
                return;
            }
            Err(Refused::Full) => {
                tracing::info!(
                    "refusing {peer} at {}: {MAX_CONNECTIONS} sessions open",
                    conn.address
                );
                return;
            }
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
        wanted: bool,
    ) -> Result<(u64, CancellationToken, Arc<Counters>), Refused> {
        let mut inner = self.lock();
        if let Some(existing) = inner.connected.get(&peer) {
            let age = Duration::from_secs_f64((now_ms() - existing.since_ms).max(0.0) / 1000.0);
            if keeps_existing(&existing.dialer, &dialer, age) {
                return Err(Refused::Duplicate);
            }
            existing.close.cancel();
        } else {
            let sessions: Vec<(FeedId, bool, f64)> = inner
                .connected
                .iter()
                .map(|(id, a)| (*id, a.wanted, a.since_ms))
                .collect();
            match place_for(&sessions, wanted) {
                Place::Free => {}
                Place::Replacing(victim) => {
                    if let Some(old) = inner.connected.remove(&victim) {
                        tracing::info!("closing the session with {victim} to make room for {peer}");
                        old.close.cancel();
                    }
                }
                Place::None => return Err(Refused::Full),
            }
        }
        inner.next_conn_id += 1;
        let conn_id = inner.next_conn_id;
        let close = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        inner.connected.insert(
            peer,
            Active {
                conn_id,
                wanted,
                dialer,
                close: close.clone(),
                address: address.to_string(),
                counters: counters.clone(),
                since_ms: now_ms(),
            },
        );
        drop(inner);
        self.publish_status();
        Ok((conn_id, close, counters))
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

/// Where a new session goes.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    /// A place is free.
    Free,
    /// In the place of this session, with a peer not wanted.
    Replacing(FeedId),
    /// Nowhere.
    None,
}

/// Where a new session goes, given the open ones (peer, wanted, since).
/// Peers not wanted share all but the reserved places; a wanted peer takes
/// any free place, or else the oldest session with an unwanted one.
fn place_for(sessions: &[(FeedId, bool, f64)], wanted: bool) -> Place {
    let unwanted = sessions.iter().filter(|(_, w, _)| !w).count();
    if sessions.len() < MAX_CONNECTIONS
        && (wanted || unwanted < MAX_CONNECTIONS - RESERVED_CONNECTIONS)
    {
        return Place::Free;
    }
    if !wanted {
        return Place::None;
    }
    sessions
        .iter()
        .filter(|(_, w, _)| !w)
        .min_by(|a, b| a.2.total_cmp(&b.2))
        .map_or(Place::None, |(id, _, _)| Place::Replacing(*id))
}

/// Makes room for one more LAN candidate that is not kept, dropping the
/// longest silent; false when every candidate is kept (none to drop) and
/// the limit is reached.
fn make_room_for_lan_candidate(candidates: &mut HashMap<PeerAddress, Candidate>) -> bool {
    let passing = candidates.values().filter(|c| !c.keep).count();
    if passing < MAX_LAN_CANDIDATES {
        return true;
    }
    let oldest = candidates
        .iter()
        .filter(|(_, c)| !c.keep)
        .min_by_key(|(_, c)| c.last_seen)
        .map(|(a, _)| a.clone());
    match oldest {
        Some(address) => {
            candidates.remove(&address);
            true
        }
        None => false,
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

    use super::{keeps_existing, place_for, source_of, Place, SIMULTANEOUS_DIAL};
    use super::{MAX_CONNECTIONS, RESERVED_CONNECTIONS};
    use crate::feed::FeedId;

    fn sessions(wanted: usize, unwanted: usize) -> Vec<(FeedId, bool, f64)> {
        (0..wanted + unwanted)
            .map(|i| (FeedId([i as u8; 32]), i < wanted, i as f64))
            .collect()
    }

    #[test]
    fn peers_not_wanted_leave_room_for_those_that_are() {
        let open = MAX_CONNECTIONS - RESERVED_CONNECTIONS;
        assert_eq!(place_for(&sessions(0, open - 1), false), Place::Free);
        assert_eq!(place_for(&sessions(0, open), false), Place::None);
        assert_eq!(place_for(&sessions(0, open), true), Place::Free);
        // All full: a wanted peer takes the oldest unwanted session's place.
        let full = sessions(RESERVED_CONNECTIONS, open);
        assert_eq!(
            place_for(&full, true),
            Place::Replacing(FeedId([RESERVED_CONNECTIONS as u8; 32]))
        );
        assert_eq!(place_for(&full, false), Place::None);
        assert_eq!(place_for(&sessions(MAX_CONNECTIONS, 0), true), Place::None);
    }

    #[test]
    fn handshakes_are_counted_by_host() {
        let a: std::net::IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: std::net::IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: std::net::IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of(c));
        let v4: std::net::IpAddr = "10.0.0.7".parse().expect("ip");
        assert_eq!(source_of(v4), v4);
    }

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
