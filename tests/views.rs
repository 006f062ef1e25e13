//! Views are a pure function of what the store committed: however appends
//! and readers interleave, every view ends equal to a fresh rebuild.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use scuttlefs::feed::{FeedId, Keypair, Message};
use scuttlefs::node::Node;
use scuttlefs::view::Views;

use common::node_config as config;

/// `n` messages of a feed from sequence 1, with a name first and, now and
/// then, a line too long for one message (split, then rejoined).
fn feed_messages(keys: &Keypair, name: &str, n: usize, base_ts: f64) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    for i in 0..n {
        let tip = out.last().map(Message::tip);
        let content = match i {
            0 => json!({"type": "about", "about": keys.id().to_string(), "name": name}),
            i if i % 97 == 5 => json!({"type": "log", "text": "part ", "more": true}),
            i => json!({"type": "log", "source": name, "text": format!("{name} line {i}")}),
        };
        // Interleaved in time with the other feeds, so that lines arrive
        // out of timestamp order.
        let ts = base_ts + (i as f64) * 3.0;
        out.push(Message::sign(keys, tip.as_ref(), ts, content).expect("signs"));
    }
    out
}

/// `merged.log`, and each feed's `log` and `feed.jsonl`.
type Shown = (Vec<u8>, HashMap<FeedId, (Vec<u8>, Vec<u8>)>);

/// Everything the views show, read through a handle opened now.
fn snapshot(views: &Views, node: &Node, feeds: &[FeedId]) -> Shown {
    let snap = views.merged_snapshot().expect("snapshot");
    let merged = views
        .read_merged(&snap, 0, views.merged_len() as usize)
        .expect("reads merged");
    let mut per_feed = HashMap::new();
    for feed in feeds {
        let log = views
            .read_feed_log(feed, 0, views.feed_log_len(feed) as usize)
            .expect("reads log");
        let len = views.jsonl_len(&node.store, feed).expect("jsonl len");
        let jsonl = views
            .read_jsonl(&node.store, feed, 0, len as usize)
            .expect("reads jsonl");
        assert_eq!(jsonl.len() as u64, len, "feed.jsonl reads its whole size");
        per_feed.insert(*feed, (log, jsonl));
    }
    (merged, per_feed)
}

/// Messages in each replicated feed.
const PER_FEED: usize = 700;

