//! Classic SSB messages: signing, and every check a receiver must make.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::ids::{decode_canonical, FeedId, MsgId};
use super::json::{latin1_low_bytes, to_js_compact, to_js_pretty, utf16_len};
use super::keys::Keypair;
use super::FeedError;

/// The largest signed message, in UTF-16 units of its `JSON.stringify(msg,
/// null, 2)` text, that ssb-validate accepts.
pub const MAX_MESSAGE_UTF16: usize = 8192;

/// The keys of a signed message in the order ssb-validate requires.
/// `author` and `sequence` may also appear swapped: very old feeds do that.
const KEY_ORDER: [&str; 7] = [
    "previous",
    "author",
    "sequence",
    "timestamp",
    "hash",
    "content",
    "signature",
];

/// What a feed's next message must build on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FeedTip {
    /// Id of the latest message.
    pub key: MsgId,
    /// Its sequence number.
    pub sequence: u64,
    /// Its claimed timestamp, in milliseconds since the epoch.
    pub timestamp: f64,
}

/// A message whose shape, size and signature have been checked.
///
/// Whether it extends its feed correctly depends on the store; see
/// [`FeedTip::check_next`].
#[derive(Clone, Debug)]
pub struct Message {
    /// The message id.
    pub key: MsgId,
    /// The feed it belongs to.
    pub author: FeedId,
    /// Position in the feed, from 1.
    pub sequence: u64,
    /// The author's claimed time, in milliseconds since the epoch.
    pub timestamp: f64,
    /// The id of the message before it, `None` for the first.
    pub previous: Option<MsgId>,
    /// The signed value, keys in their signed order.
    pub value: Value,
}

/// How far a timestamp is raised above its predecessor's: several ulps at
/// today's times (2^-12 ms), so the sum is exact enough to stay ordered.
const TIMESTAMP_STEP_MS: f64 = 0.001;

impl Message {
    /// The message content: an object, or a string for an encrypted message.
    pub fn content(&self) -> &Value {
        &self.value["content"]
    }

    /// The content's `type`, when it has one.
    pub fn content_type(&self) -> Option<&str> {
        self.content().get("type").and_then(Value::as_str)
    }

    /// This message's tip, for checking the message after it.
    pub fn tip(&self) -> FeedTip {
        FeedTip {
            key: self.key,
            sequence: self.sequence,
            timestamp: self.timestamp,
        }
    }

    /// The value as compact JavaScript JSON, the form the store keeps.
    pub fn value_json(&self) -> String {
        to_js_compact(&self.value)
    }

    /// `{key, value, timestamp}`, the shape ssb-server's `log` and
    /// `createHistoryStream({keys: true})` return.
    pub fn to_kvt(&self, received_ms: f64) -> Value {
        let mut map = Map::new();
        map.insert("key".into(), Value::String(self.key.to_string()));
        map.insert("value".into(), self.value.clone());
        map.insert("timestamp".into(), json_number(received_ms));
        Value::Object(map)
    }

