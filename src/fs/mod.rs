//! The filesystem's behaviour, independent of FUSE: names, attributes,
//! handles, reads and writes. [`crate::fuse`] only translates.

pub mod handle;
pub mod inode;
pub mod linebuf;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::feed::FeedId;
use crate::node::{Node, NodeError};
use crate::publish::content_for_line;
use crate::query::status;
use crate::store::StoreError;
use handle::{Handle, Handles};
use inode::{
    merged_ino, Inode, Inodes, DAYS, FEED_FILES, FOLLOW, HEALTH, JOBS_DIR, MERGED, PUBLISH, ROOT,
    ROOT_FILES, STATUS, WHOAMI,
};
use linebuf::{LineBuffer, LineError};

/// Why a filesystem operation failed. Mapped to an errno in one place,
/// [`crate::fuse::errno`].
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// No such file.
    #[error("no such file")]
    NotFound,
    /// A directory operation on a file.
    #[error("not a directory")]
    NotDir,
    /// A file operation on a directory.
    #[error("is a directory")]
    IsDir,
    /// Writing a read-only file, or the like.
    #[error("permission denied")]
    Access,
    /// The written data cannot be used.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The written data is too large.
    #[error("too large: {0}")]
    TooLarge(String),
    /// Storage failed.
    #[error("I/O error: {0}")]
    Io(String),
    /// The handle is not open.
    #[error("bad file handle")]
    BadHandle,
    /// The inode is of an earlier epoch of `merged.log`.
    #[error("stale inode")]
    Stale,
}

impl From<NodeError> for FsError {
    fn from(e: NodeError) -> Self {
        use crate::feed::FeedError;
        match e {
            NodeError::Feed(FeedError::TooLarge(_))
            | NodeError::Store(StoreError::Rejected(FeedError::TooLarge(_))) => {
                FsError::TooLarge(e.to_string())
            }
            NodeError::Feed(_) | NodeError::Store(StoreError::Rejected(_)) => {
                FsError::Invalid(e.to_string())
            }
            other => FsError::Io(other.to_string()),
        }
    }
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> Self {
        FsError::from(NodeError::Store(e))
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        FsError::Io(e.to_string())
    }
}

impl From<LineError> for FsError {
    fn from(e: LineError) -> Self {
        match e {
            LineError::TooLong => FsError::TooLarge(e.to_string()),
            LineError::NotUtf8 { .. } => FsError::Invalid(e.to_string()),
        }
    }
}

/// Directory or file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
}

/// What `stat` shows.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Directory or file.
    pub kind: Kind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub perm: u16,
    /// Last change.
    pub mtime: SystemTime,
}

/// How a file is opened.
#[derive(Clone, Copy, Debug)]
pub struct OpenMode {
    /// For reading.
    pub read: bool,
    /// For writing.
    pub write: bool,
}

/// The filesystem.
pub struct ScuttleFs {
    node: Arc<Node>,
    inodes: Inodes,
    handles: Handles,
    /// The last `health` table: when it was made, as of which change.
    health_cache: std::sync::Mutex<Option<(std::time::Instant, f64, String)>>,
}

impl ScuttleFs {
    /// A filesystem over `node`, which must have been opened with views.
    pub fn new(node: Arc<Node>) -> Self {
        let inodes = Inodes::default();
        for (feed, _) in node.store.feeds() {
            inodes.slot(&feed);
        }
        ScuttleFs {
            node,
            inodes,
            handles: Handles::default(),
            health_cache: std::sync::Mutex::new(None),
        }
    }

    /// The node behind the mount.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The inode a root file has now: `merged.log`'s changes with its
    /// epoch.
    fn root_file_ino(&self, ino: u64) -> u64 {
        match (ino, self.views()) {
            (MERGED, Ok(views)) => merged_ino(views.merged_epoch()),
            _ => ino,
        }
    }