#[test]
fn every_view_equals_a_rebuild_after_concurrent_ingests_publishes_and_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Keypair::from_seed(&[1; 32]);
    let node = Arc::new(Node::open(config(dir.path()), keys.clone(), true).expect("opens"));
    // Many feeds, so that many feed.jsonl indexes are first made while
    // their feed is being replicated.
    let others: Vec<Keypair> = (2..14u8).map(|s| Keypair::from_seed(&[s; 32])).collect();
    let mut feeds: Vec<FeedId> = others.iter().map(Keypair::id).collect();
    feeds.push(keys.id());

    let expected = (others.len() * PER_FEED + 200 + 6000) as u64;
    let done = Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| {
        // Readers: open, stat and read every view while batches commit,
        // including a feed.jsonl first opened mid-replication.
        for r in 0..3 {
            let node = Arc::clone(&node);
            let done = Arc::clone(&done);
            let feeds = feeds.clone();
            scope.spawn(move || {
                let views = node.views().expect("views");
                let mut i = r;
                while !done.load(Ordering::Relaxed) {
                    let feed = &feeds[i % feeds.len()];
                    // The end of feed.jsonl: whole JSON lines, one per
                    // sequence, ending exactly at its size.
                    let len = views.jsonl_len(&node.store, feed).expect("jsonl len");
                    let from = len.saturating_sub(3000);
                    let tail = views
                        .read_jsonl(&node.store, feed, from, (len - from) as usize)
                        .expect("reads jsonl");
                    assert_eq!(tail.len() as u64, len - from, "reads to the size it had");
                    assert!(tail.is_empty() || tail.ends_with(b"\n"));
                    let mut lines = tail.split(|b| *b == b'\n').filter(|l| !l.is_empty());
                    if from > 0 {
                        lines.next(); // cut by the offset
                    }
                    let mut previous: Option<u64> = None;
                    for line in lines {
                        let value: Value = serde_json::from_slice(line).expect("whole JSON line");
                        let seq = value["value"]["sequence"].as_u64().expect("sequence");
                        if let Some(p) = previous {
                            assert_eq!(seq, p + 1, "one line per sequence");
                        }
                        previous = Some(seq);
                    }
                    let snap = views.merged_snapshot().expect("snapshot");
                    views
                        .read_merged(&snap, views.merged_len() / 2, 4096)
                        .expect("reads merged");
                    views.read_feed_log(feed, 0, 4096).expect("reads feed log");
                    i += 1;
                }
            });
        }
        // Ingesters: the feeds replicated in batches of varied size, with
        // overlapping resends (as when two peers deliver the same feed).
        for (f, other) in others.iter().enumerate() {
            let node = Arc::clone(&node);
            let msgs = feed_messages(other, &format!("m{f}"), PER_FEED, 1e12 + f as f64);
            scope.spawn(move || {
                let mut at = 0;
                let mut size = 1 + f * 7;
                while at < msgs.len() {
                    let end = (at + size).min(msgs.len());
                    let from = at.saturating_sub(3);
                    node.ingest_new(msgs[from..end].to_vec()).expect("ingests");
                    at = end;
                    size = size * 5 % 1100 + 1;
                }
            });
        }
        // A publisher: small writes and a large grouped publish.
        {
            let node = Arc::clone(&node);
            scope.spawn(move || {
                for i in 0..200 {
                    node.publish(vec![json!({"type": "log", "text": format!("own {i}")})])
                        .expect("publishes");
                }
                let many: Vec<Value> = (0..6000)
                    .map(|i| json!({"type": "log", "text": format!("bulk {i}")}))
                    .collect();
                node.publish(many).expect("publishes in bulk");
            });
        }
        // A merger, as the daemon runs: late lines (the feeds' timestamps
        // interleave) move into merged.log's order while others arrive.
        {
            let node = Arc::clone(&node);
            let done = Arc::clone(&done);
            scope.spawn(move || {
                let views = node.views().expect("views");
                while !done.load(Ordering::Relaxed) {
                    views.merge().expect("merges");
                }
            });
        }
        // Stop the readers once every writer has finished.
        let node = Arc::clone(&node);
        let done = Arc::clone(&done);
        scope.spawn(move || {
            while node.store.len() < expected {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            done.store(true, Ordering::Relaxed);
        });
    });

    let views = node.views().expect("views");
    let live = snapshot(views, &node, &feeds);
    let rebuilt_views =
        Views::rebuild(&dir.path().join("rebuilt.cache"), &node.store).expect("rebuilds");
    let rebuilt = snapshot(&rebuilt_views, &node, &feeds);
    assert_eq!(views.merged_len(), rebuilt_views.merged_len());
    assert!(
        live.0 == rebuilt.0,
        "merged.log equals a rebuild byte for byte"
    );
    // Merged into order, it is still the same, and read as it lies.
    views.merge().expect("merges");
    let snap = views.merged_snapshot().expect("snapshot");
    assert!(snap.direct_file().is_some(), "in order after a merge");
    assert!(
        snapshot(views, &node, &feeds).0 == rebuilt.0,
        "merged.log after a merge equals a rebuild byte for byte"
    );
    for feed in &feeds {
        let sources = views.job_sources(feed);
        assert_eq!(sources, rebuilt_views.job_sources(feed), "{feed}'s jobs");
        for source in sources {
            let len = views.job_log_len(feed, &source);
            assert_eq!(len, rebuilt_views.job_log_len(feed, &source));
            assert!(
                views
                    .read_job_log(feed, &source, 0, len as usize)
                    .expect("reads")
                    == rebuilt_views
                        .read_job_log(feed, &source, 0, len as usize)
                        .expect("reads"),
                "{feed}'s jobs/{source}.log equals a rebuild"
            );
        }
    }
    assert_eq!(
        views.days(),
        rebuilt_views.days(),
        "the days and their sizes"
    );
    for (day, len) in views.days() {
        let live_day = views
            .read_day(
                &mut views.day_snapshot(day).expect("day snapshot"),
                0,
                len as usize,
            )
            .expect("reads");
        let rebuilt_day = rebuilt_views
            .read_day(
                &mut rebuilt_views.day_snapshot(day).expect("day snapshot"),
                0,
                len as usize,
            )
            .expect("reads");
        assert!(live_day == rebuilt_day, "days/{day}.log equals a rebuild");
    }
    for feed in &feeds {
        let (log, jsonl) = &live.1[feed];
        let (rlog, rjsonl) = &rebuilt.1[feed];
        assert!(log == rlog, "{feed}'s log equals a rebuild");
        assert!(jsonl == rjsonl, "{feed}'s feed.jsonl equals a rebuild");
        let lines = jsonl.split(|b| *b == b'\n').filter(|l| !l.is_empty());
        for (i, line) in lines.enumerate() {
            let value: Value = serde_json::from_slice(line).expect("a whole JSON line");
            assert_eq!(value["value"]["sequence"], json!(i + 1), "{feed}");
        }
    }
    // And a node reopened from the store shows the same.
    let merged = live.0;
    drop(node);
    let node = Node::open(config(dir.path()), keys.clone(), true).expect("reopens");
    let reopened = snapshot(node.views().expect("views"), &node, &feeds);
    assert!(reopened.0 == merged, "merged.log after a restart");
    assert!(reopened.1 == live.1, "every feed's files after a restart");
    // Reopened again, from the checkpoint the last start saved, with
    // nothing to read: the same.
    drop(node);
    let node = Node::open(config(dir.path()), keys, true).expect("reopens");
    let restored = snapshot(node.views().expect("views"), &node, &feeds);
    assert!(restored.0 == merged, "merged.log from a checkpoint");
    assert!(restored.1 == live.1, "every feed's files from a checkpoint");
    let text = String::from_utf8(merged).expect("utf8");
    let parts = (0..PER_FEED).filter(|i| i % 97 == 5).count();
    assert_eq!(
        text.lines().filter(|l| l.contains(" m2 ")).count(),
        PER_FEED - 1 - parts
    );
    assert!(
        text.contains("m1 source=m1 part m1 line 6\n"),
        "split lines rejoin"
    );
}

