//! What `status` shows: peers, each feed's latest sequence, and progress.

use serde_json::{json, Value};

use crate::clock::now_ms;
use crate::node::Node;
use crate::view::line::{format_timestamp, label};

/// The status as JSON: what both the mount's `status` file and
/// `scuttlefs status` render.
pub fn report(node: &Node) -> Value {
    let names = node.names();
    let wanted = node.wanted_feeds();
    let net = node.net.read().map(|n| n.clone()).unwrap_or_default();
    let feeds: Vec<Value> = node
        .store
        .feeds()
        .into_iter()
        .map(|(feed, tip)| {
            json!({
                "id": feed.to_string(),
                "name": label(&feed, &names),
                "seq": tip.sequence,
                "latest": format_timestamp(tip.timestamp),
                "hops": wanted.get(&feed),
            })
        })
        .collect();
    let peers: Vec<Value> = net
        .peers
        .iter()
        .map(|p| {
            json!({
                "id": p.id.to_string(),
                "name": label(&p.id, &names),
                "address": p.address,
                "since": format_timestamp(p.since_ms),
                "received": p.received,
                "sent": p.sent,
            })
        })
        .collect();
    let remembered: Vec<Value> = net
        .remembered
        .iter()
        .map(|r| {
            let key = crate::net::address::PeerAddress::parse(&r.address)
                .ok()
                .map(|a| a.key);
            json!({
                "address": r.address,
                "name": key.map(|k| label(&k, &names)),
                "source": r.source,
                "last_success": r.last_success_ms.map(format_timestamp),
                "last_failure": r.last_failure_ms.map(format_timestamp),
                "failures": r.failures,
            })
        })
        .collect();
    // A followed feed with no message yet: not reached so far, or a typo
    // in a key that is valid but nobody's.
    let stored: std::collections::HashSet<_> =
        node.store.feeds().into_iter().map(|(f, _)| f).collect();
    let never_heard: Vec<String> = node
        .following()
        .iter()
        .filter(|f| !stored.contains(*f))
        .map(ToString::to_string)
        .collect();
    let last_refused = node.last_refused().map(|r| {
        json!({
            "file": r.file,
            "reason": r.reason,
            "at": format_timestamp(r.at_ms),
        })
    });
    let notes: Vec<Value> = super::machine_notes(node)
        .into_iter()
        .map(|note| {
            json!({
                "id": note.feed.to_string(),
                "name": label(&note.feed, &names),
                "kind": match note.kind {
                    super::NoteKind::Fork => "fork",
                    super::NoteKind::Clock => "clock",
                    super::NoteKind::OwnFeedBehind => "own feed behind",
                },
                "since": format_timestamp(note.at_ms),
                "text": note.text,
            })
        })
        .collect();
    let alerts = node
        .alerts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let alerts = json!({
        "targets": alerts.targets,
        "delivered": alerts.delivered,
        "left_to_others": alerts.skipped,
        "other_machines": alerts.others,
        "pending": alerts.pending.iter().map(|(target, title, tries, error)| json!({
            "target": target,
            "title": title,
            "tries": tries,
            "error": error,
        })).collect::<Vec<_>>(),
    });
    let last_peer_ms = if net.peers.is_empty() {
        net.last_peer_ms
    } else {
        Some(now_ms())
    };
    json!({
        "id": node.id().to_string(),
        "name": label(&node.id(), &names),
        "listening": net.listening,
        "http": net.http,
        "started": format_timestamp(node.started_ms()),
        "started_ms": node.started_ms(),
        "last_peer_ms": last_peer_ms,
        "messages": node.store.len(),
        "unmerged_lines": node.views().map(|v| v.unmerged_lines()),
        "hops": node.config.hops,
        "following": node.following().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "never_heard_from": never_heard,
        "last_refused": last_refused,
        "notes": notes,
        "alerts": alerts,
        "peers": peers,
        "remembered": remembered,
        "feeds": feeds,
    })
}

