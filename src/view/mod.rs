//! What the filesystem shows, independent of FUSE.
//!
//! Rendered log lines are appended to a line file, in arrival order; each
//! machine's `log`, its jobs and the days are indexes into it, so a read
//! is a few `pread`s of contiguous bytes. `merged.log` has its own file,
//! kept in timestamp order (`sorted/`). The files and a checkpoint of
//! the indexes (`checkpoint.rs`) outlive the daemon; a start reads only
//! the messages committed after the checkpoint.
//!
//! Invariants:
//! - Every view is a function of what the store committed: it is built
//!   while no append can commit, then advanced by the store's commit hook,
//!   once per committed batch, in commit order. Each view keeps a
//!   high-water sequence per feed and ignores anything at or below it, so
//!   a build (or a lazy index of one feed) and a live update can never
//!   count a message twice.
//! - The line file holds every log line exactly once; its length is the
//!   size of `merged.log`, which therefore never shrinks.
//! - A line is in the file before any index points at it, so readers can
//!   `pread` without holding the lock.

mod checkpoint;
mod days;
mod jsonl;
pub mod line;
mod runs;
mod sorted;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::feed::json::js_number;
use chrono::NaiveDate;

use crate::feed::{FeedId, MsgId};
use crate::store::{io_error, RawMessage, Store, StoreError, Stored};
use checkpoint::Checkpoint;
use jsonl::JsonlIndex;
use runs::FeedLines;
pub use sorted::MergedSnapshot;
use sorted::{MergedFile, NewLine};

use days::DayCache;
pub use days::{day_of, DaySnapshot};

/// A file of the views beside `line_file`: its name with `suffix` added
/// (`lines.cache.state`, `lines.cache.runs`, …).
pub fn beside(line_file: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = line_file.as_os_str().to_owned();
    name.push(suffix);
    std::path::PathBuf::from(name)
}

/// What the views need of one committed message.
#[derive(Clone, Debug)]
pub struct ViewEntry {
    /// Its feed.
    pub author: FeedId,
    /// Its sequence.
    pub seq: u64,
    /// Its id.
    pub key: MsgId,
    /// Its claimed timestamp.
    pub timestamp: f64,
    /// Its log offset, which orders lines of equal timestamps.
    pub recv: u64,
    /// When this store received it.
    pub received_ms: f64,
    /// Length of its stored JSON.
    pub json_len: usize,
    /// Its rendered line, if it shows in log views.
    pub line: Option<Vec<u8>>,
    /// The `source` of a line that has one: its job.
    pub source: Option<String>,
    /// The name it gives its author, if it is such an `about`.
    pub name: Option<String>,
    /// Where its log record ends.
    pub log_end: u64,
}

impl ViewEntry {
    /// The entry of `msg`, stored at log offset `recv`.
    pub fn new(
        msg: &crate::feed::Message,
        recv: u64,
        received_ms: f64,
        json_len: usize,
        line: Option<Vec<u8>>,
    ) -> ViewEntry {
        ViewEntry {
            author: msg.author,
            seq: msg.sequence,
            key: msg.key,
            timestamp: msg.timestamp,
            recv,
            received_ms,
            json_len,
            source: line
                .as_ref()
                .and_then(|_| msg.content().get("source"))
                .and_then(serde_json::Value::as_str)
                .map(str::to_string),
            line,
            name: crate::store::self_given_name(msg).map(str::to_string),
            log_end: crate::store::record_end(recv, json_len),
        }
    }
}

impl ViewEntry {
    /// Where its line goes in timestamp order (`merged.log`, `days/`): its
    /// claimed time, or when it was received if that cannot be right
    /// (see [`crate::clock`]).
    pub fn placement_ms(&self) -> f64 {
        crate::clock::placement_ms(self.timestamp, self.received_ms)
    }
}

impl From<&Stored> for ViewEntry {
    fn from(stored: &Stored) -> Self {
        ViewEntry::new(
            &stored.msg,
            stored.recv,
            stored.received_ms,
            stored.json_len,
            stored.line.clone(),
        )
    }
}

