//! The message store: an append-only message log, indexed in sled and in
//! position files.
//!
//! Every message's JSON is written once to the log (`log.rs`), in receive
//! order; the log is the source of truth. Where each feed's messages are
//! in it lives in a file per feed of fixed-size entries (`positions.rs`).
//! sled holds the rest, a few entries per feed, all derived from the log
//! and all written for one append by one atomic batch, in one tree:
//!
//! | key                               | value                                  |
//! |-----------------------------------|----------------------------------------|
//! | `f` author(32)                    | msgid(32) seq(8) timestamp(8): the tip |
//! | `n` author(32)                    | the feed's latest self-given name      |
//! | `c` author(32) contact(32)        | 1 following, 0 not                     |
//! | `E`                               | the log's indexed extent: end(8) count(8) last(8) |
//! | `P`                               | the log offset up to which the position files are synced |
//! | `R`                               | present while a rebuild is under way   |
//!
//! Earlier versions kept more here: rendered lines (`t`, `l`, `L`), the
//! positions (`m`) and an index by message id (`i`, `I`) that nothing
//! read. Opening removes them.
//!
//! No value exceeds a few KiB, so that no sled node grows past the size
//! at which sled writes it as a blob file (which it never fsyncs).
//!
//! Integers are big-endian, so sled's key order is the order each index
//! needs.
//!
//! Invariants:
//! - A record is in the log, and its position in its feed's file, before
//!   the sled batch that moves its feed's tip and `E`, so the indexes
//!   never name a message the log lacks. Log bytes past `E` are a batch
//!   whose entries did not commit; opening indexes its whole, chained
//!   records and cuts the rest.
//! - Positions of records before `P` are synced. Opening writes those of
//!   the records from `P` to `E` again from the log, and cuts each file
//!   to its feed's tip.
//! - [`Store::flush`] syncs the log before sled, so whatever it
//!   acknowledges survives power loss. If power loss leaves sled ahead of
//!   the log (sled flushes by itself), opening rebuilds every index from
//!   the log up to its last whole, chained record.
//! - Every message extends its feed: sequence = previous + 1 and `previous`
//!   = the id of the stored message before it. A batch that breaks this is
//!   refused whole, before anything is written.

mod codec;
mod cold;
pub mod dir;
mod log;
mod positions;
mod recovery;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Mutex, RwLock};

use crate::feed::{FeedError, FeedId, FeedTip, Message, MsgId};
use codec::LogExtent;
use log::{LogRecord, MessageLog};
use positions::Positions;
use recovery::Indexer;

pub use codec::{contact_edge, ordered_timestamp, timestamp_from_ordered};
pub use dir::holder;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the store open.
    #[error("the store at {0} is locked by another process")]
    Locked(String),
    /// sled or the log file failed (disk full, corruption, I/O).
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    /// The message does not extend its feed.
    #[error("{0}")]
    Rejected(#[from] FeedError),
    /// The store holds bytes that do not decode.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
}

/// A message as the store received it.
#[derive(Clone, Debug)]
pub struct Stored {
    /// Its position in the receive log (its record's offset in the log):
    /// unique, and increasing in receive order.
    pub recv: u64,
    /// When this store received it, in milliseconds since the epoch.
    pub received_ms: f64,
    /// The message.
    pub msg: Message,
    /// Its rendered log line, for messages that show in `log` views (for
    /// the commit hook: the store does not keep it).
    pub line: Option<Vec<u8>>,
    /// Length of its stored JSON (compact, as `feed.jsonl` shows it).
    pub json_len: usize,
}

/// A stored message: its id, when it was received, and its compact JSON.
pub struct RawMessage {
    /// The message id.
    pub key: MsgId,
    /// When the store received it.
    pub received_ms: f64,
    json: Vec<u8>,
}

impl RawMessage {
    fn from_record(record: LogRecord) -> RawMessage {
        RawMessage {
            key: record.id,
            received_ms: record.received_ms,
            json: record.json,
        }
    }

    /// The value as compact JavaScript JSON.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// Parses the message.
    pub fn message(&self) -> Result<Message, StoreError> {
        Ok(Message::from_trusted_json(self.key, &self.json)?)
    }
}

/// What the store has committed, as readers see it. Only an append holding
/// the append lock changes it, and only after its sled batch has landed,
/// so readers never wait for disk.
#[derive(Default)]
struct Committed {
    by_feed: HashMap<FeedId, FeedTip>,
    extent: LogExtent,
}

/// A message placed in the log, ready to index.
struct Placed {
    offset: u64,
    received_ms: f64,
    msg: Message,
    json_len: usize,
    line: Option<Vec<u8>>,
}

