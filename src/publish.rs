//! What a written line becomes: the same rules for the mount's `publish`
//! file and for `scuttlefs publish --stdin`.

use serde_json::{Map, Value};

use crate::vocab::LOG_TYPE;

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
}