#[derive(Default)]
struct ViewState {
    /// Where the log record of the last message the views took ends.
    log_end: u64,
    /// That message's record offset and id.
    last: Option<(u64, MsgId)>,
    /// The latest sequence of each feed that the line views hold.
    seen: HashMap<FeedId, u64>,
    /// The names the feeds gave themselves, as of `log_end`.
    names: HashMap<FeedId, String>,
    file_len: u64,
    feeds: HashMap<FeedId, FeedLines>,
    jsonl: HashMap<FeedId, JsonlIndex>,
    /// Each feed's lines by `source`: `<machine>/jobs/<source>.log`.
    jobs: HashMap<FeedId, HashMap<String, FeedLines>>,
    /// The number the next view's runs file gets.
    next_runs: u64,
    /// Runs files written since the last checkpoint.
    unsynced_runs: std::collections::HashSet<u64>,
    /// The bytes of each local day's lines: `days/<date>.log`.
    days: BTreeMap<NaiveDate, u64>,
    day_cache: DayCache,
}

/// The filesystem's views of the store.
pub struct Views {
    /// The line file's path, which names the files beside it.
    path: std::path::PathBuf,
    /// Every line once, in arrival order: what the per-feed and job views
    /// read.
    file: Arc<File>,
    /// `merged.log`: the same lines, kept in timestamp order.
    merged: MergedFile,
    /// Set when a write to the views failed part-way: what they hold may
    /// no longer match the store, so no checkpoint is saved, and the next
    /// start builds them again.
    broken: std::sync::atomic::AtomicBool,
    /// One checkpoint is saved at a time; what the last one saved was
    /// taken at (log end, merged file's generation and length), so that an
    /// idle node does not write the same checkpoint again.
    saving: std::sync::Mutex<Option<(u64, u64, u64)>>,
    state: RwLock<ViewState>,
}

/// Lines indexed at once while building.
const BUILD_CHUNK: usize = 8192;

impl Views {
    /// Opens the views kept at `line_file` and the files beside it: from
    /// their last checkpoint, brought up to the store's end by reading the
    /// messages committed since; or, when there is no checkpoint the store
    /// and the files bear out, built afresh from every stored message. Call
    /// it while no append commits (before the node that feeds
    /// [`Views::add`] from its commit hook is shared).
    pub fn open(line_file: &Path, store: &Store) -> Result<Views, StoreError> {
        let restored = match checkpoint::load(line_file, store) {
            Ok(Some(saved)) => Views::restore(line_file, saved).map_err(|e| e.to_string()),
            Ok(None) => return Views::rebuild(line_file, store),
            Err(reason) => Err(reason),
        };
        let views = match restored {
            Ok(views) => views,
            Err(reason) => {
                tracing::warn!("rebuilding the views: their checkpoint cannot be used ({reason})");
                return Views::rebuild(line_file, store);
            }
        };
        let names = views.read().names.clone();
        let read = views.catch_up(store, names)?;
        if read > 0 {
            tracing::debug!("read {read} messages into the views");
            views.save(store).map_err(io_error)?;
        }
        Ok(views)
    }

