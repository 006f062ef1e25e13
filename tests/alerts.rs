//! Alerts through `exec:` targets: a real daemon judges real `scuttlefs
//! run` jobs and runs a real script for each change, once.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{fuse_available, job, run, run_ok, wait_until, Daemon};
use serde_json::Value;

/// A script that records each alert it is given: a line of
/// `state|source|exit|title` in `<dir>/alerts.txt`, and the JSON from its
/// standard input as a line of `<dir>/alerts.jsonl`. With `fails_until`,
/// it fails (exit 1, saying "target down") until that file exists.
fn recorder(dir: &Path, fails_until: Option<&Path>) -> PathBuf {
    let script = dir.join("record-alert");
    let gate = fails_until
        .map(|f| {
            format!(
                "[ -e '{}' ] || {{ echo 'target down' >&2; exit 1; }}\n",
                f.display()
            )
        })
        .unwrap_or_default();
    // The JSON first: a test that sees a line in alerts.txt reads its
    // JSON next.
    let body = format!(
        "#!/bin/sh\n{gate}{{ cat; echo; }} >> '{dir}/alerts.jsonl'\n\
         printf '%s|%s|%s|%s\\n' \"$SCUTTLEFS_ALERT_STATE\" \
         \"$SCUTTLEFS_ALERT_SOURCE\" \"$SCUTTLEFS_ALERT_EXIT\" \"$SCUTTLEFS_ALERT_TITLE\" \
         >> '{dir}/alerts.txt'\n",
        dir = dir.display()
    );
    std::fs::write(&script, body).expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

/// Adds a [`recorder`] in `dir` as an alert target of the machine at
/// `path`.
fn add_recorder(dir: &Path, path: &str) {
    let script = recorder(dir, None);
    run_ok(&[
        "alert",
        "add",
        &format!("exec:{}", script.display()),
        "--path",
        path,
    ]);
}

fn alerts(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("alerts.txt"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn wait_for_alerts(dir: &Path, count: usize) -> Vec<String> {
    assert!(
        wait_until(Duration::from_secs(30), || alerts(dir).len() >= count),
        "expected {count} alerts, got {:?}",
        alerts(dir)
    );
    alerts(dir)
}

/// Starts the daemon and waits until its alert thread has judged once
/// and read the targets (`status` lists them).
fn start(path: &Path, targets: usize) -> Daemon {
    let daemon = Daemon::start(path, "nas", &[]);
    let book = path.join("alerts.json");
    assert!(
        wait_until(Duration::from_secs(20), || book.exists()
            && daemon
                .read("status")
                .contains(&format!("alerts:    {targets} target(s)"))),
        "the alert thread did not start: {}",
        daemon.read("status")
    );
    daemon
}

#[test]
fn each_change_is_one_alert_a_repeat_none_and_a_restart_resends_nothing() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nas");
    let path_str = path.to_str().expect("utf8");
    let script = recorder(dir.path(), None);
    let target = format!("exec:{}", script.display());
    run_ok(&["alert", "add", &target, "--path", path_str]);
    assert_eq!(
        run_ok(&["alert", "list", "--path", path_str]).trim(),
        target
    );
    let mut daemon = start(&path, 1);

    assert_eq!(job(path_str, "backup", "echo disk full >&2; exit 23"), 23);
    let got = wait_for_alerts(dir.path(), 1);
    assert_eq!(got, ["failed|backup|23|backup failed on nas (exit 23)"]);
    let json: Value = serde_json::from_str(
        std::fs::read_to_string(dir.path().join("alerts.jsonl"))
            .expect("jsonl")
            .lines()
            .next()
            .expect("a line"),
    )
    .expect("json on stdin");
    assert_eq!(json["state"], "failed");
    assert_eq!(json["machine"], "nas");
    assert_eq!(json["source"], "backup");
    assert_eq!(json["exit"], 23);
    assert!(
        json["body"]
            .as_str()
            .is_some_and(|b| b.contains("disk full")),
        "{json}"
    );
    assert!(
        json["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{json}"
    );

    // The same failure again: nothing. Another job's failure, judged in
    // the same report or a later one, is the next alert.
    assert_eq!(job(path_str, "backup", "exit 23"), 23);
    assert_eq!(job(path_str, "other", "exit 4"), 4);
    let got = wait_for_alerts(dir.path(), 2);
    assert_eq!(got[1], "failed|other|4|other failed on nas (exit 4)");
    assert_eq!(job(path_str, "backup", "echo all good"), 0);
    let got = wait_for_alerts(dir.path(), 3);
    assert_eq!(got[2], "recovered|backup|0|backup recovered on nas");

    // A restart sends nothing again; the next change still goes.
    assert_eq!(daemon.stop(), Some(0));
    drop(daemon);
    let _daemon = start(&path, 1);
    assert_eq!(job(path_str, "other", "true"), 0);
    let got = wait_for_alerts(dir.path(), 4);
    assert_eq!(
        got,
        [
            "failed|backup|23|backup failed on nas (exit 23)",
            "failed|other|4|other failed on nas (exit 4)",
            "recovered|backup|0|backup recovered on nas",
            "recovered|other|0|other recovered on nas",
        ]
    );
}

#[test]
fn a_target_that_is_down_gets_the_alert_once_it_is_back() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nas");
    let path_str = path.to_str().expect("utf8");
    let back = dir.path().join("back");
    let script = recorder(dir.path(), Some(&back));
    let target = format!("exec:{}", script.display());
    run_ok(&["alert", "add", &target, "--path", path_str]);
    let daemon = start(&path, 1);
    assert_eq!(job(path_str, "backup", "exit 23"), 23);
    assert!(
        wait_until(Duration::from_secs(30), || daemon
            .read("status")
            .contains("pending \"backup failed on nas (exit 23)\"")),
        "{}",
        daemon.read("status")
    );
    assert!(daemon.read("status").contains("target down"));
    assert!(alerts(dir.path()).is_empty());
    std::fs::write(&back, "").expect("back");
    let got = wait_for_alerts(dir.path(), 1);
    assert_eq!(got, ["failed|backup|23|backup failed on nas (exit 23)"]);
    assert!(wait_until(Duration::from_secs(10), || !daemon
        .read("status")
        .contains("pending")));
}

#[test]
fn alert_test_exits_by_whether_the_alert_was_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nas");
    let path_str = path.to_str().expect("utf8");
    // Nothing to send to.
    let out = run(&["alert", "test", "--path", path_str]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no alert targets"));
    // A target that works, given on the command line.
    let script = recorder(dir.path(), None);
    let target = format!("exec:{}", script.display());
    let out = run(&["alert", "test", &target, "--path", path_str]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(alerts(dir.path()).len(), 1);
    assert!(alerts(dir.path())[0].starts_with("test|||scuttlefs test alert from "));
    // One that fails: exit 1, with the program's own words.
    let down_dir = dir.path().join("down");
    std::fs::create_dir_all(&down_dir).expect("mkdir");
    let down = recorder(&down_dir, Some(&dir.path().join("never")));
    run_ok(&[
        "alert",
        "add",
        &format!("exec:{}", down.display()),
        "--path",
        path_str,
    ]);
    let out = run(&["alert", "test", "--path", path_str]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not delivered") && stderr.contains("target down"),
        "{stderr}"
    );
    // Refused targets, and removal.
    let out = run(&["alert", "add", "exec:relative", "--path", path_str]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("absolute path"));
    run_ok(&[
        "alert",
        "remove",
        &format!("exec:{}", down.display()),
        "--path",
        path_str,
    ]);
    assert_eq!(run_ok(&["alert", "list", "--path", path_str]), "");
}

/// A local HTTP server (Python's http.server) that records each request
/// as a JSON line of method, path, headers and body, and answers 200 (503
/// on a path with "down" in it). Stopped when dropped.
struct Recorder {
    child: std::process::Child,
    port: u16,
    log: PathBuf,
}

impl Recorder {
    fn start(dir: &Path) -> Recorder {
        let log = dir.join("requests.jsonl");
        let script = r#"
import http.server, json, sys
log = sys.argv[1]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
        with open(log, 'a') as f:
            f.write(json.dumps({'method': self.command, 'path': self.path,
                'headers': {k.lower(): v for k, v in self.headers.items()},
                'body': body.decode('utf-8')}) + '\n')
        self.send_response(503 if 'down' in self.path else 200)
        self.send_header('Content-Length', '0')
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(('127.0.0.1', 0), Handler)
print(server.server_port, flush=True)
server.serve_forever()
"#;
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&log)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("the port");
        let port = line.trim().parse().expect("a port");
        Recorder { child, port, log }
    }

    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ntfy_and_webhook_targets_get_what_their_apis_take() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nas");
    let path_str = path.to_str().expect("utf8");
    let server = Recorder::start(dir.path());
    let ntfy = format!("ntfy://127.0.0.1:{}/backups", server.port);
    let hook = format!(
        "json://hook:s3cret-pw@127.0.0.1:{}/hooks/scuttlefs",
        server.port
    );
    run_ok(&["alert", "add", &ntfy, "--path", path_str]);
    run_ok(&["alert", "add", &hook, "--path", path_str]);
    let listed = run_ok(&["alert", "list", "--path", path_str]);
    assert!(listed.contains("json://hook:****@127.0.0.1"), "{listed}");
    assert!(!listed.contains("s3cret"), "{listed}");
    let out = run(&["alert", "test", "--path", path_str]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret"));
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let to_ntfy = &requests[0];
    assert_eq!(to_ntfy["method"], "POST");
    assert_eq!(to_ntfy["path"], "/backups");
    assert!(to_ntfy["headers"]["title"]
        .as_str()
        .is_some_and(|t| t.starts_with("scuttlefs test alert from ")));
    assert_eq!(to_ntfy["headers"]["priority"], "low");
    assert_eq!(to_ntfy["headers"]["tags"], "bell");
    assert_eq!(to_ntfy["body"], "If you read this, alerts reach you.");
    let to_hook = &requests[1];
    assert_eq!(to_hook["method"], "POST");
    assert_eq!(to_hook["path"], "/hooks/scuttlefs");
    assert_eq!(to_hook["headers"]["content-type"], "application/json");
    assert_eq!(
        to_hook["headers"]["authorization"],
        "Basic aG9vazpzM2NyZXQtcHc="
    );
    let alert: Value = serde_json::from_str(to_hook["body"].as_str().expect("body")).expect("json");
    for field in [
        "state", "machine", "source", "title", "body", "exit", "time",
    ] {
        assert!(alert.get(field).is_some(), "no {field} in {alert}");
    }
    assert_eq!(alert["state"], "test");
    assert_eq!(alert["source"], Value::Null);

    // A failed job through the daemon: high priority on ntfy.
    if !fuse_available() {
        return;
    }
    let _daemon = start(&path, 2);
    assert_eq!(
        job(
            path_str,
            "backup",
            "echo No space left on device >&2; exit 23"
        ),
        23
    );
    assert!(
        wait_until(Duration::from_secs(30), || server.requests().len() >= 4),
        "{:?}",
        server.requests()
    );
    let requests = server.requests();
    let to_ntfy = requests
        .iter()
        .skip(2)
        .find(|r| r["path"] == "/backups")
        .expect("ntfy got it");
    assert_eq!(
        to_ntfy["headers"]["title"],
        "backup failed on nas (exit 23)"
    );
    assert_eq!(to_ntfy["headers"]["priority"], "high");
    assert!(to_ntfy["body"]
        .as_str()
        .is_some_and(|b| b.contains("No space left on device")));
    // The password went nowhere it should not.
    let status = run_ok(&["status", "--path", path_str]);
    assert!(!status.contains("s3cret"), "{status}");
    let log = std::fs::read_to_string(dir.path().join("nas.log")).unwrap_or_default();
    assert!(!log.contains("s3cret"));
}

#[test]
fn a_webhook_that_answers_an_error_is_not_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nas");
    let server = Recorder::start(dir.path());
    let down = format!("json://127.0.0.1:{}/down", server.port);
    let out = run(&[
        "alert",
        "test",
        &down,
        "--path",
        path.to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP 503"),
        "{out:?}"
    );
    assert_eq!(server.requests().len(), 1);
}

/// What `status` says this machine did with alerts: (delivered, left to
/// another machine).
fn told(daemon: &Daemon) -> (u64, u64) {
    let status: Value = serde_json::from_str(&run_ok(&[
        "status",
        "--json",
        "--path",
        daemon.path.to_str().expect("utf8"),
    ]))
    .expect("json");
    let count = |k: &str| status["alerts"][k].as_u64().unwrap_or(0);
    (count("delivered"), count("left_to_others"))
}

#[test]
fn two_machines_with_one_target_send_one_alert_per_change() {
    if !fuse_available() {
        return;
    }
    const KEY: &str = "QWxlcnRzLW9uY2UtcGVyLWNoYW5nZS1wbGVhc2UhISE=";
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Recorder::start(dir.path());
    let hook = format!("json://127.0.0.1:{}/hook", server.port);
    let (nas_path, laptop_path) = (dir.path().join("nas"), dir.path().join("laptop"));
    for path in [&nas_path, &laptop_path] {
        run_ok(&[
            "alert",
            "add",
            &hook,
            "--path",
            path.to_str().expect("utf8"),
        ]);
    }
    let nas = Daemon::start(&nas_path, "nas", &["--caps.shs", KEY]);
    let laptop = Daemon::start(
        &laptop_path,
        "laptop",
        &["--caps.shs", KEY, "--peer", &nas.loopback_address()],
    );
    for (a, b) in [(&nas, &laptop), (&laptop, &nas)] {
        let out = a.sh(&format!("echo '{}' >> follow", b.id()));
        assert!(out.status.success());
    }
    // Each knows the other alerts the same target.
    for daemon in [&nas, &laptop] {
        assert!(
            wait_until(Duration::from_secs(30), || daemon
                .read("status")
                .contains("also alerted by 1 other machine(s)")),
            "{}",
            daemon.read("status")
        );
    }
    let nas_str = nas_path.to_str().expect("utf8");
    assert_eq!(job(nas_str, "backup", "exit 23"), 23);
    // Both judged it: one sent it, the other left it to the first.
    let both_judged = |n: u64| {
        wait_until(Duration::from_secs(30), || {
            let (sent_nas, left_nas) = told(&nas);
            let (sent_laptop, left_laptop) = told(&laptop);
            sent_nas + left_nas >= n && sent_laptop + left_laptop >= n
        })
    };
    assert!(both_judged(1), "{:?} {:?}", told(&nas), told(&laptop));
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let alert: Value =
        serde_json::from_str(requests[0]["body"].as_str().expect("body")).expect("json");
    assert_eq!(alert["state"], "failed");
    assert_eq!(alert["machine"], "nas");
    assert_eq!(told(&nas).0 + told(&laptop).0, 1);

    assert_eq!(job(nas_str, "backup", "true"), 0);
    assert!(both_judged(2), "{:?} {:?}", told(&nas), told(&laptop));
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let alert: Value =
        serde_json::from_str(requests[1]["body"].as_str().expect("body")).expect("json");
    assert_eq!(alert["state"], "recovered");
}

#[test]
fn a_machine_that_stops_is_one_quiet_alert_not_one_per_job_then_one_recovered() {
    if !fuse_available() {
        return;
    }
    const KEY: &str = "T25lLXF1aWV0LWFsZXJ0LWZvci1hLW1hY2hpbmUhISE=";
    let dir = tempfile::tempdir().expect("tempdir");
    let (nas_path, laptop_path) = (dir.path().join("nas"), dir.path().join("laptop"));
    let laptop_str = laptop_path.to_str().expect("utf8");
    add_recorder(dir.path(), laptop_str);
    let laptop = Daemon::start(
        &laptop_path,
        "laptop",
        &["--caps.shs", KEY, "--max-silence", "4s"],
    );
    let nas_args = ["--caps.shs", KEY, "--peer", &laptop.loopback_address()];
    let mut nas = Daemon::start(&nas_path, "nas", &nas_args);
    let out = laptop.sh(&format!("echo '{}' >> follow", nas.id()));
    assert!(out.status.success());
    let nas_str = nas_path.to_str().expect("utf8");
    let every_2s = |script: &str| {
        run(&[
            "run", "--path", nas_str, "--source", "tick", "--every", "2s", "--quiet", "--", "sh",
            "-c", script,
        ])
        .status
        .code()
    };
    assert_eq!(every_2s("true"), Some(0));
    assert!(
        wait_until(Duration::from_secs(30), || laptop
            .read("health")
            .contains("tick")),
        "{}",
        laptop.read("health")
    );
    // The machine stops: its job falls due after 2.2 s, the machine is
    // quiet after 4 s. One alert, for the machine.
    assert_eq!(nas.stop(), Some(0));
    let got = wait_for_alerts(dir.path(), 1);
    assert_eq!(got, ["quiet|||nas is quiet"]);
    assert!(laptop.read("health").contains("quiet"));
    // Back, and running its job: the machine is heard from again.
    drop(nas);
    let _nas = Daemon::start(&nas_path, "nas", &nas_args);
    assert_eq!(every_2s("true"), Some(0));
    let got = wait_for_alerts(dir.path(), 2);
    assert_eq!(
        got,
        [
            "quiet|||nas is quiet",
            "recovered|||nas is heard from again"
        ]
    );
}

#[test]
fn a_muted_job_is_silent_until_the_mute_ends_and_a_retired_job_leaves_health() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nas");
    let path_str = path.to_str().expect("utf8");
    add_recorder(dir.path(), path_str);
    let daemon = start(&path, 1);
    assert_eq!(job(path_str, "backup", "true"), 0);
    let said = run_ok(&[
        "alert",
        "mute",
        "nas/backup",
        "--for",
        "1h",
        "--path",
        path_str,
    ]);
    assert!(said.contains("muted"), "{said}");
    assert_eq!(job(path_str, "backup", "exit 23"), 23);
    // Judged in the same round or before: another job's failure is the
    // first alert, and the muted one is not among them.
    assert_eq!(job(path_str, "other", "exit 4"), 4);
    let got = wait_for_alerts(dir.path(), 1);
    assert_eq!(got, ["failed|other|4|other failed on nas (exit 4)"]);
    // The mute ends: still failing, so it is told now.
    run_ok(&[
        "alert",
        "mute",
        "nas/backup",
        "--for",
        "0",
        "--path",
        path_str,
    ]);
    let got = wait_for_alerts(dir.path(), 2);
    assert_eq!(got[1], "failed|backup|23|backup failed on nas (exit 23)");

    // Retired: gone from health on this machine; a run brings it back.
    assert!(daemon.read("health").contains("backup"));
    let said = run_ok(&["job", "retire", "nas/backup", "--path", path_str]);
    assert!(said.contains("retired"), "{said}");
    assert!(
        wait_until(Duration::from_secs(10), || !daemon
            .read("health")
            .contains("backup")),
        "{}",
        daemon.read("health")
    );
    let out = run(&["job", "retire", "nobody/backup", "--path", path_str]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no machine is named"));
    assert_eq!(job(path_str, "backup", "true"), 0);
    assert!(daemon.read("health").contains("backup"));
}

#[test]
fn a_run_past_its_timeout_is_stuck_and_a_job_past_its_grace_is_late() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nas");
    let path_str = path.to_str().expect("utf8");
    add_recorder(dir.path(), path_str);
    let daemon = start(&path, 1);
    // A run that hangs past its 2 s timeout.
    let gate = dir.path().join("go");
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut hanging = std::process::Command::new(common::bin())
        .args([
            "run",
            "--path",
            path_str,
            "--source",
            "dump",
            "--timeout",
            "2s",
            "--quiet",
            "--",
        ])
        .args([
            "sh",
            "-c",
            &format!("while [ ! -e '{}' ]; do sleep 0.1; done", gate.display()),
        ])
        .spawn()
        .map(KillOnDrop)
        .expect("run starts");
    let got = wait_for_alerts(dir.path(), 1);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("stuck|dump||dump is stuck on nas (running for "),
        "{got:?}"
    );
    assert!(daemon
        .read("health")
        .lines()
        .any(|l| l.starts_with("stuck ")));
    std::fs::write(&gate, "").expect("gate");
    assert!(hanging.0.wait().expect("run ends").success());
    let got = wait_for_alerts(dir.path(), 2);
    assert_eq!(got[1], "recovered|dump|0|dump recovered on nas");
    // Every 1 s with 3 s of grace: late only after 4 s.
    assert_eq!(
        run(&[
            "run", "--path", path_str, "--source", "tick", "--every", "1s", "--grace", "3s",
            "--quiet", "--", "true"
        ])
        .status
        .code(),
        Some(0)
    );
    let ran = std::time::Instant::now();
    let got = wait_for_alerts(dir.path(), 3);
    assert_eq!(got[2], "late|tick|0|tick is late on nas");
    assert!(
        ran.elapsed() >= Duration::from_secs(4),
        "{:?}",
        ran.elapsed()
    );
}

/// The latest sequence `daemon` holds of `feed`, from its status file.
fn held_sequence(daemon: &Daemon, feed: &str) -> u64 {
    daemon
        .read("status")
        .lines()
        .find(|l| l.contains(feed) && l.contains(" seq "))
        .and_then(|l| l.split(" seq ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_pub_that_publishes_no_lines_stays_out_of_quiet_while_it_runs() {
    if !fuse_available() {
        return;
    }
    const KEY: &str = "QS1wdWItdGhhdC1zYXlzLW5vdGhpbmctaXMtdXAhISE=";
    let dir = tempfile::tempdir().expect("tempdir");
    let (pub_path, laptop_path) = (dir.path().join("pub"), dir.path().join("laptop"));
    add_recorder(dir.path(), laptop_path.to_str().expect("utf8"));
    // Both allow 8 s of silence: the pub says it is up every 2 s.
    let mut hub = Daemon::start(
        &pub_path,
        "pub",
        &["--caps.shs", KEY, "--max-silence", "8s"],
    );
    let laptop = Daemon::start(
        &laptop_path,
        "laptop",
        &[
            "--caps.shs",
            KEY,
            "--max-silence",
            "8s",
            "--peer",
            &hub.loopback_address(),
        ],
    );
    let hub_id = hub.id();
    assert!(laptop
        .sh(&format!("echo '{hub_id}' >> follow"))
        .status
        .success());
    // The pub's one line, then nothing but what the daemon says itself.
    assert!(hub.sh("echo 'pub up' >> publish").status.success());
    assert!(
        wait_until(Duration::from_secs(30), || held_sequence(&laptop, &hub_id)
            >= 1),
        "{}",
        laptop.read("status")
    );
    let first = held_sequence(&laptop, &hub_id);
    // Watch for longer than the allowed silence (six heartbeats: over
    // 12 s): never quiet, and no alert.
    let mut saw_quiet = false;
    let long_enough = wait_until(Duration::from_secs(60), || {
        saw_quiet |= laptop.read("health").contains("quiet");
        held_sequence(&laptop, &hub_id) >= first + 6
    });
    assert!(long_enough, "no heartbeats: {}", laptop.read("status"));
    assert!(!saw_quiet, "{}", laptop.read("health"));
    assert!(alerts(dir.path()).is_empty(), "{:?}", alerts(dir.path()));
    // The views do not show heartbeats.
    let lines = laptop.read("pub/log");
    assert_eq!(lines.lines().count(), 1, "{lines}");
    // Stopped, it is quiet: this watch could have failed.
    assert_eq!(hub.stop(), Some(0));
    let got = wait_for_alerts(dir.path(), 1);
    assert_eq!(got, ["quiet|||pub is quiet"]);
}

#[test]
fn a_cron_job_in_a_time_zone_is_judged_the_same_on_two_machines() {
    if !fuse_available() {
        return;
    }
    const KEY: &str = "Q3Jvbi1pbi1hLXpvbmUtanVkZ2VkLWFsaWtlLW9rISE=";
    let dir = tempfile::tempdir().expect("tempdir");
    let (nas_path, laptop_path) = (dir.path().join("nas"), dir.path().join("laptop"));
    add_recorder(dir.path(), laptop_path.to_str().expect("utf8"));
    // The machines sit in different zones; the job names its own.
    let nas = Daemon::start_with_env(
        None,
        &[("TZ", "America/New_York")],
        &nas_path,
        "nas",
        &["--no-discovery", "--port", "0", "--caps.shs", KEY],
    );
    let laptop = Daemon::start_with_env(
        None,
        &[("TZ", "Asia/Tokyo")],
        &laptop_path,
        "laptop",
        &[
            "--no-discovery",
            "--port",
            "0",
            "--caps.shs",
            KEY,
            "--peer",
            &nas.loopback_address(),
        ],
    );
    assert!(laptop
        .sh(&format!("echo '{}' >> follow", nas.id()))
        .status
        .success());
    let nas_str = nas_path.to_str().expect("utf8");
    let cron_job = |source: &str, cron: &str, grace: &str| {
        run(&[
            "run",
            "--path",
            nas_str,
            "--source",
            source,
            "--cron",
            cron,
            "--tz",
            "Asia/Kathmandu",
            "--grace",
            grace,
            "--quiet",
            "--",
            "true",
        ])
        .status
        .code()
    };
    // Daily at an hour of Kathmandu's (UTC+5:45) day about 12 h away, so
    // that it cannot fall due while the test runs.
    let utc_minutes = {
        use chrono::Timelike;
        let now = chrono::Utc::now();
        now.hour() * 60 + now.minute()
    };
    let hour = ((utc_minutes + 345) / 60 + 12) % 24;
    let due_minutes = (hour * 60 + 1440 - 345 + 30) % 1440;
    let expected_due = format!("T{:02}:{:02}:00.000Z", due_minutes / 60, due_minutes % 60);
    let nightly = format!("0 {hour} * * *");
    assert_eq!(cron_job("nightly", &nightly, "30m"), Some(0));
    // Every 2 s (a seconds field), late 1 s after its next time.
    assert_eq!(cron_job("tick", "*/2 * * * * *", "1s"), Some(0));
    // Exit 3 once a job is late: the JSON says the same either way.
    let health = |daemon: &Daemon| -> Value {
        let out = run(&[
            "health",
            "--json",
            "--path",
            daemon.path.to_str().expect("utf8"),
        ]);
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let row = |report: &Value, source: &str| -> Value {
        report["rows"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["source"] == source).cloned())
            .unwrap_or(Value::Null)
    };
    assert!(
        wait_until(Duration::from_secs(30), || !row(
            &health(&laptop),
            "nightly"
        )
        .is_null()),
        "{}",
        laptop.read("health")
    );
    // Due at that hour in Kathmandu, plus 30 m, on both machines.
    let on_nas = row(&health(&nas), "nightly");
    let on_laptop = row(&health(&laptop), "nightly");
    let due = on_nas["due"].as_str().expect("a due time").to_string();
    assert!(due.ends_with(&expected_due), "{expected_due}: {on_nas}");
    assert_eq!(on_laptop["due"], on_nas["due"]);
    assert_eq!(on_laptop["cron"], nightly.as_str());
    assert_eq!(on_laptop["tz"], "Asia/Kathmandu");
    assert!(laptop
        .read("health")
        .contains(&format!("{nightly} Asia/Kathmandu")));
    // The job that ran once every 2 s and stopped: late on both, and one
    // alert.
    for daemon in [&nas, &laptop] {
        assert!(
            wait_until(Duration::from_secs(30), || row(&health(daemon), "tick")
                ["state"]
                == "late"),
            "{}",
            daemon.read("health")
        );
    }
    assert_eq!(
        row(&health(&laptop), "tick")["due"],
        row(&health(&nas), "tick")["due"]
    );
    // Told once the machine speaks after the job fell due (until then
    // it may be off, which a quiet alert would say).
    assert!(nas.sh("echo still here >> publish").status.success());
    let got = wait_for_alerts(dir.path(), 1);
    assert_eq!(got, ["late|tick|0|tick is late on nas"]);
}
