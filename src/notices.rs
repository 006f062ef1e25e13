//! What this node noticed about feeds that their messages alone do not
//! say: a feed that forked, a machine whose clock is off, and this
//! machine's own feed held further by a peer (this store was restored from
//! an older copy). `status`, `mount/status` and `health` show them.
//!
//! Forks are kept in `<path>/forks.json` (a fork stays a fork); the rest
//! live in memory and are measured again after a restart.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::clock::{now_ms, Skew};
use crate::feed::FeedId;

/// How long a peer's claim to hold more of our feed blocks publishing
/// without the peer sending any of it.
pub const UNPROVEN_CLAIM_MS: f64 = 60_000.0;

/// A feed seen with two different messages at one sequence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fork {
    /// The first sequence at which the copies differ (as far as seen).
    pub sequence: u64,
    /// When it was first seen (ms since the epoch).
    pub seen_ms: f64,
}

/// A peer holds more of this machine's feed than this store does.
#[derive(Clone, Debug, PartialEq)]
pub struct Behind {
    /// Our latest sequence when the claim came.
    pub ours: u64,
    /// The latest sequence the peer claims to hold.
    pub theirs: u64,
    /// The peer.
    pub peer: FeedId,
    /// When the claim came, or our feed last grew from a peer's copy.
    pub progress_ms: f64,
}

/// Everything noticed, behind one lock each.
pub struct Notices {
    path: PathBuf,
    forks: Mutex<HashMap<FeedId, Fork>>,
    skews: Mutex<HashMap<FeedId, Skew>>,
    behind: Mutex<Option<Behind>>,
    /// Peers whose claim to hold more of our feed came to nothing.
    unproven: Mutex<HashSet<FeedId>>,
}

