//! Helpers shared by the integration tests: the binary, temporary nodes,
//! daemons with real mounts, and the rule for skipping system tests.
#![allow(dead_code)]

pub mod browser;
pub mod lan;
pub mod room;
pub mod sites;
pub mod ssb_server;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The scuttlefs binary cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_scuttlefs"))
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether a test that needs `what` may run. When it may not, the test
/// should return early; with SCUTTLEFS_REQUIRE_SYSTEM_TESTS=1 (as in CI) a
/// missing requirement fails the test instead.
pub fn system_available(what: &str, available: bool) -> bool {
    if available {
        return true;
    }
    if std::env::var("SCUTTLEFS_REQUIRE_SYSTEM_TESTS").as_deref() == Ok("1") {
        panic!("SCUTTLEFS_REQUIRE_SYSTEM_TESTS=1 but {what} is not available");
    }
    eprintln!("skipping: {what} is not available");
    false
}

/// FUSE needs /dev/fuse and root (the pure-Rust mount) in these tests.
pub fn fuse_available() -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    system_available(
        "FUSE (/dev/fuse and root)",
        root && Path::new("/dev/fuse").exists(),
    )
}

/// Node.js and the reference packages from tests/js (npm ci).
pub fn node_modules_available() -> bool {
    let ok = Command::new("node").arg("--version").output().is_ok()
        && repo().join("tests/js/node_modules/ssb-validate").exists();
    system_available("node with tests/js/node_modules (npm ci in tests/js)", ok)
}

/// Runs the binary with `args`, returning its output.
pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

/// Runs the binary and requires success; returns stdout.
pub fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "scuttlefs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8 output")
}

/// Starts `scuttlefs serve` on `path` without a mount or discovery, on a
/// free port, with `extra` arguments.
pub fn spawn_headless_daemon(path: &str, extra: &[&str]) -> Child {
    Command::new(bin())
        .args([
            "serve",
            "--no-mount",
            "--no-discovery",
            "--port",
            "0",
            "--path",
            path,
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("daemon starts")
}

/// Runs `scuttlefs publish --stdin --path path` with `extra` arguments,
/// feeding it `input`.
pub fn publish_stdin(path: &str, input: &[u8], extra: &[&str]) -> Output {
    let mut child = Command::new(bin())
        .args(["publish", "--stdin", "--path", path])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write");
    child.wait_with_output().expect("finishes")
}

/// Waits until `check` is true, up to `timeout`.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// The port a status report (the mount's file, or `scuttlefs status`)
/// says the daemon listens on.
pub fn status_port(status: &str) -> Option<u16> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("listening: "))
        .and_then(|l| l.trim().rsplit(':').next())
        .and_then(|p| p.parse().ok())
}

/// The address a status report says the status page listens on.
pub fn status_http(status: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("status page: http://"))
        .map(|l| l.trim().trim_end_matches('/').to_string())
}

/// A running `scuttlefs serve` with its own data directory and mount.
pub struct Daemon {
    /// The process.
    pub child: Option<Child>,
    /// `--path`.
    pub path: PathBuf,
    /// The mountpoint.
    pub mount: PathBuf,
}

impl Daemon {
    /// Starts a daemon on `path`, mounted at `path/../mount-<name>`, without
    /// networking, and waits for the mount.
    pub fn start(path: &Path, name: &str, extra: &[&str]) -> Daemon {
        // The status page on a port of its own: tests run side by side.
        let mut args = vec!["--no-discovery", "--port", "0", "--http", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Daemon::start_in(None, path, name, &args)
    }

    /// Starts a daemon with exactly `args` besides path, mount and name;
    /// inside network namespace `netns` when given (its mount stays
    /// visible here: only the network namespace is entered).
    pub fn start_in(netns: Option<&str>, path: &Path, name: &str, args: &[&str]) -> Daemon {
        Daemon::start_with_env(netns, &[], path, name, args)
    }

    /// [`Daemon::start_in`], with `env` added to the daemon's environment
    /// (such as libfaketime's `LD_PRELOAD` and `FAKETIME`). Set in the
    /// environment rather than through a wrapper program, so that the
    /// child is the daemon itself and a test's end stops it.
    pub fn start_with_env(
        netns: Option<&str>,
        env: &[(&str, &str)],
        path: &Path,
        name: &str,
        args: &[&str],
    ) -> Daemon {
        let mount = path.with_file_name(format!("mount-{name}"));
        // Fails on a stale mount, which the daemon clears itself.
        let _ = std::fs::create_dir_all(&mount);
        let mut prefix: Vec<std::ffi::OsString> = Vec::new();
        if let Some(ns) = netns {
            prefix.push("nsenter".into());
            prefix.push(format!("--net=/var/run/netns/{ns}").into());
        }
        let mut command = match prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let log =
            std::fs::File::create(path.with_file_name(format!("{name}.log"))).expect("log file");
        let child = command
            .arg("serve")
            .arg("--path")
            .arg(path)
            .arg("--mount")
            .arg(&mount)
            .args(["--name", name])
            .args(args)
            .stderr(log)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,fuser=error".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .expect("daemon starts");
        let daemon = Daemon {
            child: Some(child),
            path: path.to_path_buf(),
            mount,
        };
        let whoami = daemon.mount.join("whoami");
        assert!(
            wait_until(Duration::from_secs(20), || std::fs::read_to_string(&whoami)
                .map(|s| s.starts_with('@'))
                .unwrap_or(false)),
            "the mount did not come up"
        );
        daemon
    }

    /// The daemon's log so far ("" if unreadable: it only adds detail to
    /// failure messages).
    pub fn log(&self) -> String {
        let name = self
            .mount
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("mount-"))
            .unwrap_or("");
        std::fs::read_to_string(self.path.with_file_name(format!("{name}.log"))).unwrap_or_default()
    }

