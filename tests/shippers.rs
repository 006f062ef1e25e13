//! Log shippers get every line exactly once. `scuttlefs log --follow
//! --cursor-file` appends each new line to a plain file, which a real
//! rsyslog (Debian's, with imfile) ships on: across new lines, late lines
//! from another machine, a restart of the daemon, and a restart of both
//! the reader and rsyslog.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{bin, fuse_available, publish_stdin, run, system_available, wait_until, Daemon};

/// A helper process, stopped with SIGTERM (as a service manager would)
/// when asked or when the test ends.
struct Helper(Option<Child>);

impl Helper {
    fn stop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.stop();
    }
}

const KEY: &str = "TG9nLXNoaXBwZXJzLWV4YWN0bHktb25jZS1wbGVhc2U=";

/// `scuttlefs log --follow --cursor-file CURSOR --format text >> out`.
fn reader(path: &Path, cursor: &Path, out: &Path) -> Helper {
    let append = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .expect("opens the file it appends to");
    let errors = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.with_extension("err"))
        .expect("opens its error file");
    Helper(Some(
        Command::new(bin())
            .args(["log", "--path"])
            .arg(path)
            .args(["--follow", "--format", "text", "--cursor-file"])
            .arg(cursor)
            .stdout(append)
            .stderr(errors)
            .spawn()
            .expect("the reader starts"),
    ))
}

fn rsyslog(dir: &Path, follows: &Path, ships_to: &Path) -> Helper {
    let work = dir.join("rsyslog-work");
    std::fs::create_dir_all(&work).expect("work dir");
    let config = dir.join("rsyslog.conf");
    std::fs::write(
        &config,
        format!(
            "global(workDirectory=\"{work}\")\n\
             module(load=\"imfile\" mode=\"polling\" PollingInterval=\"1\")\n\
             input(type=\"imfile\" File=\"{follows}\" Tag=\"scuttlefs\" PersistStateInterval=\"1\")\n\
             template(name=\"line\" type=\"string\" string=\"%msg%\\n\")\n\
             action(type=\"omfile\" file=\"{ships_to}\" template=\"line\")\n",
            work = work.display(),
            follows = follows.display(),
            ships_to = ships_to.display(),
        ),
    )
    .expect("config");
    Helper(Some(
        Command::new("/usr/sbin/rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&config)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rsyslogd starts"),
    ))
}

