//! A hostile peer cannot crash the daemon or get a bad message stored.
//!
//! The peer here is real: it speaks the secret handshake, box stream and
//! muxrpc (the project's own implementation of them), then misbehaves.

mod common;

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};

use common::{fuse_available, wait_until, Daemon};
use scuttlefs::feed::{Keypair, Message};
use scuttlefs::net::invite::Invite;
use scuttlefs::net::muxrpc::{self, Frame};
use scuttlefs::net::shs;

const KEY: &str = "D9ZJ0MfrQ/mCwaP8kCDVZ3Sz1YqYkTiXAzyHbdXw3Wc=";

fn network_key() -> [u8; 32] {
    scuttlefs::config::parse_network_key(KEY).expect("key")
}

fn peer_arg(port: u16, keys: &Keypair) -> String {
    let id = keys.id().to_string();
    format!("net:127.0.0.1:{port}~shs:{}", &id[1..id.len() - 8])
}

/// Waits for the daemon to dial in, and returns the connection. A dial
/// that waited in the backlog past the daemon's handshake timeout fails its
/// handshake; the daemon dials again.
async fn accept(listener: &tokio::net::TcpListener, keys: &Keypair) -> shs::Connection {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (tcp, _) = tokio::time::timeout_at(deadline, listener.accept())
            .await
            .expect("the daemon dials us")
            .expect("accept");
        match shs::accept(tcp, keys, &network_key()).await {
            Ok(conn) => return conn,
            Err(e) => eprintln!("a stale dial failed its handshake ({e}); waiting for the next"),
        }
    }
}

/// The first frame matching `wanted`, from those already read (`seen`) or
/// read now; frames that do not match are kept for later searches.
async fn find_frame(
    conn: &mut shs::Connection,
    seen: &mut Vec<Frame>,
    wanted: impl Fn(&Frame) -> bool,
) -> Option<Frame> {
    if let Some(i) = seen.iter().position(&wanted) {
        return Some(seen.remove(i));
    }
    loop {
        let frame = tokio::time::timeout(
            Duration::from_secs(20),
            muxrpc::read_frame(&mut conn.reader),
        )
        .await
        .ok()?
        .ok()??;
        if wanted(&frame) {
            return Some(frame);
        }
        seen.push(frame);
    }
}

fn is_history_request(frame: &Frame, feed: &str) -> bool {
    let body = frame.body_json().unwrap_or(Value::Null);
    frame.req > 0 && body["name"] == json!(["createHistoryStream"]) && body["args"][0]["id"] == feed
}

async fn send(conn: &mut shs::Connection, frames: &[Frame]) {
    for frame in frames {
        muxrpc::write_frame(&mut conn.writer, frame)
            .await
            .expect("write");
    }
    muxrpc::flush(&mut conn.writer).await.expect("flush");
}

/// True when the daemon closes the connection within a few seconds.
async fn closed_by_daemon(conn: &mut shs::Connection) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, muxrpc::read_frame(&mut conn.reader)).await {
            Err(_) => return false,
            Ok(Ok(Some(_))) => continue,
            Ok(_) => return true,
        }
    }
}