    /// Signs `content` as the message after `tip` in `keys`' feed.
    ///
    /// The timestamp is `now_ms`, raised just above the tip's when the clock
    /// has not moved past it, so that timestamps strictly increase within a
    /// feed. As ssb-server's monotonic timestamps do, it is raised by a
    /// fraction of a millisecond, so a burst of messages never claims times
    /// ahead of the clock (below a thousand messages a millisecond).
    pub fn sign(
        keys: &Keypair,
        tip: Option<&FeedTip>,
        now_ms: f64,
        content: Value,
    ) -> Result<Message, FeedError> {
        check_content(&content)?;
        let timestamp = match tip {
            Some(t) if now_ms <= t.timestamp => t.timestamp + TIMESTAMP_STEP_MS,
            _ => now_ms,
        };
        let mut map = Map::new();
        map.insert(
            "previous".into(),
            tip.map_or(Value::Null, |t| Value::String(t.key.to_string())),
        );
        map.insert("author".into(), Value::String(keys.id().to_string()));
        map.insert(
            "sequence".into(),
            Value::from(tip.map_or(1, |t| t.sequence + 1)),
        );
        map.insert("timestamp".into(), json_number(timestamp));
        map.insert("hash".into(), Value::String("sha256".into()));
        map.insert("content".into(), content);
        let mut value = Value::Object(map);
        let unsigned = to_js_pretty(&value);
        let signature = keys.sign(unsigned.as_bytes());
        let signature = format!("{}.sig.ed25519", STANDARD.encode(signature));
        let signed = with_signature(&unsigned, &signature);
        let size = utf16_len(&signed);
        if size > MAX_MESSAGE_UTF16 {
            return Err(FeedError::TooLarge(size));
        }
        if let Some(map) = value.as_object_mut() {
            map.insert("signature".into(), Value::String(signature));
        }
        Ok(Message {
            key: MsgId(Sha256::digest(latin1_low_bytes(&signed)).into()),
            author: keys.id(),
            sequence: tip.map_or(1, |t| t.sequence + 1),
            timestamp,
            previous: tip.map(|t| t.key),
            value,
        })
    }

    /// Checks everything about `value` that does not depend on its feed's
    /// history: key order, field types, size, content shape and signature.
    pub fn verify(value: Value) -> Result<Message, FeedError> {
        Checked::new(value)?.verify()
    }

    /// Verifies many messages; one result per message, in order.
    ///
    /// The signatures are checked together (ed25519 batch verification, about
    /// twice as fast); if the batch fails, each is checked on its own to find
    /// the bad ones. Batch verification is cofactorless only with high
    /// probability, so an author could get a torsion-tweaked signature of
    /// their own through where strict verification would refuse it; no one
    /// else can forge anything. Weak (small-order) author keys are refused
    /// either way.
    pub fn verify_many(values: Vec<Value>) -> Vec<Result<Message, FeedError>> {
        let checked: Vec<Result<Checked, FeedError>> =
            values.into_iter().map(Checked::new).collect();
        let good: Vec<&Checked> = checked.iter().filter_map(|c| c.as_ref().ok()).collect();
        let batch_ok = !good.is_empty() && {
            let messages: Vec<&[u8]> = good.iter().map(|c| c.unsigned.as_bytes()).collect();
            let signatures: Vec<Signature> = good.iter().map(|c| c.signature).collect();
            let keys: Vec<VerifyingKey> = good.iter().map(|c| c.verifying).collect();
            ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
        };
        checked
            .into_iter()
            .map(|c| {
                let c = c?;
                if batch_ok {
                    Ok(c.into_message())
                } else {
                    c.verify()
                }
            })
            .collect()
    }
}

/// A message whose every property but the signature has been checked.
struct Checked {
    msg: Message,
    unsigned: String,
    signature: Signature,
    verifying: VerifyingKey,
}

