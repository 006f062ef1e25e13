//! The background merge: the tail's late lines merged into the prefix, in
//! timestamp order, either rewritten in place from the first insertion
//! point (while no handle holds the generation) or written whole as the
//! next generation.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::*;

/// A tail no line has joined for this long is merged.
pub(super) const QUIET: Duration = Duration::from_secs(1);

/// A tail of this many lines is merged whatever else holds: its entries are
/// what the merged file keeps in memory.
pub(super) const MAX_TAIL_LINES: usize = 1 << 20;

/// Below this, a growing tail waits for quiet.
pub(super) const MIN_TAIL_BYTES: u64 = 1 << 20;

/// The most a merge rewrites in place: the copy over the generation runs
/// under the lock that appends and opens take. Past it, the next
/// generation is written whole.
pub(super) const MAX_REWRITE: u64 = 64 << 20;

/// One merge: a generation's prefix and the sorted tail.
pub(super) struct Merge<'a> {
    old: &'a Generation,
    sorted_lines: u64,
    sorted_len: u64,
    tail: &'a [TailLine],
    merged_len: u64,
}

/// How a rewrite in place went.
pub(super) enum Rewrite {
    Done,
    /// A handle holds the generation: nothing was written.
    Held,
    /// A read or write failed; `touched` once the generation's bytes
    /// may have changed.
    Failed {
        touched: bool,
        error: io::Error,
    },
}

/// What a merge wrote.
pub(super) enum Written {
    /// The next generation, whole.
    Next(Generation),
    /// The part from the first insertion point on, beside the generation.
    Side(Side),
}

/// A merge's part from its first insertion point on, in files beside the
/// generation it is to be copied over.
pub(super) struct Side {
    lines_path: PathBuf,
    keys_path: PathBuf,
    lines: File,
    keys: File,
    /// The first line the tail goes before, and the byte it starts at.
    first: u64,
    first_byte: u64,
    lines_len: u64,
    keys_len: u64,
}

impl Side {
    pub(super) fn remove(&self) {
        let _ = std::fs::remove_file(&self.lines_path);
        let _ = std::fs::remove_file(&self.keys_path);
    }
}

impl MergedFile {
    /// Whether a merge is due: lines wait in the tail, and either none has
    /// joined them for a while or there are enough of them to be worth it.
    pub fn merge_due(&self) -> bool {
        let state = self.lock();
        !state.merging
            && !state.damaged
            && !state.tail.is_empty()
            && (state.last_line_at.elapsed() >= QUIET
                || state.tail.len() >= MAX_TAIL_LINES
                || (state.tail_bytes >= MIN_TAIL_BYTES && state.tail_bytes * 4 >= state.sorted_len))
    }

