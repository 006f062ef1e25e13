//! The mounted filesystem, driven with real shell tools.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, fuse_available, wait_until, Daemon};

fn read(daemon: &Daemon, rel: &str) -> String {
    std::fs::read_to_string(daemon.file(rel)).expect("readable")
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// The text after the timestamp and machine label of each line.
fn texts(log: &str) -> Vec<String> {
    log.lines()
        .map(|l| l.splitn(3, ' ').nth(2).unwrap_or("").to_string())
        .collect()
}

/// The file offset of process `pid`'s descriptor open on `path`, if it has
/// one.
fn offset_of(pid: u32, path: &Path) -> Option<u64> {
    let path = std::fs::canonicalize(path).ok()?;
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(Result::ok)
        .find(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
        .and_then(|fd| {
            let info =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_str()?))
                    .ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("pos:"))
                .and_then(|pos| pos.trim().parse().ok())
        })
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The log lines' texts, from each message of `daemon`'s own feed: one per
/// message, so that a line split in two shows as two.
/// `publish`, opened for appending as `>>` does.
fn open_publish(daemon: &Daemon) -> std::fs::File {
    std::fs::OpenOptions::new()
        .append(true)
        .open(daemon.file("publish"))
        .expect("opens publish")
}

fn log_message_texts(daemon: &Daemon, machine: &str) -> Vec<String> {
    read(daemon, &format!("{machine}/feed.jsonl"))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
        .filter(|v| v["value"]["content"]["type"] == "log")
        .map(|v| {
            v["value"]["content"]["text"]
                .as_str()
                .expect("text")
                .to_string()
        })
        .collect()
}

#[test]
fn shell_tools_publish_and_read() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("node"), "laptop", &[]);
    ok(daemon.sh("echo 'backup of /home finished' >> publish && \
         printf 'two\\nthree\\n' > publish && \
         echo 'via tee' | tee -a publish > /dev/null && \
         printf 'no newline at the end' >> publish && \
         echo '{\"text\":\"json line\",\"source\":\"nas\"}' >> publish && \
         echo '{\"type\":\"backup\",\"exit\":0}' >> publish"));
    let merged = read(&daemon, "merged.log");
    assert_eq!(
        texts(&merged),
        vec![
            "backup of /home finished",
            "two",
            "three",
            "via tee",
            "no newline at the end",
            "source=nas json line",
        ]
    );
    assert!(
        merged
            .lines()
            .all(|l| l.split(' ').nth(1) == Some("laptop")),
        "{merged}"
    );
    // The machine's own directory shows the same lines; feed.jsonl has
    // every message, the about and the non-log one included.
    assert_eq!(read(&daemon, "laptop/log"), merged);
    let jsonl = read(&daemon, "laptop/feed.jsonl");
    let types: Vec<String> = jsonl
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            v["value"]["content"]["type"]
                .as_str()
                .expect("type")
                .to_string()
        })
        .collect();
    assert_eq!(types.first().map(String::as_str), Some("about"));
    assert_eq!(types.last().map(String::as_str), Some("backup"));
    assert_eq!(types.len(), 8);
    let whoami = read(&daemon, "whoami");
    assert_eq!(read(&daemon, "laptop/id"), whoami);

    // grep -r over the machine directories, head, tail -n, wc.
    let grep = ok(daemon.sh("grep -r finished */"));
    let mut files: Vec<&str> = grep
        .lines()
        .map(|l| l.split(':').next().unwrap_or(""))
        .collect();
    files.sort();
    // The day's file holds the line too: days/ is one of the directories.
    assert_eq!(files.len(), 3, "{grep}");
    assert!(
        files[0].starts_with("days/") && files[0].ends_with(".log"),
        "{grep}"
    );
    assert_eq!(files[1..], ["laptop/feed.jsonl", "laptop/log"], "{grep}");
    assert_eq!(
        ok(daemon.sh("tail -n 2 merged.log")),
        merged
            .lines()
            .skip(4)
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    assert_eq!(
        ok(daemon.sh("head -n 1 merged.log")).trim_end(),
        merged.lines().next().expect("a line")
    );
    // st_size is exact.
    let size: usize = ok(daemon.sh("stat -c %s merged.log"))
        .trim()
        .parse()
        .expect("size");
    assert_eq!(size, merged.len());
    let ls = ok(daemon.sh("ls -l"));
    assert!(ls.contains("publish") && ls.contains("laptop"), "{ls}");
    // publish reads as empty.
    assert_eq!(ok(daemon.sh("cat publish")), "");
    // status names the machine and counts its messages.
    let status = read(&daemon, "status");
    assert!(status.contains("laptop"), "{status}");
    assert!(status.contains("seq 8"), "{status}");
}

