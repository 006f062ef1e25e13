//! The calls that only some systems have, each gated here and nowhere
//! else, so that the crate builds wherever fuser works: Linux (glibc or
//! musl), macOS with macFUSE, FreeBSD. What is missing on a system becomes
//! a no-op or an `Unsupported` error that the caller already handles.
//!
//! Tested on Linux with glibc; the other branches are compiled by their
//! `cfg` only (see docs/ARCHITECTURE.md, "Portability").

use std::fs::File;
use std::io;
use std::path::Path;

/// Keeps glibc from giving every thread its own heap, before any thread
/// starts. By default each thread that allocates while others hold the
/// heaps gets one (up to eight per core), and each keeps freed memory
/// between its live allocations: the daemon's threads (FUSE, tokio, the
/// merge, sled's) left more of it resident after replicating than they
/// were using. Elsewhere the allocator is left as it is.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before the
    // process starts any thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Gives memory the process freed back to the system (glibc keeps freed
/// pages between live allocations, where it cannot trim them by itself).
/// Elsewhere a no-op.
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Frees the bytes of `file` from `offset` for `len`, keeping its size:
/// they read back as zeros. `Unsupported` where the system (or its
/// filesystem) cannot.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    punch_hole_at(file, offset, len)
}

#[cfg(target_os = "linux")]
fn punch_hole_at(file: &File, offset: i64, len: i64) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: fallocate on a descriptor the caller owns, with plain integers.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(target_os = "macos")]
fn punch_hole_at(file: &File, offset: i64, len: i64) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let mut hole = libc::fpunchhole_t {
        fp_flags: 0,
        reserved: 0,
        fp_offset: offset,
        fp_length: len,
    };
    // SAFETY: F_PUNCHHOLE with a valid, initialised argument struct.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_PUNCHHOLE, &mut hole) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn punch_hole_at(_file: &File, _offset: i64, _len: i64) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Detaches the filesystem mounted at `path` at once, even while it is
/// busy (Linux's lazy unmount; a forced unmount elsewhere). Needs root;
/// the caller falls back to fusermount.
pub fn detach_mount(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: path is a valid NUL-terminated string for the call's duration.
    #[cfg(target_os = "linux")]
    let rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    // SAFETY: as above.
    #[cfg(any(target_os = "macos", target_os = "freebsd"))]
    let rc = unsafe { libc::unmount(path.as_ptr(), libc::MNT_FORCE) };
    #[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "freebsd")))]
    let rc = {
        let _ = path;
        return Err(io::Error::from(io::ErrorKind::Unsupported));
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The thread group (process) of thread `tid`, from `/proc` where there is
/// one; elsewhere `tid` itself (FUSE reports the process there).
pub fn thread_group(tid: u32) -> u32 {
    #[cfg(target_os = "linux")]
    {
        std::fs::read_to_string(format!("/proc/{tid}/status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix("Tgid:"))
                    .and_then(|tgid| tgid.trim().parse().ok())
            })
            .unwrap_or(tid)
    }
    #[cfg(not(target_os = "linux"))]
    {
        tid
    }
}

/// Lets a closed standard output end this process quietly, as it ends
/// `cat`: `scuttlefs health | head` then stops at the pipe's end instead
/// of panicking in `println!`. Only for commands that print and exit; the
/// daemon and `run` (whose job must finish whatever happens to its
/// output) keep ignoring SIGPIPE, as Rust sets it up.
pub fn exit_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal; no handler
    // is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
