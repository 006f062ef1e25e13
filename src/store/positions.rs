//! Where each feed's messages are in the log: one file per feed, of
//! fixed-size entries, the entry of sequence `n` at byte `(n - 1) * 12`.
//!
//! Why files and not sled: sled's cost is per entry and per touched node,
//! its cache grows past its cap as it writes, and its pages took about 60
//! bytes a message on disk for these 12. A file of fixed-size entries
//! needs no index of its own: a lookup is one `pread`, through the page
//! cache, and the daemon's memory does not grow with history.
//!
//! The files are derived from the log, like everything but the log:
//! - Entries are written before the sled batch that moves the feed's tip,
//!   so a committed message always has one. Entries past a feed's tip (a
//!   batch that failed, or whose sled batch power loss took) are ignored
//!   and later overwritten.
//! - They are not synced with each append. [`Positions::sync`] syncs the
//!   files written since the last one; the store then records how far
//!   the log is covered by synced entries (`P` in sled), and opening
//!   writes the entries of the records after that again, from the log.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::feed::FeedId;

/// Bytes of one entry: the record's log offset (8), its JSON length (4).
pub const ENTRY_LEN: u64 = 12;

/// Most position files held open at once; more are opened again as
/// needed.
const OPEN_FILES: usize = 128;

/// Entries a history read fetches at once (4 KiB).
const READ_AHEAD: u64 = 341;

/// Where a message's record is: its log offset and JSON length.
pub type Position = (u64, usize);

/// The position files of a store.
pub struct Positions {
    dir: PathBuf,
    open: Mutex<HashMap<FeedId, Arc<File>>>,
    /// Feeds whose files were written since the last sync.
    unsynced: Mutex<HashSet<FeedId>>,
    /// Whether a file was created since the last sync (the directory then
    /// needs a sync too).
    created: AtomicBool,
    /// Set by a failed sync, for good: after a failed fsync Linux may mark
    /// the pages clean, and a retry would report success for data that
    /// never reached the disk.
    failed: AtomicBool,
}

impl Positions {
    /// Opens (creating it if needed) the directory of position files.
    pub fn open(dir: &Path) -> io::Result<Positions> {
        if !dir.is_dir() {
            fs::create_dir_all(dir)?;
            if let Some(parent) = dir.parent() {
                File::open(parent)?.sync_all()?;
            }
        }
        Ok(Positions {
            dir: dir.to_path_buf(),
            open: Mutex::new(HashMap::new()),
            unsynced: Mutex::new(HashSet::new()),
            created: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        })
    }

    fn path(&self, feed: &FeedId) -> PathBuf {
        self.dir.join(file_name(feed))
    }