#[test]
fn tail_f_sees_a_line_published_after_it_started() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("node"), "laptop", &[]);
    ok(daemon.sh("echo before >> publish"));
    let mut tail = Command::new("tail")
        .args(["-f", "-n", "+1"])
        .arg(daemon.file("merged.log"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("tail starts");
    let mut lines = BufReader::new(tail.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("utf8");
    assert!(first.ends_with(" before"), "{first}");
    // Publish only once tail has read to the end, so that it must notice
    // the growth rather than read the line in its first pass.
    let size = std::fs::metadata(daemon.file("merged.log"))
        .expect("stat")
        .len();
    assert!(
        wait_until(Duration::from_secs(5), || offset_of(
            tail.id(),
            &daemon.file("merged.log")
        ) == Some(size)),
        "tail never reached the end of merged.log"
    );
    ok(daemon.sh("echo 'published later' >> publish"));
    let published = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines {
            let _ = tx.send(line.expect("utf8"));
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(2))
        .expect("tail -f shows it within 2 s");
    let elapsed = published.elapsed();
    let _ = tail.kill();
    let _ = tail.wait();
    assert!(line.ends_with(" published later"), "{line}");
    assert!(elapsed <= Duration::from_secs(2), "took {elapsed:?}");
}

#[test]
fn concurrent_writers_never_interleave_inside_a_line() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("node"), "laptop", &[]);
    // Two writers, each with its own handle, writing lines long enough to
    // span several write() calls.
    let script = |w: &str| {
        format!(
            "for i in $(seq 1 300); do printf '%s %04d %s\\n' {w} $i $(printf '{w}%.0s' $(seq 1 150)); done > /dev/null; \
             for i in $(seq 1 300); do printf '%s %04d %s\\n' {w} $i $(printf '{w}%.0s' $(seq 1 150)); done >> publish"
        )
    };
    let a = Command::new("sh")
        .arg("-c")
        .arg(script("A"))
        .current_dir(&daemon.mount)
        .spawn()
        .expect("a");
    let b = Command::new("sh")
        .arg("-c")
        .arg(script("B"))
        .current_dir(&daemon.mount)
        .spawn()
        .expect("b");
    for mut child in [a, b] {
        assert!(child.wait().expect("waits").success());
    }
    let merged = read(&daemon, "merged.log");
    let texts = texts(&merged);
    assert_eq!(texts.len(), 600);
    for text in &texts {
        let mut parts = text.split(' ');
        let writer = parts.next().expect("writer");
        let _n = parts.next().expect("number");
        let body = parts.next().expect("body");
        assert_eq!(body, writer.repeat(150), "a line mixes writers: {text}");
    }
    for w in ["A", "B"] {
        let numbers: Vec<&str> = texts
            .iter()
            .filter(|t| t.starts_with(w))
            .map(|t| t.split(' ').nth(1).expect("n"))
            .collect();
        let expected: Vec<String> = (1..=300).map(|i| format!("{i:04}")).collect();
        assert_eq!(numbers, expected, "writer {w}'s lines out of order or lost");
    }
}

#[test]
fn a_20000_character_line_is_split_across_messages_and_rejoined() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("node"), "laptop", &[]);
    let line: String = (0..20_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    std::fs::write(
        dir.path().join("long.txt"),
        format!("{line}\nshort after\n"),
    )
    .expect("write");
    ok(daemon.sh(&format!("cat {}/long.txt >> publish", dir.path().display())));
    let merged = read(&daemon, "merged.log");
    assert_eq!(
        texts(&merged),
        vec![line.clone(), "short after".to_string()]
    );
    assert_eq!(read(&daemon, "laptop/log"), merged);
    let parts = read(&daemon, "laptop/feed.jsonl")
        .lines()
        .filter(|l| l.contains("\"more\":true"))
        .count();
    assert!(
        parts >= 2,
        "the line should take several messages, took {}",
        parts + 1
    );
}

