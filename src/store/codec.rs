//! Byte layouts of the store's keys and values.

use crate::feed::{FeedId, FeedTip, Message, MsgId};

use super::{self_given_name, StoreError};

/// One entry of the timestamp index.
#[derive(Clone, Debug)]
pub struct TimestampEntry {
    /// The message's claimed timestamp, order-preserving (see [`ordered_timestamp`]).
    pub timestamp: u64,
    /// Its position in the receive log.
    pub recv: u64,
    /// Its feed.
    pub author: FeedId,
    /// Its sequence.
    pub seq: u64,
    /// Its rendered log line.
    pub line: sled::IVec,
}

/// Maps a timestamp to a `u64` whose unsigned order is the numeric order.
pub fn ordered_timestamp(ms: f64) -> u64 {
    let bits = ms.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

pub fn message_key(feed: &FeedId, seq: u64) -> [u8; 41] {
    let mut key = [0u8; 41];
    key[0] = b'm';
    key[1..33].copy_from_slice(&feed.0);
    key[33..41].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The id index is bucketed by the first two bytes of the id. One key per
/// message would scatter random keys across sled's tree, which then grows
/// to gigabytes of memory and slows to a crawl past a million messages;
/// 65,536 buckets keep the key count fixed.
pub fn id_bucket_key(id: &MsgId) -> [u8; 3] {
    [b'k', id.0[0], id.0[1]]
}

/// Bytes of one id-bucket entry: the id's other 30 bytes and its receive
/// position.
pub const ID_ENTRY_LEN: usize = 38;

/// Appends `id`'s entry to a bucket value.
pub fn push_id_entry(bucket: &mut Vec<u8>, id: &MsgId, recv: u64) {
    bucket.extend_from_slice(&id.0[2..]);
    bucket.extend_from_slice(&recv.to_be_bytes());
}

/// The receive position of `id` in a bucket value.
pub fn find_id_entry(bucket: &[u8], id: &MsgId) -> Option<u64> {
    bucket
        .chunks_exact(ID_ENTRY_LEN)
        .find(|entry| entry[..30] == id.0[2..])
        .and_then(|entry| decode_u64(&entry[30..]).ok())
}

/// The key of the receive-log block starting at `first`.
pub fn receive_key(first: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = b'r';
    key[1..].copy_from_slice(&first.to_be_bytes());
    key
}

fn author_seq(feed: &FeedId, seq: u64) -> [u8; 40] {
    let mut v = [0u8; 40];
    v[..32].copy_from_slice(&feed.0);
    v[32..].copy_from_slice(&seq.to_be_bytes());
    v
}

fn feed_key(prefix: u8, feed: &FeedId) -> [u8; 33] {
    let mut key = [0u8; 33];
    key[0] = prefix;
    key[1..].copy_from_slice(&feed.0);
    key
}

/// Adds `msg` and all its index entries to `batch`; returns the length of
/// its stored JSON.
pub fn put_message(
    batch: &mut sled::Batch,
    recv: u64,
    received_ms: f64,
    msg: &Message,
    line: Option<&[u8]>,
) -> usize {
    let pos = author_seq(&msg.author, msg.sequence);
    let json = msg.value_json();
    let mut stored = Vec::with_capacity(40 + json.len());
    stored.extend_from_slice(&msg.key.0);
    stored.extend_from_slice(&received_ms.to_be_bytes());
    stored.extend_from_slice(json.as_bytes());
    batch.insert(&message_key(&msg.author, msg.sequence)[..], stored);
    if let Some(line) = line {
        let mut ts_key = [0u8; 17];
        ts_key[0] = b't';
        ts_key[1..9].copy_from_slice(&ordered_timestamp(msg.timestamp).to_be_bytes());
        ts_key[9..].copy_from_slice(&recv.to_be_bytes());
        let mut value = Vec::with_capacity(40 + line.len());
        value.extend_from_slice(&pos);
        value.extend_from_slice(line);
        batch.insert(&ts_key[..], value);
    }

    if let Some(name) = self_given_name(msg) {
        batch.insert(&feed_key(b'n', &msg.author)[..], name.as_bytes());
    }

    if let Some((contact, following)) = contact_edge(msg) {
        let mut key = [0u8; 65];
        key[0] = b'c';
        key[1..33].copy_from_slice(&msg.author.0);
        key[33..].copy_from_slice(&contact.0);
        batch.insert(&key[..], &[u8::from(following)][..]);
    }
    json.len()
}

/// Adds one batch's receive-log entry: the positions of its messages in
/// the order received. One entry per batch, not per message, because sled's
/// cost is per key.
pub fn put_receive_block(
    batch: &mut sled::Batch,
    first_recv: u64,
    received_ms: f64,
    positions: &[(FeedId, u64)],
) {
    let key = receive_key(first_recv);
    let mut value = Vec::with_capacity(8 + 40 * positions.len());
    value.extend_from_slice(&received_ms.to_bits().to_be_bytes());
    for (feed, seq) in positions {
        value.extend_from_slice(&author_seq(feed, *seq));
    }
    batch.insert(&key[..], value);
}

/// One batch's entry in the receive log.
pub struct ReceiveBlock {
    /// Receive position of the batch's first message.
    pub first: u64,
    /// The messages' feeds and sequences, in the order received.
    pub positions: Vec<(FeedId, u64)>,
}

/// Decodes a receive-log entry.
pub fn decode_receive_block(key: &[u8], value: &[u8]) -> Result<ReceiveBlock, StoreError> {
    if key.len() != 9 || value.len() < 8 || (value.len() - 8) % 40 != 0 {
        return Err(StoreError::Corrupt("receive log entry".into()));
    }
    let first = decode_u64(&key[1..])?;
    let positions = value[8..]
        .chunks_exact(40)
        .map(decode_author_seq)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ReceiveBlock { first, positions })
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

/// A stored message: its id, when it was received, and its compact JSON.
pub struct RawMessage {
    /// The message id.
    pub key: MsgId,
    /// When the store received it.
    pub received_ms: f64,
    /// The whole stored entry; the JSON starts at byte 40.
    bytes: sled::IVec,
}

impl RawMessage {
    pub(crate) fn decode(bytes: sled::IVec) -> Result<RawMessage, StoreError> {
        if bytes.len() < 42 {
            return Err(StoreError::Corrupt("message entry".into()));
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[..32]);
        let received_ms = f64::from_bits(decode_u64(&bytes[32..40])?);
        Ok(RawMessage {
            key: MsgId(key),
            received_ms,
            bytes,
        })
    }

    /// The value as compact JavaScript JSON.
    pub fn json(&self) -> &[u8] {
        &self.bytes[40..]
    }

    /// Parses the message.
    pub fn message(&self) -> Result<Message, StoreError> {
        Ok(Message::from_trusted_json(self.key, self.json())?)
    }
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

pub fn decode_timestamp_entry(
    (key, value): (sled::IVec, sled::IVec),
) -> Result<TimestampEntry, StoreError> {
    if key.len() != 17 || value.len() < 40 {
        return Err(StoreError::Corrupt("timestamp entry".into()));
    }
    let (author, seq) = decode_author_seq(&value)?;
    Ok(TimestampEntry {
        timestamp: decode_u64(&key[1..9])?,
        recv: decode_u64(&key[9..17])?,
        author,
        seq,
        line: value.subslice(40, value.len() - 40),
    })
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