/// Longest self-given name kept in the name index; labels use far less.
const MAX_STORED_NAME: usize = 1024;

/// The message log's newest bytes that stay uncompressed: what
/// replication and the views read most, without a block to decompress.
pub const HOT_LOG_BYTES: u64 = 64 << 20;

/// Messages indexed per batch while rebuilding.
const REBUILD_BATCH: usize = 1024;

/// The message store. Cheap to share behind an `Arc`; appends are serialised
/// internally, reads are not.
pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
    log: MessageLog,
    positions: Positions,
    /// Serialises syncs of the position files, so that the offset one
    /// records never covers positions another has yet to sync.
    positions_sync: Mutex<()>,
    /// Serialises appends; held across their disk writes.
    append: Mutex<()>,
    committed: RwLock<Committed>,
    /// How much of the log is known to be on disk; held while syncing, so
    /// that concurrent callers wait for one sync instead of each making one.
    synced_end: Mutex<u64>,
    /// Dropped last: the directory stays ours until sled has closed.
    _lock: dir::DirLock,
}

impl Store {
    /// Opens (or creates) the store in directory `dir`.
    ///
    /// The log is the truth and sled a cache of it, so an index that fails
    /// to open, to recover, or to read back (an error or a panic inside
    /// sled, as power loss can leave it) is moved aside and rebuilt from the
    /// log. Only a log that cannot be read, or a store held by another
    /// process, keeps the store from opening.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let lock = dir::lock(dir)?;
        dir::move_root_index(dir)?;
        let log = MessageLog::open(&dir::log_path(dir), &dir::cold_path(dir))?;
        // Whatever the log holds now may be sent to peers as this machine's
        // own messages: make it durable first, so that no later power cut
        // can take back a message a peer has (its successor would fork).
        log.sync()?;
        let positions = Positions::open(&dir::positions_dir(dir)).map_err(io_error)?;
        let first = catch_unwind(AssertUnwindSafe(|| {
            Store::open_index(dir, &log, &positions)
        }));
        let failure = match first {
            Ok(Ok(index)) => return Ok(Store::assemble(lock, log, positions, index)),
            Ok(Err(StoreError::Locked(path))) => return Err(StoreError::Locked(path)),
            Ok(Err(e)) => e.to_string(),
            Err(panic) => panic_message(&panic),
        };
        let aside = dir::set_aside(dir)?;
        tracing::error!(
            "the index database could not be opened ({failure}); moved it to {} and rebuilding it from the message log",
            aside.map_or_else(|| "nowhere".into(), |p| p.display().to_string()),
        );
        let index = Store::open_index(dir, &log, &positions)?;
        Ok(Store::assemble(lock, log, positions, index))
    }

    fn assemble(
        lock: dir::DirLock,
        log: MessageLog,
        positions: Positions,
        index: OpenIndex,
    ) -> Store {
        let end = index.committed.extent.end;
        Store {
            db: index.db,
            tree: index.tree,
            log,
            positions,
            positions_sync: Mutex::new(()),
            append: Mutex::new(()),
            committed: RwLock::new(index.committed),
            // Opening synced the log.
            synced_end: Mutex::new(end),
            _lock: lock,
        }
    }

    /// Opens sled, brings it and the position files into agreement with
    /// the log and reads them back.
    fn open_index(
        dir: &Path,
        log: &MessageLog,
        positions: &Positions,
    ) -> Result<OpenIndex, StoreError> {
        let db = open_sled(&dir::index_dir(dir))?;
        let tree = db.open_tree("messages")?;
        let indexer = Indexer {
            tree: &tree,
            log,
            positions,
        };
        let mut committed = Committed::default();
        indexer.recover(&mut committed)?;
        indexer.load(&mut committed)?;
        indexer.restore_positions(&committed)?;
        indexer.drop_obsolete_entries()?;
        if log.file_len()? > committed.extent.end {
            indexer.index_log_tail(&mut committed)?;
        }
        indexer.check_readable(&committed)?;
        Ok(OpenIndex {
            db,
            tree,
            committed,
        })
    }

    /// The latest message of `feed`.
    pub fn tip(&self, feed: &FeedId) -> Option<FeedTip> {
        self.read_committed().by_feed.get(feed).copied()
    }

    /// Every feed with at least one message, with its tip.
    pub fn feeds(&self) -> Vec<(FeedId, FeedTip)> {
        let mut all: Vec<_> = self
            .read_committed()
            .by_feed
            .iter()
            .map(|(f, t)| (*f, *t))
            .collect();
        all.sort_by_key(|(f, _)| *f);
        all
    }

    /// How many messages the store holds.
    pub fn len(&self) -> u64 {
        self.read_committed().extent.count
    }

    /// Whether the store holds no messages.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `msgs`, in order, as one atomic batch.
    ///
    /// Each message must extend its feed (`FeedTip::check_next`), counting
    /// earlier messages of the same batch. The batch is all or nothing, and
    /// checked whole before anything is rendered or written. `make` runs
    /// under the append lock before anything is written, so a caller that
    /// signs messages sees a consistent tip. `render` gives each message its
    /// log line, if it has one, which the commit hook receives. `on_commit` runs once the batch has
    /// committed, still under the append lock: hooks see every committed
    /// batch once, in commit order, and nothing that did not commit.
    pub fn append_with(
        &self,
        make: impl FnOnce(&dyn Fn(&FeedId) -> Option<FeedTip>) -> Result<Vec<Message>, StoreError>,
        mut render: impl FnMut(&Message) -> Option<Vec<u8>>,
        received_ms: f64,
        on_commit: impl FnOnce(&[Stored]),
    ) -> Result<Vec<Stored>, StoreError> {
        let _append = self.lock_append();
        let msgs = {
            let committed = self.read_committed();
            let lookup = |feed: &FeedId| committed.by_feed.get(feed).copied();
            let msgs = make(&lookup)?;
            let mut pending: HashMap<FeedId, FeedTip> = HashMap::new();
            for msg in &msgs {
                let tip = pending
                    .get(&msg.author)
                    .or_else(|| committed.by_feed.get(&msg.author))
                    .copied();
                FeedTip::check_next(tip.as_ref(), msg)?;
                pending.insert(msg.author, msg.tip());
            }
            msgs
        };
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let start = self.read_committed().extent.end;
        let mut records = Vec::with_capacity(msgs.len() * 512);
        let mut placed = Vec::with_capacity(msgs.len());
        let mut offset = start;
        for msg in msgs {
            let json = msg.value_json();
            log::encode_record(&mut records, &msg.key, received_ms, json.as_bytes());
            placed.push(Placed {
                offset,
                received_ms,
                line: render(&msg),
                json_len: json.len(),
                msg,
            });
            offset += log::record_len(json.len());
        }
        self.log.write_at(&records, start)?;
        let stored = match self.indexer().index(&self.committed, placed) {
            Ok(stored) => stored,
            Err(e) => {
                // The caller is told the batch failed, so it must leave no
                // trace: opening would otherwise index these whole records
                // and a retry would store the lines twice.
                if let Err(cut) = self.log.truncate(start) {
                    tracing::error!("could not cut a failed batch from the message log: {cut}");
                }
                return Err(e);
            }
        };
        on_commit(&stored);
        Ok(stored)
    }
}