    /// The open file of `feed`; `None` when it has none and `create` is
    /// false.
    fn file(&self, feed: &FeedId, create: bool) -> io::Result<Option<Arc<File>>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = open.get(feed) {
            return Ok(Some(Arc::clone(file)));
        }
        let path = self.path(feed);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)?;
                self.created.store(true, Ordering::Release);
                file
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if open.len() >= OPEN_FILES {
            open.clear();
        }
        let file = Arc::new(file);
        open.insert(*feed, Arc::clone(&file));
        Ok(Some(file))
    }

    /// Writes the positions of `feed`'s messages `first_seq`,
    /// `first_seq + 1`, ….
    pub fn put(&self, feed: &FeedId, first_seq: u64, positions: &[Position]) -> io::Result<()> {
        if positions.is_empty() || first_seq == 0 {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(positions.len() * ENTRY_LEN as usize);
        for (offset, json_len) in positions {
            let json_len = u32::try_from(*json_len)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record too long"))?;
            bytes.extend_from_slice(&offset.to_be_bytes());
            bytes.extend_from_slice(&json_len.to_be_bytes());
        }
        let file = self.file(feed, true)?.ok_or_else(not_found)?;
        file.write_all_at(&bytes, (first_seq - 1) * ENTRY_LEN)?;
        self.unsynced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(*feed);
        Ok(())
    }

    /// The positions of `feed`'s messages `first_seq` to `last_seq`; fewer
    /// when its file ends before (damage: the caller checked the tip).
    pub fn read(&self, feed: &FeedId, first_seq: u64, last_seq: u64) -> io::Result<Vec<Position>> {
        if first_seq == 0 || last_seq < first_seq {
            return Ok(Vec::new());
        }
        let Some(file) = self.file(feed, false)? else {
            return Ok(Vec::new());
        };
        let mut bytes = vec![0u8; ((last_seq - first_seq + 1) * ENTRY_LEN) as usize];
        let mut filled = 0;
        while filled < bytes.len() {
            let at = (first_seq - 1) * ENTRY_LEN + filled as u64;
            match file.read_at(&mut bytes[filled..], at) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut found = Vec::with_capacity(filled / ENTRY_LEN as usize);
        for (i, entry) in bytes[..filled].chunks_exact(ENTRY_LEN as usize).enumerate() {
            let position = decode_entry(entry);
            // No record has empty JSON: this entry was never written.
            if position.1 == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the position of sequence {} of {feed} is blank",
                        first_seq + i as u64
                    ),
                ));
            }
            found.push(position);
        }
        Ok(found)
    }

    /// Syncs every file written since the last sync, and the directory if
    /// a file was created. Once a sync failed, every later one fails too.
    pub fn sync(&self) -> io::Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "an earlier sync of the position files failed",
            ));
        }
        let feeds: Vec<FeedId> = self
            .unsynced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        let created = self.created.swap(false, Ordering::AcqRel);
        let result = self.sync_files(&feeds, created);
        if result.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        result
    }

    fn sync_files(&self, feeds: &[FeedId], created: bool) -> io::Result<()> {
        for feed in feeds {
            if let Some(file) = self.file(feed, false)? {
                file.sync_data()?;
            }
        }
        if created {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Makes the files agree with the feeds' tips: cuts each file to its
    /// feed's length and removes the files of feeds that have none.
    /// Returns the feeds whose files are shorter than their tips.
    pub fn trim(&self, tips: &HashMap<FeedId, u64>) -> io::Result<Vec<FeedId>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let mut short = Vec::new();
        let mut seen = HashSet::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let feed = name.to_str().and_then(feed_of_file_name);
            match feed.and_then(|feed| tips.get(&feed).map(|tip| (feed, *tip))) {
                Some((feed, tip)) => {
                    seen.insert(feed);
                    let want = tip * ENTRY_LEN;
                    let len = entry.metadata()?.len();
                    if len > want {
                        OpenOptions::new()
                            .write(true)
                            .open(entry.path())?
                            .set_len(want)?;
                    } else if len < want {
                        short.push(feed);
                    }
                }
                None => fs::remove_file(entry.path())?,
            }
        }
        short.extend(
            tips.iter()
                .filter(|(feed, tip)| **tip > 0 && !seen.contains(*feed))
                .map(|(feed, _)| *feed),
        );
        Ok(short)
    }

    /// Removes every position file (before a rebuild writes them again).
    pub fn clear(&self) -> io::Result<()> {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.unsynced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        for entry in fs::read_dir(&self.dir)? {
            fs::remove_file(entry?.path())?;
        }
        Ok(())
    }

    /// A reader of `feed`'s positions from `from` to `last` in order,
    /// fetching [`READ_AHEAD`] at a time.
    pub fn reader(&self, feed: FeedId, from: u64, last: u64) -> PositionReader<'_> {
        PositionReader {
            positions: self,
            feed,
            next: from.max(1),
            last,
            buffered: std::collections::VecDeque::new(),
        }
    }
}

/// See [`Positions::reader`].
pub struct PositionReader<'a> {
    positions: &'a Positions,
    feed: FeedId,
    next: u64,
    last: u64,
    buffered: std::collections::VecDeque<Position>,
}

