//! The words scuttlefs's messages are made of, in one place: the content
//! fields a run writes and the health table reads, the message types it
//! publishes beside log lines (which the views do not show), and durations
//! as people write them. Writers (`run`, `alert`, the CLI) and readers
//! (`health`, the views) agree because both take them from here.

use std::time::Duration;

/// The content type that log views show.
pub const LOG_TYPE: &str = "log";

/// Content field marking a message whose line continues in the feed's next
/// message. A line too long for one message is split this way.
pub const MORE_FIELD: &str = "more";

/// Marks a run's first line (`start`) and last line (`end`).
pub const RUN_FIELD: &str = "run";
/// The exit code, on the last line.
pub const EXIT_FIELD: &str = "exit";
/// The signal that killed the command, on the last line.
pub const SIGNAL_FIELD: &str = "signal";
/// How long the run took, on the last line (`93s`).
pub const TOOK_FIELD: &str = "took";
/// The expected cadence (`1d`), on the first and last lines.
pub const EVERY_FIELD: &str = "every";
/// How long past its cadence a job may start before it is late (default:
/// a tenth of the cadence).
pub const GRACE_FIELD: &str = "grace";
/// How long a run may take before it counts as stuck.
pub const TIMEOUT_FIELD: &str = "timeout";
/// A cron expression (`0 2 * * *`) the job runs on, instead of a cadence.
pub const CRON_FIELD: &str = "cron";
/// The time zone (`Europe/Berlin`) its cron expression is judged in.
pub const TZ_FIELD: &str = "tz";
/// `stderr`, on lines the command wrote to standard error.
pub const STREAM_FIELD: &str = "stream";

/// The message type a machine publishes after delivering an alert:
/// `{type, change, target, state}`, `change` being the alert's id and
/// `target` the target's fingerprint. The views do not show it.
pub const ANNOUNCED_TYPE: &str = "scuttlefs-alert";

/// The message type a machine publishes when its targets change:
/// `{type, targets}`, the fingerprints it alerts.
pub const ALERTING_TYPE: &str = "scuttlefs-alerting";

/// The message type `scuttlefs alert mute` publishes: `{type, machine,
/// source, until}` (`source` null for a whole machine; `until` in ms).
pub const MUTE_TYPE: &str = "scuttlefs-mute";

/// The message type `scuttlefs job retire` publishes: `{type, machine,
/// source}`. The job leaves every machine's health until it runs again.
pub const RETIRE_TYPE: &str = "scuttlefs-retire";

/// The message type an otherwise silent daemon publishes every
/// [`crate::alert::heartbeat_ms`], so that "quiet" means off or cut off.
pub const HEARTBEAT_TYPE: &str = "scuttlefs-heartbeat";

/// A duration that does not parse, or is too long to represent.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("bad duration {text:?}: {reason} (use e.g. 90s, 30m, 1h, 2d, or plain seconds)")]
pub struct DurationError {
    /// What was given.
    pub text: String,
    /// Why it cannot be used.
    pub reason: String,
}

/// Parses a duration as humantime does (`90s`, `30m`, `1h 30m`, `2days`),
/// or plain seconds (`90`). A duration too long to represent is refused,
/// not wrapped around.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let bad = |reason: String| DurationError {
        text: text.to_string(),
        reason,
    };
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        // Only digits, so the one way to fail is not fitting in a u64.
        return trimmed
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| bad("number is too large".into()));
    }
    humantime::parse_duration(trimmed).map_err(|e| bad(e.to_string()))
}

/// What a `run=end` line says of how its run ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunEnd {
    /// The exit code.
    pub exit: Option<i64>,
    /// The signal that ended it.
    pub signal: Option<String>,
    /// How long it took, as written (`2m 3s`).
    pub took: Option<String>,
}

impl RunEnd {
    /// Reads the end fields of a run's last line.
    pub fn of(content: &serde_json::Value) -> RunEnd {
        let text = |field: &str| {
            content
                .get(field)
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
        };
        RunEnd {
            exit: content.get(EXIT_FIELD).and_then(serde_json::Value::as_i64),
            signal: text(SIGNAL_FIELD),
            took: text(TOOK_FIELD),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let secs = |text| parse_duration(text).map(|d| d.as_secs()).ok();
        assert_eq!(secs("1h"), Some(3600));
        assert_eq!(secs("90"), Some(90));
        assert_eq!(secs(" 90s "), Some(90));
        assert_eq!(secs("1h 30m"), Some(5400));
        assert_eq!(secs("2d"), Some(172_800));
        assert_eq!(
            parse_duration("500ms").expect("ok"),
            Duration::from_millis(500)
        );
        for bad in ["", "1fortnight", "-5s", "s", "1.5.h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn durations_too_long_are_refused_not_wrapped() {
        // 307445734561825861 minutes is 2^64 + 44 seconds: it used to wrap
        // around to 44 s.
        for text in [
            "307445734561825861m",
            "18446744073709551616",
            "99999999999999999999s",
            "584942417356y",
        ] {
            match parse_duration(text) {
                Err(DurationError { reason, .. }) => {
                    assert!(reason.contains("too large"), "{text}: {reason}")
                }
                other => panic!("{text} gave {other:?}"),
            }
        }
        let max = u64::MAX.to_string();
        assert_eq!(
            parse_duration(&max).expect("fits").as_secs(),
            u64::MAX,
            "the largest plain number still fits"
        );
    }
}
