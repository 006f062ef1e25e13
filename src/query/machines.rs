//! Machines: every feed this node holds, when each was last heard from,
//! how much of it is held, and which are connected now.

use crate::feed::FeedId;
use crate::node::Node;
use crate::view::line::label;

/// One machine, as the status page lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct Machine {
    /// Its feed.
    pub feed: FeedId,
    /// Its label (its name, or its id made safe).
    pub name: String,
    /// When it was last heard from (its latest message, placed by
    /// [`crate::clock`] when its time cannot be right).
    pub last_heard_ms: f64,
    /// How many of its messages are held.
    pub messages: u64,
    /// This machine.
    pub is_self: bool,
    /// Connected to it now.
    pub connected: bool,
}

/// Every machine, this one first, then by name; when each was last heard
/// from is taken from `heard` (a health report's) where it has it, so a
/// page does not read every feed's latest message twice.
pub fn machines(node: &Node, heard: &std::collections::HashMap<FeedId, f64>) -> Vec<Machine> {
    let names = node.names();
    let me = node.id();
    let connected: std::collections::HashSet<FeedId> = node
        .net
        .read()
        .map(|net| net.peers.iter().map(|p| p.id).collect())
        .unwrap_or_default();
    let mut out: Vec<Machine> = node
        .store
        .feeds()
        .into_iter()
        .map(|(feed, tip)| Machine {
            feed,
            name: label(&feed, &names),
            last_heard_ms: heard
                .get(&feed)
                .copied()
                .unwrap_or_else(|| super::health::last_heard(node, &feed, &tip)),
            messages: tip.sequence,
            is_self: feed == me,
            connected: connected.contains(&feed),
        })
        .collect();
    out.sort_by(|a, b| (!a.is_self, &a.name).cmp(&(!b.is_self, &b.name)));
    out
}
