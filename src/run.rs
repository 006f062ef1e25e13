//! `scuttlefs run`: runs a job's command, publishes each line it prints as
//! it comes, then a final line with its exit status and duration, and
//! exits as the command did. It replaces the seed's
//! `… | xargs -I {} sbot publish --type log --source … --text " {}"`.
//!
//! What a run publishes (every line a `log` message with the job's
//! `source` and the user's other fields; the cadence only on the start and
//! end lines, which are what [`crate::health`] judges):
//!
//! ```text
//! … nas source=backup every=1d run=start duplicity /home sftp://…
//! … nas source=backup Last full backup date: …
//! … nas source=backup stream=stderr Warning: …
//! … nas source=backup every=1d run=end exit=0 took=93s ok
//! ```
//!
//! The field names are the contract with [`crate::health`].

use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::vocab::{
    CRON_FIELD, EVERY_FIELD, EXIT_FIELD, GRACE_FIELD, LOG_TYPE, RUN_FIELD, SIGNAL_FIELD,
    STREAM_FIELD, TIMEOUT_FIELD, TOOK_FIELD, TZ_FIELD,
};

/// Content fields a user may not set: `run` writes them.
const RESERVED: &[&str] = &[
    "type",
    "text",
    RUN_FIELD,
    EXIT_FIELD,
    SIGNAL_FIELD,
    TOOK_FIELD,
    STREAM_FIELD,
    "more",
];

/// Lines published per request at most.
const BATCH: usize = 32_768;
/// How long a batch waits for the command's next line.
const LINGER: Duration = Duration::from_millis(5);
/// Lines read but not yet published, at most.
const LINES_QUEUED: usize = 65_536;
/// How long output is still read after the command exited.
const DRAIN: Duration = Duration::from_secs(2);
/// The longest line kept whole (a longer one is cut into lines this long).
const LONG_LINE: usize = 1 << 20;

/// What to run, and how to label its lines.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// Fields on every line: `source` and the user's others.
    pub fields: Map<String, Value>,
    /// The cadence as given (`1d`), checked.
    pub every: Option<String>,
    /// The grace past the cadence (`30m`), checked.
    pub grace: Option<String>,
    /// How long a run may take before it is stuck (`2h`), checked.
    pub timeout: Option<String>,
    /// The cron expression, checked.
    pub cron: Option<String>,
    /// The zone the cron expression is judged in (given, or this
    /// machine's); only with `cron`.
    pub tz: Option<String>,
    /// The command and its arguments.
    pub command: Vec<OsString>,
    /// Do not echo the command's output.
    pub quiet: bool,
}

/// Why a run cannot start: its command line is unusable.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The command line is unusable.
    #[error("{0}")]
    Usage(String),
}

/// Where a run's lines go: the daemon, or the store directly.
pub trait Publisher {
    /// Publishes each line as the `text` of a message with `fields`.
    fn lines(&mut self, fields: &Map<String, Value>, lines: Vec<String>) -> Result<(), String>;
    /// Publishes one message with this content.
    fn message(&mut self, content: Value) -> Result<(), String>;
}

