//! `/metrics`: every job's and machine's state in the Prometheus
//! (OpenMetrics) text format, made with Prometheus's own client crate
//! from one health report, so a scrape sees what `health` says.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::health::{Report, State};
use crate::node::Node;
use crate::view::line::label;

/// The labels of a job's metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    machine: String,
    source: String,
}

/// The label of a machine's metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MachineLabels {
    machine: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Whether a job in `state` counts as up: ok or running.
pub fn is_up(state: State) -> bool {
    matches!(state, State::Ok | State::Running)
}

/// The metrics text for `report`, with the node's peers and feeds.
pub fn render(node: &Node, report: &Report) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    let up = Family::<JobLabels, Gauge>::default();
    let last_run = Family::<JobLabels, FloatGauge>::default();
    let exit_code = Family::<JobLabels, Gauge>::default();
    let duration = Family::<JobLabels, FloatGauge>::default();
    let last_message = Family::<MachineLabels, FloatGauge>::default();
    let messages = Family::<MachineLabels, Counter>::default();
    let peers = Gauge::<i64>::default();
    registry.register(
        "scuttlefs_job_up",
        "1 when the job's last run is ok or running, 0 when it failed, is late or stuck",
        up.clone(),
    );
    registry.register(
        "scuttlefs_job_last_run_timestamp_seconds",
        "When the job last ran (its last run's start, else its last line)",
        last_run.clone(),
    );
    registry.register(
        "scuttlefs_job_last_exit_code",
        "The exit code of the job's last run",
        exit_code.clone(),
    );
    registry.register(
        "scuttlefs_job_last_duration_seconds",
        "How long the job's last run took",
        duration.clone(),
    );
    registry.register(
        "scuttlefs_machine_last_message_timestamp_seconds",
        "When each machine's latest message was written",
        last_message.clone(),
    );
    registry.register(
        "scuttlefs_peers_connected",
        "Peers this machine is connected to now",
        peers.clone(),
    );
    registry.register(
        "scuttlefs_messages",
        "Messages held of each machine's feed",
        messages.clone(),
    );
    for row in &report.rows {
        let Some(source) = &row.source else {
            continue;
        };
        let labels = JobLabels {
            machine: row.machine.clone(),
            source: source.clone(),
        };
        up.get_or_create(&labels).set(i64::from(is_up(row.state)));
        last_run
            .get_or_create(&labels)
            .set(row.last_run_ms / 1000.0);
        if let Some(exit) = row.exit {
            exit_code.get_or_create(&labels).set(exit);
        }
        if let Some(took) = row
            .took
            .as_deref()
            .and_then(|t| crate::vocab::parse_duration(t).ok())
        {
            duration.get_or_create(&labels).set(took.as_secs_f64());
        }
    }
    let names = node.names();
    for (feed, tip) in node.store.feeds() {
        let labels = MachineLabels {
            machine: label(&feed, &names),
        };
        let heard = report.heard_ms.get(&feed).copied().unwrap_or(tip.timestamp);
        last_message.get_or_create(&labels).set(heard / 1000.0);
        messages.get_or_create(&labels).inc_by(tip.sequence);
    }
    let connected = node.net.read().map(|n| n.peers.len()).unwrap_or(0);
    peers.set(i64::try_from(connected).unwrap_or(i64::MAX));
    let mut text = String::with_capacity(256 * report.rows.len() + 1024);
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}
