//! Keeping the indexes and the log in agreement: recovery when the store
//! opens (a cut-off rebuild, a log behind or ahead of sled, positions past
//! their last sync, entries of older versions) and the indexing of each
//! appended batch. See the invariants in `mod.rs`.

use std::collections::HashMap;
use std::sync::RwLock;

use super::codec::{self, LogExtent};
use super::log::{self, MessageLog};
use super::positions::{self, Positions};
use super::{io_error, Committed, Placed, StoreError, Stored, MAX_STORED_NAME, REBUILD_BATCH};
use crate::feed::{FeedId, FeedTip, Message};

/// Index maintenance, shared by opening (before a [`Store`] exists) and
/// appends.
pub(super) struct Indexer<'a> {
    pub(super) tree: &'a sled::Tree,
    pub(super) log: &'a MessageLog,
    pub(super) positions: &'a Positions,
}

impl Indexer<'_> {
    /// Brings the indexes and the log into agreement (see the invariants).
    pub(super) fn recover(&self, committed: &mut Committed) -> Result<(), StoreError> {
        if self.tree.contains_key(codec::REBUILDING_KEY)? {
            tracing::warn!("an index rebuild was cut off; rebuilding again");
            return self.rebuild(committed);
        }
        let Some(extent) = self.tree.get(codec::EXTENT_KEY)? else {
            if self.tree.scan_prefix(b"r").next().is_some() {
                return self.migrate_legacy(committed);
            }
            if self.log.file_len()? > 0 {
                return self.rebuild(committed);
            }
            return Ok(());
        };
        let Ok(extent) = codec::decode_extent(&extent) else {
            tracing::warn!("the log's indexed extent does not decode; rebuilding the indexes");
            return self.rebuild(committed);
        };
        let file_len = self.log.file_len()?;
        let last_whole = extent.count == 0
            || (file_len >= extent.end
                && self
                    .log
                    .read_unsized(extent.last)
                    .is_ok_and(|r| extent.last + log::record_len(r.json.len()) == extent.end));
        if !last_whole {
            tracing::warn!("the message log is behind its indexes (power loss?); rebuilding them");
            return self.rebuild(committed);
        }
        Ok(())
    }

    /// Reads the tips and the extent.
    pub(super) fn load(&self, committed: &mut Committed) -> Result<(), StoreError> {
        committed.by_feed.clear();
        for item in self.tree.scan_prefix(b"f") {
            let (key, value) = item?;
            let (feed, tip) = codec::decode_tip(&key, &value)?;
            committed.by_feed.insert(feed, tip);
        }
        committed.extent = match self.tree.get(codec::EXTENT_KEY)? {
            Some(value) => codec::decode_extent(&value)?,
            None => LogExtent::default(),
        };
        Ok(())
    }

    /// Writes again, from the log, the positions of the records committed
    /// after the last sync of the position files (all of them, for a store
    /// that kept its positions in sled), and cuts each file to its feed's
    /// tip; then syncs them.
    pub(super) fn restore_positions(&self, committed: &Committed) -> Result<(), StoreError> {
        let end = committed.extent.end;
        let synced = match self.tree.get(codec::POSITIONS_SYNCED_KEY)? {
            Some(value) => codec::decode_u64(&value)?.min(end),
            None => 0,
        };
        if synced < end {
            if synced == 0 && end > 0 {
                tracing::info!("writing the position files from the message log");
            }
            let mut runs = FeedRuns::default();
            for item in self.log.scan(synced, end) {
                let (offset, record) = item?;
                let msg = Message::from_trusted_json(record.id, &record.json)?;
                runs.push(&msg, offset, record.json.len());
                if runs.len() >= REBUILD_BATCH * 16 {
                    runs.write(self.positions)?;
                }
            }
            runs.write(self.positions)?;
        }
        let rewrote = synced < end;
        let tips = committed
            .by_feed
            .iter()
            .map(|(feed, tip)| (*feed, tip.sequence))
            .collect();
        let short = self.positions.trim(&tips).map_err(io_error)?;
        if let Some(feed) = short.first() {
            return Err(StoreError::Corrupt(format!(
                "{} feeds' position files end before their tips ({feed}'s, for one)",
                short.len()
            )));
        }
        self.sync_positions(end)?;
        if rewrote {
            // A short-lived process (`whoami`, `follow`) would otherwise
            // exit before sled's own flush, and every open would write the
            // same positions again.
            self.tree.flush()?;
        }
        Ok(())
    }

    /// Syncs the position files, then records that the log is covered up
    /// to `end`: the extent read before the sync began.
    pub(super) fn sync_positions(&self, end: u64) -> Result<(), StoreError> {
        if let Err(e) = self.positions.sync() {
            // Linux may mark pages clean after a failed fsync, so a retry
            // can report success for data that never reached the disk:
            // the next open writes every position again instead.
            let _ = self.tree.remove(codec::POSITIONS_SYNCED_KEY);
            return Err(io_error(e));
        }
        let value = end.to_be_bytes();
        // Unchanged, it is not written again: an idle store writes nothing.
        if self.tree.get(codec::POSITIONS_SYNCED_KEY)?.as_deref() != Some(&value[..]) {
            self.tree.insert(codec::POSITIONS_SYNCED_KEY, &value[..])?;
        }
        Ok(())
    }

    /// Checks what opening can check cheaply, so that damage shows now,
    /// while the index can still be rebuilt, rather than as errors or holes
    /// later: every sled entry reads (sled pages nodes in lazily, and its
    /// recovery silently drops what follows a damaged spot of its log),
    /// the tips count every indexed message, and each feed's last position
    /// names its tip's record.
    pub(super) fn check_readable(&self, committed: &Committed) -> Result<(), StoreError> {
        for prefix in [&b"n"[..], b"c"] {
            for item in self.tree.scan_prefix(prefix) {
                item?;
            }
        }
        let total: u64 = committed.by_feed.values().map(|tip| tip.sequence).sum();
        if total != committed.extent.count {
            return Err(StoreError::Corrupt(format!(
                "the tips count {total} messages, the log {}",
                committed.extent.count
            )));
        }
        for (feed, tip) in &committed.by_feed {
            let found = self
                .positions
                .read(feed, tip.sequence, tip.sequence)
                .map_err(io_error)?;
            let names_tip = match found.first() {
                Some(&(offset, json_len)) => self
                    .log
                    .read(offset, json_len)
                    .is_ok_and(|record| record.id == tip.key),
                None => false,
            };
            if !names_tip {
                return Err(StoreError::Corrupt(format!(
                    "{feed}'s last position does not name its tip"
                )));
            }
        }
        Ok(())
    }

    /// Rebuilds every index from the log, keeping the longest prefix of it
    /// whose records are whole and extend their feeds; the rest is cut off.
    pub(super) fn rebuild(&self, committed: &mut Committed) -> Result<(), StoreError> {
        self.tree.clear()?;
        self.tree.insert(codec::REBUILDING_KEY, &[][..])?;
        // Durable before the position files go: otherwise a power cut could
        // bring back the old `P` over files half written again.
        self.tree.flush()?;
        self.positions.clear().map_err(io_error)?;
        *committed = Committed::default();
        self.index_log_tail(committed)?;
        self.sync_positions(committed.extent.end)?;
        self.tree.remove(codec::REBUILDING_KEY)?;
        self.tree.flush()?;
        tracing::info!("rebuilt the indexes of {} messages", committed.extent.count);
        Ok(())
    }

    /// Indexes the records the log holds past the indexed extent: whole
    /// ones that extend their feeds, in order; the rest of the file, from
    /// the first record that is not, is cut off.
    ///
    /// Records past the extent are a batch whose index entries never
    /// committed (a crash, or power loss that kept the synced log but not
    /// sled). Keeping the whole ones matters for this machine's own feed:
    /// peers may already have them, and signing other messages at the same
    /// sequences would fork the feed.
    pub(super) fn index_log_tail(&self, committed: &mut Committed) -> Result<(), StoreError> {
        let file_len = self.log.file_len()?;
        let mut group = Vec::with_capacity(REBUILD_BATCH);
        let mut pending: HashMap<FeedId, FeedTip> = HashMap::new();
        let mut end = committed.extent.end;
        // Indexed in groups, each committed as appends commit theirs.
        let shared = RwLock::new(std::mem::take(committed));
        for item in self.log.scan(end, file_len) {
            let Ok((offset, record)) = item else { break };
            let Ok(msg) = Message::from_trusted_json(record.id, &record.json) else {
                break;
            };
            let tip = pending.get(&msg.author).copied().or_else(|| {
                let committed = shared.read().unwrap_or_else(|e| e.into_inner());
                committed.by_feed.get(&msg.author).copied()
            });
            if FeedTip::check_next(tip.as_ref(), &msg).is_err() {
                break;
            }
            pending.insert(msg.author, msg.tip());
            end = offset + log::record_len(record.json.len());
            group.push(Placed {
                offset,
                received_ms: record.received_ms,
                line: None,
                json_len: record.json.len(),
                msg,
            });
            if group.len() == REBUILD_BATCH {
                self.index(&shared, std::mem::take(&mut group))?;
                pending.clear();
            }
        }
        if !group.is_empty() {
            self.index(&shared, group)?;
        }
        *committed = shared.into_inner().unwrap_or_else(|e| e.into_inner());
        if end < file_len {
            tracing::warn!(
                "cut the message log at byte {end} of {file_len}: the rest is not whole"
            );
            self.log.truncate(end)?;
        }
        Ok(())
    }

    /// Moves a store of the legacy layout (message bodies in sled, one
    /// receive-log entry per batch) into the log, then rebuilds the indexes.
    pub(super) fn migrate_legacy(&self, committed: &mut Committed) -> Result<(), StoreError> {
        tracing::warn!("moving the store's messages into the message log");
        let mut records = Vec::new();
        for block in self.tree.scan_prefix(b"r") {
            let (key, value) = block?;
            for (feed, seq) in codec::decode_receive_block(&key, &value)?.positions {
                let value = self
                    .tree
                    .get(codec::message_key(&feed, seq))?
                    .ok_or_else(|| StoreError::Corrupt(format!("{feed} {seq} missing")))?;
                let (id, received_ms, json) = codec::decode_legacy_message(&value)?;
                log::encode_record(&mut records, &id, received_ms, json);
            }
        }
        // The legacy entries stay until the rebuild clears them, so a cut
        // off migration starts again from them.
        self.log.truncate(0)?;
        self.log.write_at(&records, 0)?;
        self.log.sync()?;
        self.rebuild(committed)
    }

    /// Removes what earlier versions kept in sled and this one keeps
    /// elsewhere or not at all (see the module's documentation), in
    /// batches.
    pub(super) fn drop_obsolete_entries(&self) -> Result<(), StoreError> {
        let mut dropped = false;
        for prefix in [&b"t"[..], b"l", b"m", b"i"] {
            loop {
                let mut batch = sled::Batch::default();
                let mut n = 0;
                for key in self.tree.scan_prefix(prefix).keys().take(4096) {
                    batch.remove(key?);
                    n += 1;
                }
                if n == 0 {
                    break;
                }
                if !dropped {
                    tracing::info!("removing index entries an earlier version kept in sled");
                    dropped = true;
                }
                self.tree.apply_batch(batch)?;
            }
        }
        for key in [codec::LINE_COUNT_KEY, codec::ID_DIRECTORY_KEY] {
            dropped |= self.tree.remove(key)?.is_some();
        }
        if dropped {
            self.tree.flush()?;
        }
        Ok(())
    }

    /// Commits the index entries of messages already in the log, which
    /// extend their feeds: their positions, then one sled batch; then
    /// publishes the new tips and extent to readers.
    pub(super) fn index(
        &self,
        committed: &RwLock<Committed>,
        placed: Vec<Placed>,
    ) -> Result<Vec<Stored>, StoreError> {
        let mut batch = sled::Batch::default();
        let mut latest: HashMap<FeedId, FeedTip> = HashMap::new();
        let mut extent = committed.read().unwrap_or_else(|e| e.into_inner()).extent;
        let mut runs = FeedRuns::default();
        for entry in &placed {
            codec::put_index_entries(&mut batch, &entry.msg, MAX_STORED_NAME);
            runs.push(&entry.msg, entry.offset, entry.json_len);
            latest.insert(entry.msg.author, entry.msg.tip());
            extent.last = entry.offset;
            extent.end = entry.offset + log::record_len(entry.json_len);
            extent.count += 1;
        }
        runs.write(self.positions)?;
        for (feed, tip) in &latest {
            codec::put_tip(&mut batch, feed, tip);
        }
        batch.insert(codec::EXTENT_KEY, &codec::encode_extent(&extent)[..]);
        self.tree.apply_batch(batch)?;
        {
            let mut committed = committed.write().unwrap_or_else(|e| e.into_inner());
            committed.extent = extent;
            committed.by_feed.extend(latest);
        }
        Ok(placed
            .into_iter()
            .map(|p| Stored {
                recv: p.offset,
                received_ms: p.received_ms,
                msg: p.msg,
                line: p.line,
                json_len: p.json_len,
            })
            .collect())
    }
}

/// Positions gathered for one write: runs of consecutive messages of a
/// feed, each written with one `pwrite`.
#[derive(Default)]
struct FeedRuns {
    runs: Vec<(FeedId, u64, Vec<positions::Position>)>,
    count: usize,
}

impl FeedRuns {
    pub(super) fn push(&mut self, msg: &Message, offset: u64, json_len: usize) {
        self.count += 1;
        if let Some((feed, first, run)) = self.runs.last_mut() {
            if *feed == msg.author && *first + run.len() as u64 == msg.sequence {
                run.push((offset, json_len));
                return;
            }
        }
        self.runs
            .push((msg.author, msg.sequence, vec![(offset, json_len)]));
    }

    pub(super) fn len(&self) -> usize {
        self.count
    }

    pub(super) fn write(&mut self, positions: &Positions) -> Result<(), StoreError> {
        for (feed, first, run) in self.runs.drain(..) {
            positions.put(&feed, first, &run).map_err(io_error)?;
        }
        self.count = 0;
        Ok(())
    }
}