    /// Looks `name` up in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        match self.inodes.resolve(parent).ok_or(FsError::NotFound)? {
            Inode::Root => {
                if let Some((_, ino)) = ROOT_FILES.iter().find(|(n, _)| *n == name) {
                    return self.getattr(self.root_file_ino(*ino));
                }
                if name == "days" {
                    return self.getattr(DAYS);
                }
                let dirs = self.feed_dirs();
                let (_, feed) = dirs
                    .iter()
                    .find(|(n, _)| n == name)
                    .ok_or(FsError::NotFound)?;
                self.getattr(self.inodes.feed_ino(feed, 0))
            }
            Inode::FeedDir(feed) => {
                if name == "jobs" {
                    return self.getattr(self.inodes.feed_ino(&feed, JOBS_DIR));
                }
                let (_, offset) = FEED_FILES
                    .iter()
                    .find(|(n, _)| *n == name)
                    .ok_or(FsError::NotFound)?;
                self.getattr(self.inodes.feed_ino(&feed, *offset))
            }
            Inode::JobsDir(feed) => {
                let (ino, _) = self
                    .job_files(&feed)?
                    .into_iter()
                    .find(|(_, n)| n == name)
                    .ok_or(FsError::NotFound)?;
                self.getattr(ino)
            }
            Inode::DaysDir => {
                let (ino, _) = self
                    .day_files()?
                    .into_iter()
                    .find(|(_, n)| n == name)
                    .ok_or(FsError::NotFound)?;
                self.getattr(ino)
            }
            _ => Err(FsError::NotDir),
        }
    }

    /// The attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        let inode = self.inodes.resolve(ino).ok_or(FsError::NotFound)?;
        let mtime = self.mtime();
        let file = |size: u64, perm: u16| Attr {
            ino,
            kind: Kind::File,
            size,
            perm,
            mtime,
        };
        let views = self.views()?;
        Ok(match inode {
            Inode::Root => Attr {
                ino,
                kind: Kind::Dir,
                size: 0,
                perm: 0o755,
                mtime,
            },
            Inode::FeedDir(_) | Inode::JobsDir(_) | Inode::DaysDir => Attr {
                ino,
                kind: Kind::Dir,
                size: 0,
                perm: 0o555,
                mtime,
            },
            Inode::JobLog(feed, number) => {
                let source = self.inodes.source(number).ok_or(FsError::NotFound)?;
                file(views.job_log_len(&feed, &source), 0o444)
            }
            Inode::DayLog(day) => file(views.day_len(day), 0o444),
            Inode::RootFile(PUBLISH) => file(0, 0o200),
            Inode::RootFile(FOLLOW) => file(self.follow_text().len() as u64, 0o644),
            Inode::RootFile(WHOAMI) => file(self.whoami_text().len() as u64, 0o444),
            Inode::RootFile(MERGED) => file(views.merged_len(), 0o444),
            Inode::RootFile(STATUS) => file(self.status_text().len() as u64, 0o444),
            Inode::RootFile(HEALTH) => file(self.health_text().len() as u64, 0o444),
            Inode::RootFile(_) => return Err(FsError::NotFound),
            Inode::FeedLog(feed) => file(views.feed_log_len(&feed), 0o444),
            Inode::FeedJsonl(feed) => file(views.jsonl_len(&self.node.store, &feed)?, 0o444),
            Inode::FeedIdFile(feed) => file(feed.to_string().len() as u64 + 1, 0o444),
        })
    }

    /// The entries of directory `ino`, `.` and `..` excluded.
    pub fn readdir(&self, ino: u64) -> Result<Vec<(u64, Kind, String)>, FsError> {
        match self.inodes.resolve(ino).ok_or(FsError::NotFound)? {
            Inode::Root => {
                let mut out: Vec<(u64, Kind, String)> = ROOT_FILES
                    .iter()
                    .map(|(name, ino)| (self.root_file_ino(*ino), Kind::File, name.to_string()))
                    .collect();
                out.push((DAYS, Kind::Dir, "days".into()));
                for (name, feed) in self.feed_dirs() {
                    out.push((self.inodes.feed_ino(&feed, 0), Kind::Dir, name));
                }
                Ok(out)
            }
            Inode::FeedDir(feed) => {
                let mut out: Vec<(u64, Kind, String)> = FEED_FILES
                    .iter()
                    .map(|(name, offset)| {
                        (
                            self.inodes.feed_ino(&feed, *offset),
                            Kind::File,
                            name.to_string(),
                        )
                    })
                    .collect();
                out.push((
                    self.inodes.feed_ino(&feed, JOBS_DIR),
                    Kind::Dir,
                    "jobs".into(),
                ));
                Ok(out)
            }
            Inode::JobsDir(feed) => Ok(self
                .job_files(&feed)?
                .into_iter()
                .map(|(ino, name)| (ino, Kind::File, name))
                .collect()),
            Inode::DaysDir => Ok(self
                .day_files()?
                .into_iter()
                .map(|(ino, name)| (ino, Kind::File, name))
                .collect()),
            _ => Err(FsError::NotDir),
        }
    }

    /// Opens `ino`; returns the handle number.
    pub fn open(&self, ino: u64, mode: OpenMode) -> Result<u64, FsError> {
        let inode = self.inodes.resolve(ino).ok_or(FsError::NotFound)?;
        let writable = matches!(inode, Inode::RootFile(PUBLISH) | Inode::RootFile(FOLLOW));
        if mode.write && !writable {
            return Err(FsError::Access);
        }
        let handle = match inode {
            Inode::Root | Inode::FeedDir(_) | Inode::JobsDir(_) | Inode::DaysDir => {
                return Err(FsError::IsDir)
            }
            Inode::JobLog(feed, number) => {
                Handle::JobLog(feed, self.inodes.source(number).ok_or(FsError::NotFound)?)
            }
            Inode::DayLog(day) => Handle::Day(self.views()?.day_snapshot(day)?),
            Inode::RootFile(PUBLISH) => Handle::Publish(LineBuffer::default()),
            Inode::RootFile(FOLLOW) => {
                Handle::Follow(self.follow_text().into_bytes(), LineBuffer::default())
            }
            Inode::RootFile(WHOAMI) => Handle::Bytes(self.whoami_text().into_bytes()),
            Inode::RootFile(MERGED) => {
                let snapshot = self.views()?.merged_snapshot()?;
                // A lookup made in an earlier epoch: the kernel looks the
                // name up again.
                if merged_ino(snapshot.epoch()) != ino {
                    return Err(FsError::Stale);
                }
                Handle::Merged(snapshot)
            }
            Inode::RootFile(STATUS) => Handle::Bytes(self.status_text().into_bytes()),
            Inode::RootFile(HEALTH) => Handle::Bytes(self.health_text().into_bytes()),
            Inode::RootFile(_) => return Err(FsError::NotFound),
            Inode::FeedLog(feed) => Handle::FeedLog(feed),
            Inode::FeedJsonl(feed) => Handle::FeedJsonl(feed),
            Inode::FeedIdFile(feed) => Handle::Bytes(format!("{feed}\n").into_bytes()),
        };
        Ok(self.handles.insert(handle))
    }

    /// [`ScuttleFs::open`] for process `opener` (its thread group id),
    /// whose own closes of the handle then publish its unfinished last line
    /// (see [`ScuttleFs::flush_from`]).
    pub fn open_for(&self, ino: u64, mode: OpenMode, opener: u32) -> Result<u64, FsError> {
        let fh = self.open(ino, mode)?;
        self.handles.set_opener(fh, opener);
        Ok(fh)
    }

    /// A file whose bytes are exactly what handle `fh` reads, for the
    /// kernel to read directly (FUSE passthrough), with a number that
    /// names the file among those this returns.
    pub fn backing_file(&self, fh: u64) -> Option<(u64, Arc<std::fs::File>)> {
        let handle = self.handles.get(fh)?;
        let handle = handle.lock().unwrap_or_else(|e| e.into_inner());
        match &*handle {
            Handle::Merged(snapshot) => snapshot.direct_file(),
            _ => None,
        }
    }

    /// Reads up to `size` bytes at `offset` through handle `fh`.
    pub fn read(&self, fh: u64, offset: u64, size: usize) -> Result<Vec<u8>, FsError> {
        let handle = self.handles.get(fh).ok_or(FsError::BadHandle)?;
        let mut handle = handle.lock().unwrap_or_else(|e| e.into_inner());
        let views = self.views()?;
        let slice = |bytes: &[u8]| {
            let start = (offset as usize).min(bytes.len());
            let end = start.saturating_add(size).min(bytes.len());
            bytes[start..end].to_vec()
        };
        Ok(match &mut *handle {
            Handle::Publish(_) => Vec::new(),
            Handle::Follow(bytes, _) | Handle::Bytes(bytes) => slice(bytes),
            Handle::Merged(snapshot) => views.read_merged(snapshot, offset, size)?,
            Handle::FeedLog(feed) => views.read_feed_log(feed, offset, size)?,
            Handle::FeedJsonl(feed) => views.read_jsonl(&self.node.store, feed, offset, size)?,
            Handle::JobLog(feed, source) => views.read_job_log(feed, source, offset, size)?,
            Handle::Day(snapshot) => views.read_day(snapshot, offset, size)?,
        })
    }

    /// Writes `data` through handle `fh`: complete lines are published now.
    /// On error nothing from `data` is published, and the handle keeps the
    /// unfinished line it had, so that nothing written before is lost.
    pub fn write(&self, fh: u64, data: &[u8]) -> Result<usize, FsError> {
        let handle = self.handles.get(fh).ok_or(FsError::BadHandle)?;
        let mut handle = handle.lock().unwrap_or_else(|e| e.into_inner());
        let (buf, kind) = match &mut *handle {
            Handle::Publish(buf) => (buf, LineKind::Publish),
            Handle::Follow(_, buf) => (buf, LineKind::Follow),
            _ => return Err(FsError::Access),
        };
        let lines = buf.split(data)?;
        match self.publish_lines(kind, &lines) {
            Ok(()) => buf.take(data),
            Err(failure) => {
                // Had the store taken some of the lines, the first one (with
                // what was buffered) is among them: keeping it buffered
                // would publish it twice.
                if failure.stored_some {
                    buf.take(data);
                }
                return Err(failure.error);
            }
        }
        Ok(data.len())
    }

    /// `fsync`: makes every complete line written through `fh` durable. An
    /// unfinished last line stays buffered, for the next write to complete.
    pub fn fsync(&self, fh: u64) -> Result<(), FsError> {
        let handle = self.handles.get(fh).ok_or(FsError::BadHandle)?;
        let handle = handle.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(&*handle, Handle::Publish(_) | Handle::Follow(..)) {
            self.node.flush()?;
        }
        Ok(())
    }

    /// Called at every `close()`: publishes an unfinished last line and makes
    /// everything written durable before `close()` returns.
    pub fn flush(&self, fh: u64) -> Result<(), FsError> {
        let handle = self.handles.get(fh).ok_or(FsError::BadHandle)?;
        let mut handle = handle.lock().unwrap_or_else(|e| e.into_inner());
        let (buf, kind) = match &mut *handle {
            Handle::Publish(buf) => (buf, LineKind::Publish),
            Handle::Follow(_, buf) => (buf, LineKind::Follow),
            _ => return Ok(()),
        };
        let last: Vec<String> = buf.last_line()?.into_iter().collect();
        match self.publish_lines(kind, &last) {
            Ok(()) => buf.clear(),
            Err(failure) => {
                // Kept unless stored, so that release (which flushes again)
                // retries it.
                if failure.stored_some {
                    buf.clear();
                }
                return Err(failure.error);
            }
        }
        self.node.flush()?;
        Ok(())
    }

    /// Called at every `close()` of a descriptor of `fh`, by process
    /// `closer`. The kernel also flushes when a process that merely
    /// inherited the descriptor closes it: a child at `exec` (even of a
    /// close-on-exec descriptor) or at exit. Such a close must not cut the
    /// writer's line in two, so it only makes complete lines durable; the
    /// unfinished line waits for the opener's own close, or the release.
    pub fn flush_from(&self, fh: u64, closer: u32) -> Result<(), FsError> {
        match self.handles.opener(fh) {
            Some(opener) if opener != closer => self.fsync(fh),
            _ => self.flush(fh),
        }
    }

    /// Called once the last descriptor of `fh` is closed.
    pub fn release(&self, fh: u64) -> Result<(), FsError> {
        let flushed = self.flush(fh);
        self.handles.remove(fh);
        flushed
    }

    /// `truncate`: allowed (and a no-op) on the writable files, so that
    /// `>` works as well as `>>`.
    pub fn truncate(&self, ino: u64, size: u64) -> Result<Attr, FsError> {
        match self.inodes.resolve(ino).ok_or(FsError::NotFound)? {
            Inode::RootFile(PUBLISH) | Inode::RootFile(FOLLOW) if size == 0 => self.getattr(ino),
            Inode::Root | Inode::FeedDir(_) | Inode::JobsDir(_) | Inode::DaysDir => {
                Err(FsError::IsDir)
            }
            _ => Err(FsError::Access),
        }
    }

    /// Publishes what `lines`, written to a `kind` file, mean.
    fn publish_lines(&self, kind: LineKind, lines: &[String]) -> Result<(), PublishFailure> {
        if lines.is_empty() {
            return Ok(());
        }
        let outcome = self.publish_lines_unnoted(kind, lines);
        if let Err(failure) = &outcome {
            let file = match kind {
                LineKind::Publish => "publish",
                LineKind::Follow => "follow",
            };
            self.node.note_refused(file, failure.error.to_string());
        }
        outcome
    }

    fn publish_lines_unnoted(
        &self,
        kind: LineKind,
        lines: &[String],
    ) -> Result<(), PublishFailure> {
        match kind {
            LineKind::Publish => {
                let none = Map::new();
                let contents = lines
                    .iter()
                    .filter_map(|line| content_for_line(line, &none));
                self.publish_contents(contents, "publish", lines.len())
            }
            LineKind::Follow => {
                let contents = follow_contents(lines).map_err(|error| PublishFailure {
                    error,
                    stored_some: false,
                })?;
                self.publish_contents(contents, "follow", lines.len())
            }
        }
    }

    fn publish_contents<C>(
        &self,
        contents: C,
        file: &str,
        lines: usize,
    ) -> Result<(), PublishFailure>
    where
        C: IntoIterator<Item = Value>,
        C::IntoIter: Clone,
    {
        let mut handed_over = false;
        self.node
            .publish_with(contents, |stored| handed_over |= !stored.is_empty())
            .map(|_| ())
            .map_err(|e| {
                tracing::warn!("{file}: refused a write of {lines} line(s): {e}");
                // The node hands over whatever it stored, even when a later
                // chunk fails, except when its views fail after storing.
                let stored_some = handed_over || matches!(e, NodeError::View(_));
                PublishFailure {
                    error: FsError::from(e),
                    stored_some,
                }
            })
    }

    /// Every stored feed's directory name.
    fn feed_dirs(&self) -> Vec<(String, FeedId)> {
        let feeds: Vec<FeedId> = self
            .node
            .store
            .feeds()
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        self.inodes.dir_names(&feeds, &self.node.names())
    }

    /// `feed`'s job files: inode and name (`<source>.log`, the source made
    /// safe as a file name; of two sources that look alike, the first).
    fn job_files(&self, feed: &FeedId) -> Result<Vec<(u64, String)>, FsError> {
        let mut taken = std::collections::HashSet::new();
        Ok(self
            .views()?
            .job_sources(feed)
            .into_iter()
            .filter_map(|source| {
                let name = format!("{}.log", crate::view::line::safe_name(&source)?);
                taken
                    .insert(name.clone())
                    .then(|| (self.inodes.job_ino(feed, &source), name))
            })
            .collect())
    }

    /// `days/`'s files: inode and name (`2026-11-26.log`).
    fn day_files(&self) -> Result<Vec<(u64, String)>, FsError> {
        Ok(self
            .views()?
            .days()
            .into_iter()
            .map(|(day, _)| (self.inodes.day_ino(day), format!("{day}.log")))
            .collect())
    }

    fn whoami_text(&self) -> String {
        format!("{}\n", self.node.id())
    }

    fn follow_text(&self) -> String {
        self.node
            .following()
            .iter()
            .map(|f| format!("{f}\n"))
            .collect()
    }

    /// The table, made again only when a message arrived or a second
    /// passed: a `stat` and the `open` that follows it then agree on its
    /// size, and a line just published shows at once.
    fn health_text(&self) -> String {
        let mut cached = self.health_cache.lock().unwrap_or_else(|e| e.into_inner());
        let changed = self.node.last_change_ms();
        if let Some((made, as_of, text)) = &*cached {
            if *as_of == changed && made.elapsed() < Duration::from_secs(1) {
                return text.clone();
            }
        }
        let now = crate::clock::now_ms();
        let text = crate::query::health(&self.node, now, self.node.config.max_silence_ms)
            .map(|report| report.render())
            .unwrap_or_default();
        *cached = Some((std::time::Instant::now(), changed, text.clone()));
        text
    }

    fn status_text(&self) -> String {
        status::render(&status::report(&self.node))
    }

    fn views(&self) -> Result<&crate::view::Views, FsError> {
        self.node
            .views()
            .ok_or_else(|| FsError::Io("the node was opened without views".into()))
    }

    /// Every stat asks for this (attributes are not cached): keep it O(1),
    /// and based on our clock, not on timestamps peers claim.
    fn mtime(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.node.last_change_ms().max(0.0) as u64)
    }
}

/// Which writable file lines were written to.
#[derive(Clone, Copy)]
enum LineKind {
    Publish,
    Follow,
}

/// A publish that failed, and whether the store took some of it anyway.
struct PublishFailure {
    error: FsError,
    stored_some: bool,
}

/// The contact messages that lines written to `follow` ask for: `@ID`
/// follows, `-@ID` unfollows, blank lines are skipped.
/// Public for the `follow_line` fuzz target.
pub fn follow_contents(lines: &[String]) -> Result<Vec<Value>, FsError> {
    let mut contents = Vec::new();
    for line in lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
        let (following, id) = match line.strip_prefix('-') {
            Some(rest) => (false, rest.trim()),
            None => (true, line),
        };
        let feed = FeedId::parse(id).map_err(|e| {
            tracing::warn!("follow: refused {line:?}: {e}");
            FsError::Invalid(format!("{line:?}: {e}"))
        })?;
        let mut content = Map::new();
        content.insert("type".into(), "contact".into());
        content.insert("contact".into(), feed.to_string().into());
        content.insert("following".into(), following.into());
        contents.push(Value::Object(content));
    }
    Ok(contents)
}

/// The root inode number.
pub const ROOT_INO: u64 = ROOT;
