//! The fuser adapter: translates each FUSE request into a [`ScuttleFs`]
//! call and each [`FsError`] into an errno, in [`errno`] alone.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::fs::{Attr, FsError, Kind, OpenMode, ScuttleFs};

/// Attributes are never cached: sizes grow with every message and `tail -f`
/// must see them within a second, so every `stat` asks the daemon.
const TTL: Duration = Duration::ZERO;

/// Largest write the kernel may send in one request: more lines per batch.
const MAX_WRITE: u32 = 1024 * 1024;

/// The one place where filesystem errors become errno values.
pub fn errno(error: &FsError) -> Errno {
    match error {
        FsError::NotFound => Errno::ENOENT,
        FsError::NotDir => Errno::ENOTDIR,
        FsError::IsDir => Errno::EISDIR,
        FsError::Access => Errno::EACCES,
        FsError::Invalid(_) => Errno::EINVAL,
        FsError::TooLarge(_) => Errno::EFBIG,
        FsError::Io(_) => Errno::EIO,
        FsError::BadHandle => Errno::EBADF,
        FsError::Stale => Errno::ESTALE,
    }
}

/// [`ScuttleFs`] as a fuser filesystem.
pub struct Fuse {
    fs: ScuttleFs,
    uid: u32,
    gid: u32,
    /// Whether the kernel agreed to FUSE passthrough.
    passthrough: bool,
    backing: Mutex<Backing>,
}

/// The kernel's handles on backing files, each shared by every passthrough
/// open of its file and closed with the last of them.
#[derive(Default)]
struct Backing {
    /// By the number [`ScuttleFs::backing_file`] gives each file.
    by_file: HashMap<u64, Weak<BackingId>>,
    by_handle: HashMap<u64, Arc<BackingId>>,
}

impl Fuse {
    /// Wraps `fs`; files belong to the daemon's user.
    pub fn new(fs: ScuttleFs) -> Self {
        // SAFETY: getuid and getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Fuse {
            fs,
            uid,
            gid,
            passthrough: false,
            backing: Mutex::new(Backing::default()),
        }
    }

    /// Opens `fh` in passthrough mode when the filesystem offers a backing
    /// file; gives `reply` back otherwise.
    fn try_passthrough(&self, fh: u64, reply: ReplyOpen) -> Option<ReplyOpen> {
        if !self.passthrough {
            return Some(reply);
        }
        let Some((number, file)) = self.fs.backing_file(fh) else {
            return Some(reply);
        };
        let mut backing = self.backing.lock().unwrap_or_else(|e| e.into_inner());
        backing.by_file.retain(|_, id| id.strong_count() > 0);
        let known = backing.by_file.get(&number).and_then(Weak::upgrade);
        let id = match known {
            Some(id) => id,
            None => match reply.open_backing(&*file) {
                Ok(id) => {
                    let id = Arc::new(id);
                    backing.by_file.insert(number, Arc::downgrade(&id));
                    id
                }
                Err(e) => {
                    tracing::debug!("passthrough unavailable: {e}");
                    return Some(reply);
                }
            },
        };
        reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
        backing.by_handle.insert(fh, id);
        None
    }

    /// Whether the caller may change anything: the mount's owner, or root.
    fn may_write(&self, req: &Request) -> bool {
        req.uid() == self.uid || req.uid() == 0
    }

    fn attr(&self, attr: &Attr) -> FileAttr {
        FileAttr {
            ino: INodeNo(attr.ino),
            size: attr.size,
            blocks: attr.size.div_ceil(512),
            atime: attr.mtime,
            mtime: attr.mtime,
            ctime: attr.mtime,
            crtime: attr.mtime,
            kind: match attr.kind {
                Kind::Dir => FileType::Directory,
                Kind::File => FileType::RegularFile,
            },
            perm: attr.perm,
            nlink: if attr.kind == Kind::Dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            // cat and friends read st_blksize at a time (at least 128 KiB).
            blksize: 1024 * 1024,
            flags: 0,
        }
    }
}

fn log_error(op: &str, error: &FsError) {
    match error {
        FsError::NotFound => tracing::trace!("{op}: {error}"),
        FsError::Io(_) => tracing::error!("{op}: {error}"),
        _ => tracing::debug!("{op}: {error}"),
    }
}