    /// Builds the views at `line_file` afresh from every stored message, in
    /// receive order, as they were first made.
    pub fn rebuild(line_file: &Path, store: &Store) -> Result<Views, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(line_file)
            .map_err(io_error)?;
        let _ = std::fs::remove_file(checkpoint::path(line_file));
        let runs_dir = runs::dir(line_file);
        match std::fs::remove_dir_all(&runs_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_error(e)),
            _ => {}
        }
        std::fs::create_dir_all(&runs_dir).map_err(io_error)?;
        let file = Arc::new(file);
        let merged = MergedFile::new(line_file, file.clone()).map_err(io_error)?;
        let views = Views {
            path: line_file.to_path_buf(),
            file,
            merged,
            broken: Default::default(),
            saving: Default::default(),
            state: RwLock::new(ViewState::default()),
        };
        let read = views.catch_up(store, HashMap::new())?;
        // Merged into order, so that merged.log opens read the file.
        views.merge().map_err(io_error)?;
        if read > 0 {
            tracing::info!("built the views of {read} messages");
        }
        views.save(store).map_err(io_error)?;
        Ok(views)
    }

    /// Views as a checkpoint left them.
    fn restore(line_file: &Path, saved: Checkpoint) -> io::Result<Views> {
        let file = OpenOptions::new().read(true).write(true).open(line_file)?;
        // Lines past the checkpoint are read again from the store.
        file.set_len(saved.file_len)?;
        let file = Arc::new(file);
        let merged = MergedFile::restore(line_file, file.clone(), &saved.merged, saved.file_len)?;
        let state = saved.into_state();
        let runs_dir = runs::dir(line_file);
        let views = state
            .feeds
            .values()
            .chain(state.jobs.values().flat_map(HashMap::values));
        for lines in views {
            lines.check(&runs_dir)?;
        }
        Ok(Views {
            path: line_file.to_path_buf(),
            file,
            merged,
            broken: Default::default(),
            saving: Default::default(),
            state: RwLock::new(state),
        })
    }

    /// Adds the messages the store committed past the views' log end,
    /// rendering their lines as they were rendered on arrival (names as
    /// known then); returns how many it read.
    fn catch_up(&self, store: &Store, names: HashMap<FeedId, String>) -> Result<u64, StoreError> {
        let from = self.read().log_end;
        let mut renderer = line::LineRenderer::new(names);
        let mut batch = Vec::with_capacity(BUILD_CHUNK);
        let mut read = 0;
        for item in store.log_from(from) {
            let (recv, _, raw) = item?;
            let msg = raw.message()?;
            let line = renderer.render(&msg, |feed, seq| store.get(feed, seq).ok().flatten());
            batch.push(ViewEntry::new(
                &msg,
                recv,
                raw.received_ms,
                raw.json().len(),
                line,
            ));
            read += 1;
            if batch.len() == BUILD_CHUNK {
                self.add(&batch).map_err(io_error)?;
                batch.clear();
                // Out-of-order lines merged as they pile up, so that the
                // tail (in memory) stays small.
                if self.merged.merge_due() {
                    self.merge().map_err(io_error)?;
                }
            }
        }
        self.add(&batch).map_err(io_error)?;
        Ok(read)
    }

    /// Saves a checkpoint of the views, so that the next start reads only
    /// the messages committed after it. The files it names are made
    /// durable first, and the store's log before them: a checkpoint never
    /// claims what a power cut could take back.
    pub fn save(&self, store: &Store) -> io::Result<()> {
        let mut last_saved = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        if self.broken.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = std::fs::remove_file(checkpoint::path(&self.path));
            return Err(io::Error::other(
                "a write to the views failed; they are built again at the next start",
            ));
        }
        let now = {
            let state = self.read();
            (state.log_end, self.merged.generation(), state.file_len)
        };
        if *last_saved == Some(now) {
            return Ok(());
        }
        let (saved, pinned, unsynced_runs) = {
            let mut state = self.write();
            let (merged, pinned) = self.merged.checkpoint();
            let unsynced_runs = std::mem::take(&mut state.unsynced_runs);
            (Checkpoint::of(&state, merged), pinned, unsynced_runs)
        };
        let number = saved.merged.generation;
        let taken_at = (saved.log_end, number, saved.file_len);
        let result = (|| {
            // The log holds at least what the views took.
            store.sync_log().map_err(io::Error::other)?;
            self.file.sync_data()?;
            pinned.sync()?;
            let runs_dir = runs::dir(&self.path);
            for number in &unsynced_runs {
                FeedLines::sync(&runs_dir, *number)?;
            }
            if !unsynced_runs.is_empty() {
                File::open(&runs_dir)?.sync_all()?;
            }
            checkpoint::save(&self.path, &saved)
        })();
        self.merged.checkpoint_done(number, result.is_ok());
        if result.is_ok() {
            *last_saved = Some(taken_at);
        } else {
            self.write().unsynced_runs.extend(unsynced_runs);
        }
        result
    }

    /// Adds committed messages, in commit order, to every view. Messages a
    /// view already holds (at or below its high-water sequence for their
    /// feed) are skipped, so adding twice changes nothing.
    pub fn add(&self, entries: &[ViewEntry]) -> io::Result<()> {
        let added = self.add_unchecked(entries);
        if let Err(e) = &added {
            tracing::error!(
                "writing the views failed ({e}); they are built again at the next start"
            );
            self.broken
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        added
    }

    fn add_unchecked(&self, entries: &[ViewEntry]) -> io::Result<()> {
        let mut state = self.write();
        let fresh: Vec<&ViewEntry> = entries
            .iter()
            .filter(|e| state.seen.get(&e.author).is_none_or(|seen| e.seq > *seen))
            .collect();
        // One write for the whole batch: lines land in the file before any
        // index points at them.
        let bytes: Vec<u8> = fresh
            .iter()
            .filter_map(|e| e.line.as_deref())
            .flatten()
            .copied()
            .collect();
        self.file.write_all_at(&bytes, state.file_len)?;
        if let Some(last) = entries.iter().max_by_key(|e| e.log_end) {
            if last.log_end > state.log_end {
                state.log_end = last.log_end;
                state.last = Some((last.recv, last.key));
            }
        }
        for entry in entries {
            if let Some(jsonl) = state.jsonl.get_mut(&entry.author) {
                if entry.seq == jsonl.count() + 1 {
                    jsonl.push(kvt_line_len(&entry.key, entry.json_len, entry.received_ms))?;
                }
            }
        }
        let mut new_lines = Vec::with_capacity(fresh.len());
        let runs_dir = runs::dir(&self.path);
        let state = &mut *state;
        for entry in fresh {
            state.seen.insert(entry.author, entry.seq);
            if let Some(name) = &entry.name {
                state.names.insert(entry.author, name.clone());
            }
            let Some(line) = &entry.line else { continue };
            let pos = state.file_len;
            let len = line.len() as u32;
            state.file_len += u64::from(len);
            new_lines.push(NewLine {
                ts: crate::store::ordered_timestamp(entry.placement_ms()),
                len,
            });
            let next_runs = &mut state.next_runs;
            let mut new_view = || {
                *next_runs += 1;
                FeedLines::new(*next_runs - 1)
            };
            let lines = state
                .feeds
                .entry(entry.author)
                .or_insert_with(&mut new_view);
            if lines.push(&runs_dir, pos, len)? {
                state.unsynced_runs.insert(lines.number());
            }
            if let Some(source) = entry.source.as_ref().filter(|s| !s.is_empty()) {
                let lines = state
                    .jobs
                    .entry(entry.author)
                    .or_default()
                    .entry(source.clone())
                    .or_insert_with(&mut new_view);
                if lines.push(&runs_dir, pos, len)? {
                    state.unsynced_runs.insert(lines.number());
                }
            }
            if let Some(day) = state.day_cache.day_of(entry.placement_ms()) {
                *state.days.entry(day).or_default() += u64::from(len);
            }
        }
        // Under the views' lock, so that the merged file takes batches in
        // the line file's order.
        self.merged.append(&bytes, &new_lines)
    }

    /// The sources of `feed`'s lines (its jobs), sorted.
    pub fn job_sources(&self, feed: &FeedId) -> Vec<String> {
        let mut sources: Vec<String> = self
            .read()
            .jobs
            .get(feed)
            .map(|jobs| jobs.keys().cloned().collect())
            .unwrap_or_default();
        sources.sort();
        sources
    }

    /// The size of `feed`'s `jobs/<source>.log`.
    pub fn job_log_len(&self, feed: &FeedId, source: &str) -> u64 {
        self.read()
            .jobs
            .get(feed)
            .and_then(|jobs| jobs.get(source))
            .map_or(0, FeedLines::len)
    }

    /// Reads `feed`'s `jobs/<source>.log`: its lines with that source, in
    /// the feed's order (which is their timestamp order).
    pub fn read_job_log(
        &self,
        feed: &FeedId,
        source: &str,
        offset: u64,
        size: usize,
    ) -> io::Result<Vec<u8>> {
        let mut segments = Segments::new(size);
        // Copied out, so that the runs file is read without the lock.
        let lines = self
            .read()
            .jobs
            .get(feed)
            .and_then(|j| j.get(source))
            .cloned();
        if let Some(lines) = lines {
            lines.read_into(&runs::dir(&self.path), offset, &mut segments)?;
        }
        segments.read(&self.file)
    }

    /// The size of `merged.log`.
    pub fn merged_len(&self) -> u64 {
        self.merged.len()
    }

    /// A snapshot for a newly opened `merged.log` handle. While every line
    /// is in timestamp order, the handle reads its file as it lies
    /// ([`MergedSnapshot::direct_file`]).
    pub fn merged_snapshot(&self) -> io::Result<MergedSnapshot> {
        self.merged.snapshot()
    }

    /// Whether lines that arrived out of order wait to be merged into
    /// `merged.log`'s order, and it is time to.
    pub fn merge_due(&self) -> bool {
        self.merged.merge_due()
    }

    /// Merges the lines that arrived out of order into `merged.log`'s file
    /// (see [`MergedFile::merge`]); returns whether it did.
    ///
    /// No checkpoint is saved meanwhile: a merge that rewrites the file in
    /// place first removes the checkpoint (durably), which would no longer
    /// describe it, and the next save writes one that does. A power cut in
    /// between costs a rebuild at the next start, never a wrong file.
    pub fn merge(&self) -> io::Result<bool> {
        // Taken only by a merge that rewrites in place, from before the
        // checkpoint goes until the rewrite is done: a whole-generation
        // merge (seconds, at gigabytes) does not hold saves up.
        let saving = std::cell::RefCell::new(None);
        let forget_checkpoint = || -> io::Result<()> {
            let mut last_saved = self.saving.lock().unwrap_or_else(|e| e.into_inner());
            // The next save writes a checkpoint even if nothing else moved.
            *last_saved = None;
            *saving.borrow_mut() = Some(last_saved);
            match std::fs::remove_file(checkpoint::path(&self.path)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let dir = match self.path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            File::open(dir)?.sync_all()
        };
        let result = self.merged.merge(&forget_checkpoint);
        drop(saving);
        if result.is_err() && self.merged.damaged() {
            self.broken
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    /// How a handle of `merged.log` opened now reads, as a number that
    /// changes whenever that does (see [`MergedSnapshot::epoch`]).
    pub fn merged_epoch(&self) -> u64 {
        self.merged.epoch()
    }

    /// Lines of `merged.log` that arrived out of order and wait for a merge.
    pub fn unmerged_lines(&self) -> usize {
        self.merged.unsorted_lines()
    }

    /// Reads `merged.log` as `snapshot`'s handle sees it.
    pub fn read_merged(
        &self,
        snapshot: &MergedSnapshot,
        offset: u64,
        size: usize,
    ) -> io::Result<Vec<u8>> {
        let mut segments = Segments::new(size);
        snapshot.read_into(offset, self.merged_len(), &mut segments);
        snapshot.read(segments)
    }

    /// The size of `feed`'s `log`.
    pub fn feed_log_len(&self, feed: &FeedId) -> u64 {
        self.read().feeds.get(feed).map_or(0, FeedLines::len)
    }

    /// Reads `feed`'s `log`.
    pub fn read_feed_log(&self, feed: &FeedId, offset: u64, size: usize) -> io::Result<Vec<u8>> {
        let mut segments = Segments::new(size);
        let lines = self.read().feeds.get(feed).cloned();
        if let Some(lines) = lines {
            lines.read_into(&runs::dir(&self.path), offset, &mut segments)?;
        }
        segments.read(&self.file)
    }

    /// The size of `feed`'s `feed.jsonl`.
    pub fn jsonl_len(&self, store: &Store, feed: &FeedId) -> Result<u64, StoreError> {
        self.ensure_jsonl(store, feed)?;
        Ok(self.read().jsonl.get(feed).map_or(0, JsonlIndex::len))
    }

    /// Reads `feed`'s `feed.jsonl`: every message as `{key, value, timestamp}`.
    pub fn read_jsonl(
        &self,
        store: &Store,
        feed: &FeedId,
        offset: u64,
        size: usize,
    ) -> Result<Vec<u8>, StoreError> {
        self.ensure_jsonl(store, feed)?;
        let (first_seq, skip) = {
            let state = self.read();
            let Some(index) = state.jsonl.get(feed) else {
                return Ok(Vec::new());
            };
            let Some((i, start)) = index.find(offset).map_err(io_error)? else {
                return Ok(Vec::new());
            };
            (i + 1, offset - start)
        };
        let mut out = Vec::with_capacity(size);
        for item in store.history(feed, first_seq) {
            let (_, raw) = item?;
            let line = kvt_line(&raw);
            let from = if out.is_empty() { skip as usize } else { 0 };
            let take = (line.len() - from).min(size - out.len());
            out.extend_from_slice(&line[from..from + take]);
            if out.len() >= size {
                break;
            }
        }
        Ok(out)
    }

    fn ensure_jsonl(&self, store: &Store, feed: &FeedId) -> Result<(), StoreError> {
        if self.read().jsonl.contains_key(feed) {
            return Ok(());
        }
        // Hold the write lock while indexing so that no commit slips between
        // the scan and the insertion of the index. A batch committed to the
        // store whose hook has not yet reached the views may be in the scan
        // already: `add` then skips it, by sequence.
        let mut state = self.write();
        if state.jsonl.contains_key(feed) {
            return Ok(());
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut index = JsonlIndex::new(dir);
        for item in store.history(feed, 1) {
            let (_, raw) = item?;
            index
                .push(kvt_line_len(&raw.key, raw.json().len(), raw.received_ms))
                .map_err(io_error)?;
        }
        state.jsonl.insert(*feed, index);
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ViewState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ViewState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// `{"key":…,"value":…,"timestamp":…}` and a newline.
pub fn kvt_line(raw: &RawMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.json().len() + 100);
    out.extend_from_slice(b"{\"key\":\"");
    out.extend_from_slice(raw.key.to_string().as_bytes());
    out.extend_from_slice(b"\",\"value\":");
    out.extend_from_slice(raw.json());
    out.extend_from_slice(b",\"timestamp\":");
    out.extend_from_slice(js_number(raw.received_ms).as_bytes());
    out.extend_from_slice(b"}\n");
    out
}

fn kvt_line_len(key: &crate::feed::MsgId, json_len: usize, received_ms: f64) -> u64 {
    (8 + key.to_string().len() + 10 + json_len + 13 + js_number(received_ms).len() + 2) as u64
}

/// Byte ranges of the line file to read, merged when contiguous.
struct Segments {
    wanted: usize,
    total: usize,
    ranges: Vec<(u64, usize)>,
}

impl Segments {
    fn new(wanted: usize) -> Self {
        Segments {
            wanted,
            total: 0,
            ranges: Vec::new(),
        }
    }

    fn full(&self) -> bool {
        self.total >= self.wanted
    }

    /// Adds up to `len` bytes at `pos`; returns false once enough is queued.
    fn push(&mut self, pos: u64, len: u64) -> bool {
        let take = len.min((self.wanted - self.total) as u64) as usize;
        if take > 0 {
            match self.ranges.last_mut() {
                Some((start, n)) if *start + *n as u64 == pos => *n += take,
                _ => self.ranges.push((pos, take)),
            }
            self.total += take;
        }
        !self.full()
    }

    fn read(self, file: &File) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; self.total];
        let mut at = 0;
        for (pos, len) in self.ranges {
            file.read_exact_at(&mut out[at..at + len], pos)?;
            at += len;
        }
        Ok(out)
    }
}
