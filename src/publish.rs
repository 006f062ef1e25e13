//! What a written line becomes: the same rules for the mount's `publish`
//! file and for `scuttlefs publish --stdin`.

use serde_json::{Map, Value};

use crate::feed::json::{js_pretty_utf16_len, to_js_pretty, utf16_len};
use crate::feed::{FeedError, FeedTip, Keypair, Message, MAX_MESSAGE_UTF16};
use crate::vocab::{LOG_TYPE, MORE_FIELD};

/// Room left for the sequence and timestamp to grow between parts.
const SPLIT_MARGIN: usize = 64;

/// The content for one written line, or `None` for an empty line.
///
/// A line that is a JSON object is the content as written (`type` defaults
/// to `"log"`). Any other line is the `text` of a log message. `fields` are
/// added to plain lines (the `--source`, `--destination` of `publish
/// --stdin`), and `fields.type`, if given, replaces `"log"`.
pub fn content_for_line(line: &str, fields: &Map<String, Value>) -> Option<Value> {
    if line.is_empty() {
        return None;
    }
    if line.trim_start().starts_with('{') {
        if let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(line) {
            if !map.contains_key("type") {
                map.insert("type".into(), Value::String(LOG_TYPE.into()));
            }
            return Some(Value::Object(map));
        }
    }
    Some(text_content(line, fields))
}

/// The content for one line of `publish --stdin`, or `None` for an empty
/// line: always the `text` of a message with `fields`, even when the line
/// looks like JSON, because a backup script's output is text.
pub fn content_for_stdin_line(line: &str, fields: &Map<String, Value>) -> Option<Value> {
    (!line.is_empty()).then(|| text_content(line, fields))
}

/// `line` as the `text` of a message with `fields`; `fields.type`, if
/// given, replaces `"log"`.
fn text_content(line: &str, fields: &Map<String, Value>) -> Value {
    let mut map = Map::with_capacity(fields.len() + 2);
    map.insert(
        "type".into(),
        fields
            .get("type")
            .cloned()
            .unwrap_or_else(|| Value::String(LOG_TYPE.into())),
    );
    for (k, v) in fields {
        if k != "type" && k != "text" {
            map.insert(k.clone(), v.clone());
        }
    }
    map.insert("text".into(), Value::String(line.to_string()));
    Value::Object(map)
}

/// Everything in a signed message besides its content, in UTF-16 units, with
/// room to spare: previous, author, signature, the other fields and keys.
const ENVELOPE_BOUND: usize = 600;

/// `content` as one message, or as several when it is a log line whose text
/// is too long for one. Other oversize content is refused.
/// Deterministic for the same arguments: `publish_with` splits every
/// content twice and relies on both giving the same parts.
pub fn split_for_size(
    keys: &Keypair,
    tip: Option<&FeedTip>,
    now: f64,
    content: Value,
) -> Result<Vec<Value>, FeedError> {
    crate::feed::message::check_content(&content)?;
    // Cheap bound first: most content is far below the limit. Inside a
    // message, the content is nested one level deep.
    if js_pretty_utf16_len(&content, 1) + ENVELOPE_BOUND < MAX_MESSAGE_UTF16 {
        return Ok(vec![content]);
    }
    let is_log_text = content.get("type").and_then(Value::as_str) == Some(LOG_TYPE)
        && content.get("text").is_some_and(Value::is_string);
    let probe = Message::sign(keys, tip, now, content.clone());
    match probe {
        // The margin covers a longer sequence number by the time it is signed.
        Ok(msg) if utf16_len(&to_js_pretty(&msg.value)) + SPLIT_MARGIN <= MAX_MESSAGE_UTF16 => {
            return Ok(vec![content])
        }
        Ok(msg) if !is_log_text => {
            return Err(FeedError::TooLarge(utf16_len(&to_js_pretty(&msg.value))))
        }
        Ok(_) => {}
        Err(FeedError::TooLarge(size)) if !is_log_text => return Err(FeedError::TooLarge(size)),
        Err(FeedError::TooLarge(_)) => {}
        Err(other) => return Err(other),
    }
    let text = content["text"].as_str().unwrap_or("").to_string();
    let mut empty = content.clone();
    empty["text"] = Value::String(String::new());
    empty[MORE_FIELD] = Value::Bool(true);
    let overhead = utf16_len(&to_js_pretty(
        &Message::sign(keys, tip, now, empty.clone())?.value,
    ));
    let budget = MAX_MESSAGE_UTF16.saturating_sub(overhead + SPLIT_MARGIN);
    if budget < 16 {
        return Err(FeedError::TooLarge(overhead));
    }
    let chunks = chunk_by_json_length(&text, budget);
    let last = chunks.len() - 1;
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut part = content.clone();
            part["text"] = Value::String(chunk.to_string());
            if i < last {
                part[MORE_FIELD] = Value::Bool(true);
            }
            part
        })
        .collect())
}

/// Splits `text` into pieces whose JSON-escaped UTF-16 length is at most
/// `budget`, never inside a character.
fn chunk_by_json_length(text: &str, budget: usize) -> Vec<&str> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (i, c) in text.char_indices() {
        let cost = match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf16(),
        };
        if used + cost > budget {
            chunks.push(&text[start..i]);
            start = i;
            used = 0;
        }
        used += cost;
    }
    chunks.push(&text[start..]);
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_lines_are_log_text_and_json_objects_are_content() {
        let none = Map::new();
        assert_eq!(
            content_for_line("backup done", &none),
            Some(json!({"type": "log", "text": "backup done"}))
        );
        assert_eq!(
            content_for_line(r#"{"text": "x", "exit": 1}"#, &none),
            Some(json!({"text": "x", "exit": 1, "type": "log"}))
        );
        assert_eq!(
            content_for_line("{not json", &none),
            Some(json!({"type": "log", "text": "{not json"}))
        );
        assert_eq!(content_for_line("", &none), None);
        let fields = json!({"source": "laptop"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            content_for_line("x", &fields),
            Some(json!({"type": "log", "source": "laptop", "text": "x"}))
        );
    }

    #[test]
    fn stdin_lines_are_always_text() {
        let fields = json!({"source": "nas"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            content_for_stdin_line(r#"{"exit": 1}"#, &fields),
            Some(json!({"type": "log", "source": "nas", "text": "{\"exit\": 1}"}))
        );
        assert_eq!(
            content_for_stdin_line("done", &fields),
            Some(json!({"type": "log", "source": "nas", "text": "done"}))
        );
        assert_eq!(content_for_stdin_line("", &fields), None);
    }

    #[test]
    fn chunks_respect_escapes_and_characters() {
        let text = "ab\"😀cd";
        let chunks = chunk_by_json_length(text, 3);
        assert_eq!(chunks.concat(), text);
        assert_eq!(chunks, vec!["ab", "\"", "😀c", "d"]);
    }
}
