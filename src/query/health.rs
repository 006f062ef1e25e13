//! Health: every job's and machine's state, as `mount/health`,
//! `scuttlefs health`, the alerts and the web page all see it.

use crate::feed::{FeedId, FeedTip};
use crate::health::Report;
use crate::node::Node;

/// Something noticed about a machine beyond its jobs.
#[derive(Clone, Debug)]
pub struct MachineNote {
    /// Its feed.
    pub feed: FeedId,
    /// What it is.
    pub kind: NoteKind,
    /// When it was noticed or measured (ms since the epoch).
    pub at_ms: f64,
    /// For a person.
    pub text: String,
}

/// What a [`MachineNote`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteKind {
    /// The feed forked.
    Fork,
    /// The machine's clock is off.
    Clock,
    /// A peer holds more of this machine's own feed.
    OwnFeedBehind,
}

/// The health of every job and machine at `now_ms` (see
/// [`crate::health`]); `None` on a node opened without views.
pub fn health(node: &Node, now_ms: f64, max_silence_ms: f64) -> Option<Report> {
    use crate::health::State;
    let names = node.names();
    let me = node.id();
    let wanted = node.wanted_feeds();
    let machines: Vec<(FeedId, f64)> = node
        .store
        .feeds()
        .into_iter()
        .filter(|(feed, _)| *feed != me && wanted.contains_key(feed))
        .map(|(feed, tip)| (feed, last_heard(node, &feed, &tip)))
        .collect();
    let mut report =
        node.with_jobs(|jobs| jobs.report(now_ms, &names, &machines, max_silence_ms))?;
    let label = |feed: &FeedId| crate::view::line::label(feed, &names);
    for note in machine_notes(node) {
        let state = match note.kind {
            NoteKind::Fork => State::Forked,
            NoteKind::Clock => State::Clock,
            NoteKind::OwnFeedBehind => State::Forked,
        };
        report.add_machine_note(state, label(&note.feed), note.feed, note.at_ms, note.text);
    }
    Some(report)
}

/// When a machine was last heard from: its latest message's time, or
/// when it arrived if that time cannot be right (`crate::clock`).
pub(super) fn last_heard(node: &Node, feed: &FeedId, tip: &FeedTip) -> f64 {
    match node.store.get_raw(feed, tip.sequence) {
        Ok(Some(raw)) => crate::clock::placement_ms(tip.timestamp, raw.received_ms),
        _ => tip.timestamp,
    }
}

/// What this node noticed about machines beyond their jobs: forked
/// feeds, clocks that are off, and its own feed held further by a peer.
pub fn machine_notes(node: &Node) -> Vec<MachineNote> {
    let me = node.id();
    let mut notes = Vec::new();
    for (feed, fork) in node.notices.forks() {
        let text = if feed == me {
            format!(
                "this machine's feed forked at sequence {}: it no longer publishes (see status)",
                fork.sequence
            )
        } else {
            format!(
                "its feed forked at sequence {}: restored from a backup? Lines past the fork are not shown",
                fork.sequence
            )
        };
        notes.push(MachineNote {
            feed,
            kind: NoteKind::Fork,
            at_ms: fork.seen_ms,
            text,
        });
    }
    if let Some(behind) = node.own_feed_progress(false) {
        notes.push(MachineNote {
            feed: me,
            kind: NoteKind::OwnFeedBehind,
            at_ms: behind.progress_ms,
            text: format!(
                "{} holds this machine's feed up to {}, past {}: fetching it; publishing waits",
                behind.peer, behind.theirs, behind.ours
            ),
        });
    }
    let mut noted: std::collections::HashSet<FeedId> = std::collections::HashSet::new();
    for (feed, skew) in node.notices.skews() {
        noted.insert(feed);
        notes.push(MachineNote {
            feed,
            kind: NoteKind::Clock,
            at_ms: skew.at_ms,
            text: format!(
                "its clock is {} (measured while connected)",
                skew.describe()
            ),
        });
    }
    for (feed, tip) in node.store.feeds() {
        if feed == me || noted.contains(&feed) {
            continue;
        }
        let Ok(Some(raw)) = node.store.get_raw(&feed, tip.sequence) else {
            continue;
        };
        if let Some(why) = crate::clock::implausibility(tip.timestamp, raw.received_ms) {
            notes.push(MachineNote {
                feed,
                kind: NoteKind::Clock,
                at_ms: raw.received_ms,
                text: format!(
                    "its latest message claims {}: {why}; its lines are placed where they arrived",
                    crate::view::line::format_timestamp(tip.timestamp)
                ),
            });
        }
    }
    notes
}
