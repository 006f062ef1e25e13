//! What a typo, another local user or a shared machine can do: arguments
//! after `--`, modes of existing directories and key files, the daemon's
//! refusals reported as refusals, values that begin with dashes, help that
//! lists every option, and who holds a store.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, run, run_ok, spawn_headless_daemon, wait_until};
use serde_json::Value;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o7777
}

fn contents(path: &str) -> Vec<Value> {
    run_ok(&["log", "--path", path])
        .split("\n\n")
        .filter(|s| !s.trim().is_empty())
        .map(|s| serde_json::from_str::<Value>(s).expect("json")["value"]["content"].clone())
        .collect()
}

#[test]
fn arguments_after_a_double_dash_belong_to_the_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = dir.path().join("node");
    let node = node.to_str().expect("utf-8");
    // Where a job's own --path points: it must stay untouched.
    let victim = dir.path().join("victim");
    std::fs::create_dir(&victim).expect("mkdir");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out_file = dir.path().join("args");
    let script = format!("printf '%s\\n' \"$@\" > {}", out_file.display());
    let victim_arg = victim.to_str().expect("utf-8");
    let out = run(&[
        "run",
        "--path",
        node,
        "--source",
        "db",
        "--quiet",
        "--",
        "sh",
        "-c",
        &script,
        "sh",
        "--port",
        "5433",
        "--path",
        victim_arg,
        "--caps.shs",
        "not-a-key",
        "--",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read_to_string(&out_file).expect("the job ran");
    assert_eq!(
        got,
        format!("--port\n5433\n--path\n{victim_arg}\n--caps.shs\nnot-a-key\n--\n"),
        "the job got every argument, untouched"
    );
    assert_eq!(
        std::fs::read_dir(&victim).expect("readdir").count(),
        0,
        "nothing was created in the job's --path"
    );
    assert_eq!(mode(&victim), 0o755, "the job's --path kept its mode");
    assert!(
        dir.path().join("node/secret").exists(),
        "the store is where --path before -- says"
    );
    // The job's start line records its command as given.
    let start = contents(node)
        .into_iter()
        .find(|c| c["run"] == "start")
        .expect("a start line");
    assert!(
        start["text"]
            .as_str()
            .expect("text")
            .contains("--port 5433"),
        "{start}"
    );
}

#[test]
fn a_job_gets_non_utf8_arguments_as_bytes_and_other_places_refuse_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = dir.path().join("node");
    let out_file = dir.path().join("name");
    let latin1 = OsStr::from_bytes(b"caf\xe9.tar");
    let status = Command::new(bin())
        .args(["run", "--path"])
        .arg(&node)
        .args(["--source", "tar", "--quiet", "--", "sh", "-c"])
        .arg(format!("printf '%s' \"$1\" > {}", out_file.display()))
        .arg("sh")
        .arg(latin1)
        .env("RUST_LOG", "warn")
        .status()
        .expect("runs");
    assert!(status.success());
    assert_eq!(
        std::fs::read(&out_file).expect("the job ran"),
        b"caf\xe9.tar",
        "the Latin-1 name reached the job intact"
    );
    // Before --, a non-UTF-8 word is a clear error, not a panic.
    let out = Command::new(bin())
        .args(["publish", "--path"])
        .arg(&node)
        .args(["--type", "log", "--text"])
        .arg(latin1)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not valid UTF-8"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn an_existing_directory_keeps_its_mode_and_key_files_are_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let shared_arg = shared.to_str().expect("utf-8");
    let out = run(&["whoami", "--path", shared_arg]);
    assert!(out.status.success());
    assert_eq!(mode(&shared), 0o755, "an existing --path keeps its mode");
    assert_eq!(mode(&shared.join("secret")), 0o600);
    // A new directory is made private.
    let fresh = dir.path().join("a/b/fresh");
    run_ok(&["whoami", "--path", fresh.to_str().expect("utf-8")]);
    assert_eq!(mode(&fresh), 0o700);
    // The daemon's config (it holds the network key) is private, and its
    // temporary file never follows a link planted at its name.
    let planted = dir.path().join("planted");
    std::fs::write(&planted, "keep me").expect("write");
    std::os::unix::fs::symlink(&planted, shared.join("config.tmp")).expect("symlink");
    let mut daemon = spawn_headless_daemon(shared_arg, &[]);
    assert!(wait_until(Duration::from_secs(20), || shared
        .join("scuttlefs.sock")
        .exists()));
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert_eq!(mode(&shared.join("config")), 0o600);
    assert_eq!(std::fs::read_to_string(&planted).expect("read"), "keep me");
    let stderr_dir = run(&["whoami", "--path", shared_arg]);
    assert!(stderr_dir.status.success());
}

