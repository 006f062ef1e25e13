//! `merged.log`'s own file: every line in timestamp order, so that opening
//! it can use FUSE passthrough even after lines arrived out of order.
//!
//! A *generation* is a file that begins with lines in timestamp order (the
//! prefix), followed by the lines that arrived since in arrival order (the
//! tail), and a keys file with each prefix line's ordered timestamp and
//! where it ends. While lines arrive in order the prefix grows and the tail
//! stays empty, and the generation is the line file itself; the first line
//! that arrives out of order starts the tail. [`MergedFile::merge`], run in
//! the background, writes the next generation: the prefix and the sorted
//! tail merged (the part before the first insertion point copied as it is),
//! then the lines that arrived meanwhile.
//!
//! Invariants:
//! - Every tail line arrived after every prefix line, so it goes after the
//!   prefix lines of equal timestamp: the keys need no receive position,
//!   and tail lines order by (timestamp, position).
//! - Every generation still in use (the current one, or one an open handle
//!   holds) receives every new line at the same offset, so all of them have
//!   `merged.log`'s length, and a line that arrived after a snapshot lies at
//!   the same offset in each.
//! - A snapshot fixes its order at open: the prefix and the sorted tail of
//!   then, followed by the file's later bytes (arrival order).
//! - Only the prefix's keys are ever read, and a generation's keys are
//!   rewritten (by a merge in place) only while nothing but the merged
//!   file holds it, so snapshots read keys without a lock.
//! - A generation is rewritten in place only while no handle holds it.
//!   (A process that mapped `merged.log` through passthrough and closed it
//!   keeps a mapping the daemon cannot see; it may see the rewrite.)

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use super::Segments;

mod keys;
mod merge;

use keys::{span, KeyReader, KEY_ENTRY};

/// One line to add: ordered timestamp and length.
#[derive(Clone, Copy, Debug)]
pub struct NewLine {
    /// The line's ordered timestamp.
    pub ts: u64,
    /// Its length, newline included.
    pub len: u32,
}

/// The generation a checkpoint names.
pub struct Pinned(Arc<Generation>);

impl Pinned {
    /// Makes its files durable.
    pub fn sync(&self) -> io::Result<()> {
        self.0.lines.sync_data()?;
        self.0.keys.sync_data()
    }
}

/// One generation of the merged file.
pub struct Generation {
    number: u64,
    lines: Arc<File>,
    keys: File,
    /// The files to remove once a later generation replaces this one
    /// (not the line file, which generation 0 shares).
    own_paths: Vec<PathBuf>,
}

impl Generation {
    /// Whether this generation is the line file itself.
    fn is_line_file(&self) -> bool {
        self.number == 0
    }
}

/// A line past the prefix, in arrival order.
#[derive(Clone, Copy, Debug)]
struct TailLine {
    ts: u64,
    pos: u64,
    len: u32,
}

struct State {
    current: Arc<Generation>,
    /// Replaced generations, which keep receiving lines while a handle
    /// holds them.
    older: Vec<Weak<Generation>>,
    /// `merged.log`'s length: the bytes of every generation in use.
    len: u64,
    sorted_len: u64,
    sorted_lines: u64,
    /// The prefix's last timestamp.
    last_ts: u64,
    /// The tail's lines that arrived since the merge under way began (all
    /// of them when none is).
    tail: Vec<TailLine>,
    /// The tail's lines the merge under way is merging, sorted; empty when
    /// none is. Together with `tail`, the tail.
    merging_tail: Arc<Vec<TailLine>>,
    /// The bytes of the tail's lines, both parts.
    tail_bytes: u64,
    merging: bool,
    last_line_at: Instant,
    /// Counts the changes of how a handle opened now reads: a first late
    /// line (reads go through the daemon from then on) and each merge (a
    /// new file). Each epoch is shown as its own inode, because the kernel
    /// lets all handles of one inode use only one backing file, and no
    /// other kind of handle beside them.
    epoch: u64,
    /// Generations a checkpoint names (or one being written will): their
    /// files stay when a merge replaces them.
    pinned: Vec<u64>,
    /// Replaced generations whose files stay while pinned.
    retired: Vec<(u64, Vec<PathBuf>)>,
    /// A handle took the generation while a merge meant to rewrite it: the
    /// next merge writes the next generation whole instead.
    rewrite_refused: bool,
    /// A rewrite in place failed part way: the generation's bytes cannot
    /// be trusted.
    damaged: bool,
}

