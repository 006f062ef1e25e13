//! Redeeming a join code ([`crate::join`]) from a machine that is not set
//! up yet: as the code's guest, directly, or through a tunnel in one of
//! the inviter's rooms, calling `invite.use` with the new machine's id.

use std::time::Duration;

use serde_json::json;

use super::invite::{call_invite_use, InviteError};
use super::muxrpc::{Frame, Wire};
use super::shs::{self, ShsError};
use super::tunnel::TunnelStream;
use crate::feed::{FeedId, Keypair};
use crate::join::{JoinCode, Route};

/// How long one route may take to answer.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a code could not be redeemed.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// The inviter answered, and refused.
    #[error(
        "the inviter refused the code ({0}): it was used already, revoked, or has expired; \
         ask for a new one (scuttlefs join-code)"
    )]
    Refused(String),
    /// No route reached the inviter.
    #[error("could not reach the inviter: {}", .0.join("; "))]
    Unreachable(Vec<String>),
}

/// Redeems `code` for `me`, trying its routes in order; returns the route
/// that worked.
pub async fn redeem(code: &JoinCode, me: FeedId) -> Result<Route, RedeemError> {
    let guest = Keypair::from_seed(&code.seed);
    let mut failures = Vec::new();
    for route in &code.routes {
        let attempt = tokio::time::timeout(ROUTE_TIMEOUT, try_route(code, route, &guest, me)).await;
        let described = route.describe();
        match attempt {
            Ok(Ok(())) => return Ok(route.clone()),
            Ok(Err(Attempt::Refused(message))) => {
                // The inviter itself answered: no other route changes that.
                return Err(RedeemError::Refused(message));
            }
            Ok(Err(Attempt::Failed(why))) => failures.push(format!("{described}: {why}")),
            Err(_) => failures.push(format!("{described}: no answer within 20 s")),
        }
    }
    if failures.is_empty() {
        failures.push("the code names no route".into());
    }
    Err(RedeemError::Unreachable(failures))
}

enum Attempt {
    Refused(String),
    Failed(String),
}

impl From<InviteError> for Attempt {
    fn from(e: InviteError) -> Self {
        match e {
            InviteError::Refused { message, .. } if message.contains("already following") => {
                Attempt::Failed("already joined".into())
            }
            InviteError::Refused { message, .. }
                if message.contains("not in list of allowed methods")
                    || message.contains("expired") =>
            {
                Attempt::Refused(message)
            }
            other => Attempt::Failed(other.to_string()),
        }
    }
}

fn failed(e: ShsError) -> Attempt {
    Attempt::Failed(e.to_string())
}

async fn try_route(
    code: &JoinCode,
    route: &Route,
    guest: &Keypair,
    me: FeedId,
) -> Result<(), Attempt> {
    match route {
        Route::Direct { host, port } => {
            let conn = shs::connect(host, *port, code.inviter, guest, &code.network_key)
                .await
                .map_err(failed)?;
            answer(call_invite_use(conn, me).await)
        }
        Route::Room { address, caps } => {
            let room_key = caps.unwrap_or(code.network_key);
            let conn = shs::connect(&address.host, address.port, address.key, guest, &room_key)
                .await
                .map_err(failed)?;
            let mut wire = Wire::start(conn.reader, conn.writer);
            let req = 1;
            let (stream, tunnel) = TunnelStream::new(wire.tunnels.clone(), req);
            let control = wire.control.clone();
            let _ = control.send(Frame::request(
                req,
                &["tunnel", "connect"],
                "duplex",
                json!([{"portal": address.key.to_string(), "target": code.inviter.to_string()}]),
            ));
            // The room's frames: the tunnel's bytes go to the stream; the
            // room's own calls are not a guest's business.
            let pump = tokio::spawn(async move {
                while let Some(Ok(frame)) = wire.frames.recv().await {
                    if frame.req == -req {
                        if frame.end || tunnel.send(frame.body).await.is_err() {
                            break;
                        }
                    } else if frame.req > 0 && !frame.end {
                        let _ = control.send(Frame::error(-frame.req, frame.stream, "a guest"));
                    }
                }
                wire.close().await;
            });
            let through = format!("{}:{} (room)", address.host, address.port);
            let inner = shs::connect_over(stream, code.inviter, guest, &code.network_key, through)
                .await
                .map_err(failed);
            let outcome = match inner {
                Ok(inner) => answer(call_invite_use(inner, me).await),
                Err(e) => Err(e),
            };
            pump.abort();
            outcome
        }
    }
}

fn answer(result: Result<(), InviteError>) -> Result<(), Attempt> {
    match result {
        Ok(()) => Ok(()),
        // Joined before (the inviter follows us already): as good as now.
        Err(InviteError::Refused { message, .. }) if message.contains("already following") => {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
