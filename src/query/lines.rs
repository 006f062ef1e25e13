//! Lines: a machine's latest lines and those after them (its page, live),
//! and a bounded search of `merged.log`, newest first.

use std::io;
use std::time::Instant;

use crate::feed::FeedId;
use crate::node::Node;
use crate::view::line::label;

/// How much of a file is read at a time.
const CHUNK: usize = 1 << 20;

/// The machine called `name`: its label (as `health` and the mount name
/// it), or its `@…ed25519` id.
pub fn find_machine(node: &Node, name: &str) -> Option<FeedId> {
    if let Ok(feed) = name.parse::<FeedId>() {
        return Some(feed);
    }
    let names = node.names();
    let me = node.id();
    // The node's own feed first, then by id: the same machine each time
    // when two share a name.
    node.store
        .feeds()
        .into_iter()
        .map(|(feed, _)| feed)
        .filter(|feed| label(feed, &names) == name)
        .min_by_key(|feed| (*feed != me, feed.to_string()))
}

/// `feed`'s last `max_lines` lines (without their newlines), oldest first,
/// and where its log ends: what [`lines_after`] continues from.
pub fn last_lines(node: &Node, feed: &FeedId, max_lines: usize) -> io::Result<(Vec<String>, u64)> {
    let Some(views) = node.views() else {
        return Ok((Vec::new(), 0));
    };
    let end = views.feed_log_len(feed);
    let mut start = end;
    let mut tail: Vec<u8> = Vec::new();
    // Back from the end until the chunk read holds `max_lines` whole lines.
    while start > 0 && bytecount_newlines(&tail) <= max_lines {
        let from = start.saturating_sub(CHUNK as u64);
        let mut chunk = views.read_feed_log(feed, from, (start - from) as usize)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        start = from;
    }
    let mut lines: Vec<String> = split_lines(&tail);
    if start > 0 && !lines.is_empty() {
        // The first is cut at the chunk's edge.
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(max_lines);
    Ok((lines.split_off(skip), end))
}

/// `feed`'s whole lines after log offset `from` (at most `max_bytes` of
/// them), and the offset after the last one returned.
pub fn lines_after(
    node: &Node,
    feed: &FeedId,
    from: u64,
    max_bytes: usize,
) -> io::Result<(Vec<String>, u64)> {
    let Some(views) = node.views() else {
        return Ok((Vec::new(), from));
    };
    let end = views.feed_log_len(feed);
    if end <= from {
        return Ok((Vec::new(), from));
    }
    let size = ((end - from) as usize).min(max_bytes);
    let bytes = views.read_feed_log(feed, from, size)?;
    let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    Ok((split_lines(&bytes[..whole]), from + whole as u64))
}

fn bytecount_newlines(bytes: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', bytes).count()
}

fn split_lines(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}

/// The bounds of one search.
#[derive(Clone, Copy, Debug)]
pub struct SearchLimits {
    /// Stop after this many matching lines.
    pub max_results: usize,
    /// Stop reading at this moment.
    pub deadline: Instant,
}

/// Why a search stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchEnd {
    /// It read all of `merged.log`.
    Searched,
    /// It found the most results it may give.
    EnoughResults,
    /// Its time ran out.
    OutOfTime,
    /// Whoever asked went away.
    Abandoned,
}

/// What a search did.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchSummary {
    /// How many lines matched.
    pub results: usize,
    /// How many bytes of `merged.log` it read, from the end.
    pub bytes_read: u64,
    /// Why it stopped.
    pub end: SearchEnd,
}

/// Searches `merged.log` for lines that contain `needle` (ASCII letters in
/// either case), newest first, handing each to `found` as it is found
/// (`found` returns false to stop). Bounded by `limits`.
pub fn search(
    node: &Node,
    needle: &str,
    limits: SearchLimits,
    found: &mut dyn FnMut(&str) -> bool,
) -> io::Result<SearchSummary> {
    let mut summary = SearchSummary {
        results: 0,
        bytes_read: 0,
        end: SearchEnd::Searched,
    };
    let Some(views) = node.views() else {
        return Ok(summary);
    };
    let needle = needle.to_ascii_lowercase();
    let finder = memchr::memmem::Finder::new(needle.as_bytes());
    let snapshot = views.merged_snapshot()?;
    let mut end = views.merged_len();
    // The start of a line cut at a chunk's edge, read with the next chunk.
    let mut carry: Vec<u8> = Vec::new();
    let mut lowered: Vec<u8> = Vec::new();
    while end > 0 {
        if Instant::now() >= limits.deadline {
            summary.end = SearchEnd::OutOfTime;
            return Ok(summary);
        }
        let from = end.saturating_sub(CHUNK as u64);
        let mut chunk = views.read_merged(&snapshot, from, (end - from) as usize)?;
        summary.bytes_read += chunk.len() as u64;
        chunk.extend_from_slice(&carry);
        carry.clear();
        // Unless this is the file's start, its first line may be cut.
        let first_whole = if from == 0 {
            0
        } else {
            match memchr::memchr(b'\n', &chunk) {
                Some(i) => i + 1,
                None => {
                    carry = chunk;
                    end = from;
                    continue;
                }
            }
        };
        carry.extend_from_slice(&chunk[..first_whole]);
        let body = &chunk[first_whole..];
        lowered.clear();
        lowered.extend(body.iter().map(u8::to_ascii_lowercase));
        for (start, len) in line_spans(body).rev() {
            if finder.find(&lowered[start..start + len]).is_some() {
                summary.results += 1;
                if !found(&String::from_utf8_lossy(&body[start..start + len])) {
                    summary.end = SearchEnd::Abandoned;
                    return Ok(summary);
                }
                if summary.results >= limits.max_results {
                    summary.end = SearchEnd::EnoughResults;
                    return Ok(summary);
                }
            }
        }
        end = from;
    }
    Ok(summary)
}

/// Where each line of `bytes` starts and how long it is (without its
/// newline), in order.
fn line_spans(bytes: &[u8]) -> impl DoubleEndedIterator<Item = (usize, usize)> + '_ {
    let mut spans = Vec::new();
    let mut start = 0;
    for i in memchr::memchr_iter(b'\n', bytes) {
        if i > start {
            spans.push((start, i - start));
        }
        start = i + 1;
    }
    if start < bytes.len() {
        spans.push((start, bytes.len() - start));
    }
    spans.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_each_line_once() {
        let text = b"a\n\nbc\nd";
        let spans: Vec<_> = line_spans(text).collect();
        assert_eq!(spans, vec![(0, 1), (3, 2), (6, 1)]);
        assert_eq!(split_lines(b"x\ny\n"), vec!["x", "y"]);
    }
}
