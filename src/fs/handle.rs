//! Open file handles and what each one remembers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::feed::FeedId;
use crate::view::{DaySnapshot, MergedSnapshot};

use super::linebuf::LineBuffer;

/// The state of one open file.
pub enum Handle {
    /// `publish`, open for writing: the unfinished last line.
    Publish(LineBuffer),
    /// `follow`: its content at open, and the unfinished last line written.
    Follow(Vec<u8>, LineBuffer),
    /// `merged.log`: the order it had at open.
    Merged(MergedSnapshot),
    /// A feed's `log`.
    FeedLog(FeedId),
    /// A feed's `feed.jsonl`.
    FeedJsonl(FeedId),
    /// A feed's `jobs/<source>.log`.
    JobLog(FeedId, String),
    /// `days/<day>.log`: the order it had at open, and later lines found.
    Day(DaySnapshot),
    /// Content fixed at open: `whoami`, `status`, `id`.
    Bytes(Vec<u8>),
}

/// All open handles, by number.
#[derive(Default)]
pub struct Handles {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Mutex<Handle>>>>,
    /// The process (thread group) that opened each handle, where known.
    openers: Mutex<HashMap<u64, u32>>,
}

impl Handles {
    /// Registers `handle` and returns its number.
    pub fn insert(&self, handle: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock().insert(fh, Arc::new(Mutex::new(handle)));
        fh
    }

    /// The handle numbered `fh`.
    pub fn get(&self, fh: u64) -> Option<Arc<Mutex<Handle>>> {
        self.lock().get(&fh).cloned()
    }

    /// Forgets handle `fh`, returning it.
    pub fn remove(&self, fh: u64) -> Option<Arc<Mutex<Handle>>> {
        self.lock_openers().remove(&fh);
        self.lock().remove(&fh)
    }

    /// Records that process `opener` opened handle `fh`.
    pub fn set_opener(&self, fh: u64, opener: u32) {
        self.lock_openers().insert(fh, opener);
    }

    /// The process that opened handle `fh`, if recorded.
    pub fn opener(&self, fh: u64) -> Option<u32> {
        self.lock_openers().get(&fh).copied()
    }

    fn lock_openers(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u32>> {
        self.openers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Mutex<Handle>>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}