    /// The contents of a file in the mount. Panics, naming the file, if it
    /// cannot be read: a missing file must not pass for an empty one, or
    /// every "not there" assertion would pass on a dead mount.
    pub fn read(&self, rel: &str) -> String {
        let path = self.mount.join(rel);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    /// The contents of a file in the mount, for a file that may be absent.
    pub fn try_read(&self, rel: &str) -> std::io::Result<String> {
        std::fs::read_to_string(self.mount.join(rel))
    }

    /// The TCP port the daemon listens on, from its status file.
    pub fn port(&self) -> u16 {
        status_port(&self.read("status")).expect("the status names the port")
    }

    /// This node's feed id.
    pub fn id(&self) -> String {
        self.read("whoami").trim().to_string()
    }

    /// Its `net:` address on loopback, for another daemon's `--peer`.
    pub fn loopback_address(&self) -> String {
        self.address_at("127.0.0.1", self.port())
    }

    /// Its `net:` address at `host:port`, for another daemon's `--peer`.
    pub fn address_at(&self, host: &str, port: u16) -> String {
        let id = self.id();
        let key = id
            .strip_prefix('@')
            .and_then(|k| k.strip_suffix(".ed25519"))
            .unwrap_or(&id);
        format!("net:{host}:{port}~shs:{key}")
    }

    /// Where its status page listens (`HOST:PORT`), once it does; for a
    /// daemon started with `--http 127.0.0.1:0`.
    pub fn http(&self) -> String {
        let mut address = None;
        assert!(
            wait_until(Duration::from_secs(20), || {
                address = status_http(&self.read("status"));
                address.is_some()
            }),
            "the status page never listened: {}",
            self.log()
        );
        address.unwrap_or_default()
    }

    /// Publishes `line` through the mount (`echo >> publish`).
    pub fn publish_line(&self, line: &str) {
        let out = self.sh(&format!("echo '{line}' >> publish"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether its merged.log holds `text` (false while it cannot be read).
    pub fn merged_has(&self, text: &str) -> bool {
        self.try_read("merged.log").is_ok_and(|m| m.contains(text))
    }

    /// A file in the mount.
    pub fn file(&self, rel: &str) -> PathBuf {
        self.mount.join(rel)
    }

    /// Runs `bash -c script` in the mount directory (bash, because dash
    /// reports every failed write as "I/O error" whatever the errno).
    pub fn sh(&self, script: &str) -> Output {
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(&self.mount)
            .output()
            .expect("sh runs")
    }

    /// Kills the daemon with SIGKILL, as a power cut would, and waits for
    /// it; its mount is left stale (the next start clears it).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // In case the daemon died without unmounting.
        let _ = Command::new("umount").arg("-l").arg(&self.mount).output();
    }
}

/// The configuration of an in-process test node at `path` (no network).
pub fn node_config(path: &Path) -> scuttlefs::config::Config {
    scuttlefs::config::Config {
        path: path.to_path_buf(),
        port: 0,
        network_key: [7; 32],
        hops: 2,
        name: "here".into(),
        host: None,
        max_silence_ms: scuttlefs::health::DEFAULT_MAX_SILENCE_MS,
        remind_ms: Some(scuttlefs::config::DEFAULT_REMIND_MS),
        http: None,
        http_token: None,
        mount: None,
    }
}

/// Checks that `feed` verifies whole in `store`, as a peer would check it:
/// every message from 1 to the tip, signed and chained.
pub fn assert_feed_verifies(store: &scuttlefs::store::Store, feed: &scuttlefs::feed::FeedId) {
    let mut previous = None;
    for item in store.history(feed, 1) {
        let (seq, raw) = item.expect("reads");
        let value: serde_json::Value = serde_json::from_slice(raw.json()).expect("json");
        let msg = scuttlefs::feed::Message::verify(value).expect("verifies");
        assert_eq!((msg.sequence, msg.previous), (seq, previous), "{feed}");
        previous = Some(msg.key);
    }
    assert_eq!(
        store.tip(feed).map(|t| t.key),
        previous,
        "{feed} verifies up to its tip"
    );
}

/// All of `merged.log` as a handle opened now reads it.
pub fn merged_text(views: &scuttlefs::view::Views) -> String {
    let bytes = views
        .read_merged(
            &views.merged_snapshot().expect("snapshot"),
            0,
            views.merged_len() as usize,
        )
        .expect("reads merged.log");
    String::from_utf8(bytes).expect("utf8")
}

/// `scuttlefs run --path P --source S --quiet -- sh -c SCRIPT`: a job's
/// exit code.
pub fn job(path: &str, source: &str, script: &str) -> i32 {
    let out = run(&[
        "run", "--path", path, "--source", source, "--quiet", "--", "sh", "-c", script,
    ]);
    out.status.code().unwrap_or(-1)
}

/// Waits until the daemon on `path` has judged its first health report
/// (its alert book exists), so that a change made after it is alerted.
pub fn wait_for_first_judgement(path: &Path) {
    assert!(
        wait_until(Duration::from_secs(20), || path
            .join("alerts.json")
            .exists()),
        "the alert thread never judged"
    );
}