impl Notices {
    /// Loads the forks noticed before from `<dir>/forks.json`.
    pub fn load(dir: &Path) -> Notices {
        let path = dir.join("forks.json");
        let forks: HashMap<FeedId, Fork> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<HashMap<String, Fork>>(&bytes)
                .map(|map| {
                    map.into_iter()
                        .filter_map(|(id, fork)| Some((FeedId::parse(&id).ok()?, fork)))
                        .collect()
                })
                .unwrap_or_else(|e| {
                    tracing::warn!("{} is damaged ({e}); starting it again", path.display());
                    HashMap::new()
                }),
            Err(_) => HashMap::new(),
        };
        Notices {
            path,
            forks: Mutex::new(forks),
            skews: Mutex::new(HashMap::new()),
            behind: Mutex::new(None),
            unproven: Mutex::new(HashSet::new()),
        }
    }

    /// Notes that `feed` forked at `sequence`; true the first time.
    pub fn fork(&self, feed: FeedId, sequence: u64) -> bool {
        let mut forks = lock(&self.forks);
        let earlier = forks.get(&feed).is_some_and(|f| f.sequence <= sequence);
        if earlier {
            return false;
        }
        forks.insert(
            feed,
            Fork {
                sequence,
                seen_ms: now_ms(),
            },
        );
        let saved: HashMap<String, Fork> = forks
            .iter()
            .map(|(id, fork)| (id.to_string(), fork.clone()))
            .collect();
        drop(forks);
        let text = serde_json::to_vec_pretty(&saved).unwrap_or_default();
        if let Err(e) = crate::config::replace_file(&self.path, &text) {
            tracing::warn!("could not save {}: {e}", self.path.display());
        }
        true
    }

    /// Every forked feed.
    pub fn forks(&self) -> Vec<(FeedId, Fork)> {
        let mut forks: Vec<_> = lock(&self.forks)
            .iter()
            .map(|(id, fork)| (*id, fork.clone()))
            .collect();
        forks.sort_by_key(|(id, _)| *id);
        forks
    }

    /// Where `feed` forked, if it did.
    pub fn fork_of(&self, feed: &FeedId) -> Option<Fork> {
        lock(&self.forks).get(feed).cloned()
    }

    /// Records a measured skew of `feed`'s machine's clock.
    pub fn skew(&self, feed: FeedId, skew: Skew) {
        let notable = skew.notable();
        let before = lock(&self.skews).insert(feed, skew);
        if notable && !before.is_some_and(|b| b.notable()) {
            tracing::warn!("the clock of {feed} is {}", skew.describe());
        }
    }

    /// Every machine whose clock is notably off, as last measured.
    pub fn skews(&self) -> Vec<(FeedId, Skew)> {
        let mut skews: Vec<_> = lock(&self.skews)
            .iter()
            .filter(|(_, s)| s.notable())
            .map(|(id, s)| (*id, *s))
            .collect();
        skews.sort_by_key(|(id, _)| *id);
        skews
    }

    /// A peer holds our feed up to `theirs`, past our `ours`. Returns
    /// whether this is news (not a claim already known, nor from a peer
    /// whose claim came to nothing).
    pub fn claim(&self, peer: FeedId, ours: u64, theirs: u64) -> bool {
        if theirs <= ours || lock(&self.unproven).contains(&peer) {
            return false;
        }
        let mut behind = lock(&self.behind);
        if behind.as_ref().is_some_and(|b| b.theirs >= theirs) {
            return false;
        }
        *behind = Some(Behind {
            ours,
            theirs,
            peer,
            progress_ms: now_ms(),
        });
        true
    }

    /// Our feed is now at `tip`: grown from a peer's copy, or checked.
    /// Clears the claim once it is met, and one that brought nothing for
    /// [`UNPROVEN_CLAIM_MS`]. Returns what cleared it, to log.
    pub fn own_tip(&self, tip: u64, grew: bool) -> Option<String> {
        let mut behind = lock(&self.behind);
        let claim = behind.as_mut()?;
        if tip >= claim.theirs {
            let done = format!(
                "this machine's feed is back to sequence {tip}, from the copy {} held",
                claim.peer
            );
            *behind = None;
            return Some(done);
        }
        if grew {
            claim.progress_ms = now_ms();
            return None;
        }
        if now_ms() - claim.progress_ms > UNPROVEN_CLAIM_MS {
            let peer = claim.peer;
            let why = format!(
                "{peer} said it holds this machine's feed up to {}, but sent none of it past \
                 {tip} in {} s: publishing again, and ignoring its claims from now on",
                claim.theirs,
                UNPROVEN_CLAIM_MS / 1000.0
            );
            *behind = None;
            drop(behind);
            lock(&self.unproven).insert(peer);
            return Some(why);
        }
        None
    }

    /// The claim that holds publishing back, if any.
    pub fn behind(&self) -> Option<Behind> {
        lock(&self.behind).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forks_are_kept_across_a_restart_at_their_first_sequence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let feed = FeedId([3; 32]);
        let notices = Notices::load(dir.path());
        assert!(notices.fork(feed, 12));
        assert!(!notices.fork(feed, 15), "a later sequence is no news");
        assert!(notices.fork(feed, 9), "an earlier one moves it back");
        let again = Notices::load(dir.path());
        assert_eq!(again.fork_of(&feed).map(|f| f.sequence), Some(9));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("forks.json"))
                .expect("saved")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_claim_holds_until_met_and_an_empty_one_expires() {
        let dir = tempfile::tempdir().expect("tempdir");
        let notices = Notices::load(dir.path());
        let peer = FeedId([5; 32]);
        assert!(!notices.claim(peer, 10, 10), "not more than ours");
        assert!(notices.claim(peer, 10, 20));
        assert!(!notices.claim(peer, 10, 15), "known already");
        assert_eq!(notices.own_tip(15, true), None);
        assert!(notices.behind().is_some());
        assert!(notices.own_tip(20, true).is_some());
        assert!(notices.behind().is_none());
        // A claim that brings nothing expires, and its peer is not
        // believed again.
        assert!(notices.claim(peer, 20, 30));
        if let Some(b) = lock(&notices.behind).as_mut() {
            b.progress_ms -= UNPROVEN_CLAIM_MS + 1.0;
        }
        assert!(notices.own_tip(20, false).is_some());
        assert!(notices.behind().is_none());
        assert!(!notices.claim(peer, 20, 40));
    }
}
