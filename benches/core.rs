//! Signs, validates and stores 100,000 messages, as the core issue asks.
//!
//! Two paths, each the median of several runs:
//! - publish: `Node::publish` signs, chain-checks and stores (and renders
//!   the log lines), as `publish --stdin` and the mount's `publish` do;
//! - receive: full validation of each message (signatures checked in
//!   batches), then storing, as replication does, on one core and on two.
//!
//! `cargo bench --bench core`; BENCH_MESSAGES and BENCH_RUNS change the size.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use scuttlefs::feed::{Keypair, Message};
use scuttlefs::node::Node;

mod common;

use common::{env_or, median};

fn node_in(dir: &std::path::Path, keys: Keypair) -> Node {
    Node::open(common::config(dir), keys, false).expect("node")
}

fn contents(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"type": "log", "source": "bench", "text": format!("backup line {i} finished ok")}))
        .collect()
}

/// Full validation as replication does it: one signature batch per thread.
fn verify_parallel(values: &[Value], threads: usize) -> Vec<Message> {
    let chunk = values.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = values
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    Message::verify_many(part.to_vec())
                        .into_iter()
                        .map(|m| m.expect("valid"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("verifier"))
            .collect()
    })
}

fn main() {
    let n = env_or("BENCH_MESSAGES", 100_000);
    let runs = env_or("BENCH_RUNS", 5);
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    let (mut publish, mut receive1, mut receive2) = (vec![], vec![], vec![]);
    for run in 0..runs {
        // Publish: sign + chain check + store, in writes of 10,000 lines.
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = Keypair::generate();
        let node = node_in(dir.path(), keys.clone());
        let all = contents(n);
        let start = Instant::now();
        for chunk in all.chunks(10_000) {
            node.publish(chunk.to_vec()).expect("publishes");
        }
        node.flush().expect("flush");
        let published = start.elapsed();
        let values: Vec<Value> = node
            .store
            .history(&keys.id(), 1)
            .map(|r| {
                let (_, raw) = r.expect("reads");
                serde_json::from_slice(raw.json()).expect("json")
            })
            .collect();

        // Receive: validate everything, then store, on 1 and 2 threads.
        let mut received = Vec::new();
        for threads in [1, 2] {
            let dir = tempfile::tempdir().expect("tempdir");
            let node = node_in(dir.path(), Keypair::generate());
            let start = Instant::now();
            for chunk in values.chunks(10_000) {
                let msgs = verify_parallel(chunk, threads);
                node.ingest(msgs).expect("ingests");
            }
            node.flush().expect("flush");
            received.push(start.elapsed());
        }
        eprintln!(
            "run {run}: publish {:.0}/s, receive (1 thread) {:.0}/s, receive (2 threads) {:.0}/s",
            rate(published),
            rate(received[0]),
            rate(received[1])
        );
        publish.push(rate(published));
        receive1.push(rate(received[0]));
        receive2.push(rate(received[1]));
    }
    println!("messages: {n}, runs: {runs}, medians");
    println!(
        "publish (sign + chain check + store):        {:>7.0} msg/s",
        median(publish)
    );
    println!(
        "receive (validate + store), 1 verify thread:  {:>7.0} msg/s",
        median(receive1)
    );
    println!(
        "receive (validate + store), 2 verify threads: {:>7.0} msg/s",
        median(receive2)
    );
}
