//! Strangers and keyed peers that try to exhaust the daemon: thousands of
//! connections that never finish a handshake, and a peer with the network
//! key that opens thousands of streams and stops reading. The daemon keeps
//! its descriptors and memory bounded, a real peer still replicates, and
//! the mount keeps working.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{fuse_available, wait_until, Daemon};
use scuttlefs::feed::{FeedId, Keypair};
use scuttlefs::net::muxrpc::{self, Frame};
use scuttlefs::net::shs;

const KEY: &str = "Z8ZJ0MfrQ/mCwaP8kCDVZ3Sz1YqYkTiXAzyHbdXw3Wc=";

fn network_key() -> [u8; 32] {
    scuttlefs::config::parse_network_key(KEY).expect("key")
}

/// Lets this test process hold thousands of sockets.
fn raise_own_fd_limit() {
    let limit = libc::rlimit {
        rlim_cur: 16_384,
        rlim_max: 16_384,
    };
    // SAFETY: setrlimit with a valid, initialised struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(rc, 0, "raising the test's own fd limit needs root");
}

/// Sets another process's descriptor limit (util-linux prlimit).
fn limit_fds(pid: u32, n: u32) {
    let out = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={n}:{n}"))
        .output()
        .expect("prlimit runs");
    assert!(out.status.success(), "{out:?}");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn pid_of(daemon: &Daemon) -> u32 {
    daemon.child.as_ref().expect("running").id()
}

/// Keeps `count` connections to `target` open until `stop`, from twenty
/// source addresses: half send nothing, half trickle a byte every 300 ms.
/// A connection the daemon closes is opened again. Returns how many were
/// opened in all.
async fn flood(target: SocketAddr, count: usize, stop: Arc<AtomicBool>) -> usize {
    let opened = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..count {
        let stop = stop.clone();
        let opened = opened.clone();
        tasks.push(tokio::spawn(async move {
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 20) as u8));
            while !stop.load(Ordering::Relaxed) {
                let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                if socket.bind(SocketAddr::new(source, 0)).is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let Ok(Ok(mut tcp)) =
                    tokio::time::timeout(Duration::from_secs(2), socket.connect(target)).await
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                let mut buf = [0u8; 64];
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if i % 2 == 1 && tcp.write_all(&[0x42]).await.is_err() {
                        break;
                    }
                    // A closed connection reads as end of file (or a reset).
                    match tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await
                    {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        _ => {}
                    }
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    opened.load(Ordering::Relaxed)
}

#[test]
fn a_keyless_flood_leaves_room_for_a_real_peer_and_the_mount() {
    if !fuse_available() {
        return;
    }
    raise_own_fd_limit();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Daemon::start(&dir.path().join("a"), "a", &["--caps.shs", KEY]);
    let a_pid = pid_of(&a);
    limit_fds(a_pid, 1024);
    let a_address = a.loopback_address();
    let target = SocketAddr::from(([127, 0, 0, 1], a.port()));

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = runtime.spawn(flood(target, 3000, stop.clone()));
    // The flood builds up before the real peer comes.
    let mut most_fds = 0;
    for _ in 0..30 {
        most_fds = most_fds.max(open_fds(a_pid));
        std::thread::sleep(Duration::from_millis(100));
    }

    // A real peer joins during the flood: it dials a, which follows it.
    let joined = Instant::now();
    let mut b = Daemon::start(
        &dir.path().join("b"),
        "b",
        &["--caps.shs", KEY, "--peer", &a_address],
    );
    let follow = a.sh(&format!("echo '{}' >> follow", b.id()));
    assert!(follow.status.success(), "{follow:?}");
    let published = b.sh("echo 'from b during the flood' >> publish");
    assert!(published.status.success(), "{published:?}");
    let arrived = wait_until(Duration::from_secs(10), || {
        most_fds = most_fds.max(open_fds(a_pid));
        a.read("merged.log").contains("from b during the flood")
    });
    let took = joined.elapsed();
    let local = a.sh("echo 'local write during the flood' >> publish");
    for _ in 0..20 {
        most_fds = most_fds.max(open_fds(a_pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let opened = runtime.block_on(flooding).expect("flood ends");
    eprintln!("b joined and its line arrived in {took:?}; {opened} flood connections; at most {most_fds} fds");

    assert!(
        arrived,
        "b's line did not reach a within 10 s, during the flood:\n{}",
        a.log()
    );
    assert!(local.status.success(), "a local publish failed: {local:?}");
    assert!(a
        .read("merged.log")
        .contains("local write during the flood"));
    assert!(
        most_fds < 400,
        "the daemon held {most_fds} descriptors under the flood (limit 1024)"
    );
    assert!(
        a.log().contains("refusing connections"),
        "the flood is named in the log"
    );
    assert!(opened >= 3000, "the flood opened only {opened} connections");
    a.stop();
    b.stop();
}

#[test]
fn a_keyed_peer_that_opens_thousands_of_streams_and_stops_reading_holds_little() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Daemon::start(&dir.path().join("a"), "a", &["--caps.shs", KEY]);
    let a_pid = pid_of(&a);
    // A 100,000-message feed to ask for.
    let lines: String = (0..100_000)
        .map(|i| format!("history line {i:06} with some words to make it longer\n"))
        .collect();
    let path = dir.path().join("a");
    let out = common::publish_stdin(
        path.to_str().expect("utf-8"),
        lines.as_bytes(),
        &["--type", "log", "--source", "bulk"],
    );
    assert!(out.status.success(), "{out:?}");
    let a_id = a.id();
    let at_rest = rss_kb(a_pid);

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let port = a.port();
    let greedy = Keypair::generate();
    let greedy_id = greedy.id().to_string();
    let mut conn = runtime.block_on(async {
        let key = FeedId::parse(&a_id).expect("id");
        let mut conn = shs::connect("127.0.0.1", port, key, &greedy, &network_key())
            .await
            .expect("connects with the key");
        let frames: Vec<Frame> = (1..=2000)
            .map(|req| {
                Frame::request(
                    req,
                    &["createHistoryStream"],
                    "source",
                    json!([{"id": a_id, "seq": 1, "live": true, "keys": true}]),
                )
            })
            .collect();
        for frame in &frames {
            muxrpc::write_frame(&mut conn.writer, frame)
                .await
                .expect("write");
        }
        muxrpc::flush(&mut conn.writer).await.expect("flush");
        conn
    });
    // ...and reads nothing. Meanwhile the daemon's memory is sampled.
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        most = most.max(rss_kb(a_pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("rss at rest {at_rest} kB; at most {most} kB while the peer held 2000 streams");
    assert!(
        most < at_rest + 64 * 1024,
        "the daemon grew from {at_rest} kB to {most} kB"
    );

    // A good peer still replicates the whole feed meanwhile.
    let mut b = Daemon::start(
        &dir.path().join("b"),
        "b",
        &["--caps.shs", KEY, "--peer", &a.loopback_address()],
    );
    let follow = b.sh(&format!("echo '{a_id}' >> follow"));
    assert!(follow.status.success());
    assert!(
        wait_until(Duration::from_secs(60), || b
            .try_read("a/log")
            .is_ok_and(|log| log.contains("history line 099999"))),
        "b did not get a's feed:\n{}",
        b.log()
    );

    // The peer that stopped reading is cut off.
    assert!(
        wait_until(Duration::from_secs(60), || !a
            .read("status")
            .contains(&greedy_id)),
        "the stalled peer is still connected:\n{}",
        a.read("status")
    );
    assert!(
        a.log().contains("stopped reading"),
        "the reason is logged:\n{}",
        a.log()
    );
    // Keep the connection object alive until here, unread.
    runtime.block_on(async {
        let _ = muxrpc::flush(&mut conn.writer).await;
    });
    a.stop();
    b.stop();
}
