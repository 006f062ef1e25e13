//! LAN discovery: every second, broadcast `net:IP:PORT~shs:KEY` for each
//! interface, and listen for the same from others.
//!
//! ssb-server listens for broadcasts on its TCP port number and go-ssb on
//! 8008, so packets go to both, and both are listened on (SO_REUSEADDR, so
//! several nodes on one host can share them).
//!
//! Anyone can send a UDP packet, so an announcement is taken only when it
//! names the host it came from and that host is on one of this machine's
//! subnets; one address per packet. A packet can therefore not make the
//! daemon dial another host, and an address is remembered as working only
//! once the daemon dialled it and the handshake proved the key
//! (`peers.rs`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, RwLock};
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

/// This machine's IPv4 subnets: address and netmask of each interface.
type Subnets = Arc<RwLock<Vec<(Ipv4Addr, Ipv4Addr)>>>;

pub(crate) fn local_subnets() -> Vec<(Ipv4Addr, Ipv4Addr)> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|iface| match iface.addr {
            if_addrs::IfAddr::V4(v4) if !iface.is_loopback() => Some((v4.ip, v4.netmask)),
            _ => None,
        })
        .collect()
}

/// Whether an announcement of `address` that came from `from` is taken:
/// it names its own sender, which is on one of `subnets`.
pub fn accepts(from: IpAddr, address: &PeerAddress, subnets: &[(Ipv4Addr, Ipv4Addr)]) -> bool {
    let IpAddr::V4(from) = from else {
        return false;
    };
    let names_sender = address.host.parse::<IpAddr>() == Ok(IpAddr::V4(from));
    let on_subnet = subnets.iter().any(|(ip, mask)| {
        let mask = u32::from(*mask);
        u32::from(*ip) & mask == u32::from(from) & mask
    });
    names_sender && on_subnet && address.port != 0
}

/// Starts broadcasting and listening. `tcp_port` is the port actually bound.
pub fn start(node: Arc<Node>, peers: Arc<Peers>, tcp_port: u16) -> std::io::Result<()> {
    let subnets: Subnets = Arc::new(RwLock::new(local_subnets()));
    for port in ports(tcp_port) {
        let socket = udp_socket(port)?;
        let peers = peers.clone();
        let subnets = subnets.clone();
        tokio::spawn(async move { listen(socket, peers, subnets).await });
    }
    let sender = udp_socket(0)?;
    tokio::spawn(async move { announce(sender, node, tcp_port, subnets).await });
    Ok(())
}

async fn listen(socket: UdpSocket, peers: Arc<Peers>, subnets: Subnets) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(text) = std::str::from_utf8(&buf[..n]) else {
            continue;
        };
        let taken = {
            let subnets = subnets.read().unwrap_or_else(|e| e.into_inner());
            PeerAddress::parse_many(text)
                .into_iter()
                .find(|address| accepts(from.ip(), address, &subnets))
        };
        match taken {
            Some(address) => {
                tracing::trace!("discovered {address} from {from}");
                peers.add_candidate(address, super::remembered::Source::Lan);
            }
            None => tracing::trace!("ignored an announcement from {from}: {text:?}"),
        }
    }
}

async fn announce(socket: UdpSocket, node: Arc<Node>, tcp_port: u16, subnets: Subnets) {
    let key = STANDARD.encode(node.id().0);
    loop {
        let interfaces = if_addrs::get_if_addrs().unwrap_or_default();
        // Interfaces come and go (a laptop changes networks): the subnets
        // announcements are taken from follow them.
        *subnets.write().unwrap_or_else(|e| e.into_inner()) = local_subnets();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn address(host: &str) -> PeerAddress {
        PeerAddress::parse(&format!(
            "net:{host}:8008~shs:{}",
            STANDARD.encode([7u8; 32])
        ))
        .expect("parses")
    }

    #[test]
    fn announcements_must_name_their_sender_on_a_local_subnet() {
        let subnets = [(
            Ipv4Addr::new(10, 213, 0, 1),
            Ipv4Addr::new(255, 255, 255, 0),
        )];
        let from: IpAddr = "10.213.0.7".parse().expect("ip");
        assert!(accepts(from, &address("10.213.0.7"), &subnets));
        // Naming another host, on the subnet or off it, or by name.
        assert!(!accepts(from, &address("10.213.0.9"), &subnets));
        assert!(!accepts(from, &address("192.0.2.1"), &subnets));
        assert!(!accepts(from, &address("example.org"), &subnets));
        // From off the subnet, even naming itself.
        let far: IpAddr = "192.0.2.1".parse().expect("ip");
        assert!(!accepts(far, &address("192.0.2.1"), &subnets));
        assert!(!accepts(from, &address("10.213.0.7"), &[]));
    }
}
