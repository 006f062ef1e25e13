//! Jobs and their health, from what the feeds say: a job is a machine and
//! a `source`; its last run is its last `run=end` line (see [`crate::run`])
//! or, for plain log lines, its last line. Every machine that replicates a
//! feed judges its jobs the same way, with no server in the middle.
//!
//! The table is advanced by the node's commit hook, one message at a time
//! in commit order, and keeps a high-water sequence per feed, so a message
//! is never counted twice. It is saved to `<path>/jobs.cache` (a cache: a
//! missing or damaged one is rebuilt from the feeds), so `health` answers
//! from memory and never reads the history.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::feed::{FeedId, Message};
use crate::schedule::Schedule;
use crate::store::{Store, StoreError};
use crate::view::line::{format_timestamp, is_log, label, text_of};
use crate::vocab::{
    parse_duration, ALERTING_TYPE, ANNOUNCED_TYPE, CRON_FIELD, EVERY_FIELD, GRACE_FIELD, MUTE_TYPE,
    RETIRE_TYPE, RUN_FIELD, TIMEOUT_FIELD, TZ_FIELD,
};

/// A machine silent this long counts as gone quiet, by default.
pub const DEFAULT_MAX_SILENCE_MS: f64 = 26.0 * 3600.0 * 1000.0;
/// How much of a job's last line is kept.
const LAST_LINE_CHARS: usize = 200;

/// What one job last did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// When its last line was written (ms since the epoch).
    pub last_ms: f64,
    /// The text of its last line (for a run: the last the command
    /// printed, else how it ended), cut short.
    pub last_text: String,
    /// When its last run started.
    pub start_ms: Option<f64>,
    /// When its last run ended.
    pub end_ms: Option<f64>,
    /// How the last run ended.
    pub exit: Option<i64>,
    /// The signal that ended the last run.
    pub signal: Option<String>,
    /// How long the last run took.
    pub took: Option<String>,
    /// The cadence its runs announce (`1d`).
    pub every: Option<String>,
    /// How long past its cadence it may start (default: a tenth of it).
    #[serde(default)]
    pub grace: Option<String>,
    /// How long a run may take before it is stuck.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Its cron expression (`0 2 * * *`), instead of a cadence.
    #[serde(default)]
    pub cron: Option<String>,
    /// The time zone its cron expression is judged in.
    #[serde(default)]
    pub tz: Option<String>,
    /// Its last line is a long one whose next part is still to come.
    #[serde(default)]
    pub in_long_line: bool,
    /// The last lines the command of its last run printed, at most
    /// [`RECENT_LINES`], each cut short (an alert's body shows them).
    #[serde(default)]
    pub recent: Vec<String>,
    /// When it is late from, worked out when its run or schedule last
    /// changed (not on each judgement: a cron expression costs its
    /// parsing), and again when the table is loaded.
    #[serde(skip)]
    due: Option<f64>,
}

/// How many of a run's last lines a job keeps for its alerts.
pub const RECENT_LINES: usize = 10;

/// A job's state, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Its last run failed.
    Failed,
    /// A run has gone on past its `--timeout`.
    Stuck,
    /// A machine whose feed forked: two different messages at one
    /// sequence (often a machine restored from a backup).
    Forked,
    /// No run started within its cadence (plus 10 %).
    Late,
    /// A machine with no message for longer than the allowed silence.
    Quiet,
    /// A machine whose clock is off: its times are wrong.
    Clock,
    /// A run has started and not ended.
    Running,
    /// All is well.
    Ok,
}

/// The key a mute or retire message names (`"<feed> <source>"`, or
/// `"<feed>"` for a whole machine), and whether it names a job.
fn job_key(content: &Value) -> Option<(String, bool)> {
    let feed: FeedId = content.get("machine")?.as_str()?.parse().ok()?;
    match content.get("source").and_then(Value::as_str) {
        Some(source) => Some((format!("{feed} {source}"), true)),
        None => Some((feed.to_string(), false)),
    }
}

