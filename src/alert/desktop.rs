//! `desktop://` targets: a notification on this machine's desktop, through
//! the session's `org.freedesktop.Notifications` service over D-Bus.
//!
//! A failed or stuck job is critical (most notification daemons keep it
//! until it is dismissed). The body is escaped: notification daemons read
//! it as markup, and every line in it was written by some machine.

use notify_rust::{Notification, Timeout, Urgency};

use super::{Alert, Change};

/// Shows `alert` on the desktop; an error says why it is not delivered
/// (no session bus, or no notification daemon on it).
pub fn deliver(alert: &Alert) -> Result<(), String> {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none()
        && std::env::var_os("XDG_RUNTIME_DIR").is_none()
    {
        return Err(
            "no desktop session: DBUS_SESSION_BUS_ADDRESS is not set in the \
                    daemon's environment (start it from the desktop session, or as a \
                    systemd user service)"
                .into(),
        );
    }
    let urgency = match alert.change {
        Change::Failed | Change::Stuck => Urgency::Critical,
        Change::Late | Change::Quiet => Urgency::Normal,
        Change::Recovered | Change::Test => Urgency::Low,
    };
    Notification::new()
        .appname("scuttlefs")
        .summary(&alert.title)
        .body(&escape(&alert.body))
        .icon(match alert.change {
            Change::Failed | Change::Stuck => "dialog-error",
            Change::Late | Change::Quiet => "dialog-warning",
            Change::Recovered | Change::Test => "dialog-information",
        })
        .urgency(urgency)
        .timeout(Timeout::Default)
        .show()
        .map(|_| ())
        .map_err(|e| format!("no desktop notification: {e}"))
}

/// `text` with the characters notification markup gives meaning to
/// escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn markup_in_a_line_is_shown_as_text() {
        assert_eq!(
            super::escape("<b>rm -rf</b> & more"),
            "&lt;b&gt;rm -rf&lt;/b&gt; &amp; more"
        );
    }
}