impl PositionReader<'_> {
    /// The next sequence and its position; `None` past the last. A file
    /// that ends early is an error.
    pub fn next_position(&mut self) -> io::Result<Option<(u64, Position)>> {
        if self.next > self.last {
            return Ok(None);
        }
        if self.buffered.is_empty() {
            let upto = self.last.min(self.next + READ_AHEAD - 1);
            self.buffered = self.positions.read(&self.feed, self.next, upto)?.into();
            if self.buffered.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("no position for sequence {} of {}", self.next, self.feed),
                ));
            }
        }
        let position = self.buffered.pop_front().ok_or_else(not_found)?;
        let seq = self.next;
        self.next += 1;
        Ok(Some((seq, position)))
    }
}

fn decode_entry(entry: &[u8]) -> Position {
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&entry[..8]);
    let mut len = [0u8; 4];
    len.copy_from_slice(&entry[8..12]);
    (u64::from_be_bytes(offset), u32::from_be_bytes(len) as usize)
}

/// The name of `feed`'s position file: its key in hex, and `.pos`.
pub fn file_name(feed: &FeedId) -> String {
    let mut name = String::with_capacity(68);
    for byte in feed.0 {
        name.push_str(&format!("{byte:02x}"));
    }
    name.push_str(".pos");
    name
}

/// The feed a file is named for (the inverse of [`file_name`]).
fn feed_of_file_name(name: &str) -> Option<FeedId> {
    let hex = name.strip_suffix(".pos")?;
    if hex.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(FeedId(key))
}

fn not_found() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no position file")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(n: u8) -> FeedId {
        FeedId([n; 32])
    }

    #[test]
    fn positions_read_back_across_puts_and_read_ahead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let positions = Positions::open(dir.path()).expect("opens");
        let all: Vec<Position> = (0..1000u64).map(|i| (i * 100, i as usize + 1)).collect();
        positions.put(&feed(1), 1, &all[..400]).expect("puts");
        positions.put(&feed(2), 1, &[(7, 7)]).expect("puts");
        positions.put(&feed(1), 401, &all[400..]).expect("puts");
        assert_eq!(positions.read(&feed(1), 1, 1000).expect("reads"), all);
        assert_eq!(
            positions.read(&feed(1), 500, 500).expect("reads"),
            vec![all[499]]
        );
        let mut reader = positions.reader(feed(1), 2, 1000);
        let mut got = Vec::new();
        while let Some((seq, position)) = reader.next_position().expect("reads") {
            assert_eq!(all[seq as usize - 1], position);
            got.push(seq);
        }
        assert_eq!(got, (2..=1000).collect::<Vec<_>>());
        assert_eq!(positions.read(&feed(3), 1, 5).expect("reads"), vec![]);
        positions.sync().expect("syncs");
    }

    #[test]
    fn a_reader_past_the_file_reports_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let positions = Positions::open(dir.path()).expect("opens");
        positions
            .put(&feed(1), 1, &[(0, 5), (20, 5)])
            .expect("puts");
        let mut reader = positions.reader(feed(1), 1, 3);
        assert!(reader.next_position().expect("reads").is_some());
        assert!(reader.next_position().expect("reads").is_some());
        assert!(reader.next_position().is_err());
    }

    #[test]
    fn trim_cuts_to_the_tips_and_finds_short_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let positions = Positions::open(dir.path()).expect("opens");
        positions.put(&feed(1), 1, &[(0, 1); 10]).expect("puts");
        positions.put(&feed(2), 1, &[(0, 1); 3]).expect("puts");
        positions.put(&feed(3), 1, &[(0, 1); 3]).expect("puts");
        std::fs::write(dir.path().join("stray"), b"x").expect("writes");
        let tips = HashMap::from([(feed(1), 4), (feed(2), 5), (feed(4), 1)]);
        let mut short = positions.trim(&tips).expect("trims");
        short.sort();
        assert_eq!(short, vec![feed(2), feed(4)]);
        assert_eq!(positions.read(&feed(1), 1, 10).expect("reads").len(), 4);
        assert!(!positions.path(&feed(3)).exists());
        assert!(!dir.path().join("stray").exists());
    }
}