#[test]
fn forged_messages_garbage_and_oversize_frames_are_survived() {
    if !fuse_available() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let forger = Keypair::generate();
    let giant = Keypair::generate();
    let (forger_listener, giant_listener) = runtime.block_on(async {
        (
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind"),
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind"),
        )
    });
    let forger_port = forger_listener.local_addr().expect("addr").port();
    let giant_port = giant_listener.local_addr().expect("addr").port();

    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(
        &dir.path().join("node"),
        "victim",
        &[
            "--caps.shs",
            KEY,
            "--peer",
            &peer_arg(forger_port, &forger),
            "--peer",
            &peer_arg(giant_port, &giant),
        ],
    );
    for keys in [&forger, &giant] {
        let out = daemon.sh(&format!("echo '{}' >> follow", keys.id()));
        assert!(out.status.success());
    }

    runtime.block_on(async {
        // 1. Garbage requests get muxrpc errors, not a dropped connection.
        let mut conn = accept(&forger_listener, &forger).await;
        send(
            &mut conn,
            &[
                Frame::json(9001, false, false, &json!({"name": ["no", "such", "method"], "type": "async", "args": []})),
                Frame::raw_json(9002, false, b"{not json".to_vec()),
            ],
        )
        .await;
        let mut seen = Vec::new();
        for req in [9001, 9002] {
            let reply = find_frame(&mut conn, &mut seen, |f| f.req == -req)
                .await
                .expect("an error reply");
            assert!(reply.end, "errors end the request");
            assert!(String::from_utf8_lossy(&reply.body).contains("not in list of allowed methods"));
        }

        // gossip.ping as JS peers (pull-ping) call it: each timestamp gets
        // one answer, and none comes unasked, which pull-ping would answer
        // with a new timestamp, and so on forever. The whoami reply after
        // it bounds what the daemon sent for the ping.
        send(
            &mut conn,
            &[
                Frame::json(9003, true, false, &json!({"name": ["gossip", "ping"], "type": "duplex", "args": [{"timeout": 300000}]})),
                Frame::json(9003, true, false, &json!(1.7e12)),
                Frame::json(9004, false, false, &json!({"name": ["whoami"], "type": "async", "args": []})),
            ],
        )
        .await;
        find_frame(&mut conn, &mut seen, |f| f.req == -9004)
            .await
            .expect("a whoami reply");
        let pongs = seen.iter().filter(|f| f.req == -9003).count();
        assert_eq!(pongs, 1, "one answer to one ping timestamp");

        // 2. A forged message. The daemon dialled, so it opens EBT; we
        // refuse it as a peer without EBT does, and the daemon asks for our
        // feed with createHistoryStream instead. We send one good message
        // and one whose content was changed after signing.
        let ebt = find_frame(&mut conn, &mut seen, |f| {
            f.req > 0 && f.body_json().is_some_and(|b| b["name"] == json!(["ebt", "replicate"]))
        })
        .await
        .expect("the daemon opens EBT");
        send(
            &mut conn,
            &[Frame::error(-ebt.req, true, "method:ebt,replicate is not in list of allowed methods")],
        )
        .await;
        let feed = forger.id().to_string();
        let req = find_frame(&mut conn, &mut seen, |f| is_history_request(f, &feed))
            .await
            .expect("the daemon asks for our feed")
            .req;
        let good = Message::sign(&forger, None, 1.7e12, json!({"type": "log", "text": "honest"})).expect("signs");
        let mut forged = Message::sign(&forger, Some(&good.tip()), 1.7e12 + 1.0, json!({"type": "log", "text": "original"}))
            .expect("signs")
            .value;
        forged["content"]["text"] = json!("forged");
        send(
            &mut conn,
            &[
                Frame::raw_json(-req, true, good.value_json().into_bytes()),
                Frame::raw_json(-req, true, serde_json::to_vec(&forged).expect("json")),
            ],
        )
        .await;
        assert!(closed_by_daemon(&mut conn).await, "the daemon kept talking to a forger");

        // 3. An oversize frame header from another peer.
        let mut conn = accept(&giant_listener, &giant).await;
        let mut header = vec![0b1010u8];
        header.extend_from_slice(&(512u32 * 1024 * 1024).to_be_bytes());
        header.extend_from_slice(&1i32.to_be_bytes());
        futures::AsyncWriteExt::write_all(&mut conn.writer, &header).await.expect("write");
        futures::AsyncWriteExt::flush(&mut conn.writer).await.expect("flush");
        assert!(closed_by_daemon(&mut conn).await, "an oversize frame was accepted");
    });

    // 4. A bad handshake: raw bytes at the daemon's port.
    let port = daemon.port();
    let mut garbage = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let _ = garbage.write_all(&[0x42; 64]);
    drop(garbage);

    // The daemon is alive, stored nothing of the forged message, and said why.
    assert!(
        wait_until(Duration::from_secs(5), || daemon.log().contains("cut off")),
        "{}",
        daemon.log()
    );
    // The forger's directory exists only if its honest message was kept.
    match daemon.try_read(&format!("{}/feed.jsonl", forger.id().file_safe())) {
        Ok(jsonl) => assert!(
            !jsonl.contains("forged"),
            "the forged message was stored: {jsonl}"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("reading the forger's feed.jsonl: {e}"),
    }
    assert!(!daemon.read("merged.log").contains("forged"));
    assert!(daemon.read("whoami").starts_with('@'), "the daemon died");
    let out = daemon.sh("echo 'still alive' >> publish && tail -n 1 merged.log");
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(" still alive\n"));
}