/// Parses `--source NAME [--every D | --cron EXPR [--tz ZONE]] [--grace D]
/// [--timeout D] [--quiet] [--FIELD VALUE]… -- COMMAND [ARGS…]`.
pub fn parse_args(args: &[OsString]) -> Result<RunSpec, RunError> {
    let usage = |why: &str| {
        RunError::Usage(format!(
            "{why}\nusage: scuttlefs run --source NAME [--every 1d] [--FIELD VALUE]… -- COMMAND [ARGS…]"
        ))
    };
    let split = args
        .iter()
        .position(|a| a == "--")
        .ok_or_else(|| usage("no command: put it after --"))?;
    let (flags, command) = (&args[..split], &args[split + 1..]);
    if command.is_empty() {
        return Err(usage("no command after --"));
    }
    let mut fields = Map::new();
    let (mut every, mut grace, mut timeout) = (None, None, None);
    let (mut cron, mut tz) = (None, None);
    let mut quiet = false;
    let mut i = 0;
    while i < flags.len() {
        let flag = flags[i]
            .to_str()
            .ok_or_else(|| usage("arguments before -- must be UTF-8"))?;
        let Some(name) = flag.strip_prefix("--") else {
            return Err(usage(&format!(
                "unexpected {flag:?}: fields are --NAME VALUE"
            )));
        };
        if name == "quiet" {
            quiet = true;
            i += 1;
            continue;
        }
        let (name, value) = match name.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => {
                let value = flags
                    .get(i + 1)
                    .and_then(|v| v.to_str())
                    .filter(|v| !crate::cli::is_flag(v))
                    .ok_or_else(|| usage(&format!("--{name} needs a value")))?;
                i += 1;
                (name.to_string(), value.to_string())
            }
        };
        i += 1;
        if name.is_empty() || RESERVED.contains(&name.as_str()) {
            return Err(usage(&format!("--{name} is not a field you can set")));
        }
        match name.as_str() {
            CRON_FIELD => {
                cron = Some(value);
                continue;
            }
            TZ_FIELD => {
                tz = Some(value);
                continue;
            }
            _ => {}
        }
        let schedule = match name.as_str() {
            EVERY_FIELD => Some(&mut every),
            GRACE_FIELD => Some(&mut grace),
            TIMEOUT_FIELD => Some(&mut timeout),
            _ => None,
        };
        if let Some(slot) = schedule {
            crate::vocab::parse_duration(&value).map_err(|e| usage(&format!("--{name}: {e}")))?;
            *slot = Some(value);
        } else {
            fields.insert(name, Value::String(value));
        }
    }
    if fields
        .get("source")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(usage("--source NAME is required: it names the job"));
    }
    if cron.is_some() && every.is_some() {
        return Err(usage(
            "--every and --cron both say when the job runs: give one",
        ));
    }
    let tz = match (&cron, tz) {
        (None, Some(_)) => return Err(usage("--tz goes with --cron")),
        (None, None) => None,
        (Some(expr), zone) => {
            let zone = zone.unwrap_or_else(crate::schedule::local_zone);
            let schedule = crate::schedule::CronSchedule::parse(expr, &zone)
                .map_err(|e| usage(&e.to_string()))?;
            if !schedule.fires(crate::clock::now_ms()) {
                return Err(usage(&format!(
                    "--cron {expr:?} has no times to come (such as February 30th): \
                     the job could never be late"
                )));
            }
            Some(zone)
        }
    };
    // `source` first, so that it leads every line.
    let mut ordered = Map::new();
    ordered.insert("type".into(), Value::String(LOG_TYPE.into()));
    if let Some(source) = fields.remove("source") {
        ordered.insert("source".into(), source);
    }
    ordered.extend(fields);
    Ok(RunSpec {
        fields: ordered,
        every,
        grace,
        timeout,
        cron,
        tz,
        command: command.to_vec(),
        quiet,
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stream {
    Out,
    Err,
}

/// Runs `spec`, publishing through `publisher`; returns the exit code to
/// exit with (the command's, 128 + the signal that killed it, or 127/126
/// when it could not be started).
pub fn run(spec: &RunSpec, publisher: &mut dyn Publisher) -> i32 {
    let started = Instant::now();
    let command_line = spec
        .command
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let mut start = spec.fields.clone();
    for (field, value) in [
        (EVERY_FIELD, &spec.every),
        (GRACE_FIELD, &spec.grace),
        (TIMEOUT_FIELD, &spec.timeout),
        (CRON_FIELD, &spec.cron),
        (TZ_FIELD, &spec.tz),
    ] {
        if let Some(value) = value {
            start.insert(field.into(), value.clone().into());
        }
    }
    let mut end = start.clone();
    start.insert(RUN_FIELD.into(), "start".into());
    start.insert("text".into(), command_line.clone().into());
    // The job runs whatever happens to its log: a daemon restarting must
    // not cost a backup.
    let mut unpublished = 0usize;
    if !published(|| publisher.message(Value::Object(start.clone()))) {
        unpublished += 1;
    }

    let mut child = match Command::new(&spec.command[0])
        .args(&spec.command[1..])
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::PermissionDenied {
                126
            } else {
                127
            };
            end.insert(RUN_FIELD.into(), "end".into());
            end.insert(EXIT_FIELD.into(), code.into());
            end.insert(TOOK_FIELD.into(), took(started.elapsed()).into());
            end.insert(
                "text".into(),
                format!("cannot run {}: {e}", spec.command[0].to_string_lossy()).into(),
            );
            eprintln!(
                "scuttlefs run: cannot run {}: {e}",
                spec.command[0].to_string_lossy()
            );
            if !published(|| publisher.message(Value::Object(end.clone()))) {
                unpublished += 1;
            }
            warn_unpublished(unpublished);
            return code;
        }
    };
    let forwarder = forward_signals(child.id());
    // Bounded: a command that prints faster than its lines are stored
    // waits for them, rather than filling memory.
    let (tx, rx) = mpsc::sync_channel::<(Stream, String)>(LINES_QUEUED);
    if let Some(out) = child.stdout.take() {
        spawn_reader(out, Stream::Out, tx.clone(), spec.quiet);
    }
    if let Some(err) = child.stderr.take() {
        spawn_reader(err, Stream::Err, tx.clone(), spec.quiet);
    }
    drop(tx);
    // Waited for on its own: a process the command left behind may hold
    // its output open long after it exited.
    let (exited_tx, exited_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = exited_tx.send(child.wait());
    });

    let mut stderr_fields = spec.fields.clone();
    stderr_fields.insert(STREAM_FIELD.into(), "stderr".into());
    let mut status: Option<(std::io::Result<ExitStatus>, Instant)> = None;
    loop {
        if status.is_none() {
            if let Ok(exited) = exited_rx.try_recv() {
                // No signal may reach a pid that is gone (or reused).
                if let Some(forwarder) = &forwarder {
                    forwarder.close();
                }
                status = Some((exited, Instant::now()));
            }
        }
        let first = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Exited, and its output fell silent: what is left behind
                // holding the pipes is not the job.
                if status.as_ref().is_some_and(|(_, at)| at.elapsed() > DRAIN) {
                    break;
                }
                continue;
            }
        };
        // Take what is waiting, and what follows within a few
        // milliseconds: a command that prints fast gets a few large
        // batches (each one sync), one that prints slowly loses no time.
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.recv_timeout(LINGER) {
                Ok(line) => batch.push(line),
                Err(_) => break,
            }
        }
        // Consecutive lines of one stream go in one request.
        let mut rest = batch.as_slice();
        while let Some((stream, _)) = rest.first() {
            let n = rest.iter().take_while(|(s, _)| s == stream).count();
            let lines: Vec<String> = rest[..n].iter().map(|(_, l)| l.clone()).collect();
            rest = &rest[n..];
            let fields = if *stream == Stream::Err {
                &stderr_fields
            } else {
                &spec.fields
            };
            if !published(|| publisher.lines(fields, lines.clone())) {
                unpublished += lines.len();
            }
        }
    }
    let status = match status {
        Some((status, _)) => status,
        None => exited_rx
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the waiter stopped"))),
    };
    if let Some(forwarder) = &forwarder {
        forwarder.close();
    }
    let (code, text) = describe(status.as_ref().ok());
    end.insert(RUN_FIELD.into(), "end".into());
    end.insert(EXIT_FIELD.into(), code.into());
    if let Some(signal) = status.as_ref().ok().and_then(signal_of) {
        end.insert(SIGNAL_FIELD.into(), signal_name(signal).into());
    }
    end.insert(TOOK_FIELD.into(), took(started.elapsed()).into());
    end.insert("text".into(), text.into());
    if !published(|| publisher.message(Value::Object(end.clone()))) {
        unpublished += 1;
    }
    warn_unpublished(unpublished);
    // The command's status, whatever became of its log.
    code
}

