//! What a user writes to the mount's `follow` file: a sequence of writes,
//! split into lines by the handle's `LineBuffer` (src/fs/linebuf.rs), the
//! lines then made contact messages by fs/mod.rs `follow_contents` (each
//! trimmed; a leading `-` unfollows; the rest a feed id, `FeedId::parse` in
//! src/feed/ids.rs).
//!
//! The input is a sequence of writes, each a byte (its low 7 bits the
//! length; its high bit: the publish of the write's lines fails, so the
//! handle `split`s without `take`) and then that many bytes.
//!
//! Invariants: `LineBuffer` matches a reference model exactly (which writes
//! fail and why, the lines each returns, the tail at close; so the lines
//! plus the tail are the accepted input, less one `\r` before each newline
//! and at the end); a failed write, or one whose publish fails, takes
//! nothing; `follow_contents` matches a model of it; a feed id that
//! parses is the canonical text of that id (the `follow` file prints it
//! back so).
#![no_main]

use libfuzzer_sys::fuzz_target;
use scuttlefs::feed::message::check_content;
use scuttlefs::feed::{FeedId, MsgId};
use scuttlefs::fs::follow_contents;
use scuttlefs::fs::linebuf::{LineBuffer, LineError, MAX_PENDING};

/// Valid UTF-8 except perhaps for an unfinished character at the end.
fn valid_prefix(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

fn strip_cr(mut s: String) -> String {
    if s.ends_with('\r') {
        s.pop();
    }
    s
}

/// What `LineBuffer::push` should do, given what it holds.
fn model_push(pending: &mut Vec<u8>, data: &[u8]) -> Result<Vec<String>, LineError> {
    let newlines = data.iter().filter(|b| **b == b'\n').count();
    let (complete, rest): (Vec<u8>, &[u8]) = match data.iter().rposition(|b| *b == b'\n') {
        Some(i) => ([&pending[..], &data[..=i]].concat(), &data[i + 1..]),
        None => (Vec::new(), data),
    };
    let tail_ok = if complete.is_empty() {
        valid_prefix(&[&pending[..], rest].concat())
    } else {
        valid_prefix(rest)
    };
    if !tail_ok {
        return Err(LineError::NotUtf8 { line: newlines + 1 });
    }
    let after = if complete.is_empty() { pending.len() + rest.len() } else { rest.len() };
    if after > MAX_PENDING {
        return Err(LineError::TooLong);
    }
    let mut lines = Vec::new();
    if !complete.is_empty() {
        for (n, raw) in complete[..complete.len() - 1].split(|b| *b == b'\n').enumerate() {
            match String::from_utf8(raw.to_vec()) {
                Ok(s) => lines.push(strip_cr(s)),
                Err(_) => return Err(LineError::NotUtf8 { line: n + 1 }),
            }
        }
        pending.clear();
    }
    pending.extend_from_slice(rest);
    Ok(lines)
}

/// A model of fs/mod.rs `follow_contents`, for one line: `Some((following, id))` for a
/// line that is not blank.
fn follow_line(line: &str) -> Option<(bool, Result<FeedId, String>)> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    let (following, id) = match line.strip_prefix('-') {
        Some(rest) => (false, rest.trim()),
        None => (true, line),
    };
    Some((following, FeedId::parse(id).map_err(|e| e.to_string())))
}

fuzz_target!(|data: &[u8]| {
    let mut buffer = LineBuffer::default();
    let mut pending = Vec::new();
    let mut accepted: Vec<u8> = Vec::new();
    let mut all_lines: Vec<String> = Vec::new();
    let mut input = data;
    while let Some((&head, tail)) = input.split_first() {
        let len = ((head & 0x7f) as usize).min(tail.len());
        let publish_fails = head & 0x80 != 0;
        let write = &tail[..len];
        input = &tail[len..];
        let before = pending.clone();
        let want = model_push(&mut pending, write);
        if publish_fails {
            // split, and the publish fails: nothing is taken.
            assert_eq!(buffer.split(write), want, "split {write:?} after {before:?}");
            pending = before;
            continue;
        }
        let got = buffer.push(write);
        assert_eq!(got, want, "write {write:?} after {before:?}");
        if let Ok(lines) = got {
            accepted.extend_from_slice(write);
            all_lines.extend(lines);
        } else {
            assert_eq!(pending, before, "a failed write changed the model");
        }
    }
    let tail = buffer.last_line();
    let want_tail = if pending.is_empty() {
        Ok(None)
    } else {
        String::from_utf8(pending.clone())
            .map(|s| Some(strip_cr(s)))
            .map_err(|_| LineError::NotUtf8 { line: 1 })
    };
    assert_eq!(tail, want_tail);
    assert_eq!(buffer.last_line(), tail, "last_line leaves the line buffered");
    buffer.clear();
    assert_eq!(buffer.last_line(), Ok(None), "clear empties the buffer");

    // Without carriage returns, the lines and the tail are the input.
    if !accepted.contains(&b'\r') {
        if let Ok(tail) = &tail {
            let mut rebuilt = String::new();
            for line in &all_lines {
                rebuilt.push_str(line);
                rebuilt.push('\n');
            }
            rebuilt.push_str(tail.as_deref().unwrap_or(""));
            assert_eq!(rebuilt.as_bytes(), &accepted[..]);
        }
    }

    // What follow_contents makes of the lines: the contact messages, or a
    // refusal when any non-blank line is not a feed id.
    let lines: Vec<String> = all_lines.iter().cloned().chain(tail.ok().flatten()).collect();
    let want: Result<Vec<(bool, FeedId)>, String> = lines
        .iter()
        .filter_map(|line| follow_line(line))
        .map(|(following, id)| id.map(|id| (following, id)))
        .collect();
    match (follow_contents(&lines), want) {
        (Ok(contents), Ok(want)) => {
            assert_eq!(contents.len(), want.len());
            for (content, (following, feed)) in contents.iter().zip(want) {
                assert_eq!(content["type"], "contact");
                assert_eq!(content["contact"].as_str(), Some(&*feed.to_string()));
                assert_eq!(content["following"], following);
                check_content(content).expect("a contact message is valid content");
            }
        }
        (Err(_), Err(_)) => {}
        (got, want) => panic!("follow_contents gave {got:?}, expected {want:?}"),
    }
    for line in &lines {
        if let Some((_, Ok(feed))) = follow_line(line) {
            let trimmed = line.trim();
            let id = trimmed.strip_prefix('-').map_or(trimmed, str::trim);
            assert_eq!(feed.to_string(), id, "a feed id that is not its canonical text");
            // The follow file prints it back as a line; that parses again.
            let printed = format!("{feed}\n");
            assert_eq!(
                follow_line(printed.trim_end()).map(|(f, id)| (f, id.ok())),
                Some((true, Some(feed)))
            );
        }
        if let Ok(msg) = MsgId::parse(line) {
            assert_eq!(msg.to_string(), *line);
        }
    }
});
