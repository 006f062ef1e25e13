//! What a burst of slightly late lines costs `merged.log`'s file.
//!
//! Machine A's feed holds BENCH_LINES lines (1,000,000 by default), one a
//! second, ending an hour ago. Then, BENCH_BURSTS times over: A adds 30
//! lines in order, and machine B a burst of 12 lines 8 to 20 seconds
//! behind A's last, which go in just before A's newest lines. Each burst
//! is merged with [`Views::merge`], and the merging thread's bytes written
//! (`wchar` in `/proc/thread-self/io`), CPU time and wall time are taken.
//!
//! Bursts alternate between the two ways a merge can go, so that both see
//! the same noise:
//! - free: no handle holds `merged.log`; the merge rewrites the part after
//!   the first insertion point in place;
//! - held: a handle opened before holds it (as a `tail -f` would); the
//!   merge writes the next generation whole, as every merge did before.
//!
//! `cargo bench --bench late`; BENCH_LINES and BENCH_BURSTS change the size.

use std::time::{Duration, Instant};

use serde_json::json;

use scuttlefs::feed::{FeedTip, Keypair, Message};
use scuttlefs::node::Node;

mod common;

use common::{env_or, median};

/// Bytes this thread has passed to write calls.
fn written() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").expect("/proc/thread-self/io");
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("wchar")
}

/// This thread's CPU time.
fn cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A feed that signs lines at the times it is given.
struct Machine {
    keys: Keypair,
    tip: Option<FeedTip>,
    name: &'static str,
    lines: u64,
}

impl Machine {
    fn new(name: &'static str) -> Machine {
        Machine {
            keys: Keypair::generate(),
            tip: None,
            name,
            lines: 0,
        }
    }

    fn line(&mut self, at_ms: f64) -> Message {
        self.lines += 1;
        let content = json!({
            "type": "log",
            "source": "backup",
            "text": format!("{} line {} of the nightly backup, all well", self.name, self.lines),
        });
        let msg = Message::sign(&self.keys, self.tip.as_ref(), at_ms, content).expect("signs");
        self.tip = Some(msg.tip());
        msg
    }
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

struct Cost {
    bytes: f64,
    cpu_ms: f64,
    wall_ms: f64,
}

fn main() {
    let lines = env_or("BENCH_LINES", 1_000_000);
    let bursts = env_or("BENCH_BURSTS", 21);
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::open(common::config(dir.path()), Keypair::generate(), true).expect("node");
    let views = node.views().expect("views");
    let mut a = Machine::new("nas");
    let mut b = Machine::new("laptop");
    let now = scuttlefs::clock::now_ms();
    let mut clock = now - 3_600_000.0 - lines as f64 * 1000.0;
    let started = Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    for _ in 0..lines {
        clock += 1000.0;
        batch.push(a.line(clock));
        if batch.len() == 10_000 {
            node.ingest(std::mem::take(&mut batch)).expect("ingests");
        }
    }
    node.ingest(batch).expect("ingests");
    node.flush().expect("flush");
    eprintln!("{lines} lines in {:?}", started.elapsed());

    let mut free = Vec::new();
    let mut held = Vec::new();
    // Burst 0 leaves the line file for a generation of its own, which
    // later merges may rewrite: taken apart from the others.
    for burst in 0..=bursts {
        let in_order: Vec<Message> = (0..30)
            .map(|_| {
                clock += 1000.0;
                a.line(clock)
            })
            .collect();
        node.ingest(in_order).expect("ingests");
        let late: Vec<Message> = (0..12)
            .map(|i| b.line(clock - 20_000.0 + f64::from(i) * 1000.0))
            .collect();
        node.ingest(late).expect("ingests");
        let hold = burst % 2 == 1;
        let handle = hold.then(|| views.merged_snapshot().expect("snapshot"));
        let (bytes, cpu_at, wall_at) = (written(), cpu(), Instant::now());
        assert!(
            views.merge().expect("merges"),
            "burst {burst} merged nothing"
        );
        let cost = Cost {
            bytes: (written() - bytes) as f64,
            cpu_ms: (cpu() - cpu_at).as_secs_f64() * 1000.0,
            wall_ms: wall_at.elapsed().as_secs_f64() * 1000.0,
        };
        drop(handle);
        eprintln!(
            "burst {burst} ({}): {:.0} bytes, {:.2} ms CPU, {:.2} ms",
            if hold { "held" } else { "free" },
            cost.bytes,
            cost.cpu_ms,
            cost.wall_ms
        );
        if burst > 0 {
            if hold {
                held.push(cost);
            } else {
                free.push(cost);
            }
        }
        // As the daemon does after a merge.
        node.save_views();
    }
    let file = views.merged_len();
    println!("merged.log: {lines} lines before the bursts, {file} bytes");
    let checkpoint: u64 = walk(dir.path())
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".state"))
        .filter_map(|p| p.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!("the views' checkpoint, saved after each merge: {checkpoint} bytes");
    for (name, costs) in [
        ("free (rewritten in place)", &free),
        ("held (written whole)", &held),
    ] {
        println!(
            "{name}: median of {} bursts: {:.0} bytes written, {:.2} ms CPU, {:.2} ms",
            costs.len(),
            median(costs.iter().map(|c| c.bytes).collect()),
            median(costs.iter().map(|c| c.cpu_ms).collect()),
            median(costs.iter().map(|c| c.wall_ms).collect()),
        );
    }
}
