//! Machines whose clocks are wrong, run under libfaketime (Debian's
//! `faketime`): 3 seconds behind, 3 years behind, a year ahead. Their
//! lines land where the rule in `src/clock.rs` says, and the machines
//! whose clocks are off are named.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{fuse_available, system_available, wait_until, Daemon};

const KEY: &str = "c2NHZTJ0Bpw9Qx1x1Ck2yJ0uWl7hQmFzb0N1c3RvbUs=";

/// libfaketime's library, from Debian's `faketime` package.
fn libfaketime() -> Option<String> {
    let listed = Command::new("dpkg")
        .args(["-L", "libfaketime"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .find(|l| l.ends_with("/libfaketime.so.1"))
        .map(str::to_string)
}

fn faketime_available() -> bool {
    system_available(
        "libfaketime (Debian's faketime package)",
        libfaketime().is_some(),
    )
}

/// A daemon whose clock is `offset` off (faketime's `-3s`, `-3y`, `+1y`),
/// dialling `hub`.
fn skewed(dir: &std::path::Path, name: &str, offset: &str, hub: &str) -> Daemon {
    let library = libfaketime().expect("libfaketime");
    Daemon::start_with_env(
        None,
        &[
            ("LD_PRELOAD", &library),
            ("FAKETIME", offset),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
        &dir.join(name),
        name,
        &[
            "--no-discovery",
            "--port",
            "0",
            "--caps.shs",
            KEY,
            "--peer",
            hub,
        ],
    )
}

fn publish(daemon: &Daemon, line: &str) {
    let out = daemon.sh(&format!("echo '{line}' >> publish"));
    assert!(out.status.success(), "{out:?}");
}

fn position(lines: &[&str], text: &str) -> usize {
    lines
        .iter()
        .position(|l| l.ends_with(text))
        .unwrap_or_else(|| panic!("no line {text:?} in:\n{}", lines.join("\n")))
}

#[test]
fn lines_from_wrong_clocks_land_where_a_person_looks_and_the_clocks_are_named() {
    if !fuse_available() || !faketime_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let here = Daemon::start(&dir.path().join("here"), "here", &["--caps.shs", KEY]);
    let hub = here.loopback_address();
    let slow = skewed(dir.path(), "slow", "-3s", &hub);
    let oldpi = skewed(dir.path(), "oldpi", "-3y", &hub);
    let ahead = skewed(dir.path(), "ahead", "+1y", &hub);
    for other in [&slow, &oldpi, &ahead] {
        let out = here.sh(&format!("echo '{}' >> follow", other.id()));
        assert!(out.status.success());
    }
    publish(&here, "here first");
    publish(&slow, "from slow");
    publish(&oldpi, "from oldpi");
    publish(&ahead, "from ahead");
    assert!(
        wait_until(Duration::from_secs(30), || {
            let merged = here.read("merged.log");
            ["from slow", "from oldpi", "from ahead"]
                .iter()
                .all(|l| merged.contains(l))
        }),
        "not every line arrived:\n{}",
        here.read("merged.log")
    );
    publish(&here, "here after");
    // Late lines are merged into order a second after they stop coming.
    assert!(wait_until(Duration::from_secs(20), || !here
        .read("status")
        .contains("merging:")));
    let merged = here.read("merged.log");
    let lines: Vec<&str> = merged.lines().collect();
    // A year ahead: placed where it arrived, before what came after it,
    // with the time it claims still shown.
    let ahead_at = position(&lines, "ahead from ahead");
    assert!(ahead_at < position(&lines, "here here after"), "{merged}");
    assert!(lines[ahead_at].starts_with("2027-"), "{}", lines[ahead_at]);
    // Three years behind is a plausible time: placed at it, in the past.
    assert!(position(&lines, "oldpi from oldpi") < position(&lines, "here here first"));
    // Every line but the one from the clock ahead is in timestamp order.
    let stamps: Vec<&str> = lines
        .iter()
        .filter(|l| !l.contains(" ahead "))
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect();
    let mut sorted = stamps.clone();
    sorted.sort();
    assert_eq!(stamps, sorted, "{merged}");

    // The clocks that are off are named in status and health; the one
    // 3 s behind is not.
    let named = wait_until(Duration::from_secs(20), || {
        let status = here.read("status");
        status.contains("3 years behind") && status.contains("1 year ahead")
    });
    let status = here.read("status");
    assert!(named, "{status}");
    assert!(!status.contains("clock slow @"), "{status}");
    let health = here.read("health");
    let clock_rows: Vec<&str> = health.lines().filter(|l| l.starts_with("clock ")).collect();
    assert_eq!(clock_rows.len(), 2, "{health}");
    assert!(clock_rows.iter().any(|r| r.contains("oldpi")), "{health}");
    assert!(clock_rows.iter().any(|r| r.contains("ahead")), "{health}");
}

/// Bytes the process has passed to write calls (`wchar`).
fn bytes_written(daemon: &Daemon) -> u64 {
    let pid = daemon.child.as_ref().expect("running").id();
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/PID/io");
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("wchar")
}

fn inode(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat").ino()
}

#[test]
fn a_burst_of_late_lines_costs_the_lines_not_the_file() {
    if !fuse_available() || !faketime_available() {
        return;
    }
    const HISTORY: usize = 300_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("here");
    // A day of history, published while this machine's clock said
    // yesterday: the late lines below jump over none of it.
    let library = libfaketime().expect("libfaketime");
    let mut yesterday = Daemon::start_with_env(
        None,
        &[
            ("LD_PRELOAD", &library),
            ("FAKETIME", "-1d"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
        &path,
        "here",
        &["--no-discovery", "--port", "0", "--caps.shs", KEY],
    );
    let out = yesterday.sh(&format!(
        "seq 1 {HISTORY} | sed 's/^/history line /' >> publish"
    ));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(yesterday.stop(), Some(0));
    drop(yesterday);

    let here = Daemon::start(&path, "here", &["--caps.shs", KEY]);
    let behind = skewed(dir.path(), "behind", "-30s", &here.loopback_address());
    let out = here.sh(&format!("echo '{}' >> follow", behind.id()));
    assert!(out.status.success());
    publish(&behind, "hello");
    assert!(
        wait_until(Duration::from_secs(30), || here
            .try_read("behind/log")
            .is_ok_and(|log| log.contains("hello"))),
        "behind's first line never arrived"
    );
    // Twenty lines here, then twelve from the machine 30 s behind, which
    // go before them; returns the bytes the daemon wrote meanwhile.
    let merged = here.file("merged.log");
    let burst = |round: usize| -> u64 {
        let out = here.sh(&format!(
            "for i in $(seq 1 20); do echo tick {round}.$i; done >> publish"
        ));
        assert!(out.status.success());
        let (written, ino) = (bytes_written(&here), inode(&merged));
        let out = behind.sh(&format!("seq 1 12 | sed 's/^/late {round}./' >> publish"));
        assert!(out.status.success());
        let last = format!("late {round}.12");
        assert!(
            wait_until(Duration::from_secs(30), || here
                .try_read("behind/log")
                .is_ok_and(|log| log.contains(&last))),
            "the late lines never arrived"
        );
        assert!(
            wait_until(Duration::from_secs(30), || {
                !here.read("status").contains("merging:") && inode(&merged) != ino
            }),
            "the late lines were not merged: {}",
            here.read("status")
        );
        bytes_written(&here) - written
    };
    // The first late lines ever part merged.log's file from the line file
    // (arrival order, which each machine's log reads): a copy, once.
    let split = burst(1);
    let costs: Vec<u64> = (2..=4).map(burst).collect();
    eprintln!(
        "late lines into {HISTORY} lines: {split} bytes written for the first burst, \
         then {costs:?}"
    );
    assert!(split > 10 << 20, "the first burst copied the file: {split}");
    for cost in &costs {
        assert!(*cost < 1 << 20, "{cost} bytes written for 12 late lines");
    }

    // And they are where their time puts them: before the ticks, in
    // timestamp order with everything else.
    let out = here.sh("grep -E ' (tick|late) ' merged.log");
    let found = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = found.lines().collect();
    assert_eq!(lines.len(), 4 * 32, "{found}");
    assert!(
        position(&lines, "behind late 4.12") < position(&lines, "here tick 4.1"),
        "{found}"
    );
    let stamps: Vec<&str> = lines
        .iter()
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect();
    let mut sorted = stamps.clone();
    sorted.sort();
    assert_eq!(stamps, sorted, "{found}");
}
