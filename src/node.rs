//! A node: one identity, its store, and the views and graph derived from it.
//!
//! Every message enters through [`Node::publish`] (signed here) or
//! [`Node::ingest`] (verified by the caller, chained here), and both take the
//! same path: store (atomic, chain-checked) → views → follow graph → events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::broadcast;

use crate::clock::now_ms;
use crate::commit_group::CommitGroup;
use crate::config::Config;
use crate::feed::{FeedError, FeedId, FeedTip, Keypair, Message};
use crate::graph::FollowGraph;
use crate::health::JobTable;
use crate::net::status::NetStatus;
use crate::notices::Notices;
use crate::publish::split_for_size;
use crate::store::{contact_edge, Store, StoreError, Stored};
use crate::view::line::{LineRenderer, RenderOverlay};
use crate::view::{ViewEntry, Views};

/// The saved job table, brought up to date with every feed's tip. A table
/// ahead of the store (it was saved before a power cut took messages the
/// store had not synced) is thrown away and rebuilt.
fn load_jobs(path: &std::path::Path, store: &Store) -> Result<JobTable, NodeError> {
    let mut table = JobTable::load(path)
        .filter(|t| !t.is_ahead_of(store))
        .unwrap_or_default();
    let read = table.catch_up(store)?;
    if read > 0 {
        tracing::debug!("read {read} messages into the job table");
        if let Err(e) = table.save(path) {
            tracing::warn!("could not save {}: {e}", path.display());
        }
    }
    Ok(table)
}

/// The messages of `batch` that extend their feeds past `tips` (or, for
/// feeds not there, past `tip_of`), without those at or below a tip, and the
/// tips they make. The first message that neither extends its feed nor is
/// at or below its tip refuses the whole batch.
fn extend_tips(
    batch: Vec<Message>,
    tips: &HashMap<FeedId, FeedTip>,
    tip_of: &dyn Fn(&FeedId) -> Option<FeedTip>,
) -> Result<Extended, FeedError> {
    let mut extended: HashMap<FeedId, FeedTip> = HashMap::new();
    let mut msgs = Vec::with_capacity(batch.len());
    let mut forks: Vec<(FeedId, u64)> = Vec::new();
    for msg in batch {
        if forks.iter().any(|(feed, _)| *feed == msg.author) {
            continue; // the rest of a forked copy
        }
        let tip = extended
            .get(&msg.author)
            .or_else(|| tips.get(&msg.author))
            .copied()
            .or_else(|| tip_of(&msg.author));
        let have = tip.map_or(0, |t| t.sequence);
        if msg.sequence < have {
            continue;
        }
        if msg.sequence == have {
            // The message we hold at that sequence, or another: a fork.
            if tip.is_some_and(|t| t.key != msg.key) {
                forks.push((msg.author, msg.sequence));
            }
            continue;
        }
        match FeedTip::check_next(tip.as_ref(), &msg) {
            Ok(()) => {}
            // Signed by its author, but not our copy's next: the author
            // forked its feed (often a machine restored from a backup).
            // Noted and skipped, not the peer's fault.
            Err(FeedError::Fork { sequence }) => {
                forks.push((msg.author, sequence));
                continue;
            }
            Err(e) => return Err(e),
        }
        extended.insert(msg.author, msg.tip());
        msgs.push(msg);
    }
    Ok(Extended {
        msgs,
        tips: extended,
        forks,
    })
}

/// What a batch of replicated messages adds to the feeds.
struct Extended {
    /// The messages that extend them, in order.
    msgs: Vec<Message>,
    /// Each extended feed's new tip.
    tips: HashMap<FeedId, FeedTip>,
    /// Feeds seen forked, and where.
    forks: Vec<(FeedId, u64)>,
}

/// Something the network layer or a view may want to react to.
#[derive(Clone, Debug)]
pub enum Event {
    /// A feed gained messages; `seq` is its new latest sequence.
    Appended {
        /// The feed.
        feed: FeedId,
        /// Its latest sequence.
        seq: u64,
    },
    /// A contact message changed the follow graph.
    GraphChanged,
}

