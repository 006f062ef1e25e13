//! The seed user's workflow: piping logs in, service files, monitoring, and
//! the README's demo run as written.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{fuse_available, publish_stdin, run, run_ok, system_available, wait_until};
use serde_json::Value;

use scuttlefs::feed::{FeedTip, Message};

fn log_values(path: &str) -> Vec<Value> {
    run_ok(&["log", "--path", path])
        .split("\n\n")
        .filter(|s| !s.trim().is_empty())
        .map(|s| serde_json::from_str(s).expect("JSON"))
        .collect()
}

#[test]
fn publish_stdin_publishes_every_line_once_in_order_and_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_str().expect("utf8");
    let input: String = (1..=10_000)
        .map(|i| format!("backup chunk {i} ok\n"))
        .collect();
    let out = publish_stdin(
        path,
        input.as_bytes(),
        &[
            "--type",
            "log",
            "--source",
            "laptop",
            "--destination",
            "nas",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = log_values(path);
    let lines: Vec<&Value> = log
        .iter()
        .filter(|m| m["value"]["content"]["type"] == "log")
        .collect();
    assert_eq!(lines.len(), 10_000);
    // It prints a JSON summary, as the README says: how many, which feed,
    // and the first and last message (after the machine's name, at 1).
    let summary: Value = serde_json::from_slice(&out.stdout).expect("a JSON summary");
    assert_eq!(summary["published"], 10_000);
    assert_eq!(summary["feed"], log[0]["value"]["author"]);
    assert_eq!(summary["first"]["sequence"], 2);
    assert_eq!(summary["first"]["key"], lines[0]["key"]);
    assert_eq!(summary["last"]["sequence"], 10_001);
    assert_eq!(summary["last"]["key"], lines[9_999]["key"]);
    for (i, m) in lines.iter().enumerate() {
        let content = &m["value"]["content"];
        assert_eq!(content["text"], format!("backup chunk {} ok", i + 1));
        assert_eq!(content["source"], "laptop");
        assert_eq!(content["destination"], "nas");
    }
    // The whole feed verifies and chains.
    let mut tip: Option<FeedTip> = None;
    for m in &log {
        let msg = Message::verify(m["value"].clone()).expect("valid");
        assert_eq!(msg.key.to_string(), m["key"].as_str().expect("key"));
        FeedTip::check_next(tip.as_ref(), &msg).expect("chained");
        tip = Some(msg.tip());
    }
}

#[test]
fn publish_stdin_goes_through_a_running_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node");
    let path_s = path.to_str().expect("utf8");
    let mut daemon = common::spawn_headless_daemon(path_s, &[]);
    let socket = path.join("scuttlefs.sock");
    assert!(wait_until(Duration::from_secs(10), || socket.exists()
        && run(&["status", "--path", path_s]).status.success()));

    let mut input = String::new();
    for i in 1..=2000 {
        if i == 7 {
            input.push_str("{\"looks\": \"like JSON\"}\n");
        } else {
            input.push_str(&format!("via the daemon {i}\n"));
        }
    }
    let out = publish_stdin(
        path_s,
        input.as_bytes(),
        &["--type", "log", "--source", "cron"],
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("a JSON summary");
    assert_eq!(
        summary["published"],
        2000,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The store is the daemon's: `log` goes through the socket too.
    let log = log_values(path_s);
    let texts: Vec<&str> = log
        .iter()
        .filter(|m| m["value"]["content"]["source"] == "cron")
        .map(|m| m["value"]["content"]["text"].as_str().expect("text"))
        .collect();
    assert_eq!(texts.len(), 2000);
    assert_eq!(texts[5], "via the daemon 6");
    assert_eq!(
        texts[6], "{\"looks\": \"like JSON\"}",
        "a stdin line is text"
    );
    assert_eq!(texts[1999], "via the daemon 2000");
    assert_eq!(summary["last"]["key"], log.last().expect("messages")["key"]);
    let _ = daemon.kill();
    let _ = daemon.wait();
}

#[test]
fn publish_stdin_with_a_bad_line_publishes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_str().expect("utf8");
    run_ok(&[
        "publish", "--path", path, "--type", "log", "--text", "before",
    ]);
    let before = log_values(path).len();
    let mut input = Vec::new();
    for i in 1..=100 {
        if i == 50 {
            input.extend_from_slice(b"bad \xff line\n");
        } else {
            input.extend_from_slice(format!("line {i}\n").as_bytes());
        }
    }
    let out = publish_stdin(path, &input, &["--type", "log"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 50"), "{stderr}");
    assert_eq!(log_values(path).len(), before, "something was published");
}

#[test]
fn status_exit_codes_tell_a_monitor_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node");
    let path_s = path.to_str().expect("utf8");
    // Daemon down: 1.
    let out = run(&["status", "--path", path_s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no daemon"));

    let mut daemon = common::spawn_headless_daemon(path_s, &[]);
    assert!(wait_until(Duration::from_secs(10), || run(&[
        "status", "--path", path_s
    ])
    .status
    .success()));
    // Up, never a peer, silent for over a second: 2, once a second passed.
    assert!(
        wait_until(Duration::from_secs(10), || run(&[
            "status",
            "--path",
            path_s,
            "--max-silence",
            "1s"
        ])
        .status
        .code()
            == Some(2)),
        "{}",
        String::from_utf8_lossy(&run(&["status", "--path", path_s, "--max-silence", "1s"]).stderr)
    );
    // A limit too long to represent is refused, not wrapped around to 44 s.
    let out = run(&[
        "status",
        "--path",
        path_s,
        "--max-silence",
        "307445734561825861m",
    ]);
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad duration"), "{stderr}");
    // Within the allowed silence: 0.
    let out = run(&["status", "--path", path_s, "--max-silence", "1h"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("peers:     0 connected"));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().expect("exits").success());
}

#[test]
fn systemd_units_say_what_they_must_and_verify() {
    let service_dir = common::repo().join("docs/service");
    let units = [
        ("scuttlefs.service", "%h/.cargo/bin/scuttlefs"),
        ("scuttlefs-system.service", "/usr/local/bin/scuttlefs"),
    ];
    for (file, binary) in units {
        let text = std::fs::read_to_string(service_dir.join(file)).expect("unit");
        assert!(text.contains("Restart=on-failure"), "{file}");
        assert!(
            text.contains("ExecStopPost="),
            "{file} should unmount on stop"
        );
        assert!(
            text.contains(&format!("ExecStart={binary} serve")),
            "{file}"
        );
        // Neither cargo install nor the steps in the unit install any
        // documentation, so a Documentation= link would point at nothing.
        assert!(
            !text.lines().any(|l| l.starts_with("Documentation=")),
            "{file} links documentation nothing installs"
        );
    }
    let have_systemd = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok();
    if !system_available("systemd-analyze", have_systemd) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for (file, binary) in units {
        let text = std::fs::read_to_string(service_dir.join(file)).expect("unit");
        // verify checks that ExecStart's program exists: point it at ours.
        let unit = dir.path().join("scuttlefs.service");
        std::fs::write(
            &unit,
            text.replace(binary, common::bin().to_str().expect("utf8")),
        )
        .expect("write");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{file}: {stderr}"
        );
    }
}

#[test]
fn the_launchd_plist_parses() {
    let plist = common::repo().join("docs/service/com.scuttlefs.plist");
    let text = std::fs::read_to_string(&plist).expect("plist");
    assert!(text.contains("<string>com.scuttlefs</string>"), "{text}");
    let have_python = Command::new("python3").arg("--version").output().is_ok();
    if !system_available("python3 (plistlib)", have_python) {
        return;
    }
    let out = Command::new("python3")
        .arg("-c")
        .arg("import plistlib,sys; p=plistlib.load(open(sys.argv[1],'rb')); assert p['Label']=='com.scuttlefs'; assert p['ProgramArguments'][1]=='serve'; assert p['KeepAlive']['SuccessfulExit'] is False; print('ok')")
        .arg(&plist)
        .output()
        .expect("runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_readme_demo_runs_as_written() {
    if !fuse_available() {
        return;
    }
    let readme = std::fs::read_to_string(common::repo().join("README.md")).expect("README");
    let section = &readme[readme.find("## A 30-second demo").expect("demo section")..];
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block");
    // The build step is the test's own; the binary under test goes on PATH.
    let bin_dir = common::bin().parent().expect("dir").to_path_buf();
    let script: String = block
        .lines()
        .map(|l| {
            if l.starts_with("cargo build") {
                format!("export PATH=\"{}:$PATH\"", bin_dir.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().expect("tempdir");
    // The demo's daemon broadcasts on the LAN as a user's would: run it in
    // a network namespace of its own, with loopback only.
    let netns = format!("sfreadme{}", std::process::id());
    let made = Command::new("ip").args(["netns", "add", &netns]).status();
    assert!(made.is_ok_and(|s| s.success()), "ip netns add");
    let _ = Command::new("ip")
        .args(["-n", &netns, "link", "set", "lo", "up"])
        .status();
    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{netns}"))
        .arg("bash")
        .arg("-c")
        .arg(format!("set -e\n{script}"))
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .env("RUST_LOG", "warn,fuser=error")
        .output()
        .expect("bash runs");
    let _ = Command::new("ip").args(["netns", "del", &netns]).status();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        " laptop backup of /home finished\n",
        " laptop first\n",
        " laptop second\n",
        "feed.jsonl\nid\njobs\nlog\n",
        " laptop source=cron 3\n",
        "\nfailed  laptop   backup  ",
        "backup failed: 3\n",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    assert!(
        !mounts.contains(dir.path().to_str().expect("utf8")),
        "the demo left a mount"
    );
}