/// How often each marked line (`ship-…`) reached `shipped`.
fn counts(shipped: &Path) -> HashMap<String, usize> {
    let text = std::fs::read_to_string(shipped).unwrap_or_default();
    let mut counts = HashMap::new();
    for line in text.lines() {
        if let Some(marker) = line.split_whitespace().find(|w| w.starts_with("ship-")) {
            *counts.entry(marker.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

fn markers(prefix: &str, range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|i| format!("ship-{prefix}-{i:04}")).collect()
}

fn publish(path: &Path, lines: &[String]) {
    let input = lines.join("\n") + "\n";
    let out = publish_stdin(
        path.to_str().expect("utf8"),
        input.as_bytes(),
        &["--type", "log", "--source", "shipper-test"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rsyslog_ships_every_line_once_across_restarts() {
    if !system_available("FUSE", fuse_available())
        || !system_available("rsyslogd", Path::new("/usr/sbin/rsyslogd").exists())
    {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let a_path = dir.path().join("a");
    let b_path = dir.path().join("b");
    let mut a = Daemon::start(&a_path, "a", &["--caps.shs", KEY]);
    // B writes while it cannot reach A: its lines arrive late, older than
    // A's latest.
    let mut b = Daemon::start(&b_path, "b", &["--caps.shs", KEY]);
    assert!(a
        .sh(&format!("echo '{}' >> follow", b.id()))
        .status
        .success());
    publish(&b_path, &markers("b", 1..=100));

    let cursor = dir.path().join("cursor");
    let appended: PathBuf = dir.path().join("lines.log");
    let shipped = dir.path().join("shipped.log");
    let mut reading = reader(&a_path, &cursor, &appended);
    let mut shipping = rsyslog(dir.path(), &appended, &shipped);
    let mut expected = markers("a", 1..=200);
    publish(&a_path, &expected);
    let arrived = |expected: &[String]| {
        wait_until(Duration::from_secs(60), || {
            let counts = counts(&shipped);
            expected.iter().all(|m| counts.contains_key(m))
        })
    };
    assert!(arrived(&expected), "{:?}", counts(&shipped).len());

    // The daemon restarts; lines written while it was down (published by
    // the command itself) and after it came back both arrive.
    assert_eq!(a.stop(), Some(0));
    // Dropped before the next start: its drop unmounts the mountpoint.
    drop(a);
    let down = markers("a", 201..=300);
    publish(&a_path, &down);
    a = Daemon::start(&a_path, "a", &["--caps.shs", KEY]);
    let after = markers("a", 301..=400);
    publish(&a_path, &after);
    expected.extend(down);
    expected.extend(after);
    assert!(arrived(&expected), "{:?}", counts(&shipped).len());

    // Late lines: B reaches A now.
    b.stop();
    drop(b);
    let b = Daemon::start(
        &b_path,
        "b",
        &["--caps.shs", KEY, "--peer", &a.loopback_address()],
    );
    expected.extend(markers("b", 1..=100));
    assert!(arrived(&expected), "{:?}", counts(&shipped).len());

    // The reader and rsyslog stop (as a service manager stops them) and
    // come back; what was written meanwhile arrives once.
    reading.stop();
    shipping.stop();
    let meanwhile = markers("a", 401..=500);
    publish(&a_path, &meanwhile);
    reading = reader(&a_path, &cursor, &appended);
    shipping = rsyslog(dir.path(), &appended, &shipped);
    let later = markers("a", 501..=600);
    publish(&a_path, &later);
    expected.extend(meanwhile);
    expected.extend(later);
    assert!(arrived(&expected), "{:?}", counts(&shipped).len());

    let counts = counts(&shipped);
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "shipped more than once: {repeated:?}");
    assert_eq!(counts.len(), expected.len(), "only what was written");
    // In merged.log's format, with the machine's name.
    let text = std::fs::read_to_string(&shipped).expect("shipped");
    assert!(
        text.lines()
            .any(|l| l.contains(" b source=shipper-test ship-b-0001")),
        "{}",
        text.lines().next().unwrap_or("")
    );
    drop((reading, shipping, b));
}

#[test]
fn a_cursor_from_another_store_is_refused_and_prints_nothing() {
    if !system_available("FUSE", fuse_available()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Daemon::start(&dir.path().join("a"), "a", &[]);
    publish(&a.path, &markers("a", 1..=3));
    let cursor = dir.path().join("cursor");
    std::fs::write(
        &cursor,
        r#"{"start":0,"end":400,"key":"%AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=.sha256"}"#,
    )
    .expect("writes");
    let path = a.path.to_str().expect("utf8");
    let out = run(&[
        "log",
        "--path",
        path,
        "--cursor-file",
        cursor.to_str().expect("utf8"),
    ]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("remove the cursor file"), "{stderr}");

    // Without the file: everything, then nothing new.
    std::fs::remove_file(&cursor).expect("removes");
    let cursor_arg = cursor.to_str().expect("utf8");
    let read_text = || {
        run(&[
            "log",
            "--path",
            path,
            "--cursor-file",
            cursor_arg,
            "--format",
            "text",
        ])
    };
    let first = read_text();
    assert!(first.status.success());
    let text = String::from_utf8_lossy(&first.stdout);
    assert_eq!(text.matches("ship-a-").count(), 3, "{text}");
    let again = read_text();
    assert!(again.status.success());
    assert!(
        again.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    // JSON: one sbot message per line.
    publish(&a.path, &markers("a", 4..=4));
    let json = run(&["log", "--path", path, "--cursor-file", cursor_arg]);
    let lines: Vec<&str> = std::str::from_utf8(&json.stdout)
        .expect("utf8")
        .lines()
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let message: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
    assert_eq!(message["value"]["content"]["text"], "ship-a-0004");
}
