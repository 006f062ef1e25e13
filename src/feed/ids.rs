//! Feed and message identifiers in their SSB sigil form.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::FeedError;

/// A feed: an ed25519 public key, written `@<base64>.ed25519`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeedId(pub [u8; 32]);

/// A message: the sha256 of its signed text, written `%<base64>.sha256`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId(pub [u8; 32]);

/// Decodes canonical, padded standard base64 of exactly `N` bytes.
///
/// Canonical matters: two spellings of one key would be two feeds to a
/// JavaScript peer, which compares ids as strings.
pub fn decode_canonical<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = STANDARD.decode(text).ok()?;
    let array: [u8; N] = bytes.try_into().ok()?;
    if STANDARD.encode(array) != text {
        return None;
    }
    Some(array)
}

fn parse_sigil<const N: usize>(text: &str, sigil: char, suffix: &str) -> Option<[u8; N]> {
    let body = text.strip_prefix(sigil)?.strip_suffix(suffix)?;
    decode_canonical(body)
}

impl FeedId {
    /// Parses `@<base64>.ed25519`.
    pub fn parse(text: &str) -> Result<Self, FeedError> {
        parse_sigil(text.trim(), '@', ".ed25519")
            .map(FeedId)
            .ok_or_else(|| FeedError::BadFeedId(text.to_string()))
    }

    /// The id with base64's `/` replaced, safe as a file name.
    pub fn file_safe(&self) -> String {
        self.to_string().replace('/', "_")
    }
}

/// In JSON (the caches under `--path`), a feed is its `@….ed25519` string.
impl serde::Serialize for FeedId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for FeedId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        FeedId::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl MsgId {
    /// Parses `%<base64>.sha256`.
    pub fn parse(text: &str) -> Result<Self, FeedError> {
        parse_sigil(text, '%', ".sha256")
            .map(MsgId)
            .ok_or_else(|| FeedError::BadMsgId(text.to_string()))
    }
}

impl fmt::Display for FeedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}.ed25519", STANDARD.encode(self.0))
    }
}

impl fmt::Debug for FeedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}.sha256", STANDARD.encode(self.0))
    }
}

impl fmt::Debug for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for FeedId {
    type Err = FeedError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FeedId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_ids_round_trip_including_plus_and_slash() {
        let text = "@k8oSu2t6f/cd0jqqUbL2Oqy77J1AE39I+WoF2QK7BFg=.ed25519";
        let id = FeedId::parse(text).expect("valid id");
        assert_eq!(id.to_string(), text);
        assert_eq!(
            id.file_safe(),
            "@k8oSu2t6f_cd0jqqUbL2Oqy77J1AE39I+WoF2QK7BFg=.ed25519"
        );
    }

    #[test]
    fn malformed_feed_ids_are_refused() {
        for bad in [
            "",
            "@abc.ed25519",
            "k8oSu2t6f/cd0jqqUbL2Oqy77J1AE39I+WoF2QK7BFg=.ed25519",
            "@k8oSu2t6f/cd0jqqUbL2Oqy77J1AE39I+WoF2QK7BFg=.sha256",
            // Non-canonical: the last character's unused bits are set.
            "@k8oSu2t6f/cd0jqqUbL2Oqy77J1AE39I+WoF2QK7BFh=.ed25519",
        ] {
            assert!(FeedId::parse(bad).is_err(), "{bad}");
        }
    }
}
