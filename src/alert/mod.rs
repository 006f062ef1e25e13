//! Alerts: the person is told when a job fails, is late, or a machine goes
//! quiet, once per change, and when it recovers.
//!
//! - [`target`]: where alerts go (`exec:` so far), shown without secrets.
//! - [`book`]: what was last told about each job and machine, kept in
//!   `<path>/alerts.json`, and which deliveries still wait; it judges each
//!   health report against it.
//! - [`exec`]: delivery to a program.
//!
//! The daemon judges the health report every second ([`book::AlertBook::judge`])
//! and delivers what changed to every configured target, retrying a
//! failed delivery with backoff; `scuttlefs alert test` delivers a test
//! alert at once. Nothing is sent for what the book already recorded, so a
//! restart resends nothing.

pub mod book;
pub mod command;
pub mod desktop;
pub mod exec;
pub mod http;
pub mod mail;
pub mod target;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::health::{Row, State};
use crate::node::Node;
use crate::vocab::{ALERTING_TYPE, ANNOUNCED_TYPE, HEARTBEAT_TYPE};
use book::AlertBook;
use target::Target;

/// A daemon whose feed has had no message for this long says it is up
/// (sooner under a `--max-silence` shorter than four of these).
pub const HEARTBEAT_MS: f64 = 3_600_000.0;

/// How long this machine's feed may be silent before it says it is up:
/// an hour, or a quarter of the allowed silence when that is shorter, so
/// that a machine that is up is never judged quiet by one that shares its
/// `--max-silence`.
pub fn heartbeat_ms(max_silence_ms: f64) -> f64 {
    HEARTBEAT_MS.min(max_silence_ms / 4.0).max(1_000.0)
}

/// How long each machine that alerts a target waits after the one before
/// it in an alert's order, for that one's announcement to arrive.
pub const HANDOFF_MS: f64 = 2_000.0;

