//! What was told about each job and machine, and the deliveries that wait:
//! `<path>/alerts.json`.
//!
//! The rule: a job or machine is in trouble when its health state is
//! `failed`, `late` or `quiet`. Each change of that (into trouble, from
//! one kind to another, out of it: `recovered`) is one alert; a repeat is
//! silent. A running job keeps what it had: a failed job that runs again
//! and fails again is one alert, not two. A quiet machine's jobs are
//! folded into the machine's alert: while it is quiet, nothing is said of
//! them. The first report a book judges is only recorded, so that a new
//! book does not announce every old failure.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::target::Target;
use super::{Alert, Change};
use crate::health::{Report, State};

/// A failed delivery waits at least this long before the next try, then
/// twice as long each time, up to [`MAX_BACKOFF_MS`].
pub const FIRST_BACKOFF_MS: f64 = 10_000.0;

/// The longest wait between two tries of a delivery.
pub const MAX_BACKOFF_MS: f64 = 3_600_000.0;

/// What was last told about one job or machine in trouble.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Told {
    change: Change,
    machine: String,
    source: Option<String>,
    /// The time of the run (or message) the trouble is about: a recovery's
    /// id names it.
    #[serde(default)]
    basis_ms: f64,
    /// The time the last reminder (or the alert itself) was told for:
    /// the next is due a `--remind` interval later. `None` in a book
    /// from before reminders, which then starts counting without
    /// sending.
    #[serde(default)]
    reminded_ms: Option<f64>,
}

/// A delivery waiting for its (next) try.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// The target's fingerprint (never its URL).
    pub target: String,
    /// What to deliver.
    pub alert: Alert,
    /// Tries so far.
    pub attempts: u32,
    /// When to try next (ms since the epoch).
    pub next_ms: f64,
    /// Why the last try failed.
    pub error: String,
}

/// What a round of deliveries did.
#[derive(Debug, Default)]
pub struct Round {
    /// Whether the book changed.
    pub changed: bool,
    /// Alerts delivered: `(alert id, target fingerprint, change)`, for the
    /// feed to announce.
    pub delivered: Vec<(String, String, Change)>,
    /// Deliveries left out because another machine announced them.
    pub skipped: usize,
}

/// The alert state, kept across restarts.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AlertBook {
    /// Whether a report was judged yet.
    #[serde(default)]
    started: bool,
    /// Jobs (`<feed> <source>`) and machines (`<feed>`) in trouble, as told.
    #[serde(default)]
    trouble: BTreeMap<String, Told>,
    /// Deliveries waiting for another try.
    #[serde(default)]
    pub pending: Vec<Pending>,
}

