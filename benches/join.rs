//! From `scuttlefs join CODE` on a new machine to its first line in the
//! inviter's merged.log (issue 23): on the LAN (the inviter's site), and
//! from another site through a room. Real daemons in network namespaces,
//! ssb-room 1.3.0 from npm in the middle, as tests/join.rs runs them.
//! Beside each, in the same run: a second line from the machine once it is
//! in, to the same merged.log (what a line costs once joined).
//!
//!   RUNS=5 cargo bench --bench join     (root, FUSE, `npm ci` in tests/js-room)

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::lan::Lan;
use common::room;
use common::sites::Sites;
use common::ssb_server::KEY;
use common::{bin, run_ok, wait_until, Daemon};

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Joins a new machine at `path` in `ns` with a fresh code from `inviter`;
/// returns seconds from the join to its first line in the inviter's
/// merged.log, then from its second line to the same, and the machine.
fn join_once(inviter: &Daemon, ns: &str, path: &Path, name: &str, port: u16) -> (f64, f64, Daemon) {
    let inviter_path = inviter.path.to_str().expect("utf8");
    let code = run_ok(&["--path", inviter_path, "join-code"])
        .trim()
        .to_string();
    let path_str = path.to_str().expect("utf8");
    let first = format!("{name} says hello");
    let started = Instant::now();
    let joined = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{ns}"))
        .arg(bin())
        .args(["--path", path_str, "join", &code, "--name", name])
        .output()
        .expect("join runs");
    assert!(
        joined.status.success(),
        "{}",
        String::from_utf8_lossy(&joined.stderr)
    );
    let daemon = Daemon::start_in(Some(ns), path, name, &["--port", &port.to_string()]);
    daemon.publish_line(&first);
    assert!(
        wait_until(Duration::from_secs(120), || inviter.merged_has(&first)),
        "{name}'s line never arrived"
    );
    let joined_in = started.elapsed().as_secs_f64();
    let second = format!("{name} says hello again");
    let sent = Instant::now();
    daemon.publish_line(&second);
    assert!(wait_until(Duration::from_secs(60), || inviter.merged_has(&second)));
    (joined_in, sent.elapsed().as_secs_f64(), daemon)
}

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    if !Lan::available() || !room::available() {
        eprintln!("bench join: needs root, FUSE, ip netns and tests/js-room/node_modules");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let sites = Sites::new("bj");
    let (_room, a) = room::inviter_in_a_room(dir.path(), &sites, KEY);
    let (mut lan, mut lan_next, mut far, mut far_next) = (vec![], vec![], vec![], vec![]);
    let mut machines = Vec::new();
    for i in 0..runs {
        let name = format!("lan{i}");
        let (joined, next, daemon) = join_once(
            &a,
            &sites.a,
            &dir.path().join(&name),
            &name,
            8100 + i as u16,
        );
        println!("LAN  run {i}: first line after {joined:.2} s (a second line: {next:.3} s)");
        lan.push(joined);
        lan_next.push(next);
        machines.push(daemon);
        let name = format!("far{i}");
        let (joined, next, daemon) = join_once(
            &a,
            &sites.b,
            &dir.path().join(&name),
            &name,
            8100 + i as u16,
        );
        println!("room run {i}: first line after {joined:.2} s (a second line: {next:.3} s)");
        far.push(joined);
        far_next.push(next);
        machines.push(daemon);
    }
    println!(
        "join to first line in the inviter's merged.log, median of {runs}: LAN {:.2} s (target 5), \
         through a room {:.2} s (target 10); a later line, same runs: LAN {:.3} s, room {:.3} s",
        median(lan),
        median(far),
        median(lan_next),
        median(far_next)
    );
}
