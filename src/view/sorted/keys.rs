//! merged.log's keys files: each prefix line's ordered timestamp and where
//! it ends, 16 bytes an entry, read a chunk at a time and searched.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes of one keys entry: ordered timestamp, end of the line.
pub(super) const KEY_ENTRY: u64 = 16;

/// Keys entries read at once.
pub(super) const KEY_CHUNK: u64 = 4096;

/// The bytes from `from` to `to`, two ends read from a keys file: an
/// error, not an overflow, if the file says they run backwards.
pub(super) fn span(from: u64, to: u64) -> io::Result<u64> {
    to.checked_sub(from)
        .ok_or_else(|| io::Error::other(format!("a keys file runs backwards: {to} before {from}")))
}

/// Reads a generation's keys, a chunk at a time.
pub(super) struct KeyReader<'a> {
    file: &'a File,
    count: u64,
    chunk_start: u64,
    chunk: Vec<u8>,
}

impl<'a> KeyReader<'a> {
    pub(super) fn new(file: &'a File, count: u64) -> Self {
        KeyReader {
            file,
            count,
            chunk_start: 0,
            chunk: Vec::new(),
        }
    }

    /// Entry `i`: the line's ordered timestamp and end.
    pub(super) fn entry(&mut self, i: u64) -> io::Result<(u64, u64)> {
        let in_chunk = |start: u64, len: usize| i >= start && i < start + (len as u64 / KEY_ENTRY);
        if !in_chunk(self.chunk_start, self.chunk.len()) {
            let start = i - i % KEY_CHUNK;
            let n = KEY_CHUNK.min(self.count - start);
            self.chunk.resize((n * KEY_ENTRY) as usize, 0);
            self.file
                .read_exact_at(&mut self.chunk, start * KEY_ENTRY)?;
            self.chunk_start = start;
        }
        let at = ((i - self.chunk_start) * KEY_ENTRY) as usize;
        let word = |from: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&self.chunk[from..from + 8]);
            u64::from_be_bytes(bytes)
        };
        Ok((word(at), word(at + 8)))
    }

    /// Where the bytes before line `i` end.
    pub(super) fn end_before(&mut self, i: u64) -> io::Result<u64> {
        if i == 0 {
            return Ok(0);
        }
        Ok(self.entry(i - 1)?.1)
    }

    /// The first line at or after `from` whose timestamp is above `ts`.
    pub(super) fn upper_bound(&mut self, ts: u64, from: u64) -> io::Result<u64> {
        self.search(from, |key| key <= ts)
    }

    /// The first line whose timestamp is at or above `ts`.
    pub(super) fn lower_bound(&mut self, ts: u64) -> io::Result<u64> {
        self.search(0, |key| key < ts)
    }

    /// The first line at or after `from` for which `before` fails: a
    /// galloping search, as lines mostly insert near the last.
    pub(super) fn search(&mut self, from: u64, before: impl Fn(u64) -> bool) -> io::Result<u64> {
        let (mut low, mut step) = (from, 1u64);
        let mut high = from;
        while high < self.count && before(self.entry(high)?.0) {
            low = high + 1;
            high = (high + step).min(self.count);
            step *= 2;
        }
        while low < high {
            let mid = low + (high - low) / 2;
            if before(self.entry(mid)?.0) {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        Ok(low)
    }
}
