//! Inode numbers and the names in the mount.
//!
//! The root's files have fixed numbers. Each feed gets a slot the first time
//! the mount sees it, stable for the life of the daemon, and five inodes in
//! that slot: its directory, `log`, `feed.jsonl`, `id` and `jobs/`. Files
//! that come and go with the data (`jobs/<source>.log`, `days/<day>.log`)
//! get numbers from [`DYNAMIC_BASE`] on, also stable for the daemon's life.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::feed::FeedId;
use crate::view::line::safe_name;

/// The root directory.
pub const ROOT: u64 = 1;
/// `publish`: write lines here to publish them.
pub const PUBLISH: u64 = 2;
/// `follow`: the followed feeds; write an id to follow it.
pub const FOLLOW: u64 = 3;
/// `whoami`: this machine's id.
pub const WHOAMI: u64 = 4;
/// `merged.log`: every machine's lines in timestamp order.
pub const MERGED: u64 = 5;
/// `status`: peers and replication progress.
pub const STATUS: u64 = 6;
/// `health`: every job on every machine, worst first.
pub const HEALTH: u64 = 7;
/// `days/`: one file per local day.
pub const DAYS: u64 = 8;
/// The first number of the files that come and go with the data.
const DYNAMIC_BASE: u64 = 1 << 40;
/// Inodes per feed slot.
const SLOT: u64 = 5;
/// `merged.log` of epoch N > 0 is inode `MERGED_EPOCHS + N`; of epoch 0,
/// [`MERGED`].
const MERGED_EPOCHS: u64 = 1 << 41;
/// The first feed slot's first inode.
const FEED_BASE: u64 = 1024;

/// The root's files, by name.
pub const ROOT_FILES: [(&str, u64); 6] = [
    ("publish", PUBLISH),
    ("follow", FOLLOW),
    ("whoami", WHOAMI),
    ("merged.log", MERGED),
    ("status", STATUS),
    ("health", HEALTH),
];

/// The inode of `merged.log` in `epoch` (see
/// [`crate::view::MergedSnapshot::epoch`]).
pub fn merged_ino(epoch: u64) -> u64 {
    if epoch == 0 {
        MERGED
    } else {
        MERGED_EPOCHS + epoch
    }
}

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inode {
    /// The root directory.
    Root,
    /// One of the root's files.
    RootFile(u64),
    /// A feed's directory.
    FeedDir(FeedId),
    /// A feed's `log`.
    FeedLog(FeedId),
    /// A feed's `feed.jsonl`.
    FeedJsonl(FeedId),
    /// A feed's `id`.
    FeedIdFile(FeedId),
    /// A feed's `jobs/` directory.
    JobsDir(FeedId),
    /// A feed's `jobs/<source>.log`: the feed, and the source's number
    /// (see [`Inodes::source`]).
    JobLog(FeedId, u64),
    /// `days/`.
    DaysDir,
    /// `days/<day>.log`.
    DayLog(chrono::NaiveDate),
}

/// A file that comes and goes with the data.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Dynamic {
    Job(FeedId, String),
    Day(chrono::NaiveDate),
}

/// The files in each feed's directory, with their slot offsets.
pub const FEED_FILES: [(&str, u64); 3] = [("log", 1), ("feed.jsonl", 2), ("id", 3)];
/// The slot offset of a feed's `jobs/` directory.
pub const JOBS_DIR: u64 = 4;

/// Assigns feed slots and directory names.
#[derive(Default)]
pub struct Inodes {
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    feeds: Vec<FeedId>,
    slot_of: HashMap<FeedId, u64>,
    dynamic: Vec<Dynamic>,
    dynamic_of: HashMap<Dynamic, u64>,
}

impl Slots {
    fn dynamic_ino(&mut self, file: Dynamic) -> u64 {
        if let Some(ino) = self.dynamic_of.get(&file) {
            return *ino;
        }
        let ino = DYNAMIC_BASE + self.dynamic.len() as u64;
        self.dynamic.push(file.clone());
        self.dynamic_of.insert(file, ino);
        ino
    }
}

impl Inodes {
    /// The slot of `feed`, assigned now if new.
    pub fn slot(&self, feed: &FeedId) -> u64 {
        let mut slots = self.lock();
        if let Some(slot) = slots.slot_of.get(feed) {
            return *slot;
        }
        let slot = slots.feeds.len() as u64;
        slots.feeds.push(*feed);
        slots.slot_of.insert(*feed, slot);
        slot
    }

    /// The inode number of `feed`'s directory (offset 0) or one of its files.
    pub fn feed_ino(&self, feed: &FeedId, offset: u64) -> u64 {
        FEED_BASE + self.slot(feed) * SLOT + offset
    }