    /// Merges the tail into the prefix, in timestamp order. Lines keep
    /// arriving meanwhile; they follow. Returns whether it merged.
    ///
    /// When no handle holds the current generation (and it is not the line
    /// file), the part from the first insertion point on is written beside
    /// it and then copied over it: the work follows the late lines and
    /// what they jump over, not the file. `forget_checkpoint` runs first,
    /// since a checkpoint naming the generation would no longer describe
    /// it. Otherwise (a handle reads it, such as a `tail -f` opened before)
    /// the next generation is written whole, and the handle keeps the old.
    pub fn merge(&self, forget_checkpoint: &dyn Fn() -> io::Result<()>) -> io::Result<bool> {
        let (old, sorted_lines, sorted_len, tail, merged_len, may_rewrite) = {
            let mut state = self.lock();
            if state.damaged {
                return Err(damaged());
            }
            if state.merging || state.tail.is_empty() {
                return Ok(false);
            }
            state.merging = true;
            // Moved, not copied: at ten million lines the tail is a
            // million entries, and lines keep arriving during the merge.
            let mut tail = std::mem::take(&mut state.tail);
            tail.sort_unstable_by_key(|t| (t.ts, t.pos));
            state.merging_tail = Arc::new(tail);
            // Only the state holds the generation: no handle reads it.
            let unheld = Arc::strong_count(&state.current) == 1;
            let may_rewrite = unheld && !state.current.is_line_file() && !state.rewrite_refused;
            state.rewrite_refused = false;
            (
                state.current.clone(),
                state.sorted_lines,
                state.sorted_len,
                Arc::clone(&state.merging_tail),
                state.len,
                may_rewrite,
            )
        };
        let merge = Merge {
            old: &old,
            sorted_lines,
            sorted_len,
            tail: &tail,
            merged_len,
        };
        let result = merge.insertion().and_then(|(first, first_byte)| {
            if may_rewrite && merged_len - first_byte <= MAX_REWRITE {
                let side = self.write_side(&merge, first, first_byte)?;
                if let Err(e) = forget_checkpoint() {
                    side.remove();
                    return Err(e);
                }
                Ok(Written::Side(side))
            } else {
                self.write_next(&merge, first, first_byte)
                    .map(Written::Next)
            }
        });
        let mut state = self.lock();
        state.merging = false;
        let next = match result {
            Ok(Written::Next(next)) => next,
            Ok(Written::Side(side)) => {
                let rewrite = MergedFile::rewrite_in_place(&state, &old, &side);
                side.remove();
                drop(old);
                return match rewrite {
                    Rewrite::Done => {
                        self.merged(&mut state, sorted_lines, &tail, merged_len)?;
                        Ok(true)
                    }
                    Rewrite::Held => {
                        // A handle opened meanwhile: the next try writes
                        // the next generation whole.
                        put_back(&mut state, &tail);
                        state.rewrite_refused = true;
                        Ok(false)
                    }
                    Rewrite::Failed {
                        touched: false,
                        error,
                    } => {
                        put_back(&mut state, &tail);
                        Err(error)
                    }
                    Rewrite::Failed { error, .. } => {
                        mark_damaged(&mut state);
                        Err(error)
                    }
                };
            }
            Err(e) => {
                put_back(&mut state, &tail);
                for kind in ["sorted", "keys"] {
                    let _ = std::fs::remove_file(generation_path(&self.base, kind, old.number + 1));
                }
                return Err(e);
            }
        };
        // Lines that arrived during the merge follow, in arrival order.
        if let Err(e) = copy_range(&old.lines, &next.lines, merged_len, state.len - merged_len) {
            for path in &next.own_paths {
                let _ = std::fs::remove_file(path);
            }
            put_back(&mut state, &tail);
            return Err(e);
        }
        let replaced = std::mem::replace(&mut state.current, Arc::new(next));
        if !replaced.is_line_file() {
            state.older.push(Arc::downgrade(&replaced));
        }
        if state.pinned.contains(&replaced.number) {
            state
                .retired
                .push((replaced.number, replaced.own_paths.clone()));
        } else {
            for path in &replaced.own_paths {
                let _ = std::fs::remove_file(path);
            }
        }
        drop(replaced);
        self.merged(&mut state, sorted_lines, &tail, merged_len)?;
        Ok(true)
    }

    /// The state after a merge of `tail` into the prefix of `sorted_lines`
    /// lines, which the current generation now holds up to `merged_len`.
    pub(super) fn merged(
        &self,
        state: &mut State,
        sorted_lines: u64,
        tail: &[TailLine],
        merged_len: u64,
    ) -> io::Result<()> {
        // Every line in the tail now arrived during the merge.
        let arrived = std::mem::take(&mut state.tail);
        state.last_ts = tail
            .iter()
            .map(|t| t.ts)
            .chain(std::iter::once(state.last_ts))
            .max()
            .unwrap_or(0);
        state.sorted_len = merged_len;
        state.sorted_lines = sorted_lines + tail.len() as u64;
        state.merging_tail = Arc::new(Vec::new());
        state.tail_bytes = 0;
        state.epoch += 1;
        // The newcomers again: those in order extend the new prefix.
        let lines: Vec<NewLine> = arrived
            .iter()
            .map(|t| NewLine {
                ts: t.ts,
                len: t.len,
            })
            .collect();
        let filed = file_lines(state, &lines, merged_len);
        if filed.is_err() {
            // The state counts keys the file may lack.
            mark_damaged(state);
        }
        filed
    }