/// An index opened and checked against the log.
struct OpenIndex {
    db: sled::Db,
    tree: sled::Tree,
    committed: Committed,
}

impl Store {
    /// Appends already verified messages (from the network or a local signer).
    pub fn append(
        &self,
        msgs: Vec<Message>,
        render: impl FnMut(&Message) -> Option<Vec<u8>>,
        received_ms: f64,
    ) -> Result<Vec<Stored>, StoreError> {
        self.append_with(|_| Ok(msgs), render, received_ms, |_| {})
    }

    /// Makes every append so far durable: the log first, then the indexes
    /// that point into it.
    ///
    /// The position files are not synced here: opening writes those a
    /// power cut may have taken again from the log (see the module's
    /// invariants), and a close of `publish` is spared another sync.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.sync_log()?;
        self.db.flush()?;
        Ok(())
    }

    /// Syncs the position files written since the last sync, so that
    /// opening has fewer to write again from the log (see the module's
    /// invariants). sled makes the record of it durable by itself within
    /// half a second, or at the next [`Store::flush`]. The daemon calls
    /// it every second and when it stops.
    pub fn sync_positions(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self
            .positions_sync
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let end = self.len_bytes();
        self.indexer().sync_positions(end)
    }

    fn indexer(&self) -> Indexer<'_> {
        Indexer {
            tree: &self.tree,
            log: &self.log,
            positions: &self.positions,
        }
    }

    /// Compresses the log's older records (see `cold.rs`), keeping the
    /// last `keep_hot` durable bytes as they are, for the reads of recent
    /// messages that replication makes. Does a bounded amount of work;
    /// returns how many bytes it compressed, so that a caller can come
    /// back while there is more.
    pub fn seal_cold(&self, keep_hot: u64) -> Result<u64, StoreError> {
        let synced = *self.synced_end.lock().unwrap_or_else(|e| e.into_inner());
        self.log.seal(synced.saturating_sub(keep_hot))
    }

    /// Makes every message appended so far durable in the log, if it is
    /// not already: enough for opening to find it again after power loss
    /// (the indexes are rebuilt from the log). Call it before this
    /// machine's own messages leave for a peer.
    pub fn sync_log(&self) -> Result<(), StoreError> {
        let mut synced = self.synced_end.lock().unwrap_or_else(|e| e.into_inner());
        let end = self.len_bytes();
        if *synced < end {
            self.log.sync()?;
            *synced = end;
        }
        Ok(())
    }

    /// The end of the indexed log.
    fn len_bytes(&self) -> u64 {
        self.read_committed().extent.end
    }

    /// The message at `seq` of `feed`.
    pub fn get(&self, feed: &FeedId, seq: u64) -> Result<Option<Message>, StoreError> {
        match self.get_raw(feed, seq)? {
            Some(raw) => Ok(Some(raw.message()?)),
            None => Ok(None),
        }
    }

    /// The message at `seq` of `feed`, unparsed.
    pub fn get_raw(&self, feed: &FeedId, seq: u64) -> Result<Option<RawMessage>, StoreError> {
        let tip = self.tip(feed).map_or(0, |t| t.sequence);
        if seq == 0 || seq > tip {
            return Ok(None);
        }
        let found = self.positions.read(feed, seq, seq).map_err(io_error)?;
        let Some(&(offset, json_len)) = found.first() else {
            return Err(StoreError::Corrupt(format!(
                "no position for sequence {seq} of {feed}"
            )));
        };
        let record = self.log.read(offset, json_len)?;
        Ok(Some(RawMessage::from_record(record)))
    }

    /// The raw messages of `feed` from sequence `from` on, in order, up to
    /// its tip when this is called.
    pub fn history(
        &self,
        feed: &FeedId,
        from: u64,
    ) -> impl Iterator<Item = Result<(u64, RawMessage), StoreError>> + '_ {
        let tip = self.tip(feed).map_or(0, |t| t.sequence);
        History {
            positions: self.positions.reader(*feed, from, tip),
            reader: self.log.reader(),
            done: false,
        }
    }

    /// Every message in receive order, with the time it was received.
    pub fn receive_log(&self) -> impl Iterator<Item = Result<RawMessage, StoreError>> + '_ {
        let end = self.read_committed().extent.end;
        self.log
            .scan(0, end)
            .map(|item| item.map(|(_, record)| RawMessage::from_record(record)))
    }

    /// The messages committed from log offset `from` on (where a record
    /// starts: 0, or an end this gave), in receive order, each with its
    /// offset and the end of its record.
    pub fn log_from(
        &self,
        from: u64,
    ) -> impl Iterator<Item = Result<(u64, u64, RawMessage), StoreError>> + '_ {
        let end = self.read_committed().extent.end;
        self.log.scan(from, end).map(|item| {
            item.map(|(offset, record)| {
                let end = offset + log::record_len(record.json.len());
                (offset, end, RawMessage::from_record(record))
            })
        })
    }

    /// Where the committed log ends: past every message's record.
    pub fn log_end(&self) -> u64 {
        self.len_bytes()
    }

    /// The latest name each feed gave itself in an `about` message.
    pub fn names(&self) -> Result<HashMap<FeedId, String>, StoreError> {
        names_in(&self.tree)
    }

    /// Every follow edge: `(author, contact, following)`, from the latest
    /// contact message of each author about each contact.
    pub fn contacts(&self) -> Result<Vec<(FeedId, FeedId, bool)>, StoreError> {
        let mut edges = Vec::new();
        for item in self.tree.scan_prefix(b"c") {
            let (key, value) = item?;
            if key.len() != 65 {
                return Err(StoreError::Corrupt("contact entry".into()));
            }
            edges.push((
                codec::decode_feed(&key[1..33])?,
                codec::decode_feed(&key[33..])?,
                value.first() == Some(&1),
            ));
        }
        Ok(edges)
    }

    fn lock_append(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock leaves the state as it was before
        // the failed batch, which is still correct.
        self.append.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_committed(&self) -> std::sync::RwLockReadGuard<'_, Committed> {
        self.committed.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where the log record of a message stored at `recv`, whose JSON is
/// `json_len` bytes, ends.
pub fn record_end(recv: u64, json_len: usize) -> u64 {
    recv + log::record_len(json_len)
}

/// The latest self-given name of each feed, as `tree` indexes them.
fn names_in(tree: &sled::Tree) -> Result<HashMap<FeedId, String>, StoreError> {
    let mut names = HashMap::new();
    for item in tree.scan_prefix(b"n") {
        let (key, value) = item?;
        let feed = codec::decode_feed(&key[1..])?;
        names.insert(feed, String::from_utf8_lossy(&value).into_owned());
    }
    Ok(names)
}

/// Opens sled at `dir`. A database this process just closed can stay
/// locked for a moment, while sled's background threads wind down, so a
/// held lock is retried briefly before it is reported.
fn open_sled(dir: &Path) -> Result<sled::Db, StoreError> {
    let mut tries = 0;
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(32 * 1024 * 1024)
            .flush_every_ms(Some(500))
            .open();
        match opened {
            Ok(db) => return Ok(db),
            // sled reports a held lock as an I/O error whose text is the
            // only stable sign of it.
            Err(sled::Error::Io(ref io))
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("could not acquire lock") =>
            {
                tries += 1;
                if tries == 20 {
                    return Err(StoreError::Locked(dir.display().to_string()));
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(other) => return Err(StoreError::Sled(other)),
        }
    }
}

/// See [`Store::history`].
struct History<'a> {
    positions: positions::PositionReader<'a>,
    reader: log::LogReader<'a>,
    /// Set after an error, which is not repeated.
    done: bool,
}

impl Iterator for History<'_> {
    type Item = Result<(u64, RawMessage), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let result = self
            .positions
            .next_position()
            .map_err(io_error)
            .and_then(|next| {
                let Some((seq, (offset, json_len))) = next else {
                    return Ok(None);
                };
                let record = self.reader.read(offset, Some(json_len))?;
                Ok(Some((seq, RawMessage::from_record(record))))
            });
        match result {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// An I/O error, as the store reports it.
pub(crate) fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Sled(sled::Error::Io(e))
}

/// The message a caught panic carried, for the log.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    format!("panic: {text}")
}

