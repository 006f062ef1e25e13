//! The embedded message store, on sled.
//!
//! Every message lives in one sled tree under several key spaces, so that a
//! message and all of its index entries are written by one atomic batch: a
//! crash never leaves half a message, a hole in a feed, or an index entry
//! without its message.
//!
//! | key                               | value                                  |
//! |-----------------------------------|----------------------------------------|
//! | `m` author(32) seq(8)             | the signed value, compact JSON         |
//! | `k` msgid[0..2]                   | for each id in the bucket: msgid[2..32] recv(8) |
//! | `r` first recv(8)                 | received_ms(8), then author(32) seq(8) for each message of one batch |
//! | `t` timestamp(8) recv(8)          | author(32) seq(8) rendered line        |
//! | `f` author(32)                    | msgid(32) seq(8) timestamp(8): the tip |
//! | `n` author(32)                    | the feed's latest self-given name      |
//! | `c` author(32) contact(32)        | 1 following, 0 not                     |
//!
//! Integers are big-endian and timestamps are mapped to order-preserving
//! integers, so sled's key order is the order each index needs.

mod codec;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use crate::feed::{FeedError, FeedId, FeedTip, Message, MsgId};
pub use codec::{contact_edge, ordered_timestamp, RawMessage, TimestampEntry};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the store open.
    #[error("the store at {0} is locked by another process")]
    Locked(String),
    /// sled failed (disk full, corruption, I/O).
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    /// The message does not extend its feed.
    #[error("{0}")]
    Rejected(#[from] FeedError),
    /// The store holds bytes that do not decode.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
}

/// A message as the store received it.
#[derive(Clone, Debug)]
pub struct Stored {
    /// Position in the receive log, from 0.
    pub recv: u64,
    /// When this store received it, in milliseconds since the epoch.
    pub received_ms: f64,
    /// The message.
    pub msg: Message,
    /// Its rendered log line, for messages that show in `log` views.
    pub line: Option<Vec<u8>>,
    /// Length of its stored JSON (compact, as `feed.jsonl` shows it).
    pub json_len: usize,
}

struct Tips {
    by_feed: HashMap<FeedId, FeedTip>,
    next_recv: u64,
}

/// The message store. Cheap to share behind an `Arc`; appends are serialised
/// internally, reads are not.
pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
    tips: Mutex<Tips>,
}