    /// The inode number of `feed`'s `jobs/<source>.log`.
    pub fn job_ino(&self, feed: &FeedId, source: &str) -> u64 {
        self.lock()
            .dynamic_ino(Dynamic::Job(*feed, source.to_string()))
    }

    /// The inode number of `days/<day>.log`.
    pub fn day_ino(&self, day: chrono::NaiveDate) -> u64 {
        self.lock().dynamic_ino(Dynamic::Day(day))
    }

    /// The source that a [`Inode::JobLog`]'s number stands for.
    pub fn source(&self, number: u64) -> Option<String> {
        match self.lock().dynamic.get(number as usize)? {
            Dynamic::Job(_, source) => Some(source.clone()),
            Dynamic::Day(_) => None,
        }
    }

    /// What inode number `ino` is.
    pub fn resolve(&self, ino: u64) -> Option<Inode> {
        if ino == ROOT {
            return Some(Inode::Root);
        }
        if ROOT_FILES.iter().any(|(_, n)| *n == ino) {
            return Some(Inode::RootFile(ino));
        }
        if ino == DAYS {
            return Some(Inode::DaysDir);
        }
        if ino > MERGED_EPOCHS {
            return Some(Inode::RootFile(MERGED));
        }
        if let Some(number) = ino.checked_sub(DYNAMIC_BASE) {
            return match self.lock().dynamic.get(number as usize)? {
                Dynamic::Job(feed, _) => Some(Inode::JobLog(*feed, number)),
                Dynamic::Day(day) => Some(Inode::DayLog(*day)),
            };
        }
        let rel = ino.checked_sub(FEED_BASE)?;
        let feed = *self.lock().feeds.get((rel / SLOT) as usize)?;
        Some(match rel % SLOT {
            0 => Inode::FeedDir(feed),
            1 => Inode::FeedLog(feed),
            2 => Inode::FeedJsonl(feed),
            3 => Inode::FeedIdFile(feed),
            _ => Inode::JobsDir(feed),
        })
    }

    /// Directory names for `feeds` (in the order given, which should be
    /// stable): the feed's safe name, or its safe id, made unique with a
    /// `~2`, `~3`… suffix and kept clear of the root's own files.
    pub fn dir_names(
        &self,
        feeds: &[FeedId],
        names: &HashMap<FeedId, String>,
    ) -> Vec<(String, FeedId)> {
        let mut ordered: Vec<FeedId> = feeds.to_vec();
        ordered.sort_by_key(|f| self.slot(f));
        let mut taken: HashSet<String> = ROOT_FILES.iter().map(|(n, _)| n.to_string()).collect();
        taken.insert("days".into());
        let mut out = Vec::with_capacity(ordered.len());
        for feed in ordered {
            let base = names
                .get(&feed)
                .and_then(|n| safe_name(n))
                .unwrap_or_else(|| feed.file_safe());
            let mut name = base.clone();
            let mut n = 2;
            while taken.contains(&name) {
                name = format!("{base}~{n}");
                n += 1;
            }
            taken.insert(name.clone());
            out.push((name, feed));
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_clear_of_root_files() {
        let inodes = Inodes::default();
        let (a, b, c, d) = (
            FeedId([1; 32]),
            FeedId([2; 32]),
            FeedId([3; 32]),
            FeedId([4; 32]),
        );
        let names = HashMap::from([
            (a, "laptop".to_string()),
            (b, "laptop".to_string()),
            (c, "status".to_string()),
        ]);
        let dirs = inodes.dir_names(&[a, b, c, d], &names);
        let dir_names: Vec<&str> = dirs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(dir_names[..3], ["laptop", "laptop~2", "status~2"]);
        assert_eq!(dir_names[3], d.file_safe());
        let ino = inodes.feed_ino(&b, 1);
        assert_eq!(inodes.resolve(ino), Some(Inode::FeedLog(b)));
        let jobs = inodes.feed_ino(&b, JOBS_DIR);
        assert_eq!(inodes.resolve(jobs), Some(Inode::JobsDir(b)));
        let job = inodes.job_ino(&b, "backup");
        assert_eq!(inodes.job_ino(&b, "backup"), job, "stable");
        let Some(Inode::JobLog(feed, number)) = inodes.resolve(job) else {
            panic!("a job log")
        };
        assert_eq!(
            (feed, inodes.source(number).as_deref()),
            (b, Some("backup"))
        );
        let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 26).expect("a day");
        assert_eq!(
            inodes.resolve(inodes.day_ino(day)),
            Some(Inode::DayLog(day))
        );
    }
}
