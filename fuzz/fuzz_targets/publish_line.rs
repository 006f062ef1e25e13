//! What a user writes to the mount's `publish` file or pipes to `publish
//! --stdin`: one line (src/publish.rs), split for size as `publish_with`
//! does (src/publish.rs `split_for_size`), then signed part after part.
//!
//! The first input byte: bits 0-2 repeat the rest 2^n times (so lines run
//! past the message size limit), bit 3 reads it as a `--stdin` line with a
//! field, bits 4-5 pick the feed's tip, bit 6 puts the clock behind the tip
//! (timestamps then gain fractions). The rest, as UTF-8 without newlines,
//! is the line.
//!
//! Invariants: only the empty line is nothing; a plain line is the `text`
//! of a log message and is never refused, however long; parts of a split
//! line are its text in order, all but the last marked `more`; every part
//! signs when signed in turn after the one before (`publish_with` relies on
//! it), stays within the size limit, and verifies with the same id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scuttlefs::feed::json::{to_js_pretty, utf16_len};
use scuttlefs::feed::{FeedTip, Keypair, Message, MsgId, MAX_MESSAGE_UTF16};
use scuttlefs::publish::split_for_size;
use scuttlefs::publish::{content_for_line, content_for_stdin_line};
use scuttlefs::vocab::{LOG_TYPE, MORE_FIELD};
use serde_json::{Map, Value};

const NOW: f64 = 1_764_081_234_567.0;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(unit) = std::str::from_utf8(rest) else {
        return;
    };
    if unit.contains('\n') {
        return; // the line buffer splits there
    }
    let line = unit.repeat(1 << (flags & 7));
    let stdin = flags & 8 != 0;
    let tip = match (flags >> 4) & 3 {
        0 => None,
        1 => Some(FeedTip { key: MsgId([1; 32]), sequence: 1, timestamp: NOW }),
        2 => Some(FeedTip { key: MsgId([2; 32]), sequence: 999_999, timestamp: 1.7e12 }),
        _ => Some(FeedTip { key: MsgId([3; 32]), sequence: 4_294_960_000, timestamp: NOW + 0.25 }),
    };
    let now = match (&tip, flags & 0x40 != 0) {
        (Some(t), true) => t.timestamp - 5.0,
        _ => NOW,
    };

    let mut fields = Map::new();
    let content = if stdin {
        fields.insert("source".into(), Value::String("nas".into()));
        content_for_stdin_line(&line, &fields)
    } else {
        content_for_line(&line, &fields)
    };
    let Some(content) = content else {
        assert!(line.is_empty(), "a non-empty line became nothing");
        return;
    };
    assert!(!line.is_empty(), "the empty line became content");
    let map = content.as_object().expect("content is an object");
    assert!(map.contains_key("type"));
    let plain = stdin || !matches!(
        line.trim_start().starts_with('{').then(|| serde_json::from_str::<Value>(&line)),
        Some(Ok(Value::Object(_)))
    );
    if plain {
        assert_eq!(map["type"], LOG_TYPE);
        assert_eq!(map["text"].as_str(), Some(line.as_str()));
        if stdin {
            assert_eq!(map["source"], "nas");
        }
    }

    let keys = Keypair::from_seed(&[7; 32]);
    let parts = match split_for_size(&keys, tip.as_ref(), now, content.clone()) {
        Ok(parts) => parts,
        Err(e) => {
            assert!(!plain, "a plain line of {} bytes was refused: {e}", line.len());
            return;
        }
    };
    assert!(!parts.is_empty());
    if parts.len() == 1 {
        assert_eq!(parts[0], content);
    } else {
        let text: String = parts.iter().map(|p| p["text"].as_str().expect("text")).collect();
        assert_eq!(Some(text.as_str()), content["text"].as_str(), "split text");
        for (i, part) in parts.iter().enumerate() {
            let more = part.get(MORE_FIELD);
            if i + 1 < parts.len() {
                assert_eq!(more, Some(&Value::Bool(true)), "part {i} lacks more");
            } else {
                assert_eq!(more, content.get(MORE_FIELD), "last part's more");
            }
            for (k, v) in map {
                if k != "text" && k != MORE_FIELD {
                    assert_eq!(part.get(k), Some(v), "part {i} field {k}");
                }
            }
        }
    }
    // As publish_with signs them: each after the one before.
    let mut at = tip;
    for (i, part) in parts.into_iter().enumerate() {
        let msg = Message::sign(&keys, at.as_ref(), now, part)
            .unwrap_or_else(|e| panic!("part {i} was split to fit but does not sign: {e}"));
        assert!(utf16_len(&to_js_pretty(&msg.value)) <= MAX_MESSAGE_UTF16);
        let back = Message::verify(msg.value.clone())
            .unwrap_or_else(|e| panic!("part {i} signs but does not verify: {e}"));
        assert_eq!(back.key, msg.key);
        assert!(FeedTip::check_next(at.as_ref(), &back).is_ok());
        at = Some(msg.tip());
    }
});
