//! Where a feed's `log`, or one of its jobs, lies in the line file: runs of
//! lines that are contiguous there, kept on disk.
//!
//! A feed's lines are mostly contiguous (all of a machine's own lines when
//! it alone writes, a whole commit's worth otherwise), so a run per stretch
//! costs far less than an entry per line. But the runs still grow with
//! history when feeds interleave, so they live in a file of their own, 16
//! bytes a run: memory holds only the last run, and a read finds its first
//! run by a binary search of `pread`s, which the page cache serves.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::Segments;

/// Bytes a run takes in its file: its start in the feed's log and its
/// offset in the line file, big-endian.
const RUN_BYTES: u64 = 16;

/// Runs read at once when walking forward from the first.
const READ_AHEAD: usize = 256;

/// The directory of the runs files of the views at `line_file`.
pub fn dir(line_file: &Path) -> PathBuf {
    super::beside(line_file, ".runs")
}

/// One view's lines: its size, and its runs in the file `number` of the
/// runs directory (only the last in memory).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FeedLines {
    number: u64,
    /// Runs in the file; what lies past them there is not theirs.
    count: u64,
    /// The last run: `(offset in the view, offset in the line file)`.
    last: (u64, u64),
    len: u64,
}

impl FeedLines {
    /// An empty view whose runs go to the file `number`.
    pub fn new(number: u64) -> FeedLines {
        FeedLines {
            number,
            count: 0,
            last: (0, 0),
            len: 0,
        }
    }

    /// The file its runs are in.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    fn path(&self, dir: &Path) -> PathBuf {
        dir.join(self.number.to_string())
    }

    /// Adds a line of `len` bytes at `pos` in the line file. Returns
    /// whether the runs file was written (and so needs a sync before a
    /// checkpoint counts on it).
    pub fn push(&mut self, dir: &Path, pos: u64, len: u32) -> io::Result<bool> {
        let (start, file_pos) = self.last;
        let contiguous = self.count > 0 && file_pos + (self.len - start) == pos;
        let mut wrote = false;
        if !contiguous {
            let run = (self.len, pos);
            let mut bytes = [0u8; RUN_BYTES as usize];
            bytes[..8].copy_from_slice(&run.0.to_be_bytes());
            bytes[8..].copy_from_slice(&run.1.to_be_bytes());
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(self.count == 0)
                .open(self.path(dir))?;
            file.write_all_at(&bytes, self.count * RUN_BYTES)?;
            self.count += 1;
            self.last = run;
            wrote = true;
        }
        self.len += u64::from(len);
        Ok(wrote)
    }

    /// Checks that its file holds every run it counts.
    pub fn check(&self, dir: &Path) -> io::Result<()> {
        if self.count == 0 {
            return Ok(());
        }
        let on_disk = std::fs::metadata(self.path(dir))?.len();
        if on_disk < self.count * RUN_BYTES {
            return Err(io::Error::other(format!(
                "runs file {} holds {} runs, not {}",
                self.number,
                on_disk / RUN_BYTES,
                self.count
            )));
        }
        Ok(())
    }

    /// Makes its runs file durable.
    pub fn sync(dir: &Path, number: u64) -> io::Result<()> {
        File::open(dir.join(number.to_string()))?.sync_data()
    }

    /// Queues the bytes of the view from `offset` on.
    pub fn read_into(&self, dir: &Path, offset: u64, segments: &mut Segments) -> io::Result<()> {
        if self.count == 0 || offset >= self.len {
            return Ok(());
        }
        let (start, file_pos) = self.last;
        if offset >= start {
            segments.push(file_pos + (offset - start), self.len - offset);
            return Ok(());
        }
        let file = File::open(self.path(dir))?;
        let run_at = |i: u64| -> io::Result<(u64, u64)> {
            let mut bytes = [0u8; RUN_BYTES as usize];
            file.read_exact_at(&mut bytes, i * RUN_BYTES)?;
            Ok(decode(&bytes))
        };
        // The last run starting at or before `offset`: the first starts at 0.
        let (mut low, mut high) = (0, self.count - 1);
        while low < high {
            let mid = low + (high - low).div_ceil(2);
            if run_at(mid)?.0 <= offset {
                low = mid;
            } else {
                high = mid - 1;
            }
        }
        let mut chunk = vec![0u8; READ_AHEAD * RUN_BYTES as usize];
        let mut i = low;
        let mut current = run_at(i)?;
        loop {
            let ahead = (self.count - 1 - i).min(READ_AHEAD as u64) as usize;
            let bytes = &mut chunk[..ahead * RUN_BYTES as usize];
            file.read_exact_at(bytes, (i + 1) * RUN_BYTES)?;
            let following: Vec<(u64, u64)> =
                bytes.chunks_exact(RUN_BYTES as usize).map(decode).collect();
            for next in following.into_iter().map(Some).chain([None]) {
                let end = match next {
                    Some((next_start, _)) => next_start,
                    None if i == self.count - 1 => self.len,
                    // The read-ahead is spent: read the next runs.
                    None => break,
                };
                let (run_start, run_pos) = current;
                if end < run_start || end > self.len {
                    return Err(io::Error::other(format!(
                        "runs file {} is out of order",
                        self.number
                    )));
                }
                let skip = offset.saturating_sub(run_start);
                if skip < end - run_start && !segments.push(run_pos + skip, end - run_start - skip)
                {
                    return Ok(());
                }
                match next {
                    Some(run) => {
                        current = run;
                        i += 1;
                    }
                    None => return Ok(()),
                }
            }
        }
    }
}