#[test]
fn bad_writes_fail_with_einval_and_publish_nothing() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("node"), "laptop", &[]);
    ok(daemon.sh("echo good >> publish"));
    let before = read(&daemon, "laptop/feed.jsonl");

    // One write() holding a good line and a bad one (cat copies a small
    // file in one write; bash's printf would write line by line).
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, b"fine line\nbad \xff\xfe bytes\n").expect("write");
    let out = daemon.sh(&format!("cat {} >> publish", bad.display()));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Invalid argument"));

    let out = daemon.sh("echo 'not-a-feed-id' >> follow");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Invalid argument"));
    let mixed = dir.path().join("mixed.txt");
    std::fs::write(
        &mixed,
        "@k8oSu2t6f/cd0jqqUbL2Oqy77J1AE39I+WoF2QK7BFg=.ed25519\n@bad.ed25519\n",
    )
    .expect("write");
    let out = daemon.sh(&format!("cat {} >> follow", mixed.display()));
    assert!(!out.status.success());

    assert_eq!(
        read(&daemon, "laptop/feed.jsonl"),
        before,
        "a failed write published something"
    );
    assert_eq!(read(&daemon, "follow"), "");

    // Read-only files refuse writes.
    assert!(!daemon.sh("echo x >> merged.log").status.success());

    // A good follow line works, and -ID unfollows.
    let other = "@k8oSu2t6f/cd0jqqUbL2Oqy77J1AE39I+WoF2QK7BFg=.ed25519";
    ok(daemon.sh(&format!("echo '{other}' >> follow")));
    assert_eq!(read(&daemon, "follow"), format!("{other}\n"));
    ok(daemon.sh(&format!("echo '-{other}' >> follow")));
    assert_eq!(read(&daemon, "follow"), "");
}

#[test]
fn sigterm_unmounts_and_a_restart_keeps_everything() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node");
    let mut daemon = Daemon::start(&path, "laptop", &[]);
    ok(daemon.sh("seq 1 500 | sed 's/^/line /' >> publish"));
    let merged = read(&daemon, "merged.log");
    let jsonl = read(&daemon, "laptop/feed.jsonl");
    // A reader holding the mount open must not keep it mounted.
    let mut reader = Command::new("tail")
        .arg("-f")
        .arg(daemon.file("merged.log"))
        .stdout(Stdio::null())
        .spawn()
        .expect("tail");
    assert!(
        wait_until(Duration::from_secs(5), || offset_of(
            reader.id(),
            &daemon.file("merged.log")
        )
        .is_some()),
        "tail never opened merged.log"
    );
    assert_eq!(daemon.stop(), Some(0), "SIGTERM exits 0");
    let _ = reader.kill();
    let _ = reader.wait();
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    assert!(
        !mounts.contains(daemon.mount.to_str().expect("utf8")),
        "still mounted"
    );

    let daemon = Daemon::start(&path, "laptop", &[]);
    assert_eq!(read(&daemon, "merged.log"), merged);
    assert_eq!(read(&daemon, "laptop/feed.jsonl"), jsonl);
    assert_eq!(texts(&merged).len(), 500);
}

#[test]
fn a_stale_mount_from_a_killed_daemon_is_cleared_at_start() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node");
    let mut daemon = Daemon::start(&path, "laptop", &[]);
    ok(daemon.sh("echo survived >> publish"));
    let mut child = daemon.child.take().expect("child");
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let err = std::fs::metadata(&daemon.mount).expect_err("stale");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN));
    let daemon = Daemon::start(&path, "laptop", &[]);
    assert!(wait_until(Duration::from_secs(5), || read(
        &daemon,
        "merged.log"
    )
    .ends_with(" survived\n")));
}

#[test]
fn fsync_in_the_middle_of_a_line_keeps_it_whole() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("node"), "laptop", &[]);
    let mut file = open_publish(&daemon);
    file.write_all(b"first\nhalf").expect("write");
    file.sync_all().expect("fsync");
    // The complete line is published and durable; the half waits.
    assert_eq!(log_message_texts(&daemon, "laptop"), vec!["first"]);
    file.write_all(b" line\n").expect("write");
    file.sync_data().expect("fdatasync");
    file.write_all(b"tail").expect("write");
    file.sync_all().expect("fsync");
    assert_eq!(
        log_message_texts(&daemon, "laptop"),
        vec!["first", "half line"]
    );
    // close() still publishes an unfinished last line.
    drop(file);
    assert_eq!(
        log_message_texts(&daemon, "laptop"),
        vec!["first", "half line", "tail"]
    );
    assert_eq!(
        texts(&read(&daemon, "merged.log")),
        vec!["first", "half line", "tail"]
    );
}

