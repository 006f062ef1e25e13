//! The command line as a user runs it, including the seed's own commands
//! and bad input.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{run, run_ok};
use serde_json::Value;

const KEY: &str = "uTvDPWZmNUHoPFlfhBa+/3a8SNnV2mLKpWPjuLMKVw8=";

fn log_values(path: &str) -> Vec<Value> {
    run_ok(&["log", "--path", path])
        .split("\n\n")
        .filter(|s| !s.trim().is_empty())
        .map(|s| serde_json::from_str(s).expect("each message is JSON"))
        .collect()
}

#[test]
fn whoami_creates_a_private_identity_and_keeps_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node");
    let path = path.to_str().expect("utf8");
    let first: Value = serde_json::from_str(&run_ok(&["whoami", "--path", path])).expect("json");
    let id = first["id"].as_str().expect("id");
    assert!(id.starts_with('@') && id.ends_with(".ed25519"));
    let mode = std::fs::metadata(dir.path().join("node/secret"))
        .expect("secret exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again: Value = serde_json::from_str(&run_ok(&["--path", path, "whoami"])).expect("json");
    assert_eq!(again["id"], first["id"]);
}

#[test]
fn the_seeds_publish_command_keeps_connection_flags_out_of_the_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_str().expect("utf8");
    let out = run_ok(&[
        "publish",
        "--path",
        path,
        "--port",
        "8321",
        "--caps.shs",
        KEY,
        "--type",
        "log",
        "--source",
        "mycomputername",
        "--destination",
        "myothercomputer",
        "--text",
        " backup ok",
    ]);
    let msg: Value = serde_json::from_str(&out).expect("prints the stored message");
    assert_eq!(
        msg["value"]["content"],
        serde_json::json!({
            "type": "log", "source": "mycomputername",
            "destination": "myothercomputer", "text": " backup ok"
        })
    );
    assert!(msg["key"].as_str().expect("key").ends_with(".sha256"));
    // The log holds the machine's name (published first) and the line.
    let log = log_values(path);
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["value"]["content"]["type"], "about");
    assert_eq!(log[1]["key"], msg["key"]);
    assert_eq!(log[1]["value"]["sequence"], 2);
}

#[test]
fn follow_and_unfollow_publish_contact_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_str().expect("utf8");
    let other = "@k8oSu2t6f/cd0jqqUbL2Oqy77J1AE39I+WoF2QK7BFg=.ed25519";
    run_ok(&["follow", other, "--path", path]);
    run_ok(&["unfollow", other, "--path", path]);
    // The seed's spelling works too.
    run_ok(&[
        "publish",
        "--path",
        path,
        "--type",
        "contact",
        "--contact",
        other,
        "--following",
    ]);
    let contents: Vec<Value> = log_values(path)
        .into_iter()
        .map(|m| m["value"]["content"].clone())
        .filter(|c| c["type"] == "contact")
        .collect();
    assert_eq!(contents.len(), 3);
    assert_eq!(contents[0]["following"], true);
    assert_eq!(contents[1]["following"], false);
    assert_eq!(contents[2]["contact"], other);
    assert_eq!(contents[2]["following"], true);
}

fn assert_fails_cleanly(args: &[&str], expect_in_stderr: &str, path: &str) {
    let before = log_values(path).len();
    let out = run(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(expect_in_stderr),
        "{args:?}: stderr {stderr:?} lacks {expect_in_stderr:?}"
    );
    assert_eq!(log_values(path).len(), before, "{args:?} changed the store");
}

#[test]
fn bad_input_fails_with_a_clear_message_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_str().expect("utf8");
    run_ok(&[
        "publish", "--path", path, "--type", "log", "--text", "first",
    ]);
    assert_fails_cleanly(
        &["follow", "@not-a-key.ed25519", "--path", path],
        "malformed feed id",
        path,
    );
    assert_fails_cleanly(
        &[
            "publish",
            "--path",
            path,
            "--caps.shs",
            "randomsecretAPIstringthatisaboutfortycharacters",
            "--type",
            "log",
            "--text",
            "x",
        ],
        "bad network key",
        path,
    );
    let huge = "x".repeat(9000);
    assert_fails_cleanly(
        &["publish", "--path", path, "--type", "note", "--body", &huge],
        "limit is 8192",
        path,
    );
    assert_fails_cleanly(
        &["publish", "--path", path, "stray"],
        "unexpected argument",
        path,
    );
}

#[test]
fn corrupt_or_foreign_secret_files_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_str().expect("utf8");
    std::fs::write(dir.path().join("secret"), "{ not json").expect("write");
    let out = run(&["whoami", "--path", path]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("secret"));
    std::fs::write(
        dir.path().join("secret"),
        r#"{"curve":"k256","public":"x","private":"y","id":"z"}"#,
    )
    .expect("write");
    let out = run(&["whoami", "--path", path]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only ed25519"));
}

#[test]
fn an_ssb_server_secret_file_works_as_is() {
    if !common::node_modules_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    let script = format!(
        "const k = require('ssb-keys').loadOrCreateSync({:?}); console.log(k.id)",
        secret.to_str().expect("utf8")
    );
    let out = Command::new("node")
        .args(["-e", &script])
        .current_dir(common::repo().join("tests/js"))
        .output()
        .expect("node runs");
    let js_id = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    assert!(js_id.starts_with('@'), "ssb-keys printed {js_id:?}");
    let mine: Value = serde_json::from_str(&run_ok(&[
        "whoami",
        "--path",
        dir.path().to_str().expect("utf8"),
    ]))
    .expect("json");
    assert_eq!(mine["id"], js_id.as_str());
}