fn decode(bytes: &[u8]) -> (u64, u64) {
    let mut start = [0u8; 8];
    let mut pos = [0u8; 8];
    start.copy_from_slice(&bytes[..8]);
    pos.copy_from_slice(&bytes[8..16]);
    (u64::from_be_bytes(start), u64::from_be_bytes(pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gather(segments: Segments, file: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (pos, len) in segments.ranges {
            out.extend_from_slice(&file[pos as usize..pos as usize + len]);
        }
        out
    }

    #[test]
    fn a_view_reads_the_same_from_its_runs_as_line_by_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Two feeds' lines interleaved in the file, with long stretches
        // and single lines, so that reads cross many runs and read ahead.
        let owners: Vec<usize> = (0..3000)
            .map(|i: usize| usize::from(i % 7 == 3 || (i / 50) % 3 == 1))
            .collect();
        let mut file = Vec::new();
        let mut feeds = [
            (FeedLines::new(0), Vec::new()),
            (FeedLines::new(1), Vec::new()),
        ];
        for (i, owner) in owners.into_iter().enumerate() {
            let line = format!("line {i} of feed {owner} {}\n", "x".repeat(i % 13));
            let (lines, expected) = &mut feeds[owner];
            lines
                .push(dir.path(), file.len() as u64, line.len() as u32)
                .expect("pushes");
            expected.extend_from_slice(line.as_bytes());
            file.extend_from_slice(line.as_bytes());
        }
        assert!(feeds[0].0.count > READ_AHEAD as u64, "{}", feeds[0].0.count);
        for (lines, expected) in &feeds {
            lines.check(dir.path()).expect("holds its runs");
            assert_eq!(lines.len(), expected.len() as u64);
            for offset in (0..=expected.len()).step_by(97).chain([expected.len() - 1]) {
                for size in [1, 7, 4096, 1 << 20] {
                    let mut segments = Segments::new(size);
                    lines
                        .read_into(dir.path(), offset as u64, &mut segments)
                        .expect("reads");
                    let end = (offset + size).min(expected.len());
                    assert!(
                        gather(segments, &file) == expected[offset..end],
                        "{offset} {size}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_runs_file_shorter_than_its_count_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut lines = FeedLines::new(3);
        for pos in [0, 100, 200] {
            lines.push(dir.path(), pos, 10).expect("pushes");
        }
        lines.check(dir.path()).expect("whole");
        let path = dir.path().join("3");
        let file = OpenOptions::new().write(true).open(&path).expect("opens");
        file.set_len(RUN_BYTES * 2).expect("cuts");
        assert!(lines.check(dir.path()).is_err());
    }
}
