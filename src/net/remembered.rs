//! Peers worth dialling again after a restart: every peer this machine
//! reached (on the LAN, from `--peer`, through an invite, or a room), kept
//! in `<path>/peers.json` with when it last worked and last failed.
//!
//! The file is a cache of hints, not a source of truth: a damaged one is
//! set aside with a warning and the daemon starts with none.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::address::PeerAddress;

use crate::clock::now_ms;

/// How many peers are remembered. Beyond it, LAN peers that have not
/// worked for the longest are forgotten first.
const MAX_REMEMBERED: usize = 128;

/// How a peer was first reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Found by LAN broadcast.
    Lan,
    /// Named with `serve --peer`.
    Peer,
    /// A pub whose invite this machine redeemed.
    Invite,
    /// A room server.
    Room,
}

impl Source {
    /// Whether a peer found this way stays when the list is full.
    fn is_chosen(self) -> bool {
        self != Source::Lan
    }
}

/// One remembered peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Remembered {
    /// `net:HOST:PORT~shs:KEY`.
    pub address: String,
    /// How it was first reached.
    pub source: Source,
    /// The network key of a room reached with another key than ours
    /// (`--room-caps`), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caps: Option<String>,
    /// When a connection last worked (ms since the epoch).
    #[serde(default)]
    pub last_success_ms: Option<f64>,
    /// When a dial last failed.
    #[serde(default)]
    pub last_failure_ms: Option<f64>,
    /// Failures since it last worked.
    #[serde(default)]
    pub failures: u32,
}

#[derive(Default, Serialize, Deserialize)]
struct File {
    peers: Vec<Remembered>,
}

/// The remembered peers of one node.
pub struct Memory {
    path: PathBuf,
    peers: Mutex<HashMap<String, Remembered>>,
}