/// A running node.
pub struct Node {
    /// Settings.
    pub config: Config,
    /// This machine's key pair.
    pub keys: Keypair,
    /// The message store.
    pub store: Arc<Store>,
    views: Option<Views>,
    /// Committed messages whose view update a large publish defers, to
    /// hand the views large groups (see [`VIEW_GROUP_MESSAGES`]).
    unviewed: Mutex<Unviewed>,
    renderer: Mutex<LineRenderer>,
    graph: RwLock<FollowGraph>,
    events: broadcast::Sender<Event>,
    publish_lock: Mutex<()>,
    /// When the store last gained messages (ms since the epoch, as bits).
    last_change_ms: std::sync::atomic::AtomicU64,
    /// Network status, written by the network layer.
    pub net: RwLock<NetStatus>,
    /// Every job's last run (the daemon's nodes only).
    jobs: Option<RwLock<JobTable>>,
    started_ms: f64,
    /// The last write to `publish` or `follow` that was refused, for the
    /// writer to read in `status` (a shell's `echo` shows only the errno).
    last_refused: Mutex<Option<Refusal>>,
    /// Forks, clocks, and a peer's claim to hold more of our own feed.
    pub notices: Notices,
    /// Alert targets and waiting deliveries, as the daemon's alert thread
    /// last saw them.
    pub alerts: Mutex<crate::alert::AlertStatus>,
    /// Held by the alert thread through each round (judge, queue,
    /// deliver, save), so that a stop can let the round finish.
    pub alert_round: Mutex<()>,
    /// Replicated batches from all sessions, stored together.
    ingest_group: CommitGroup<Vec<Message>, Result<usize, NodeError>>,
}

/// How long a publish waits for this machine's own feed to come back from
/// a peer that holds more of it, before it is refused.
const PUBLISH_WAITS_FOR_OWN_FEED: Duration = Duration::from_secs(20);

/// A write to the mount that was refused.
#[derive(Clone, Debug)]
pub struct Refusal {
    /// `publish` or `follow`.
    pub file: String,
    /// Why, as the daemon's log says it.
    pub reason: String,
    /// When (ms since the epoch).
    pub at_ms: f64,
}

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A message could not be made.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// Writing a view failed.
    #[error("view: {0}")]
    View(#[from] std::io::Error),
    /// The commit that took this batch along with others failed.
    #[error(transparent)]
    Shared(Arc<NodeError>),
    /// The commit that took this batch along with others panicked.
    #[error("the commit that took this batch panicked")]
    CommitPanicked,
    /// A peer holds more of this machine's feed than this store does, and
    /// has not sent it yet: publishing now would fork the feed.
    #[error(
        "not publishing: this machine's feed is at sequence {ours} here, but {peer} holds it up \
         to {theirs} (this store was restored from an older copy?); scuttlefs is fetching the \
         rest from it and publishes again once it has it"
    )]
    Restored {
        /// Our latest sequence.
        ours: u64,
        /// The peer's.
        theirs: u64,
        /// The peer.
        peer: FeedId,
    },
    /// This machine's own feed forked: publishing would extend the fork.
    #[error(
        "not publishing: this machine's feed forked at sequence {sequence} (a peer holds \
         another message there; was this store restored from a backup after it had \
         published more?). Recover with a new identity: stop the daemon, move {path}/secret \
         and {path}/db aside, start it again, and follow the new id from the other machines"
    )]
    OwnFork {
        /// Where it forked.
        sequence: u64,
        /// `--path`.
        path: String,
    },
}

