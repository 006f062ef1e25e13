//! `ntfy://` and `json://` targets, over HTTP(S).
//!
//! ntfy: the body is the message; the title, priority (high for a failed
//! job, default otherwise) and tags go in ntfy's `Title`, `Priority` and
//! `Tags` headers. A webhook gets the alert as a JSON object (see
//! [`Alert::to_json`]). A 2xx answer is a delivery.

use std::time::Duration;

use base64::Engine;

use super::target::Endpoint;
use super::{Alert, Change};

/// How long one request may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// Publishes `alert` to an ntfy topic.
pub fn ntfy(endpoint: &Endpoint, alert: &Alert) -> Result<(), String> {
    let (priority, tags) = match alert.change {
        Change::Failed | Change::Stuck => ("high", "rotating_light"),
        Change::Late | Change::Quiet => ("default", "warning"),
        Change::Recovered => ("default", "white_check_mark"),
        Change::Test => ("low", "bell"),
    };
    let request = agent()
        .post(endpoint.request_url())
        .header("Title", header_text(&alert.title))
        .header("Priority", priority)
        .header("Tags", tags);
    let request = authorised(request, endpoint);
    request
        .send(alert.body.as_bytes())
        .map(|_| ())
        .map_err(|e| failure(endpoint, e))
}

/// POSTs `alert` as JSON to a webhook.
pub fn json(endpoint: &Endpoint, alert: &Alert) -> Result<(), String> {
    let request = agent()
        .post(endpoint.request_url())
        .header("Content-Type", "application/json");
    let request = authorised(request, endpoint);
    request
        .send(alert.to_json().to_string().as_bytes())
        .map(|_| ())
        .map_err(|e| failure(endpoint, e))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .user_agent(concat!("scuttlefs/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn authorised<B>(request: ureq::RequestBuilder<B>, endpoint: &Endpoint) -> ureq::RequestBuilder<B> {
    match &endpoint.credentials {
        Some((user, password)) => {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            request.header("Authorization", format!("Basic {token}"))
        }
        None => request,
    }
}

/// A header value: ASCII as it is, anything else as an RFC 2047 encoded
/// word, which ntfy decodes.
fn header_text(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.is_ascii() {
        line
    } else {
        format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(line)
        )
    }
}

/// Why a request failed, without the URL's credentials.
fn failure(endpoint: &Endpoint, error: ureq::Error) -> String {
    let url = endpoint.request_url();
    match error {
        ureq::Error::StatusCode(code) => format!("{url} answered HTTP {code}"),
        other => format!("{url}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_carry_any_text() {
        assert_eq!(header_text("backup failed on nas"), "backup failed on nas");
        assert_eq!(header_text("a\nb"), "a b");
        assert_eq!(
            header_text("sauvegarde échouée"),
            "=?UTF-8?B?c2F1dmVnYXJkZSDDqWNob3XDqWU=?="
        );
    }
}
