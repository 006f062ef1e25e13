//! `scuttlefs log --follow --cursor-file FILE`: the reader's side of a
//! followed log, for log shippers. It prints each message once: across
//! stops of this reader (the cursor file says where it stopped) and
//! restarts of the daemon (it waits for the daemon and goes on after its
//! cursor). The cursor is saved only after what it covers was written
//! out, so a stop by signal neither repeats nor loses a line; only a
//! SIGKILL between a write and the save may repeat that last batch.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::control::{Cursor, LogFormat, LogItem, Request, RequestError};

/// How often a waiting reader looks for the daemon, and for a signal.
const TICK: Duration = Duration::from_millis(250);

/// Why a followed log ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The cursor file could not be read, or holds no cursor.
    #[error("cursor file {path}: {reason}")]
    CursorFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The cursor file could not be written.
    #[error("saving the cursor to {path}: {source}")]
    SaveCursor {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The daemon refused (a cursor from another store, say).
    #[error("{0}")]
    Refused(#[from] RequestError),
    /// The control socket or standard output.
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
}

/// What a reader does: where it reads from and what it prints.
pub struct FollowOptions<'a> {
    /// The daemon's control socket.
    pub socket: &'a Path,
    /// Where the cursor is kept, if anywhere.
    pub cursor_file: Option<&'a Path>,
    /// Keep reading new messages (else stop at the end of the log).
    pub follow: bool,
    /// JSON or text.
    pub format: LogFormat,
}

/// Reads the log from the cursor on, printing to `out`, until the log's
/// end (without `follow`), a signal (SIGTERM, SIGINT, SIGHUP), or a
/// closed output.
pub fn run(options: &FollowOptions<'_>, out: &mut dyn Write) -> Result<(), FollowError> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| FollowError::Io("installing a signal handler", e))?;
    }
    let mut cursor = match options.cursor_file {
        Some(path) => load_cursor(path)?,
        None => None,
    };
    let mut said_waiting = false;
    while !stop.load(Ordering::Relaxed) {
        let stream = match UnixStream::connect(options.socket) {
            Ok(stream) => stream,
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
                if !options.follow {
                    return Err(FollowError::Io(
                        "the daemon is not running: start it with scuttlefs serve",
                        e,
                    ));
                }
                if !said_waiting {
                    eprintln!("scuttlefs log: waiting for the daemon");
                    said_waiting = true;
                }
                std::thread::sleep(TICK);
                continue;
            }
            Err(e) => return Err(FollowError::Io("connecting to the daemon", e)),
        };
        match read_answer(stream, options, &mut cursor, &stop, out)? {
            Ended::Done | Ended::Stopped => return Ok(()),
            Ended::DaemonGone => {
                if !options.follow {
                    return Err(FollowError::Io(
                        "the daemon stopped mid-answer",
                        ErrorKind::UnexpectedEof.into(),
                    ));
                }
                eprintln!("scuttlefs log: the daemon stopped; waiting for it");
                said_waiting = true;
            }
        }
    }
    Ok(())
}

/// How one connection's answer ended.
enum Ended {
    /// The log's end, without `follow`.
    Done,
    /// A signal, or the output closed.
    Stopped,
    /// The daemon went away.
    DaemonGone,
}

