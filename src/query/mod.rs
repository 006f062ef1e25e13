//! The one query layer: what the command line (`status`, `health`), the
//! mount's generated files and the web pages show is read here, from the
//! node, and nowhere else. None of them keeps state of its own; each only
//! renders what these functions return.

pub mod health;
pub mod jobs;
pub mod lines;
pub mod machines;
pub mod metrics;
pub mod status;

pub use health::{health, machine_notes, MachineNote, NoteKind};

#[cfg(test)]
mod tests {
    //! The query layer on a node with its views, without a mount or a
    //! daemon: what every page and command reads.

    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::*;
    use crate::config::Config;
    use crate::feed::Keypair;
    use crate::node::Node;

    fn node(dir: &std::path::Path) -> Node {
        let config = Config {
            path: dir.to_path_buf(),
            port: 0,
            network_key: [9; 32],
            hops: 2,
            name: "nas".into(),
            host: None,
            max_silence_ms: crate::health::DEFAULT_MAX_SILENCE_MS,
            remind_ms: None,
            http: None,
            http_token: None,
            mount: None,
        };
        let node = Node::open(config, Keypair::from_seed(&[4; 32]), true).expect("opens");
        node.ensure_name("nas").expect("names itself");
        node
    }

    fn line(source: &str, fields: serde_json::Value) -> serde_json::Value {
        let mut content = json!({"type": "log", "source": source});
        if let (Some(content), Some(fields)) = (content.as_object_mut(), fields.as_object()) {
            content.extend(fields.clone());
        }
        content
    }

    #[test]
    fn health_runs_lines_search_and_metrics_agree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = node(dir.path());
        node.publish(vec![
            line(
                "backup",
                json!({"run": "start", "every": "1d", "text": "rsync -a"}),
            ),
            line("backup", json!({"text": "rsync: <b>disk</b> full"})),
            line(
                "backup",
                json!({"run": "end", "exit": 23, "took": "3s", "text": "failed"}),
            ),
            line("certbot", json!({"run": "start", "text": "certbot renew"})),
            line(
                "certbot",
                json!({"run": "end", "exit": 0, "took": "1s", "text": "ok"}),
            ),
        ])
        .expect("publishes");
        let now = crate::clock::now_ms();

        let report = health(&node, now, node.config.max_silence_ms).expect("a report");
        let states: Vec<(&str, Option<&str>)> = report
            .rows
            .iter()
            .map(|r| (r.state.name(), r.source.as_deref()))
            .collect();
        assert_eq!(
            states,
            vec![("failed", Some("backup")), ("ok", Some("certbot"))]
        );

        let runs = jobs::runs(&node, &node.id(), "backup", 10, 10).expect("reads");
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].exit, Some(23));
        assert_eq!(runs[0].output, vec!["rsync: <b>disk</b> full"]);

        let feed = lines::find_machine(&node, "nas").expect("found by name");
        assert_eq!(feed, node.id());
        let (last, end) = lines::last_lines(&node, &feed, 2).expect("reads");
        assert_eq!(last.len(), 2);
        assert!(last[1].ends_with("ok"), "{last:?}");
        let (after, next) = lines::lines_after(&node, &feed, end, 1 << 20).expect("reads");
        assert!(after.is_empty());
        assert_eq!(next, end);

        let mut found = Vec::new();
        let summary = lines::search(
            &node,
            "DISK",
            lines::SearchLimits {
                max_results: 10,
                deadline: Instant::now() + Duration::from_secs(5),
            },
            &mut |l| {
                found.push(l.to_string());
                true
            },
        )
        .expect("searches");
        assert_eq!(summary.end, lines::SearchEnd::Searched);
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("rsync: <b>disk</b> full"));

        let text = metrics::render(&node, &report).expect("renders");
        assert!(
            text.contains(r#"scuttlefs_job_up{machine="nas",source="backup"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"scuttlefs_job_up{machine="nas",source="certbot"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"scuttlefs_job_last_exit_code{machine="nas",source="backup"} 23"#));
        assert!(text
            .contains(r#"scuttlefs_job_last_duration_seconds{machine="nas",source="backup"} 3.0"#));
        assert!(
            text.contains(r#"scuttlefs_messages_total{machine="nas"} 6"#),
            "{text}"
        );

        let machines = machines::machines(&node, &report.heard_ms);
        assert_eq!(machines.len(), 1);
        assert!(machines[0].is_self);
        let status = status::report(&node);
        assert_eq!(status["name"], "nas");
    }

    #[test]
    fn a_search_stops_at_its_bounds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = node(dir.path());
        let contents: Vec<_> = (0..500)
            .map(|i| json!({"type": "log", "text": format!("match {i}")}))
            .collect();
        node.publish(contents).expect("publishes");
        let limits = lines::SearchLimits {
            max_results: 7,
            deadline: Instant::now() + Duration::from_secs(5),
        };
        let mut found = Vec::new();
        let summary = lines::search(&node, "match", limits, &mut |l| {
            found.push(l.to_string());
            true
        })
        .expect("searches");
        assert_eq!(summary.end, lines::SearchEnd::EnoughResults);
        assert_eq!(found.len(), 7);
        assert!(found[0].ends_with("match 499"), "newest first: {found:?}");
        let late = lines::SearchLimits {
            max_results: 7,
            deadline: Instant::now(),
        };
        let summary = lines::search(&node, "match", late, &mut |_| true).expect("searches");
        assert_eq!(summary.end, lines::SearchEnd::OutOfTime);
    }
}