    /// Writes the next generation whole: the prefix up to the first
    /// insertion point copied, then the merge.
    pub(super) fn write_next(
        &self,
        merge: &Merge,
        first: u64,
        first_byte: u64,
    ) -> io::Result<Generation> {
        let number = merge.old.number + 1;
        let lines_path = generation_path(&self.base, "sorted", number);
        let keys_path = generation_path(&self.base, "keys", number);
        let lines = create(&lines_path)?;
        let keys = create(&keys_path)?;
        copy_range(&merge.old.lines, &lines, 0, first_byte)?;
        copy_range(&merge.old.keys, &keys, 0, first * KEY_ENTRY)?;
        merge.write_from(first, first_byte, (&lines, first_byte), (&keys, first))?;
        Ok(Generation {
            number,
            lines: Arc::new(lines),
            keys,
            own_paths: vec![lines_path, keys_path],
        })
    }

    /// Writes the merge from the first insertion point on to side files,
    /// to be copied over the current generation.
    pub(super) fn write_side(
        &self,
        merge: &Merge,
        first: u64,
        first_byte: u64,
    ) -> io::Result<Side> {
        let lines_path = side_path(&self.base, "sorted", merge.old.number);
        let keys_path = side_path(&self.base, "keys", merge.old.number);
        let lines = create(&lines_path)?;
        let keys = match create(&keys_path) {
            Ok(keys) => keys,
            Err(e) => {
                let _ = std::fs::remove_file(&lines_path);
                return Err(e);
            }
        };
        let side = Side {
            lines_path,
            keys_path,
            lines,
            keys,
            first,
            first_byte,
            lines_len: merge.merged_len - first_byte,
            keys_len: (merge.sorted_lines + merge.tail.len() as u64 - first) * KEY_ENTRY,
        };
        let written = merge.write_from(first, first_byte, (&side.lines, 0), (&side.keys, 0));
        match written {
            Ok(()) => Ok(side),
            Err(e) => {
                side.remove();
                Err(e)
            }
        }
    }

    /// Copies `side` over the current generation, which must be `old` and
    /// held by nothing else (the caller holds the state's lock).
    pub(super) fn rewrite_in_place(state: &State, old: &Arc<Generation>, side: &Side) -> Rewrite {
        // Held by the state and by `old`: nothing else reads it.
        if !Arc::ptr_eq(&state.current, old) || Arc::strong_count(old) != 2 {
            return Rewrite::Held;
        }
        let mut buffer = vec![0u8; PositionedWriter::SIZE];
        let mut touched = false;
        let copies = [
            (&side.lines, &*old.lines, side.first_byte, side.lines_len),
            (&side.keys, &old.keys, side.first * KEY_ENTRY, side.keys_len),
        ];
        for (from, to, at, len) in copies {
            let mut done = 0;
            while done < len {
                let n = (len - done).min(buffer.len() as u64) as usize;
                if let Err(error) = from.read_exact_at(&mut buffer[..n], done) {
                    return Rewrite::Failed { touched, error };
                }
                touched = true;
                if let Err(error) = to.write_all_at(&buffer[..n], at + done) {
                    return Rewrite::Failed { touched, error };
                }
                done += n as u64;
            }
        }
        Rewrite::Done
    }
}