#[test]
fn a_failed_write_keeps_the_line_buffered_before_it() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("node"), "laptop", &[]);
    let mut file = open_publish(&daemon);
    file.write_all(b"keep").expect("write");
    // One write completing that line, then a line no message can hold:
    // the store refuses the write whole.
    let too_large = format!("{{\"type\":\"backup\",\"blob\":\"{}\"}}", "x".repeat(9000));
    let err = file
        .write_all(format!(" going\n{too_large}\n").as_bytes())
        .expect_err("a message over the size limit");
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
    // So is one that is not UTF-8 after a good line.
    let err = file
        .write_all(b" going\nbad \xff\n")
        .expect_err("invalid UTF-8");
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    assert_eq!(log_message_texts(&daemon, "laptop"), Vec::<String>::new());
    // What was buffered before the failed writes is still there, once.
    file.write_all(b" going\n").expect("write");
    drop(file);
    assert_eq!(log_message_texts(&daemon, "laptop"), vec!["keep going"]);
}

#[test]
fn a_json_log_line_with_a_huge_text_is_split_not_refused() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("node"), "laptop", &[]);
    let text = "y".repeat(20_000);
    let line = format!("{{\"text\":\"{text}\",\"source\":\"nas\"}}\n");
    std::fs::write(dir.path().join("json.txt"), line).expect("write");
    ok(daemon.sh(&format!("cat {}/json.txt >> publish", dir.path().display())));
    assert_eq!(
        texts(&read(&daemon, "merged.log")),
        vec![format!("source=nas {text}")]
    );
    let parts = log_message_texts(&daemon, "laptop");
    assert!(parts.len() >= 3, "took {} messages", parts.len());
    assert_eq!(parts.concat(), text);
    // What cannot be split fails with EFBIG, as the docs say.
    let blob = format!(
        "{{\"type\":\"backup\",\"blob\":\"{}\"}}\n",
        "x".repeat(9000)
    );
    std::fs::write(dir.path().join("blob.txt"), blob).expect("write");
    let out = daemon.sh(&format!("cat {}/blob.txt >> publish", dir.path().display()));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("File too large"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_second_daemon_refuses_a_mountpoint_in_use() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Daemon::start(&dir.path().join("first"), "laptop", &[]);
    let mut second = Command::new(bin())
        .arg("serve")
        .arg("--path")
        .arg(dir.path().join("second"))
        .arg("--mount")
        .arg(&first.mount)
        .args(["--name", "intruder", "--no-discovery", "--port", "0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let exited = wait_until(Duration::from_secs(20), || {
        second.try_wait().is_ok_and(|s| s.is_some())
    });
    if !exited {
        // It mounted on top: SIGTERM makes it unmount, uncovering the first.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
        let _ = second.wait();
        panic!("a second daemon mounted over a live mount");
    }
    let out = second.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "refusing to mount on {}: another scuttlefs daemon is already mounted there",
            first.mount.display()
        )),
        "{stderr}"
    );
    // The first mount is untouched and still works.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let here = first.mount.to_str().expect("utf8");
    assert_eq!(
        mounts
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(here))
            .count(),
        1,
        "{mounts}"
    );
    ok(first.sh("echo 'still the first' >> publish"));
    assert_eq!(log_message_texts(&first, "laptop"), vec!["still the first"]);
}

#[test]
fn a_user_who_may_not_open_dev_fuse_is_told_so() {
    if !fuse_available() {
        return;
    }
    let tools = ["unshare", "setpriv", "mount"]
        .iter()
        .all(|t| Command::new(t).arg("--version").output().is_ok());
    if !common::system_available("unshare, setpriv and mount (util-linux)", tools) {
        return;
    }
    // The situation, copied into a mount namespace of its own: a /dev/fuse
    // that only root may open, and a daemon running as nobody.
    let dir = tempfile::tempdir().expect("tempdir");
    chmod(dir.path(), 0o777);
    let fake = dir.path().join("dev-fuse");
    std::fs::write(&fake, b"").expect("write");
    chmod(&fake, 0o600);
    let script = format!(
        "mount --bind {fake} /dev/fuse && exec setpriv --reuid=65534 --regid=65534 --clear-groups \
         {bin} serve --path {dir}/node --mount {dir}/mnt --no-discovery --port 0",
        fake = fake.display(),
        bin = bin().display(),
        dir = dir.path().display(),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash", "-c", &script])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "/dev/fuse is not readable and writable by this user (uid 65534) (its mode is 0600)"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("fuse3"), "{stderr}");
}

#[test]
fn a_child_closing_an_inherited_descriptor_does_not_split_the_line() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("node"), "laptop", &[]);
    // The shell keeps `publish` open on descriptor 3 while other programs
    // write to it: each inherits the descriptor and closes it at exit,
    // which the kernel reports as a flush of the same open file. Only the
    // shell's own close ends the unfinished line.
    ok(
        daemon.sh("exec 3>>publish; /usr/bin/printf 'half' >&3; /bin/true; \
         /usr/bin/printf ' line\\n' >&3; /usr/bin/printf 'tail' >&3; exec 3>&-"),
    );
    assert_eq!(
        log_message_texts(&daemon, "laptop"),
        vec!["half line", "tail"]
    );
}

