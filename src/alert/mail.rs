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
    let from = server.from.clone().unwrap_or_else(|| {
        let address = format!("scuttlefs@{}", sender_domain(&machine));
        match address.parse::<lettre::Address>() {
            Ok(_) => address,
            Err(_) => "scuttlefs@localhost".into(),
        }
    });
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
        "{}\n\n-- \nSent by scuttlefs on {machine} at {}.\n",
        alert.body,
        alert.time()
    );
    let message = message
        .body(body)
        .map_err(|e| format!("cannot build the mail: {e}"))?;
    let tls: fn(TlsParameters) -> Tls = if server.implicit_tls {
        Tls::Wrapper
    } else if server.credentials.is_some() {
        Tls::Required
    } else {
        Tls::Opportunistic
    };
    match submit(server, &message, Some(tls)) {
        // Without a login, a server whose STARTTLS cannot be verified (a
        // LAN relay with a self-signed certificate) gets the mail in the
        // clear, as it would without STARTTLS: there is no secret to keep.
        Err(why) if server.credentials.is_none() && !server.implicit_tls && is_tls(&why) => {
            tracing::warn!(
                "{}:{}: STARTTLS failed ({why}); sending without TLS",
                server.host,
                server.port
            );
            submit(server, &message, None)
        }
        other => other,
    }
}

/// One submission of `message`, with `tls` (given the server's name) or
/// in the clear.
fn submit(
    server: &MailServer,
    message: &Message,
    tls: Option<fn(TlsParameters) -> Tls>,
) -> Result<(), String> {
    let tls = match tls {
        Some(make) => make(
            TlsParameters::new(server.host.clone())
                .map_err(|e| format!("TLS for {}: {e}", server.host))?,
        ),
        None => Tls::None,
    };
    let mut transport = SmtpTransport::builder_dangerous(&server.host)
        .port(server.port)
        .tls(tls)
        .timeout(Some(TIMEOUT));
    if let Some((user, password)) = &server.credentials {
        transport = transport.credentials(Credentials::new(user.clone(), password.clone()));
    }
    transport.build().send(message).map(|_| ()).map_err(|e| {
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

/// Whether a submission failed in its TLS handshake.
fn is_tls(why: &str) -> bool {
    let why = why.to_ascii_lowercase();
    why.contains("tls") || why.contains("certificate")
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
