//! When a job is due again: from its cadence (`--every 1d`) or its cron
//! expression in a time zone (`--cron "0 2 * * *" --tz Europe/Berlin`),
//! plus its grace.
//!
//! The schedule travels in the run's start line, zone included, so every
//! machine that replicates the job computes the same due time whatever
//! its own zone.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::vocab::parse_duration;

/// A job without its own grace may start this much of its interval late.
const DEFAULT_GRACE: f64 = 0.1;

/// A cron job's run that starts at most this long before its time (or a
/// tenth of its interval, when that is less) served that time.
const EARLY_START_MS: f64 = 60_000.0;

/// Why a schedule was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// Not a cron expression.
    #[error("--cron {expr:?}: {reason} (five fields, minute hour day month weekday, as in \"0 2 * * *\"; a sixth in front for seconds)")]
    BadCron {
        /// The expression as given.
        expr: String,
        /// What the parser said.
        reason: String,
    },
    /// Not a zone of the IANA database.
    #[error(
        "--tz {0:?} is not a time zone: use a name such as Europe/Berlin, America/New_York or UTC"
    )]
    BadZone(String),
}

/// A cron expression judged in a time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: croner::Cron,
    zone: Tz,
}

impl CronSchedule {
    /// Parses `expr` (five fields, or six with seconds first) in `zone`.
    pub fn parse(expr: &str, zone: &str) -> Result<CronSchedule, ScheduleError> {
        let cron = croner::Cron::from_str(expr).map_err(|e| ScheduleError::BadCron {
            expr: expr.to_string(),
            reason: e.to_string(),
        })?;
        let zone = Tz::from_str(zone).map_err(|_| ScheduleError::BadZone(zone.to_string()))?;
        Ok(CronSchedule { cron, zone })
    }

    /// Whether the expression has times still to come: `0 0 30 2 *`
    /// (February 30th) parses but never fires, and a job on it could never
    /// be judged late.
    pub fn fires(&self, now_ms: f64) -> bool {
        self.after(now_ms)
            .and_then(|next| self.after(next))
            .is_some()
    }

    /// The first occurrence strictly after `ms` (counted in whole
    /// seconds, as cron counts).
    fn after(&self, ms: f64) -> Option<f64> {
        let mut from_second = (ms / 1000.0).floor() as i64;
        // Where clocks go back, cron's wall-clock search can answer with
        // the first pass of a repeated hour, before `ms`: look again from
        // an hour on, so that a job is never taken for late by it.
        for _ in 0..3 {
            let utc: DateTime<Utc> = Utc.timestamp_opt(from_second, 0).single()?;
            let next = self
                .cron
                .find_next_occurrence(&utc.with_timezone(&self.zone), false)
                .ok()?;
            let next_ms = next.timestamp_millis() as f64;
            if next_ms > ms {
                return Some(next_ms);
            }
            from_second += 3600;
        }
        None
    }

    /// The last occurrence strictly before `ms`.
    fn before(&self, ms: f64) -> Option<f64> {
        let utc: DateTime<Utc> = Utc.timestamp_opt((ms / 1000.0).ceil() as i64, 0).single()?;
        let previous = self
            .cron
            .find_previous_occurrence(&utc.with_timezone(&self.zone), false)
            .ok()?;
        Some(previous.timestamp_millis() as f64).filter(|p| *p < ms)
    }

    /// When a job whose last run started at `last_run_ms` is late from:
    /// its next time after that run, plus `grace_ms` (by default a tenth
    /// of the time from the time before it).
    pub fn due_ms(&self, grace_ms: Option<f64>, last_run_ms: f64) -> Option<f64> {
        // A run that began a moment before its time (a clock a little
        // ahead) served that time: look from a little later.
        let first = self.after(last_run_ms)?;
        let interval = self.after(first)? - first;
        let slack = (interval * DEFAULT_GRACE).min(EARLY_START_MS);
        let next = self.after(last_run_ms + slack)?;
        let grace = match grace_ms {
            Some(grace) => grace,
            None => {
                let interval = match self.before(next) {
                    Some(previous) => next - previous,
                    None => self.after(next)? - next,
                };
                interval * DEFAULT_GRACE
            }
        };
        Some(next + grace)
    }
}

/// This machine's time zone by its IANA name, for `run --cron` without
/// `--tz`: `TZ` when it names one, else the system's; UTC (with a
/// warning) when neither says.
pub fn local_zone() -> String {
    let from_env = std::env::var("TZ").ok().and_then(|tz| {
        let name = tz.trim_start_matches(':');
        let name = name.rsplit_once("zoneinfo/").map_or(name, |(_, n)| n);
        Tz::from_str(name).is_ok().then(|| name.to_string())
    });
    from_env
        .or_else(|| {
            iana_time_zone::get_timezone()
                .ok()
                .filter(|zone| Tz::from_str(zone).is_ok())
        })
        .unwrap_or_else(|| {
            tracing::warn!(
                "cannot tell this machine's time zone; judging --cron in UTC (give --tz ZONE)"
            );
            "UTC".to_string()
        })
}

/// How a job is scheduled, as its last run's start line said.
#[derive(Debug, Clone, Copy, Default)]
pub struct Schedule<'a> {
    /// Its cadence (`1d`).
    pub every: Option<&'a str>,
    /// Its cron expression and zone.
    pub cron: Option<(&'a str, &'a str)>,
    /// How long past its time it may start.
    pub grace: Option<&'a str>,
}

