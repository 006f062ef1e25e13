//! The notification center: `scuttlefs run` wraps a job, and every machine
//! that replicates its feed judges it in `mount/health` and `scuttlefs
//! health`.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::lan::Lan;
use common::{bin, fuse_available, run, wait_until, Daemon};

fn path_of(daemon: &Daemon) -> &str {
    daemon.path.to_str().expect("utf-8 path")
}

/// `scuttlefs run --path P ARGS…`; returns its exit code and stderr.
fn run_job(path: &str, args: &[&str]) -> (i32, String) {
    let mut all = vec!["run", "--path", path];
    all.extend_from_slice(args);
    let out = run(&all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every message of the feed at `path`, as `scuttlefs log` prints them
/// (through the daemon when one runs).
fn contents(path: &str) -> Vec<Value> {
    let out = common::run_ok(&["log", "--path", path]);
    out.split("\n\n")
        .filter(|m| !m.trim().is_empty())
        .map(|m| serde_json::from_str::<Value>(m).expect("json")["value"]["content"].clone())
        .collect()
}

fn job_lines(path: &str, source: &str) -> Vec<Value> {
    contents(path)
        .into_iter()
        .filter(|c| c["source"] == source)
        .collect()
}

#[test]
fn a_run_publishes_every_line_once_in_order_and_exits_as_its_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node");
    let path = path.to_str().expect("utf-8");
    // No daemon: the run writes to the store itself.
    let script = "for i in 1 2 3; do echo out $i; echo err $i >&2; done; exit 4";
    let (code, _) = run_job(
        path,
        &[
            "--source",
            "backup",
            "--destination",
            "nas",
            "--every",
            "1d",
            "--quiet",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    assert_eq!(code, 4);
    let lines = job_lines(path, "backup");
    assert_eq!(
        lines.first().map(|c| c["run"].clone()),
        Some("start".into())
    );
    let outs: Vec<&str> = lines
        .iter()
        .filter(|c| c["run"].is_null() && c["stream"].is_null())
        .map(|c| c["text"].as_str().expect("text"))
        .collect();
    let errs: Vec<&str> = lines
        .iter()
        .filter(|c| c["stream"] == "stderr")
        .map(|c| c["text"].as_str().expect("text"))
        .collect();
    assert_eq!(outs, ["out 1", "out 2", "out 3"], "{lines:?}");
    assert_eq!(errs, ["err 1", "err 2", "err 3"], "{lines:?}");
    assert!(lines.iter().all(|c| c["destination"] == "nas"));
    let last = lines.last().expect("a last line");
    assert_eq!(last["run"], "end");
    assert_eq!(last["exit"], 4);
    assert_eq!(last["every"], "1d");
    assert!(
        last["took"].as_str().is_some_and(|t| t.ends_with('s')),
        "{last}"
    );
    assert_eq!(lines.len(), 8, "start, six lines, end: {lines:?}");
}

#[test]
fn a_killed_or_missing_command_still_gets_its_last_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node");
    let path = path.to_str().expect("utf-8");

    let (code, stderr) = run_job(path, &["--source", "ghost", "--", "/no/such/command"]);
    assert_eq!(code, 127, "{stderr}");
    assert!(stderr.contains("cannot run /no/such/command"), "{stderr}");
    let last = job_lines(path, "ghost").pop().expect("a last line");
    assert_eq!(last["exit"], 127);
    assert!(
        last["text"]
            .as_str()
            .is_some_and(|t| t.contains("cannot run")),
        "{last}"
    );

    let (code, _) = run_job(
        path,
        &[
            "--source",
            "victim",
            "--",
            "sh",
            "-c",
            "echo before; kill -KILL $$",
        ],
    );
    assert_eq!(code, 137);
    let lines = job_lines(path, "victim");
    assert!(lines.iter().any(|c| c["text"] == "before"));
    let last = lines.last().expect("a last line");
    assert_eq!(last["signal"], "SIGKILL");
    assert_eq!(last["text"], "killed by SIGKILL");

    // A command that leaves a process behind holding its output: the run
    // ends when the command does (and two seconds of draining).
    let started = std::time::Instant::now();
    let (code, _) = run_job(
        path,
        &[
            "--source",
            "leaver",
            "--quiet",
            "--",
            "sh",
            "-c",
            "sleep 30 & echo left",
        ],
    );
    assert_eq!(code, 0);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "run waited for the process left behind"
    );
    let lines = job_lines(path, "leaver");
    assert!(lines.iter().any(|c| c["text"] == "left"), "{lines:?}");
    assert_eq!(lines.last().map(|c| c["run"].clone()), Some("end".into()));

    // A signal to `run` goes to the command; `run` lives to say so.
    let mut child = Command::new(bin())
        .args([
            "run",
            "--path",
            path,
            "--source",
            "stopped",
            "--",
            "sh",
            "-c",
            "echo waiting; exec sleep 60",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run starts");
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().expect("stdout")),
        &mut first,
    )
    .expect("the command's first line");
    assert_eq!(first, "waiting\n");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("run ends");
    assert_eq!(status.code(), Some(143));
    let last = job_lines(path, "stopped").pop().expect("a last line");
    assert_eq!(last["signal"], "SIGTERM", "{last}");
}

fn health_json(daemon: &Daemon) -> (i32, Value) {
    let out = run(&["health", "--path", path_of(daemon), "--json"]);
    let code = out.status.code().unwrap_or(-1);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (code, report)
}

fn state_of(report: &Value, source: &str) -> Option<String> {
    report["rows"]
        .as_array()?
        .iter()
        .find(|r| r["source"] == source)
        .and_then(|r| r["state"].as_str())
        .map(str::to_string)
}

#[test]
fn another_machine_sees_failed_late_and_good_jobs() {
    if !Lan::available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lan = Lan::new("h");
    let (n1, n2) = (lan.host(1), lan.host(2));
    let key = common::ssb_server::KEY;
    let nas = Daemon::start_in(
        Some(&n1),
        &dir.path().join("nas"),
        "nas",
        &["--caps.shs", key],
    );
    let desk = Daemon::start_in(
        Some(&n2),
        &dir.path().join("desk"),
        "desk",
        &["--caps.shs", key],
    );
    for (a, b) in [(&nas, &desk), (&desk, &nas)] {
        assert!(a
            .sh(&format!("echo '{}' >> follow", b.id()))
            .status
            .success());
    }
    let nas_path = path_of(&nas);
    assert_eq!(
        run_job(
            nas_path,
            &[
                "--source",
                "backup",
                "--every",
                "1d",
                "--",
                "sh",
                "-c",
                "echo disk full; exit 4"
            ]
        )
        .0,
        4
    );
    assert_eq!(
        run_job(
            nas_path,
            &["--source", "sync", "--every", "3s", "--", "true"]
        )
        .0,
        0
    );
    assert_eq!(
        run_job(
            nas_path,
            &["--source", "photos", "--every", "1d", "--", "echo", "done"]
        )
        .0,
        0
    );

    // The desk, which runs none of them, judges all three.
    let judged = wait_until(Duration::from_secs(30), || {
        let (_, report) = health_json(&desk);
        state_of(&report, "backup").as_deref() == Some("failed")
            && state_of(&report, "sync").as_deref() == Some("late")
            && state_of(&report, "photos").as_deref() == Some("ok")
    });
    let (code, report) = health_json(&desk);
    assert!(judged, "{report:#}");
    assert_eq!(code, 3, "a failed job is an alert");
    let failed = &report["rows"][0];
    assert_eq!(failed["machine"], "nas");
    assert_eq!(failed["exit"], 4);
    assert_eq!(failed["last_line"], "disk full");
    let table = desk.read("health");
    let first = table.lines().nth(1).expect("a first row");
    assert!(
        first.starts_with("failed") && first.contains("nas") && first.contains("backup"),
        "{table}"
    );
    assert!(table.contains("late"), "{table}");

    // Good runs put it right.
    assert_eq!(
        run_job(
            nas_path,
            &["--source", "backup", "--every", "1d", "--", "true"]
        )
        .0,
        0
    );
    assert_eq!(
        run_job(
            nas_path,
            &["--source", "sync", "--every", "1h", "--", "true"]
        )
        .0,
        0
    );
    assert!(
        wait_until(Duration::from_secs(30), || health_json(&desk).0 == 0),
        "{:#}",
        health_json(&desk).1
    );

    // No daemon: exit 1.
    let gone = dir.path().join("nowhere");
    let out = run(&["health", "--path", gone.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    drop(lan);
}

/// The lines of `merged.log` that are `machine`'s and carry `source=…`
/// as their first field.
fn merged_lines_of(daemon: &Daemon, machine: &str, source: &str) -> String {
    daemon
        .read("merged.log")
        .lines()
        .filter(|l| {
            let mut words = l.split(' ');
            words.nth(1) == Some(machine) && words.next() == Some(&format!("source={source}"))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Whether process `pid` has `path` open.
fn has_open(pid: u32, path: &std::path::Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(Result::ok)
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
        })
        .unwrap_or(false)
}

/// `stat -c %s` through the mount.
fn stat_size(daemon: &Daemon, rel: &str) -> u64 {
    let out = daemon.sh(&format!("stat -c %s '{rel}'"));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("stat {rel}: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn job_and_day_files_hold_the_matching_lines_of_merged_log() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("node"), "nas", &[]);
    let path = path_of(&daemon);
    for (source, script) in [
        ("backup", "echo copying; echo warn >&2; exit 1"),
        ("sync", "echo synced"),
        ("backup", "echo copying again"),
    ] {
        run_job(
            path,
            &["--source", source, "--quiet", "--", "sh", "-c", script],
        );
    }
    assert!(daemon
        .sh("echo 'a line of no job' >> publish")
        .status
        .success());

    let listing = daemon.sh("ls nas/jobs");
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout),
        "backup.log\nsync.log\n"
    );
    for source in ["backup", "sync"] {
        let rel = format!("nas/jobs/{source}.log");
        let content = daemon.read(&rel);
        assert_eq!(content, merged_lines_of(&daemon, "nas", source), "{rel}");
        assert_eq!(
            stat_size(&daemon, &rel),
            content.len() as u64,
            "{rel}'s size"
        );
    }
    assert_eq!(
        daemon.read("nas/jobs/backup.log").lines().count(),
        7,
        "two runs of backup"
    );

    let days = String::from_utf8_lossy(&daemon.sh("ls days").stdout).into_owned();
    let merged = daemon.read("merged.log");
    let mut all_days = String::new();
    for name in days.lines() {
        let rel = format!("days/{name}");
        let content = daemon.read(&rel);
        assert_eq!(
            stat_size(&daemon, &rel),
            content.len() as u64,
            "{rel}'s size"
        );
        all_days.push_str(&content);
    }
    assert!(!days.is_empty());
    assert_eq!(all_days, merged, "the days together are merged.log");

    // tail -f on a job's file and on today's file sees a new line.
    let today = days.lines().last().expect("a day").to_string();
    let follow = |rel: &str| {
        Command::new("tail")
            .args(["-n", "0", "-f", rel])
            .current_dir(daemon.file(""))
            .stdout(Stdio::piped())
            .spawn()
            .expect("tail starts")
    };
    let files = ["nas/jobs/sync.log".to_string(), format!("days/{today}")];
    let mut tails = files.clone().map(|rel| follow(&rel));
    for (tail, rel) in tails.iter().zip(&files) {
        let path = daemon.file(rel);
        assert!(
            wait_until(Duration::from_secs(10), || has_open(tail.id(), &path)),
            "tail did not open {rel}"
        );
    }
    run_job(
        path,
        &["--source", "sync", "--quiet", "--", "echo", "synced again"],
    );
    for tail in &mut tails {
        let stdout = tail.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in
                std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let seen = wait_until(Duration::from_secs(10), || {
            rx.try_iter().any(|l| l.ends_with(" synced again"))
        });
        let _ = tail.kill();
        let _ = tail.wait();
        assert!(seen, "tail -f did not see the new line");
    }
}

#[test]
fn a_job_started_while_the_daemon_starts_runs_and_publishes_through_it() {
    if !fuse_available() {
        return;
    }
    use std::os::unix::io::AsRawFd;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nas");
    let path_str = path.to_str().expect("utf8");
    // A first run makes the store.
    assert_eq!(run_job(path_str, &["--source", "warm", "--", "true"]).0, 0);
    // The store held, as a daemon that is still starting holds it.
    let lock = std::fs::File::open(path.join("db").join("lock")).expect("the store's lock");
    // SAFETY: flock on a descriptor this test owns.
    let taken = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    assert!(taken, "could not take the store's lock");
    let mut job = Command::new(bin())
        .args([
            "run", "--path", path_str, "--source", "boot", "--quiet", "--",
        ])
        .args(["sh", "-c", "echo booted"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("run starts");
    // It waits for the daemon rather than giving up.
    let gave_up = wait_until(Duration::from_secs(2), || {
        job.try_wait().ok().flatten().is_some()
    });
    assert!(!gave_up, "run gave up while the daemon was starting");
    drop(lock);
    let daemon = Daemon::start(&path, "nas", &[]);
    let status = job.wait().expect("run ends");
    assert!(status.success(), "{status:?}");
    assert!(
        wait_until(Duration::from_secs(20), || daemon
            .read("nas/jobs/boot.log")
            .contains("booted")),
        "{}",
        daemon.read("merged.log")
    );
}
