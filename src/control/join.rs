//! `join-code`: join codes made here (see [`crate::join`]), listed and
//! revoked. The daemon makes them: it knows the port it listens on, its
//! LAN addresses and the rooms it is in, which are the code's routes.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{io_err, Emit, RequestError};
use crate::clock::now_ms;
use crate::join::{JoinCode, Route};
use crate::net::address::PeerAddress;
use crate::net::remembered::Source;
use crate::net::Net;
use crate::node::Node;
use crate::view::line::format_timestamp;

fn refused(message: String) -> RequestError {
    RequestError {
        kind: "invalid".into(),
        message,
    }
}

/// Makes a code for `uses` machines, good for `expires_ms` from now.
pub(super) fn create(
    node: &Arc<Node>,
    net: &Arc<Net>,
    uses: u32,
    expires_in_ms: f64,
    emit: Emit<'_>,
) -> Result<(), RequestError> {
    if uses == 0 {
        return Err(refused("a join code needs at least one use".into()));
    }
    if expires_in_ms.is_nan() || expires_in_ms <= 0.0 {
        return Err(refused(
            "a join code must last a while: --expires 7d, say".into(),
        ));
    }
    let routes = routes(node, net);
    if routes.is_empty() {
        return Err(refused(
            "this machine has no address another could reach: no LAN address, no --host, no room"
                .into(),
        ));
    }
    let expires_ms = now_ms() + expires_in_ms;
    let (seed, id) = net
        .invites
        .create_join(uses, expires_ms)
        .map_err(|e| refused(e.to_string()))?;
    let code = JoinCode {
        network_key: node.config.network_key,
        inviter: node.id(),
        seed,
        expires_ms,
        routes,
    };
    emit(json!({
        "code": code.encode(),
        "id": id,
        "uses": uses,
        "expires": format_timestamp(expires_ms),
        "routes": code.describe_routes(),
    }))
    .map_err(io_err)
}

/// Where this machine can be reached: its `--host`, its LAN addresses,
/// and the rooms it is in.
fn routes(node: &Node, net: &Net) -> Vec<Route> {
    let port = super::invite::listening_port(node).unwrap_or(node.config.port);
    let mut routes = Vec::new();
    if let Some(host) = &node.config.host {
        routes.push(Route::Direct {
            host: host.clone(),
            port,
        });
    }
    let mut lan: Vec<String> = crate::net::discovery::local_subnets()
        .into_iter()
        .map(|(ip, _)| ip)
        .filter(|ip| !ip.is_link_local())
        .map(|ip| ip.to_string())
        .collect();
    lan.sort();
    lan.dedup();
    for host in lan {
        if routes
            .iter()
            .all(|r| !matches!(r, Route::Direct { host: h, .. } if *h == host))
        {
            routes.push(Route::Direct { host, port });
        }
    }
    for remembered in net.memory.list() {
        if remembered.source != Source::Room {
            continue;
        }
        let Ok(address) = PeerAddress::parse(&remembered.address) else {
            continue;
        };
        let caps = remembered
            .caps
            .as_deref()
            .and_then(|c| crate::config::parse_room_caps(c).ok());
        routes.push(Route::Room { address, caps });
    }
    routes
}

/// Lists the codes and invites with uses left.
pub(super) fn list(net: &Arc<Net>, emit: Emit<'_>) -> Result<(), RequestError> {
    let now = now_ms();
    for info in net.invites.list() {
        let item: Value = json!({
            "id": info.id,
            "kind": if info.join { "join code" } else { "pub invite" },
            "uses": info.uses,
            "made": format_timestamp(info.created_ms),
            "expires": info.expires_ms.map(format_timestamp),
            "expired": info.expires_ms.is_some_and(|at| now > at),
        });
        emit(item).map_err(io_err)?;
    }
    Ok(())
}

/// Revokes the code called `id`.
pub(super) fn revoke(net: &Arc<Net>, id: &str, emit: Emit<'_>) -> Result<(), RequestError> {
    match net.invites.revoke(id) {
        Ok(true) => emit(json!({"revoked": id})).map_err(io_err),
        Ok(false) => Err(refused(format!(
            "no join code or invite called {id:?} (scuttlefs join-code --list names them)"
        ))),
        Err(e) => Err(refused(e.to_string())),
    }
}