/// Says how many lines could not be published (they went to the terminal
/// or the journal as the command printed them, unless `--quiet`).
fn warn_unpublished(count: usize) {
    if count > 0 {
        eprintln!(
            "scuttlefs run: {count} line(s) of this run could not be published (is the store writable, or the daemon up?)"
        );
    }
}

/// Tries a publish a few times (the daemon may be restarting); says why
/// it failed for good.
fn published(mut publish: impl FnMut() -> Result<(), String>) -> bool {
    for attempt in 0..5 {
        match publish() {
            Ok(()) => return true,
            Err(e) if attempt == 4 => eprintln!("scuttlefs run: publishing: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200 << attempt)),
        }
    }
    false
}

/// Reads `pipe` into `lines`, a line at a time, echoing what arrives at
/// once unless `quiet` (a progress bar that only returns the carriage is
/// shown as it moves). A line longer than [`LONG_LINE`] is cut there.
fn spawn_reader(
    mut pipe: impl Read + Send + 'static,
    stream: Stream,
    lines: mpsc::SyncSender<(Stream, String)>,
    quiet: bool,
) {
    std::thread::spawn(move || {
        let mut chunk = vec![0u8; 1 << 16];
        let mut pending: Vec<u8> = Vec::new();
        let send = |raw: &[u8]| -> bool {
            let line = String::from_utf8_lossy(raw);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            line.is_empty() || lines.send((stream, line.to_string())).is_ok()
        };
        loop {
            let n = match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !quiet {
                let _ = match stream {
                    Stream::Out => {
                        let mut out = std::io::stdout();
                        out.write_all(&chunk[..n]).and_then(|()| out.flush())
                    }
                    Stream::Err => std::io::stderr().write_all(&chunk[..n]),
                };
            }
            pending.extend_from_slice(&chunk[..n]);
            let mut start = 0;
            while let Some(nl) = pending[start..].iter().position(|b| *b == b'\n') {
                if !send(&pending[start..start + nl]) {
                    return;
                }
                start += nl + 1;
            }
            pending.drain(..start);
            while pending.len() > LONG_LINE {
                let rest = pending.split_off(LONG_LINE);
                if !send(&pending) {
                    return;
                }
                pending = rest;
            }
        }
        send(&pending);
    });
}

/// Passes SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 on to the command, and
/// SIGINT and SIGQUIT too when no terminal sent them (a terminal sends its
/// Ctrl-C to the command as well: a second one would make many programs
/// skip their cleanup). Either way `run` itself lives to publish how the
/// command ended.
fn forward_signals(pid: u32) -> Option<signal_hook::iterator::Handle> {
    use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
    use std::io::IsTerminal;
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2])
            .ok()?;
    let from_terminal = std::io::stdin().is_terminal();
    let handle = signals.handle();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if from_terminal && matches!(signal, SIGINT | SIGQUIT) {
                continue;
            }
            // SAFETY: kill(2) with our child's pid (the handle is closed
            // once the child is reaped) and a valid signal.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    });
    Some(handle)
}

