//! The JavaScript-exact JSON printer (feed/json.rs), on any JSON serde_json
//! accepts.
//!
//! Invariants: both printings parse back to the same value, with numbers
//! compared as f64 and exactly (numbers beyond f64 print as null, as
//! Infinity does) (ECMAScript's Number#toString is the shortest
//! round-tripping form; -0 prints as 0, which compares equal), and keys in
//! JavaScript's own-key order; the pretty printing's UTF-16 length is what
//! `js_pretty_utf16_len` predicts, at depth 0 and nested one level deeper;
//! `latin1_low_bytes` has one byte per UTF-16 unit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scuttlefs::feed::json::{
    js_key_order, js_number, js_pretty_utf16_len, latin1_low_bytes, to_js_compact, to_js_pretty,
    utf16_len,
};
use serde_json::{Map, Value};

/// `printed` is what `original` should print as, compared as JavaScript
/// would see it.
fn same(original: &Value, printed: &Value, path: &str) {
    match (original, printed) {
        // kuska-ssb turns on serde_json's arbitrary_precision: a number
        // keeps its text, and one beyond f64 (1e400) has no f64. JavaScript
        // reads it as Infinity, which JSON.stringify prints as null.
        (Value::Number(a), _) => match a.as_f64().filter(|f| f.is_finite()) {
            Some(a) => {
                let b = printed
                    .as_f64()
                    .unwrap_or_else(|| panic!("{path}: {a} printed as {printed}"));
                assert!(a == b, "{path}: {a:?} printed as {b:?}");
            }
            None => assert!(printed.is_null(), "{path}: {a} printed as {printed}"),
        },
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: array length");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                same(x, y, &format!("{path}[{i}]"));
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            same_object(a, b, path);
        }
        (a, b) => assert_eq!(a, b, "{path}"),
    }
}

fn same_object(a: &Map<String, Value>, b: &Map<String, Value>, path: &str) {
    assert_eq!(a.len(), b.len(), "{path}: key count");
    let want: Vec<&String> = js_key_order(a).into_iter().map(|(k, _)| k).collect();
    let got: Vec<&String> = b.keys().collect();
    assert_eq!(want, got, "{path}: key order");
    for (k, v) in a {
        same(v, &b[k], &format!("{path}.{k}"));
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let pretty = to_js_pretty(&value);
    let compact = to_js_compact(&value);
    let from_pretty: Value = serde_json::from_str(&pretty)
        .unwrap_or_else(|e| panic!("pretty output does not parse ({e}): {pretty}"));
    let from_compact: Value = serde_json::from_str(&compact)
        .unwrap_or_else(|e| panic!("compact output does not parse ({e}): {compact}"));
    same(&value, &from_pretty, "$");
    same(&value, &from_compact, "$");
    // Printing is a fixed point after one round.
    assert_eq!(to_js_pretty(&from_pretty), pretty);
    assert_eq!(to_js_compact(&from_compact), compact);
    // Compact is pretty without the layout whitespace, so never longer.
    assert!(compact.len() <= pretty.len());
    assert!(!compact.contains('\n'));

    let units = pretty.encode_utf16().count();
    assert_eq!(utf16_len(&pretty), units);
    assert_eq!(latin1_low_bytes(&pretty).len(), units);
    assert_eq!(js_pretty_utf16_len(&value, 0), units, "predicted length");
    // Nested one level deeper (as message content is), every line but the
    // first gains two spaces.
    let mut wrapper = Map::new();
    wrapper.insert("content".into(), value.clone());
    let outer = utf16_len(&to_js_pretty(&Value::Object(wrapper)));
    assert_eq!(outer, 4 + "\"content\": ".len() + js_pretty_utf16_len(&value, 1) + 2);

    // Every number also on its own.
    if let Some(f) = value.as_f64() {
        let text = js_number(f);
        let back: f64 = text.parse().expect("js_number output parses as f64");
        assert!(back == f, "{f:?} printed as {text}");
    }
});