impl Memory {
    /// Loads `<dir>/peers.json`; none yet, or a damaged one, is an empty list.
    pub fn load(dir: &Path) -> Memory {
        let path = dir.join("peers.json");
        let peers = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<File>(&bytes) {
                Ok(file) => file.peers,
                Err(e) => {
                    let aside = path.with_extension("json.damaged");
                    tracing::warn!(
                        "{} is damaged ({e}); moved to {} and starting with no remembered peers",
                        path.display(),
                        aside.display()
                    );
                    let _ = std::fs::rename(&path, &aside);
                    Vec::new()
                }
            },
            Err(_) => Vec::new(),
        };
        Memory {
            path,
            peers: Mutex::new(
                peers
                    .into_iter()
                    .filter(|p| PeerAddress::parse(&p.address).is_ok())
                    .map(|p| (p.address.clone(), p))
                    .collect(),
            ),
        }
    }

    /// Every remembered peer, most recently working first.
    pub fn list(&self) -> Vec<Remembered> {
        let mut peers: Vec<Remembered> = self.lock().values().cloned().collect();
        peers.sort_by(|a, b| {
            b.last_success_ms
                .unwrap_or(0.0)
                .total_cmp(&a.last_success_ms.unwrap_or(0.0))
                .then_with(|| a.address.cmp(&b.address))
        });
        peers
    }

    /// Whether any address of `peer` is remembered.
    pub fn knows_key(&self, peer: &crate::feed::FeedId) -> bool {
        self.lock()
            .keys()
            .any(|address| PeerAddress::parse(address).is_ok_and(|a| a.key == *peer))
    }

    /// Whether `address` is remembered.
    pub fn knows(&self, address: &PeerAddress) -> bool {
        self.lock().contains_key(&address.to_string())
    }

    /// Adds `address` if it is new. A peer already known keeps its first
    /// source, except that a chosen one (an invite, a room) overrides LAN.
    pub fn remember(&self, address: &PeerAddress, source: Source, caps: Option<String>) {
        let key = address.to_string();
        let mut peers = self.lock();
        match peers.get_mut(&key) {
            Some(known) => {
                let upgrade = source.is_chosen() && !known.source.is_chosen();
                let new_caps = caps.is_some() && known.caps != caps;
                if !upgrade && !new_caps {
                    return;
                }
                if upgrade {
                    known.source = source;
                }
                if new_caps {
                    known.caps = caps;
                }
            }
            None => {
                peers.insert(
                    key.clone(),
                    Remembered {
                        address: key,
                        source,
                        caps,
                        last_success_ms: None,
                        last_failure_ms: None,
                        failures: 0,
                    },
                );
                forget_beyond_limit(&mut peers);
            }
        }
        self.save(&peers);
    }

    /// Records a connection that worked; remembers the peer if new.
    pub fn succeeded(&self, address: &PeerAddress, source: Source) {
        let key = address.to_string();
        let mut peers = self.lock();
        let peer = peers.entry(key.clone()).or_insert_with(|| Remembered {
            address: key,
            source,
            caps: None,
            last_success_ms: None,
            last_failure_ms: None,
            failures: 0,
        });
        if source.is_chosen() && !peer.source.is_chosen() {
            peer.source = source;
        }
        peer.last_success_ms = Some(now_ms());
        peer.failures = 0;
        forget_beyond_limit(&mut peers);
        self.save(&peers);
    }

    /// Records a failed dial of a remembered peer.
    pub fn failed(&self, address: &PeerAddress) {
        let mut peers = self.lock();
        if let Some(peer) = peers.get_mut(&address.to_string()) {
            peer.last_failure_ms = Some(now_ms());
            peer.failures = peer.failures.saturating_add(1);
            self.save(&peers);
        }
    }

    fn save(&self, peers: &HashMap<String, Remembered>) {
        let mut list: Vec<&Remembered> = peers.values().collect();
        list.sort_by(|a, b| a.address.cmp(&b.address));
        let text = match serde_json::to_string_pretty(&serde_json::json!({ "peers": list })) {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!("remembered peers: {e}");
                return;
            }
        };
        // It may hold a room's network key: private, and replaced whole.
        if let Err(e) = crate::config::replace_file(&self.path, text.as_bytes()) {
            tracing::warn!("could not save the remembered peers: {e}");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Remembered>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Forgets LAN peers, the longest unsuccessful first, until the list fits.
fn forget_beyond_limit(peers: &mut HashMap<String, Remembered>) {
    while peers.len() > MAX_REMEMBERED {
        let oldest = peers
            .values()
            .filter(|p| !p.source.is_chosen())
            .min_by(|a, b| {
                a.last_success_ms
                    .unwrap_or(0.0)
                    .total_cmp(&b.last_success_ms.unwrap_or(0.0))
            })
            .map(|p| p.address.clone());
        match oldest {
            Some(address) => {
                peers.remove(&address);
            }
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::FeedId;

    fn address(n: u8) -> PeerAddress {
        PeerAddress {
            host: format!("10.0.0.{n}"),
            port: 8008,
            key: FeedId([n; 32]),
        }
    }

    #[test]
    fn peers_survive_a_reload_with_their_history() {
        let dir = tempfile::tempdir().expect("tempdir");
        let memory = Memory::load(dir.path());
        memory.succeeded(&address(1), Source::Lan);
        memory.remember(&address(2), Source::Invite, None);
        memory.failed(&address(2));
        memory.failed(&address(2));
        // A LAN sighting does not demote a pub from an invite.
        memory.succeeded(&address(2), Source::Lan);
        let reloaded = Memory::load(dir.path()).list();
        assert_eq!(reloaded.len(), 2);
        let pub_ = reloaded
            .iter()
            .find(|p| p.address == address(2).to_string())
            .expect("the pub");
        assert_eq!(pub_.source, Source::Invite);
        assert_eq!(pub_.failures, 0, "a success resets the failures");
        assert!(pub_.last_failure_ms.is_some());
        assert!(pub_.last_success_ms.is_some());
    }

    #[test]
    fn a_damaged_file_is_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("peers.json"), b"{not json").expect("write");
        assert!(Memory::load(dir.path()).list().is_empty());
        assert!(dir.path().join("peers.json.damaged").exists());
    }

    #[test]
    fn lan_peers_are_forgotten_first_when_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let memory = Memory::load(dir.path());
        memory.remember(&address(0), Source::Room, None);
        for n in 1..=(MAX_REMEMBERED as u8) {
            memory.remember(&address(n), Source::Lan, None);
        }
        let list = memory.list();
        assert_eq!(list.len(), MAX_REMEMBERED);
        assert!(list.iter().any(|p| p.source == Source::Room));
    }
}
