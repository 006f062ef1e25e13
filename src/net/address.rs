//! Peer addresses in multiserver form: `net:HOST:PORT~shs:KEY`.

use std::fmt;

use crate::feed::ids::decode_canonical;
use crate::feed::FeedId;

/// Why an address cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("bad peer address {0:?}: expected net:HOST:PORT~shs:BASE64KEY")]
pub struct AddressError(pub String);

/// Where a peer listens and who it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddress {
    /// Host name or IP.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The peer's public key.
    pub key: FeedId,
}

impl PeerAddress {
    /// Parses one `net:HOST:PORT~shs:KEY` address. Keys may contain `+` and
    /// `/` (kuska-ssb 0.4's pattern rejects `+`: about half of all keys), and
    /// may be given with or without the `@…​.ed25519` dressing.
    pub fn parse(text: &str) -> Result<PeerAddress, AddressError> {
        let bad = || AddressError(text.to_string());
        let text = text.trim();
        let (net, shs) = text.split_once('~').ok_or_else(bad)?;
        let hostport = net.strip_prefix("net:").ok_or_else(bad)?;
        let (host, port) = hostport.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        let port: u16 = port.parse().map_err(|_| bad())?;
        let key = shs.strip_prefix("shs:").ok_or_else(bad)?;
        // Further multiserver transforms (`~noauth`, …) are not ours.
        let key = key.split('~').next().unwrap_or(key);
        let key = key.trim_start_matches('@').trim_end_matches(".ed25519");
        let key = decode_canonical::<32>(key).ok_or_else(bad)?;
        Ok(PeerAddress {
            host: host.to_string(),
            port,
            key: FeedId(key),
        })
    }

    /// Parses a discovery packet: one or more addresses separated by `;`.
    /// Addresses that do not parse (other transports such as `ws:`) are
    /// skipped.
    pub fn parse_many(text: &str) -> Vec<PeerAddress> {
        text.split(';')
            .filter_map(|part| PeerAddress::parse(part).ok())
            .collect()
    }
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.key.to_string();
        let key = id.trim_start_matches('@').trim_end_matches(".ed25519");
        if self.host.contains(':') {
            write!(f, "net:[{}]:{}~shs:{}", self.host, self.port, key)
        } else {
            write!(f, "net:{}:{}~shs:{}", self.host, self.port, key)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_with_plus_and_several_addresses_parse() {
        let key = "k8oSu2t6f/cd0jqqUbL2Oqy77J1AE39I+WoF2QK7BFg=";
        let packet = format!(
            "net:10.0.0.2:8008~shs:{key};ws://10.0.0.2:8989~shs:{key};net:10.0.0.3:9~shs:{key}"
        );
        let peers = PeerAddress::parse_many(&packet);
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].host, "10.0.0.2");
        assert_eq!(peers[0].port, 8008);
        assert_eq!(peers[0].to_string(), format!("net:10.0.0.2:8008~shs:{key}"));
        assert_eq!(peers[1].port, 9);
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for bad in [
            "",
            "net:host~shs:x",
            "tcp:1.2.3.4:8008~shs:k8oSu2t6f/cd0jqqUbL2Oqy77J1AE39I+WoF2QK7BFg=",
        ] {
            assert!(PeerAddress::parse(bad).is_err(), "{bad}");
        }
    }
}