/// An alert's id, the same on every machine that judges the change:
/// the machine, the job, the change, and the time of the run (or message)
/// it is about.
pub fn change_id(
    feed: &crate::feed::FeedId,
    source: Option<&str>,
    change: Change,
    basis_ms: f64,
) -> String {
    use sha2::{Digest, Sha256};
    let text = format!(
        "{feed} {} {} {}",
        source.unwrap_or("-"),
        change.name(),
        basis_ms.round() as i64
    );
    Sha256::digest(text.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where `me` stands among `holders` (the machines that alert one target)
/// for the alert `id`: a different order for each alert, so that no one
/// machine always goes first, and the same order on every machine.
pub fn rank(id: &str, me: &crate::feed::FeedId, holders: &[crate::feed::FeedId]) -> usize {
    use sha2::{Digest, Sha256};
    let key = |feed: &crate::feed::FeedId| Sha256::digest(format!("{id} {feed}").as_bytes());
    let mine = key(me);
    holders
        .iter()
        .filter(|h| *h != me)
        .filter(|h| key(h) < mine)
        .count()
}

/// Delivers `alert` to `target`; an error says why not.
pub fn deliver(target: &Target, alert: &Alert) -> Result<(), String> {
    match target {
        Target::Exec { program } => exec::deliver(program, alert),
        Target::Ntfy { endpoint, .. } => http::ntfy(endpoint, alert),
        Target::Json { endpoint, .. } => http::json(endpoint, alert),
        Target::Mail { mail: server, .. } => mail::deliver(server, alert),
        Target::Desktop => desktop::deliver(alert),
    }
}

/// The targets saved in `<dir>/config`. One that does not parse (the file
/// was edited by hand) is left out, with a warning the first time.
pub fn configured_targets(dir: &Path, warned: &mut Vec<String>) -> Vec<Target> {
    let urls = match crate::config::alert_targets(dir) {
        Ok(urls) => urls,
        Err(e) => {
            let why = e.to_string();
            if !warned.contains(&why) {
                tracing::warn!("alert targets not read: {why}");
                warned.push(why);
            }
            return Vec::new();
        }
    };
    urls.iter()
        .filter_map(|url| match Target::parse(url) {
            Ok(target) => Some(target),
            Err(e) => {
                let why = e.to_string();
                if !warned.contains(&why) {
                    tracing::warn!("alert target left out: {why}");
                    warned.push(why);
                }
                None
            }
        })
        .collect()
}

/// Starts the daemon's alert thread: every second it judges the health
/// report against the book, queues what changed for every target (each
/// machine that alerts a target in its turn), delivers what is due unless
/// another machine announced it, announces what it delivered, and says in
/// the feed that the daemon is up when nothing else has for an hour.
pub fn spawn(node: Arc<Node>) {
    let spawned = std::thread::Builder::new()
        .name("alerts".into())
        .spawn(move || {
            let path = AlertBook::path(&node.config.path);
            let mut book = AlertBook::load(&path);
            let mut saved = String::new();
            let mut warned = Vec::new();
            let mut counts = (0usize, 0usize);
            loop {
                let round = node.alert_round.lock().unwrap_or_else(|e| e.into_inner());
                let now = crate::clock::now_ms();
                let targets = configured_targets(&node.config.path, &mut warned);
                say_targets(&node, &targets);
                if let Some(report) = crate::query::health(&node, now, node.config.max_silence_ms) {
                    let muted = |feed: &crate::feed::FeedId, source: Option<&str>| {
                        node.with_jobs(|jobs| jobs.muted(feed, source, now))
                            .unwrap_or(false)
                    };
                    let alerts = book.judge(&report, node.config.remind_ms, muted);
                    for alert in &alerts {
                        tracing::info!("alert: {}", alert.title);
                    }
                    let me = node.id();
                    book.queue(&targets, &alerts, now, |alert, target| {
                        if !target.shared() {
                            return 0.0;
                        }
                        let fingerprint = target.fingerprint();
                        let holders = node
                            .with_jobs(|jobs| jobs.alerting(&fingerprint))
                            .unwrap_or_default();
                        rank(&alert.id, &me, &holders) as f64 * target.handoff_ms()
                    });
                }
                save_if_changed(&book, &path, &mut saved);
                let announced = |alert: &Alert, target: &str| {
                    node.with_jobs(|jobs| jobs.announced(&alert.id, target))
                        .unwrap_or(false)
                };
                let done = book.retry(&targets, now, announced, deliver);
                if done.changed || done.skipped > 0 {
                    save_if_changed(&book, &path, &mut saved);
                }
                counts.0 += done.delivered.len();
                counts.1 += done.skipped;
                for (id, target, change) in done.delivered {
                    let shared = targets
                        .iter()
                        .any(|t| t.fingerprint() == target && t.shared());
                    if id.is_empty() || !shared {
                        continue;
                    }
                    let announcement = json!({
                        "type": ANNOUNCED_TYPE,
                        "change": id,
                        "target": target,
                        "state": change.name(),
                    });
                    if let Err(e) = node.publish(vec![announcement]) {
                        tracing::warn!("could not announce a delivered alert: {e}");
                    }
                }
                heartbeat(&node, now);
                let mut status = status_of(&book, &targets);
                (status.delivered, status.skipped) = counts;
                status.others = targets
                    .iter()
                    .map(|t| {
                        let fingerprint = t.fingerprint();
                        node.with_jobs(|jobs| jobs.alerting(&fingerprint))
                            .unwrap_or_default()
                            .iter()
                            .filter(|f| **f != node.id())
                            .count()
                    })
                    .max()
                    .unwrap_or(0);
                *node.alerts.lock().unwrap_or_else(|e| e.into_inner()) = status;
                drop(round);
                std::thread::sleep(Duration::from_secs(1));
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("could not start the alert thread: {e}; no alerts will be sent");
    }
}

/// Publishes which targets this machine alerts (fingerprints only), when
/// that differs from what its feed last said, so that the machines that
/// share a target can take turns.
fn say_targets(node: &Node, targets: &[Target]) {
    let mut fingerprints: Vec<String> = targets
        .iter()
        .filter(|t| t.shared())
        .map(Target::fingerprint)
        .collect();
    fingerprints.sort();
    let me = node.id();
    let said = node
        .with_jobs(|jobs| jobs.targets_of(&me).map(<[String]>::to_vec))
        .flatten()
        .unwrap_or_default();
    if said == fingerprints {
        return;
    }
    let message = json!({"type": ALERTING_TYPE, "targets": fingerprints});
    if let Err(e) = node.publish(vec![message]) {
        tracing::debug!("could not say which targets this machine alerts: {e}");
    }
}

/// Publishes a heartbeat when this machine's feed has said nothing for
/// [`heartbeat_ms`]: machines that run no jobs (a pub) would otherwise
/// look quiet. A feed that has never published stays empty.
fn heartbeat(node: &Node, now_ms: f64) {
    let Some(tip) = node.store.tip(&node.id()) else {
        return;
    };
    if now_ms - tip.timestamp < heartbeat_ms(node.config.max_silence_ms) {
        return;
    }
    if let Err(e) = node.publish(vec![json!({"type": HEARTBEAT_TYPE})]) {
        tracing::debug!("could not publish a heartbeat: {e}");
    }
}

/// At a stop: waits up to `limit` for the alert thread's round under way,
/// so that a delivery it made is recorded as made and not sent again
/// after the restart. Returns with the round lock held, so no new round
/// starts.
pub fn finish(node: &Node, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match node.alert_round.try_lock() {
            Ok(round) => {
                std::mem::forget(round);
                return;
            }
            Err(std::sync::TryLockError::Poisoned(_)) => return,
            Err(std::sync::TryLockError::WouldBlock) => {
                if std::time::Instant::now() >= deadline {
                    tracing::warn!(
                        "stopping while an alert is being delivered; it may be sent again after \
                         the restart"
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn save_if_changed(book: &AlertBook, path: &Path, saved: &mut String) {
    let text = serde_json::to_string(book).unwrap_or_default();
    if text != *saved {
        match book.save(path) {
            Ok(()) => *saved = text,
            Err(e) => tracing::warn!("could not save {}: {e}", path.display()),
        }
    }
}

fn status_of(book: &AlertBook, targets: &[Target]) -> AlertStatus {
    AlertStatus {
        delivered: 0,
        skipped: 0,
        others: 0,
        targets: targets.iter().map(Target::masked).collect(),
        pending: book
            .pending
            .iter()
            .filter(|p| p.attempts > 0)
            .map(|p| {
                let target = targets
                    .iter()
                    .find(|t| t.fingerprint() == p.target)
                    .map_or_else(|| p.target.clone(), Target::masked);
                (target, p.alert.title.clone(), p.attempts, p.error.clone())
            })
            .collect(),
    }
}

/// What `status` shows of alerts: the targets, masked, and the
/// deliveries that wait for another try.
#[derive(Clone, Debug, Default)]
pub struct AlertStatus {
    /// Every configured target, credentials masked.
    pub targets: Vec<String>,
    /// Each waiting delivery: its target (masked), the alert's title, the
    /// tries so far, and why the last failed.
    pub pending: Vec<(String, String, u32, String)>,
    /// Deliveries made since the start.
    pub delivered: usize,
    /// Deliveries left out since the start, another machine having made
    /// them.
    pub skipped: usize,
    /// The most other machines that alert one of this machine's targets.
    pub others: usize,
}

/// What an alert says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// A job's last run failed.
    Failed,
    /// No run of a job started within its cadence.
    Late,
    /// A run has gone on past its `--timeout`.
    Stuck,
    /// A machine has sent nothing for longer than the allowed silence.
    Quiet,
    /// A job or machine that was in trouble is well again.
    Recovered,
    /// `scuttlefs alert test`.
    Test,
}

impl Change {
    /// Its name, as alerts carry it.
    pub fn name(self) -> &'static str {
        match self {
            Change::Failed => "failed",
            Change::Late => "late",
            Change::Stuck => "stuck",
            Change::Quiet => "quiet",
            Change::Recovered => "recovered",
            Change::Test => "test",
        }
    }

    /// The change a health state is, if it is one to alert about.
    pub fn of(state: State) -> Option<Change> {
        match state {
            State::Failed => Some(Change::Failed),
            State::Late => Some(Change::Late),
            State::Stuck => Some(Change::Stuck),
            State::Quiet => Some(Change::Quiet),
            _ => None,
        }
    }
}

/// One alert, as every target receives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The change's id ([`change_id`]): the same on every machine.
    #[serde(default)]
    pub id: String,
    /// What happened.
    pub change: Change,
    /// The machine's name.
    pub machine: String,
    /// The job, or `None` for the whole machine.
    pub source: Option<String>,
    /// One line: "backup-home failed on nas (exit 23)".
    pub title: String,
    /// More: the run's last line, when it ran and how long it took.
    pub body: String,
    /// The run's exit code, for a job that ended.
    pub exit: Option<i64>,
    /// When the change was noticed (ms since the epoch).
    pub time_ms: f64,
    /// A repeat of an alert whose trouble lasts (`serve --remind`).
    #[serde(default)]
    pub reminder: bool,
}

impl Alert {
    /// The alert for `row` of a health report, now in trouble as `change`
    /// or recovered from it.
    pub fn about(row: &Row, change: Change, now_ms: f64) -> Alert {
        let ago = crate::clock::roughly(row.age_ms);
        let ran = chrono::DateTime::from_timestamp_millis(row.last_run_ms as i64)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        let (title, body) = match (&row.source, change) {
            (None, Change::Recovered) => (
                format!("{} is heard from again", row.machine),
                format!("{} sent a message again after going quiet.", row.machine),
            ),
            (None, _) => (
                format!("{} is quiet", row.machine),
                format!(
                    "No message from {} for {ago} (last at {ran}): it is off, or cut off \
                     from every peer. Its jobs' lateness is part of this alert.",
                    row.machine
                ),
            ),
            (Some(source), change) => {
                let title = match change {
                    Change::Failed => match (row.exit, &row.signal) {
                        (Some(code), _) => {
                            format!("{source} failed on {} (exit {code})", row.machine)
                        }
                        (None, Some(signal)) => {
                            format!("{source} failed on {} ({signal})", row.machine)
                        }
                        _ => format!("{source} failed on {}", row.machine),
                    },
                    Change::Late => format!("{source} is late on {}", row.machine),
                    Change::Stuck => {
                        format!("{source} is stuck on {} (running for {ago})", row.machine)
                    }
                    Change::Recovered => format!("{source} recovered on {}", row.machine),
                    _ => format!("{source} on {}", row.machine),
                };
                let took = row
                    .took
                    .as_deref()
                    .map(|t| format!(", took {t}"))
                    .unwrap_or_default();
                let every = match (&row.cron, &row.every) {
                    (Some((expr, zone)), _) => format!(", runs at \"{expr}\" {zone}"),
                    (None, Some(every)) => format!(", runs every {every}"),
                    (None, None) => String::new(),
                };
                let mut body = format!("Last run {ran} ({ago} ago{took}{every}).");
                let printed = if row.recent.is_empty() {
                    row.last_line.clone()
                } else {
                    row.recent.join("\n")
                };
                if !printed.is_empty() {
                    body.push('\n');
                    body.push_str(&last_bytes(&printed, BODY_LINES_BYTES));
                }
                (title, body)
            }
        };
        Alert {
            id: String::new(),
            change,
            machine: row.machine.clone(),
            source: row.source.clone(),
            title,
            body,
            exit: row.exit,
            time_ms: now_ms,
            reminder: false,
        }
    }

    /// A test alert from this machine.
    pub fn test(machine: &str, now_ms: f64) -> Alert {
        Alert {
            id: String::new(),
            change: Change::Test,
            machine: machine.to_string(),
            source: None,
            title: format!("scuttlefs test alert from {machine}"),
            body: "If you read this, alerts reach you.".into(),
            exit: None,
            time_ms: now_ms,
            reminder: false,
        }
    }

    /// This alert told again, the `n`th time, because its trouble lasts.
    pub fn reminder(mut self, n: u64) -> Alert {
        self.title = format!("Still: {}", self.title);
        self.id = format!("{}r{n}", self.id);
        self.reminder = true;
        self
    }

    /// The alert as JSON: `state`, `machine`, `source`, `title`, `body`,
    /// `exit` and `time`.
    pub fn to_json(&self) -> Value {
        json!({
            "state": self.change.name(),
            "machine": self.machine,
            "source": self.source,
            "title": self.title,
            "body": self.body,
            "exit": self.exit,
            "time": self.time(),
            "reminder": self.reminder,
        })
    }

    /// When it was noticed, as RFC 3339.
    pub fn time(&self) -> String {
        chrono::DateTime::from_timestamp_millis(self.time_ms as i64)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default()
    }
}

/// The most of a run's last lines an alert's body carries.
pub const BODY_LINES_BYTES: usize = 1024;

/// The end of `text`, at most `max` bytes of it, from a character
/// boundary (and a line's start, when one is within reach).
fn last_bytes(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let tail = &text[start..];
    match tail.find('\n') {
        Some(at) if at + 1 < tail.len() => format!("…\n{}", &tail[at + 1..]),
        _ => format!("…{tail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_keeps_the_end_of_what_the_run_printed() {
        let lines: Vec<String> = (0..100).map(|i| format!("line {i} of the run")).collect();
        let body = last_bytes(&lines.join("\n"), BODY_LINES_BYTES);
        assert!(body.len() <= BODY_LINES_BYTES + 4);
        assert!(body.starts_with("…\nline "), "{body}");
        assert!(body.ends_with("line 99 of the run"));
        assert_eq!(last_bytes("short", BODY_LINES_BYTES), "short");
        // Never splits a character.
        let wide = "é".repeat(1000);
        assert!(last_bytes(&wide, 1001)
            .chars()
            .all(|c| c == 'é' || c == '…'));
    }
}
