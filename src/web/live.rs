//! Live updates of `/`: one task renders the page's live part when the
//! store commits (or a second passes, for states that change with time,
//! such as late) and someone is watching, and hands it to every open
//! event stream when it changed. One render serves every viewer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::node::Node;

/// Renders at most this often, however fast the store commits.
const AT_MOST_EVERY: Duration = Duration::from_millis(100);

/// Starts the task; viewers subscribe to the returned sender.
pub(super) fn spawn(node: Arc<Node>) -> watch::Sender<Arc<String>> {
    let (sender, _) = watch::channel(Arc::new(String::new()));
    let live = sender.clone();
    let mut events = node.subscribe();
    tokio::spawn(async move {
        let mut second = tokio::time::interval(Duration::from_secs(1));
        second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Commits came while the last render ran: render again at once.
        let mut dirty = false;
        loop {
            if !dirty {
                tokio::select! {
                    event = events.recv() => {
                        if let Err(broadcast::error::RecvError::Closed) = event {
                            return;
                        }
                    }
                    _ = second.tick() => {}
                }
            }
            dirty = false;
            // The sender kept here counts no receivers: these are viewers.
            if live.receiver_count() == 0 {
                continue;
            }
            let renderer = node.clone();
            let rendered =
                tokio::task::spawn_blocking(move || super::render_status(&renderer)).await;
            if let Ok(Some((fragment, _, _))) = rendered {
                live.send_if_modified(|current| {
                    if current.as_str() == fragment {
                        return false;
                    }
                    *current = Arc::new(fragment);
                    true
                });
            }
            tokio::time::sleep(AT_MOST_EVERY).await;
            loop {
                match events.try_recv() {
                    Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => dirty = true,
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(broadcast::error::TryRecvError::Closed) => return,
                }
            }
        }
    });
    sender
}
