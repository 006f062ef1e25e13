//! scuttlefs and the reference implementation, ssb-server 16 from the npm
//! registry, replicate each other's feeds whichever side dials.

mod common;

use std::time::Duration;

use common::lan::Lan;
use common::ssb_server::{SsbServer, KEY};
use common::{fuse_available, node_modules_available, wait_until, Daemon};
use scuttlefs::feed::Message;

/// ssb-server is heavy on two cores, and ssb-client gives up after a few
/// seconds: the tests here run one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Content that ssb-server's validator and ids must agree on byte for byte.
const TRICKY: &[&str] = &[
    r#"{"type":"test","f":0.1,"big":1e21,"small":1.5e-7,"third":0.3333333333333333,"neg":-2.5}"#,
    r#"{"type":"test","text":"outside the BMP: 😀 𝄞, and é","10":"ten","2":"two","a":{"1":1,"0":0}}"#,
    "a plain log line with \"quotes\" and \\backslashes\\",
];

/// Publishes the tricky content on `daemon`, waits for ssb-server to store
/// all of the feed, and checks that what it stores has our ids.
fn check_ssb_server_stores_our_feed(daemon: &Daemon, server: &SsbServer) {
    for line in TRICKY {
        std::fs::write(daemon.path.with_file_name("line.txt"), format!("{line}\n")).expect("write");
        let out = daemon.sh(&format!(
            "cat {} >> publish",
            daemon.path.with_file_name("line.txt").display()
        ));
        assert!(out.status.success());
    }
    let me = daemon.id();
    let ours: Vec<String> = daemon
        .read("rusty/feed.jsonl")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            v["key"].as_str().expect("key").to_string()
        })
        .collect();
    let total = ours.len().to_string();
    assert!(
        wait_until(Duration::from_secs(30), || server.sbot(&["latest", &me])
            == total),
        "ssb-server has {} of our {total} messages:\n{}",
        server.sbot(&["latest", &me]),
        daemon.log()
    );
    let theirs: Vec<String> = server
        .sbot(&["history", &me])
        .lines()
        .map(|l| {
            let value: serde_json::Value = serde_json::from_str(l).expect("json");
            Message::verify(value)
                .expect("ssb-server stored a valid message")
                .key
                .to_string()
        })
        .collect();
    assert_eq!(theirs, ours, "ssb-server stores our messages with our ids");
}

fn check_we_get_ssb_servers_log(daemon: &Daemon, server: &SsbServer) {
    server.sbot(&[
        "publish",
        r#"{"type":"log","source":"nas","destination":"offsite","text":" nightly backup ok"}"#,
    ]);
    let sid = server.id();
    assert!(
        wait_until(Duration::from_secs(30), || daemon
            .read("merged.log")
            .contains(" source=nas destination=offsite  nightly backup ok\n")),
        "ssb-server's log line never arrived:\n{}\n{}",
        daemon.read("merged.log"),
        daemon.log()
    );
    assert!(daemon
        .read(&format!("{}/log", sid.replace('/', "_")))
        .contains("nightly backup ok"));
    // And live, once connected.
    server.sbot(&["publish", r#"{"type":"log","text":"live from ssb-server"}"#]);
    assert!(
        wait_until(Duration::from_secs(5), || daemon
            .read("merged.log")
            .contains(" live from ssb-server\n")),
        "a live line took more than 5 s"
    );
}

#[test]
fn scuttlefs_dials_ssb_server_and_both_replicate() {
    let _serial = serial();
    if !node_modules_available() || !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = SsbServer::start(dir.path());
    let daemon = Daemon::start(
        &dir.path().join("rusty"),
        "rusty",
        &["--caps.shs", KEY, "--peer", &server.address()],
    );
    assert!(daemon
        .sh(&format!("echo '{}' >> follow", server.id()))
        .status
        .success());
    server.sbot(&["follow", &daemon.id()]);
    check_we_get_ssb_servers_log(&daemon, &server);
    check_ssb_server_stores_our_feed(&daemon, &server);
}

#[test]
fn ssb_server_dials_scuttlefs_and_both_replicate() {
    let _serial = serial();
    if !node_modules_available() || !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = SsbServer::start(dir.path());
    let daemon = Daemon::start(&dir.path().join("rusty"), "rusty", &["--caps.shs", KEY]);
    assert!(daemon
        .sh(&format!("echo '{}' >> follow", server.id()))
        .status
        .success());
    server.sbot(&["follow", &daemon.id()]);
    let me = daemon.id();
    let address = format!(
        "net:127.0.0.1:{}~shs:{}",
        daemon.port(),
        &me[1..me.len() - 8]
    );
    server.sbot(&["connect", &address]);
    check_we_get_ssb_servers_log(&daemon, &server);
    check_ssb_server_stores_our_feed(&daemon, &server);
}

#[test]
fn scuttlefs_and_ssb_server_find_each_other_on_the_lan() {
    let _serial = serial();
    if !node_modules_available() || !Lan::available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lan = Lan::new("i");
    let (ns_server, ns_rusty) = (lan.host(1), lan.host(2));
    // Both on the default port 8008, as the seed runs them; no addresses
    // given to either: broadcast alone.
    let server = SsbServer::start_in(
        dir.path(),
        Some(&ns_server),
        8008,
        &["--host", "10.213.0.1"],
    );
    let daemon = Daemon::start_in(
        Some(&ns_rusty),
        &dir.path().join("rusty"),
        "rusty",
        &["--caps.shs", KEY],
    );
    assert!(daemon
        .sh(&format!("echo '{}' >> follow", server.id()))
        .status
        .success());
    server.sbot(&["follow", &daemon.id()]);
    server.sbot(&["publish", r#"{"type":"log","text":"found you on the LAN"}"#]);
    assert!(
        wait_until(Duration::from_secs(60), || daemon
            .read("merged.log")
            .contains(" found you on the LAN\n")),
        "no replication over the LAN:\n{}",
        daemon.log()
    );
    assert!(daemon
        .sh("echo 'and you found me' >> publish")
        .status
        .success());
    let me = daemon.id();
    assert!(
        wait_until(Duration::from_secs(60), || server
            .sbot(&["latest", &me])
            .parse::<u64>()
            .unwrap_or(0)
            >= 3),
        "ssb-server never got our feed:\n{}",
        daemon.log()
    );
}