/// The status as the text a person reads.
pub fn render(report: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let mut out = String::new();
    out.push_str(&format!("id:        {}\n", s(&report["id"])));
    out.push_str(&format!("name:      {}\n", s(&report["name"])));
    out.push_str(&format!("listening: {}\n", s(&report["listening"])));
    if let Some(http) = report["http"].as_str() {
        out.push_str(&format!("status page: http://{http}/\n"));
    }
    out.push_str(&format!("started:   {}\n", s(&report["started"])));
    out.push_str(&format!(
        "messages:  {} stored, replicating {} hops\n",
        report["messages"], report["hops"]
    ));
    if let Some(waiting) = report["unmerged_lines"].as_u64().filter(|n| *n > 0) {
        out.push_str(&format!(
            "merging:   {waiting} lines that arrived out of order into merged.log's order\n"
        ));
    }
    let empty = Vec::new();
    let peers = report["peers"].as_array().unwrap_or(&empty);
    out.push_str(&format!("peers:     {} connected\n", peers.len()));
    for p in peers {
        out.push_str(&format!(
            "  {} {} at {} since {}, received {}, sent {}\n",
            s(&p["name"]),
            s(&p["id"]),
            s(&p["address"]),
            s(&p["since"]),
            p["received"],
            p["sent"]
        ));
    }
    let remembered = report["remembered"].as_array().unwrap_or(&empty);
    if !remembered.is_empty() {
        out.push_str(&format!("remembered: {}\n", remembered.len()));
        for r in remembered {
            let failures = r["failures"].as_u64().unwrap_or(0);
            let failing = if failures > 0 {
                format!(
                    ", last failure {} ({failures} since)",
                    s(&r["last_failure"])
                )
            } else {
                String::new()
            };
            out.push_str(&format!(
                "  {} {} ({}) last worked {}{}\n",
                s(&r["name"]),
                s(&r["address"]),
                s(&r["source"]),
                s(&r["last_success"]),
                failing
            ));
        }
    }
    let notes = report["notes"].as_array().unwrap_or(&empty);
    if !notes.is_empty() {
        out.push_str(&format!("noticed:   {}\n", notes.len()));
        for note in notes {
            out.push_str(&format!(
                "  {} {} {}: {}\n",
                s(&note["kind"]),
                s(&note["name"]),
                s(&note["id"]),
                s(&note["text"])
            ));
        }
    }
    let targets = report["alerts"]["targets"].as_array().unwrap_or(&empty);
    let pending = report["alerts"]["pending"].as_array().unwrap_or(&empty);
    if !targets.is_empty() {
        out.push_str(&format!(
            "alerts:    {} target(s), also alerted by {} other machine(s); since the start {} \
             delivered, {} left to another machine, {} waiting\n",
            targets.len(),
            report["alerts"]["other_machines"],
            report["alerts"]["delivered"],
            report["alerts"]["left_to_others"],
            pending.len()
        ));
        for target in targets {
            out.push_str(&format!("  {}\n", s(target)));
        }
        for p in pending {
            out.push_str(&format!(
                "  pending {:?} to {} after {} tries: {}\n",
                s(&p["title"]),
                s(&p["target"]),
                p["tries"],
                s(&p["error"])
            ));
        }
    }
    let never_heard = report["never_heard_from"].as_array().unwrap_or(&empty);
    if !never_heard.is_empty() {
        out.push_str(&format!(
            "never heard from: {} followed feed(s) with no message yet (not reached, or a typo in the id?)\n",
            never_heard.len()
        ));
        for id in never_heard {
            out.push_str(&format!("  {}\n", s(id)));
        }
    }
    if let Some(refused) = report["last_refused"].as_object() {
        out.push_str(&format!(
            "refused:   a write to {} at {}: {}\n",
            refused.get("file").map(s).unwrap_or_default(),
            refused.get("at").map(s).unwrap_or_default(),
            refused.get("reason").map(s).unwrap_or_default(),
        ));
    }
    let feeds = report["feeds"].as_array().unwrap_or(&empty);
    out.push_str(&format!("feeds:     {}\n", feeds.len()));
    for f in feeds {
        let hops = match f["hops"].as_u64() {
            Some(h) => format!("{h} hops"),
            None => "not replicated".into(),
        };
        out.push_str(&format!(
            "  {} {} seq {} latest {} ({})\n",
            s(&f["name"]),
            s(&f["id"]),
            f["seq"],
            s(&f["latest"]),
            hops
        ));
    }
    out
}