impl Node {
    /// Opens the node's store. With `with_views`, also builds the log views
    /// (the daemon does; one-shot commands do not need them).
    ///
    /// Building the views reads every line of the index; should that fail
    /// (damage sled only finds when it reads a node), the index is moved
    /// aside and rebuilt from the message log, as a failed open is.
    pub fn open(config: Config, keys: Keypair, with_views: bool) -> Result<Node, NodeError> {
        let dir = config.store_dir();
        let mut store = Store::open(&dir)?;
        // The job table and the views, read and built under one guard:
        // damage either finds sets the index aside, and both are made again
        // from the rebuilt one.
        let (jobs, views) = if with_views {
            let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let jobs = load_jobs(&config.jobs_cache(), &store)?;
                let views = Views::open(&config.line_file(), &store)?;
                Ok::<_, NodeError>((jobs, views))
            }));
            match built {
                Ok(Ok((jobs, views))) => (Some(jobs), Some(views)),
                failure => {
                    let reason = match failure {
                        Ok(Err(e)) => e.to_string(),
                        Err(panic) => crate::store::panic_message(&panic),
                        Ok(Ok(_)) => unreachable!("handled above"),
                    };
                    drop(store);
                    let aside = crate::store::dir::set_aside(&dir)?;
                    tracing::error!(
                        "the index could not be read back ({reason}); moved it to {} and rebuilding it from the message log",
                        aside.map_or_else(|| "nowhere".into(), |p| p.display().to_string()),
                    );
                    store = Store::open(&dir)?;
                    // The cache may hold what the damaged index showed.
                    let _ = std::fs::remove_file(config.jobs_cache());
                    let jobs = load_jobs(&config.jobs_cache(), &store)?;
                    let views = Views::rebuild(&config.line_file(), &store)?;
                    (Some(jobs), Some(views))
                }
            }
        } else {
            (None, None)
        };
        let store = Arc::new(store);
        let jobs = jobs.map(RwLock::new);
        let renderer = LineRenderer::new(store.names()?);
        let graph = FollowGraph::from_edges(store.contacts()?);
        let (events, _) = broadcast::channel(4096);
        let config_path = config.path.clone();
        Ok(Node {
            config,
            keys,
            store,
            views,
            unviewed: Mutex::new(Unviewed::default()),
            renderer: Mutex::new(renderer),
            graph: RwLock::new(graph),
            events,
            publish_lock: Mutex::new(()),
            last_change_ms: std::sync::atomic::AtomicU64::new(now_ms().to_bits()),
            net: RwLock::new(NetStatus::default()),
            jobs,
            started_ms: now_ms(),
            last_refused: Mutex::new(None),
            notices: Notices::load(&config_path),
            alerts: Mutex::new(Default::default()),
            alert_round: Mutex::new(()),
            ingest_group: CommitGroup::default(),
        })
    }

    /// This machine's feed id.
    pub fn id(&self) -> FeedId {
        self.keys.id()
    }

    /// The views, when the node was opened with them.
    pub fn views(&self) -> Option<&Views> {
        self.views.as_ref()
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// When the node started (ms since the epoch).
    pub fn started_ms(&self) -> f64 {
        self.started_ms
    }

    /// Whether this machine may publish now: not while a peer holds more
    /// of its feed (waiting a little for the rest to arrive), never once
    /// its feed forked.
    fn may_publish(&self) -> Result<(), NodeError> {
        let me = self.id();
        if let Some(fork) = self.notices.fork_of(&me) {
            return Err(NodeError::OwnFork {
                sequence: fork.sequence,
                path: self.config.path.display().to_string(),
            });
        }
        let deadline = std::time::Instant::now() + PUBLISH_WAITS_FOR_OWN_FEED;
        while let Some(behind) = self.own_feed_progress(false) {
            if std::time::Instant::now() >= deadline {
                return Err(NodeError::Restored {
                    ours: self.store.tip(&me).map_or(0, |t| t.sequence),
                    theirs: behind.theirs,
                    peer: behind.peer,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Checks a peer's claim to hold more of our feed against our tip
    /// (`grew`: our feed just took messages from a peer), logging when it
    /// is met or given up; returns the claim still standing.
    pub fn own_feed_progress(&self, grew: bool) -> Option<crate::notices::Behind> {
        let tip = self.store.tip(&self.id()).map_or(0, |t| t.sequence);
        if let Some(outcome) = self.notices.own_tip(tip, grew) {
            tracing::warn!("{outcome}");
        }
        self.notices.behind()
    }

    /// `peer` says it holds this machine's feed up to `theirs`. Returns
    /// whether that is news: the session then asks for the rest.
    pub fn claim_own_feed(&self, peer: FeedId, theirs: u64) -> bool {
        let ours = self.store.tip(&self.id()).map_or(0, |t| t.sequence);
        let news = self.notices.claim(peer, ours, theirs);
        if news {
            tracing::warn!(
                "{peer} holds this machine's feed up to sequence {theirs}, past this store's \
                 {ours} (restored from an older copy?): fetching the rest, and not publishing \
                 until it is here"
            );
        }
        news
    }

    /// Notes that a write to the mount's `file` was refused, and why.
    pub fn note_refused(&self, file: &str, reason: String) {
        let refusal = Refusal {
            file: file.to_string(),
            reason,
            at_ms: now_ms(),
        };
        *self.last_refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(refusal);
    }

    /// The last refused write to the mount, if any since the start.
    pub fn last_refused(&self) -> Option<Refusal> {
        self.last_refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Signs and stores `contents` as the next messages of this feed. A log
    /// line too long for one message is split across several, each but the
    /// last marked `"more": true`.
    ///
    /// Every content is checked before anything is stored, so bad input
    /// publishes nothing.
    pub fn publish(&self, contents: Vec<Value>) -> Result<Vec<Stored>, NodeError> {
        let mut all = Vec::new();
        self.publish_with(contents, |stored| all.extend_from_slice(stored))?;
        Ok(all)
    }

    /// [`Node::publish`], for contents made on the fly, handing the stored
    /// messages to `on_stored` a chunk at a time instead of keeping them.
    /// Returns how many messages were stored.
    ///
    /// `contents` is iterated twice: once to check every content (nothing
    /// is stored if any is bad), then to sign and store them. Only a chunk
    /// of contents and messages is in memory at once, so a whole log piped
    /// in costs its lines, not their messages. Chunks are signed on this
    /// thread while the previous one is stored on another: signing is
    /// sequential by nature (each message names the one before), storing is
    /// the other half of the cost, and the machine has two cores.
    pub fn publish_with<C>(
        &self,
        contents: C,
        on_stored: impl FnMut(&[Stored]) + Send,
    ) -> Result<usize, NodeError>
    where
        C: IntoIterator<Item = Value>,
        C::IntoIter: Clone,
    {
        self.may_publish()?;
        let _one_publisher = self.publish_lock.lock().unwrap_or_else(|e| e.into_inner());
        let contents = contents.into_iter();
        let first_tip = self.store.tip(&self.id());
        let now = now_ms();
        let split = |content| split_for_size(&self.keys, first_tip.as_ref(), now, content);
        let mut count = 0;
        for content in contents.clone() {
            count += split(content)?.len();
        }
        if count == 0 {
            return Ok(0);
        }
        // The same split as the check above (same contents, tip and time),
        // so it cannot fail; should it, the error still stops the publish.
        let mut parts = contents.flat_map(|content| match split(content) {
            Ok(parts) => parts.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        });
        let mut tip = first_tip;
        let mut sign_next_chunk = || -> Result<Vec<Message>, FeedError> {
            parts
                .by_ref()
                .take(PUBLISH_CHUNK)
                .map(|content| {
                    let msg = Message::sign(&self.keys, tip.as_ref(), now, content?)?;
                    tip = Some(msg.tip());
                    Ok(msg)
                })
                .collect()
        };
        let mut on_stored = on_stored;
        if count <= PUBLISH_CHUNK {
            let signed = sign_next_chunk()?;
            on_stored(&self.append(|_| Ok(signed), now, ViewTiming::Now)?);
            return Ok(count);
        }
        let (to_store, signed_chunks) = std::sync::mpsc::sync_channel::<Vec<Message>>(2);
        std::thread::scope(|scope| {
            let storer = scope.spawn(move || -> Result<(), NodeError> {
                // Each chunk is stored (atomically) at once; the views take
                // them in groups, so that the line file grows in large
                // appends, whose page cache reads much faster than that of
                // many small ones. No caller sees them before this call
                // returns anyway.
                let mut outcome = Ok(());
                for chunk in signed_chunks {
                    match self.append(|_| Ok(chunk), now, ViewTiming::Grouped) {
                        Ok(stored) => on_stored(&stored),
                        Err(e) => {
                            outcome = Err(e);
                            break;
                        }
                    }
                }
                // What was stored shows, even when a later chunk failed.
                self.view_unviewed()?;
                outcome
            });
            loop {
                let signed = sign_next_chunk()?;
                if signed.is_empty() || to_store.send(signed).is_err() {
                    break; // done, or the storer failed: its error is returned below
                }
            }
            drop(to_store);
            storer
                .join()
                .unwrap_or_else(|_| Err(NodeError::View(std::io::Error::other("storer panicked"))))
        })?;
        if count > PUBLISH_CHUNK * 16 {
            crate::platform::return_free_memory();
        }
        Ok(count)
    }

    /// Stores messages that were already verified ([`Message::verify`]),
    /// checking that each extends its feed. All or nothing.
    pub fn ingest(&self, msgs: Vec<Message>) -> Result<Vec<Stored>, NodeError> {
        self.append(|_| Ok(msgs), now_ms(), ViewTiming::Now)
    }

    /// Stores verified messages from replication, skipping those at or below
    /// their feed's tip: copies of what another peer already delivered. The
    /// rest must extend their feeds; if one does not, none of `msgs` is
    /// stored. Batches that other sessions hand in meanwhile are stored in
    /// the same commit. Returns how many of `msgs` were stored.
    pub fn ingest_new(&self, msgs: Vec<Message>) -> Result<usize, NodeError> {
        self.ingest_group
            .submit(msgs, |batches| self.ingest_together(batches))
            .unwrap_or(Err(NodeError::CommitPanicked))
    }

    /// Stores the batches of several sessions in one commit, and answers
    /// each: how many of its messages were stored, or why none were.
    fn ingest_together(&self, batches: Vec<Vec<Message>>) -> Vec<Result<usize, NodeError>> {
        let count = batches.len();
        let mut answers: Vec<Result<usize, NodeError>> = Vec::with_capacity(count);
        let mut forks = Vec::new();
        let me = self.id();
        let mut own_grew = false;
        let stored = self.append(
            |tip_of| {
                let mut tips: HashMap<FeedId, FeedTip> = HashMap::new();
                let mut accepted = Vec::new();
                for batch in batches {
                    let answer = match extend_tips(batch, &tips, tip_of) {
                        Ok(extended) => {
                            tips.extend(extended.tips);
                            forks.extend(extended.forks);
                            let stored = extended.msgs.len();
                            accepted.extend(extended.msgs);
                            Ok(stored)
                        }
                        Err(e) => Err(NodeError::Store(StoreError::Rejected(e))),
                    };
                    answers.push(answer);
                }
                // Each feed's messages together, in order, so that its lines
                // lie in one run of the line file.
                accepted.sort_by_key(|m: &Message| m.author);
                own_grew = accepted.iter().any(|m| m.author == me);
                Ok(accepted)
            },
            now_ms(),
            ViewTiming::Now,
        );
        for (feed, sequence) in forks {
            if self.notices.fork(feed, sequence) {
                let whose = if feed == self.id() {
                    "this machine's own feed"
                } else {
                    "the feed"
                };
                tracing::warn!(
                    "{whose} {feed} forked at sequence {sequence}: a peer holds a different \
                     message there (was that machine restored from a backup?); the copy \
                     this machine holds is kept"
                );
            }
        }
        if own_grew && stored.is_ok() {
            self.own_feed_progress(true);
        }
        if let Err(e) = stored {
            answers.resize_with(count, || Ok(0));
            let shared = Arc::new(e);
            for answer in &mut answers {
                if answer.is_ok() {
                    *answer = Err(NodeError::Shared(shared.clone()));
                }
            }
        }
        answers
    }

    /// Publishes a contact message about `feed`.
    pub fn follow(&self, feed: &FeedId, following: bool) -> Result<Vec<Stored>, NodeError> {
        let mut content = Map::new();
        content.insert("type".into(), "contact".into());
        content.insert("contact".into(), feed.to_string().into());
        content.insert("following".into(), following.into());
        self.publish(vec![Value::Object(content)])
    }

    /// Publishes an `about` naming this machine, unless it already has
    /// that name.
    pub fn ensure_name(&self, name: &str) -> Result<(), NodeError> {
        let current = self.names().get(&self.id()).cloned();
        if current.as_deref() == Some(name) || name.is_empty() {
            return Ok(());
        }
        let mut content = Map::new();
        content.insert("type".into(), "about".into());
        content.insert("about".into(), self.id().to_string().into());
        content.insert("name".into(), name.into());
        self.publish(vec![Value::Object(content)])?;
        Ok(())
    }

    /// The latest name each feed gave itself.
    pub fn names(&self) -> HashMap<FeedId, String> {
        self.lock_renderer().names().clone()
    }

    /// The feeds this machine follows.
    pub fn following(&self) -> Vec<FeedId> {
        self.read_graph().followed_by(&self.id())
    }

    /// Feeds within the configured hops, with their distance.
    pub fn wanted_feeds(&self) -> HashMap<FeedId, u32> {
        self.read_graph().within(&self.id(), self.config.hops)
    }

    /// Runs `f` on the job table (`None` on a node opened without views).
    pub fn with_jobs<T>(&self, f: impl FnOnce(&JobTable) -> T) -> Option<T> {
        let jobs = self.jobs.as_ref()?;
        Some(f(&jobs.read().unwrap_or_else(|e| e.into_inner())))
    }

    /// Saves the job table, so that the next start need not read the
    /// feeds again.
    pub fn save_jobs(&self) {
        if let Some(jobs) = &self.jobs {
            let table = jobs.read().unwrap_or_else(|e| e.into_inner()).clone();
            if let Err(e) = table.save(&self.config.jobs_cache()) {
                tracing::warn!("could not save {}: {e}", self.config.jobs_cache().display());
            }
        }
    }

    /// Saves a checkpoint of the views (see [`Views::save`]), so that the
    /// next start reads only what was stored after it.
    pub fn save_views(&self) {
        if let Some(views) = &self.views {
            if let Err(e) = views.save(&self.store) {
                tracing::warn!("could not save the views' checkpoint: {e}");
            }
        }
    }

    /// Makes everything stored so far durable.
    pub fn flush(&self) -> Result<(), NodeError> {
        Ok(self.store.flush()?)
    }

    /// When the store last gained messages, or the node started (ms since
    /// the epoch): the mount's modification time.
    pub fn last_change_ms(&self) -> f64 {
        f64::from_bits(
            self.last_change_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// The one way messages enter the store: `make` gives the batch (it
    /// sees the committed tips), the store checks and commits it, and the
    /// commit hook advances the renderer, the views, the follow graph and
    /// the events by exactly that batch, in commit order.
    fn append(
        &self,
        make: impl FnOnce(&dyn Fn(&FeedId) -> Option<FeedTip>) -> Result<Vec<Message>, StoreError>,
        received_ms: f64,
        timing: ViewTiming,
    ) -> Result<Vec<Stored>, NodeError> {
        let overlay = std::cell::RefCell::new(RenderOverlay::default());
        let store = &self.store;
        let mut view_result = Ok(());
        let stored = self.store.append_with(
            make,
            |msg| {
                self.lock_renderer()
                    .render_pending(&mut overlay.borrow_mut(), msg, |feed, seq| {
                        store.get(feed, seq).ok().flatten()
                    })
            },
            received_ms,
            |stored| {
                self.lock_renderer().commit(overlay.take());
                view_result = self.on_commit(stored, timing);
            },
        )?;
        view_result?;
        Ok(stored)
    }

    /// The store's commit hook: runs under its append lock.
    fn on_commit(&self, stored: &[Stored], timing: ViewTiming) -> Result<(), NodeError> {
        if stored.is_empty() {
            return Ok(());
        }
        self.last_change_ms
            .store(now_ms().to_bits(), std::sync::atomic::Ordering::Relaxed);
        let mut graph_changed = false;
        {
            let mut graph = self.graph.write().unwrap_or_else(|e| e.into_inner());
            for entry in stored {
                if let Some((contact, following)) = contact_edge(&entry.msg) {
                    graph_changed |= graph.set(entry.msg.author, contact, following);
                }
            }
        }
        if let Some(jobs) = &self.jobs {
            let mut jobs = jobs.write().unwrap_or_else(|e| e.into_inner());
            for entry in stored {
                jobs.observe(&entry.msg);
            }
        }
        let mut latest: HashMap<FeedId, u64> = HashMap::new();
        for entry in stored {
            latest.insert(entry.msg.author, entry.msg.sequence);
        }
        for (feed, seq) in latest {
            let _ = self.events.send(Event::Appended { feed, seq });
        }
        if graph_changed {
            let _ = self.events.send(Event::GraphChanged);
        }
        let Some(views) = &self.views else {
            return Ok(());
        };
        // Views always take batches in commit order: a deferred group goes
        // to them before anything committed after it.
        let mut unviewed = self.lock_unviewed();
        unviewed.bytes += stored
            .iter()
            .filter_map(|s| s.line.as_ref())
            .map(Vec::len)
            .sum::<usize>();
        unviewed.entries.extend(stored.iter().map(ViewEntry::from));
        let group_full =
            unviewed.entries.len() >= VIEW_GROUP_MESSAGES || unviewed.bytes >= VIEW_GROUP_BYTES;
        if timing == ViewTiming::Now || group_full {
            let entries = std::mem::take(&mut *unviewed);
            views.add(&entries.entries)?;
        }
        Ok(())
    }

    /// Hands the views whatever a grouped publish left waiting.
    fn view_unviewed(&self) -> Result<(), NodeError> {
        let Some(views) = &self.views else {
            return Ok(());
        };
        let mut unviewed = self.lock_unviewed();
        let entries = std::mem::take(&mut *unviewed);
        views.add(&entries.entries)?;
        Ok(())
    }

    fn lock_unviewed(&self) -> std::sync::MutexGuard<'_, Unviewed> {
        self.unviewed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_renderer(&self) -> std::sync::MutexGuard<'_, LineRenderer> {
        self.renderer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_graph(&self) -> std::sync::RwLockReadGuard<'_, FollowGraph> {
        self.graph.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// When a committed batch reaches the views.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ViewTiming {
    /// Before the append returns.
    Now,
    /// With later batches of the same publish, in a group.
    Grouped,
}

/// Committed messages waiting for the views, and the bytes of their lines.
#[derive(Default)]
struct Unviewed {
    entries: Vec<ViewEntry>,
    bytes: usize,
}

/// Messages per chunk when signing and storing overlap.
const PUBLISH_CHUNK: usize = 512;

/// At most this many stored messages, or this many bytes of their lines,
/// wait for the views during one publish.
const VIEW_GROUP_MESSAGES: usize = 4096;
const VIEW_GROUP_BYTES: usize = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(keys: &Keypair, n: usize) -> Vec<Message> {
        let mut out: Vec<Message> = Vec::new();
        for i in 0..n {
            let tip = out.last().map(Message::tip);
            let content = serde_json::json!({"type": "log", "text": format!("line {i}")});
            out.push(Message::sign(keys, tip.as_ref(), 1e12 + i as f64, content).expect("signs"));
        }
        out
    }

    #[test]
    fn batches_stored_together_are_refused_each_on_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            path: dir.path().to_path_buf(),
            port: 0,
            network_key: [7; 32],
            hops: 2,
            name: "here".into(),
            host: None,
            max_silence_ms: crate::health::DEFAULT_MAX_SILENCE_MS,
            remind_ms: Some(crate::config::DEFAULT_REMIND_MS),
            http: None,
            http_token: None,
            mount: None,
        };
        let node = Node::open(config, Keypair::from_seed(&[1; 32]), false).expect("opens");
        let (x, y) = (Keypair::from_seed(&[2; 32]), Keypair::from_seed(&[3; 32]));
        let xs = signed(&x, 5);
        let mut ys = signed(&y, 3);
        // The second is the first again, so the third skips a sequence.
        ys[1] = signed(&y, 2).remove(0);
        let answers = node.ingest_together(vec![xs[..3].to_vec(), ys, xs[1..].to_vec()]);
        let counts: Vec<String> = answers
            .iter()
            .map(|a| match a {
                Ok(n) => n.to_string(),
                Err(NodeError::Store(StoreError::Rejected(_))) => "refused".into(),
                Err(e) => e.to_string(),
            })
            .collect();
        assert_eq!(counts, ["3", "refused", "2"]);
        assert_eq!(node.store.tip(&x.id()).map(|t| t.sequence), Some(5));
        assert_eq!(
            node.store.tip(&y.id()),
            None,
            "nothing of the refused batch"
        );
    }
}