/// What a checkpoint keeps of the merged file.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MergedCheckpoint {
    /// The current generation.
    pub generation: u64,
    sorted_len: u64,
    sorted_lines: u64,
    last_ts: u64,
    /// The tail: `(ts, pos, len)`.
    tail: Vec<(u64, u64, u32)>,
}

/// The merged file and its generations.
pub struct MergedFile {
    /// The line file's path, which names the generations' files.
    base: PathBuf,
    state: Mutex<State>,
}

/// What one open handle of `merged.log` reads.
#[derive(Clone)]
pub struct MergedSnapshot {
    /// The epoch it was opened in.
    epoch: u64,
    generation: Arc<Generation>,
    /// Bytes known at open, in timestamp order.
    known: u64,
    /// Where the known bytes lie in the file, when not where they read:
    /// `(start in the snapshot, position in the file, length)`, in order.
    /// Empty for a snapshot of a file that was in order.
    pieces: Vec<(u64, u64, u64)>,
    /// The prefix lines at open, and the tail lines sorted: `(ts, len)`.
    prefix_lines: u64,
    sorted_tail: Vec<(u64, u32)>,
}

impl MergedFile {
    /// The merged file of a fresh line file `lines`, at `path`: generation
    /// 0 is the line file itself, whose lines [`MergedFile::append`] then
    /// indexes. Later generations are files beside it
    /// (`<path>.sorted-N`, `<path>.keys-N`); those of an earlier run are
    /// removed.
    pub fn new(path: &Path, lines: Arc<File>) -> io::Result<MergedFile> {
        remove_generations(path)?;
        let keys_path = generation_path(path, "keys", 0);
        let keys = create(&keys_path)?;
        let generation = Arc::new(Generation {
            number: 0,
            lines,
            keys,
            own_paths: vec![keys_path],
        });
        Ok(MergedFile {
            base: path.to_path_buf(),
            state: Mutex::new(State {
                current: generation,
                older: Vec::new(),
                len: 0,
                sorted_len: 0,
                sorted_lines: 0,
                last_ts: 0,
                tail: Vec::new(),
                merging_tail: Arc::new(Vec::new()),
                tail_bytes: 0,
                merging: false,
                last_line_at: Instant::now(),
                epoch: 0,
                pinned: Vec::new(),
                retired: Vec::new(),
                rewrite_refused: false,
                damaged: false,
            }),
        })
    }

