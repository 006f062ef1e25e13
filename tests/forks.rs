//! A machine restored from a backup: it fetches the rest of its own feed
//! from a peer before it publishes again, and a feed that forked anyway is
//! shown, not silently dropped.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{fuse_available, run_ok, wait_until, Daemon};

const KEY: &str = "Rk9SS1NmcmVzaGx5cmVzdG9yZWRmcm9tYmFja3VwISE=";

fn publish(daemon: &Daemon, line: &str) {
    let out = daemon.sh(&format!("echo '{line}' >> publish"));
    assert!(out.status.success(), "{out:?}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::remove_dir_all(to);
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success());
}

/// A hub, and a machine "nas" that published one and two, was backed up,
/// then published three and four, all of which the hub holds. The nas is
/// stopped, and its store is the backup again. Returns (hub, nas path).
fn restored_nas(dir: &std::path::Path) -> (Daemon, std::path::PathBuf) {
    let hub = Daemon::start(&dir.join("hub"), "hub", &["--caps.shs", KEY]);
    let nas_path = dir.join("nas");
    let args = ["--caps.shs", KEY, "--peer", &hub.loopback_address()];
    let mut nas = Daemon::start(&nas_path, "nas", &args);
    let out = hub.sh(&format!("echo '{}' >> follow", nas.id()));
    assert!(out.status.success());
    publish(&nas, "one");
    publish(&nas, "two");
    assert!(wait_until(Duration::from_secs(20), || hub
        .read("merged.log")
        .contains("nas two")));
    nas.stop();
    copy_dir(&nas_path, &dir.join("backup"));
    let nas = Daemon::start(&nas_path, "nas", &args);
    publish(&nas, "three");
    publish(&nas, "four");
    assert!(wait_until(Duration::from_secs(20), || hub
        .read("merged.log")
        .contains("nas four")));
    drop(nas);
    copy_dir(&dir.join("backup"), &nas_path);
    (hub, nas_path)
}

#[test]
fn a_machine_restored_from_a_backup_fetches_its_feed_back_and_does_not_fork() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (hub, nas_path) = restored_nas(dir.path());
    let nas = Daemon::start(
        &nas_path,
        "nas",
        &["--caps.shs", KEY, "--peer", &hub.loopback_address()],
    );
    // The hub's clock shows it holds more of the nas's feed: the nas
    // fetches it back.
    assert!(
        wait_until(Duration::from_secs(30), || nas
            .try_read("nas/log")
            .is_ok_and(|log| log.contains("four"))),
        "the nas did not get its feed back:\n{}",
        nas.log()
    );
    publish(&nas, "after the restore");
    assert!(
        wait_until(Duration::from_secs(20), || hub
            .read("merged.log")
            .contains("nas after the restore")),
        "{}",
        hub.log()
    );
    let log = nas.read("nas/log");
    let order: Vec<&str> = log
        .lines()
        .map(|l| l.rsplit(" nas ").next().unwrap_or(""))
        .collect();
    assert_eq!(
        order,
        ["one", "two", "three", "four", "after the restore"],
        "{log}"
    );
    assert!(!hub.read("health").contains("forked"));
    assert!(nas
        .log()
        .contains("holds this machine's feed up to sequence"));
}

#[test]
fn a_feed_that_forked_is_shown_in_status_and_health_and_its_lines_are_not_mixed_in() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (hub, nas_path) = restored_nas(dir.path());
    // The restored nas publishes before it meets the hub: three messages,
    // past what the hub holds, from the backup's sequence on.
    let path = nas_path.to_str().expect("utf-8");
    for text in ["fork one", "fork two", "fork three"] {
        run_ok(&["publish", "--path", path, "--type", "log", "--text", text]);
    }
    let nas = Daemon::start(
        &nas_path,
        "nas",
        &["--caps.shs", KEY, "--peer", &hub.loopback_address()],
    );
    assert!(
        wait_until(Duration::from_secs(30), || hub
            .read("status")
            .contains("fork")),
        "the hub did not notice the fork:\n{}\n{}",
        hub.read("status"),
        hub.log()
    );
    let status = hub.read("status");
    assert!(
        status.contains("nas") && status.contains("forked at sequence"),
        "{status}"
    );
    let health = hub.read("health");
    let row = health
        .lines()
        .find(|l| l.starts_with("forked "))
        .unwrap_or_else(|| panic!("no forked row:\n{health}"));
    assert!(row.contains("nas"), "{row}");
    assert!(!hub.read("merged.log").contains("fork one"));
    // Health says all is not well.
    let out = Command::new(common::bin())
        .args(["health", "--path"])
        .arg(dir.path().join("hub"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    drop(nas);
}