impl Job {
    /// How the job is scheduled, as its last run's start said.
    pub fn schedule(&self) -> Schedule<'_> {
        Schedule {
            every: self.every.as_deref(),
            cron: self.cron.as_deref().zip(self.tz.as_deref()),
            grace: self.grace.as_deref(),
        }
    }

    /// When the job is late from; `None` without a schedule or a run.
    pub fn due_ms(&self) -> Option<f64> {
        self.due
    }

    /// Works out [`Job::due_ms`] again, after its run or schedule changed.
    fn refresh_due(&mut self) {
        self.due = self
            .start_ms
            .or(self.end_ms)
            .and_then(|last| self.schedule().due_ms(last));
    }

    /// The job's state at `now_ms`.
    pub fn state(&self, now_ms: f64) -> State {
        let running = match (self.start_ms, self.end_ms) {
            (Some(start), Some(end)) => start > end,
            (Some(_), None) => true,
            _ => false,
        };
        let late = self.due_ms().is_some_and(|due| now_ms > due);
        if running {
            let stuck = self
                .timeout
                .as_deref()
                .and_then(|t| parse_duration(t).ok())
                .zip(self.start_ms)
                .is_some_and(|(timeout, start)| now_ms - start > timeout.as_secs_f64() * 1000.0);
            return if stuck {
                State::Stuck
            } else if late {
                State::Late
            } else {
                State::Running
            };
        }
        if self.exit.is_some_and(|code| code != 0) {
            State::Failed
        } else if late {
            State::Late
        } else {
            State::Ok
        }
    }

    /// When the job last ran: its last run's start, else its last line.
    pub fn last_run_ms(&self) -> f64 {
        self.start_ms.unwrap_or(self.last_ms)
    }
}

/// Every job of every feed, as far as the feeds have been read.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JobTable {
    /// Job by feed, then source.
    jobs: HashMap<FeedId, HashMap<String, Job>>,
    /// The latest sequence read of each feed.
    seen: HashMap<FeedId, u64>,
    /// Which source each log line of each feed has, as runs of sequences
    /// `(first, last, source)`; `""` for lines without one. A run spans
    /// the other messages between its lines (they have no line). The views
    /// build `<machine>/jobs/` from these. (Required: a cache without them
    /// is of an older make, and is rebuilt.)
    sources: HashMap<FeedId, Vec<(u64, u64, String)>>,
    /// Alerts some machine said it delivered: `"<change id> <target
    /// fingerprint>"` (see [`crate::alert`]).
    #[serde(default)]
    announced: std::collections::HashSet<String>,
    /// The target fingerprints each machine last said it alerts.
    #[serde(default)]
    alerting: HashMap<FeedId, Vec<String>>,
    /// Mutes (`scuttlefs alert mute`): by `"<feed> <source>"` or
    /// `"<feed>"`, until when, and when the mute was said (the latest
    /// said wins).
    #[serde(default)]
    mutes: HashMap<String, (f64, f64)>,
    /// Retired jobs (`scuttlefs job retire`): by `"<feed> <source>"`, when.
    /// A run after that brings the job back.
    #[serde(default)]
    retired: HashMap<String, f64>,
}

impl JobTable {
    /// The sequence of `feed` up to which the table is current.
    pub fn seen(&self, feed: &FeedId) -> u64 {
        self.seen.get(feed).copied().unwrap_or(0)
    }

