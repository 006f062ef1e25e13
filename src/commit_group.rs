//! Group commit: callers that arrive while a commit is under way are
//! served together by the next one.
//!
//! Each replication session verifies its peer's messages on its own, but
//! storing them one session at a time made a commit (and a view update)
//! of a few messages each when several peers send at once, and spread each
//! feed's lines over the line file in short runs. Here the first caller
//! leads: it takes every contribution queued so far, commits them as one,
//! and hands each contributor its own result. Callers that came meanwhile
//! wait, and one of them leads the next commit.

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, MutexGuard};

/// Contributions of type `T` committed together, each answered with an `R`.
pub struct CommitGroup<T, R> {
    state: Mutex<GroupState<T, R>>,
    finished: Condvar,
}

struct GroupState<T, R> {
    queue: Vec<(u64, T)>,
    /// Answers not yet collected; `None` when the commit that took the
    /// contribution panicked.
    answers: HashMap<u64, Option<R>>,
    next_ticket: u64,
    leading: bool,
}

impl<T, R> Default for CommitGroup<T, R> {
    fn default() -> Self {
        CommitGroup {
            state: Mutex::new(GroupState {
                queue: Vec::new(),
                answers: HashMap::new(),
                next_ticket: 0,
                leading: false,
            }),
            finished: Condvar::new(),
        }
    }
}

impl<T, R> CommitGroup<T, R> {
    /// Commits `item`, with whatever else is queued, through `commit`, which
    /// gets the contributions in arrival order and must answer each, in the
    /// same order. Returns this caller's answer, or `None` if the commit
    /// that took it panicked (the leader itself panics on).
    pub fn submit(&self, item: T, commit: impl FnOnce(Vec<T>) -> Vec<R>) -> Option<R> {
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queue.push((ticket, item));
        // Until a commit answers this caller, or none runs: then its item
        // is still queued, and it leads the next.
        loop {
            if let Some(answer) = state.answers.remove(&ticket) {
                return answer;
            }
            if !state.leading {
                break;
            }
            state = self.finished.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.leading = true;
        let (tickets, items): (Vec<u64>, Vec<T>) =
            std::mem::take(&mut state.queue).into_iter().unzip();
        drop(state);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| commit(items)));
        let mut state = self.lock();
        state.leading = false;
        self.finished.notify_all();
        match outcome {
            Ok(answers) => {
                debug_assert_eq!(answers.len(), tickets.len());
                let mut answers = answers.into_iter();
                let mut mine = None;
                for t in tickets {
                    let answer = answers.next();
                    if t == ticket {
                        mine = answer;
                    } else {
                        state.answers.insert(t, answer);
                    }
                }
                mine
            }
            Err(panic) => {
                for t in tickets.into_iter().filter(|t| *t != ticket) {
                    state.answers.insert(t, None);
                }
                drop(state);
                panic::resume_unwind(panic);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, GroupState<T, R>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn each_caller_gets_its_own_answer() {
        let group: Arc<CommitGroup<u64, u64>> = Arc::default();
        let threads = 8;
        let start = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads as u64)
            .map(|t| {
                let (group, start) = (group.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for i in 0..200 {
                        let item = t * 1000 + i;
                        let answer = group.submit(item, |items| {
                            std::thread::yield_now();
                            items.iter().map(|x| x * 2).collect()
                        });
                        assert_eq!(answer, Some(item * 2));
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("no caller panics");
        }
    }

    /// Starts a caller whose commit of `item` holds on, once it has begun,
    /// until `behind` more callers queue; returns once it has begun.
    fn hold_first_commit(
        group: &Arc<CommitGroup<u32, u32>>,
        item: u32,
        behind: usize,
    ) -> std::thread::JoinHandle<Option<u32>> {
        let entered = Arc::new(Barrier::new(2));
        let first = {
            let (group, entered) = (group.clone(), entered.clone());
            std::thread::spawn(move || {
                group.submit(item, |items| {
                    entered.wait();
                    while group.lock().queue.len() < behind {
                        std::thread::yield_now();
                    }
                    items
                })
            })
        };
        entered.wait();
        first
    }

    #[test]
    fn callers_queued_behind_a_commit_share_the_next() {
        let group: Arc<CommitGroup<u32, u32>> = Arc::default();
        let first = hold_first_commit(&group, 0, 3);
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let queued: Vec<_> = (1..4)
            .map(|item| {
                let (group, sizes) = (group.clone(), sizes.clone());
                std::thread::spawn(move || {
                    group.submit(item, |items| {
                        sizes.lock().expect("sizes").push(items.len());
                        items.iter().map(|x| x * 10).collect()
                    })
                })
            })
            .collect();
        assert_eq!(first.join().expect("first"), Some(0));
        let answers: Vec<_> = queued
            .into_iter()
            .map(|t| t.join().expect("queued"))
            .collect();
        assert_eq!(answers, vec![Some(10), Some(20), Some(30)]);
        assert_eq!(
            *sizes.lock().expect("sizes"),
            vec![3],
            "one commit for all three"
        );
    }

    #[test]
    fn a_panicking_commit_answers_none_to_the_others_and_the_group_goes_on() {
        let group: Arc<CommitGroup<u32, u32>> = Arc::default();
        // The first commit holds on until two more callers queue behind it;
        // whichever of them leads the next commit takes both, and panics.
        let first = hold_first_commit(&group, 1, 2);
        let queued: Vec<_> = (2..4)
            .map(|item| {
                let group = group.clone();
                std::thread::spawn(move || group.submit(item, |_| panic!("commit failed")))
            })
            .collect();
        assert_eq!(first.join().expect("the first commit succeeds"), Some(1));
        let outcomes: Vec<_> = queued.into_iter().map(|t| t.join()).collect();
        let panicked = outcomes.iter().filter(|o| o.is_err()).count();
        let unanswered = outcomes.iter().filter(|o| matches!(o, Ok(None))).count();
        assert_eq!(
            (panicked, unanswered),
            (1, 1),
            "the leader panics, the other is told"
        );
        assert_eq!(group.submit(4, |items| items), Some(4));
    }
}