impl Checked {
    fn new(value: Value) -> Result<Checked, FeedError> {
        let map = value.as_object().ok_or(FeedError::NotAnObject)?;
        check_key_order(map)?;
        let author_text = map["author"]
            .as_str()
            .ok_or_else(|| FeedError::Invalid("author is not a string".into()))?;
        let author = FeedId::parse(author_text)?;
        // FeedId::parse forgives surrounding whitespace (user input); a
        // signed author must be exactly the id, as ssb-validate requires.
        if author.to_string() != author_text {
            return Err(FeedError::BadFeedId(author_text.to_string()));
        }
        let sequence = as_positive_integer(&map["sequence"])
            .ok_or_else(|| FeedError::Invalid("sequence is not a positive integer".into()))?;
        let timestamp = map["timestamp"]
            .as_f64()
            .ok_or_else(|| FeedError::Invalid("timestamp is not a number".into()))?;
        if map["hash"] != "sha256" {
            return Err(FeedError::Invalid(format!(
                "hash must be \"sha256\", was {}",
                map["hash"]
            )));
        }
        let previous = match (&map["previous"], sequence) {
            (Value::Null, 1) => None,
            (Value::String(s), n) if n > 1 => Some(MsgId::parse(s)?),
            _ => {
                return Err(FeedError::Invalid(
                    "previous must be null exactly for sequence 1".into(),
                ))
            }
        };
        check_content(&map["content"])?;
        let signature_text = map["signature"]
            .as_str()
            .ok_or_else(|| FeedError::Invalid("signature is not a string".into()))?;
        let signature: [u8; 64] = signature_text
            .strip_suffix(".sig.ed25519")
            .and_then(decode_canonical)
            .ok_or_else(|| FeedError::Invalid("malformed signature".into()))?;

        let signed = to_js_pretty(&value);
        let size = utf16_len(&signed);
        if size > MAX_MESSAGE_UTF16 {
            return Err(FeedError::TooLarge(size));
        }
        let unsigned = without_signature(&signed, signature_text)
            .ok_or_else(|| FeedError::Invalid("cannot locate signature".into()))?;
        let verifying = verifying_key(&author)?;
        Ok(Checked {
            msg: Message {
                key: MsgId(Sha256::digest(latin1_low_bytes(&signed)).into()),
                author,
                sequence,
                timestamp,
                previous,
                value,
            },
            unsigned,
            signature: Signature::from_bytes(&signature),
            verifying,
        })
    }

    /// Strict verification of this one signature.
    fn verify(self) -> Result<Message, FeedError> {
        self.verifying
            .verify_strict(self.unsigned.as_bytes(), &self.signature)
            .map_err(|_| FeedError::BadSignature)?;
        Ok(self.msg)
    }

    fn into_message(self) -> Message {
        self.msg
    }
}

impl Message {
    /// Rebuilds a message from the compact JSON the store keeps, without
    /// checking the signature or recomputing the id: the store only holds
    /// verified messages.
    pub fn from_trusted_json(key: MsgId, text: &[u8]) -> Result<Message, FeedError> {
        let value: Value = serde_json::from_slice(text)
            .map_err(|e| FeedError::Invalid(format!("stored message is not JSON: {e}")))?;
        let map = value.as_object().ok_or(FeedError::NotAnObject)?;
        let field = |name: &str| map.get(name).unwrap_or(&Value::Null);
        let author = FeedId::parse(field("author").as_str().unwrap_or(""))?;
        let sequence = as_positive_integer(field("sequence"))
            .ok_or_else(|| FeedError::Invalid("stored sequence".into()))?;
        let timestamp = field("timestamp").as_f64().unwrap_or(0.0);
        let previous = match field("previous").as_str() {
            Some(s) => Some(MsgId::parse(s)?),
            None => None,
        };
        Ok(Message {
            key,
            author,
            sequence,
            timestamp,
            previous,
            value,
        })
    }
}

impl FeedTip {
    /// Checks that `msg` is the next message of the feed whose latest message
    /// is `tip` (`None`: a feed with no messages yet).
    pub fn check_next(tip: Option<&FeedTip>, msg: &Message) -> Result<(), FeedError> {
        let expected = tip.map_or(1, |t| t.sequence + 1);
        if msg.sequence != expected {
            return Err(FeedError::OutOfOrder {
                expected,
                got: msg.sequence,
            });
        }
        if msg.previous != tip.map(|t| t.key) {
            return Err(FeedError::Fork {
                sequence: msg.sequence,
            });
        }
        Ok(())
    }
}