    /// Reads one committed message; anything at or below the feed's
    /// high-water sequence is ignored.
    pub fn observe(&mut self, msg: &Message) {
        let seen = self.seen.entry(msg.author).or_insert(0);
        if msg.sequence <= *seen {
            return;
        }
        *seen = msg.sequence;
        match msg.content_type() {
            Some(ANNOUNCED_TYPE) => {
                let content = msg.content();
                let field = |name| content.get(name).and_then(Value::as_str);
                if let (Some(change), Some(target)) = (field("change"), field("target")) {
                    self.announced.insert(format!("{change} {target}"));
                }
                return;
            }
            Some(MUTE_TYPE) => {
                if let Some((key, _)) = job_key(msg.content()) {
                    let until = msg.content().get("until").and_then(Value::as_f64);
                    let newer = self
                        .mutes
                        .get(&key)
                        .is_none_or(|(_, said)| *said <= msg.timestamp);
                    if let (Some(until), true) = (until, newer) {
                        self.mutes.insert(key, (until, msg.timestamp));
                    }
                }
                return;
            }
            Some(RETIRE_TYPE) => {
                if let Some((key, true)) = job_key(msg.content()) {
                    let at = self.retired.entry(key).or_insert(msg.timestamp);
                    *at = at.max(msg.timestamp);
                }
                return;
            }
            Some(ALERTING_TYPE) => {
                let targets = msg
                    .content()
                    .get("targets")
                    .and_then(Value::as_array)
                    .map(|ts| {
                        ts.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                self.alerting.insert(msg.author, targets);
                return;
            }
            _ => {}
        }
        if !is_log(msg) {
            return;
        }
        let content = msg.content();
        let source = content.get("source").and_then(Value::as_str);
        let runs = self.sources.entry(msg.author).or_default();
        match runs.last_mut() {
            Some(run) if run.2 == source.unwrap_or("") => run.1 = msg.sequence,
            _ => runs.push((msg.sequence, msg.sequence, source.unwrap_or("").to_string())),
        }
        let Some(source) = source else {
            return;
        };
        let job = self
            .jobs
            .entry(msg.author)
            .or_default()
            .entry(source.to_string())
            .or_default();
        job.last_ms = msg.timestamp;
        let text = || {
            text_of(msg)
                .chars()
                .take(LAST_LINE_CHARS)
                .collect::<String>()
        };
        let printed = |job: &mut Job, text: String| {
            if job.recent.len() == RECENT_LINES {
                job.recent.remove(0);
            }
            job.recent.push(text.clone());
            job.last_text = text;
        };
        match content.get(RUN_FIELD).and_then(Value::as_str) {
            // The run's own markers say less than what the command printed
            // last: an end line shows only when the command printed nothing.
            Some("start") => {
                job.last_text.clear();
                job.recent.clear();
            }
            Some("end") if !job.last_text.is_empty() => {}
            Some("end") => job.last_text = text(),
            // A long line comes in parts: its start says more than its end.
            _ if crate::view::line::continues(msg) => {
                if !job.in_long_line {
                    printed(job, text());
                }
                job.in_long_line = true;
            }
            _ if job.in_long_line => job.in_long_line = false,
            _ => printed(job, text()),
        }
        let every = content.get(EVERY_FIELD).and_then(Value::as_str);
        if let Some(every) = every {
            job.every = Some(every.to_string());
        }
        if content.get(RUN_FIELD).and_then(Value::as_str) == Some("start") {
            // A run's schedule is what its start says: a field dropped is
            // gone.
            let field = |name| {
                content
                    .get(name)
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            job.grace = field(GRACE_FIELD);
            job.timeout = field(TIMEOUT_FIELD);
            job.cron = field(CRON_FIELD);
            job.tz = field(TZ_FIELD);
        }
        match content.get(RUN_FIELD).and_then(Value::as_str) {
            Some("start") => job.start_ms = Some(msg.timestamp),
            Some("end") => {
                job.end_ms = Some(msg.timestamp);
                let end = crate::vocab::RunEnd::of(content);
                job.exit = end.exit;
                job.signal = end.signal;
                job.took = end.took;
            }
            _ if every.is_none() => return,
            _ => {}
        }
        job.refresh_due();
    }

    /// Whether alerts about `feed`'s job `source` (or, with `None`, about
    /// the machine) are muted at `now_ms`; a machine's mute covers its jobs.
    pub fn muted(&self, feed: &FeedId, source: Option<&str>, now_ms: f64) -> bool {
        let active = |key: &str| {
            self.mutes
                .get(key)
                .is_some_and(|(until, _)| *until > now_ms)
        };
        active(&feed.to_string()) || source.is_some_and(|s| active(&format!("{feed} {s}")))
    }

    /// The mutes in force at `now_ms`: `("<feed>[ <source>]", until)`.
    pub fn mutes(&self, now_ms: f64) -> Vec<(String, f64)> {
        let mut mutes: Vec<(String, f64)> = self
            .mutes
            .iter()
            .filter(|(_, (until, _))| *until > now_ms)
            .map(|(key, (until, _))| (key.clone(), *until))
            .collect();
        mutes.sort_by(|a, b| a.0.cmp(&b.0));
        mutes
    }

    /// Whether some machine said it delivered the alert `change` to the
    /// target `target` (a fingerprint).
    pub fn announced(&self, change: &str, target: &str) -> bool {
        self.announced.contains(&format!("{change} {target}"))
    }

    /// The machines that said they alert `target` (a fingerprint).
    pub fn alerting(&self, target: &str) -> Vec<FeedId> {
        let mut holders: Vec<FeedId> = self
            .alerting
            .iter()
            .filter(|(_, targets)| targets.iter().any(|t| t == target))
            .map(|(feed, _)| *feed)
            .collect();
        holders.sort_by_key(|f| f.to_string());
        holders
    }

    /// The targets `feed` last said it alerts, if it said.
    pub fn targets_of(&self, feed: &FeedId) -> Option<&[String]> {
        self.alerting.get(feed).map(Vec::as_slice)
    }

    /// Reads every message the store has past the table's high-water
    /// sequences; returns how many.
    pub fn catch_up(&mut self, store: &Store) -> Result<u64, StoreError> {
        let mut read = 0;
        for (feed, tip) in store.feeds() {
            let from = self.seen(&feed) + 1;
            if from > tip.sequence {
                continue;
            }
            for item in store.history(&feed, from) {
                let (_, raw) = item?;
                self.observe(&raw.message()?);
                read += 1;
            }
            // A history that stops short of the tip is a damaged index:
            // counting past the gap would lose its lines for good.
            if self.seen(&feed) < tip.sequence {
                return Err(StoreError::Corrupt(format!(
                    "{feed}'s history ends at {} of {}",
                    self.seen(&feed),
                    tip.sequence
                )));
            }
        }
        Ok(read)
    }

    /// Whether the table claims messages `store` lacks (it was saved before
    /// a power cut took messages the store had not synced).
    pub fn is_ahead_of(&self, store: &Store) -> bool {
        let tips: HashMap<FeedId, u64> = store
            .feeds()
            .into_iter()
            .map(|(feed, tip)| (feed, tip.sequence))
            .collect();
        self.seen
            .iter()
            .any(|(feed, seen)| *seen > tips.get(feed).copied().unwrap_or(0))
    }

    /// The runs of sources of `feed`'s log lines, in sequence order.
    pub fn source_runs(&self, feed: &FeedId) -> &[(u64, u64, String)] {
        self.sources.get(feed).map_or(&[], Vec::as_slice)
    }

    /// How many jobs there are.
    pub fn len(&self) -> usize {
        self.jobs.values().map(HashMap::len).sum()
    }

    /// Whether there is no job.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads a saved table; `None` when there is none or it is damaged.
    pub fn load(path: &Path) -> Option<JobTable> {
        let bytes = std::fs::read(path).ok()?;
        match serde_json::from_slice::<JobTable>(&bytes) {
            Ok(mut table) => {
                for job in table.jobs.values_mut().flat_map(|jobs| jobs.values_mut()) {
                    job.refresh_due();
                }
                Some(table)
            }
            Err(e) => {
                tracing::warn!("{} is damaged ({e}); rebuilding it", path.display());
                None
            }
        }
    }

    /// Saves the table (atomically: a crash leaves the old or the new one).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::config::replace_file(path, &bytes)
    }

    /// The health report at `now_ms`: every job, and every machine in
    /// `machines` (feed → its latest message's time) silent for longer than
    /// `max_silence_ms`, worst first.
    pub fn report(
        &self,
        now_ms: f64,
        names: &HashMap<FeedId, String>,
        machines: &[(FeedId, f64)],
        max_silence_ms: f64,
    ) -> Report {
        let mut rows = Vec::with_capacity(self.len());
        for (feed, jobs) in &self.jobs {
            let machine = label(feed, names);
            for (source, job) in jobs {
                let retired = if self.retired.is_empty() {
                    None
                } else {
                    self.retired.get(&format!("{feed} {source}"))
                };
                if retired.is_some_and(|at| job.last_ms <= *at) {
                    continue;
                }
                let last_run_ms = job.last_run_ms();
                rows.push(Row {
                    state: job.state(now_ms),
                    machine: machine.clone(),
                    id: *feed,
                    source: Some(source.clone()),
                    last_run_ms,
                    age_ms: (now_ms - last_run_ms).max(0.0),
                    exit: job.exit,
                    signal: job.signal.clone(),
                    took: job.took.clone(),
                    every: job.every.clone(),
                    cron: job.cron.clone().zip(job.tz.clone()),
                    due_ms: job.due_ms(),
                    last_line: job.last_text.clone(),
                    recent: job.recent.clone(),
                });
            }
        }
        for (feed, last_ms) in machines {
            let silent = now_ms - last_ms;
            if silent <= max_silence_ms {
                continue;
            }
            rows.push(Row {
                state: State::Quiet,
                machine: label(feed, names),
                id: *feed,
                source: None,
                last_run_ms: *last_ms,
                age_ms: silent.max(0.0),
                exit: None,
                signal: None,
                took: None,
                every: None,
                cron: None,
                due_ms: None,
                last_line: format!("no message for {}", age(silent)),
                recent: Vec::new(),
            });
        }
        rows.sort_by(|a, b| {
            (a.state, &a.machine, &a.source).cmp(&(b.state, &b.machine, &b.source))
        });
        Report {
            now_ms,
            rows,
            heard_ms: machines.iter().copied().collect(),
        }
    }
}

/// One row of the health report: a job, or a machine gone quiet.
#[derive(Clone, Debug)]
pub struct Row {
    /// A job's last run's last lines, as its alerts show them.
    pub recent: Vec<String>,
    /// Its state.
    pub state: State,
    /// The machine's label.
    pub machine: String,
    /// The machine's feed.
    pub id: FeedId,
    /// The job's source (`None` for a quiet machine's row).
    pub source: Option<String>,
    /// When the job last ran (the machine's last message, for a quiet one).
    pub last_run_ms: f64,
    /// How long ago that was.
    pub age_ms: f64,
    /// The last run's exit code.
    pub exit: Option<i64>,
    /// The signal that ended it.
    pub signal: Option<String>,
    /// How long it took.
    pub took: Option<String>,
    /// The job's cadence.
    pub every: Option<String>,
    /// The job's cron expression and its time zone.
    pub cron: Option<(String, String)>,
    /// When the job is late from.
    pub due_ms: Option<f64>,
    /// Its last line.
    pub last_line: String,
}

impl Row {
    /// The job's schedule as a person reads it: `1d`, or a cron
    /// expression and its zone.
    pub fn schedule(&self) -> Option<String> {
        match (&self.cron, &self.every) {
            (Some((expr, zone)), _) => Some(format!("{expr} {zone}")),
            (None, every) => every.clone(),
        }
    }
}

/// The health of every job and machine at one moment, worst first.
#[derive(Clone, Debug)]
pub struct Report {
    /// When it was made.
    pub now_ms: f64,
    /// The rows, worst first.
    pub rows: Vec<Row>,
    /// When each other machine was last heard from.
    pub heard_ms: HashMap<FeedId, f64>,
}

impl State {
    /// The state's name, as the table and the JSON show it.
    pub fn name(self) -> &'static str {
        match self {
            State::Failed => "failed",
            State::Forked => "forked",
            State::Stuck => "stuck",
            State::Late => "late",
            State::Quiet => "quiet",
            State::Clock => "clock",
            State::Running => "running",
            State::Ok => "ok",
        }
    }
}

impl Report {
    /// Adds a row about a whole machine (`Forked`, `Clock`): what this
    /// node noticed beyond its jobs.
    pub fn add_machine_note(
        &mut self,
        state: State,
        machine: String,
        id: FeedId,
        at_ms: f64,
        text: String,
    ) {
        self.rows.push(Row {
            state,
            machine,
            id,
            source: None,
            last_run_ms: at_ms,
            age_ms: (self.now_ms - at_ms).max(0.0),
            exit: None,
            signal: None,
            took: None,
            every: None,
            cron: None,
            due_ms: None,
            last_line: text,
            recent: Vec::new(),
        });
        self.rows.sort_by(|a, b| {
            (a.state, &a.machine, &a.source).cmp(&(b.state, &b.machine, &b.source))
        });
    }