/// The next frame answering request `req`.
async fn answer(conn: &mut shs::Connection, req: i32) -> Frame {
    let mut seen = Vec::new();
    find_frame(conn, &mut seen, |f| f.req == -req)
        .await
        .expect("an answer")
}

#[test]
fn an_invite_guest_may_only_redeem_its_invite() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(
        &dir.path().join("pub"),
        "pub",
        &["--caps.shs", KEY, "--host", "127.0.0.1"],
    );
    let path = dir.path().join("pub");
    let code = common::run_ok(&["--path", path.to_str().expect("utf-8"), "invite", "create"]);
    // The invite names the configured host, and the port the daemon took.
    let code = code.trim().replace(":0:", &format!(":{}:", daemon.port()));
    let Ok(Invite::Pub { address, seed }) = Invite::parse(&code) else {
        panic!("not a pub invite: {code}")
    };
    assert_eq!(address.port, daemon.port(), "{code}");
    let guest = Keypair::from_seed(&seed);
    let redeemer = Keypair::generate();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        assert!(kuska_sodiumoxide::init().is_ok());
        let mut conn = shs::connect(
            &address.host,
            address.port,
            address.key,
            &guest,
            &network_key(),
        )
        .await
        .expect("the guest key is let in");
        let calls = [
            Frame::request(1, &["whoami"], "async", json!([])),
            Frame::request(
                2,
                &["createHistoryStream"],
                "source",
                json!([{"id": daemon.id()}]),
            ),
            Frame::request(3, &["ebt", "replicate"], "duplex", json!([{"version": 3}])),
            Frame::request(
                4,
                &["invite", "use"],
                "async",
                json!([{"feed": "@not a feed"}]),
            ),
        ];
        send(&mut conn, &calls).await;
        for req in 1..=3 {
            let reply = answer(&mut conn, req).await;
            assert!(reply.end, "request {req} was served to a guest");
            assert!(
                reply
                    .error_message()
                    .is_some_and(|m| m.contains("not in list of allowed methods")),
                "{req}: {:?}",
                reply.body_json()
            );
        }
        assert!(
            answer(&mut conn, 4).await.error_message().is_some(),
            "a bad feed was accepted"
        );
        send(
            &mut conn,
            &[Frame::request(
                5,
                &["invite", "use"],
                "async",
                json!([{"feed": redeemer.id().to_string()}]),
            )],
        )
        .await;
        let reply = answer(&mut conn, 5).await;
        let body = reply.body_json().expect("json");
        assert_eq!(
            body["value"]["content"]["contact"],
            json!(redeemer.id().to_string()),
            "{body}"
        );
        assert_eq!(body["value"]["content"]["following"], json!(true));
        // Used up: the same guest is refused the way ssb-server refuses it.
        send(
            &mut conn,
            &[Frame::request(
                6,
                &["invite", "use"],
                "async",
                json!([{"feed": Keypair::generate().id().to_string()}]),
            )],
        )
        .await;
        let reply = answer(&mut conn, 6).await;
        assert_eq!(
            reply.error_message().as_deref(),
            Some("method:invite,use is not in list of allowed methods")
        );
    });
    assert!(daemon.read("status").contains("messages:"));
}