    /// The merged file as `saved` describes it, over the line file `lines`
    /// at `path` (already cut to `len`, the merged length). Its
    /// generation's files are cut to what the checkpoint knew; any other
    /// generation files are removed.
    pub fn restore(
        path: &Path,
        lines: Arc<File>,
        saved: &MergedCheckpoint,
        len: u64,
    ) -> io::Result<MergedFile> {
        let number = saved.generation;
        let open = |p: &Path, len: u64| -> io::Result<File> {
            let file = OpenOptions::new().read(true).write(true).open(p)?;
            if file.metadata()?.len() < len {
                return Err(io::Error::other(format!(
                    "{} is shorter than its checkpoint says",
                    p.display()
                )));
            }
            file.set_len(len)?;
            Ok(file)
        };
        let keys_path = generation_path(path, "keys", number);
        let keys = open(&keys_path, saved.sorted_lines * KEY_ENTRY)?;
        let (lines, own_paths) = if number == 0 {
            (lines, vec![keys_path])
        } else {
            let lines_path = generation_path(path, "sorted", number);
            let file = open(&lines_path, len)?;
            (Arc::new(file), vec![lines_path, keys_path])
        };
        remove_generations_but(path, &own_paths)?;
        let tail: Vec<TailLine> = saved
            .tail
            .iter()
            .map(|&(ts, pos, len)| TailLine { ts, pos, len })
            .collect();
        if tail.iter().any(|t| t.pos + u64::from(t.len) > len) || saved.sorted_len > len {
            return Err(io::Error::other(
                "the merged file's checkpoint does not add up",
            ));
        }
        Ok(MergedFile {
            base: path.to_path_buf(),
            state: Mutex::new(State {
                current: Arc::new(Generation {
                    number,
                    lines,
                    keys,
                    own_paths,
                }),
                older: Vec::new(),
                len,
                sorted_len: saved.sorted_len,
                sorted_lines: saved.sorted_lines,
                last_ts: saved.last_ts,
                tail_bytes: tail.iter().map(|t| u64::from(t.len)).sum(),
                tail,
                merging_tail: Arc::new(Vec::new()),
                merging: false,
                last_line_at: Instant::now(),
                epoch: 0,
                pinned: vec![number],
                retired: Vec::new(),
                rewrite_refused: false,
                damaged: false,
            }),
        })
    }

    /// The number of the generation opens read now.
    pub fn generation(&self) -> u64 {
        self.lock().current.number
    }

    /// What a checkpoint keeps of the merged file now, and the generation
    /// it names, whose files stay on disk until
    /// [`MergedFile::checkpoint_done`] and are to be made durable before
    /// the checkpoint is written.
    pub fn checkpoint(&self) -> (MergedCheckpoint, Pinned) {
        let mut state = self.lock();
        let generation = state.current.number;
        state.pinned.push(generation);
        let saved = MergedCheckpoint {
            generation,
            sorted_len: state.sorted_len,
            sorted_lines: state.sorted_lines,
            last_ts: state.last_ts,
            tail: state
                .merging_tail
                .iter()
                .chain(&state.tail)
                .map(|t| (t.ts, t.pos, t.len))
                .collect(),
        };
        (saved, Pinned(state.current.clone()))
    }

    /// A checkpoint naming `generation` was written (`saved`) or not: the
    /// generations only earlier checkpoints named may go.
    pub fn checkpoint_done(&self, generation: u64, saved: bool) {
        let mut state = self.lock();
        if saved {
            state.pinned.retain(|g| *g >= generation);
        } else if let Some(at) = state.pinned.iter().rposition(|g| *g == generation) {
            state.pinned.remove(at);
        }
        let pinned = state.pinned.clone();
        state.retired.retain(|(number, paths)| {
            let keep = pinned.contains(number);
            if !keep {
                for path in paths {
                    let _ = std::fs::remove_file(path);
                }
            }
            keep
        });
    }

    /// `merged.log`'s length.
    pub fn len(&self) -> u64 {
        self.lock().len
    }

    /// The current epoch (see `State::epoch`).
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Lines past the sorted prefix, waiting for a merge.
    pub fn unsorted_lines(&self) -> usize {
        let state = self.lock();
        state.merging_tail.len() + state.tail.len()
    }

    /// Adds `lines`, whose bytes `bytes` the line file already holds at
    /// the current length, to every generation in use.
    pub fn append(&self, bytes: &[u8], lines: &[NewLine]) -> io::Result<()> {
        let mut state = self.lock();
        let start = state.len;
        if state.damaged {
            state.len += bytes.len() as u64;
            return Ok(());
        }
        state.older.retain(|g| g.strong_count() > 0);
        let mut generations: Vec<Arc<Generation>> =
            state.older.iter().filter_map(Weak::upgrade).collect();
        generations.push(state.current.clone());
        for generation in generations.iter().filter(|g| !g.is_line_file()) {
            generation.lines.write_all_at(bytes, start)?;
        }
        file_lines(&mut state, lines, start)?;
        if !lines.is_empty() {
            state.last_line_at = Instant::now();
        }
        Ok(())
    }

