//! Splitting what one handle writes into complete lines.

/// The longest unfinished line a handle may hold: far above any message
/// (long lines are split across messages), far below memory trouble.
pub const MAX_PENDING: usize = 16 * 1024 * 1024;

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
    /// Takes `data` and returns the lines it completes, without their
    /// newlines (and without a `\r` before them). On error nothing is
    /// taken: the buffer is as it was.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<String>, LineError> {
        let (complete, rest) = match data.iter().rposition(|b| *b == b'\n') {
            Some(i) => (&data[..=i], &data[i + 1..]),
            None => (&data[..0], data),
        };
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
                let Some(mut text) = text else {
                    return Err(LineError::NotUtf8 { line: n + 1 });
                };
                if text.ends_with('\r') {
                    text.pop();
                }
                lines.push(text);
            }
            self.pending.clear();
        }
        self.pending.extend_from_slice(rest);
        Ok(lines)
    }

    /// The unfinished last line, if any, at close.
    pub fn finish(&mut self) -> Result<Option<String>, LineError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let pending = std::mem::take(&mut self.pending);
        match String::from_utf8(pending) {
            Ok(mut s) => {
                if s.ends_with('\r') {
                    s.pop();
                }
                Ok(Some(s))
            }
            Err(_) => Err(LineError::NotUtf8 { line: 1 }),
        }
    }
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
        assert_eq!(buf.finish().expect("ok"), Some("f".to_string()));
        assert_eq!(buf.finish().expect("ok"), None);
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
}