impl Schedule<'_> {
    /// When a job that last ran at `last_run_ms` is late from; `None`
    /// without a schedule (or with one that no longer parses).
    pub fn due_ms(&self, last_run_ms: f64) -> Option<f64> {
        let grace = self
            .grace
            .and_then(|g| parse_duration(g).ok())
            .map(|g| g.as_secs_f64() * 1000.0);
        if let Some((expr, zone)) = self.cron {
            return CronSchedule::parse(expr, zone)
                .ok()?
                .due_ms(grace, last_run_ms);
        }
        let every = parse_duration(self.every?).ok()?.as_secs_f64() * 1000.0;
        Some(last_run_ms + every + grace.unwrap_or(every * DEFAULT_GRACE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> f64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("a time")
            .timestamp_millis() as f64
    }

    #[test]
    fn a_cadence_is_due_after_its_interval_and_a_tenth() {
        let every = Schedule {
            every: Some("10h"),
            ..Schedule::default()
        };
        assert_eq!(every.due_ms(0.0), Some(11.0 * 3_600_000.0));
        let graced = Schedule {
            every: Some("10h"),
            grace: Some("5m"),
            ..Schedule::default()
        };
        assert_eq!(graced.due_ms(0.0), Some(10.0 * 3_600_000.0 + 300_000.0));
        assert_eq!(Schedule::default().due_ms(0.0), None);
    }

    #[test]
    fn a_cron_job_is_due_at_its_next_time_in_its_own_zone() {
        // 02:00 in Kathmandu (UTC+5:45) is 20:15 UTC the day before.
        let nightly = Schedule {
            cron: Some(("0 2 * * *", "Asia/Kathmandu")),
            grace: Some("30m"),
            ..Schedule::default()
        };
        let ran = ms("2026-12-06T20:15:03Z");
        assert_eq!(nightly.due_ms(ran), Some(ms("2026-12-07T20:45:00Z")));
        // A run that began a little before its time served that time; one
        // started by hand in between serves none, and the next is due.
        let early = ms("2026-12-06T20:14:58Z");
        assert_eq!(nightly.due_ms(early), Some(ms("2026-12-07T20:45:00Z")));
        let by_hand = ms("2026-12-07T15:40:53.181Z");
        assert_eq!(nightly.due_ms(by_hand), Some(ms("2026-12-07T20:45:00Z")));
        let seconds = Schedule {
            cron: Some(("*/2 * * * * *", "UTC")),
            grace: Some("1s"),
            ..Schedule::default()
        };
        assert_eq!(
            seconds.due_ms(ms("2026-12-07T15:40:52.100Z")),
            Some(ms("2026-12-07T15:40:55Z"))
        );
        // Without a grace: a tenth of the day.
        let default_grace = Schedule {
            cron: Some(("0 2 * * *", "Asia/Kathmandu")),
            ..Schedule::default()
        };
        assert_eq!(
            default_grace.due_ms(ran),
            Some(ms("2026-12-07T20:15:00Z") + 8_640_000.0)
        );
    }

    #[test]
    fn daylight_saving_moves_the_due_time_with_the_zone() {
        // Berlin leaves summer time on 2026-10-25: 02:30 local is 00:30
        // UTC before and 01:30 UTC after.
        let nightly = Schedule {
            cron: Some(("30 2 * * *", "Europe/Berlin")),
            grace: Some("0s"),
            ..Schedule::default()
        };
        assert_eq!(
            nightly.due_ms(ms("2026-10-22T00:30:00Z")),
            Some(ms("2026-10-23T00:30:00Z"))
        );
        assert_eq!(
            nightly.due_ms(ms("2026-10-26T01:30:00Z")),
            Some(ms("2026-10-27T01:30:00Z"))
        );
    }

    #[test]
    fn a_repeated_hour_never_makes_a_job_late() {
        // Berlin repeats 02:00-03:00 on 2026-10-25. A run at 02:10 on the
        // second pass (01:10 UTC) is due after it, not before.
        let quarterly = Schedule {
            cron: Some(("*/15 * * * *", "Europe/Berlin")),
            grace: Some("0s"),
            ..Schedule::default()
        };
        let ran = ms("2026-10-25T01:10:00Z");
        let due = quarterly.due_ms(ran).expect("due");
        // (The second pass's own quarter hours are not seen: cron
        // searches wall-clock time. At worst a late job is told an hour
        // later, once a year.)
        assert!(due > ran && due <= ran + 2.0 * 3_600_000.0, "{due} {ran}");
        // Weekdays at 09:00: Friday's grace is a tenth of the day before
        // it, not of the weekend after.
        let weekdays = Schedule {
            cron: Some(("0 9 * * 1-5", "UTC")),
            ..Schedule::default()
        };
        assert_eq!(
            weekdays.due_ms(ms("2026-12-10T09:00:01Z")),
            Some(ms("2026-12-11T09:00:00Z") + 8_640_000.0)
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_refused_with_the_reason() {
        let error = CronSchedule::parse("0 25 * * *", "UTC").unwrap_err();
        assert!(
            error.to_string().contains("--cron \"0 25 * * *\""),
            "{error}"
        );
        let error = CronSchedule::parse("0 2 * * *", "Mars/Olympus").unwrap_err();
        assert!(error.to_string().contains("Mars/Olympus"), "{error}");
        assert!(CronSchedule::parse("*/3 * * * * *", "UTC").is_ok());
        let now = ms("2026-12-07T15:00:00Z");
        assert!(CronSchedule::parse("0 2 * * *", "UTC").unwrap().fires(now));
        assert!(!CronSchedule::parse("0 0 30 2 *", "UTC").unwrap().fires(now));
        assert!(!local_zone().is_empty());
    }
}
