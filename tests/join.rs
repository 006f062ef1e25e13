//! A new machine joins in one command: `scuttlefs join CODE` with a code
//! from `scuttlefs join-code`. Real daemons in network namespaces: A and B
//! at one site (A's LAN), a room (ssb-room from npm) in the middle, and D
//! at another site that reaches A only through the room.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::lan::Lan;
use common::room;
use common::sites::{Sites, SITE_A};
use common::ssb_server::KEY;
use common::{bin, run_ok, wait_until, Daemon};

/// `scuttlefs ARGS` inside network namespace `ns`.
fn run_in(ns: &str, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{ns}"))
        .arg(bin())
        .args(args)
        .output()
        .expect("runs")
}

fn path_of(daemon: &Daemon) -> &str {
    daemon.path.to_str().expect("utf-8 path")
}

fn join_code(inviter: &Daemon, extra: &[&str]) -> String {
    let mut args = vec!["--path", path_of(inviter), "join-code"];
    args.extend_from_slice(extra);
    run_ok(&args).trim().to_string()
}

/// What a data directory holds: nothing, after a refused join.
fn holds_nothing(dir: &Path) -> bool {
    !dir.join("config").exists() && !dir.join("secret").exists() && !dir.join("db").exists()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn new_machines_join_on_the_lan_and_through_a_room_with_one_command() {
    if !Lan::available() || !room::available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let sites = Sites::new("j");
    // A is set up, in the room, and replicates with B.
    let (_room, a) = room::inviter_in_a_room(dir.path(), &sites, KEY);
    let b = Daemon::start_in(
        Some(&sites.a),
        &dir.path().join("b"),
        "b",
        &[
            "--caps.shs",
            KEY,
            "--port",
            "8009",
            "--peer",
            &a.address_at(SITE_A, 8008),
        ],
    );
    for (x, y) in [(&a, &b), (&b, &a)] {
        assert!(x
            .sh(&format!("echo '{}' >> follow", y.id()))
            .status
            .success());
    }
    a.publish_line("a was here first");
    b.publish_line("b was here too");
    assert!(wait_until(Duration::from_secs(60), || b.merged_has("a was here first")));

    // C joins over the LAN: one command, then a bare serve.
    let code = join_code(&a, &[]);
    assert!(code.starts_with("scuttlefs-join:"), "{code}");
    let c_path = dir.path().join("c");
    let c_str = c_path.to_str().expect("utf8");
    let joined = run_in(&sites.a, &["--path", c_str, "join", &code, "--name", "c"]);
    assert!(joined.status.success(), "{}", text(&joined));
    assert!(text(&joined).contains(&a.id()), "{}", text(&joined));
    let config = std::fs::read_to_string(c_path.join("config")).expect("config saved");
    assert!(
        config.contains(KEY) && config.contains("\"name\": \"c\""),
        "{config}"
    );
    // The same code again: used.
    let again_path = dir.path().join("again");
    let again = run_in(
        &sites.a,
        &["--path", again_path.to_str().expect("utf8"), "join", &code],
    );
    assert!(!again.status.success());
    assert!(
        text(&again).contains("refused the code"),
        "{}",
        text(&again)
    );
    assert!(
        holds_nothing(&again_path),
        "a refused join stored something"
    );

    let c = Daemon::start_in(Some(&sites.a), &c_path, "c", &["--port", "8010"]);
    c.publish_line("c joined on the lan");
    for (daemon, line) in [
        (&c, "a was here first"),
        (&c, "b was here too"),
        (&a, "c joined on the lan"),
        (&b, "c joined on the lan"),
    ] {
        assert!(
            wait_until(Duration::from_secs(90), || daemon.merged_has(line)),
            "{line:?} never reached {}: {}",
            daemon.read("whoami"),
            daemon.read("status")
        );
    }

    // D joins from the other site: only the room reaches A.
    let code = join_code(&a, &[]);
    let d_path = dir.path().join("d");
    let d_str = d_path.to_str().expect("utf8");
    let joined = run_in(&sites.b, &["--path", d_str, "join", &code, "--name", "d"]);
    assert!(joined.status.success(), "{}", text(&joined));
    assert!(text(&joined).contains("room"), "{}", text(&joined));
    let d = Daemon::start_in(Some(&sites.b), &d_path, "d", &["--port", "8008"]);
    d.publish_line("d joined through the room");
    for (daemon, line) in [
        (&d, "a was here first"),
        (&d, "c joined on the lan"),
        (&a, "d joined through the room"),
        (&b, "d joined through the room"),
    ] {
        assert!(
            wait_until(Duration::from_secs(120), || daemon.merged_has(line)),
            "{line:?} never reached {}: {}",
            daemon.read("whoami"),
            daemon.read("status")
        );
    }

    // The codes and the key are in no log and no status.
    for daemon in [&a, &b, &c, &d] {
        let seen = format!("{}{}", daemon.log(), daemon.read("status"));
        assert!(!seen.contains(KEY), "the network key in a log or status");
        assert!(
            !seen.contains(&code[15..60]),
            "a join code in a log or status"
        );
    }
    // The inviter lists what is left, and revokes.
    let fresh = join_code(&a, &["--uses", "3"]);
    let listed = run_ok(&["--path", path_of(&a), "join-code", "--list"]);
    assert!(listed.contains("3 use(s) left"), "{listed}");
    let id = listed
        .lines()
        .find(|l| l.contains("3 use(s) left"))
        .and_then(|l| l.split_whitespace().next())
        .expect("an id")
        .to_string();
    run_ok(&["--path", path_of(&a), "join-code", "--revoke", &id]);
    let revoked_path = dir.path().join("revoked");
    let refused = run_in(
        &sites.a,
        &[
            "--path",
            revoked_path.to_str().expect("utf8"),
            "join",
            &fresh,
        ],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("refused the code"),
        "{}",
        text(&refused)
    );
    assert!(holds_nothing(&revoked_path));
}

#[test]
fn garbled_expired_and_foreign_codes_each_say_so_and_store_nothing() {
    if !common::system_available("FUSE", common::fuse_available()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Daemon::start(&dir.path().join("a"), "a", &["--caps.shs", KEY]);
    let code = join_code(&a, &["--expires", "2s"]);
    let expired_at = std::time::Instant::now() + Duration::from_secs(2);
    let target = dir.path().join("new");
    let target_str = target.to_str().expect("utf8");
    let join = |code: &str| {
        let out = common::run(&["--path", target_str, "join", code]);
        assert!(!out.status.success(), "{code} was taken");
        assert!(holds_nothing(&target), "a refused join stored something");
        text(&out)
    };
    let mut garbled: Vec<char> = code.chars().collect();
    let at = garbled.len() / 2;
    garbled[at] = if garbled[at] == 'x' { 'y' } else { 'x' };
    let garbled: String = garbled.into_iter().collect();
    assert!(join(&garbled).contains("damaged"));
    assert!(join(&code[..code.len() - 8]).contains("damaged"));
    assert!(
        join("net:pub.example.org:8008~shs:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:AAAA")
            .contains("invite accept")
    );
    assert!(join("hello").contains("not a scuttlefs join code"));
    assert!(wait_until(
        Duration::from_secs(10),
        || std::time::Instant::now() > expired_at
    ));
    assert!(join(&code).contains("expired"));
    // The daemon that made it says nothing of the code.
    assert!(!a.log().contains(&code[15..60]));
}