/// The author's decoded public key. Decoding is a square root, a quarter of
/// the cost of a verification, and replication verifies long runs of one
/// author's messages: so each thread keeps the keys it has decoded.
fn verifying_key(author: &FeedId) -> Result<VerifyingKey, FeedError> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    thread_local! {
        static KEYS: RefCell<HashMap<[u8; 32], VerifyingKey>> = RefCell::new(HashMap::new());
    }
    KEYS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(key) = cache.get(&author.0) {
            return Ok(*key);
        }
        let key = VerifyingKey::from_bytes(&author.0)
            .map_err(|_| FeedError::Invalid("author is not an ed25519 point".into()))?;
        if key.is_weak() {
            return Err(FeedError::Invalid("author key has small order".into()));
        }
        if cache.len() >= 4096 {
            cache.clear();
        }
        cache.insert(author.0, key);
        Ok(key)
    })
}

/// A number as JSON, integral when it has no fraction so that it prints
/// without `.0` everywhere, not only in our own printer.
fn json_number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

fn as_positive_integer(value: &Value) -> Option<u64> {
    let n = value.as_f64()?;
    (n >= 1.0 && n.fract() == 0.0 && n <= 4_294_967_295.0).then_some(n as u64)
}

fn check_key_order(map: &Map<String, Value>) -> Result<(), FeedError> {
    let keys: Vec<&str> = map.keys().map(String::as_str).collect();
    let swapped = [
        KEY_ORDER[0],
        KEY_ORDER[2],
        KEY_ORDER[1],
        KEY_ORDER[3],
        KEY_ORDER[4],
        KEY_ORDER[5],
        KEY_ORDER[6],
    ];
    if keys == KEY_ORDER || keys == swapped {
        Ok(())
    } else {
        Err(FeedError::KeyOrder(keys.join(",")))
    }
}

/// Content is an object whose `type` is a string of 3 to 52 UTF-16 units, or
/// the base64 text of an encrypted message ending in `.box…`.
pub fn check_content(content: &Value) -> Result<(), FeedError> {
    match content {
        Value::Object(map) => match map.get("type").and_then(Value::as_str) {
            Some(t) if (3..=52).contains(&utf16_len(t)) => Ok(()),
            _ => Err(FeedError::Invalid(
                "content.type must be a string of 3 to 52 characters".into(),
            )),
        },
        Value::String(s) if is_encrypted(s) => Ok(()),
        _ => Err(FeedError::Invalid(
            "content must be an object or an encrypted string".into(),
        )),
    }
}

fn is_encrypted(s: &str) -> bool {
    match s.find(".box") {
        Some(end) => {
            let body = &s[..end];
            !body.is_empty()
                && STANDARD
                    .decode(body)
                    .is_ok_and(|bytes| STANDARD.encode(bytes) == body)
        }
        None => false,
    }
}

/// The signed text of a message is its unsigned text with one more line.
fn with_signature(unsigned: &str, signature: &str) -> String {
    let body = unsigned.strip_suffix("\n}").unwrap_or(unsigned);
    format!("{body},\n  \"signature\": \"{signature}\"\n}}")
}

