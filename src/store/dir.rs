//! The store's directory: who holds it, and where sled lives in it.
//!
//! ```text
//! <store>/lock                  held (flock) by the process that has the store open
//! <store>/messages.log          the message log: the truth (its older part a hole)
//! <store>/messages.cold         the log's older records, compressed
//! <store>/index/                sled: indexes derived from the log, a cache
//! <store>/positions/            each feed's positions in the log, a cache too
//! <store>/index.damaged-<time>/ the last index that failed to open, kept for diagnosis
//! ```
//!
//! sled sits in a directory of its own so that a database that fails to
//! open can be moved aside whole, in one rename, and rebuilt from the log.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{io_error, StoreError};

/// sled's directory inside the store.
pub fn index_dir(store: &Path) -> PathBuf {
    store.join("index")
}

/// The position files inside the store (`positions.rs`).
pub fn positions_dir(store: &Path) -> PathBuf {
    store.join("positions")
}

/// The message log inside the store.
pub fn log_path(store: &Path) -> PathBuf {
    store.join("messages.log")
}

/// The message log's compressed older records (`cold.rs`).
pub fn cold_path(store: &Path) -> PathBuf {
    store.join("messages.cold")
}

/// An exclusive hold on a store directory, released when dropped (the
/// kernel drops the `flock` with the descriptor, even after SIGKILL).
pub struct DirLock {
    _file: File,
}

/// Takes the store's lock. A store this process just closed can stay held
/// for a moment while its last users wind down, so a held lock is retried
/// briefly before it is reported.
pub fn lock(store: &Path) -> Result<DirLock, StoreError> {
    fs::create_dir_all(store).map_err(io_error)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(store.join("lock"))
        .map_err(io_error)?;
    for _ in 0..40 {
        // SAFETY: flock on a descriptor this function owns.
        let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if taken {
            record_holder(&file);
            return Ok(DirLock { _file: file });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::WouldBlock {
            return Err(io_error(err));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(StoreError::Locked(store.display().to_string()))
}

/// Writes who holds the lock into it (`pid` and command line), so that a
/// process refused the store can say who has it. Only a hint: a failure to
/// write it costs the hint, never the lock.
fn record_holder(mut file: &File) {
    use std::io::{Seek, Write};
    let command: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut command = command.join(" ");
    if command.len() > 200 {
        let mut end = 200;
        while !command.is_char_boundary(end) {
            end -= 1;
        }
        command.truncate(end);
        command.push('…');
    }
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}\n{command}", std::process::id()));
}

/// Who holds the store's lock, for an error message: `process 123
/// (scuttlefs run --source backup -- …)`, or "another process" when the
/// lock file does not say.
pub fn holder(store: &Path) -> String {
    let text = fs::read_to_string(store.join("lock")).unwrap_or_default();
    let mut lines = text.lines();
    match (
        lines.next().and_then(|p| p.trim().parse::<u32>().ok()),
        lines.next(),
    ) {
        (Some(pid), Some(command)) if !command.is_empty() => format!("process {pid} ({command})"),
        (Some(pid), _) => format!("process {pid}"),
        _ => "another process".into(),
    }
}

/// The files sled 0.34 keeps in its directory.
fn is_sled_file(name: &str) -> bool {
    matches!(name, "conf" | "db" | "blobs") || name.starts_with("snap.")
}

/// Moves a database of the earlier layout, where sled's files sat beside
/// the log, into `index/`. A move cut off midway is finished next time:
/// files are gathered in `index.moving/` and that is renamed in one step.
pub fn move_root_index(store: &Path) -> Result<(), StoreError> {
    let index = index_dir(store);
    let moving = store.join("index.moving");
    let mut found = false;
    for entry in fs::read_dir(store).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let name = entry.file_name();
        if is_sled_file(&name.to_string_lossy()) {
            if !found {
                fs::create_dir_all(&moving).map_err(io_error)?;
                found = true;
            }
            fs::rename(entry.path(), moving.join(&name)).map_err(io_error)?;
        }
    }
    if moving.exists() && !index.exists() {
        tracing::info!("moving the index database into {}", index.display());
        fs::rename(&moving, &index).map_err(io_error)?;
    } else if moving.exists() {
        // A newer index exists already; the old one is not needed.
        fs::remove_dir_all(&moving).map_err(io_error)?;
    }
    Ok(())
}

/// Moves a damaged index aside, where it stays for diagnosis until the next
/// one replaces it: one damaged copy at most, so repeated damage cannot fill
/// the disk. Returns where it went.
pub fn set_aside(store: &Path) -> Result<Option<PathBuf>, StoreError> {
    let index = index_dir(store);
    if !index.exists() {
        return Ok(None);
    }
    for entry in fs::read_dir(store).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("index.damaged-")
        {
            fs::remove_dir_all(entry.path()).map_err(io_error)?;
        }
    }
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let aside = store.join(format!("index.damaged-{stamp}"));
    fs::rename(&index, &aside).map_err(io_error)?;
    // Durable before the rebuild: a power cut must not bring back the
    // damaged index over position files the rebuild has begun to rewrite.
    File::open(store)
        .and_then(|d| d.sync_all())
        .map_err(io_error)?;
    Ok(Some(aside))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_the_first_release_frees_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = lock(dir.path()).expect("locks");
        assert!(matches!(lock(dir.path()), Err(StoreError::Locked(_))));
        let holder = holder(dir.path());
        assert!(
            holder.starts_with(&format!("process {} (", std::process::id())),
            "{holder}"
        );
        drop(first);
        lock(dir.path()).expect("locks again");
    }

    #[test]
    fn sled_files_beside_the_log_move_into_the_index_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["conf", "db", "snap.0000000000001234"] {
            fs::write(dir.path().join(name), name).expect("writes");
        }
        fs::create_dir(dir.path().join("blobs")).expect("mkdir");
        fs::write(log_path(dir.path()), b"log").expect("writes");
        move_root_index(dir.path()).expect("moves");
        let index = index_dir(dir.path());
        assert_eq!(fs::read(index.join("db")).expect("moved"), b"db");
        assert!(index.join("blobs").is_dir());
        assert!(!dir.path().join("conf").exists());
        assert_eq!(fs::read(log_path(dir.path())).expect("stays"), b"log");
    }

    #[test]
    fn only_the_latest_damaged_index_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        for _ in 0..3 {
            fs::create_dir_all(index_dir(dir.path())).expect("mkdir");
            let aside = set_aside(dir.path()).expect("sets aside").expect("moved");
            assert!(aside.exists());
        }
        let damaged = fs::read_dir(dir.path())
            .expect("lists")
            .filter(|e| {
                e.as_ref()
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .starts_with("index.damaged-")
            })
            .count();
        assert_eq!(damaged, 1);
        assert!(!index_dir(dir.path()).exists());
    }
}
