//! `createHistoryStream`: serving a feed's messages to a peer, live, and
//! asking a peer for a feed (the replication of peers without EBT).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kuska_ssb::api::dto::CreateHistoryStreamIn;
use serde_json::Value;
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;

use super::muxrpc::{Frame, Out};
use crate::feed::FeedId;
use crate::node::{Event, Node};
use crate::store::StoreError;
use crate::view::kvt_line;

/// Messages read from the store per step when serving a history stream.
const SERVE_CHUNK: usize = 256;
/// Bytes read from the store per step, at most (a step stops at the first
/// message past it).
const SERVE_CHUNK_BYTES: usize = 256 * 1024;
/// Reads from the store that one connection's streams may have in memory
/// at once: with [`SERVE_CHUNK_BYTES`] each, what a peer that opens
/// thousands of streams and stops reading can make us hold.
pub const READS_PER_CONNECTION: usize = 2;

/// Our request for `feed`'s messages from `seq` on, live, as values.
pub fn request(req: i32, feed: &FeedId, seq: u64) -> Frame {
    let args = CreateHistoryStreamIn {
        keys: Some(false),
        ..CreateHistoryStreamIn::new(feed.to_string())
            .after_seq(seq)
            .live(true)
    };
    let args = serde_json::to_value(args).unwrap_or(Value::Null);
    Frame::request(
        req,
        &["createHistoryStream"],
        "source",
        Value::Array(vec![args]),
    )
}

/// What every stream served on one connection shares.
#[derive(Clone)]
pub struct Outlet {
    /// The session's outgoing frames.
    pub out: Out,
    /// The connection's reads in flight ([`READS_PER_CONNECTION`]): a
    /// chunk is read only with a permit, held until it is queued.
    pub reads: Arc<Semaphore>,
    /// Counts the messages sent.
    pub sent: Arc<AtomicU64>,
}

impl Outlet {
    /// The outlet of a connection whose bulk frames go to `out`.
    pub fn new(out: Out, sent: Arc<AtomicU64>) -> Outlet {
        Outlet {
            out,
            reads: Arc::new(Semaphore::new(READS_PER_CONNECTION)),
            sent,
        }
    }
}

/// Where a served stream's frames go, and how it ends.
pub struct Served {
    /// The request number our frames carry.
    pub wire: i32,
    /// The connection's outlet.
    pub outlet: Outlet,
    /// Fires when the peer ends the stream or the session ends.
    pub cancel: CancellationToken,
    /// Part of an EBT stream: never ended from here, since the stream
    /// carries other feeds too.
    pub ebt: bool,
}

/// `createHistoryStream({id, seq, live, old, keys, limit})`: the feed's
/// messages from `seq` (inclusive) on; with `live`, new ones as they come.
pub async fn serve(node: Arc<Node>, args: Value, to: Served) {
    let Served {
        wire,
        outlet: Outlet {
            out,
            reads,
            sent: sent_count,
        },
        cancel,
        ebt,
    } = to;
    let feed = match args["id"].as_str().map(FeedId::parse) {
        Some(Ok(feed)) => feed,
        _ => {
            let _ = out
                .send(Frame::error(
                    wire,
                    true,
                    "createHistoryStream needs a valid id",
                ))
                .await;
            return;
        }
    };
    let live = args["live"].as_bool().unwrap_or(false);
    let old = args["old"].as_bool().unwrap_or(true);
    let keys = args["keys"].as_bool().unwrap_or(true);
    let limit = args["limit"].as_i64().filter(|l| *l >= 0).map(|l| l as u64);
    // Subscribe before reading history, so nothing falls between the two.
    let mut events = node.subscribe();
    let mut next = args["seq"].as_u64().unwrap_or(0).max(1);
    if !old {
        next = node.store.tip(&feed).map_or(0, |t| t.sequence) + 1;
    }
    let mut sent = 0u64;
    loop {
        // Send everything stored from `next` on.
        loop {
            let wanted = limit.map_or(SERVE_CHUNK as u64, |l| (l - sent).min(SERVE_CHUNK as u64));
            if wanted == 0 {
                if !ebt {
                    let _ = out.send(Frame::end(wire)).await;
                }
                return;
            }
            // A stream the peer ended costs no read.
            let permit = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                permit = reads.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let store = node.store.clone();
            let from = next;
            let own_feed = feed == node.id();
            let reading = cancel.clone();
            let chunk = tokio::task::spawn_blocking(move || {
                let mut bytes = 0;
                let chunk = store
                    .history(&feed, from)
                    .take(wanted as usize)
                    .take_while(|entry| {
                        let more = bytes < SERVE_CHUNK_BYTES && !reading.is_cancelled();
                        if let Ok((_, raw)) = entry {
                            bytes += raw.json().len();
                        }
                        more
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                // This machine's own messages leave only once they would
                // survive a power loss: peers that had messages this
                // machine then lost would see its next ones as a fork.
                if own_feed && !chunk.is_empty() {
                    store.sync_log()?;
                }
                Ok::<_, StoreError>(chunk)
            })
            .await;
            let chunk = match chunk {
                Ok(Ok(chunk)) => chunk,
                failure => {
                    let why = match failure {
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                        Ok(Ok(_)) => String::new(),
                    };
                    tracing::warn!("reading {feed} to send it: {why}");
                    // An EBT stream carries other feeds: only this one stops.
                    if !ebt {
                        let _ = out
                            .send(Frame::error(wire, true, "store read failed"))
                            .await;
                    }
                    return;
                }
            };
            if chunk.is_empty() {
                break;
            }
            for (seq, raw) in chunk {
                let body = if keys {
                    let mut line = kvt_line(&raw);
                    line.pop();
                    line
                } else {
                    raw.json().to_vec()
                };
                tokio::select! {
                    sent_ok = out.send(Frame::raw_json(wire, true, body)) => {
                        if sent_ok.is_err() { return; }
                    }
                    _ = cancel.cancelled() => return,
                }
                next = seq + 1;
                sent += 1;
                sent_count.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        }
        if !live {
            if !ebt {
                let _ = out.send(Frame::end(wire)).await;
            }
            return;
        }
        // Wait for the feed to grow.
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(Event::Appended { feed: f, seq }) if f == feed && seq >= next => break,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = cancel.cancelled() => {
                    if !ebt {
                        let _ = out.send(Frame::end(wire)).await;
                    }
                    return;
                }
            }
        }
    }
}
