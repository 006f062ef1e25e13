//! Alerts through the targets that need a real counterpart: mail to a real
//! SMTP server (Debian's python3-aiosmtpd) and desktop notifications to a
//! real notification daemon (dunst under Xvfb, on a private D-Bus session
//! bus), each read back the way a person would see them.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{
    fuse_available, job, run, run_ok, system_available, wait_for_first_judgement, wait_until,
    Daemon,
};
use serde_json::Value;

/// A helper process, killed when the test ends however it ends.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn has(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts aiosmtpd on loopback, storing what it receives in a maildir at
/// `maildir`; returns it and its port once it accepts connections.
fn smtp_server(maildir: &Path) -> Option<(Kid, u16)> {
    let python = Path::new("/usr/bin/python3");
    let installed = python.exists()
        && Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !system_available("python3-aiosmtpd (Debian)", installed) {
        return None;
    }
    let port = free_port();
    let child = Command::new(python)
        .args(["-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        .arg(maildir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("aiosmtpd starts");
    let server = Kid(child);
    assert!(
        wait_until(Duration::from_secs(20), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "aiosmtpd did not listen on {port}"
    );
    Some((server, port))
}

/// The mails in `maildir`, oldest first.
fn mails(maildir: &Path) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(maildir.join("new"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

fn header<'a>(mail: &'a str, name: &str) -> Option<&'a str> {
    mail.lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

#[test]
fn mail_reaches_a_real_smtp_server_once_per_change_and_never_carries_a_login_in_the_clear() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let maildir = dir.path().join("maildir");
    let Some((_server, port)) = smtp_server(&maildir) else {
        return;
    };
    let path = dir.path().join("nas");
    let path_str = path.to_str().expect("utf8");
    let target = format!("mailto://127.0.0.1:{port}?to=ops@example.org&from=nas@example.org");
    run_ok(&["alert", "add", &target, "--path", path_str]);
    let _daemon = Daemon::start(&path, "nas", &[]);
    wait_for_first_judgement(&path);

    assert_eq!(
        job(
            path_str,
            "backup",
            "echo 'copying /home'; echo 'disk full' >&2; exit 23"
        ),
        23
    );
    assert!(
        wait_until(Duration::from_secs(30), || mails(&maildir).len() == 1),
        "no mail: {:?}",
        mails(&maildir)
    );
    let mail = &mails(&maildir)[0];
    assert_eq!(
        header(mail, "Subject"),
        Some("backup failed on nas (exit 23)")
    );
    assert_eq!(header(mail, "To"), Some("ops@example.org"));
    assert_eq!(header(mail, "From"), Some("nas@example.org"));
    let body = mail.split_once("\n\n").map_or("", |(_, b)| b);
    assert!(
        body.contains("copying /home\ndisk full") && body.contains("took"),
        "{mail}"
    );

    // The same failure again: no mail; the recovery: one.
    assert_eq!(job(path_str, "backup", "exit 23"), 23);
    assert_eq!(job(path_str, "backup", "true"), 0);
    assert!(
        wait_until(Duration::from_secs(30), || mails(&maildir).len() >= 2),
        "no recovery mail"
    );
    let all = mails(&maildir);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(header(&all[1], "Subject"), Some("backup recovered on nas"));

    // A login to a server that offers no STARTTLS is never sent.
    let with_login = format!("mailto://ops:s3cret-pw@127.0.0.1:{port}?to=ops@example.org");
    let out = run(&["alert", "test", &with_login, "--path", path_str]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "delivered in the clear: {stderr}");
    assert!(stderr.contains("STARTTLS"), "{stderr}");
    assert!(!stderr.contains("s3cret-pw"), "{stderr}");
    // `alert test` through a plain server delivers, and says so.
    let out = run_ok(&["alert", "test", &target, "--path", path_str]);
    assert!(out.contains("delivered"), "{out}");
    assert!(
        wait_until(Duration::from_secs(10), || mails(&maildir).len() == 3),
        "no test mail"
    );
    assert!(mails(&maildir).iter().all(|m| !m.contains("s3cret-pw")));
}

/// An X server, a session bus and dunst on it, for one test.
struct Desktop {
    env: Vec<(String, String)>,
    _x: Kid,
    _bus: Kid,
    _dunst: Kid,
}

impl Desktop {
    fn start() -> Option<Desktop> {
        let available = ["Xvfb", "dbus-daemon", "dbus-send", "dunst", "dunstctl"]
            .iter()
            .all(|p| has(p));
        if !system_available("Xvfb, dbus and dunst (Debian)", available) {
            return None;
        }
        let first_line = |child: &mut Child| {
            let mut line = String::new();
            let out = child.stdout.take().expect("stdout");
            BufReader::new(out).read_line(&mut line).expect("a line");
            line.trim().to_string()
        };
        let mut x = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                "800x600x24",
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb starts");
        let display = format!(":{}", first_line(&mut x));
        let x = Kid(x);
        let mut bus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon starts");
        let address = first_line(&mut bus);
        let bus = Kid(bus);
        let env = vec![
            ("DISPLAY".to_string(), display),
            ("DBUS_SESSION_BUS_ADDRESS".to_string(), address),
        ];
        let dunst = Kid(Command::new("dunst")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dunst starts"));
        let desktop = Desktop {
            env,
            _x: x,
            _bus: bus,
            _dunst: dunst,
        };
        assert!(
            wait_until(Duration::from_secs(20), || {
                let out = desktop.command(&[
                    "dbus-send",
                    "--print-reply",
                    "--dest=org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus.NameHasOwner",
                    "string:org.freedesktop.Notifications",
                ]);
                String::from_utf8_lossy(&out.stdout).contains("true")
            }),
            "dunst did not take the notification service"
        );
        Some(desktop)
    }

    fn command(&self, args: &[&str]) -> Output {
        Command::new(args[0])
            .args(&args[1..])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("runs")
    }

    /// Every notification shown so far (`dunstctl history`, after closing
    /// the ones still on screen), oldest first.
    fn notifications(&self) -> Vec<Value> {
        self.command(&["dunstctl", "close-all"]);
        let out = self.command(&["dunstctl", "history"]);
        let history: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let mut shown: Vec<Value> = history["data"][0].as_array().cloned().unwrap_or_default();
        shown.sort_by_key(|n| n["id"]["data"].as_i64());
        shown
    }
}

fn field(notification: &Value, name: &str) -> String {
    notification[name]["data"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn desktop_alerts_reach_a_real_notification_daemon_as_text() {
    if !fuse_available() {
        return;
    }
    let Some(desktop) = Desktop::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("laptop");
    let path_str = path.to_str().expect("utf8");
    run_ok(&["alert", "add", "desktop://", "--path", path_str]);
    let env: Vec<(&str, &str)> = desktop
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let _daemon = Daemon::start_with_env(
        None,
        &env,
        &path,
        "laptop",
        &["--no-discovery", "--port", "0"],
    );
    wait_for_first_judgement(&path);

    // A hostile line: markup a notification daemon would render.
    assert_eq!(
        job(
            path_str,
            "backup",
            "echo '<b>rm</b> & <a href=x>y</a>'; exit 23"
        ),
        23
    );
    assert!(
        wait_until(Duration::from_secs(30), || !desktop
            .notifications()
            .is_empty()),
        "no notification"
    );
    let shown = desktop.notifications();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(
        field(&shown[0], "summary"),
        "backup failed on laptop (exit 23)"
    );
    assert_eq!(field(&shown[0], "appname"), "scuttlefs");
    let body = field(&shown[0], "body");
    assert!(
        body.contains("&lt;b&gt;rm&lt;/b&gt; &amp; &lt;a href=x&gt;y&lt;/a&gt;"),
        "{body}"
    );
    // Critical: it stays until dismissed.
    assert_eq!(shown[0]["timeout"]["data"].as_i64(), Some(0), "{shown:?}");

    assert_eq!(job(path_str, "backup", "true"), 0);
    assert!(
        wait_until(Duration::from_secs(30), || desktop.notifications().len()
            >= 2),
        "no recovery notification"
    );
    let shown = desktop.notifications();
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert_eq!(field(&shown[1], "summary"), "backup recovered on laptop");

    // `alert test` through the desktop, from the command line's own
    // session: delivered, and shown.
    let out = Command::new(common::bin())
        .args(["alert", "test", "desktop://", "--path", path_str])
        .envs(env.iter().copied())
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_until(Duration::from_secs(10), || desktop
        .notifications()
        .len()
        == 3));
    // Without a session bus it says why.
    let out = Command::new(common::bin())
        .args(["alert", "test", "desktop://", "--path", path_str])
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("DBUS_SESSION_BUS_ADDRESS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