/// The port a daemon without a mount listens on, from `scuttlefs status`.
fn listening_port(path: &Path) -> Option<u16> {
    let out = common::run(&["status", "--path", path.to_str()?]);
    common::status_port(&String::from_utf8(out.stdout).ok()?)
}

#[test]
fn lines_that_arrive_out_of_order_are_merged_into_order_while_tail_f_keeps_its_own() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Another machine's lines, written before anything the mounted node
    // writes, so that they arrive late.
    let other = dir.path().join("other");
    let other_path = other.to_str().expect("utf8");
    let old: String = (1..=300).map(|i| format!("old {i}\n")).collect();
    let published = common::publish_stdin(other_path, old.as_bytes(), &["--type", "log"]);
    assert!(published.status.success());
    let other_id = common::run_ok(&["whoami", "--path", other_path]);
    let other_id = other_id
        .split('"')
        .find(|s| s.starts_with('@'))
        .expect("an id")
        .to_string();
    // Both on one private network.
    const KEY: &str = "Y2FwcyBmb3IgdGhlIG1lcmdlIHRlc3QsIDMyIGJ5dGU=";
    let mut server = common::spawn_headless_daemon(other_path, &["--caps.shs", KEY]);
    let mut port = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            port = listening_port(&other);
            port.is_some()
        }),
        "the other daemon did not start"
    );
    let key = other_id
        .trim_start_matches('@')
        .trim_end_matches(".ed25519");
    let peer = format!("net:127.0.0.1:{}~shs:{key}", port.expect("port"));
    let daemon = Daemon::start(
        &dir.path().join("node"),
        "desk",
        &["--caps.shs", KEY, "--peer", &peer],
    );
    ok(daemon.sh("for i in $(seq 1 200); do echo new $i; done >> publish"));

    // A reader from the start, opened while merged.log is in order.
    let mut tail = Command::new("tail")
        .args(["-f", "-n", "+1"])
        .arg(daemon.file("merged.log"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("tail starts");
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = BufReader::new(tail.stdout.take().expect("stdout")).lines();
    std::thread::spawn(move || {
        for line in lines {
            let _ = tx.send(line.expect("utf8"));
        }
    });
    let mut seen: Vec<String> = Vec::new();
    let take = |n: usize, seen: &mut Vec<String>| {
        while seen.len() < n {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("tail -f stopped at {} lines", seen.len()));
            seen.push(line);
        }
    };
    take(200, &mut seen);

    ok(daemon.sh(&format!("echo '{other_id}' >> follow")));
    assert!(
        wait_until(Duration::from_secs(60), || daemon
            .try_read("merged.log")
            .unwrap_or_else(|e| panic!("merged.log: {e}: {}", daemon.log()))
            .lines()
            .count()
            == 500),
        "the other machine's lines did not arrive: {}",
        daemon.log()
    );
    assert!(
        wait_until(Duration::from_secs(30), || !read(&daemon, "status")
            .contains("merging:")),
        "the late lines were never merged"
    );
    let merged = read(&daemon, "merged.log");
    let expected: Vec<String> = (1..=300)
        .map(|i| format!("old {i}"))
        .chain((1..=200).map(|i| format!("new {i}")))
        .collect();
    assert_eq!(texts(&merged), expected, "merged.log in timestamp order");
    let stamps: Vec<&str> = merged.lines().map(|l| &l[..24]).collect();
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "timestamps never go back"
    );
    // The day files together are merged.log.
    let days = ok(daemon.sh("cat days/*.log"));
    assert_eq!(days, merged, "the day files, after the merge");

    // tail -f keeps the order it opened with: the late lines after.
    take(500, &mut seen);
    let arrival: Vec<String> = (1..=200)
        .map(|i| format!("new {i}"))
        .chain((1..=300).map(|i| format!("old {i}")))
        .collect();
    assert_eq!(
        texts(&seen.join("\n")),
        arrival,
        "tail -f, in arrival order"
    );
    // And it still sees lines written after the merge, as does a new read.
    ok(daemon.sh("echo after the merge >> publish"));
    take(501, &mut seen);
    assert!(seen[500].ends_with(" after the merge"), "{}", seen[500]);
    assert!(read(&daemon, "merged.log").ends_with(" after the merge\n"));
    let _ = tail.kill();
    let _ = tail.wait();
    let _ = server.kill();
    let _ = server.wait();
}
