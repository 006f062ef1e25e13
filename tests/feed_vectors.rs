//! The message format against the JavaScript reference: known vectors that
//! ssb-keys signed, and messages scuttlefs signs checked by ssb-validate.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use scuttlefs::feed::json::to_js_pretty;
use scuttlefs::feed::{FeedTip, Keypair, Message, MsgId};

fn fixture() -> Value {
    let text = std::fs::read_to_string(common::repo().join("tests/vectors/js-signed.json"))
        .expect("fixture exists");
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn seed_of(fixture: &Value) -> [u8; 32] {
    let hex = fixture["seed"].as_str().expect("seed");
    let mut seed = [0u8; 32];
    for (i, byte) in seed.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).expect("hex");
    }
    seed
}

#[test]
fn javascript_signed_messages_verify_with_the_same_ids() {
    let fixture = fixture();
    let mut tip: Option<FeedTip> = None;
    for entry in fixture["messages"].as_array().expect("messages") {
        let msg = Message::verify(entry["value"].clone()).expect("JS-signed message verifies");
        assert_eq!(msg.key.to_string(), entry["key"].as_str().expect("key"));
        FeedTip::check_next(tip.as_ref(), &msg).expect("the chain holds");
        tip = Some(msg.tip());
    }
}

#[test]
fn signing_the_same_content_reproduces_javascripts_bytes() {
    let fixture = fixture();
    let keys = Keypair::from_seed(&seed_of(&fixture));
    assert_eq!(keys.id().to_string(), fixture["id"].as_str().expect("id"));
    let mut tip: Option<FeedTip> = None;
    // All but the last entry use the Protocol Guide's key order, which is
    // the order scuttlefs writes.
    let entries = fixture["messages"].as_array().expect("messages");
    for entry in &entries[..entries.len() - 1] {
        let value = &entry["value"];
        let timestamp = value["timestamp"].as_f64().expect("timestamp");
        let mine =
            Message::sign(&keys, tip.as_ref(), timestamp, value["content"].clone()).expect("signs");
        assert_eq!(
            to_js_pretty(&mine.value),
            to_js_pretty(value),
            "text differs"
        );
        assert_eq!(mine.value["signature"], value["signature"]);
        assert_eq!(mine.key.to_string(), entry["key"].as_str().expect("key"));
        tip = Some(mine.tip());
    }
}

#[test]
fn forged_variants_of_a_javascript_message_are_refused() {
    let fixture = fixture();
    let original = fixture["messages"][1]["value"].clone();
    let mut wrong_content = original.clone();
    wrong_content["content"]["text"] = json!("changed");
    assert!(Message::verify(wrong_content).is_err());
    let mut wrong_sequence = original.clone();
    wrong_sequence["sequence"] = json!(3);
    assert!(Message::verify(wrong_sequence).is_err());
    let mut float_sequence = original;
    float_sequence["sequence"] = json!(2.5);
    assert!(Message::verify(float_sequence).is_err());
}

fn tricky_contents() -> Vec<Value> {
    vec![
        json!({"type": "log", "text": "plain"}),
        json!({"type": "test", "f": 0.1, "big": 1e21, "small": 1.5e-7, "neg": -0.0, "third": 1.0/3.0}),
        json!({"type": "post", "text": "outside the BMP: 😀 𝄞 and é"}),
        serde_json::from_str(
            r#"{"type":"test","b":1,"10":"ten","2":"two","nested":{"1":1,"0":0}}"#,
        )
        .expect("json"),
        json!({"type": "test", "text": "ctrl \u{1} quote \" backslash \\ ls \u{2028} del \u{7f}"}),
        json!({"type": "test", "empty": {}, "list": [], "deep": [[[]], {"x": null}]}),
    ]
}

#[test]
fn ssb_validate_accepts_what_scuttlefs_signs() {
    if !common::node_modules_available() {
        return;
    }
    let keys = Keypair::generate();
    let mut tip: Option<FeedTip> = None;
    let mut mine: Vec<Message> = Vec::new();
    for (i, content) in tricky_contents().into_iter().enumerate() {
        // A float timestamp too, for the number printer.
        let ts = 1_764_000_000_000.0 + i as f64 + if i == 2 { 0.25 } else { 0.0 };
        let msg = Message::sign(&keys, tip.as_ref(), ts, content).expect("signs");
        tip = Some(msg.tip());
        mine.push(msg);
    }
    // A burst signed within one millisecond: the timestamps step up by a
    // fraction, as ssb-server's own monotonic timestamps do.
    let burst_clock = tip.map_or(0.0, |t| t.timestamp);
    for i in 0..5 {
        let content = json!({"type": "log", "text": format!("burst {i}")});
        let msg = Message::sign(&keys, tip.as_ref(), burst_clock, content).expect("signs");
        assert!(msg.timestamp.fract() != 0.0, "{}", msg.timestamp);
        tip = Some(msg.tip());
        mine.push(msg);
    }
    let mut child = Command::new("node")
        .arg(common::repo().join("tests/js/validate.js"))
        .current_dir(common::repo().join("tests/js"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for msg in &mine {
            writeln!(stdin, "{}", msg.value_json()).expect("write");
        }
    }
    let out = child.wait_with_output().expect("node finishes");
    let verdict: Value = serde_json::from_slice(&out.stdout).expect("JSON verdict");
    assert_eq!(
        verdict["valid"],
        json!(mine.len()),
        "ssb-validate said {verdict}"
    );
    let ids: Vec<MsgId> = verdict["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|id| MsgId::parse(id.as_str().expect("string")).expect("id"))
        .collect();
    let my_ids: Vec<MsgId> = mine.iter().map(|m| m.key).collect();
    assert_eq!(ids, my_ids, "JavaScript computes the same ids");
}
