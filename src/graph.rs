//! The follow graph, and which feeds lie within a number of hops.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::feed::FeedId;

/// Who follows whom, from the latest contact message of each pair.
#[derive(Default, Clone, Debug)]
pub struct FollowGraph {
    follows: HashMap<FeedId, HashSet<FeedId>>,
}

impl FollowGraph {
    /// A graph of these `(author, contact, following)` edges, later edges
    /// overriding earlier ones.
    pub fn from_edges(edges: impl IntoIterator<Item = (FeedId, FeedId, bool)>) -> Self {
        let mut graph = FollowGraph::default();
        for (author, contact, following) in edges {
            graph.set(author, contact, following);
        }
        graph
    }

    /// Records that `author` follows (or stopped following) `contact`.
    /// Returns whether anything changed.
    pub fn set(&mut self, author: FeedId, contact: FeedId, following: bool) -> bool {
        let set = self.follows.entry(author).or_default();
        if following {
            set.insert(contact)
        } else {
            set.remove(&contact)
        }
    }

    /// The feeds `author` follows, sorted.
    pub fn followed_by(&self, author: &FeedId) -> Vec<FeedId> {
        let mut out: Vec<FeedId> = self
            .follows
            .get(author)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Every feed within `hops` follow steps of `origin`, with its distance.
    /// `origin` itself is at distance 0.
    pub fn within(&self, origin: &FeedId, hops: u32) -> HashMap<FeedId, u32> {
        let mut dist = HashMap::from([(*origin, 0)]);
        let mut queue = VecDeque::from([*origin]);
        while let Some(feed) = queue.pop_front() {
            let d = dist[&feed];
            if d >= hops {
                continue;
            }
            for next in self.follows.get(&feed).into_iter().flatten() {
                if !dist.contains_key(next) {
                    dist.insert(*next, d + 1);
                    queue.push_back(*next);
                }
            }
        }
        dist
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> FeedId {
        FeedId([n; 32])
    }

    #[test]
    fn hops_follow_the_graph_and_unfollow_cuts_it() {
        let mut graph = FollowGraph::from_edges([
            (id(1), id(2), true),
            (id(2), id(3), true),
            (id(3), id(4), true),
        ]);
        let two = graph.within(&id(1), 2);
        assert_eq!(two.get(&id(3)), Some(&2));
        assert!(!two.contains_key(&id(4)));
        assert_eq!(graph.within(&id(1), 1).len(), 2);
        graph.set(id(1), id(2), false);
        assert_eq!(graph.within(&id(1), 3).len(), 1);
    }
}