    /// A snapshot for a handle opened now.
    pub fn snapshot(&self) -> io::Result<MergedSnapshot> {
        let (epoch, generation, known, sorted_len, prefix_lines, mut tail) = {
            let state = self.lock();
            if state.damaged {
                return Err(damaged());
            }
            (
                state.epoch,
                state.current.clone(),
                state.len,
                state.sorted_len,
                state.sorted_lines,
                state
                    .merging_tail
                    .iter()
                    .chain(&state.tail)
                    .copied()
                    .collect::<Vec<_>>(),
            )
        };
        let mut snapshot = MergedSnapshot {
            epoch,
            generation,
            known,
            pieces: Vec::new(),
            prefix_lines,
            sorted_tail: Vec::new(),
        };
        if tail.is_empty() {
            return Ok(snapshot);
        }
        tail.sort_by_key(|t| (t.ts, t.pos));
        let mut keys = KeyReader::new(&snapshot.generation.keys, prefix_lines);
        let mut pieces = Pieces::default();
        let (mut line, mut byte) = (0, 0);
        for t in &tail {
            let next = keys.upper_bound(t.ts, line)?;
            let end = keys.end_before(next)?;
            pieces.push(byte, span(byte, end)?);
            pieces.push(t.pos, u64::from(t.len));
            (line, byte) = (next, end);
        }
        pieces.push(byte, span(byte, sorted_len)?);
        snapshot.pieces = pieces.0;
        snapshot.sorted_tail = tail.iter().map(|t| (t.ts, t.len)).collect();
        Ok(snapshot)
    }

