//! The views' checkpoint: what they held at a point of the store's log,
//! so that a start reads only the messages committed after it.
//!
//! It is a hint, as the job table's cache is: one that the store, the line
//! file or the merged file does not bear out is thrown away, and the views
//! are built again from every message.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::runs::FeedLines;
use super::sorted::MergedCheckpoint;
use super::ViewState;
use crate::feed::FeedId;
use crate::store::Store;

/// Changes whenever the format or the meaning of what is saved does.
/// 3: lines with implausible times are placed where they arrived
/// (`crate::clock`), so an older checkpoint's order may differ.
const VERSION: u32 = 3;

/// What the views held, and where in the log.
#[derive(Serialize, Deserialize)]
pub struct Checkpoint {
    version: u32,
    /// Where the last message the views took ends in the log.
    pub log_end: u64,
    /// That message: its record's offset and its id, checked against the
    /// store so that a checkpoint of another log is never taken for this one.
    last: Option<(u64, String)>,
    /// The line file's length.
    pub file_len: u64,
    seen: Vec<(FeedId, u64)>,
    names: Vec<(FeedId, String)>,
    feeds: Vec<(FeedId, FeedLines)>,
    jobs: Vec<(FeedId, String, FeedLines)>,
    /// The number the next view's runs file gets.
    next_runs: u64,
    /// Days as days since 0001-01-01, with their bytes.
    days: Vec<(i32, u64)>,
    /// The merged file.
    pub merged: MergedCheckpoint,
}

impl Checkpoint {
    /// A checkpoint of `state`, with the merged file's.
    pub fn of(state: &ViewState, merged: MergedCheckpoint) -> Checkpoint {
        use chrono::Datelike;
        Checkpoint {
            version: VERSION,
            log_end: state.log_end,
            last: state.last.map(|(offset, key)| (offset, key.to_string())),
            file_len: state.file_len,
            seen: state.seen.iter().map(|(f, s)| (*f, *s)).collect(),
            names: state.names.iter().map(|(f, n)| (*f, n.clone())).collect(),
            feeds: state.feeds.iter().map(|(f, l)| (*f, l.clone())).collect(),
            jobs: state
                .jobs
                .iter()
                .flat_map(|(f, jobs)| jobs.iter().map(|(s, l)| (*f, s.clone(), l.clone())))
                .collect(),
            next_runs: state.next_runs,
            days: state
                .days
                .iter()
                .map(|(d, n)| (d.num_days_from_ce(), *n))
                .collect(),
            merged,
        }
    }

    /// The views' state it describes.
    pub fn into_state(self) -> ViewState {
        let mut jobs: HashMap<FeedId, HashMap<String, FeedLines>> = HashMap::new();
        for (feed, source, lines) in self.jobs {
            jobs.entry(feed).or_default().insert(source, lines);
        }
        let days: BTreeMap<NaiveDate, u64> = self
            .days
            .into_iter()
            .filter_map(|(d, n)| Some((NaiveDate::from_num_days_from_ce_opt(d)?, n)))
            .collect();
        ViewState {
            log_end: self.log_end,
            last: self
                .last
                .and_then(|(offset, key)| Some((offset, crate::feed::MsgId::parse(&key).ok()?))),
            seen: self.seen.into_iter().collect(),
            names: self.names.into_iter().collect(),
            file_len: self.file_len,
            feeds: self.feeds.into_iter().collect(),
            jobs,
            next_runs: self.next_runs,
            days,
            ..ViewState::default()
        }
    }
}

/// Where the checkpoint of the line file at `line_file` is kept.
pub fn path(line_file: &Path) -> PathBuf {
    super::beside(line_file, ".state")
}

/// Reads the checkpoint of the views at `line_file`: `None` when there is
/// none, an error saying why when there is one the store does not bear out.
pub fn load(line_file: &Path, store: &Store) -> Result<Option<Checkpoint>, String> {
    let bytes = match std::fs::read(path(line_file)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    // The version first: an older checkpoint would not parse as this one.
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let versioned: Versioned = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if versioned.version != VERSION {
        return Err(format!(
            "it is of version {}, not {VERSION}",
            versioned.version
        ));
    }
    let saved: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if saved.log_end > store.log_end() {
        return Err("it holds messages the store lacks".into());
    }
    match &saved.last {
        Some((offset, key)) => {
            let first = store.log_from(*offset).next();
            let matches = matches!(first, Some(Ok((_, end, ref raw)))
                if end == saved.log_end && raw.key.to_string() == *key);
            if !matches {
                return Err("its last message is not the store's".into());
            }
        }
        None if saved.log_end != 0 => return Err("it names no last message".into()),
        None => {}
    }
    for (feed, seq) in &saved.seen {
        if store.tip(feed).is_none_or(|tip| tip.sequence < *seq) {
            return Err(format!("it holds more of {feed} than the store"));
        }
    }
    let line_len = std::fs::metadata(line_file)
        .map_err(|e| e.to_string())?
        .len();
    if line_len < saved.file_len {
        return Err("the line file is shorter than it says".into());
    }
    Ok(Some(saved))
}

/// Writes `saved` for the views at `line_file`, durably, replacing the last.
pub fn save(line_file: &Path, saved: &Checkpoint) -> io::Result<()> {
    // Written as it is made: with a million lines waiting for a merge, the
    // text would be some 45 MB.
    crate::config::replace_file_with(&path(line_file), |file| {
        let mut out = io::BufWriter::new(file);
        serde_json::to_writer(&mut out, saved).map_err(io::Error::other)?;
        io::Write::flush(&mut out)
    })
}
