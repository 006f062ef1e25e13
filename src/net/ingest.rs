//! Storing what a peer sends: messages we already have are dropped
//! unverified, the rest are verified on every core and stored in order, and
//! a peer that sends an invalid message is cut off with nothing of that
//! message stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rayon::prelude::*;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::session::SessionError;
use crate::feed::{FeedError, FeedId, Message};
use crate::node::{Node, NodeError};
use crate::store::StoreError;

/// Messages verified and stored per batch when receiving.
pub const INGEST_BATCH: usize = 1024;

/// Where a session hands the messages it receives: the feed asked for, and
/// the message's value.
pub type Ingest = mpsc::Sender<(FeedId, Value)>;

/// Hands a received message to the ingester.
pub async fn forward(ingest: &Ingest, feed: FeedId, value: Value) -> Result<(), SessionError> {
    ingest
        .send((feed, value))
        .await
        .map_err(|_| SessionError::Connection("ingester stopped".into()))
}

/// Verifies and stores what the peer sends. Messages we already have are
/// dropped unverified; the rest are verified on all cores and stored in
/// order. Verifying one batch overlaps storing the one before. The first
/// invalid message ends the session.
pub async fn ingest_loop(
    node: Arc<Node>,
    mut incoming: mpsc::Receiver<(FeedId, Value)>,
    received: Arc<AtomicU64>,
    failed: CancellationToken,
) {
    let (verified_tx, mut verified_rx) = mpsc::channel::<Vec<Message>>(1);
    let storer = {
        let node = node.clone();
        let failed = failed.clone();
        tokio::spawn(async move {
            while let Some(msgs) = verified_rx.recv().await {
                let node = node.clone();
                match tokio::task::spawn_blocking(move || node.ingest_new(msgs)).await {
                    Ok(Ok(stored)) => {
                        received.fetch_add(stored as u64, Ordering::Relaxed);
                    }
                    Ok(Err(NodeError::Store(StoreError::Rejected(e)))) => {
                        tracing::warn!("disconnecting a peer that sent an invalid message: {e}");
                        failed.cancel();
                        return;
                    }
                    Ok(Err(e)) => {
                        tracing::error!("storing replicated messages: {e}");
                        failed.cancel();
                        return;
                    }
                    // Cancelled: the runtime is shutting down.
                    Err(e) if e.is_cancelled() => return,
                    Err(e) => {
                        tracing::error!("ingest task failed: {e}");
                        failed.cancel();
                        return;
                    }
                }
            }
        })
    };
    // The next sequence expected per feed, counting batches still on their
    // way to the store.
    let mut expected: HashMap<FeedId, u64> = HashMap::new();
    while let Some(first) = incoming.recv().await {
        let mut batch = vec![first];
        while batch.len() < INGEST_BATCH {
            match incoming.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let node = node.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let verified = verify_batch(&node, batch, &mut expected);
            (verified, expected)
        })
        .await;
        let verified = match outcome {
            Ok((verified, back)) => {
                expected = back;
                verified
            }
            Err(e) if e.is_cancelled() => break,
            Err(e) => {
                tracing::error!("verification task failed: {e}");
                failed.cancel();
                break;
            }
        };
        match verified {
            Ok(msgs) if msgs.is_empty() => {}
            Ok(msgs) => {
                if verified_tx.send(msgs).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!("disconnecting a peer that sent an invalid message: {e}");
                failed.cancel();
                break;
            }
        }
    }
    drop(verified_tx);
    let _ = storer.await;
}

/// Drops what we already have (another peer may have sent it first) and
/// verifies the rest, one signature batch per core.
fn verify_batch(
    node: &Node,
    batch: Vec<(FeedId, Value)>,
    expected: &mut HashMap<FeedId, u64>,
) -> Result<Vec<Message>, String> {
    let mut fresh = Vec::with_capacity(batch.len());
    for (feed, value) in batch {
        let next = expected
            .entry(feed)
            .or_insert_with(|| node.store.tip(&feed).map_or(1, |t| t.sequence + 1));
        match value["sequence"].as_u64() {
            Some(seq) if seq < *next => continue,
            Some(seq) if seq == *next => *next += 1,
            _ => {}
        }
        fresh.push((feed, value));
    }
    if fresh.is_empty() {
        return Ok(Vec::new());
    }
    let per_core = fresh.len().div_ceil(rayon::current_num_threads().max(1));
    let (feeds, values): (Vec<FeedId>, Vec<Value>) = fresh.into_iter().unzip();
    let chunks: Vec<Vec<Value>> = values
        .chunks(per_core.max(1))
        .map(<[Value]>::to_vec)
        .collect();
    let results: Vec<Vec<Result<Message, FeedError>>> =
        chunks.into_par_iter().map(Message::verify_many).collect();
    results
        .into_iter()
        .flatten()
        .zip(feeds)
        .map(|(msg, feed)| {
            let msg = msg.map_err(|e| e.to_string())?;
            if msg.author != feed {
                return Err(format!("asked for {feed}, got a message by {}", msg.author));
            }
            Ok(msg)
        })
        .collect()
}