    /// Whether a rewrite in place failed part way, so that the file can no
    /// longer be trusted (the views are built again at the next start).
    pub fn damaged(&self) -> bool {
        self.lock().damaged
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MergedSnapshot {
    /// Whether the snapshot reads its file as it lies (the file was in
    /// order at open), so that the kernel may read it directly.
    pub fn direct_file(&self) -> Option<(u64, Arc<File>)> {
        self.pieces
            .is_empty()
            .then(|| (self.generation.number, self.generation.lines.clone()))
    }

    /// The epoch it was opened in.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Bytes known at open.
    pub fn known(&self) -> u64 {
        self.known
    }

    /// Queues the bytes from `offset` up to `end` (at most the file's
    /// current length) as this snapshot orders them.
    pub(super) fn read_into(&self, offset: u64, end: u64, segments: &mut Segments) {
        let mut at = offset;
        if at < self.known && !self.pieces.is_empty() {
            let first = self.pieces.partition_point(|(start, _, _)| *start <= at) - 1;
            for &(start, pos, len) in &self.pieces[first..] {
                if at >= end {
                    return;
                }
                let skip = at - start;
                let take = (len - skip).min(end - at);
                if !segments.push(pos + skip, take) {
                    return;
                }
                at += take;
            }
        }
        // In order, or past the snapshot: the file as it lies.
        if at < end {
            segments.push(at, end - at);
        }
    }

    /// Reads the queued bytes from this snapshot's file.
    pub(super) fn read(&self, segments: Segments) -> io::Result<Vec<u8>> {
        segments.read(&self.generation.lines)
    }

    /// Scans this snapshot's file, which holds every line at the same
    /// offset as the line file after [`MergedSnapshot::known`].
    pub(super) fn file(&self) -> &File {
        &self.generation.lines
    }

    /// The bytes of every known line whose timestamp is below `ts`.
    pub fn offset_of_ts(&self, ts: u64) -> io::Result<u64> {
        let mut keys = KeyReader::new(&self.generation.keys, self.prefix_lines);
        let below = keys.lower_bound(ts)?;
        let prefix = keys.end_before(below)?;
        let tail: u64 = self
            .sorted_tail
            .iter()
            .take_while(|(t, _)| *t < ts)
            .map(|(_, len)| u64::from(*len))
            .sum();
        Ok(prefix + tail)
    }
}

/// The file can no longer be trusted: nothing reads or merges it, and no
/// line waits for a merge (the views are built again at the next start).
fn mark_damaged(state: &mut State) {
    state.damaged = true;
    state.tail = Vec::new();
    state.merging_tail = Arc::new(Vec::new());
    state.tail_bytes = 0;
}

fn damaged() -> io::Error {
    io::Error::other("merged.log's file was left part rewritten by a failed write")
}

/// Files `lines`, which the current generation holds from `start` on:
/// each extends the prefix while none waits in the tail and it is in
/// order, and joins the tail otherwise.
fn file_lines(state: &mut State, lines: &[NewLine], start: u64) -> io::Result<()> {
    let first_key = state.sorted_lines;
    let mut keys = Vec::new();
    let mut pos = start;
    for line in lines {
        let len = u64::from(line.len);
        let tail_empty = state.tail.is_empty() && state.merging_tail.is_empty();
        let in_order = tail_empty && (state.sorted_lines == 0 || line.ts >= state.last_ts);
        if in_order {
            state.sorted_len += len;
            state.sorted_lines += 1;
            state.last_ts = line.ts;
            keys.extend_from_slice(&line.ts.to_be_bytes());
            keys.extend_from_slice(&(pos + len).to_be_bytes());
        } else {
            if tail_empty {
                state.epoch += 1;
            }
            state.tail.push(TailLine {
                ts: line.ts,
                pos,
                len: line.len,
            });
            state.tail_bytes += len;
        }
        pos += len;
    }
    state.len = pos;
    if !keys.is_empty() {
        state
            .current
            .keys
            .write_all_at(&keys, first_key * KEY_ENTRY)?;
    }
    Ok(())
}

/// A snapshot's pieces being built, joined where contiguous.
#[derive(Default)]
struct Pieces(Vec<(u64, u64, u64)>);

impl Pieces {
    fn push(&mut self, pos: u64, len: u64) {
        if len == 0 {
            return;
        }
        let start = self.0.last().map_or(0, |(s, _, l)| s + l);
        match self.0.last_mut() {
            Some((_, p, l)) if *p + *l == pos => *l += len,
            _ => self.0.push((start, pos, len)),
        }
    }
}

fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// `<base>.<kind>-<number>`.
fn generation_path(base: &Path, kind: &str, number: u64) -> PathBuf {
    super::beside(base, &format!(".{kind}-{number}"))
}

/// `<base>.<kind>-<number>.side`: removed at a start as the generation
/// files are, which share its beginning.
fn side_path(base: &Path, kind: &str, number: u64) -> PathBuf {
    super::beside(base, &format!(".{kind}-{number}.side"))
}

/// Removes the generation files an earlier run left beside `base`.
fn remove_generations(base: &Path) -> io::Result<()> {
    remove_generations_but(base, &[])
}

/// Removes the generation files beside `base`, but `keep`.
fn remove_generations_but(base: &Path, keep: &[PathBuf]) -> io::Result<()> {
    let (Some(dir), Some(name)) = (base.parent(), base.file_name()) else {
        return Ok(());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefixes = [".sorted-", ".keys-"].map(|kind| {
        let mut prefix = name.to_owned();
        prefix.push(kind);
        prefix.to_string_lossy().into_owned()
    });
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if prefixes.iter().any(|p| file_name.starts_with(p.as_str()))
            && !keep.contains(&entry.path())
        {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// What a merge forgets when it rewrites in place: no checkpoint here.
    fn no_checkpoint() -> io::Result<()> {
        Ok(())
    }

    /// A line file and its merged file, with what each snapshot must read.
    struct Harness {
        _dir: tempfile::TempDir,
        lines: Arc<File>,
        merged: Arc<MergedFile>,
        /// Every line so far, in arrival order: (ts, text).
        arrived: Vec<(u64, Vec<u8>)>,
    }

    impl Harness {
        fn new() -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let lines = Arc::new(create(&dir.path().join("lines")).unwrap());
            let merged =
                Arc::new(MergedFile::new(&dir.path().join("lines"), lines.clone()).unwrap());
            Harness {
                _dir: dir,
                lines,
                merged,
                arrived: Vec::new(),
            }
        }

        /// Adds lines of timestamps `stamps` as one batch, as the views do.
        fn add(&mut self, stamps: &[u64]) {
            let mut bytes = Vec::new();
            let mut new = Vec::new();
            for ts in stamps {
                let text = format!(
                    "{ts:08} line {} {}\n",
                    self.arrived.len(),
                    "x".repeat((*ts % 7) as usize)
                );
                bytes.extend_from_slice(text.as_bytes());
                new.push(NewLine {
                    ts: *ts,
                    len: text.len() as u32,
                });
                self.arrived.push((*ts, text.into_bytes()));
            }
            self.lines.write_all_at(&bytes, self.merged.len()).unwrap();
            self.merged.append(&bytes, &new).unwrap();
        }

        /// What a snapshot taken after `known` lines reads: those in
        /// timestamp order (ties in arrival order), then the rest as they
        /// arrived.
        fn expected(&self, known: usize) -> Vec<u8> {
            let mut sorted: Vec<&(u64, Vec<u8>)> = self.arrived[..known].iter().collect();
            sorted.sort_by_key(|(ts, _)| *ts);
            let mut out: Vec<u8> = sorted.into_iter().flat_map(|(_, t)| t.clone()).collect();
            for (_, text) in &self.arrived[known..] {
                out.extend_from_slice(text);
            }
            out
        }

        fn read(&self, snapshot: &MergedSnapshot, offset: u64, size: usize) -> Vec<u8> {
            let mut segments = Segments::new(size);
            snapshot.read_into(offset, self.merged.len(), &mut segments);
            snapshot.read(segments).unwrap()
        }

        /// Each snapshot, taken after `known` lines, reads as it must.
        fn assert_reads(&self, snapshots: &[(MergedSnapshot, usize)]) {
            for (snapshot, known) in snapshots {
                assert_eq!(
                    self.read_all(snapshot),
                    self.expected(*known),
                    "snapshot after {known} lines"
                );
            }
        }

        fn read_all(&self, snapshot: &MergedSnapshot) -> Vec<u8> {
            let mut out = Vec::new();
            loop {
                let chunk = self.read(snapshot, out.len() as u64, 4096);
                if chunk.is_empty() {
                    return out;
                }
                out.extend_from_slice(&chunk);
            }
        }
    }

    #[test]
    fn snapshots_read_timestamp_order_then_arrivals_across_merges() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut h = Harness::new();
        let mut snapshots: Vec<(MergedSnapshot, usize)> = Vec::new();
        let mut clock = 1000u64;
        for round in 0..200 {
            // Mostly in order, with late lines now and then, and ties.
            let batch: Vec<u64> = (0..rng.gen_range(1..40))
                .map(|_| {
                    clock += rng.gen_range(0..3);
                    if rng.gen_bool(0.2) {
                        clock.saturating_sub(rng.gen_range(0..500))
                    } else {
                        clock
                    }
                })
                .collect();
            h.add(&batch);
            if rng.gen_bool(0.2) {
                snapshots.push((h.merged.snapshot().unwrap(), h.arrived.len()));
            }
            if round % 17 == 0 || rng.gen_bool(0.1) {
                h.merged.merge(&no_checkpoint).unwrap();
                assert_eq!(h.merged.unsorted_lines(), 0);
            }
        }
        snapshots.push((h.merged.snapshot().unwrap(), h.arrived.len()));
        h.assert_reads(&snapshots);
        // A read at any offset agrees with the whole.
        let (snapshot, known) = &snapshots[snapshots.len() / 2];
        let whole = h.expected(*known);
        for _ in 0..300 {
            let offset = rng.gen_range(0..whole.len());
            let size = rng.gen_range(1..300);
            let end = (offset + size).min(whole.len());
            assert_eq!(h.read(snapshot, offset as u64, size), &whole[offset..end]);
        }
    }

    #[test]
    fn a_merge_rewrites_in_place_what_no_handle_holds_and_writes_anew_what_one_does() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let mut h = Harness::new();
        let forgotten = std::cell::Cell::new(0);
        let forget = || {
            forgotten.set(forgotten.get() + 1);
            Ok(())
        };
        let (mut in_place, mut anew) = (0, 0);
        let mut held: Vec<(MergedSnapshot, usize)> = Vec::new();
        let mut clock = 1000u64;
        for _ in 0..300 {
            let batch: Vec<u64> = (0..rng.gen_range(1..30))
                .map(|_| {
                    clock += rng.gen_range(0..3);
                    clock.saturating_sub(if rng.gen_bool(0.3) {
                        rng.gen_range(0..60)
                    } else {
                        0
                    })
                })
                .collect();
            h.add(&batch);
            if rng.gen_bool(0.15) {
                held.push((h.merged.snapshot().unwrap(), h.arrived.len()));
            }
            if rng.gen_bool(0.3) {
                // Handles close now and then: each reads as it must first.
                h.assert_reads(&held);
                held.clear();
            }
            if rng.gen_bool(0.4) {
                let before = (h.merged.generation(), forgotten.get());
                if h.merged.merge(&forget).unwrap() {
                    if h.merged.generation() == before.0 {
                        assert_eq!(forgotten.get(), before.1 + 1);
                        in_place += 1;
                    } else {
                        anew += 1;
                    }
                }
                assert!(!h.merged.damaged());
            }
        }
        h.merged.merge(&forget).unwrap();
        held.push((h.merged.snapshot().unwrap(), h.arrived.len()));
        h.assert_reads(&held);
        assert!(held.last().unwrap().0.direct_file().is_some());
        assert!(
            in_place > 10 && anew > 10,
            "{in_place} in place, {anew} anew"
        );
        // No side file is left.
        let names: Vec<String> = std::fs::read_dir(h._dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".side")), "{names:?}");
    }

    #[test]
    fn a_merge_in_place_copies_only_from_the_first_insertion_point() {
        let mut h = Harness::new();
        let stamps: Vec<u64> = (0..20_000).map(|i| 10 * i).collect();
        h.add(&stamps);
        h.add(&[5]);
        // The first merge leaves the line file; the next ones may rewrite.
        assert!(h.merged.merge(&no_checkpoint).unwrap());
        let number = h.merged.generation();
        let file = h.merged.snapshot().unwrap().direct_file().unwrap().1;
        // Poison the start of the file: a rewrite that copied it would
        // bring the true bytes back.
        let mut start = vec![0u8; 64];
        file.read_exact_at(&mut start, 0).unwrap();
        file.write_all_at(&[b'#'; 64], 0).unwrap();
        h.add(&[199_985, 199_995]);
        assert!(h.merged.merge(&no_checkpoint).unwrap());
        assert_eq!(h.merged.generation(), number, "rewritten in place");
        let mut now = vec![0u8; 64];
        file.read_exact_at(&mut now, 0).unwrap();
        assert_eq!(now, vec![b'#'; 64]);
        file.write_all_at(&start, 0).unwrap();
        let snapshot = (h.merged.snapshot().unwrap(), h.arrived.len());
        h.assert_reads(&[snapshot]);
    }

    #[test]
    fn a_snapshot_of_an_ordered_file_reads_it_directly_and_a_merge_restores_that() {
        let mut h = Harness::new();
        h.add(&[1, 2, 3]);
        assert!(h.merged.snapshot().unwrap().direct_file().is_some());
        h.add(&[2]);
        let late = h.merged.snapshot().unwrap();
        assert!(late.direct_file().is_none());
        assert!(h.merged.merge(&no_checkpoint).unwrap());
        let merged = h.merged.snapshot().unwrap();
        let (number, file) = merged.direct_file().expect("in order after the merge");
        assert_eq!(number, 1);
        let mut bytes = vec![0; h.merged.len() as usize];
        file.read_exact_at(&mut bytes, 0).unwrap();
        assert_eq!(bytes, h.expected(4));
        // The replaced generation still takes new lines for the handle
        // that holds it, in arrival order after what it knew.
        h.add(&[0]);
        assert_eq!(h.read_all(&late), h.expected(4));
        assert_eq!(h.read_all(&merged), h.expected(4));
    }

    #[test]
    fn lines_that_arrive_during_a_merge_follow_it() {
        let h = std::sync::Mutex::new(Harness::new());
        let merged = h.lock().unwrap().merged.clone();
        let mut snapshots = Vec::new();
        std::thread::scope(|scope| {
            let merger = scope.spawn(|| {
                let mut merges = 0;
                while merges < 30 {
                    if merged.merge(&no_checkpoint).unwrap() {
                        merges += 1;
                    }
                }
            });
            let mut rng = rand::rngs::StdRng::seed_from_u64(11);
            let mut clock = 100_000u64;
            while !merger.is_finished() {
                let batch: Vec<u64> = (0..50)
                    .map(|_| {
                        clock += 1;
                        clock - rng.gen_range(0..2000)
                    })
                    .collect();
                let mut h = h.lock().unwrap();
                h.add(&batch);
                if rng.gen_bool(0.05) {
                    snapshots.push((h.merged.snapshot().unwrap(), h.arrived.len()));
                }
            }
        });
        let h = h.into_inner().unwrap();
        h.merged.merge(&no_checkpoint).unwrap();
        snapshots.push((h.merged.snapshot().unwrap(), h.arrived.len()));
        h.assert_reads(&snapshots);
        assert!(snapshots.last().unwrap().0.direct_file().is_some());
    }

    #[test]
    fn a_failed_merge_leaves_its_lines_in_the_tail() {
        let mut h = Harness::new();
        h.add(&[10, 20, 30]);
        h.add(&[15, 5]);
        // The next generation's file cannot be made: a directory is there.
        let base = h._dir.path().join("lines");
        let number = h.merged.lock().current.number + 1;
        let blocker = generation_path(&base, "sorted", number);
        std::fs::create_dir(&blocker).unwrap();
        assert!(h.merged.merge(&no_checkpoint).is_err());
        assert_eq!(h.merged.unsorted_lines(), 2);
        h.add(&[25]);
        let snapshot = (h.merged.snapshot().unwrap(), h.arrived.len());
        h.assert_reads(&[snapshot]);
        std::fs::remove_dir(&blocker).unwrap();
        assert!(h.merged.merge(&no_checkpoint).unwrap());
        assert_eq!(h.merged.unsorted_lines(), 0);
        let snapshot = (h.merged.snapshot().unwrap(), h.arrived.len());
        assert!(snapshot.0.direct_file().is_some());
        h.assert_reads(&[snapshot]);
    }

    #[test]
    fn offsets_of_timestamps_count_the_known_lines_below() {
        let mut h = Harness::new();
        h.add(&[10, 20, 30, 40]);
        h.add(&[15, 35, 35]);
        for merge in [false, true] {
            if merge {
                h.merged.merge(&no_checkpoint).unwrap();
            }
            let snapshot = h.merged.snapshot().unwrap();
            let sorted = h.expected(h.arrived.len());
            for ts in [0, 10, 15, 16, 35, 36, 50] {
                let below: usize = h
                    .arrived
                    .iter()
                    .filter(|(t, _)| *t < ts)
                    .map(|(_, text)| text.len())
                    .sum();
                assert_eq!(snapshot.offset_of_ts(ts).unwrap(), below as u64, "{ts}");
                assert!(below <= sorted.len());
            }
        }
    }
}
