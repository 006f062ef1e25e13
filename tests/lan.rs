//! Several daemons, each in its own network namespace on one bridge, found
//! by UDP broadcast alone.

mod common;

use std::time::{Duration, Instant};

use common::lan::Lan;
use common::{wait_until, Daemon};
use scuttlefs::feed::{FeedId, Keypair};

const KEY: &str = "D9ZJ0MfrQ/mCwaP8kCDVZ3Sz1YqYkTiXAzyHbdXw3Wc=";
const OTHER_KEY: &str = "aW8vDdVQWRmFzChI2eUjgvuvkB05WB4CTGgxJb7Nf4U=";

fn node(lan_ns: &str, dir: &std::path::Path, name: &str, extra: &[&str]) -> Daemon {
    let mut args = vec!["--caps.shs", KEY];
    args.extend_from_slice(extra);
    Daemon::start_in(Some(lan_ns), &dir.join(name), name, &args)
}

fn follow(follower: &Daemon, followed: &Daemon) {
    let out = follower.sh(&format!("echo '{}' >> follow", followed.id()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn publish(daemon: &Daemon, line: &str) {
    let out = daemon.sh(&format!("echo '{line}' >> publish"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn has_line(daemon: &Daemon, text: &str) -> bool {
    daemon
        .read("merged.log")
        .lines()
        .any(|l| l.ends_with(&format!(" {text}")))
}

fn count_line(daemon: &Daemon, text: &str) -> usize {
    daemon
        .read("merged.log")
        .lines()
        .filter(|l| l.ends_with(&format!(" {text}")))
        .count()
}

#[test]
fn logs_travel_two_hops_and_stop_at_the_hop_limit() {
    if !Lan::available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lan = Lan::new("a");
    let (na, nb, nc, nd) = (lan.host(1), lan.host(2), lan.host(3), lan.host(4));
    let a = node(&na, dir.path(), "alpha", &[]);
    let b = node(&nb, dir.path(), "beta", &[]);
    let c = node(&nc, dir.path(), "gamma", &[]);
    let d = node(&nd, dir.path(), "delta", &["--hops", "1"]);
    follow(&a, &b);
    follow(&b, &c);
    follow(&d, &b);
    publish(&b, "from beta");
    publish(&c, "from gamma");

    assert!(
        wait_until(Duration::from_secs(30), || has_line(&a, "from gamma")
            && has_line(&a, "from beta")),
        "alpha never got gamma's line two hops away:\n{}\n{}",
        a.read("merged.log"),
        a.log()
    );
    assert!(a.read("gamma/log").ends_with(" from gamma\n"));

    // A line published on gamma now reaches alpha's merged.log within seconds.
    let published = Instant::now();
    publish(&c, "live from gamma");
    assert!(
        wait_until(Duration::from_secs(5), || has_line(&a, "live from gamma")),
        "live line did not arrive within 5 s"
    );
    eprintln!("live line took {:?}", published.elapsed());

    // delta (hops 1) has beta's line but never gamma's. Proof that it had
    // the chance: once beta holds gamma's latest line, beta publishes a
    // marker; a feed replicates in order, so when the marker reaches delta,
    // delta is caught up with beta, which offers gamma's feed too.
    assert!(
        wait_until(Duration::from_secs(20), || has_line(&d, "from beta")),
        "{}",
        d.log()
    );
    assert!(
        wait_until(Duration::from_secs(20), || has_line(&b, "live from gamma")),
        "{}",
        b.log()
    );
    publish(&b, "beta after gamma");
    assert!(
        wait_until(Duration::from_secs(20), || has_line(&d, "beta after gamma")),
        "{}",
        d.log()
    );
    assert!(
        !has_line(&d, "from gamma") && !has_line(&d, "live from gamma"),
        "hops 1 replicated two hops away"
    );
    assert!(!d.read("status").contains("gamma"), "{}", d.read("status"));

    // The status file shows the peers this node found.
    let status = a.read("status");
    assert!(status.contains("beta"), "{status}");
}

#[test]
fn a_partition_heals_with_nothing_lost_and_nothing_doubled() {
    if !Lan::available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lan = Lan::new("b");
    let (na, nb) = (lan.host(1), lan.host(2));
    let a = node(&na, dir.path(), "alpha", &[]);
    let b = node(&nb, dir.path(), "beta", &[]);
    follow(&a, &b);
    follow(&b, &a);
    publish(&a, "before the cut");
    assert!(
        wait_until(Duration::from_secs(30), || has_line(&b, "before the cut")),
        "{}",
        b.log()
    );

    assert!(
        lan.can_connect(&na, "10.213.0.2", 8008),
        "alpha cannot reach beta's port before the cut"
    );
    lan.cut(&nb);
    for i in 1..=3 {
        publish(&b, &format!("beta offline {i}"));
        publish(&a, &format!("alpha while beta away {i}"));
    }
    // The cut holds (alpha cannot reach beta's port at all), so no line
    // can have crossed it, now or while the check ran.
    assert!(
        !lan.can_connect(&na, "10.213.0.2", 8008),
        "the cut link still carries traffic"
    );
    assert!(!has_line(&a, "beta offline 1"), "a line crossed a cut link");
    lan.restore(&nb);

    let converged = wait_until(Duration::from_secs(60), || {
        (1..=3).all(|i| {
            has_line(&a, &format!("beta offline {i}"))
                && has_line(&b, &format!("alpha while beta away {i}"))
        })
    });
    assert!(converged, "no convergence:\n{}\n{}", a.log(), b.log());
    // Anything of either feed still on its way would arrive before a line
    // published now (feeds replicate in order): wait for those instead of
    // a while, then count.
    publish(&a, "alpha healed");
    publish(&b, "beta healed");
    assert!(
        wait_until(Duration::from_secs(30), || has_line(&a, "beta healed")
            && has_line(&b, "alpha healed")),
        "{}\n{}",
        a.log(),
        b.log()
    );
    for daemon in [&a, &b] {
        for i in 1..=3 {
            assert_eq!(count_line(daemon, &format!("beta offline {i}")), 1);
            assert_eq!(count_line(daemon, &format!("alpha while beta away {i}")), 1);
        }
        assert_eq!(count_line(daemon, "before the cut"), 1);
        // Nine log lines in all, on both sides.
        assert_eq!(
            daemon.read("merged.log").lines().count(),
            9,
            "{}",
            daemon.read("merged.log")
        );
    }
}

#[test]
fn a_node_on_another_network_key_learns_nothing() {
    if !Lan::available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lan = Lan::new("c");
    let (na, ne) = (lan.host(1), lan.host(2));
    let a = node(&na, dir.path(), "alpha", &[]);
    let e = Daemon::start_in(
        Some(&ne),
        &dir.path().join("eve"),
        "eve",
        &["--caps.shs", OTHER_KEY],
    );
    follow(&e, &a);
    follow(&a, &e);
    publish(&a, "secret log line");
    publish(&e, "line from eve");
    // They found each other's broadcasts and tried: only a handshake could
    // carry a line across, and it failed. Wait for that, not for a while.
    assert!(
        wait_until(Duration::from_secs(30), || a
            .log()
            .contains("handshake failed")
            || e.log().contains("handshake failed")),
        "no failed handshake was logged:\n{}\n{}",
        a.log(),
        e.log()
    );
    assert!(!has_line(&e, "secret log line"));
    assert!(!has_line(&a, "line from eve"));
    assert!(
        e.read("status").contains("peers:     0 connected"),
        "{}",
        e.read("status")
    );
}

/// A machine loses power while connected and boots again. The survivor
/// still holds the old connection, half open: nothing told it the far end
/// is gone. The rebooted machine's lines must arrive within 30 s without
/// the survivor publishing anything, whichever machine has the larger key.
fn half_open_connection_is_replaced(survivor_key_is_smaller: bool, tag: &str) {
    if !Lan::available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Keys made in advance, to choose which side has the larger one.
    let mut keys = [Keypair::generate(), Keypair::generate()];
    keys.sort_by_key(|k| k.id());
    if !survivor_key_is_smaller {
        keys.reverse();
    }
    for (name, key) in ["survivor", "rebooter"].iter().zip(&keys) {
        std::fs::create_dir_all(dir.path().join(name)).expect("mkdir");
        std::fs::write(
            dir.path().join(name).join("secret"),
            key.to_secret_file_text(),
        )
        .expect("secret");
    }
    let mut lan = Lan::new(tag);
    let (ns, nr) = (lan.host(1), lan.host(2));
    let survivor = node(&ns, dir.path(), "survivor", &[]);
    let mut rebooter = node(&nr, dir.path(), "rebooter", &[]);
    let key = |d: &Daemon| FeedId::parse(&d.id()).expect("an id");
    assert_eq!(
        key(&survivor) < key(&rebooter),
        survivor_key_is_smaller,
        "the keys are ordered as the case asks"
    );
    follow(&survivor, &rebooter);
    follow(&rebooter, &survivor);
    publish(&rebooter, "before the power cut");
    assert!(
        wait_until(Duration::from_secs(30), || has_line(
            &survivor,
            "before the power cut"
        )),
        "{}",
        survivor.log()
    );

    // The link goes first, so that not even the kernel's FIN gets out.
    lan.cut(&nr);
    rebooter.kill();
    let nr = lan.reboot(2);
    let rebooter = node(&nr, dir.path(), "rebooter", &[]);
    publish(&rebooter, "back after the power cut");
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || has_line(
            &survivor,
            "back after the power cut"
        )),
        "the rebooted machine's line did not arrive in 30 s:\n{}\n{}",
        survivor.log(),
        rebooter.log()
    );
    eprintln!(
        "the line arrived {:.1} s after the reboot",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(count_line(&survivor, "before the power cut"), 1);
}

#[test]
fn a_half_open_connection_is_replaced_when_the_survivor_has_the_smaller_key() {
    half_open_connection_is_replaced(true, "d");
}

#[test]
fn a_half_open_connection_is_replaced_when_the_survivor_has_the_larger_key() {
    half_open_connection_is_replaced(false, "e");
}

/// A TCP listener in namespace `ns` on `port` that appends the address of
/// each connection it accepts to `log` (python3, as Debian has it), and
/// writes `<log>.ready` once it listens.
fn listener(ns: &str, port: u16, log: &std::path::Path) -> std::process::Child {
    const SCRIPT: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
open(sys.argv[2] + ".ready", "w").close()
while True:
    c, a = s.accept()
    with open(sys.argv[2], "a") as f:
        f.write("%s\n" % a[0])
    c.close()
"#;
    let child = std::process::Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{ns}"))
        .args(["python3", "-c", SCRIPT, &port.to_string()])
        .arg(log)
        .spawn()
        .expect("python3 runs");
    let ready = log.with_extension("ready");
    let mut ready_name = log.as_os_str().to_owned();
    ready_name.push(".ready");
    assert!(
        wait_until(Duration::from_secs(10), || std::path::Path::new(
            &ready_name
        )
        .exists()
            || ready.exists()),
        "the listener in {ns} did not start"
    );
    child
}

/// Sends one UDP datagram from namespace `ns`.
fn send_udp(ns: &str, to: &str, port: u16, text: &str) {
    let status = std::process::Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{ns}"))
        .args([
            "python3",
            "-c",
            "import socket,sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))",
            to,
            &port.to_string(),
            text,
        ])
        .status()
        .expect("python3 runs");
    assert!(status.success());
}

fn key_part(id: &str) -> &str {
    &id[1..id.len() - 8]
}

#[test]
fn a_forged_announcement_makes_the_daemon_dial_nobody_and_remember_nothing() {
    if !Lan::available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lan = Lan::new("f");
    let ns_a = lan.host(1);
    let ns_sender = lan.host(2);
    let ns_victim = lan.host(3);
    let ns_b = lan.host(4);
    let mut a = node(&ns_a, dir.path(), "a", &[]);
    let mut b = node(&ns_b, dir.path(), "b", &[]);
    // a and b find each other by broadcast and connect.
    assert!(
        wait_until(Duration::from_secs(20), || a
            .read("status")
            .contains(&b.id())),
        "a never connected with b:\n{}",
        a.log()
    );
    let victim_log = dir.path().join("victim-9999");
    let control_log = dir.path().join("control-9998");
    let mut victim = listener(&ns_victim, 9999, &victim_log);
    let mut control = listener(&ns_sender, 9998, &control_log);
    let stranger = Keypair::generate().id().to_string();
    for _ in 0..3 {
        // Names another host than its sender: must not make a dial there.
        send_udp(
            &ns_sender,
            "10.213.0.1",
            8008,
            &format!("net:10.213.0.3:9999~shs:{}", key_part(&stranger)),
        );
        // Names its sender, with the key of a peer a is connected with:
        // must not be remembered as b's address (a never dialled it).
        send_udp(
            &ns_sender,
            "10.213.0.1",
            8008,
            &format!("net:10.213.0.2:9997~shs:{}", key_part(&b.id())),
        );
    }
    // A genuine announcement, sent after: once a dials it, the packets
    // before it were handled.
    send_udp(
        &ns_sender,
        "10.213.0.1",
        8008,
        &format!("net:10.213.0.2:9998~shs:{}", key_part(&stranger)),
    );
    let dialled = wait_until(Duration::from_secs(15), || {
        std::fs::read_to_string(&control_log).is_ok_and(|l| l.contains("10.213.0.1"))
    });
    let victim_dials = std::fs::read_to_string(&victim_log).unwrap_or_default();
    let remembered = std::fs::read_to_string(dir.path().join("a/peers.json")).unwrap_or_default();
    let _ = victim.kill();
    let _ = control.kill();
    let _ = victim.wait();
    let _ = control.wait();
    assert!(
        dialled,
        "a did not dial a genuine announcement:\n{}",
        a.log()
    );
    assert!(
        victim_dials.is_empty(),
        "a dialled the host a forged packet named: {victim_dials}"
    );
    assert!(
        !remembered.contains("10.213.0.2:9997"),
        "a remembered an address it never dialled:\n{remembered}"
    );
    a.stop();
    b.stop();
}