/// Recovers the text that was signed from the full text, which ends with the
/// signature line (the key order was checked first).
fn without_signature(signed: &str, signature: &str) -> Option<String> {
    let tail = format!(",\n  \"signature\": \"{signature}\"\n}}");
    signed
        .strip_suffix(tail.as_str())
        .map(|body| format!("{body}\n}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(keys: &Keypair, n: usize) -> Vec<Message> {
        let mut out: Vec<Message> = Vec::new();
        for i in 0..n {
            let tip = out.last().map(Message::tip);
            let msg = Message::sign(
                keys,
                tip.as_ref(),
                1_700_000_000_000.0 + i as f64,
                json!({"type": "log", "text": format!("line {i}")}),
            )
            .expect("signs");
            out.push(msg);
        }
        out
    }

    #[test]
    fn signed_messages_verify_and_keep_their_id() {
        let keys = Keypair::generate();
        for msg in chain(&keys, 3) {
            let back = Message::verify(msg.value.clone()).expect("verifies");
            assert_eq!(back.key, msg.key);
            let stored =
                Message::from_trusted_json(msg.key, msg.value_json().as_bytes()).expect("parses");
            assert_eq!(stored.value, msg.value);
        }
    }

    #[test]
    fn timestamps_strictly_increase_when_the_clock_goes_back() {
        let keys = Keypair::generate();
        let first = Message::sign(&keys, None, 5000.0, json!({"type": "log"})).expect("signs");
        let second = Message::sign(&keys, Some(&first.tip()), 4000.0, json!({"type": "log"}))
            .expect("signs");
        assert!(second.timestamp > 5000.0 && second.timestamp < 5000.01);
    }

    #[test]
    fn a_burst_in_one_millisecond_stays_ordered_and_on_time() {
        let keys = Keypair::generate();
        let now = 1_764_081_234_567.0;
        let mut tip: Option<FeedTip> = None;
        for i in 0..10_000 {
            let msg = Message::sign(&keys, tip.as_ref(), now, json!({"type": "log", "i": i}))
                .expect("signs");
            if let Some(before) = &tip {
                assert!(msg.timestamp > before.timestamp, "message {i}");
            }
            if i % 997 == 0 {
                // The printed timestamp is the signed one.
                let back = Message::verify(msg.value.clone()).expect("verifies");
                assert_eq!(back.timestamp, msg.timestamp);
            }
            tip = Some(msg.tip());
        }
        let last = tip.expect("signed").timestamp;
        assert!(
            last < now + 10.0 + 1e-6,
            "10,000 messages claim {} ms",
            last - now
        );
    }

    #[test]
    fn tampering_is_detected() {
        let keys = Keypair::generate();
        let msg = &chain(&keys, 1)[0];
        let mut value = msg.value.clone();
        value["content"]["text"] = json!("forged");
        assert!(matches!(
            Message::verify(value),
            Err(FeedError::BadSignature)
        ));
    }

    #[test]
    fn reordered_keys_and_other_hashes_are_refused() {
        let keys = Keypair::generate();
        let msg = &chain(&keys, 1)[0];
        let map = msg.value.as_object().expect("object");
        let mut reordered = Map::new();
        for k in [
            "author",
            "previous",
            "sequence",
            "timestamp",
            "hash",
            "content",
            "signature",
        ] {
            reordered.insert(k.to_string(), map[k].clone());
        }
        assert!(matches!(
            Message::verify(Value::Object(reordered)),
            Err(FeedError::KeyOrder(_))
        ));
        let mut other_hash = msg.value.clone();
        other_hash["hash"] = json!("blake2b");
        assert!(Message::verify(other_hash).is_err());
    }

    #[test]
    fn chain_checks_catch_gaps_and_forks() {
        let keys = Keypair::generate();
        let msgs = chain(&keys, 3);
        assert!(FeedTip::check_next(None, &msgs[0]).is_ok());
        assert!(FeedTip::check_next(Some(&msgs[0].tip()), &msgs[1]).is_ok());
        assert!(matches!(
            FeedTip::check_next(Some(&msgs[0].tip()), &msgs[2]),
            Err(FeedError::OutOfOrder {
                expected: 2,
                got: 3
            })
        ));
        // Same sequence, different previous: a fork.
        let fork = Message::sign(
            &keys,
            Some(&FeedTip {
                key: msgs[1].key,
                sequence: 1,
                timestamp: 0.0,
            }),
            1.0,
            json!({"type": "log"}),
        )
        .expect("signs");
        assert!(matches!(
            FeedTip::check_next(Some(&msgs[0].tip()), &fork),
            Err(FeedError::Fork { sequence: 2 })
        ));
    }

    #[test]
    fn oversize_content_is_refused_at_signing() {
        let keys = Keypair::generate();
        let text = "x".repeat(MAX_MESSAGE_UTF16);
        assert!(matches!(
            Message::sign(&keys, None, 1.0, json!({"type": "log", "text": text})),
            Err(FeedError::TooLarge(_))
        ));
    }
}
