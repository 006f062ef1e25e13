//! `exec:` targets: a program run with the alert in its environment
//! (`SCUTTLEFS_ALERT_STATE`, `_MACHINE`, `_SOURCE`, `_TITLE`, `_BODY`,
//! `_EXIT`, `_TIME`) and as JSON on its standard input. Exit 0 is a
//! delivery; anything else, or no exit within [`TIMEOUT`], a failure to
//! try again. Apprise's CLI, `mail` or `notify-send` plug in this way.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Alert;

/// How long a program may take to deliver an alert.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `program` with `alert`; an error says why it is not delivered.
pub fn deliver(program: &Path, alert: &Alert) -> Result<(), String> {
    let mut child = Command::new(program)
        .env("SCUTTLEFS_ALERT_STATE", alert.change.name())
        .env("SCUTTLEFS_ALERT_MACHINE", &alert.machine)
        .env(
            "SCUTTLEFS_ALERT_SOURCE",
            alert.source.as_deref().unwrap_or(""),
        )
        .env("SCUTTLEFS_ALERT_TITLE", &alert.title)
        .env("SCUTTLEFS_ALERT_BODY", &alert.body)
        .env(
            "SCUTTLEFS_ALERT_EXIT",
            alert.exit.map(|e| e.to_string()).unwrap_or_default(),
        )
        .env("SCUTTLEFS_ALERT_TIME", alert.time())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    // Read as it comes, so that a program that says a lot does not block
    // on a full pipe.
    let stderr = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = std::io::Read::read_to_end(&mut err, &mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    });
    if let Some(mut stdin) = child.stdin.take() {
        // A program that does not read its input still gets its alert
        // from the environment.
        let _ = stdin.write_all(alert.to_json().to_string().as_bytes());
    }
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < TIMEOUT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not exit within {}s",
                    program.display(),
                    TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("waiting for {}: {e}", program.display())),
        }
    };
    if status.success() {
        return Ok(());
    }
    let stderr = stderr
        .and_then(|reader| reader.join().ok())
        .unwrap_or_default();
    let said = stderr.lines().last().unwrap_or("").trim();
    Err(format!(
        "{} {status}{}",
        program.display(),
        if said.is_empty() {
            String::new()
        } else {
            format!(": {said}")
        }
    ))
}
