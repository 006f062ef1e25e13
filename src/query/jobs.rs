//! One job's history: its runs (start, duration, exit, state) and what
//! each printed, read back from its machine's feed for the job's page.

use serde_json::Value;

use crate::feed::{FeedId, Message};
use crate::node::Node;
use crate::store::StoreError;
use crate::view::line::{continues, is_log, text_of};
use crate::vocab::{parse_duration, RunEnd, RUN_FIELD};

/// How a run ended, as its page shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// Exit 0.
    Ok,
    /// A non-zero exit or a signal.
    Failed,
    /// Started and not (yet) ended.
    Running,
    /// Lines with no `scuttlefs run` around them.
    Lines,
}

impl RunOutcome {
    /// The outcome's name, in the same words as the health states.
    pub fn name(self) -> &'static str {
        match self {
            RunOutcome::Ok => "ok",
            RunOutcome::Failed => "failed",
            RunOutcome::Running => "running",
            RunOutcome::Lines => "lines",
        }
    }
}

/// One run of a job.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// When it started (its start line's time), when there was one.
    pub start_ms: Option<f64>,
    /// When it ended.
    pub end_ms: Option<f64>,
    /// How long it took, as its end line says (`2m 3s`).
    pub took: Option<String>,
    /// The same in milliseconds, for the chart.
    pub took_ms: Option<f64>,
    /// Its exit code.
    pub exit: Option<i64>,
    /// The signal that ended it.
    pub signal: Option<String>,
    /// How it ended.
    pub outcome: RunOutcome,
    /// What it printed, oldest first (at most the limit asked for: the
    /// last ones).
    pub output: Vec<String>,
    /// How many earlier lines were left out.
    pub output_cut: usize,
}

impl Run {
    fn new(start_ms: Option<f64>) -> Run {
        Run {
            start_ms,
            end_ms: None,
            took: None,
            took_ms: None,
            exit: None,
            signal: None,
            outcome: RunOutcome::Lines,
            output: Vec::new(),
            output_cut: 0,
        }
    }

    fn print(&mut self, line: String, keep: usize) {
        self.output.push(line);
        if self.output.len() > keep {
            self.output.remove(0);
            self.output_cut += 1;
        }
    }
}

/// How far back a job's page reads: its last this many messages.
pub const MESSAGES_READ: u64 = 5_000;

/// `feed`'s job `source`: its last `max_runs` runs, newest first, each
/// with at most `max_lines` of its output. Reads at most
/// [`MESSAGES_READ`] of the job's messages, so a job with a long history
/// costs no more than one with a short one.
pub fn runs(
    node: &Node,
    feed: &FeedId,
    source: &str,
    max_runs: usize,
    max_lines: usize,
) -> Result<Vec<Run>, StoreError> {
    let ranges: Vec<(u64, u64)> = node
        .with_jobs(|jobs| {
            jobs.source_runs(feed)
                .iter()
                .filter(|(_, _, s)| s == source)
                .map(|(from, to, _)| (*from, *to))
                .collect()
        })
        .unwrap_or_default();
    let mut sequences = Vec::new();
    for (from, to) in ranges.iter().rev() {
        let room = MESSAGES_READ - sequences.len() as u64;
        let first = (*from).max(to.saturating_sub(room - 1));
        sequences.extend((first..=*to).rev());
        if sequences.len() as u64 >= MESSAGES_READ {
            break;
        }
    }
    sequences.reverse();
    let mut messages = Vec::with_capacity(sequences.len());
    for seq in sequences {
        if let Some(msg) = node.store.get(feed, seq)? {
            messages.push(msg);
        }
    }
    Ok(group_runs(&messages, source, max_runs, max_lines))
}