impl Merge<'_> {
    /// The first line the tail goes before, and the byte it starts at.
    pub(super) fn insertion(&self) -> io::Result<(u64, u64)> {
        let mut keys = KeyReader::new(&self.old.keys, self.sorted_lines);
        let first = keys.upper_bound(self.tail[0].ts, 0)?;
        Ok((first, keys.end_before(first)?))
    }

    /// Writes the merged lines from line `first` (byte `first_byte`) on to
    /// `lines` from the offset given, and their keys (each line's end as
    /// it falls in the merged file) to `keys` from the entry given.
    pub(super) fn write_from(
        &self,
        first: u64,
        first_byte: u64,
        lines: (&File, u64),
        keys: (&File, u64),
    ) -> io::Result<()> {
        let mut reader = KeyReader::new(&self.old.keys, self.sorted_lines);
        let mut out = PositionedWriter::new(lines.0, lines.1);
        let mut keys_out = PositionedWriter::new(keys.0, keys.1 * KEY_ENTRY);
        let (mut line, mut byte, mut shift) = (first, first_byte, 0u64);
        let mut buffer = Vec::new();
        for t in self.tail {
            let next = reader.upper_bound(t.ts, line)?;
            for i in line..next {
                let (ts, end) = reader.entry(i)?;
                keys_out.put_key(ts, end + shift)?;
            }
            let end = reader.end_before(next)?;
            out.copy_from(&self.old.lines, byte, span(byte, end)?, &mut buffer)?;
            (line, byte) = (next, end);
            out.copy_from(&self.old.lines, t.pos, u64::from(t.len), &mut buffer)?;
            shift += u64::from(t.len);
            keys_out.put_key(t.ts, byte + shift)?;
        }
        for i in line..self.sorted_lines {
            let (ts, end) = reader.entry(i)?;
            keys_out.put_key(ts, end + shift)?;
        }
        out.copy_from(
            &self.old.lines,
            byte,
            span(byte, self.sorted_len)?,
            &mut buffer,
        )?;
        out.flush()?;
        keys_out.flush()?;
        let merged_to = first_byte + (out.at - lines.1);
        let keyed_to = keys_out.at / KEY_ENTRY - keys.1 + first;
        if keyed_to != self.sorted_lines + self.tail.len() as u64 {
            return Err(io::Error::other(format!(
                "merged {keyed_to} keys, not {}",
                self.sorted_lines + self.tail.len() as u64
            )));
        }
        if merged_to != self.merged_len {
            return Err(io::Error::other(format!(
                "merged {merged_to} bytes, not {}",
                self.merged_len
            )));
        }
        Ok(())
    }
}

/// After a failed merge: the lines it was merging wait in the tail again.
pub(super) fn put_back(state: &mut State, merging: &[TailLine]) {
    let arrived = std::mem::take(&mut state.tail);
    state.tail = merging.to_vec();
    state.tail.extend(arrived);
    state.merging_tail = Arc::new(Vec::new());
}

/// Writes sequentially at a position, in large pieces.
pub(super) struct PositionedWriter<'a> {
    file: &'a File,
    at: u64,
    buffer: Vec<u8>,
}

impl<'a> PositionedWriter<'a> {
    const SIZE: usize = 1 << 20;

    pub(super) fn new(file: &'a File, at: u64) -> Self {
        PositionedWriter {
            file,
            at,
            buffer: Vec::with_capacity(Self::SIZE),
        }
    }

    pub(super) fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= Self::SIZE {
            self.flush()?;
        }
        Ok(())
    }

    pub(super) fn put_key(&mut self, ts: u64, end: u64) -> io::Result<()> {
        self.put(&ts.to_be_bytes())?;
        self.put(&end.to_be_bytes())
    }

    /// Copies `len` bytes at `pos` of `from`.
    pub(super) fn copy_from(
        &mut self,
        from: &File,
        pos: u64,
        len: u64,
        scratch: &mut Vec<u8>,
    ) -> io::Result<()> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(Self::SIZE as u64) as usize;
            scratch.resize(n, 0);
            from.read_exact_at(scratch, pos + done)?;
            self.put(scratch)?;
            done += n as u64;
        }
        Ok(())
    }

    pub(super) fn flush(&mut self) -> io::Result<()> {
        self.file.write_all_at(&self.buffer, self.at)?;
        self.at += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }
}

/// Copies `len` bytes at `pos` of `from` to the same offset of `to`.
pub(super) fn copy_range(from: &File, to: &File, pos: u64, len: u64) -> io::Result<()> {
    let mut writer = PositionedWriter::new(to, pos);
    writer.copy_from(from, pos, len, &mut Vec::new())?;
    writer.flush()
}
