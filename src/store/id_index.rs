//! The message-id index as size-tiered sorted runs.
//!
//! Why runs: ids are random, so an index keyed by id scatters every batch
//! of writes across the whole key space. sled's cost is per key and per
//! touched node, and a per-id (or per-bucket) index made appends slow down
//! as the store grew. Here each append batch adds one run, a sorted array
//! of `(id prefix, log offset)` entries, in the same atomic sled batch as
//! its index entries. When [`FANOUT`] runs of one level sit at the top of
//! the stack they are merged into one run of the next level, so each entry
//! is rewritten once per level (log₈ of the number of batches) and a
//! lookup binary-searches at most `FANOUT - 1` runs per level.
//!
//! A run is stored in chunks of at most about [`CHUNK_ENTRIES`] entries,
//! each keyed by the run and its first prefix, because sled rewrites a
//! node whole and large values make every rewrite costly.
//!
//! Entries hold only the id's first eight bytes; a lookup confirms each
//! candidate against the full id stored with the message, so a prefix
//! collision costs a read, never a wrong answer.
//!
//! Invariants:
//! - Runs cover consecutive, disjoint ranges of the log, oldest first;
//!   together they cover every stored message exactly once.
//! - Levels never increase from the oldest run to the newest.
//! - Equal prefixes never straddle two chunks of a run.

use std::ops::Range;

/// How many runs of one level are merged into a run of the next.
pub const FANOUT: usize = 8;

/// Bytes per entry: the id's first 8 bytes, then its record's log offset.
pub const ENTRY_LEN: usize = 16;

/// Entries per stored chunk of a run (2 KiB): small enough that a sled
/// node full of chunks stays far below the size at which sled writes it as
/// a separate, never-synced blob file.
pub const CHUNK_ENTRIES: usize = 128;

/// One run, as the directory records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunInfo {
    /// Log offset of the first record the run covers.
    pub start: u64,
    /// Log offset just past the last record it covers.
    pub end: u64,
    /// 0 for a run written by one append; n + 1 for a merge of level-n runs.
    pub level: u8,
}

/// Bytes of one directory entry.
const RUN_INFO_LEN: usize = 17;

/// The runs, oldest first, as one value.
pub fn encode_directory(runs: &[RunInfo]) -> Vec<u8> {
    let mut out = Vec::with_capacity(runs.len() * RUN_INFO_LEN);
    for run in runs {
        out.extend_from_slice(&run.start.to_be_bytes());
        out.extend_from_slice(&run.end.to_be_bytes());
        out.push(run.level);
    }
    out
}

/// Reads a directory value; `None` when it is malformed.
pub fn decode_directory(bytes: &[u8]) -> Option<Vec<RunInfo>> {
    if bytes.len() % RUN_INFO_LEN != 0 {
        return None;
    }
    let runs: Vec<RunInfo> = bytes
        .chunks_exact(RUN_INFO_LEN)
        .map(|chunk| RunInfo {
            start: be_u64(&chunk[..8]),
            end: be_u64(&chunk[8..16]),
            level: chunk[16],
        })
        .collect();
    let well_formed = runs.iter().all(|r| r.start < r.end)
        && runs
            .windows(2)
            .all(|w| w[0].end == w[1].start && w[0].level >= w[1].level);
    well_formed.then_some(runs)
}

/// The part of the log the runs cover together.
pub fn covered(runs: &[RunInfo]) -> Range<u64> {
    match (runs.first(), runs.last()) {
        (Some(first), Some(last)) => first.start..last.end,
        _ => 0..0,
    }
}

/// The index key of an id: its first eight bytes.
pub fn prefix_of(id: &[u8; 32]) -> u64 {
    be_u64(&id[..8])
}

/// A run's bytes for entries `(prefix, recv)`, sorted here.
pub fn encode_run(mut entries: Vec<(u64, u64)>) -> Vec<u8> {
    entries.sort_unstable();
    let mut out = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for (prefix, recv) in entries {
        out.extend_from_slice(&prefix.to_be_bytes());
        out.extend_from_slice(&recv.to_be_bytes());
    }
    out
}

/// Reads 8 big-endian bytes; callers pass slices cut to length 8.
fn be_u64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(bytes);
    u64::from_be_bytes(array)
}

fn entry_at(run: &[u8], i: usize) -> (u64, u64) {
    let entry = &run[i * ENTRY_LEN..(i + 1) * ENTRY_LEN];
    (be_u64(&entry[..8]), be_u64(&entry[8..]))
}

/// Splits a run into chunks of about [`CHUNK_ENTRIES`] entries, never
/// between two equal prefixes: `(first prefix, bytes)` for each.
pub fn chunks(run: &[u8]) -> Vec<(u64, &[u8])> {
    let n = run.len() / ENTRY_LEN;
    let mut out = Vec::with_capacity(n / CHUNK_ENTRIES + 1);
    let mut start = 0;
    while start < n {
        let mut end = (start + CHUNK_ENTRIES).min(n);
        while end < n && entry_at(run, end).0 == entry_at(run, end - 1).0 {
            end += 1;
        }
        out.push((
            entry_at(run, start).0,
            &run[start * ENTRY_LEN..end * ENTRY_LEN],
        ));
        start = end;
    }
    out
}

/// Log offsets of the entries in `run` (or a chunk of it) whose prefix is
/// `prefix`.
pub fn candidates(run: &[u8], prefix: u64) -> impl Iterator<Item = u64> + '_ {
    let n = run.len() / ENTRY_LEN;
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if entry_at(run, mid).0 < prefix {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    (lo..n)
        .map(move |i| entry_at(run, i))
        .take_while(move |(p, _)| *p == prefix)
        .map(|(_, recv)| recv)
}

