//! The store: chain checks on the way in, and durability across SIGKILL.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::json;

use scuttlefs::feed::{FeedError, FeedTip, Keypair, Message};
use scuttlefs::store::{Store, StoreError};

fn chain(keys: &Keypair, n: usize) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    for i in 0..n {
        let tip = out.last().map(Message::tip);
        out.push(
            Message::sign(
                keys,
                tip.as_ref(),
                1000.0 + i as f64,
                json!({"type": "log", "text": i}),
            )
            .expect("signs"),
        );
    }
    out
}

fn no_line(_: &Message) -> Option<Vec<u8>> {
    None
}

#[test]
fn gaps_forks_and_wrong_previous_are_refused_and_leave_the_store_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("opens");
    let keys = Keypair::generate();
    let msgs = chain(&keys, 3);
    store
        .append(vec![msgs[0].clone()], no_line, 1.0)
        .expect("first");

    // A gap: sequence 3 after 1.
    let err = store
        .append(vec![msgs[2].clone()], no_line, 1.0)
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Rejected(FeedError::OutOfOrder {
            expected: 2,
            got: 3
        })
    ));

    // A fork: a different message 2 whose previous is not message 1.
    let other_tip = FeedTip {
        key: msgs[1].key,
        sequence: 1,
        timestamp: 0.0,
    };
    let fork = Message::sign(&keys, Some(&other_tip), 5.0, json!({"type": "log"})).expect("signs");
    let err = store.append(vec![fork], no_line, 1.0).unwrap_err();
    assert!(matches!(
        err,
        StoreError::Rejected(FeedError::Fork { sequence: 2 })
    ));

    // A batch is all or nothing: a good message followed by a bad one.
    let err = store
        .append(vec![msgs[1].clone(), msgs[1].clone()], no_line, 1.0)
        .unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)));
    assert_eq!(store.tip(&keys.id()).map(|t| t.sequence), Some(1));
    assert_eq!(store.len(), 1);
    assert!(store.get(&keys.id(), 2).expect("reads").is_none());

    store
        .append(msgs[1..].to_vec(), no_line, 1.0)
        .expect("the rest");
    assert_eq!(store.tip(&keys.id()).map(|t| t.sequence), Some(3));
    let third = store.get(&keys.id(), 3).expect("reads").expect("found");
    assert_eq!(third.key, msgs[2].key);
    assert_eq!(third.value, msgs[2].value);
}

/// Not a test: the child that `acknowledged_messages_survive_sigkill` runs
/// and kills. It appends and flushes forever, printing each acknowledged
/// sequence.
#[test]
#[ignore = "a helper process, run by acknowledged_messages_survive_sigkill"]
fn crash_child() {
    let dir = std::env::var("SCUTTLEFS_CRASH_CHILD_DIR")
        .expect("SCUTTLEFS_CRASH_CHILD_DIR: run only by acknowledged_messages_survive_sigkill");
    let store = Store::open(std::path::Path::new(&dir)).expect("opens");
    let keys = Keypair::from_seed(&[3; 32]);
    let mut tip: Option<FeedTip> = None;
    for i in 0.. {
        // Batches of varying size, so the kill lands mid-batch often.
        let batch: Vec<Message> = (0..(i % 7 + 1))
            .map(|j| {
                let msg = Message::sign(
                    &keys,
                    tip.as_ref(),
                    1e12 + (i * 10 + j) as f64,
                    json!({"type": "log", "text": format!("batch {i} item {j}")}),
                )
                .expect("signs");
                tip = Some(msg.tip());
                msg
            })
            .collect();
        let last = batch.last().map(|m| m.sequence).unwrap_or(0);
        store.append(batch, no_line, 1.0).expect("appends");
        store.flush().expect("flushes");
        println!("acked {last}");
        // The log's older records compressed as the daemon does, so that
        // the kill can land in a seal too.
        if i % 50 == 0 {
            store.sync_log().expect("syncs");
            store.seal_cold(1024).expect("seals");
        }
    }
}

#[test]
fn acknowledged_messages_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SCUTTLEFS_CRASH_CHILD_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child starts");
    let mut acked = 0u64;
    let stdout = child.stdout.take().expect("stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        if let Some(n) = line.strip_prefix("acked ") {
            acked = n.trim().parse().expect("number");
            // Past a few compressed blocks (256 KiB of records each).
            let sealed = std::fs::metadata(scuttlefs::store::dir::cold_path(dir.path()))
                .map_or(0, |m| m.len());
            if acked >= 300 && sealed > 0 && acked % 13 == 0 {
                break;
            }
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    assert!(acked >= 300, "the child stopped early at {acked}");
    assert!(
        std::fs::metadata(scuttlefs::store::dir::cold_path(dir.path())).is_ok_and(|m| m.len() > 0),
        "part of the log was compressed before the kill"
    );

    let store = Store::open(dir.path()).expect("reopens after SIGKILL");
    let feed = Keypair::from_seed(&[3; 32]).id();
    let tip = store.tip(&feed).expect("has a tip");
    assert!(
        tip.sequence >= acked,
        "lost acknowledged messages: tip {} < {acked}",
        tip.sequence
    );
    // Every message up to the tip is there, verifies, and chains.
    let mut previous: Option<FeedTip> = None;
    for seq in 1..=tip.sequence {
        let raw = store.get_raw(&feed, seq).expect("reads").expect("no hole");
        let value: serde_json::Value = serde_json::from_slice(raw.json()).expect("json");
        let msg = Message::verify(value).expect("stored message is valid");
        assert_eq!(msg.key, raw.key);
        FeedTip::check_next(previous.as_ref(), &msg).expect("chain intact");
        previous = Some(msg.tip());
    }
    assert_eq!(store.len(), tip.sequence, "receive log matches the feed");
}
