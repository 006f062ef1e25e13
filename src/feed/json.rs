//! A JSON printer that reproduces ECMAScript's `JSON.stringify` byte for byte.
//!
//! SSB signs and hashes `JSON.stringify(msg, null, 2)`, so any difference from
//! JavaScript (number formatting, key order, string escapes) produces ids and
//! signatures that no other peer agrees with. serde_json differs in all three,
//! hence this module.

use serde_json::{Map, Value};

/// Prints `value` exactly as `JSON.stringify(value, null, 2)` would.
pub fn to_js_pretty(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    write_value(&mut out, value, Some(0));
    out
}

/// Prints `value` exactly as `JSON.stringify(value)` would (no whitespace).
pub fn to_js_compact(value: &Value) -> String {
    let mut out = String::with_capacity(128);
    write_value(&mut out, value, None);
    out
}

/// Number of UTF-16 code units in `s`: JavaScript's `String.prototype.length`.
pub fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// The bytes of `Buffer.from(s, 'binary')`: the low byte of each UTF-16 unit.
///
/// SSB message ids hash these bytes rather than the UTF-8 encoding, a legacy
/// quirk that every implementation must reproduce.
pub fn latin1_low_bytes(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut units = [0u16; 2];
    for c in s.chars() {
        for unit in c.encode_utf16(&mut units) {
            out.push(*unit as u8);
        }
    }
    out
}

/// Formats a number as ECMAScript's `Number.prototype.toString` does.
pub fn js_number(n: f64) -> String {
    if n == 0.0 {
        // Both +0 and -0 print as "0" in JSON.stringify.
        return "0".to_string();
    }
    if !n.is_finite() {
        // JSON.stringify turns NaN and the infinities into null.
        return "null".to_string();
    }
    let mut buf = ryu_js::Buffer::new();
    buf.format_finite(n).to_string()
}

/// The order in which JavaScript enumerates an object's own keys: keys that
/// are array indices (canonical integers below 2^32 - 1) first, ascending, then
/// every other key in insertion order.
pub fn js_key_order(map: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut indices: Vec<(u32, (&String, &Value))> = Vec::new();
    let mut others: Vec<(&String, &Value)> = Vec::with_capacity(map.len());
    for (k, v) in map {
        match array_index(k) {
            Some(i) => indices.push((i, (k, v))),
            None => others.push((k, v)),
        }
    }
    if indices.is_empty() {
        return others;
    }
    indices.sort_by_key(|(i, _)| *i);
    indices
        .into_iter()
        .map(|(_, kv)| kv)
        .chain(others)
        .collect()
}

/// `Some(n)` when `key` is a canonical array index in JavaScript's sense.
fn array_index(key: &str) -> Option<u32> {
    let bytes = key.as_bytes();
    if bytes.is_empty() || bytes.len() > 10 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if bytes.len() > 1 && bytes[0] == b'0' {
        return None;
    }
    let n: u64 = key.parse().ok()?;
    // 2^32 - 1 itself is not an array index.
    if n < u64::from(u32::MAX) {
        Some(n as u32)
    } else {
        None
    }
}

fn write_value(out: &mut String, value: &Value, indent: Option<usize>) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => match n.as_f64() {
            Some(f) => out.push_str(&js_number(f)),
            None => out.push_str("null"),
        },
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, indent.map(|d| d + 1));
                write_value(out, item, indent.map(|d| d + 1));
            }
            newline(out, indent);
            out.push(']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            for (i, (k, v)) in js_key_order(map).into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, indent.map(|d| d + 1));
                write_string(out, k);
                out.push(':');
                if indent.is_some() {
                    out.push(' ');
                }
                write_value(out, v, indent.map(|d| d + 1));
            }
            newline(out, indent);
            out.push('}');
        }
    }
}

