//! Where each message of a feed's `feed.jsonl` ends, made on the first read
//! of that file and kept on disk: 8 bytes a message would otherwise stay in
//! memory for good, for every feed anyone ever read.
//!
//! The index lives in an unnamed file (`O_TMPFILE`) beside the line file:
//! nothing is left behind, and each start makes it again on first use.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Ends kept in memory before they are written out together.
const PENDING: usize = 4096;

/// The cumulative line ends of one feed's `feed.jsonl`: entry `i` is where
/// sequence `i + 1`'s line ends, so the count is the highest sequence held.
pub struct JsonlIndex {
    dir: PathBuf,
    /// Made when the first ends are written out: most feeds never need one,
    /// and an open file per feed would run into the limit on open files.
    file: Option<File>,
    written: u64,
    pending: Vec<u64>,
    last_end: u64,
}

impl JsonlIndex {
    /// An empty index, whose ends go to an unnamed file in `dir`.
    pub fn new(dir: &Path) -> JsonlIndex {
        JsonlIndex {
            dir: dir.to_path_buf(),
            file: None,
            written: 0,
            pending: Vec::with_capacity(PENDING),
            last_end: 0,
        }
    }

    /// How many messages it holds.
    pub fn count(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// The size of the file it indexes.
    pub fn len(&self) -> u64 {
        self.last_end
    }

    /// Adds the next message, whose line is `line_len` bytes.
    pub fn push(&mut self, line_len: u64) -> io::Result<()> {
        self.last_end += line_len;
        self.pending.push(self.last_end);
        if self.pending.len() >= PENDING {
            let bytes: Vec<u8> = self.pending.iter().flat_map(|e| e.to_be_bytes()).collect();
            let file = match &mut self.file {
                Some(file) => file,
                empty => empty.insert(tempfile::tempfile_in(&self.dir)?),
            };
            file.write_all_at(&bytes, self.written * 8)?;
            self.written += self.pending.len() as u64;
            self.pending.clear();
        }
        Ok(())
    }

    /// The message whose line holds byte `offset`, as its index from 0
    /// (the sequence less one), and where its line starts; `None` past the
    /// end.
    pub fn find(&self, offset: u64) -> io::Result<Option<(u64, u64)>> {
        if offset >= self.last_end {
            return Ok(None);
        }
        // The first message ending after `offset`.
        let i = match self.pending.first() {
            Some(first) if *first <= offset => {
                self.written + self.pending.partition_point(|end| *end <= offset) as u64
            }
            _ => {
                let (mut low, mut high) = (0, self.written);
                while low < high {
                    let mid = low + (high - low) / 2;
                    if self.end_at(mid)? <= offset {
                        low = mid + 1;
                    } else {
                        high = mid;
                    }
                }
                low
            }
        };
        let start = if i == 0 { 0 } else { self.end_at(i - 1)? };
        Ok(Some((i, start)))
    }

    fn end_at(&self, i: u64) -> io::Result<u64> {
        if i >= self.written {
            let pending = usize::try_from(i - self.written).map_err(io::Error::other)?;
            return self
                .pending
                .get(pending)
                .copied()
                .ok_or_else(|| io::Error::other("feed.jsonl index read past its end"));
        }
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| io::Error::other("feed.jsonl index read past its end"))?;
        let mut bytes = [0u8; 8];
        file.read_exact_at(&mut bytes, i * 8)?;
        Ok(u64::from_be_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_byte_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut index = JsonlIndex::new(dir.path());
        let lens: Vec<u64> = (0..PENDING as u64 * 2 + 77).map(|i| 1 + i % 5).collect();
        for len in &lens {
            index.push(*len).expect("pushes");
        }
        assert_eq!(index.count(), lens.len() as u64);
        assert!(index.written > 0, "part of it on disk");
        let mut start = 0;
        for (i, len) in lens.iter().enumerate() {
            for offset in [start, start + len - 1] {
                assert_eq!(index.find(offset).expect("finds"), Some((i as u64, start)));
            }
            start += len;
        }
        assert_eq!(index.len(), start);
        assert_eq!(index.find(start).expect("finds"), None);
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("lists").count(),
            0,
            "no file left with a name"
        );
    }
}