impl Store {
    /// Opens (or creates) the store in directory `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(32 * 1024 * 1024)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| match e {
                // sled reports a held lock as an I/O error whose text is
                // the only stable sign of it.
                sled::Error::Io(ref io)
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("could not acquire lock") =>
                {
                    StoreError::Locked(dir.display().to_string())
                }
                other => StoreError::Sled(other),
            })?;
        let tree = db.open_tree("messages")?;
        let mut by_feed = HashMap::new();
        for item in tree.scan_prefix(b"f") {
            let (key, value) = item?;
            let (feed, tip) = codec::decode_tip(&key, &value)?;
            by_feed.insert(feed, tip);
        }
        let next_recv = match tree.scan_prefix(b"r").next_back() {
            Some(item) => {
                let (key, value) = item?;
                let block = codec::decode_receive_block(&key, &value)?;
                block.first + block.positions.len() as u64
            }
            None => 0,
        };
        Ok(Store {
            db,
            tree,
            tips: Mutex::new(Tips { by_feed, next_recv }),
        })
    }

    /// The latest message of `feed`.
    pub fn tip(&self, feed: &FeedId) -> Option<FeedTip> {
        self.lock_tips().by_feed.get(feed).copied()
    }

    /// Every feed with at least one message, with its tip.
    pub fn feeds(&self) -> Vec<(FeedId, FeedTip)> {
        let mut all: Vec<_> = self
            .lock_tips()
            .by_feed
            .iter()
            .map(|(f, t)| (*f, *t))
            .collect();
        all.sort_by_key(|(f, _)| *f);
        all
    }

    /// How many messages the store holds.
    pub fn len(&self) -> u64 {
        self.lock_tips().next_recv
    }

    /// Whether the store holds no messages.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `msgs`, in order, as one atomic batch.
    ///
    /// Each message must extend its feed (`FeedTip::check_next`), counting
    /// earlier messages of the same batch. The batch is all or nothing.
    /// `make_tip` runs under the append lock before anything is written, so
    /// a caller that signs messages sees a consistent tip. `render` gives each
    /// message its log line, if it has one.
    pub fn append_with(
        &self,
        make: impl FnOnce(&dyn Fn(&FeedId) -> Option<FeedTip>) -> Result<Vec<Message>, StoreError>,
        mut render: impl FnMut(&Message) -> Option<Vec<u8>>,
        received_ms: f64,
    ) -> Result<Vec<Stored>, StoreError> {
        let mut tips = self.lock_tips();
        let msgs = {
            let lookup = |feed: &FeedId| tips.by_feed.get(feed).copied();
            make(&lookup)?
        };
        let mut pending: HashMap<FeedId, FeedTip> = HashMap::new();
        let mut id_buckets: HashMap<[u8; 3], Vec<u8>> = HashMap::new();
        let mut batch = sled::Batch::default();
        let mut stored = Vec::with_capacity(msgs.len());
        let first_recv = tips.next_recv;
        let mut recv = first_recv;
        let mut positions = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let tip = pending
                .get(&msg.author)
                .or_else(|| tips.by_feed.get(&msg.author))
                .copied();
            FeedTip::check_next(tip.as_ref(), &msg)?;
            let line = render(&msg);
            let json_len = codec::put_message(&mut batch, recv, received_ms, &msg, line.as_deref());
            pending.insert(msg.author, msg.tip());
            positions.push((msg.author, msg.sequence));
            codec::push_id_entry(
                id_buckets
                    .entry(codec::id_bucket_key(&msg.key))
                    .or_default(),
                &msg.key,
                recv,
            );
            stored.push(Stored {
                recv,
                received_ms,
                msg,
                line,
                json_len,
            });
            recv += 1;
        }
        if positions.is_empty() {
            return Ok(stored);
        }
        codec::put_receive_block(&mut batch, first_recv, received_ms, &positions);
        // Read-modify-write is safe: appends hold the tips lock.
        for (key, added) in id_buckets {
            let mut bucket = self.tree.get(key)?.map(|v| v.to_vec()).unwrap_or_default();
            bucket.extend_from_slice(&added);
            batch.insert(&key[..], bucket);
        }
        for (feed, tip) in &pending {
            codec::put_tip(&mut batch, feed, tip);
        }
        self.tree.apply_batch(batch)?;
        tips.next_recv = recv;
        tips.by_feed.extend(pending);
        Ok(stored)
    }

    /// Appends already verified messages (from the network or a local signer).
    pub fn append(
        &self,
        msgs: Vec<Message>,
        render: impl FnMut(&Message) -> Option<Vec<u8>>,
        received_ms: f64,
    ) -> Result<Vec<Stored>, StoreError> {
        self.append_with(|_| Ok(msgs), render, received_ms)
    }

    /// Makes every append so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// The message at `seq` of `feed`.
    pub fn get(&self, feed: &FeedId, seq: u64) -> Result<Option<Message>, StoreError> {
        match self.get_raw(feed, seq)? {
            Some(raw) => Ok(Some(raw.message()?)),
            None => Ok(None),
        }
    }

    /// The message at `seq` of `feed`, unparsed.
    pub fn get_raw(&self, feed: &FeedId, seq: u64) -> Result<Option<RawMessage>, StoreError> {
        match self.tree.get(codec::message_key(feed, seq))? {
            Some(bytes) => Ok(Some(RawMessage::decode(bytes)?)),
            None => Ok(None),
        }
    }

    /// The message with id `key`.
    pub fn get_by_id(&self, key: &MsgId) -> Result<Option<Message>, StoreError> {
        let Some(bucket) = self.tree.get(codec::id_bucket_key(key))? else {
            return Ok(None);
        };
        let Some(recv) = codec::find_id_entry(&bucket, key) else {
            return Ok(None);
        };
        // The receive-log block holding `recv` is the last one starting at
        // or before it.
        let block = self
            .tree
            .range(codec::receive_key(0)..=codec::receive_key(recv))
            .next_back()
            .ok_or_else(|| StoreError::Corrupt(format!("no receive entry for {key}")))??;
        let block = codec::decode_receive_block(&block.0, &block.1)?;
        let (feed, seq) = block
            .positions
            .get((recv - block.first) as usize)
            .copied()
            .ok_or_else(|| StoreError::Corrupt(format!("receive entry for {key}")))?;
        self.get(&feed, seq)
    }

    /// The raw messages of `feed` from sequence `from` on, in order.
    pub fn history(
        &self,
        feed: &FeedId,
        from: u64,
    ) -> impl Iterator<Item = Result<(u64, RawMessage), StoreError>> {
        let start = codec::message_key(feed, from.max(1));
        let end = codec::message_key(feed, u64::MAX);
        self.tree.range(start..=end).map(|item| {
            let (key, value) = item?;
            Ok((codec::decode_u64(&key[33..41])?, RawMessage::decode(value)?))
        })
    }

    /// Every message in receive order, with the time it was received.
    pub fn receive_log(&self) -> impl Iterator<Item = Result<RawMessage, StoreError>> + '_ {
        self.tree
            .scan_prefix(b"r")
            .flat_map(move |item| {
                let block = item
                    .map_err(StoreError::from)
                    .and_then(|(key, value)| codec::decode_receive_block(&key, &value));
                let positions: Vec<Result<(FeedId, u64), StoreError>> = match block {
                    Ok(block) => block.positions.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                };
                positions
            })
            .map(move |position| {
                let (feed, seq) = position?;
                self.get_raw(&feed, seq)?
                    .ok_or_else(|| StoreError::Corrupt(format!("{feed} {seq} missing")))
            })
    }

    /// The log lines of every feed in timestamp order (ties by receive order).
    pub fn timestamp_index(&self) -> impl Iterator<Item = Result<TimestampEntry, StoreError>> {
        self.tree
            .scan_prefix(b"t")
            .map(|item| codec::decode_timestamp_entry(item?))
    }

    /// The latest name each feed gave itself in an `about` message.
    pub fn names(&self) -> Result<HashMap<FeedId, String>, StoreError> {
        let mut names = HashMap::new();
        for item in self.tree.scan_prefix(b"n") {
            let (key, value) = item?;
            let feed = codec::decode_feed(&key[1..])?;
            names.insert(feed, String::from_utf8_lossy(&value).into_owned());
        }
        Ok(names)
    }

    /// Every follow edge: `(author, contact, following)`, from the latest
    /// contact message of each author about each contact.
    pub fn contacts(&self) -> Result<Vec<(FeedId, FeedId, bool)>, StoreError> {
        let mut edges = Vec::new();
        for item in self.tree.scan_prefix(b"c") {
            let (key, value) = item?;
            if key.len() != 65 {
                return Err(StoreError::Corrupt("contact entry".into()));
            }
            edges.push((
                codec::decode_feed(&key[1..33])?,
                codec::decode_feed(&key[33..])?,
                value.first() == Some(&1),
            ));
        }
        Ok(edges)
    }

    fn lock_tips(&self) -> std::sync::MutexGuard<'_, Tips> {
        // A panic while holding the lock leaves the tips as they were before
        // the failed batch, which is still correct.
        self.tips.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The name a message gives its own author, if it is such an `about`.
pub fn self_given_name(msg: &Message) -> Option<&str> {
    let content = msg.content();
    if content.get("type")?.as_str()? != "about" {
        return None;
    }
    if content.get("about")?.as_str()? != msg.author.to_string() {
        return None;
    }
    content.get("name")?.as_str()
}