/// The UTF-16 length of `to_js_pretty(value)` if printed nested `depth`
/// levels deep (each of its lines indented `2 * depth` more spaces), found
/// without printing it.
pub fn js_pretty_utf16_len(value: &Value, depth: usize) -> usize {
    let newline = |depth: usize| 1 + 2 * depth;
    match value {
        Value::Null => 4,
        Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Number(n) => n.as_f64().map_or(4, |f| js_number(f).len()),
        Value::String(s) => js_string_utf16_len(s),
        Value::Array(items) if items.is_empty() => 2,
        Value::Object(map) if map.is_empty() => 2,
        Value::Array(items) => {
            let inner: usize = items
                .iter()
                .map(|item| newline(depth + 1) + js_pretty_utf16_len(item, depth + 1))
                .sum();
            2 + (items.len() - 1) + inner + newline(depth)
        }
        Value::Object(map) => {
            let inner: usize = map
                .iter()
                .map(|(k, v)| {
                    newline(depth + 1)
                        + js_string_utf16_len(k)
                        + 2
                        + js_pretty_utf16_len(v, depth + 1)
                })
                .sum();
            2 + (map.len() - 1) + inner + newline(depth)
        }
    }
}

/// The UTF-16 length of a string as [`write_string`] prints it.
fn js_string_utf16_len(s: &str) -> usize {
    2 + s
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf16(),
        })
        .sum::<usize>()
}

fn newline(out: &mut String, indent: Option<usize>) {
    if let Some(depth) = indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    }
}

/// JSON.stringify's string escaping: the two-character escapes for `"`, `\`
/// and five control characters, `\u00xx` (lowercase hex) for the other
/// control characters, and everything else, U+2028, U+2029 and DEL included,
/// verbatim.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x08 => Some("\\b"),
            0x0c => Some("\\f"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => {
                out.push_str("\\u00");
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 0xf) as usize] as char);
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_print_as_javascript_prints_them() {
        let cases = [
            (1.0, "1"),
            (-0.0, "0"),
            (0.1, "0.1"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (1.5e-7, "1.5e-7"),
            (0.000001, "0.000001"),
            (123456789.125, "123456789.125"),
            (-3.25, "-3.25"),
            (9007199254740993.0, "9007199254740992"),
        ];
        for (n, want) in cases {
            assert_eq!(js_number(n), want, "{n}");
        }
    }

    #[test]
    fn integer_like_keys_come_first_in_ascending_order() {
        let v: Value = serde_json::from_str(r#"{"b":1,"10":2,"a":3,"2":4,"01":5,"4294967295":6}"#)
            .expect("valid json");
        assert_eq!(
            to_js_compact(&v),
            r#"{"2":4,"10":2,"b":1,"a":3,"01":5,"4294967295":6}"#
        );
    }

    #[test]
    fn pretty_layout_matches_stringify_with_two_spaces() {
        let v = json!({"a": [1, {"b": []}, {}], "c": "x"});
        assert_eq!(
            to_js_pretty(&v),
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": []\n    },\n    {}\n  ],\n  \"c\": \"x\"\n}"
        );
    }

    #[test]
    fn strings_escape_like_javascript() {
        let v = json!("q\"b\\n\n\u{1}\u{7f}\u{2028}é😀");
        assert_eq!(
            to_js_compact(&v),
            "\"q\\\"b\\\\n\\n\\u0001\u{7f}\u{2028}é😀\""
        );
    }

    #[test]
    fn pretty_lengths_are_found_without_printing() {
        let values = [
            json!({"type": "log", "text": "a \"quoted\" line\twith\u{1}控制 😀", "n": [1.5, -0.0, 1e21, null, true, false, {}, []]}),
            json!({"nested": {"deeper": {"list": [[1], {"k": "v"}]}}, "2": "integer-like key"}),
            json!("just a string"),
            json!([]),
        ];
        for value in &values {
            assert_eq!(
                js_pretty_utf16_len(value, 0),
                utf16_len(&to_js_pretty(value)),
                "{value}"
            );
            // One level deeper, every line but the first gains two spaces.
            let wrapped = json!({ "content": value });
            let outer = utf16_len(&to_js_pretty(&wrapped));
            assert_eq!(
                outer,
                4 + "\"content\": ".len() + js_pretty_utf16_len(value, 1) + 2
            );
        }
    }

    #[test]
    fn utf16_lengths_and_low_bytes() {
        assert_eq!(utf16_len("a😀é"), 4);
        // U+1F600 is D83D DE00 in UTF-16: the low bytes are 3D 00.
        assert_eq!(latin1_low_bytes("a😀é"), vec![b'a', 0x3d, 0x00, 0xe9]);
    }
}