#[test]
fn a_store_locked_by_a_silent_process_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_str().expect("utf8");
    run_ok(&["whoami", "--path", path]);
    let mut holder = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "lock_holder_child", "--nocapture"])
        .env("SCUTTLEFS_LOCK_DIR", dir.path().join("db"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("holder starts");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        holder.stdout.take().expect("stdout"),
    ));
    let held = lines.any(|l| l.map(|l| l.contains("holding")).unwrap_or(false));
    let out = run(&["log", "--path", path]);
    let holder_pid = holder.id();
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(held, "the holder never got the lock");
    assert!(!out.status.success());
    // Names the process that holds it, and says no daemon answers.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("is held by process {holder_pid} (")),
        "{stderr}"
    );
    assert!(stderr.contains("no daemon answers"), "{stderr}");
}

/// Not a test: holds a store open for
/// `a_store_locked_by_a_silent_process_is_reported`, which runs it.
#[test]
#[ignore = "a helper process, run by a_store_locked_by_a_silent_process_is_reported"]
fn lock_holder_child() {
    let dir = std::env::var("SCUTTLEFS_LOCK_DIR")
        .expect("SCUTTLEFS_LOCK_DIR: run only by a_store_locked_by_a_silent_process_is_reported");
    let opened = (0..200).find_map(|_| {
        scuttlefs::store::Store::open(std::path::Path::new(&dir))
            .ok()
            .or_else(|| {
                std::thread::sleep(Duration::from_millis(50));
                None
            })
    });
    let _store = opened.expect("gets the lock eventually");
    println!("holding");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn commands_go_through_a_running_daemon_and_print_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node");
    let path_s = path.to_str().expect("utf8");
    let local: Value = serde_json::from_str(&run_ok(&[
        "publish", "--path", path_s, "--type", "log", "--text", "local",
    ]))
    .expect("json");
    let mut daemon = common::spawn_headless_daemon(path_s, &[]);
    let socket = path.join("scuttlefs.sock");
    assert!(common::wait_until(Duration::from_secs(10), || socket.exists()));
    let remote: Value = serde_json::from_str(&run_ok(&[
        "publish",
        "--path",
        path_s,
        "--type",
        "log",
        "--text",
        "via daemon",
    ]))
    .expect("json");
    assert_eq!(remote["value"]["content"]["text"], "via daemon");
    let keys_of = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
    assert_eq!(keys_of(&local), keys_of(&remote));
    let log = log_values(path_s);
    assert_eq!(log.last().expect("one")["key"], remote["key"]);
    let status = run_ok(&["status", "--path", path_s]);
    assert!(status.contains("messages:"), "{status}");
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let code = daemon.wait().expect("daemon exits");
    assert!(code.success(), "SIGTERM exits 0, got {code:?}");
    // And with the daemon gone, the command line opens the store itself.
    assert_eq!(log_values(path_s).len(), log.len());
}

/// Runs `serve` on a port that is taken, so that it logs its start at
/// info level and exits at once: `wrap` puts it under another program.
fn serve_on_a_taken_port(wrap: &[&str], no_color: Option<&str>) -> std::process::Output {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_str().expect("utf8");
    let bin = common::bin();
    let bin = bin.to_str().expect("utf8");
    let serve = [
        bin,
        "serve",
        "--no-mount",
        "--no-discovery",
        "--port",
        &port,
        "--path",
        path,
    ];
    let mut command = match wrap.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(serve.join(" "));
            c
        }
        None => {
            let mut c = Command::new(bin);
            c.args(&serve[1..]);
            c
        }
    };
    command.env("RUST_LOG", "info").env_remove("NO_COLOR");
    if let Some(value) = no_color {
        command.env("NO_COLOR", value);
    }
    let out = command
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    drop(taken);
    out
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let out = serve_on_a_taken_port(&[], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the port was free: {stderr}");
    assert!(stderr.contains("starting"), "nothing was logged: {stderr}");
    assert!(stderr.contains("listening on port"), "{stderr}");
    assert!(
        !stderr.contains("\x1b["),
        "colour codes in a pipe: {stderr:?}"
    );
}

#[test]
fn logs_on_a_terminal_are_coloured_unless_no_color_is_set() {
    // script(1) runs the command on a pseudo-terminal and copies its output.
    let have_script = Command::new("script").arg("--version").output().is_ok();
    if !common::system_available("script (util-linux)", have_script) {
        return;
    }
    let on_terminal = |no_color| {
        let out = serve_on_a_taken_port(&["script", "-q", "-e", "/dev/null", "-c"], no_color);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("starting"), "nothing was logged: {text}");
        text
    };
    assert!(
        on_terminal(None).contains("\x1b["),
        "no colour on a terminal"
    );
    assert!(
        !on_terminal(Some("1")).contains("\x1b["),
        "NO_COLOR=1 still coloured"
    );
    // An empty NO_COLOR does not count (no-color.org).
    assert!(on_terminal(Some("")).contains("\x1b["));
}
