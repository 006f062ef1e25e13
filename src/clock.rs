//! Time: this machine's clock, and whether the time another machine's
//! message claims can be right.
//!
//! Machines' clocks disagree: by seconds (no NTP), by decades (a Raspberry
//! Pi without a real-time clock boots in 1970, or at its image's build
//! date), or ahead. A message's claimed time is signed and shown as it
//! is, but where its line goes in `merged.log` follows one rule, which
//! uses only what the store keeps (so that a rebuild places every line
//! where the live views did):
//!
//! - A claimed time is **plausible** when it is no more than
//!   [`MAX_AHEAD_MS`] ahead of when this machine received the message, and
//!   not before [`EARLIEST_MS`] (2020-01-01, before any scuttlefs feed).
//! - A line with a plausible time is placed at it (a little late lines
//!   join `merged.log` in timestamp order).
//! - A line with an implausible time is placed at the time this machine
//!   received it: `tail -f merged.log` shows it as it arrives, and a clock
//!   a year ahead cannot put its lines after every later line of the other
//!   machines.
//!
//! A machine whose clock is consistently behind (but after 2020) writes
//! plausible times: its lines are placed at them, in the past. Its skew is
//! measured directly while it is connected ([`Skew`]), and `status` and
//! `health` name it.

/// How far ahead of the receiver's clock a claimed time may be.
pub const MAX_AHEAD_MS: f64 = 5.0 * 60.0 * 1000.0;

/// 2020-01-01T00:00:00Z: no scuttlefs message is older.
pub const EARLIEST_MS: f64 = 1_577_836_800_000.0;

/// A measured skew this large (either way) is worth naming.
pub const NOTABLE_SKEW_MS: f64 = 2.0 * 60.0 * 1000.0;

/// Milliseconds since the epoch, by this machine's clock.
pub fn now_ms() -> f64 {
    chrono::Utc::now().timestamp_millis() as f64
}

/// Whether a message claiming `claimed_ms`, received at `received_ms`,
/// can have been written then.
pub fn plausible(claimed_ms: f64, received_ms: f64) -> bool {
    claimed_ms.is_finite() && claimed_ms >= EARLIEST_MS && claimed_ms <= received_ms + MAX_AHEAD_MS
}

/// Where a line goes in timestamp order: its claimed time when plausible,
/// else when it was received.
pub fn placement_ms(claimed_ms: f64, received_ms: f64) -> f64 {
    if plausible(claimed_ms, received_ms) {
        claimed_ms
    } else {
        received_ms
    }
}

/// How far another machine's clock is from ours: theirs minus ours, in
/// ms, measured while it was connected.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Skew {
    /// Their clock minus ours.
    pub ms: f64,
    /// When it was measured (our clock).
    pub at_ms: f64,
}

impl Skew {
    /// The skew from one round trip: their time `theirs_ms`, answered
    /// between our `sent_ms` and `received_ms` (taken to be halfway).
    pub fn measure(sent_ms: f64, theirs_ms: f64, received_ms: f64) -> Skew {
        Skew {
            ms: theirs_ms - (sent_ms + received_ms) / 2.0,
            at_ms: received_ms,
        }
    }

    /// Whether it is large enough to name.
    pub fn notable(&self) -> bool {
        self.ms.abs() >= NOTABLE_SKEW_MS
    }

    /// "3 years behind", "5 minutes ahead".
    pub fn describe(&self) -> String {
        let way = if self.ms < 0.0 { "behind" } else { "ahead" };
        format!("{} {way}", roughly(self.ms.abs()))
    }
}

/// Why a claimed time is implausible, for a person: "about 1 year ahead of
/// when it arrived", "set to 1970-01-01".
pub fn implausibility(claimed_ms: f64, received_ms: f64) -> Option<String> {
    if plausible(claimed_ms, received_ms) {
        return None;
    }
    if !claimed_ms.is_finite() || claimed_ms < EARLIEST_MS {
        let day = chrono::DateTime::from_timestamp_millis(claimed_ms as i64)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_else(|| "an impossible date".into());
        return Some(format!("its clock said {day}"));
    }
    Some(format!(
        "its clock was {} ahead",
        roughly(claimed_ms - received_ms)
    ))
}

/// A duration as a person says it: "40 seconds", "3 hours", "2 years".
pub fn roughly(ms: f64) -> String {
    let s = ms / 1000.0;
    let (n, unit) = if s < 90.0 {
        (s, "second")
    } else if s < 90.0 * 60.0 {
        (s / 60.0, "minute")
    } else if s < 36.0 * 3600.0 {
        (s / 3600.0, "hour")
    } else if s < 60.0 * 86_400.0 {
        (s / 86_400.0, "day")
    } else if s < 330.0 * 86_400.0 {
        (s / (30.44 * 86_400.0), "month")
    } else {
        (s / (365.25 * 86_400.0), "year")
    };
    let n = n.round().max(1.0) as u64;
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_796_000_000_000.0; // 2026-11-29

    #[test]
    fn the_rule() {
        // A little late or early: placed where it claims.
        assert_eq!(placement_ms(NOW - 3_000.0, NOW), NOW - 3_000.0);
        assert_eq!(placement_ms(NOW + 60_000.0, NOW), NOW + 60_000.0);
        // Days late (a machine that was off): still its own time.
        assert_eq!(
            placement_ms(NOW - 5.0 * 86_400_000.0, NOW),
            NOW - 5.0 * 86_400_000.0
        );
        // A year ahead, 1970, 2000: where it arrived.
        assert_eq!(placement_ms(NOW + 365.0 * 86_400_000.0, NOW), NOW);
        assert_eq!(placement_ms(0.0, NOW), NOW);
        assert_eq!(placement_ms(946_684_800_000.0, NOW), NOW);
        assert_eq!(placement_ms(f64::NAN, NOW), NOW);
        assert_eq!(
            implausibility(0.0, NOW).as_deref(),
            Some("its clock said 1970-01-01")
        );
        assert_eq!(
            implausibility(NOW + 365.25 * 86_400_000.0, NOW).as_deref(),
            Some("its clock was 1 year ahead")
        );
        assert_eq!(implausibility(NOW, NOW), None);
    }

    #[test]
    fn skews_are_measured_halfway_and_described() {
        let skew = Skew::measure(1_000.0, 500.0 - 3.0 * 365.25 * 86_400_000.0, 1_200.0);
        assert!(skew.notable());
        assert_eq!(skew.describe(), "3 years behind");
        let small = Skew::measure(1_000.0, 1_100.0 + 3_000.0, 1_200.0);
        assert!((small.ms - 3_000.0).abs() < 1e-6);
        assert!(!small.notable());
        assert_eq!(roughly(40_000.0), "40 seconds");
        assert_eq!(roughly(3.0 * 3_600_000.0), "3 hours");
    }
}
