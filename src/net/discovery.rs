//! LAN discovery: every second, broadcast `net:IP:PORT~shs:KEY` for each
//! interface, and listen for the same from others.
//!
//! ssb-server listens for broadcasts on its TCP port number and go-ssb on
//! 8008, so packets go to both, and both are listened on (SO_REUSEADDR, so
//! several nodes on one host can share them).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::address::PeerAddress;
use super::peers::Peers;
use crate::config::DEFAULT_PORT;
use crate::node::Node;

/// The UDP ports to use for a node listening on TCP `port`.
fn ports(port: u16) -> Vec<u16> {
    let mut ports = vec![DEFAULT_PORT];
    if port != 0 && port != DEFAULT_PORT {
        ports.push(port);
    }
    ports
}

fn udp_socket(port: u16) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_broadcast(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())?;
    UdpSocket::from_std(socket.into())
}

/// Starts broadcasting and listening. `tcp_port` is the port actually bound.
pub fn start(node: Arc<Node>, peers: Arc<Peers>, tcp_port: u16) -> std::io::Result<()> {
    for port in ports(tcp_port) {
        let socket = udp_socket(port)?;
        let peers = peers.clone();
        tokio::spawn(async move { listen(socket, peers).await });
    }
    let sender = udp_socket(0)?;
    tokio::spawn(async move { announce(sender, node, tcp_port).await });
    Ok(())
}

async fn listen(socket: UdpSocket, peers: Arc<Peers>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(text) = std::str::from_utf8(&buf[..n]) else {
            continue;
        };
        for address in PeerAddress::parse_many(text) {
            tracing::trace!("discovered {address} from {from}");
            peers.add_candidate(address, super::remembered::Source::Lan);
        }
    }
}

async fn announce(socket: UdpSocket, node: Arc<Node>, tcp_port: u16) {
    let key = STANDARD.encode(node.id().0);
    loop {
        let interfaces = if_addrs::get_if_addrs().unwrap_or_default();
        for iface in interfaces.iter().filter(|i| !i.is_loopback()) {
            let if_addrs::IfAddr::V4(v4) = &iface.addr else {
                continue;
            };
            let packet = format!("net:{}:{tcp_port}~shs:{key}", v4.ip);
            let mut targets = vec![Ipv4Addr::BROADCAST];
            if let Some(directed) = v4.broadcast {
                targets.push(directed);
            }
            for ip in targets {
                for port in ports(tcp_port) {
                    let to = SocketAddr::V4(SocketAddrV4::new(ip, port));
                    if let Err(e) = socket.send_to(packet.as_bytes(), to).await {
                        tracing::trace!("broadcast to {to}: {e}");
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