/// Merges sorted runs into one sorted run.
pub fn merge_runs(runs: &[&[u8]]) -> Vec<u8> {
    let mut entries: Vec<(u64, u64)> =
        Vec::with_capacity(runs.iter().map(|r| r.len() / ENTRY_LEN).sum());
    for run in runs {
        entries.extend((0..run.len() / ENTRY_LEN).map(|i| entry_at(run, i)));
    }
    // The inputs are sorted; a sort of their concatenation is simple and,
    // with pattern-defeating quicksort finding the sorted stretches, fast.
    encode_run(entries)
}

/// The merge to do after a run was pushed, if any: the index range (into
/// `runs`) of the newest [`FANOUT`] runs when they share one level.
pub fn due_merge(runs: &[RunInfo]) -> Option<Range<usize>> {
    let top = runs.last()?.level;
    let same: usize = runs.iter().rev().take_while(|r| r.level == top).count();
    (same >= FANOUT).then(|| runs.len() - FANOUT..runs.len())
}

/// The run that replaces `merged` (consecutive runs of one level).
pub fn merged_info(merged: &[RunInfo]) -> RunInfo {
    RunInfo {
        start: merged.first().map_or(0, |r| r.start),
        end: merged.last().map_or(0, |r| r.end),
        level: merged.first().map_or(0, |r| r.level.saturating_add(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(runs: &mut Vec<RunInfo>, count: u64) {
        let start = covered(runs).end;
        runs.push(RunInfo {
            start,
            end: start + count,
            level: 0,
        });
        while let Some(range) = due_merge(runs) {
            let info = merged_info(&runs[range.clone()]);
            runs.splice(range, [info]);
        }
    }

    #[test]
    fn runs_stay_few_and_cover_everything() {
        let mut runs = Vec::new();
        let mut rewrites = 0u64;
        for batch in 0..5000u64 {
            let weight = |runs: &[RunInfo]| -> u64 {
                runs.iter()
                    .map(|r| (r.end - r.start) * u64::from(r.level))
                    .sum()
            };
            let before = weight(&runs);
            push(&mut runs, batch % 600 + 1);
            let after = weight(&runs);
            rewrites += after.saturating_sub(before);
            assert!(decode_directory(&encode_directory(&runs)).as_deref() == Some(&runs[..]));
        }
        let total: u64 = (0..5000u64).map(|b| b % 600 + 1).sum();
        assert_eq!(covered(&runs), 0..total);
        // log8(5000) < 5 levels, at most 7 runs below each.
        assert!(runs.len() <= 5 * (FANOUT - 1) + 1, "{} runs", runs.len());
        assert!(rewrites <= total * 5, "{rewrites} rewrites of {total}");
    }

    #[test]
    fn lookups_find_every_entry_through_merges() {
        let ids: Vec<u64> = (0..2000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let a = encode_run(
            ids[..700]
                .iter()
                .enumerate()
                .map(|(i, p)| (*p, i as u64))
                .collect(),
        );
        let b = encode_run(
            ids[700..]
                .iter()
                .enumerate()
                .map(|(i, p)| (*p, 700 + i as u64))
                .collect(),
        );
        let merged = merge_runs(&[&a, &b]);
        for (recv, prefix) in ids.iter().enumerate() {
            assert_eq!(
                candidates(&merged, *prefix).collect::<Vec<_>>(),
                vec![recv as u64]
            );
        }
        assert_eq!(candidates(&merged, 12345).count(), 0);
    }

    #[test]
    fn chunks_cover_the_run_and_keep_equal_prefixes_together() {
        // 3 * CHUNK_ENTRIES sorted entries; one prefix repeats five times
        // across the first chunk boundary.
        let boundary = CHUNK_ENTRIES as u64;
        let repeated = boundary - 2..boundary + 3;
        let entries: Vec<(u64, u64)> = (0..3 * boundary)
            .map(|i| match i {
                i if repeated.contains(&i) => (1000 * boundary, i),
                i if i < boundary => (1000 * i, i),
                i => (1000 * i + 1, i),
            })
            .collect();
        let run = encode_run(entries);
        let parts = chunks(&run);
        assert_eq!(parts.iter().map(|(_, b)| b.len()).sum::<usize>(), run.len());
        let holding: Vec<_> = parts
            .iter()
            .filter(|(_, bytes)| candidates(bytes, 1000 * boundary).count() > 0)
            .collect();
        assert_eq!(holding.len(), 1);
        assert_eq!(candidates(holding[0].1, 1000 * boundary).count(), 5);
        for pair in parts.windows(2) {
            assert!(pair[0].0 < pair[1].0);
        }
    }

    #[test]
    fn colliding_prefixes_are_all_candidates() {
        let run = encode_run(vec![(7, 3), (5, 1), (7, 9), (9, 2)]);
        assert_eq!(candidates(&run, 7).collect::<Vec<_>>(), vec![3, 9]);
    }

    #[test]
    fn a_broken_directory_is_refused() {
        let runs = [
            RunInfo {
                start: 0,
                end: 10,
                level: 1,
            },
            RunInfo {
                start: 11,
                end: 12,
                level: 0,
            },
        ];
        assert_eq!(decode_directory(&encode_directory(&runs)), None);
        assert_eq!(decode_directory(&[1, 2, 3]), None);
    }
}