/// Groups a job's messages (in feed order) into runs, newest first.
pub fn group_runs(
    messages: &[Message],
    source: &str,
    max_runs: usize,
    max_lines: usize,
) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut current: Option<Run> = None;
    let mut pending_part = String::new();
    for msg in messages {
        if !is_log(msg) || msg.content().get("source").and_then(Value::as_str) != Some(source) {
            continue;
        }
        let content = msg.content();
        match content.get(RUN_FIELD).and_then(Value::as_str) {
            Some("start") => {
                if let Some(run) = current.take() {
                    runs.push(run);
                }
                let mut run = Run::new(Some(msg.timestamp));
                run.outcome = RunOutcome::Running;
                current = Some(run);
            }
            Some("end") => {
                let mut run = current.take().unwrap_or_else(|| Run::new(None));
                run.end_ms = Some(msg.timestamp);
                let end = RunEnd::of(content);
                run.exit = end.exit;
                run.signal = end.signal;
                run.took = end.took;
                run.took_ms = run
                    .took
                    .as_deref()
                    .and_then(|t| parse_duration(t).ok())
                    .map(|d| d.as_secs_f64() * 1000.0);
                run.outcome = if run.exit == Some(0) && run.signal.is_none() {
                    RunOutcome::Ok
                } else {
                    RunOutcome::Failed
                };
                let text = text_of(msg);
                if !text.is_empty() && run.exit != Some(0) && run.output.is_empty() {
                    run.print(text.to_string(), max_lines);
                }
                runs.push(run);
            }
            _ => {
                pending_part.push_str(text_of(msg));
                if continues(msg) {
                    continue;
                }
                let line = std::mem::take(&mut pending_part);
                let run = current.get_or_insert_with(|| Run::new(None));
                run.print(line, max_lines);
            }
        }
        if runs.len() > max_runs {
            runs.remove(0);
        }
    }
    if let Some(run) = current {
        runs.push(run);
    }
    while runs.len() > max_runs {
        runs.remove(0);
    }
    runs.reverse();
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::Keypair;
    use serde_json::json;

    fn feed(contents: Vec<Value>) -> Vec<Message> {
        let keys = Keypair::generate();
        let mut out: Vec<Message> = Vec::new();
        for (i, content) in contents.into_iter().enumerate() {
            let tip = out.last().map(Message::tip);
            let msg = Message::sign(&keys, tip.as_ref(), 1_000.0 * (i as f64 + 1.0), content)
                .expect("signs");
            out.push(msg);
        }
        out
    }

    #[test]
    fn runs_are_grouped_newest_first_with_their_output() {
        let msgs = feed(vec![
            json!({"type": "log", "source": "backup", "run": "start", "text": "started"}),
            json!({"type": "log", "source": "backup", "text": "copying"}),
            json!({"type": "log", "source": "other", "text": "not this job"}),
            json!({"type": "log", "source": "backup", "run": "end", "exit": 0, "took": "2s", "text": "exit 0"}),
            json!({"type": "log", "source": "backup", "run": "start", "text": "started"}),
            json!({"type": "log", "source": "backup", "text": "disk ", "more": true}),
            json!({"type": "log", "source": "backup", "text": "full"}),
            json!({"type": "log", "source": "backup", "run": "end", "exit": 23, "took": "1m 30s", "text": "exit 23"}),
            json!({"type": "log", "source": "backup", "run": "start", "text": "started"}),
        ]);
        let runs = group_runs(&msgs, "backup", 10, 100);
        assert_eq!(runs.len(), 3);
        assert_eq!(runs[0].outcome, RunOutcome::Running);
        assert_eq!(runs[0].start_ms, Some(9_000.0));
        assert_eq!(runs[1].outcome, RunOutcome::Failed);
        assert_eq!(runs[1].exit, Some(23));
        assert_eq!(runs[1].took_ms, Some(90_000.0));
        assert_eq!(runs[1].output, vec!["disk full".to_string()]);
        assert_eq!(runs[2].outcome, RunOutcome::Ok);
        assert_eq!(runs[2].output, vec!["copying".to_string()]);
        assert_eq!(runs[2].end_ms, Some(4_000.0));
    }

    #[test]
    fn runs_and_lines_are_bounded() {
        let mut contents = Vec::new();
        for _ in 0..5 {
            contents.push(json!({"type": "log", "source": "j", "run": "start"}));
            for i in 0..10 {
                contents.push(json!({"type": "log", "source": "j", "text": format!("line {i}")}));
            }
            contents.push(json!({"type": "log", "source": "j", "run": "end", "exit": 0}));
        }
        let runs = group_runs(&feed(contents), "j", 2, 3);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].output, vec!["line 7", "line 8", "line 9"]);
        assert_eq!(runs[0].output_cut, 7);
    }

    #[test]
    fn plain_lines_make_one_run_of_lines() {
        let msgs = feed(vec![
            json!({"type": "log", "source": "cron", "text": "a"}),
            json!({"type": "log", "source": "cron", "text": "b"}),
        ]);
        let runs = group_runs(&msgs, "cron", 10, 10);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].outcome, RunOutcome::Lines);
        assert_eq!(runs[0].output, vec!["a", "b"]);
    }
}
