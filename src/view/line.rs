//! How a log message becomes one line of text.
//!
//! ```text
//! 2026-11-25T10:41:31.123Z laptop source=laptop destination=nas backup finished
//! ```
//!
//! The timestamp is the author's claimed time in UTC with milliseconds, then
//! the machine's label, then every content field other than `type` and
//! `text` as `key=value` (in the content's order), then the text. Control
//! characters are escaped (`\n`, `\r`, `\t`, `\xHH`) so that one message is
//! always one line. A value that is empty or holds spaces, quotes or `=` is
//! printed as a JSON string; other values as compact JSON.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::feed::json::{js_key_order, to_js_compact};
use crate::feed::{FeedId, Message};
use crate::vocab::{LOG_TYPE, MORE_FIELD};

/// The longest line a local writer may publish (`fs::linebuf`): longer
/// lines are split across messages, and this bounds what one joins into.
pub const MAX_LOCAL_LINE: usize = 16 * 1024 * 1024;

/// The longest line a split line joins into: a local line, with room for
/// the mark of a cut. A remote author's longer line is cut here and ends
/// with `…`, so that a feed of endless `more` parts costs bounded memory.
pub const MAX_JOINED_LINE: usize = MAX_LOCAL_LINE + 4;

/// How far back a renderer that starts in the middle of a split line looks
/// for its beginning, in messages: the parts of a line of
/// [`MAX_JOINED_LINE`] written locally, with room to spare. A longer line
/// (only a hostile author writes one) is joined from this far back.
const MAX_PARTS_BACK: u64 = 8192;

/// Whether `msg` shows in log views at all.
pub fn is_log(msg: &Message) -> bool {
    msg.content_type() == Some(LOG_TYPE)
}

/// Whether `msg` is a part of a line that its feed's next message continues.
pub fn continues(msg: &Message) -> bool {
    is_log(msg) && msg.content().get(MORE_FIELD) == Some(&Value::Bool(true))
}