fn read_answer(
    stream: UnixStream,
    options: &FollowOptions<'_>,
    cursor: &mut Option<Cursor>,
    stop: &AtomicBool,
    out: &mut dyn Write,
) -> Result<Ended, FollowError> {
    let io = |what| move |e| FollowError::Io(what, e);
    let request = Request::LogFrom {
        after: cursor.clone(),
        follow: options.follow,
        format: options.format,
    };
    let mut writer = stream.try_clone().map_err(io("control socket"))?;
    let mut text = serde_json::to_vec(&request).map_err(|e| io("encoding")(e.into()))?;
    text.push(b'\n');
    writer.write_all(&text).map_err(io("sending the request"))?;
    stream
        .set_read_timeout(Some(TICK))
        .map_err(io("control socket"))?;
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let mut line = Vec::new();
    // The cursor of what was written but not yet flushed and saved.
    let mut unsaved: Option<Cursor> = None;
    let finish =
        |unsaved: &mut Option<Cursor>, cursor: &mut Option<Cursor>, out: &mut dyn Write| {
            if unsaved.is_none() {
                return Ok(true);
            }
            if out.flush().is_err() {
                // The output closed: what it did not take is not saved.
                return Ok(false);
            }
            *cursor = unsaved.take();
            if let (Some(path), Some(cursor)) = (options.cursor_file, cursor.as_ref()) {
                save_cursor(path, cursor)?;
            }
            Ok::<bool, FollowError>(true)
        };
    loop {
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => {
                finish(&mut unsaved, cursor, out)?;
                return Ok(Ended::DaemonGone);
            }
            Ok(_) if line.ends_with(b"\n") => {}
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if stop.load(Ordering::Relaxed) {
                    finish(&mut unsaved, cursor, out)?;
                    return Ok(Ended::Stopped);
                }
                continue;
            }
            Err(_) => {
                finish(&mut unsaved, cursor, out)?;
                return Ok(Ended::DaemonGone);
            }
        }
        let reply: Value = match serde_json::from_slice(&line) {
            Ok(reply) => reply,
            Err(_) => {
                finish(&mut unsaved, cursor, out)?;
                return Ok(Ended::DaemonGone);
            }
        };
        line.clear();
        if let Some(item) = reply.get("item") {
            match LogItem::parse(item) {
                Some(LogItem::Entry {
                    cursor: next,
                    output,
                }) => {
                    if let Some(output) = output {
                        let written = out
                            .write_all(output.as_bytes())
                            .and_then(|()| out.write_all(b"\n"));
                        if written.is_err() {
                            return Ok(Ended::Stopped);
                        }
                    }
                    unsaved = Some(next);
                }
                Some(LogItem::Flush) => {
                    if !finish(&mut unsaved, cursor, out)? {
                        return Ok(Ended::Stopped);
                    }
                    if stop.load(Ordering::Relaxed) {
                        return Ok(Ended::Stopped);
                    }
                }
                Some(LogItem::Keepalive) | None => {}
            }
        } else if let Some(error) = reply.get("error") {
            finish(&mut unsaved, cursor, out)?;
            let error: RequestError =
                serde_json::from_value(error.clone()).unwrap_or_else(|e| RequestError {
                    kind: "internal".into(),
                    message: format!("an answer the reader cannot read: {e}"),
                });
            return Err(error.into());
        } else {
            if !finish(&mut unsaved, cursor, out)? {
                return Ok(Ended::Stopped);
            }
            return Ok(Ended::Done);
        }
    }
}

/// The cursor saved in `path`; `None` when there is no file yet.
pub fn load_cursor(path: &Path) -> Result<Option<Cursor>, FollowError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(FollowError::CursorFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        }
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| FollowError::CursorFile {
            path: path.to_path_buf(),
            reason: format!(
                "not a cursor this command wrote ({e}); remove it to start from the beginning"
            ),
        })
}

/// Saves `cursor` in `path`, whole or not at all (written beside it,
/// synced, then renamed over it).
pub fn save_cursor(path: &Path, cursor: &Cursor) -> Result<(), FollowError> {
    let mut text = json!(cursor).to_string();
    text.push('\n');
    crate::config::replace_file(path, text.as_bytes()).map_err(|source| FollowError::SaveCursor {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cursor");
        assert_eq!(load_cursor(&path).expect("no file is no cursor"), None);
        let cursor = Cursor {
            start: 10,
            end: 300,
            key: "%abc=.sha256".into(),
        };
        save_cursor(&path, &cursor).expect("saves");
        assert_eq!(load_cursor(&path).expect("loads"), Some(cursor));
        std::fs::write(&path, "garbage").expect("writes");
        let error = load_cursor(&path).expect_err("garbage is refused");
        assert!(error.to_string().contains("remove it"), "{error}");
    }
}
