//! Byte layouts of the store's keys and values.

use crate::feed::{FeedId, FeedTip, Message, MsgId};

use super::{self_given_name, StoreError};

/// Maps a timestamp to a `u64` whose unsigned order is the numeric order.
pub fn ordered_timestamp(ms: f64) -> u64 {
    let bits = ms.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

/// The timestamp [`ordered_timestamp`] mapped.
pub fn timestamp_from_ordered(ordered: u64) -> f64 {
    if ordered >> 63 == 1 {
        f64::from_bits(ordered & !(1 << 63))
    } else {
        f64::from_bits(!ordered)
    }
}

pub fn message_key(feed: &FeedId, seq: u64) -> [u8; 41] {
    let mut key = [0u8; 41];
    key[0] = b'm';
    key[1..33].copy_from_slice(&feed.0);
    key[33..41].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The key under which earlier versions kept the directory of an index
/// by message id.
pub const ID_DIRECTORY_KEY: &[u8] = b"I";

/// The key of the log offset up to which the position files are synced.
pub const POSITIONS_SYNCED_KEY: &[u8] = b"P";

/// The key of the log's committed extent ([`LogExtent`]).
pub const EXTENT_KEY: &[u8] = b"E";

/// Present while the indexes are being rebuilt from the log: a rebuild
/// that was cut off starts again.
pub const REBUILDING_KEY: &[u8] = b"R";

/// The key of the number of timestamp-index entries (lines), moved in the
/// same batch as the entries, so that opening can tell if any are missing.
pub const LINE_COUNT_KEY: &[u8] = b"L";

/// How much of the message log the indexes cover.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogExtent {
    /// Offset just past the last indexed record.
    pub end: u64,
    /// How many records that is.
    pub count: u64,
    /// Offset of the last indexed record.
    pub last: u64,
}

pub fn encode_extent(extent: &LogExtent) -> [u8; 24] {
    let mut value = [0u8; 24];
    value[..8].copy_from_slice(&extent.end.to_be_bytes());
    value[8..16].copy_from_slice(&extent.count.to_be_bytes());
    value[16..].copy_from_slice(&extent.last.to_be_bytes());
    value
}

pub fn decode_extent(value: &[u8]) -> Result<LogExtent, StoreError> {
    if value.len() != 24 {
        return Err(StoreError::Corrupt("log extent".into()));
    }
    Ok(LogExtent {
        end: decode_u64(&value[..8])?,
        count: decode_u64(&value[8..16])?,
        last: decode_u64(&value[16..])?,
    })
}

fn feed_key(prefix: u8, feed: &FeedId) -> [u8; 33] {
    let mut key = [0u8; 33];
    key[0] = prefix;
    key[1..].copy_from_slice(&feed.0);
    key
}

/// Adds the index entries of `msg` besides its position (see
/// [`put_positions`]) to `batch`: its self-given name, cut to `max_name`
/// bytes, and its follow edge.
pub fn put_index_entries(batch: &mut sled::Batch, msg: &Message, max_name: usize) {
    if let Some(name) = self_given_name(msg) {
        let mut cut = name.len().min(max_name);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        batch.insert(&feed_key(b'n', &msg.author)[..], &name.as_bytes()[..cut]);
    }
    if let Some((contact, following)) = contact_edge(msg) {
        let mut key = [0u8; 65];
        key[0] = b'c';
        key[1..33].copy_from_slice(&msg.author.0);
        key[33..].copy_from_slice(&contact.0);
        batch.insert(&key[..], &[u8::from(following)][..]);
    }
}

/// One batch's entry in the legacy receive log.
pub struct ReceiveBlock {
    /// The messages' feeds and sequences, in the order received.
    pub positions: Vec<(FeedId, u64)>,
}

/// Decodes a legacy receive-log entry.
pub fn decode_receive_block(key: &[u8], value: &[u8]) -> Result<ReceiveBlock, StoreError> {
    if key.len() != 9 || value.len() < 8 || (value.len() - 8) % 40 != 0 {
        return Err(StoreError::Corrupt("receive log entry".into()));
    }
    let positions = value[8..]
        .chunks_exact(40)
        .map(decode_author_seq)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ReceiveBlock { positions })
}

/// Records `tip` as the latest message of `feed`.
pub fn put_tip(batch: &mut sled::Batch, feed: &FeedId, tip: &FeedTip) {
    let mut value = [0u8; 48];
    value[..32].copy_from_slice(&tip.key.0);
    value[32..40].copy_from_slice(&tip.sequence.to_be_bytes());
    value[40..].copy_from_slice(&tip.timestamp.to_bits().to_be_bytes());
    batch.insert(&feed_key(b'f', feed)[..], &value[..]);
}

/// The follow edge a `contact` message sets: `(contact, following)`.
/// Blocking counts as not following.
pub fn contact_edge(msg: &Message) -> Option<(FeedId, bool)> {
    let content = msg.content();
    if content.get("type")?.as_str()? != "contact" {
        return None;
    }
    let contact = FeedId::parse(content.get("contact")?.as_str()?).ok()?;
    let following = content.get("following").and_then(|v| v.as_bool());
    let blocking = content.get("blocking").and_then(|v| v.as_bool());
    match (following, blocking) {
        (_, Some(true)) => Some((contact, false)),
        (Some(f), _) => Some((contact, f)),
        (None, Some(false)) => None,
        (None, None) => None,
    }
}

/// Decodes a legacy message entry: `(id, received ms, compact JSON)`.
pub fn decode_legacy_message(value: &[u8]) -> Result<(MsgId, f64, &[u8]), StoreError> {
    if value.len() < 42 {
        return Err(StoreError::Corrupt("legacy message entry".into()));
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&value[..32]);
    let received_ms = f64::from_bits(decode_u64(&value[32..40])?);
    Ok((MsgId(id), received_ms, &value[40..]))
}

pub fn decode_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("integer field".into()))?;
    Ok(u64::from_be_bytes(array))
}

pub fn decode_feed(bytes: &[u8]) -> Result<FeedId, StoreError> {
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("feed id field".into()))?;
    Ok(FeedId(array))
}

pub fn decode_author_seq(bytes: &[u8]) -> Result<(FeedId, u64), StoreError> {
    if bytes.len() < 40 {
        return Err(StoreError::Corrupt("position field".into()));
    }
    Ok((decode_feed(&bytes[..32])?, decode_u64(&bytes[32..40])?))
}

pub fn decode_tip(key: &[u8], value: &[u8]) -> Result<(FeedId, FeedTip), StoreError> {
    if key.len() != 33 || value.len() != 48 {
        return Err(StoreError::Corrupt("tip entry".into()));
    }
    let feed = decode_feed(&key[1..])?;
    let mut id = [0u8; 32];
    id.copy_from_slice(&value[..32]);
    let sequence = decode_u64(&value[32..40])?;
    let timestamp = f64::from_bits(decode_u64(&value[40..48])?);
    Ok((
        feed,
        FeedTip {
            key: MsgId(id),
            sequence,
            timestamp,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::ordered_timestamp;

    #[test]
    fn timestamp_order_survives_the_mapping() {
        let values = [
            -1e12,
            -1.5,
            -0.0,
            0.0,
            0.5,
            1.0,
            1.7e12,
            1.7e12 + 0.25,
            1e300,
        ];
        for pair in values.windows(2) {
            assert!(
                ordered_timestamp(pair[0]) <= ordered_timestamp(pair[1]),
                "{pair:?}"
            );
        }
    }
}
