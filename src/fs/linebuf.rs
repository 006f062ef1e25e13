//! Splitting what one handle writes into complete lines.

/// The longest unfinished line a handle may hold: far above any message
/// (long lines are split across messages), far below memory trouble.
pub const MAX_PENDING: usize = crate::view::line::MAX_LOCAL_LINE;

/// Why a write cannot be taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A line is not valid UTF-8.
    #[error("line {line} of this write is not valid UTF-8")]
    NotUtf8 {
        /// 1-based line number within the write.
        line: usize,
    },
    /// An unfinished line grew past [`MAX_PENDING`].
    #[error("a line longer than {MAX_PENDING} bytes")]
    TooLong,
}

/// One handle's unfinished last line.
#[derive(Default, Debug)]
pub struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    /// The lines `data` completes, without their newlines (and without a
    /// `\r` before them), leaving the buffer as it is: the caller publishes
    /// them and only then lets the buffer [`take`](Self::take) `data`, so
    /// that a failed publish loses nothing buffered before it.
    pub fn split(&self, data: &[u8]) -> Result<Vec<String>, LineError> {
        let (complete, rest) = split_at_last_newline(data);
        let rest_line = lines_in(complete) + 1;
        // The unfinished tail may end inside a character, which the next
        // write completes; anything else invalid fails now, not at close.
        let tail_ok = if complete.is_empty() {
            let from = last_char_start(&self.pending);
            tail_is_valid(&[&self.pending[from..], rest].concat())
        } else {
            tail_is_valid(rest)
        };
        if !tail_ok {
            return Err(LineError::NotUtf8 { line: rest_line });
        }
        let pending_after = if complete.is_empty() {
            self.pending.len() + rest.len()
        } else {
            rest.len()
        };
        if pending_after > MAX_PENDING {
            return Err(LineError::TooLong);
        }
        let mut lines = Vec::with_capacity(lines_in(complete));
        if !complete.is_empty() {
            for (n, raw) in complete[..complete.len() - 1]
                .split(|b| *b == b'\n')
                .enumerate()
            {
                let text = if n == 0 && !self.pending.is_empty() {
                    String::from_utf8([&self.pending[..], raw].concat()).ok()
                } else {
                    std::str::from_utf8(raw).ok().map(str::to_string)
                };
                let Some(text) = text else {
                    return Err(LineError::NotUtf8 { line: n + 1 });
                };
                lines.push(without_cr(text));
            }
        }
        Ok(lines)
    }

    /// Takes `data`, whose lines [`split`](Self::split) returned and the
    /// caller used: keeps what it leaves unfinished.
    pub fn take(&mut self, data: &[u8]) {
        let (complete, rest) = split_at_last_newline(data);
        if !complete.is_empty() {
            self.pending.clear();
        }
        self.pending.extend_from_slice(rest);
    }

    /// [`split`](Self::split) and [`take`](Self::take) at once, for a
    /// caller that cannot fail after splitting. On error nothing is taken.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<String>, LineError> {
        let lines = self.split(data)?;
        self.take(data);
        Ok(lines)
    }

    /// The unfinished last line, if any, leaving it buffered: the caller
    /// [`clear`](Self::clear)s it once published.
    pub fn last_line(&self) -> Result<Option<String>, LineError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        match std::str::from_utf8(&self.pending) {
            Ok(s) => Ok(Some(without_cr(s.to_string()))),
            Err(_) => Err(LineError::NotUtf8 { line: 1 }),
        }
    }

    /// Forgets the unfinished last line.
    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

/// `data` up to and including its last newline, and what follows it.
fn split_at_last_newline(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().rposition(|b| *b == b'\n') {
        Some(i) => (&data[..=i], &data[i + 1..]),
        None => (&data[..0], data),
    }
}

fn without_cr(mut line: String) -> String {
    if line.ends_with('\r') {
        line.pop();
    }
    line
}

fn lines_in(data: &[u8]) -> usize {
    data.iter().filter(|b| **b == b'\n').count()
}

/// Where the last, possibly unfinished, character of `bytes` starts.
fn last_char_start(bytes: &[u8]) -> usize {
    let floor = bytes.len().saturating_sub(3);
    (floor..bytes.len())
        .rev()
        .find(|i| bytes[*i] & 0b1100_0000 != 0b1000_0000)
        .unwrap_or(bytes.len())
}

/// Valid UTF-8, except perhaps for an unfinished character at the end.
fn tail_is_valid(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_writes_are_joined() {
        let mut buf = LineBuffer::default();
        assert_eq!(buf.push(b"ab").expect("ok"), Vec::<String>::new());
        assert_eq!(buf.push(b"c\nde\r\nf").expect("ok"), vec!["abc", "de"]);
        assert_eq!(buf.last_line().expect("ok"), Some("f".to_string()));
        buf.clear();
        assert_eq!(buf.last_line().expect("ok"), None);
    }

    #[test]
    fn a_character_split_across_writes_is_fine() {
        let mut buf = LineBuffer::default();
        let smile = "😀".as_bytes();
        assert!(buf.push(&smile[..2]).expect("ok").is_empty());
        assert_eq!(
            buf.push(&[&smile[2..], b"\n"].concat()).expect("ok"),
            vec!["😀"]
        );
    }

    #[test]
    fn invalid_utf8_takes_nothing_from_the_write() {
        let mut buf = LineBuffer::default();
        buf.push(b"keep").expect("ok");
        assert_eq!(
            buf.push(b"\n\xff\xfe\nmore"),
            Err(LineError::NotUtf8 { line: 2 })
        );
        assert_eq!(buf.push(b"\n").expect("ok"), vec!["keep"]);
        assert_eq!(buf.push(b"x\xffy"), Err(LineError::NotUtf8 { line: 1 }));
    }

    #[test]
    fn split_leaves_the_buffer_alone_until_take() {
        let mut buf = LineBuffer::default();
        buf.push(b"half").expect("ok");
        // A publish that fails after split: the caller does not take.
        assert_eq!(buf.split(b" line\nnext").expect("ok"), vec!["half line"]);
        assert_eq!(buf.last_line().expect("ok"), Some("half".to_string()));
        // Retried, it gives the same line once, and keeps the new tail.
        let data = b" line\nnext";
        assert_eq!(buf.split(data).expect("ok"), vec!["half line"]);
        buf.take(data);
        assert_eq!(buf.last_line().expect("ok"), Some("next".to_string()));
        // Reading the last line does not consume it.
        assert_eq!(buf.last_line().expect("ok"), Some("next".to_string()));
        assert_eq!(buf.push(b"\r\n").expect("ok"), vec!["next"]);
        assert_eq!(buf.last_line().expect("ok"), None);
    }
}