/// The exit code to report, and the last line's text.
fn describe(status: Option<&ExitStatus>) -> (i32, String) {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(status) => match (status.code(), status.signal()) {
            (Some(0), _) => (0, "ok".into()),
            (Some(code), _) => (code, "failed".into()),
            (None, Some(signal)) => (128 + signal, format!("killed by {}", signal_name(signal))),
            (None, None) => (1, "ended without a status".into()),
        },
        None => (1, "its status could not be read".into()),
    }
}

fn signal_of(status: &ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    name.into()
}

/// `93s`, or `0.4s` under ten seconds.
fn took(elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs < 10.0 {
        format!("{secs:.1}s")
    } else {
        format!("{secs:.0}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments_become_fields_and_a_command() {
        let spec = parse_args(&args(&[
            "--destination",
            "nas",
            "--source",
            "backup",
            "--every",
            "1d",
            "--",
            "duplicity",
            "--full",
        ]))
        .expect("parses");
        assert_eq!(
            serde_json::to_string(&spec.fields).expect("json"),
            r#"{"type":"log","source":"backup","destination":"nas"}"#
        );
        assert_eq!(spec.every.as_deref(), Some("1d"));
        assert_eq!(spec.command, args(&["duplicity", "--full"]));
        let nightly = parse_args(&args(&[
            "--source",
            "backup",
            "--cron",
            "0 2 * * *",
            "--tz",
            "Asia/Kathmandu",
            "--",
            "true",
        ]))
        .expect("parses");
        assert_eq!(nightly.cron.as_deref(), Some("0 2 * * *"));
        assert_eq!(nightly.tz.as_deref(), Some("Asia/Kathmandu"));
        assert!(!nightly.fields.contains_key("cron"));
    }

    #[test]
    fn bad_command_lines_say_why() {
        for (list, why) in [
            (&["--source", "x"][..], "no command"),
            (&["--source", "x", "--"][..], "no command"),
            (&["--", "true"][..], "--source"),
            (
                &["--source", "x", "--exit", "0", "--", "true"][..],
                "--exit",
            ),
            (
                &["--source", "x", "--every", "often", "--", "true"][..],
                "often",
            ),
            (&["--source", "--", "true"][..], "needs a value"),
            (
                &["--source", "x", "--cron", "0 2 * *", "--", "true"][..],
                "--cron \"0 2 * *\"",
            ),
            (
                &[
                    "--source",
                    "x",
                    "--cron",
                    "0 2 * * *",
                    "--tz",
                    "Nowhere",
                    "--",
                    "true",
                ][..],
                "Nowhere",
            ),
            (
                &[
                    "--source",
                    "x",
                    "--cron",
                    "0 2 * * *",
                    "--every",
                    "1d",
                    "--",
                    "true",
                ][..],
                "give one",
            ),
            (
                &["--source", "x", "--tz", "UTC", "--", "true"][..],
                "goes with --cron",
            ),
            (
                &["--source=", "--", "true"][..],
                "--source NAME is required",
            ),
        ] {
            match parse_args(&args(list)) {
                Err(e) => assert!(e.to_string().contains(why), "{list:?}: {e}"),
                Ok(spec) => panic!("{list:?} parsed: {spec:?}"),
            }
        }
    }

    #[test]
    fn exit_statuses_are_described() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe(Some(&ExitStatus::from_raw(0))), (0, "ok".into()));
        assert_eq!(
            describe(Some(&ExitStatus::from_raw(4 << 8))),
            (4, "failed".into())
        );
        assert_eq!(
            describe(Some(&ExitStatus::from_raw(libc::SIGKILL))),
            (137, "killed by SIGKILL".into())
        );
        assert_eq!(took(Duration::from_millis(400)), "0.4s");
        assert_eq!(took(Duration::from_secs(93)), "93s");
    }
}