/// The `text` field of a log message, or the empty string.
pub fn text_of(msg: &Message) -> &str {
    msg.content()
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Renders a complete log line, newline included. `text` is the whole text,
/// which for a split line is the concatenation of all its parts.
pub fn render(label: &str, msg: &Message, text: &str) -> Vec<u8> {
    let mut out = String::with_capacity(64 + text.len());
    out.push_str(&format_timestamp(msg.timestamp));
    out.push(' ');
    out.push_str(label);
    if let Some(map) = msg.content().as_object() {
        for (key, value) in js_key_order(map) {
            if key == "type" || key == "text" || key == MORE_FIELD {
                continue;
            }
            out.push(' ');
            escape_into(&mut out, key);
            out.push('=');
            match value {
                Value::String(s) if !needs_quotes(s) => escape_into(&mut out, s),
                other => escape_into(&mut out, &to_js_compact(other)),
            }
        }
    }
    out.push(' ');
    escape_into(&mut out, text);
    out.push('\n');
    out.into_bytes()
}

/// `2026-11-25T10:41:31.123Z`, or the raw number for times chrono cannot show.
pub fn format_timestamp(ms: f64) -> String {
    let whole = ms.floor();
    if whole.is_finite() && whole.abs() < 8.0e15 {
        if let Some(t) = chrono::DateTime::from_timestamp_millis(whole as i64) {
            return t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        }
    }
    format!("{ms}")
}

fn needs_quotes(s: &str) -> bool {
    s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == '"' || c == '=')
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// A feed's label: its self-given name made safe, or its id made safe.
pub fn label(feed: &FeedId, names: &HashMap<FeedId, String>) -> String {
    label_from(feed, names.get(feed))
}

fn label_from(feed: &FeedId, name: Option<&String>) -> String {
    name.and_then(|name| safe_name(name))
        .unwrap_or_else(|| feed.file_safe())
}

/// `name` as one path component and one whitespace-free word: `/`, control
/// characters and white space become `_`. `None` when nothing usable is left.
pub fn safe_name(name: &str) -> Option<String> {
    let cleaned: String = name
        .trim()
        .chars()
        .map(|c| {
            if c == '/' || c.is_control() || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .take(64)
        .collect();
    match cleaned.as_str() {
        "" | "." | ".." => None,
        _ => Some(cleaned),
    }
}

/// Turns the messages of every feed into log lines, rejoining split lines.
///
/// Holds the names it has seen and, for each feed, the last message it
/// rendered and the unfinished parts of a split line, so messages must be
/// fed in each feed's sequence order.
///
/// A batch is rendered before the store commits it, so what rendering
/// learns goes first into a [`RenderOverlay`], which the renderer takes in
/// only once the batch has committed: a refused batch teaches it nothing.
#[derive(Default)]
pub struct LineRenderer {
    names: HashMap<FeedId, String>,
    last: HashMap<FeedId, LastSeen>,
}

/// The last message of a feed the renderer saw.
#[derive(Clone)]
struct LastSeen {
    sequence: u64,
    /// The text of the split line it left unfinished, if any.
    partial: Option<String>,
}

/// What rendering one batch learned, not yet committed.
#[derive(Default)]
pub struct RenderOverlay {
    names: HashMap<FeedId, String>,
    last: HashMap<FeedId, LastSeen>,
}

impl LineRenderer {
    /// A renderer that knows these names.
    pub fn new(names: HashMap<FeedId, String>) -> Self {
        LineRenderer {
            names,
            last: HashMap::new(),
        }
    }

    /// The names it knows.
    pub fn names(&self) -> &HashMap<FeedId, String> {
        &self.names
    }

    /// Renders `msg` and learns from it at once: for messages known to be
    /// stored (an index rebuild from the log).
    pub fn render(
        &mut self,
        msg: &Message,
        earlier: impl Fn(&FeedId, u64) -> Option<Message>,
    ) -> Option<Vec<u8>> {
        let mut overlay = RenderOverlay::default();
        let line = self.render_pending(&mut overlay, msg, earlier);
        self.commit(overlay);
        line
    }

    /// The line `msg` completes, if any, learning into `overlay` only.
    /// `earlier` fetches an earlier message of the same feed when a split
    /// line began before this renderer started.
    pub fn render_pending(
        &self,
        overlay: &mut RenderOverlay,
        msg: &Message,
        earlier: impl Fn(&FeedId, u64) -> Option<Message>,
    ) -> Option<Vec<u8>> {
        if let Some(name) = crate::store::self_given_name(msg) {
            overlay.names.insert(msg.author, name.to_string());
        }
        let before = overlay
            .last
            .insert(
                msg.author,
                LastSeen {
                    sequence: msg.sequence,
                    partial: None,
                },
            )
            .or_else(|| self.last.get(&msg.author).cloned());
        if !is_log(msg) {
            return None;
        }
        // Only a renderer that missed the previous message (it started
        // after it) has to look for unfinished parts in the store.
        let mut text = match before {
            Some(last) if last.sequence + 1 == msg.sequence => last.partial.unwrap_or_default(),
            _ => parts_before(msg, &earlier),
        };
        push_capped(&mut text, text_of(msg));
        if continues(msg) {
            if let Some(last) = overlay.last.get_mut(&msg.author) {
                last.partial = Some(text);
            }
            return None;
        }
        let name = overlay
            .names
            .get(&msg.author)
            .or_else(|| self.names.get(&msg.author));
        Some(render(&label_from(&msg.author, name), msg, &text))
    }

    /// Takes in what a committed batch's rendering learned.
    pub fn commit(&mut self, overlay: RenderOverlay) {
        self.names.extend(overlay.names);
        self.last.extend(overlay.last);
    }
}

/// Appends `part` to a joined line, keeping it within [`MAX_JOINED_LINE`]
/// (cut at a character boundary and marked with `…`).
fn push_capped(text: &mut String, part: &str) {
    const MARK: &str = "…";
    let room = MAX_JOINED_LINE - MARK.len();
    if text.len() > room {
        return; // cut and marked already
    }
    if text.len() + part.len() <= room {
        text.push_str(part);
        return;
    }
    let mut end = room - text.len();
    while !part.is_char_boundary(end) {
        end -= 1;
    }
    text.push_str(&part[..end]);
    text.push_str(MARK);
}

/// The text of the unfinished parts just before `msg`, read back from the
/// store: first back to where the line began (at most [`MAX_PARTS_BACK`]
/// messages), then forward, so that only [`MAX_JOINED_LINE`] is held.
fn parts_before(msg: &Message, earlier: &impl Fn(&FeedId, u64) -> Option<Message>) -> String {
    let mut first = msg.sequence;
    while first > 1 && msg.sequence - first < MAX_PARTS_BACK {
        match earlier(&msg.author, first - 1) {
            Some(prev) if continues(&prev) => first -= 1,
            _ => break,
        }
    }
    let mut text = String::new();
    for seq in first..msg.sequence {
        match earlier(&msg.author, seq) {
            Some(part) => push_capped(&mut text, text_of(&part)),
            None => break,
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::Keypair;
    use serde_json::json;

    fn signed(content: Value) -> Message {
        Message::sign(
            &Keypair::from_seed(&[7; 32]),
            None,
            1_764_067_291_123.0,
            content,
        )
        .expect("signs")
    }

    #[test]
    fn joined_lines_are_capped_at_a_character_boundary() {
        let mut text = String::new();
        let part = "é".repeat(4000);
        while text.len() < MAX_JOINED_LINE {
            let before = text.len();
            push_capped(&mut text, &part);
            if text.len() == before {
                break;
            }
        }
        assert!(text.len() <= MAX_JOINED_LINE);
        assert!(text.ends_with('…'), "a cut line is marked");
        let len = text.len();
        push_capped(&mut text, "more");
        assert_eq!(text.len(), len, "nothing is added past the cap");
    }

    #[test]
    fn fields_come_before_the_text_and_control_characters_are_escaped() {
        let msg = signed(json!({
            "type": "log",
            "source": "laptop",
            "destination": "my nas",
            "exit": 2,
            "text": " backup\nfinished\tok \u{1b}[0m",
        }));
        let line = String::from_utf8(render("laptop", &msg, text_of(&msg))).expect("utf8");
        assert_eq!(
            line,
            "2025-11-25T10:41:31.123Z laptop source=laptop destination=\"my nas\" exit=2  backup\\nfinished\\tok \\x1b[0m\n"
        );
    }

    #[test]
    fn names_are_made_safe() {
        assert_eq!(
            safe_name("my laptop/home").as_deref(),
            Some("my_laptop_home")
        );
        assert_eq!(safe_name(".."), None);
        assert_eq!(safe_name("  "), None);
    }

    #[test]
    fn split_lines_are_rejoined() {
        let keys = Keypair::from_seed(&[9; 32]);
        let first = Message::sign(
            &keys,
            None,
            1.0,
            json!({"type":"log","text":"abc","more":true}),
        )
        .expect("signs");
        let second = Message::sign(
            &keys,
            Some(&first.tip()),
            2.0,
            json!({"type":"log","text":"def"}),
        )
        .expect("signs");
        let mut renderer = LineRenderer::default();
        assert_eq!(renderer.render(&first, |_, _| None), None);
        let line = renderer
            .render(&second, |_, _| panic!("the renderer saw the first part"))
            .expect("a line");
        assert!(String::from_utf8_lossy(&line).ends_with(" abcdef\n"));
        // A line after a complete one needs no look-up either.
        let third = Message::sign(
            &keys,
            Some(&second.tip()),
            3.0,
            json!({"type":"log","text":"ghi"}),
        )
        .expect("signs");
        let line = renderer
            .render(&third, |_, _| panic!("the renderer saw the line before"))
            .expect("a line");
        assert!(String::from_utf8_lossy(&line).ends_with(" ghi\n"));

        // A fresh renderer finds the first part through the store.
        let mut fresh = LineRenderer::default();
        let first_clone = first.clone();
        let line = fresh
            .render(&second, move |_, seq| {
                (seq == 1).then(|| first_clone.clone())
            })
            .expect("a line");
        assert!(String::from_utf8_lossy(&line).ends_with(" abcdef\n"));
    }
}