impl Filesystem for Fuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(nearest) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(nearest);
        }
        let _ = config.set_max_readahead(MAX_WRITE);
        // Passthrough lets the kernel read merged.log from the line file
        // itself, at the speed of a plain file. The backing file may sit on
        // a stacked filesystem (overlayfs), hence a depth of two.
        if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok()
        {
            self.passthrough = true;
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        match self.fs.lookup(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &self.attr(&attr), Generation(0)),
            Err(e) => {
                log_error("lookup", &e);
                reply.error(errno(&e))
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &self.attr(&attr)),
            Err(e) => {
                log_error("getattr", &e);
                reply.error(errno(&e))
            }
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = match size {
            Some(_) if !self.may_write(req) => Err(FsError::Access),
            Some(size) => self.fs.truncate(ino.0, size),
            // touch and friends: nothing to change, report as is.
            None => self.fs.getattr(ino.0),
        };
        match result {
            Ok(attr) => reply.attr(&TTL, &self.attr(&attr)),
            Err(e) => {
                log_error("setattr", &e);
                reply.error(errno(&e))
            }
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mode = match flags.acc_mode() {
            OpenAccMode::O_RDONLY => OpenMode {
                read: true,
                write: false,
            },
            OpenAccMode::O_WRONLY => OpenMode {
                read: false,
                write: true,
            },
            OpenAccMode::O_RDWR => OpenMode {
                read: true,
                write: true,
            },
        };
        // The kernel checks modes already (default_permissions); this
        // holds even if a mount is made without it.
        if mode.write && !self.may_write(req) {
            tracing::warn!(
                "refused a write open by uid {} (only uid {} and root may publish)",
                req.uid(),
                self.uid
            );
            return reply.error(errno(&FsError::Access));
        }
        match self
            .fs
            .open_for(ino.0, mode, crate::platform::thread_group(req.pid()))
        {
            Ok(fh) => {
                if let Some(reply) = self.try_passthrough(fh, reply) {
                    // direct_io: sizes change under open handles and each
                    // merged.log handle has its own order, so the page cache
                    // must not answer reads.
                    reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
                }
            }
            Err(e) => {
                log_error("open", &e);
                reply.error(errno(&e))
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(fh.0, offset, size as usize) {
            Ok(data) => reply.data(&data),
            Err(e) => {
                log_error("read", &e);
                reply.error(errno(&e))
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        tracing::trace!("write of {} bytes", data.len());
        match self.fs.write(fh.0, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => {
                tracing::warn!("write refused: {e}");
                reply.error(errno(&e))
            }
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self
            .fs
            .flush_from(fh.0, crate::platform::thread_group(req.pid()))
        {
            Ok(()) => reply.ok(),
            Err(e) => {
                tracing::warn!("close refused: {e}");
                reply.error(errno(&e))
            }
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Not flush: that publishes the unfinished last line, and an fsync
        // in the middle of a line must not split it in two messages.
        match self.fs.fsync(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => {
                log_error("fsync", &e);
                reply.error(errno(&e))
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.backing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_handle
            .remove(&fh.0);
        match self.fs.release(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => {
                log_error("release", &e);
                reply.error(errno(&e))
            }
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Who may use the mount is decided at mount time (allow_other);
        // within it, open() refuses what a file does not support.
        match self.fs.getattr(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        // No extended attributes; say so quietly (ls asks on every file).
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.fs.readdir(ino.0) {
            Ok(entries) => entries,
            Err(e) => {
                log_error("readdir", &e);
                return reply.error(errno(&e));
            }
        };
        let dots = [
            (ino.0, Kind::Dir, ".".to_string()),
            (crate::fs::ROOT_INO, Kind::Dir, "..".to_string()),
        ];
        for (i, (child, kind, name)) in dots
            .into_iter()
            .chain(entries)
            .enumerate()
            .skip(offset as usize)
        {
            let kind = match kind {
                Kind::Dir => FileType::Directory,
                Kind::File => FileType::RegularFile,
            };
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok()
    }
}
