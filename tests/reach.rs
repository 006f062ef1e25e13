//! Machines at two sites that cannot reach each other meet through a host
//! in the middle: a pub (ssb-server 16 from npm, or scuttlefs itself) joined
//! with an invite, or a room (ssb-room 1.3.0 from npm) that tunnels them
//! together. Each daemon runs in its own network namespace.

mod common;

use std::path::Path;
use std::time::Duration;

use common::lan::Lan;
use common::room::{self, RoomServer};
use common::sites::{Sites, MIDDLE};
use common::ssb_server::{SsbServer, KEY};
use common::{node_modules_available, run, run_ok, wait_until, Daemon};

/// ssb-server is heavy on two cores: one pub at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A daemon at a site, on the network key the pub uses.
fn site_node(ns: &str, dir: &Path, name: &str) -> Daemon {
    Daemon::start_in(
        Some(ns),
        &dir.join(name),
        name,
        &["--caps.shs", KEY, "--port", "8008"],
    )
}

/// A scuttlefs pub in the middle: it has a public address, and no LAN.
fn scuttlefs_pub(sites: &Sites, dir: &Path) -> Daemon {
    Daemon::start_in(
        Some(&sites.middle),
        &dir.join("vps"),
        "vps",
        &[
            "--caps.shs",
            KEY,
            "--port",
            "8008",
            "--host",
            MIDDLE,
            "--no-discovery",
        ],
    )
}

fn path_of(daemon: &Daemon) -> &str {
    daemon.path.to_str().expect("utf-8 path")
}

fn follow(follower: &Daemon, followed: &Daemon) {
    let out = follower.sh(&format!("echo '{}' >> follow", followed.id()));
    assert!(out.status.success());
}

fn publish(daemon: &Daemon, line: &str) {
    assert!(!line.contains('\''), "quote-free lines only: {line}");
    let out = daemon.sh(&format!("echo '{line}' >> publish"));
    assert!(out.status.success());
}

fn has_line(daemon: &Daemon, text: &str) -> bool {
    daemon
        .read("merged.log")
        .lines()
        .any(|l| l.ends_with(&format!(" {text}")))
}

/// How many messages `daemon`'s own feed holds.
fn own_seq(daemon: &Daemon, name: &str) -> usize {
    daemon.read(&format!("{name}/feed.jsonl")).lines().count()
}

/// Redeems `code` through `daemon`, and checks what it says.
fn accept(daemon: &Daemon, code: &str, pub_id: &str) {
    let out = run_ok(&["--path", path_of(daemon), "invite", "accept", code]);
    assert!(out.contains(pub_id), "{out}");
}

/// The whole journey through a pub made by `invite`. `pub_has(name, id,
/// seq)` says whether the pub holds machine `name`'s feed up to `seq`.
fn meet_through_a_pub(
    sites: &Sites,
    dir: &Path,
    pub_id: &str,
    invite: &dyn Fn() -> String,
    pub_has: &dyn Fn(&str, &str, usize) -> bool,
) {
    let alice = site_node(&sites.a, dir, "alice");
    let mut bob = site_node(&sites.b, dir, "bob");
    sites.assert_isolated(8008);

    accept(&alice, &invite(), pub_id);
    accept(&bob, &invite(), pub_id);
    follow(&alice, &bob);
    follow(&bob, &alice);
    publish(&alice, "alice at home");
    publish(&bob, "bob at the office");
    assert!(
        wait_until(Duration::from_secs(60), || has_line(&bob, "alice at home")
            && has_line(&alice, "bob at the office")),
        "no exchange through the pub:\n{}\n{}",
        alice.log(),
        bob.log()
    );
    let status = alice.read("status");
    assert!(
        status.contains(&pub_id[1..20]) && status.contains("(invite)"),
        "the pub is not listed as remembered:\n{status}"
    );

    // Store and forward: bob is away while alice publishes, and alice is
    // gone by the time bob comes back.
    bob.stop();
    publish(&alice, "while bob was away");
    let alice_id = alice.id();
    let seq = own_seq(&alice, "alice");
    assert!(
        wait_until(Duration::from_secs(60), || pub_has("alice", &alice_id, seq)),
        "the pub did not get alice's line:\n{}",
        alice.log()
    );
    drop(alice);
    // No --peer: bob dials the pub it remembers.
    let bob = site_node(&sites.b, dir, "bob");
    assert!(
        wait_until(Duration::from_secs(60), || has_line(
            &bob,
            "while bob was away"
        )),
        "bob did not get alice's line from the pub:\n{}",
        bob.log()
    );
}