#[test]
fn a_refused_batch_teaches_the_renderer_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::open(config(dir.path()), Keypair::from_seed(&[1; 32]), true).expect("opens");
    let other = Keypair::from_seed(&[9; 32]);
    let msgs = feed_messages(&other, "impostor", 4, 1e12);
    // The name comes first, then a gap: the batch is refused whole.
    let refused = vec![msgs[0].clone(), msgs[2].clone()];
    assert!(node.ingest(refused).is_err());
    assert!(!node.names().contains_key(&other.id()), "no name learned");
    // A valid batch without the about message: its lines carry the id.
    let mut plain: Vec<Message> = Vec::new();
    for i in 0..3 {
        let tip = plain.last().map(Message::tip);
        plain.push(
            Message::sign(
                &other,
                tip.as_ref(),
                1e12 + f64::from(i),
                json!({"type": "log", "text": "x"}),
            )
            .expect("signs"),
        );
    }
    node.ingest(plain).expect("ingests");
    let views = node.views().expect("views");
    let text = common::merged_text(views);
    assert_eq!(text.lines().count(), 3);
    assert!(!text.contains("impostor"), "{text}");
    assert!(text.contains(&other.id().file_safe()), "{text}");
}

#[test]
fn a_feed_jsonl_first_read_during_replication_counts_each_message_once() {
    // The first read of a feed's feed.jsonl indexes the feed from the store
    // while its replication goes on: batches committed during that scan
    // must be counted once, not again when the views take them.
    let keys = Keypair::from_seed(&[21; 32]);
    let msgs = feed_messages(&keys, "busy", 30_000, 1e12);
    for round in 0..3 {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = Arc::new(
            Node::open(config(dir.path()), Keypair::from_seed(&[1; 32]), true).expect("opens"),
        );
        node.ingest(msgs[..20_000].to_vec()).expect("ingests");
        let started = Arc::new(AtomicBool::new(false));
        std::thread::scope(|scope| {
            let ingester = Arc::clone(&node);
            let flag = Arc::clone(&started);
            let rest = &msgs[20_000..];
            scope.spawn(move || {
                for batch in rest.chunks(250) {
                    ingester.ingest(batch.to_vec()).expect("ingests");
                    flag.store(true, Ordering::Relaxed);
                }
            });
            while !started.load(Ordering::Relaxed) {
                std::thread::yield_now();
            }
            let views = node.views().expect("views");
            views
                .jsonl_len(&node.store, &keys.id())
                .expect("first read");
        });
        let views = node.views().expect("views");
        let live = views.jsonl_len(&node.store, &keys.id()).expect("size");
        let rebuilt = Views::rebuild(&dir.path().join("rebuilt.cache"), &node.store)
            .expect("rebuilds")
            .jsonl_len(&node.store, &keys.id())
            .expect("size");
        assert_eq!(
            live, rebuilt,
            "round {round}: feed.jsonl's size equals a rebuild's"
        );
        let all = views
            .read_jsonl(&node.store, &keys.id(), 0, live as usize)
            .expect("reads");
        let lines = all.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
        assert_eq!(lines, msgs.len(), "round {round}: one line per message");
    }
}