impl AlertBook {
    /// `<path>/alerts.json`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("alerts.json")
    }

    /// The book kept at `path`; a new one when there is none. A damaged
    /// file is set aside (`.damaged`), with a warning, and a new book
    /// starts: it records before it tells, so nothing old is resent.
    pub fn load(path: &Path) -> AlertBook {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(_) => return AlertBook::default(),
        };
        match serde_json::from_str(&text) {
            Ok(book) => book,
            Err(e) => {
                tracing::warn!("{} is damaged ({e}); set aside", path.display());
                let _ = std::fs::rename(path, path.with_extension("json.damaged"));
                AlertBook::default()
            }
        }
    }

    /// Writes the book to `path`, atomically and durably (mode 0600).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::config::replace_file(path, &text)
    }

    /// The alerts `report` calls for, against what was told; records them
    /// as told. Trouble that lasts is told again each `remind_ms` since
    /// the run (or message) it is about. What `muted` says is muted (a job, or with `None` a whole
    /// machine) keeps what was told, and is judged again once the mute
    /// ends.
    pub fn judge(
        &mut self,
        report: &Report,
        remind_ms: Option<f64>,
        muted: impl Fn(&crate::feed::FeedId, Option<&str>) -> bool,
    ) -> Vec<Alert> {
        let quiet: HashSet<_> = report
            .rows
            .iter()
            .filter(|r| r.source.is_none() && r.state == State::Quiet)
            .map(|r| r.id)
            .collect();
        let mut now: BTreeMap<String, Told> = BTreeMap::new();
        let mut alerts = Vec::new();
        let mut seen = HashSet::new();
        for row in &report.rows {
            let key = match &row.source {
                Some(source) => format!("{} {source}", row.id),
                None => row.id.to_string(),
            };
            seen.insert(key.clone());
            let before = self.trouble.get(&key);
            // Folded into its machine's alert, or still running: as it was.
            let folded = row.source.is_some() && quiet.contains(&row.id);
            // Late, from a machine not heard from since the job fell due:
            // it may be off, which its quiet alert will say. Told once it
            // speaks again (a daemon says it is up every hour).
            let silent_since_due = row.state == State::Late
                && report
                    .heard_ms
                    .get(&row.id)
                    .is_some_and(|heard| row.due_ms.is_some_and(|due| *heard < due));
            let muted = muted(&row.id, None) || muted(&row.id, row.source.as_deref());
            if folded || silent_since_due || muted || row.state == State::Running {
                if let Some(told) = before {
                    now.insert(key, told.clone());
                }
                continue;
            }
            let change = Change::of(row.state);
            let source = row.source.as_deref();
            let mut basis_ms = row.last_run_ms;
            // Reminders fall on whole intervals from the basis, so that
            // every machine (with the same --remind) numbers them alike and
            // the turn-taking holds for them too.
            let slot = |basis_ms: f64| match remind_ms {
                Some(every) => {
                    let n = ((report.now_ms - basis_ms) / every).floor().max(0.0);
                    (n as u64, basis_ms + n * every)
                }
                None => (0, report.now_ms),
            };
            let mut reminded_ms = None;
            match (before, change) {
                (Some(old), Some(new)) if old.change == new => {
                    basis_ms = old.basis_ms;
                    let (n, at) = slot(basis_ms);
                    reminded_ms = Some(at);
                    match (remind_ms, old.reminded_ms) {
                        (Some(every), Some(last)) if report.now_ms - last >= every => {
                            let mut alert = Alert::about(row, new, report.now_ms);
                            alert.id = super::change_id(&row.id, source, new, basis_ms);
                            alerts.push(alert.reminder(n));
                        }
                        (_, Some(last)) => reminded_ms = Some(last),
                        (_, None) => {}
                    }
                }
                (_, Some(new)) => {
                    let mut alert = Alert::about(row, new, report.now_ms);
                    alert.id = super::change_id(&row.id, source, new, basis_ms);
                    alerts.push(alert);
                    reminded_ms = Some(slot(basis_ms).1);
                }
                (Some(old), None) => {
                    let mut alert = Alert::about(row, Change::Recovered, report.now_ms);
                    alert.id = super::change_id(&row.id, source, Change::Recovered, old.basis_ms);
                    alerts.push(alert);
                }
                (None, None) => {}
            }
            if let Some(change) = change {
                now.insert(
                    key,
                    Told {
                        change,
                        machine: row.machine.clone(),
                        source: row.source.clone(),
                        basis_ms,
                        reminded_ms,
                    },
                );
            }
        }
        // A quiet machine has a row; one heard from again has none.
        for (key, told) in &self.trouble {
            let feed: Option<crate::feed::FeedId> = key.parse().ok();
            if feed.is_some_and(|f| muted(&f, None)) && told.source.is_none() && !seen.contains(key)
            {
                now.insert(key.clone(), told.clone());
                continue;
            }
            if told.source.is_none() && !seen.contains(key) {
                let id = key
                    .parse()
                    .map(|feed| super::change_id(&feed, None, Change::Recovered, told.basis_ms))
                    .unwrap_or_default();
                alerts.push(Alert {
                    id,
                    change: Change::Recovered,
                    machine: told.machine.clone(),
                    source: None,
                    title: format!("{} is heard from again", told.machine),
                    body: format!("{} sent a message again after going quiet.", told.machine),
                    exit: None,
                    time_ms: report.now_ms,
                    reminder: false,
                });
            }
        }
        self.trouble = now;
        if !self.started {
            self.started = true;
            return Vec::new();
        }
        alerts
    }

    /// Queues `alerts` for every target in `targets`, due now. Queued
    /// first and saved, then delivered: a crash in between delivers them
    /// after the restart rather than never.
    ///
    /// `delay` says how long this machine waits before its first try: the
    /// machines that alert one target take turns ([`super::rank`]).
    pub fn queue(
        &mut self,
        targets: &[Target],
        alerts: &[Alert],
        now_ms: f64,
        delay: impl Fn(&Alert, &Target) -> f64,
    ) {
        for alert in alerts {
            for target in targets {
                self.pending.push(Pending {
                    target: target.fingerprint(),
                    alert: alert.clone(),
                    attempts: 0,
                    next_ms: now_ms + delay(alert, target),
                    error: String::new(),
                });
            }
        }
    }

    /// Tries the deliveries that are due with `deliver`, among `targets`
    /// (a delivery whose target was removed is dropped, and so is one that
    /// `announced` says another machine made).
    pub fn retry(
        &mut self,
        targets: &[Target],
        now_ms: f64,
        announced: impl Fn(&Alert, &str) -> bool,
        mut deliver: impl FnMut(&Target, &Alert) -> Result<(), String>,
    ) -> Round {
        let before = self.pending.len();
        let mut round = Round::default();
        self.pending.retain_mut(|p| {
            let Some(target) = targets.iter().find(|t| t.fingerprint() == p.target) else {
                return false;
            };
            if p.next_ms > now_ms {
                return true;
            }
            if target.shared() && !p.alert.id.is_empty() && announced(&p.alert, &p.target) {
                tracing::info!("{:?}: another machine told {target}", p.alert.title);
                round.skipped += 1;
                return false;
            }
            round.changed = true;
            match deliver(target, &p.alert) {
                Ok(()) => {
                    round
                        .delivered
                        .push((p.alert.id.clone(), p.target.clone(), p.alert.change));
                    if p.attempts > 0 {
                        tracing::info!(
                            "delivered {:?} to {target} at the {} try",
                            p.alert.title,
                            p.attempts + 1
                        );
                    }
                    false
                }
                Err(error) => {
                    tracing::warn!(
                        "could not deliver {:?} to {target}: {error}; trying again",
                        p.alert.title
                    );
                    let wait = (FIRST_BACKOFF_MS * 2f64.powi(p.attempts.min(20) as i32))
                        .min(MAX_BACKOFF_MS);
                    p.attempts += 1;
                    p.next_ms = now_ms + wait;
                    p.error = error;
                    true
                }
            }
        });
        round.changed |= self.pending.len() != before;
        round
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::Keypair;
    use crate::health::Row;

    fn row(id: &crate::feed::FeedId, source: Option<&str>, state: State) -> Row {
        Row {
            state,
            machine: "nas".into(),
            id: *id,
            source: source.map(str::to_string),
            last_run_ms: 1_000.0,
            age_ms: 60_000.0,
            exit: (state == State::Failed).then_some(23),
            signal: None,
            took: Some("93s".into()),
            every: Some("1d".into()),
            cron: None,
            due_ms: Some(1_000.0 + 1.1 * 86_400_000.0),
            last_line: "Error: No space left on device".into(),
            recent: vec![
                "copying /home".into(),
                "Error: No space left on device".into(),
            ],
        }
    }

    fn report(rows: Vec<Row>) -> Report {
        Report {
            now_ms: 2_000_000.0,
            rows,
            heard_ms: Default::default(),
        }
    }

    fn judge(book: &mut AlertBook, report: &Report) -> Vec<Alert> {
        book.judge(report, None, |_, _| false)
    }

    fn never(_: &Alert, _: &str) -> bool {
        false
    }

    fn said(alerts: &[Alert]) -> Vec<String> {
        alerts.iter().map(|a| a.title.clone()).collect()
    }

    #[test]
    fn one_alert_per_change_and_one_when_it_recovers() {
        let nas = Keypair::generate().id();
        let mut book = AlertBook::default();
        // The first report is only recorded.
        assert!(judge(
            &mut book,
            &report(vec![row(&nas, Some("old"), State::Failed)])
        )
        .is_empty());
        let failed = judge(
            &mut book,
            &report(vec![
                row(&nas, Some("old"), State::Failed),
                row(&nas, Some("backup"), State::Failed),
            ]),
        );
        assert_eq!(said(&failed), ["backup failed on nas (exit 23)"]);
        assert!(
            failed[0]
                .body
                .ends_with("copying /home\nError: No space left on device"),
            "{}",
            failed[0].body
        );
        assert_eq!(failed[0].to_json()["state"], "failed");
        // A repeat, a new run, and the same failure again: silent.
        for state in [State::Failed, State::Running, State::Failed] {
            let alerts = judge(
                &mut book,
                &report(vec![
                    row(&nas, Some("old"), State::Failed),
                    row(&nas, Some("backup"), state),
                ]),
            );
            assert!(alerts.is_empty(), "{:?}", said(&alerts));
        }
        let recovered = judge(
            &mut book,
            &report(vec![
                row(&nas, Some("old"), State::Failed),
                row(&nas, Some("backup"), State::Ok),
            ]),
        );
        assert_eq!(said(&recovered), ["backup recovered on nas"]);
        let late = judge(
            &mut book,
            &report(vec![
                row(&nas, Some("old"), State::Failed),
                row(&nas, Some("backup"), State::Late),
            ]),
        );
        assert_eq!(said(&late), ["backup is late on nas"]);
        // Ids name the change and the run it is about, the same anywhere.
        assert_eq!(
            failed[0].id,
            crate::alert::change_id(&nas, Some("backup"), Change::Failed, 1_000.0)
        );
        assert_eq!(
            recovered[0].id,
            crate::alert::change_id(&nas, Some("backup"), Change::Recovered, 1_000.0)
        );
        assert_ne!(failed[0].id, late[0].id);
    }

    #[test]
    fn a_delivery_another_machine_announced_is_left_out_and_turns_are_kept() {
        let target = Target::parse("exec:/bin/true").unwrap();
        let targets = [target];
        let mut book = AlertBook::default();
        let mut alert = Alert::test("nas", 0.0);
        alert.id = "abc".into();
        book.queue(&targets, &[alert], 0.0, |_, _| 2_000.0);
        assert!(book
            .retry(&targets, 1_000.0, never, |_, _| panic!("not yet"))
            .delivered
            .is_empty());
        let round = book.retry(&targets, 2_000.0, |_, _| true, |_, _| panic!("announced"));
        assert_eq!(round.skipped, 1);
        assert!(book.pending.is_empty());
        // The same order for an alert on every machine; each first in some.
        let machines: Vec<_> = (0..3).map(|_| Keypair::generate().id()).collect();
        let mut firsts = HashSet::new();
        for i in 0..64 {
            let id = format!("change {i}");
            let mut ranks: Vec<usize> = machines
                .iter()
                .map(|m| crate::alert::rank(&id, m, &machines))
                .collect();
            firsts.insert(ranks.iter().position(|r| *r == 0));
            ranks.sort_unstable();
            assert_eq!(ranks, [0, 1, 2]);
        }
        assert_eq!(firsts.len(), 3);
    }

    #[test]
    fn a_quiet_machine_is_one_alert_and_its_jobs_are_folded_in() {
        let nas = Keypair::generate().id();
        let mut book = AlertBook::default();
        judge(
            &mut book,
            &report(vec![row(&nas, Some("backup"), State::Ok)]),
        );
        let quiet = judge(
            &mut book,
            &report(vec![
                row(&nas, None, State::Quiet),
                row(&nas, Some("backup"), State::Late),
                row(&nas, Some("sync"), State::Late),
            ]),
        );
        assert_eq!(said(&quiet), ["nas is quiet"]);
        assert!(quiet[0].source.is_none());
        let back = judge(
            &mut book,
            &report(vec![row(&nas, Some("backup"), State::Ok)]),
        );
        assert_eq!(said(&back), ["nas is heard from again"]);
        assert_eq!(back[0].change, Change::Recovered);
    }

    #[test]
    fn a_muted_job_is_silent_and_judged_again_when_the_mute_ends() {
        let nas = Keypair::generate().id();
        let mut book = AlertBook::default();
        judge(
            &mut book,
            &report(vec![row(&nas, Some("backup"), State::Ok)]),
        );
        let failing = report(vec![row(&nas, Some("backup"), State::Failed)]);
        assert!(book
            .judge(&failing, None, |_, s| s == Some("backup"))
            .is_empty());
        // A machine's mute covers its jobs.
        assert!(book
            .judge(&failing, None, |f, s| *f == nas && s.is_none())
            .is_empty());
        // Still failing when it ends: told then.
        assert_eq!(
            said(&judge(&mut book, &failing)),
            ["backup failed on nas (exit 23)"]
        );
    }

    #[test]
    fn lateness_waits_for_its_machine_to_speak_or_go_quiet() {
        let nas = Keypair::generate().id();
        let mut book = AlertBook::default();
        judge(
            &mut book,
            &report(vec![row(&nas, Some("backup"), State::Ok)]),
        );
        // Due at 1,000 + 1 d × 1.1; last heard before that: held.
        let due = row(&nas, None, State::Ok).due_ms.unwrap();
        let mut silent = report(vec![row(&nas, Some("backup"), State::Late)]);
        silent.heard_ms.insert(nas, due - 1.0);
        assert!(judge(&mut book, &silent).is_empty());
        // Heard from since (a heartbeat): the lateness is told.
        let mut heard = report(vec![row(&nas, Some("backup"), State::Late)]);
        heard.heard_ms.insert(nas, due + 1.0);
        assert_eq!(said(&judge(&mut book, &heard)), ["backup is late on nas"]);
    }

    #[test]
    fn failed_deliveries_wait_longer_each_time_and_go_once_delivered() {
        let target = Target::parse("exec:/bin/true").unwrap();
        let targets = [target];
        let mut book = AlertBook::default();
        book.queue(&targets, &[Alert::test("nas", 0.0)], 0.0, |_, _| 0.0);
        book.retry(&targets, 0.0, never, |_, _| Err("down".into()));
        assert_eq!(book.pending[0].attempts, 1);
        assert_eq!(book.pending[0].next_ms, FIRST_BACKOFF_MS);
        let mut tries = 0;
        assert!(
            !book
                .retry(&targets, 1.0, never, |_, _| {
                    tries += 1;
                    Ok(())
                })
                .changed
        );
        assert_eq!(tries, 0, "not due yet");
        book.retry(&targets, FIRST_BACKOFF_MS, never, |_, _| {
            Err("still down".into())
        });
        assert_eq!(book.pending[0].attempts, 2);
        assert_eq!(book.pending[0].error, "still down");
        assert_eq!(book.pending[0].next_ms, FIRST_BACKOFF_MS * 3.0);
        let round = book.retry(&targets, FIRST_BACKOFF_MS * 3.0, never, |_, _| Ok(()));
        assert_eq!(round.delivered.len(), 1);
        assert!(book.pending.is_empty());
        // A removed target's deliveries are dropped.
        book.queue(&targets, &[Alert::test("nas", 0.0)], 0.0, |_, _| 0.0);
        assert!(book.retry(&[], 0.0, never, |_, _| Ok(())).changed);
        assert!(book.pending.is_empty());
    }

    #[test]
    fn trouble_that_lasts_is_told_again_each_remind_interval() {
        let nas = Keypair::generate().id();
        let mut book = AlertBook::default();
        let day = 86_400_000.0;
        let at = |now_ms: f64| Report {
            now_ms,
            ..report(vec![row(&nas, Some("backup"), State::Failed)])
        };
        book.judge(&report(Vec::new()), Some(day), |_, _| false);
        // The failed run was at 1,000 ms.
        let first = book.judge(&at(2_000.0), Some(day), |_, _| false);
        assert_eq!(said(&first), ["backup failed on nas (exit 23)"]);
        assert!(!first[0].reminder);
        assert!(book.judge(&at(day), Some(day), |_, _| false).is_empty());
        let again = book.judge(&at(day + 1_000.0), Some(day), |_, _| false);
        assert_eq!(said(&again), ["Still: backup failed on nas (exit 23)"]);
        assert!(again[0].reminder && again[0].to_json()["reminder"] == true);
        assert_eq!(again[0].id, format!("{}r1", first[0].id));
        assert!(book
            .judge(&at(2.0 * day), Some(day), |_, _| false)
            .is_empty());
        // Off: never again.
        assert!(book.judge(&at(5.0 * day), None, |_, _| false).is_empty());
        let third = book.judge(&at(5.0 * day), Some(day), |_, _| false);
        assert_eq!(third[0].id, format!("{}r4", first[0].id));
        // A shorter interval: one reminder an hour on, not a burst.
        let hour = 3_600_000.0;
        let sooner = book.judge(&at(5.0 * day + hour + 2_000.0), Some(hour), |_, _| false);
        assert_eq!(sooner.len(), 1);
        assert!(book
            .judge(&at(5.0 * day + hour + 3_000.0), Some(hour), |_, _| false)
            .is_empty());
        // A book from before reminders starts counting without sending.
        for told in book.trouble.values_mut() {
            told.reminded_ms = None;
        }
        assert!(book
            .judge(&at(9.0 * day), Some(hour), |_, _| false)
            .is_empty());
    }
}