#[test]
fn two_sites_meet_through_an_ssb_server_pub() {
    if !Lan::available() || !node_modules_available() {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let sites = Sites::new("p");
    let server = SsbServer::start_in(
        dir.path(),
        Some(&sites.middle),
        8008,
        &["--host", MIDDLE, "--allowPrivate", "--no-gossip.local"],
    );
    let pub_id = server.id();
    meet_through_a_pub(
        &sites,
        dir.path(),
        &pub_id,
        &|| server.sbot(&["invite-create", "1"]),
        &|_, id, seq| server.sbot(&["latest", id]).parse::<usize>().unwrap_or(0) >= seq,
    );
}

#[test]
fn two_sites_meet_through_a_scuttlefs_pub() {
    if !Lan::available() {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let sites = Sites::new("q");
    let vps = scuttlefs_pub(&sites, dir.path());
    let pub_id = vps.id();
    meet_through_a_pub(
        &sites,
        dir.path(),
        &pub_id,
        &|| {
            run_ok(&["--path", path_of(&vps), "invite", "create"])
                .trim()
                .to_string()
        },
        &|name, _, seq| {
            vps.try_read(&format!("{name}/feed.jsonl"))
                .map(|t| t.lines().count() >= seq)
                .unwrap_or(false)
        },
    );
}

/// Whether `daemon` follows `id`, as `status --json` reports it.
fn follows(daemon: &Daemon, id: &str) -> bool {
    let status = run_ok(&["--path", path_of(daemon), "status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    status["following"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == id))
}

#[test]
fn bad_and_used_invites_are_refused_and_change_nothing() {
    if !Lan::available() {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let sites = Sites::new("r");
    let mut vps = scuttlefs_pub(&sites, dir.path());
    let pub_id = vps.id();
    let alice = site_node(&sites.a, dir.path(), "alice");
    let carol = site_node(&sites.b, dir.path(), "carol");
    let messages = |d: &Daemon| {
        d.read("status")
            .lines()
            .find(|l| l.starts_with("messages:"))
            .map(str::to_string)
            .expect("a messages line")
    };

    // Codes that do not parse, name no reachable pub, or come from another
    // pub: each gets its own clear error.
    let key = &pub_id[1..pub_id.len() - 8];
    let seed = "oIiKTK1hFlsbjk+K/TYI7V/YWegCjuoFh811OwkR5Zw=";
    let before = messages(&carol);
    for (code, expected) in [
        ("hello".to_string(), "bad invite code"),
        (format!("{MIDDLE}:8008:{pub_id}~tooshort"), "seed"),
        (
            format!("net:{MIDDLE}:9~shs:{key}:{seed}"),
            "cannot reach the pub",
        ),
        (
            format!("{MIDDLE}:8008:{pub_id}~{seed}"),
            "refused the invite",
        ),
    ] {
        let out = run(&["--path", path_of(&carol), "invite", "accept", &code]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{code} was accepted");
        assert!(stderr.contains(expected), "{code}: {stderr}");
    }

    // An invite for one machine: the second redeemer is refused.
    let code = run_ok(&["--path", path_of(&vps), "invite", "create", "--uses", "1"]);
    let code = code.trim();
    accept(&alice, code, &pub_id);
    let out = run(&["--path", path_of(&carol), "invite", "accept", code]);
    assert!(!out.status.success(), "a used invite worked twice");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused the invite"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        messages(&carol),
        before,
        "a refused invite stored something"
    );
    assert!(!carol.read("status").contains("(invite)"));
    assert!(follows(&vps, &alice.id()), "the pub does not follow alice");
    assert!(
        !follows(&vps, &carol.id()),
        "the pub follows a machine whose invite it refused"
    );
    assert!(
        !follows(&carol, &pub_id),
        "carol follows a pub that refused her"
    );

    // An unused invite survives the pub's restart.
    let code = run_ok(&["--path", path_of(&vps), "invite", "create", "--uses", "2"]);
    vps.stop();
    let vps = scuttlefs_pub(&sites, dir.path());
    accept(&carol, code.trim(), &pub_id);
    let carol_id = carol.id();
    assert!(
        follows(&vps, &carol_id),
        "the pub does not follow carol after her invite"
    );
    assert!(follows(&carol, &pub_id), "carol does not follow the pub");
}

/// Joins `daemon` to the room with `extra` options, and checks the answer.
fn join_room(daemon: &Daemon, room: &RoomServer, extra: &[&str]) {
    let mut args = vec!["--path", path_of(daemon), "invite", "accept"];
    let invite = room.invite();
    args.push(&invite);
    args.extend_from_slice(extra);
    let out = run_ok(&args);
    assert!(out.contains(&room.id), "{out}");
}

#[test]
fn two_sites_meet_live_through_a_room_that_sees_only_ciphertext() {
    if !Lan::available() || !room::available() {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let sites = Sites::new("s");
    let room = RoomServer::start(dir.path(), &sites.middle, MIDDLE, 8008, Some(KEY), &sites.a);
    let alice = site_node(&sites.a, dir.path(), "alice");
    let bob = site_node(&sites.b, dir.path(), "bob");
    // Mallory follows alice, but alice follows nobody who follows her.
    let mallory = Daemon::start_in(
        Some(&sites.b),
        &dir.path().join("mallory"),
        "mallory",
        &["--caps.shs", KEY, "--port", "8009", "--no-discovery"],
    );
    sites.assert_isolated(8008);
    for daemon in [&alice, &bob, &mallory] {
        join_room(daemon, &room, &[]);
    }
    follow(&alice, &bob);
    follow(&bob, &alice);
    follow(&mallory, &alice);
    let secret = format!("alice secret {}", rand_token());
    publish(&alice, &secret);
    publish(&bob, "bob through the room");
    assert!(
        wait_until(Duration::from_secs(60), || has_line(&bob, &secret)
            && has_line(&alice, "bob through the room")),
        "no exchange through the room:\n{}\n{}",
        alice.log(),
        bob.log()
    );
    let status = alice.read("status");
    assert!(
        status.contains(&format!("tunnel:{}:{}", room.id, bob.id())),
        "{status}"
    );
    assert!(
        status.contains("(room)"),
        "the room is not remembered:\n{status}"
    );

    // Live: a line published now arrives through the open tunnel.
    publish(&alice, "live through the room");
    assert!(
        wait_until(Duration::from_secs(10), || has_line(
            &bob,
            "live through the room"
        )),
        "{}",
        bob.log()
    );

    // A feed alice does not follow cannot open a tunnel to her.
    let mallory_id = mallory.id();
    assert!(
        wait_until(Duration::from_secs(30), || alice
            .log()
            .contains(&format!("refused a tunnel from {mallory_id}"))),
        "mallory's tunnel was not refused:\n{}\n{}",
        alice.log(),
        mallory.log()
    );
    assert!(!has_line(&mallory, &secret), "mallory got alice's line");

    // The room relayed the lines, but never held one in the clear. The
    // search itself works: the ids the room routes by are found.
    assert!(room::memory_contains(room.pid(), &bob.id()));
    assert!(
        !room::memory_contains(room.pid(), &secret),
        "the room's memory holds the plaintext line"
    );
}

#[test]
fn a_public_room_carries_a_private_networks_logs() {
    if !Lan::available() || !room::available() {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let sites = Sites::new("t");
    // The room runs on the main SSB network's key; the machines on theirs.
    let room = RoomServer::start(dir.path(), &sites.middle, MIDDLE, 8008, None, &sites.a);
    let alice = site_node(&sites.a, dir.path(), "alice");
    let bob = site_node(&sites.b, dir.path(), "bob");
    for daemon in [&alice, &bob] {
        join_room(daemon, &room, &["--room-caps", "main"]);
    }
    follow(&alice, &bob);
    follow(&bob, &alice);
    publish(&alice, "private line via a public room");
    publish(&bob, "and back");
    assert!(
        wait_until(Duration::from_secs(60), || has_line(
            &bob,
            "private line via a public room"
        ) && has_line(
            &alice, "and back"
        )),
        "no exchange through the public room:\n{}\n{}",
        alice.log(),
        bob.log()
    );
}

/// A token no earlier run left anywhere.
fn rand_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}-{}", std::process::id())
}