/// The name a message gives its own author, if it is such an `about`.
pub fn self_given_name(msg: &Message) -> Option<&str> {
    let content = msg.content();
    if content.get("type")?.as_str()? != "about" {
        return None;
    }
    if content.get("about")?.as_str()? != msg.author.to_string() {
        return None;
    }
    content.get("name")?.as_str()
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::Keypair;
    use serde_json::json;

    fn open(dir: &Path) -> Store {
        Store::open(dir).expect("opens")
    }

    /// Appends batches of `sizes` to `store` from two interleaved feeds and
    /// returns every message id in order.
    fn fill(store: &Store, sizes: impl Iterator<Item = usize>) -> Vec<MsgId> {
        let feeds = [Keypair::from_seed(&[1; 32]), Keypair::from_seed(&[2; 32])];
        let mut ids = Vec::new();
        for (b, size) in sizes.enumerate() {
            let keys = &feeds[b % 2];
            let mut tip = store.tip(&keys.id());
            let msgs: Vec<Message> = (0..size)
                .map(|i| {
                    let ts = 1e12 + (b * 1000 + i) as f64;
                    let msg =
                        Message::sign(keys, tip.as_ref(), ts, json!({"type": "test", "i": i}))
                            .expect("signs");
                    tip = Some(msg.tip());
                    msg
                })
                .collect();
            ids.extend(msgs.iter().map(|m| m.key));
            store.append(msgs, |_| None, 1.0).expect("appends");
        }
        ids
    }

    /// Every stored message by id: its sequence, read through the
    /// position files.
    fn sequences(store: &Store) -> HashMap<MsgId, u64> {
        let mut found = HashMap::new();
        for (feed, _) in store.feeds() {
            for item in store.history(&feed, 1) {
                let (seq, raw) = item.expect("reads");
                let again = store.get_raw(&feed, seq).expect("reads").expect("found");
                assert_eq!(again.key, raw.key);
                found.insert(raw.key, seq);
            }
        }
        found
    }

    fn sequence_of(store: &Store, id: &MsgId) -> Option<u64> {
        sequences(store).get(id).copied()
    }

    fn all_found(store: &Store, ids: &[MsgId]) {
        let found = sequences(store);
        for id in ids {
            assert!(found.contains_key(id), "{id} not found");
        }
    }

    /// Every message of both feeds `fill` writes, read by sequence, by
    /// history, and from the log in order.
    fn everything_reads(store: &Store, ids: &[MsgId]) {
        all_found(store, ids);
        let mut by_log: Vec<MsgId> = Vec::new();
        for item in store.log_from(0) {
            let (_, _, raw) = item.expect("reads the log");
            by_log.push(raw.message().expect("decodes").key);
        }
        assert_eq!(by_log, ids, "the log, in order");
        for seed in [1u8, 2] {
            let feed = Keypair::from_seed(&[seed; 32]).id();
            let tip = store.tip(&feed).expect("has the feed").sequence;
            let history: Vec<u64> = store
                .history(&feed, 1)
                .map(|item| item.expect("reads").1.message().expect("decodes").sequence)
                .collect();
            assert_eq!(history, (1..=tip).collect::<Vec<_>>());
        }
    }

    /// Compresses all but the last `keep_hot` bytes of the log, as the
    /// daemon does a bounded step at a time; returns how many it did.
    fn seal_all(store: &Store, keep_hot: u64) -> u64 {
        let mut sealed = 0;
        loop {
            match store.seal_cold(keep_hot).expect("seals") {
                0 => return sealed,
                n => sealed += n,
            }
        }
    }

    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).expect("stat").blocks() * 512
    }

    #[test]
    fn compressed_records_read_back_exactly_and_leave_the_log_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("messages.log");
        let ids = {
            let store = open(dir.path());
            let ids = fill(&store, (0..300).map(|b| b % 7 + 20));
            store.sync_log().expect("syncs");
            let before = allocated(&log);
            let sealed = seal_all(&store, 64 * 1024);
            assert!(sealed > 1 << 20, "sealed {sealed} bytes");
            assert!(
                allocated(&log) + sealed / 2 < before,
                "the log file gave back its compressed bytes: {} of {before}",
                allocated(&log)
            );
            everything_reads(&store, &ids);
            ids
        };
        // Again after a restart, and the store goes on.
        let store = open(dir.path());
        everything_reads(&store, &ids);
        let more = fill(&store, (0..4).map(|_| 10));
        store.sync_log().expect("syncs");
        seal_all(&store, 0);
        everything_reads(&store, &[ids, more].concat());
    }

    #[test]
    fn a_compressed_block_a_power_cut_left_unfinished_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cold = dir::cold_path(dir.path());
        let ids = {
            let store = open(dir.path());
            let ids = fill(&store, (0..200).map(|_| 25));
            store.sync_log().expect("syncs");
            store.seal_cold(1 << 20).expect("seals");
            ids
        };
        let whole = std::fs::read(&cold).expect("reads");
        assert!(!whole.is_empty());
        // A block whose frame reached the disk but not its bytes, as if
        // the punch had not happened: the log still holds its records.
        let covered_end = {
            let store = open(dir.path());
            store.log.cold_end()
        };
        let mut frame = Vec::new();
        frame.extend_from_slice(b"SFC1");
        frame.extend_from_slice(&covered_end.to_be_bytes());
        frame.extend_from_slice(&4096u32.to_be_bytes());
        frame.extend_from_slice(&100u32.to_be_bytes());
        frame.extend_from_slice(&[0u8; 100]);
        // And a torn frame after it.
        frame.extend_from_slice(b"SFC1\0\0");
        let mut damaged = whole.clone();
        damaged.extend_from_slice(&frame);
        std::fs::write(&cold, &damaged).expect("writes");
        let store = open(dir.path());
        everything_reads(&store, &ids);
        assert_eq!(std::fs::read(&cold).expect("reads"), whole, "cut back");
    }

    /// The position file of feed `seed`.
    fn position_file(dir: &Path, seed: u8) -> std::path::PathBuf {
        let feed = Keypair::from_seed(&[seed; 32]).id();
        dir::positions_dir(dir).join(positions::file_name(&feed))
    }

    fn cut_to(file: &Path, len: u64) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .expect("opens")
            .set_len(len)
            .expect("cuts");
    }

    #[test]
    fn positions_after_the_last_sync_are_written_again_from_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids = {
            let store = open(dir.path());
            let mut ids = fill(&store, [40, 30].into_iter());
            store.sync_positions().expect("syncs positions");
            // Appended after the last sync of the position files: power
            // loss may take their entries, here zeroed and cut.
            ids.extend(fill(&store, [5, 6, 7].into_iter()));
            store.db.flush().expect("flushes sled");
            ids
        };
        let mine = position_file(dir.path(), 1);
        let mut bytes = std::fs::read(&mine).expect("reads");
        bytes.truncate(42 * 12);
        bytes[40 * 12..].fill(0);
        std::fs::write(&mine, &bytes).expect("writes");
        cut_to(&position_file(dir.path(), 2), 30 * 12);
        let store = open(dir.path());
        everything_reads(&store, &ids);
        assert_eq!(sequence_of(&store, &ids[82]), Some(47));
    }

    #[test]
    fn damaged_synced_positions_are_rebuilt_from_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids = {
            let store = open(dir.path());
            let ids = fill(&store, [40, 30, 5].into_iter());
            store.sync_positions().expect("syncs positions");
            store.flush().expect("flushes");
            ids
        };
        let mine = position_file(dir.path(), 1);
        let len = std::fs::metadata(&mine).expect("stat").len();
        cut_to(&mine, len - 12);
        let store = open(dir.path());
        everything_reads(&store, &ids);
    }

    #[test]
    fn a_store_that_kept_positions_in_sled_moves_them_to_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids = {
            let store = open(dir.path());
            let ids = fill(&store, [40, 30, 5].into_iter());
            // What an earlier version kept: positions and an id index in
            // sled, no position files.
            store
                .tree
                .remove(codec::POSITIONS_SYNCED_KEY)
                .expect("removes");
            for key in [&b"m-some-position-block"[..], b"i-some-id-chunk", b"I"] {
                store.tree.insert(key, &b"old"[..]).expect("inserts");
            }
            store.flush().expect("flushes");
            ids
        };
        std::fs::remove_dir_all(dir::positions_dir(dir.path())).expect("removes");
        let store = open(dir.path());
        everything_reads(&store, &ids);
        for prefix in [&b"m"[..], b"i", b"I"] {
            assert_eq!(store.tree.scan_prefix(prefix).count(), 0);
        }
    }

    #[test]
    fn history_and_get_cross_position_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        // Feed 1 gets batches of 700 and 600 (blocks of 128 each and the
        // rest), feed 2 batches of 3 and 5 in between.
        let ids = fill(&store, [700, 3, 600, 5].into_iter());
        let feed = Keypair::from_seed(&[1; 32]).id();
        let mine: Vec<MsgId> = ids[..700].iter().chain(&ids[703..1303]).copied().collect();
        for from in [0, 1, 2, 512, 513, 700, 701, 1212, 1213, 1300] {
            let got: Vec<(u64, MsgId)> = store
                .history(&feed, from)
                .map(|r| r.map(|(seq, raw)| (seq, raw.key)).expect("reads"))
                .collect();
            let start = from.max(1);
            assert_eq!(got.len() as u64, 1301 - start, "from {from}");
            assert_eq!(got.first().map(|g| g.0), Some(start));
            assert!(got.iter().all(|(seq, key)| mine[*seq as usize - 1] == *key));
        }
        assert_eq!(store.history(&feed, 1301).count(), 0);
        for seq in [1, 511, 512, 513, 700, 701, 1212, 1213, 1300] {
            let raw = store.get_raw(&feed, seq).expect("reads").expect("found");
            assert_eq!(raw.key, mine[seq as usize - 1], "seq {seq}");
        }
        assert!(store.get_raw(&feed, 0).expect("reads").is_none());
        assert!(store.get_raw(&feed, 1301).expect("reads").is_none());
        let other = Keypair::from_seed(&[2; 32]).id();
        let theirs: Vec<u64> = store
            .history(&other, 2)
            .map(|r| r.expect("reads").0)
            .collect();
        assert_eq!(theirs, vec![2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn log_bytes_of_a_batch_that_never_committed_are_cut_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ids, end) = {
            let store = open(dir.path());
            let ids = fill(&store, [3, 4].into_iter());
            let end = store.log.file_len().expect("len");
            // A crash between writing a batch's records and its indexes.
            store.log.write_at(&[7u8; 300], end).expect("writes");
            store.flush().expect("flushes");
            (ids, end)
        };
        let store = open(dir.path());
        assert_eq!(store.log.file_len().expect("len"), end);
        assert_eq!(store.len(), 7);
        all_found(&store, &ids);
        let more = fill(&store, std::iter::once(2));
        all_found(&store, &more);
    }

    #[test]
    fn whole_records_past_the_indexes_are_indexed_not_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = Keypair::from_seed(&[1; 32]);
        let (extra, whole_end) = {
            let store = open(dir.path());
            fill(&store, std::iter::once(4));
            // Power loss kept the synced log but not sled's last batch: the
            // records are there, their index entries are not.
            let mut tip = store.tip(&keys.id());
            let mut records = Vec::new();
            let mut extra = Vec::new();
            for i in 0..3 {
                let content = json!({"type": "log", "text": format!("unindexed {i}")});
                let msg = Message::sign(&keys, tip.as_ref(), 2e12 + f64::from(i), content)
                    .expect("signs");
                log::encode_record(&mut records, &msg.key, 5.0, msg.value_json().as_bytes());
                tip = Some(msg.tip());
                extra.push(msg);
            }
            let end = store.log.file_len().expect("len");
            let whole_end = end + records.len() as u64;
            // And half of one more record, torn.
            records.extend_from_slice(&[0, 0, 1, 0, 9, 9, 9]);
            store.log.write_at(&records, end).expect("writes");
            store.flush().expect("flushes");
            (extra, whole_end)
        };
        let store = Store::open(dir.path()).expect("opens");
        assert_eq!(store.len(), 7);
        assert_eq!(store.tip(&keys.id()).map(|t| t.sequence), Some(7));
        assert_eq!(
            store.log.file_len().expect("len"),
            whole_end,
            "the torn record is cut"
        );
        let ids: Vec<MsgId> = extra.iter().map(|m| m.key).collect();
        all_found(&store, &ids);
        let more = fill(&store, std::iter::once(1));
        assert_eq!(sequence_of(&store, &more[0]), Some(8));
    }

    #[test]
    fn a_log_behind_its_indexes_is_rebuilt_up_to_its_last_whole_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let feed = Keypair::from_seed(&[1; 32]).id();
        let (ids, torn_at) = {
            let store = open(dir.path());
            let ids = fill(&store, [5, 5, 5].into_iter());
            store.flush().expect("flushes");
            // Power loss: sled kept the last batch, the log lost the end of
            // its last record.
            let len = store.log.file_len().expect("len");
            store.log.truncate(len - 10).expect("truncates");
            (ids, store.tip(&feed).map(|t| t.sequence))
        };
        assert_eq!(torn_at, Some(10));
        let store = open(dir.path());
        assert_eq!(store.len(), 14, "every whole record kept");
        assert_eq!(store.tip(&feed).map(|t| t.sequence), Some(9));
        assert!(store.get(&feed, 10).expect("reads").is_none());
        all_found(&store, &ids[..14]);
        assert!(!sequences(&store).contains_key(&ids[14]));
        // The feed goes on from the message before the lost one.
        let more = fill(&store, std::iter::once(1));
        assert_eq!(sequence_of(&store, &more[0]), Some(10));
    }

    #[test]
    fn a_damaged_extent_is_rebuilt_from_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids = {
            let store = open(dir.path());
            let ids = fill(&store, [3, 2].into_iter());
            store
                .tree
                .insert(codec::EXTENT_KEY, &b"garbage"[..])
                .expect("damages");
            store.flush().expect("flushes");
            ids
        };
        let store = open(dir.path());
        assert_eq!(store.len(), 5);
        all_found(&store, &ids);
    }

    #[test]
    fn a_rebuild_cut_off_midway_starts_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids = {
            let store = open(dir.path());
            let ids = fill(&store, (0..10).map(|_| 300));
            // As if a rebuild died after indexing a part of the log.
            store
                .tree
                .insert(codec::REBUILDING_KEY, &[][..])
                .expect("marks");
            store.tree.remove(codec::EXTENT_KEY).expect("removes");
            store.flush().expect("flushes");
            ids
        };
        let store = open(dir.path());
        assert_eq!(store.len(), 3000);
        all_found(&store, &ids[..50]);
        all_found(&store, &ids[2950..]);
        assert!(!store
            .tree
            .contains_key(codec::REBUILDING_KEY)
            .expect("reads"));
    }

    #[test]
    fn a_store_of_the_legacy_layout_moves_into_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = Keypair::from_seed(&[4; 32]);
        let mut msgs: Vec<Message> = Vec::new();
        for i in 0..5 {
            let tip = msgs.last().map(Message::tip);
            let content = json!({"type": "log", "text": format!("line {i}")});
            msgs.push(
                Message::sign(&keys, tip.as_ref(), 1e12 + f64::from(i), content).expect("signs"),
            );
        }
        {
            // The legacy layout: JSON in `m` values, one `r` block per batch.
            // No background flusher, whose thread would hold sled's lock for
            // a moment after the drop.
            let db = sled::Config::new()
                .path(dir.path())
                .flush_every_ms(None)
                .open()
                .expect("opens sled");
            let tree = db.open_tree("messages").expect("tree");
            let mut block = 2.5f64.to_bits().to_be_bytes().to_vec();
            for msg in &msgs {
                let mut value = msg.key.0.to_vec();
                value.extend_from_slice(&2.5f64.to_bits().to_be_bytes());
                value.extend_from_slice(msg.value_json().as_bytes());
                tree.insert(codec::message_key(&msg.author, msg.sequence), value)
                    .expect("inserts");
                block.extend_from_slice(&msg.author.0);
                block.extend_from_slice(&msg.sequence.to_be_bytes());
            }
            tree.insert(b"r\0\0\0\0\0\0\0\0", block).expect("inserts");
            db.flush().expect("flushes");
        }
        let store = Store::open(dir.path()).expect("migrates");
        assert_eq!(store.len(), 5);
        assert!(store.tree.scan_prefix(b"r").next().is_none());
        let ids: Vec<MsgId> = msgs.iter().map(|m| m.key).collect();
        all_found(&store, &ids);
        let back = store.get(&keys.id(), 3).expect("reads").expect("found");
        assert_eq!(back.value, msgs[2].value);
        let received: Vec<f64> = store
            .receive_log()
            .map(|r| r.expect("reads").received_ms)
            .collect();
        assert_eq!(received, vec![2.5; 5]);
    }
}
