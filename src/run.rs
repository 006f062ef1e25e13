//! `scuttlefs run`: runs a job's command, publishes each line it prints as
//! it comes, then a final line with its exit status and duration, and
//! exits as the command did. It replaces the seed's
//! `… | xargs -I {} sbot publish --type log --source … --text " {}"`.
//!
//! What a run publishes (every line a `log` message with the job's
//! `source` and the user's other fields):
//!
//! ```text
//! … nas source=backup every=1d run=start duplicity /home sftp://…
//! … nas source=backup every=1d Last full backup date: …
//! … nas source=backup every=1d stream=stderr Warning: …
//! … nas source=backup every=1d run=end exit=0 took=93s ok
//! ```
//!
//! The field names are the contract with [`crate::health`].

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::view::line::LOG_TYPE;

/// Marks a run's first line (`start`) and last line (`end`).
pub const RUN_FIELD: &str = "run";
/// The exit code, on the last line.
pub const EXIT_FIELD: &str = "exit";
/// The signal that killed the command, on the last line.
pub const SIGNAL_FIELD: &str = "signal";
/// How long the run took, on the last line (`93s`).
pub const TOOK_FIELD: &str = "took";
/// The expected cadence (`1d`), on the first and last lines.
pub const EVERY_FIELD: &str = "every";
/// `stderr`, on lines the command wrote to standard error.
pub const STREAM_FIELD: &str = "stream";

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

/// What to run, and how to label its lines.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// Fields on every line: `source` and the user's others.
    pub fields: Map<String, Value>,
    /// The cadence as given (`1d`), checked.
    pub every: Option<String>,
    /// The command and its arguments.
    pub command: Vec<OsString>,
    /// Do not echo the command's output.
    pub quiet: bool,
}

/// Why a run could not start or finish its bookkeeping.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The command line is unusable.
    #[error("{0}")]
    Usage(String),
    /// Publishing failed for good.
    #[error("publishing the job's lines: {0}")]
    Publish(String),
}

/// Where a run's lines go: the daemon, or the store directly.
pub trait Publisher {
    /// Publishes each line as the `text` of a message with `fields`.
    fn lines(&mut self, fields: &Map<String, Value>, lines: Vec<String>) -> Result<(), String>;
    /// Publishes one message with this content.
    fn message(&mut self, content: Value) -> Result<(), String>;
}

/// Parses `--source NAME [--every D] [--quiet] [--FIELD VALUE]… -- COMMAND
/// [ARGS…]`.
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
    let mut every = None;
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
                    .filter(|v| !v.starts_with("--"))
                    .ok_or_else(|| usage(&format!("--{name} needs a value")))?;
                i += 1;
                (name.to_string(), value.to_string())
            }
        };
        i += 1;
        if name.is_empty() || RESERVED.contains(&name.as_str()) {
            return Err(usage(&format!("--{name} is not a field you can set")));
        }
        if name == EVERY_FIELD {
            crate::cli::parse_duration(&value).map_err(|e| usage(&e.to_string()))?;
            every = Some(value);
        } else {
            fields.insert(name, Value::String(value));
        }
    }
    if !fields.contains_key("source") {
        return Err(usage("--source NAME is required: it names the job"));
    }
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
pub fn run(spec: &RunSpec, publisher: &mut dyn Publisher) -> Result<i32, RunError> {
    let started = Instant::now();
    let command_line = spec
        .command
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let mut start = spec.fields.clone();
    if let Some(every) = &spec.every {
        start.insert(EVERY_FIELD.into(), every.clone().into());
    }
    let mut end = start.clone();
    start.insert(RUN_FIELD.into(), "start".into());
    start.insert("text".into(), command_line.clone().into());
    publish_retrying(|| publisher.message(Value::Object(start.clone())))?;

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
            publish_retrying(|| publisher.message(Value::Object(end.clone())))?;
            eprintln!(
                "scuttlefs run: cannot run {}: {e}",
                spec.command[0].to_string_lossy()
            );
            return Ok(code);
        }
    };
    let forwarder = forward_signals(child.id());
    let (tx, rx) = mpsc::channel::<(Stream, String)>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(spawn_reader(out, Stream::Out, tx.clone(), spec.quiet));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(spawn_reader(err, Stream::Err, tx.clone(), spec.quiet));
    }
    drop(tx);

    let mut stderr_fields = spec.fields.clone();
    stderr_fields.insert(STREAM_FIELD.into(), "stderr".into());
    let mut failure = None;
    while let Ok(first) = rx.recv() {
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
            if let Err(e) = publish_retrying(|| publisher.lines(fields, lines.clone())) {
                // Keep the job going and its lines visible; say so at the end.
                for line in &lines {
                    eprintln!("scuttlefs run: unpublished: {line}");
                }
                failure = Some(e);
            }
        }
    }
    for reader in readers {
        let _ = reader.join();
    }
    let status = child.wait();
    drop(forwarder);
    let (code, text) = describe(status.as_ref().ok());
    end.insert(RUN_FIELD.into(), "end".into());
    end.insert(EXIT_FIELD.into(), code.into());
    if let Some(signal) = status.as_ref().ok().and_then(signal_of) {
        end.insert(SIGNAL_FIELD.into(), signal_name(signal).into());
    }
    end.insert(TOOK_FIELD.into(), took(started.elapsed()).into());
    end.insert("text".into(), text.into());
    publish_retrying(|| publisher.message(Value::Object(end.clone())))?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(code)
}

/// Retries a publish a few times (the daemon may be restarting).
fn publish_retrying(mut publish: impl FnMut() -> Result<(), String>) -> Result<(), RunError> {
    let mut last = String::new();
    for attempt in 0..5 {
        match publish() {
            Ok(()) => return Ok(()),
            Err(e) => {
                last = e;
                std::thread::sleep(Duration::from_millis(200 << attempt));
            }
        }
    }
    Err(RunError::Publish(last))
}

/// Reads `pipe` line by line into `lines`, echoing each unless `quiet`.
fn spawn_reader(
    pipe: impl Read + Send + 'static,
    stream: Stream,
    lines: mpsc::Sender<(Stream, String)>,
    quiet: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(1 << 16, pipe);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if !quiet {
                let _ = match stream {
                    Stream::Out => std::io::stdout().write_all(&raw),
                    Stream::Err => std::io::stderr().write_all(&raw),
                };
            }
            let line = String::from_utf8_lossy(&raw);
            let line = line.strip_suffix('\n').unwrap_or(&line);
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            if lines.send((stream, line.to_string())).is_err() {
                return;
            }
        }
    })
}

/// Passes SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 on to the
/// command, so that `run` itself lives to publish how it ended.
fn forward_signals(pid: u32) -> Option<signal_hook::iterator::Handle> {
    use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2])
            .ok()?;
    let handle = signals.handle();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            // SAFETY: kill(2) with our own child's pid and a valid signal.
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
