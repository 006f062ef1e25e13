//! `mailto://` and `mailtos://` targets: SMTP submission.
//!
//! `mailto://` upgrades with STARTTLS when the server offers it, and
//! insists on it when a login is given, so that a password never crosses
//! the network in the clear; `mailtos://` speaks TLS from the first byte.
//! The subject is the alert's title, the body its body.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport};

use super::target::MailServer;
use super::Alert;

/// How long one submission may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Submits `alert` to `server`; an error says why it is not delivered.
pub fn deliver(server: &MailServer, alert: &Alert) -> Result<(), String> {
    let machine = crate::config::hostname();
    let from = server
        .from
        .clone()
        .unwrap_or_else(|| format!("scuttlefs@{}", sender_domain(&machine)));
    let mut message = Message::builder()
        .from(
            from.parse()
                .map_err(|e| format!("from address {from:?}: {e}"))?,
        )
        .subject(alert.title.clone())
        .header(ContentType::TEXT_PLAIN);
    for to in &server.to {
        message = message.to(to.parse().map_err(|e| format!("address {to:?}: {e}"))?);
    }
    let body = format!(
        "{}\n\n-- \nscuttlefs on {machine}: {} {}\n",
        alert.body,
        alert.change.name(),
        alert.time()
    );
    let message = message
        .body(body)
        .map_err(|e| format!("cannot build the mail: {e}"))?;
    let parameters = TlsParameters::new(server.host.clone())
        .map_err(|e| format!("TLS for {}: {e}", server.host))?;
    let tls = if server.implicit_tls {
        Tls::Wrapper(parameters)
    } else if server.credentials.is_some() {
        Tls::Required(parameters)
    } else {
        Tls::Opportunistic(parameters)
    };
    let mut transport = SmtpTransport::builder_dangerous(&server.host)
        .port(server.port)
        .tls(tls)
        .timeout(Some(TIMEOUT));
    if let Some((user, password)) = &server.credentials {
        transport = transport.credentials(Credentials::new(user.clone(), password.clone()));
    }
    transport.build().send(&message).map(|_| ()).map_err(|e| {
        let why = e.to_string();
        if server.credentials.is_some() && !server.implicit_tls && why.contains("STARTTLS") {
            format!(
                "{}:{} does not offer STARTTLS, and the login is never sent without \
                     TLS ({why})",
                server.host, server.port
            )
        } else {
            format!("{}:{}: {why}", server.host, server.port)
        }
    })
}

/// A domain for the sender's address: this machine's name when it can
/// be one, else `localhost`.
fn sender_domain(machine: &str) -> String {
    let name: String = machine
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}