    /// Whether all is well: every job ok or running, no machine quiet.
    pub fn healthy(&self) -> bool {
        self.rows
            .iter()
            .all(|row| matches!(row.state, State::Ok | State::Running))
    }

    /// The report as JSON (`health --json`).
    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                json!({
                    "state": row.state.name(),
                    "machine": row.machine,
                    "id": row.id.to_string(),
                    "source": row.source,
                    "last_run": format_timestamp(row.last_run_ms),
                    "age": age(row.age_ms),
                    "age_ms": row.age_ms,
                    "exit": row.exit,
                    "signal": row.signal,
                    "took": row.took,
                    "every": row.every,
                    "cron": row.cron.as_ref().map(|(expr, _)| expr),
                    "tz": row.cron.as_ref().map(|(_, zone)| zone),
                    "due": row.due_ms.map(format_timestamp),
                    "last_line": row.last_line,
                })
            })
            .collect();
        json!({
            "healthy": self.healthy(),
            "at": format_timestamp(self.now_ms),
            "rows": rows,
        })
    }

    /// The report as a table a person reads (`mount/health`).
    pub fn render(&self) -> String {
        let dash = || "-".to_string();
        let mut table = vec![[
            "STATE",
            "MACHINE",
            "SOURCE",
            "LAST RUN",
            "AGE",
            "EXIT",
            "TOOK",
            "EVERY",
            "LAST LINE",
        ]
        .map(String::from)];
        for row in &self.rows {
            let exit = match (&row.signal, row.exit) {
                (Some(signal), _) => signal.clone(),
                (None, Some(code)) => code.to_string(),
                (None, None) => dash(),
            };
            table.push([
                row.state.name().to_string(),
                row.machine.clone(),
                row.source.clone().unwrap_or_else(dash),
                format_timestamp(row.last_run_ms),
                age(row.age_ms),
                exit,
                row.took.clone().unwrap_or_else(dash),
                row.schedule().unwrap_or_else(dash),
                row.last_line.clone(),
            ]);
        }
        let widths: Vec<usize> = (0..8)
            .map(|i| {
                table
                    .iter()
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::with_capacity(table.len() * 100);
        for row in &table {
            for (i, width) in widths.iter().enumerate() {
                out.push_str(&row[i]);
                for _ in row[i].chars().count()..width + 2 {
                    out.push(' ');
                }
            }
            out.push_str(&row[8]);
            out.push('\n');
        }
        if self.rows.is_empty() {
            out.push_str("(no jobs yet: wrap one with `scuttlefs run --source NAME -- COMMAND`)\n");
        }
        out
    }
}

/// `3h`, `2d`, `45s`: how long ago, roughly.
fn age(ms: f64) -> String {
    let secs = (ms / 1000.0).max(0.0) as u64;
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::Keypair;

    const HOUR: f64 = 3_600_000.0;

    fn feed(keys: &Keypair, contents: &[Value]) -> Vec<Message> {
        let mut out: Vec<Message> = Vec::new();
        for (i, content) in contents.iter().enumerate() {
            let tip = out.last().map(Message::tip);
            let msg = Message::sign(keys, tip.as_ref(), (i as f64 + 1.0) * HOUR, content.clone())
                .expect("signs");
            out.push(msg);
        }
        out
    }

    #[test]
    fn states_follow_the_last_run() {
        let keys = Keypair::generate();
        let msgs = feed(
            &keys,
            &[
                json!({"type": "log", "source": "backup", "every": "1d", "run": "start", "text": "duplicity"}),
                json!({"type": "log", "source": "backup", "text": "working"}),
                json!({"type": "log", "source": "backup", "every": "1d", "run": "end", "exit": 4, "took": "93s", "text": "failed"}),
                json!({"type": "log", "source": "sync", "every": "2h", "run": "start", "text": "rsync"}),
                json!({"type": "log", "source": "sync", "every": "2h", "run": "end", "exit": 0, "took": "1s", "text": "ok"}),
                json!({"type": "log", "source": "notes", "text": "a plain line"}),
                json!({"type": "contact", "contact": keys.id().to_string(), "following": true}),
            ],
        );
        let mut table = JobTable::default();
        for msg in &msgs {
            table.observe(msg);
        }
        // Observing again changes nothing.
        let before = table.clone();
        for msg in &msgs {
            table.observe(msg);
        }
        assert_eq!(before.jobs, table.jobs);
        assert_eq!(table.len(), 3);
        let jobs = &table.jobs[&keys.id()];
        let now = 7.0 * HOUR;
        assert_eq!(jobs["backup"].state(now), State::Failed);
        // The sync started at hour 4 and runs every 2 h: late after 2.2 h.
        assert_eq!(jobs["sync"].state(6.1 * HOUR), State::Ok);
        assert_eq!(jobs["sync"].state(6.3 * HOUR), State::Late);
        assert_eq!(jobs["notes"].state(now), State::Ok);
        let report = table.report(
            now,
            &HashMap::new(),
            &[(keys.id(), 6.0 * HOUR)],
            DEFAULT_MAX_SILENCE_MS,
        );
        let report = report.to_json();
        assert_eq!(report["healthy"], json!(false));
        assert_eq!(report["rows"][0]["state"], json!("failed"));
        assert_eq!(report["rows"][0]["exit"], json!(4));
        // The command's last line, not the run's own marker.
        assert_eq!(report["rows"][0]["last_line"], json!("working"));
        assert_eq!(report["rows"][1]["state"], json!("late"));
        let text = table
            .report(now, &HashMap::new(), &[], DEFAULT_MAX_SILENCE_MS)
            .render();
        assert!(text.starts_with("STATE"), "{text}");
        assert!(text.contains("failed"), "{text}");
    }

    #[test]
    fn a_run_in_progress_is_running_until_late_and_quiet_machines_show() {
        let keys = Keypair::generate();
        let msgs = feed(
            &keys,
            &[
                json!({"type": "log", "source": "build", "every": "1h", "run": "start", "text": "make"}),
            ],
        );
        let mut table = JobTable::default();
        table.observe(&msgs[0]);
        let job = &table.jobs[&keys.id()]["build"];
        assert_eq!(job.state(1.5 * HOUR), State::Running);
        assert_eq!(job.state(3.0 * HOUR), State::Late);
        let other = Keypair::generate().id();
        let report = table
            .report(
                1.5 * HOUR + 27.0 * HOUR,
                &HashMap::new(),
                &[(other, 1.0 * HOUR)],
                DEFAULT_MAX_SILENCE_MS,
            )
            .to_json();
        let states: Vec<&str> = report["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["state"].as_str().expect("state"))
            .collect();
        assert_eq!(states, ["late", "quiet"]);
    }

    #[test]
    fn the_table_survives_a_save_and_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = Keypair::generate();
        let msgs = feed(
            &keys,
            &[json!({"type": "log", "source": "x", "text": "hi"})],
        );
        let mut table = JobTable::default();
        table.observe(&msgs[0]);
        let path = dir.path().join("jobs.cache");
        table.save(&path).expect("saves");
        let loaded = JobTable::load(&path).expect("loads");
        assert_eq!(loaded.jobs, table.jobs);
        assert_eq!(loaded.seen(&keys.id()), 1);
        std::fs::write(&path, b"{oops").expect("write");
        assert!(JobTable::load(&path).is_none());
    }
}
