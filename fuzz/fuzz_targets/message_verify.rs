//! A message as a peer sends it (createHistoryStream or EBT frame body):
//! JSON bytes, parsed as the session does, then every check a receiver makes.
//!
//! The fuzzer cannot forge signatures, so each input is tried twice: as it
//! is, and re-signed with the key of the test vectors' author (seed 07…07)
//! when its `author` is that key, so that everything after the signature
//! check is explored too.
//!
//! Invariants: single and batch verification agree; a correctly signed
//! message is never refused as `BadSignature`; an accepted message's
//! `author` is the canonical id text; it re-verifies from the compact JSON
//! the store keeps, with the same id, and rebuilds from that JSON
//! (`from_trusted_json`) with the same fields.
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use scuttlefs::feed::json::{to_js_pretty, utf16_len};
use scuttlefs::feed::{FeedError, FeedId, FeedTip, Keypair, Message, MAX_MESSAGE_UTF16};
use serde_json::{Map, Value};

fn check(value: &Value, resigned: bool) {
    let one = Message::verify(value.clone());
    let many = Message::verify_many(vec![value.clone(), value.clone()]);
    assert_eq!(many.len(), 2);
    for m in &many {
        assert_eq!(one.is_ok(), m.is_ok(), "verify and verify_many disagree");
    }
    let msg = match one {
        Ok(msg) => msg,
        Err(FeedError::BadSignature) if resigned => {
            panic!("a correctly signed message was refused as BadSignature")
        }
        Err(_) => return,
    };
    for m in many.into_iter().flatten() {
        assert_eq!(m.key, msg.key);
    }
    assert!(utf16_len(&to_js_pretty(&msg.value)) <= MAX_MESSAGE_UTF16);
    // JavaScript peers compare ids as strings: only the canonical text is
    // the author.
    assert_eq!(
        value["author"].as_str(),
        Some(&*msg.author.to_string()),
        "accepted a message whose author is not the canonical id text"
    );
    assert_eq!(FeedTip::check_next(None, &msg).is_ok(), msg.sequence == 1);

    // What the store keeps, and what it rebuilds from it.
    let stored = msg.value_json();
    let reparsed: Value = serde_json::from_str(&stored).expect("stored JSON parses");
    let again =
        Message::verify(reparsed).expect("a verified message re-verifies from its stored JSON");
    assert_eq!(again.key, msg.key);
    let trusted =
        Message::from_trusted_json(msg.key, stored.as_bytes()).expect("stored JSON rebuilds");
    assert_eq!(trusted.author, msg.author);
    assert_eq!(trusted.sequence, msg.sequence);
    assert_eq!(trusted.previous, msg.previous);
    // -0 prints as 0: compare as numbers.
    assert!(trusted.timestamp == msg.timestamp);
}

/// `value` with a correct signature by `keys` in place of its own.
fn resign(keys: &Keypair, value: &Value) -> Option<Value> {
    let map = value.as_object()?;
    map.get("signature")?;
    let mut unsigned = Map::new();
    for (k, v) in map {
        if k != "signature" {
            unsigned.insert(k.clone(), v.clone());
        }
    }
    let text = to_js_pretty(&Value::Object(unsigned.clone()));
    let signature = format!("{}.sig.ed25519", STANDARD.encode(keys.sign(text.as_bytes())));
    unsigned.insert("signature".into(), Value::String(signature));
    Some(Value::Object(unsigned))
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    // As session.rs does: with keys: true a peer sends {key, value, timestamp}.
    let value = match value.get("value") {
        Some(inner) if value.get("key").is_some() => inner.clone(),
        _ => value,
    };
    check(&value, false);

    let keys = Keypair::from_seed(&[7; 32]);
    let author = value.get("author").and_then(Value::as_str);
    if author.and_then(|a| FeedId::parse(a).ok()) == Some(keys.id()) {
        if let Some(signed) = resign(&keys, &value) {
            check(&signed, true);
        }
    }
});
