//! The local days' views: `days/<date>.log`, each a local calendar day's
//! lines of every machine. A handle reads the day's lines known at open in
//! `merged.log`'s order, then the day's later lines in arrival order,
//! found in the line file as they are read.

use std::io;
use std::os::unix::fs::FileExt;

use chrono::NaiveDate;

use super::sorted::MergedSnapshot;
use super::{Segments, Views};

/// What one open handle of `days/<day>.log` reads: the day's lines known at
/// open (a range of the `merged.log` order then), then the day's later
/// lines in arrival order, found in the line file as they are read.
pub struct DaySnapshot {
    day: NaiveDate,
    merged: MergedSnapshot,
    /// The day's range in `merged`'s byte order.
    from: u64,
    to: u64,
    /// How far the line file has been searched for the day's later lines.
    searched_to: u64,
    /// Those found: where each lies in the line file.
    tail: Vec<(u64, u32)>,
    tail_bytes: u64,
}

/// The local calendar day of a timestamp (ms since the epoch), if the
/// clock can show it.
pub fn day_of(ms: f64) -> Option<NaiveDate> {
    // Years 0000 to 9999 only: the lines of other years print their
    // timestamp with a sign or more digits, which the day files' scan of
    // later lines would not read back.
    const FIRST: f64 = -62_167_219_200_000.0; // 0000-01-01T00:00:00Z
    const END: f64 = 253_402_300_800_000.0; // 10000-01-01T00:00:00Z
    const MARGIN: f64 = 2.0 * 86_400_000.0; // any time zone's offset
    if !(FIRST + MARGIN..END - MARGIN).contains(&ms) {
        return None;
    }
    let utc = chrono::DateTime::from_timestamp_millis(ms.floor() as i64)?;
    Some(utc.with_timezone(&chrono::Local).date_naive())
}

/// [`day_of`], remembering the last day's bounds: lines come mostly in
/// time order, so most lookups fall in the day before, and converting to
/// local time costs more than comparing two numbers.
#[derive(Default)]
pub(super) struct DayCache {
    last: Option<(f64, f64, NaiveDate)>,
}

impl DayCache {
    pub(super) fn day_of(&mut self, ms: f64) -> Option<NaiveDate> {
        if let Some((start, end, day)) = self.last {
            if start <= ms.floor() && ms.floor() < end {
                return Some(day);
            }
        }
        let day = day_of(ms)?;
        let (start, end) = day_bounds(day);
        if start.is_finite() && end.is_finite() {
            self.last = Some((start, end, day));
        }
        Some(day)
    }
}

/// The first millisecond of `day` and of the next, local time.
fn day_bounds(day: NaiveDate) -> (f64, f64) {
    let start = |d: NaiveDate| -> f64 {
        use chrono::TimeZone;
        // A day whose midnight a clock change skips starts when it can.
        (0..24)
            .find_map(|h| {
                chrono::Local
                    .from_local_datetime(&d.and_hms_opt(h, 0, 0)?)
                    .earliest()
            })
            .map_or(f64::NAN, |t| t.timestamp_millis() as f64)
    };
    let next = day.succ_opt().unwrap_or(day);
    (start(day), start(next))
}

/// The local day of a rendered line, from the timestamp it starts with.
fn line_day(line: &[u8]) -> Option<NaiveDate> {
    let text = std::str::from_utf8(line.get(..24)?).ok()?;
    let t = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.3fZ").ok()?;
    day_of(t.and_utc().timestamp_millis() as f64)
}

impl Views {
    /// Every local day with lines, and the size of its file.
    pub fn days(&self) -> Vec<(NaiveDate, u64)> {
        self.read().days.iter().map(|(d, n)| (*d, *n)).collect()
    }

    /// The size of `days/<day>.log`.
    pub fn day_len(&self, day: NaiveDate) -> u64 {
        self.read().days.get(&day).copied().unwrap_or(0)
    }

    /// A snapshot for a newly opened `days/<day>.log` handle: the day's
    /// lines known now in timestamp order, then later ones in arrival
    /// order, as `merged.log` handles read.
    pub fn day_snapshot(&self, day: NaiveDate) -> io::Result<DaySnapshot> {
        let (start, end) = day_bounds(day);
        let merged = self.merged.snapshot()?;
        let from = merged.offset_of_ts(crate::store::ordered_timestamp(start))?;
        let to = merged.offset_of_ts(crate::store::ordered_timestamp(end))?;
        Ok(DaySnapshot {
            day,
            searched_to: merged.known(),
            merged,
            from,
            to,
            tail: Vec::new(),
            tail_bytes: 0,
        })
    }

    /// Reads `days/<day>.log` as `snapshot`'s handle sees it.
    pub fn read_day(
        &self,
        snapshot: &mut DaySnapshot,
        offset: u64,
        size: usize,
    ) -> io::Result<Vec<u8>> {
        let mut segments = Segments::new(size);
        let known = snapshot.to - snapshot.from;
        if offset < known {
            snapshot
                .merged
                .read_into(snapshot.from + offset, snapshot.to, &mut segments);
        }
        if !segments.full() {
            self.search_tail(snapshot, offset.max(known) - known + u64::from(size as u32))?;
            let mut skip = offset.saturating_sub(known);
            for (pos, len) in &snapshot.tail {
                let len = u64::from(*len);
                if skip >= len {
                    skip -= len;
                    continue;
                }
                if !segments.push(pos + skip, len - skip) {
                    break;
                }
                skip = 0;
            }
        }
        snapshot.merged.read(segments)
    }

    /// Finds the snapshot's day's lines that arrived after it, until it
    /// holds `wanted` bytes of them or the line file ends.
    fn search_tail(&self, snapshot: &mut DaySnapshot, wanted: u64) -> io::Result<()> {
        let file_len = self.merged_len();
        let mut chunk = vec![0u8; 1 << 20];
        while snapshot.tail_bytes < wanted && snapshot.searched_to < file_len {
            let n = ((file_len - snapshot.searched_to) as usize).min(chunk.len());
            snapshot
                .merged
                .file()
                .read_exact_at(&mut chunk[..n], snapshot.searched_to)?;
            let mut start = 0;
            let mut whole = 0;
            while let Some(nl) = chunk[start..n].iter().position(|b| *b == b'\n') {
                let line = &chunk[start..start + nl + 1];
                if line_day(line) == Some(snapshot.day) {
                    snapshot
                        .tail
                        .push((snapshot.searched_to + start as u64, line.len() as u32));
                    snapshot.tail_bytes += line.len() as u64;
                }
                start += nl + 1;
                whole = start;
            }
            if whole == 0 {
                // A line longer than the chunk: read it whole.
                chunk.resize(chunk.len() * 2, 0);
                continue;
            }
            snapshot.searched_to += whole as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_cache_agrees_with_day_of() {
        let mut cache = DayCache::default();
        let start = 1_795_600_000_000.0;
        // Forwards and backwards across several midnights, to the ms.
        let mut probes: Vec<f64> = (0..2000)
            .map(|i| start + f64::from(i) * 431_999.7)
            .collect();
        probes.extend(probes.clone().into_iter().rev());
        for ms in probes {
            assert_eq!(cache.day_of(ms), day_of(ms), "{ms}");
        }
        assert_eq!(cache.day_of(f64::NAN), None);
    }
}