#[test]
fn a_daemons_refusal_is_reported_as_such_and_every_health_option_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_str().expect("utf-8");
    let mut daemon = spawn_headless_daemon(path, &[]);
    assert!(wait_until(Duration::from_secs(20), || run(&[
        "status", "--path", path
    ])
    .status
    .success()));
    // Each option of health and status, through the daemon.
    for args in [
        vec!["health", "--path", path],
        vec!["health", "--path", path, "--json"],
        vec!["health", "--path", path, "--max-silence", "26h"],
        vec!["health", "--path", path, "--max-silence", "90s", "--json"],
        vec!["status", "--path", path, "--json"],
        vec!["status", "--path", path, "--max-silence", "1h"],
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("no daemon"), "{args:?}: {err}");
        assert!(
            matches!(out.status.code(), Some(0) | Some(2) | Some(3)),
            "{args:?} exited {:?}: {err}",
            out.status.code()
        );
    }
    let out = run(&["health", "--path", path, "--max-silence", "90s", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(report.is_object(), "{report}");
    let _ = daemon.kill();
    let _ = daemon.wait();
}

#[test]
fn values_that_begin_with_dashes_are_published_as_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_str().expect("utf-8");
    run_ok(&[
        "publish",
        "--path",
        path,
        "--type",
        "log",
        "--text",
        "--- Errors 0 ---",
    ]);
    run_ok(&[
        "publish",
        "--path",
        path,
        "--type",
        "log",
        "--text=--verbose",
    ]);
    let texts: Vec<Value> = contents(path)
        .into_iter()
        .filter(|c| c["type"] == "log")
        .map(|c| c["text"].clone())
        .collect();
    assert_eq!(texts, vec!["--- Errors 0 ---", "--verbose"]);
}

#[test]
fn every_command_lists_the_options_it_takes() {
    for (command, wanted) in [
        (
            "serve",
            &["--path", "--port", "--caps.shs", "--mount", "--allow-other"][..],
        ),
        (
            "run",
            &["--path", "--source", "--every", "--quiet", "--FIELD"][..],
        ),
        ("publish", &["--path", "--type", "--text", "--stdin"][..]),
        ("health", &["--path", "--max-silence", "--json"][..]),
        ("status", &["--path", "--caps.shs", "--max-silence"][..]),
        ("whoami", &["--path"][..]),
    ] {
        let help = run_ok(&[command, "--help"]);
        for option in wanted {
            assert!(
                help.contains(option),
                "{command} --help lacks {option}:\n{help}"
            );
        }
    }
    let version = run_ok(&["--version"]);
    assert!(version.starts_with("scuttlefs "), "{version}");
}

#[test]
fn a_mount_that_is_a_file_and_a_held_store_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node");
    let path = path.to_str().expect("utf-8");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").expect("write");
    let out = run(&[
        "serve",
        "--path",
        path,
        "--port",
        "0",
        "--no-discovery",
        "--mount",
        file.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a directory"), "{err}");

    // A long run without a daemon holds the store; a daemon started
    // meanwhile says what holds it.
    let mut job = Command::new(bin())
        .args([
            "run", "--path", path, "--source", "long", "--quiet", "--", "sleep", "30",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("runs");
    let lock = dir.path().join("node/db/lock");
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&lock).is_ok_and(|t| t.contains("sleep"))
    }));
    let out = run(&[
        "serve",
        "--path",
        path,
        "--port",
        "0",
        "--no-mount",
        "--no-discovery",
    ]);
    let _ = job.kill();
    let _ = job.wait();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("process {} (", job.id())) && err.contains("run --path"),
        "{err}"
    );
}

/// Runs `script` with bash as the unprivileged user `nobody`.
fn as_nobody(dir: &std::path::Path, script: &str) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "bash",
            "-c",
            script,
        ])
        .current_dir(dir)
        .output()
        .expect("setpriv runs")
}

#[test]
fn with_allow_other_other_users_read_but_only_the_owner_and_root_write() {
    if !common::fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let daemon = common::Daemon::start(&dir.path().join("node"), "shared", &["--allow-other"]);
    let published = daemon.sh("echo 'from the owner' >> publish");
    assert!(published.status.success(), "{published:?}");
    assert!(wait_until(Duration::from_secs(10), || daemon
        .read("merged.log")
        .contains("from the owner")));

    let read = as_nobody(&daemon.mount, "cat merged.log");
    assert!(read.status.success(), "another user cannot read: {read:?}");
    assert!(String::from_utf8_lossy(&read.stdout).contains("from the owner"));

    for file in ["publish", "follow"] {
        let out = as_nobody(&daemon.mount, &format!("echo 'from nobody' >> {file}"));
        assert!(!out.status.success(), "nobody wrote {file}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Permission denied"), "{file}: {err}");
    }
    // Nothing was published: no line, no message.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!daemon.read("merged.log").contains("from nobody"));
    let messages_before = daemon.read("status");
    let root_write = daemon.sh("echo 'from root' >> publish");
    assert!(root_write.status.success(), "{root_write:?}");
    assert!(wait_until(Duration::from_secs(10), || daemon
        .read("merged.log")
        .contains("from root")));
    assert_ne!(messages_before, daemon.read("status"));
}
