//! Every metric a node exports, with its type, labels and help text: the one list that
//! [`describe_all`] registers with the recorder and docs/metrics.md documents (a unit test
//! checks that the reference lists every name here, and the cluster test that a scrape
//! has every name of the reference).

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total`).
    Counter,
    /// A value now.
    Gauge,
    /// Observations in buckets (`_bucket`, `_sum`, `_count`).
    Histogram,
}

impl Kind {
    /// The name in a `# TYPE` line.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Where a metric's values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Recorded where it happens, through the `metrics` facade.
    Facade,
    /// Read from the node's state when `/metrics` is scraped.
    Scrape,
}

/// One metric of the reference.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Its name.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Its labels (empty: one series).
    pub labels: &'static [&'static str],
    /// Its help text.
    pub help: &'static str,
    /// Where its values come from.
    pub source: Source,
}

const fn m(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    source: Source,
    help: &'static str,
) -> Metric {
    Metric { name, kind, labels, help, source }
}

use Kind::{Counter, Gauge, Histogram};
use Source::{Facade, Scrape};

/// Term and indexes.
pub const RAFT_TERM: &str = "raftkv_raft_term";
/// 1 on the leader.
pub const RAFT_IS_LEADER: &str = "raftkv_raft_is_leader";
/// 1 when a leader is known.
pub const RAFT_HAS_LEADER: &str = "raftkv_raft_has_leader";
/// Leader changes seen.
pub const RAFT_LEADER_CHANGES: &str = "raftkv_raft_leader_changes_total";
/// The last log index.
pub const RAFT_LAST_LOG_INDEX: &str = "raftkv_raft_last_log_index";
/// The committed index.
pub const RAFT_COMMITTED_INDEX: &str = "raftkv_raft_committed_index";
/// The applied index.
pub const RAFT_APPLIED_INDEX: &str = "raftkv_raft_applied_index";
/// Committed minus applied.
pub const RAFT_APPLY_LAG: &str = "raftkv_raft_apply_lag_entries";
/// The last snapshot's index.
pub const RAFT_SNAPSHOT_INDEX: &str = "raftkv_raft_snapshot_index";
/// Per follower, on the leader: matched index.
pub const REPLICATION_MATCH_INDEX: &str = "raftkv_replication_match_index";
/// Per follower, on the leader: entries behind.
pub const REPLICATION_LAG: &str = "raftkv_replication_lag_entries";
/// The per-stage write latency (step from the previous stage).
pub const WRITE_STAGE_SECONDS: &str = "raftkv_write_stage_seconds";
/// The per-stage write latency (since proposed).
pub const WRITE_STAGE_CUMULATIVE_SECONDS: &str = "raftkv_write_stage_cumulative_seconds";
/// Open watchers.
pub const WATCHERS: &str = "raftkv_watchers";
/// Gossip's nodes by state.
pub const GOSSIP_NODES: &str = "raftkv_gossip_nodes";
/// 1 when ready.
pub const READY: &str = "raftkv_ready";

/// Every metric, in the order of the reference.
pub const METRICS: &[Metric] = &[
    m(RAFT_TERM, Gauge, &[], Scrape, "The current Raft term."),
    m(RAFT_IS_LEADER, Gauge, &[], Scrape, "1 when this node is the leader, else 0."),
    m(RAFT_HAS_LEADER, Gauge, &[], Scrape, "1 when this node knows a leader, else 0."),
    m(
        RAFT_LEADER_CHANGES,
        Counter,
        &[],
        Facade,
        "Times this node saw the leader become another node (the first leader it learns counts).",
    ),
    m(RAFT_LAST_LOG_INDEX, Gauge, &[], Scrape, "The index of the last entry in this node's log."),
    m(RAFT_COMMITTED_INDEX, Gauge, &[], Scrape, "The highest log index this node knows committed."),
    m(RAFT_APPLIED_INDEX, Gauge, &[], Scrape, "The highest log index applied to this node's state machine."),
    m(RAFT_APPLY_LAG, Gauge, &[], Scrape, "Entries committed but not yet applied on this node."),
    m(RAFT_SNAPSHOT_INDEX, Gauge, &[], Scrape, "The last log index covered by this node's newest snapshot."),
    m(
        REPLICATION_MATCH_INDEX,
        Gauge,
        &["follower"],
        Scrape,
        "On the leader: the last log index known replicated to each other member.",
    ),
    m(
        REPLICATION_LAG,
        Gauge,
        &["follower"],
        Scrape,
        "On the leader: how many entries each other member is behind the leader's last log index.",
    ),
    m(
        "raftkv_log_append_seconds",
        Histogram,
        &[],
        Facade,
        "Time from a log append to its entries being durable (queued, written, fsynced).",
    ),
    m(
        "raftkv_log_fsync_seconds",
        Histogram,
        &[],
        Facade,
        "Time of one durable commit of the log writer (write and fsync).",
    ),
    m(
        "raftkv_raft_append_message_bytes",
        Histogram,
        &[],
        Facade,
        "Size of each AppendEntries message this node received from a leader (encoded), heartbeats included; --max_append_bytes on the leader bounds it.",
    ),
    m(
        WRITE_STAGE_SECONDS,
        Histogram,
        &["stage"],
        Scrape,
        "Writes proposed on this node: time from the previous stage to this one (appended, durable, committed, applied, answered).",
    ),
    m(
        WRITE_STAGE_CUMULATIVE_SECONDS,
        Histogram,
        &["stage"],
        Scrape,
        "Writes proposed on this node: time from proposed to each stage.",
    ),
    m("raftkv_snapshots_built_total", Counter, &[], Facade, "Snapshots built by this node."),
    m("raftkv_snapshots_installed_total", Counter, &[], Facade, "Snapshots installed on this node, sent by a leader."),
    m("raftkv_snapshot_build_seconds", Histogram, &[], Facade, "Time to build a snapshot."),
    m("raftkv_snapshot_install_seconds", Histogram, &[], Facade, "Time to install a snapshot."),
    m("raftkv_snapshot_size_bytes", Histogram, &[], Facade, "Size of each snapshot file built or installed."),
    m(
        "raftkv_grpc_requests_total",
        Counter,
        &["service", "method", "code"],
        Facade,
        "gRPC calls served on both ports, by service, method and status code.",
    ),
    m(
        "raftkv_grpc_request_duration_seconds",
        Histogram,
        &["service", "method", "code"],
        Facade,
        "Time from a gRPC call's arrival to its status (a stream's whole life).",
    ),
    m("raftkv_forwarded_requests_total", Counter, &[], Facade, "Requests this node sent on to the leader."),
    m(
        "raftkv_overload_shed_total",
        Counter,
        &["limit"],
        Facade,
        "Client calls shed (answered RESOURCE_EXHAUSTED at once) by the overload guard, by the limit met: requests or bytes.",
    ),
    m(WATCHERS, Gauge, &[], Scrape, "Watch streams and blocking reads registered on this node."),
    m(
        "raftkv_watchers_dropped_total",
        Counter,
        &[],
        Facade,
        "Watchers dropped because they fell too far behind (their buffer overflowed).",
    ),
    m(GOSSIP_NODES, Gauge, &["state"], Scrape, "Nodes gossip knows, by state: live, dead, left (with gossip on)."),
    m(READY, Gauge, &[], Scrape, "1 when the node is ready (/readyz): it knows a leader and has caught up with it."),
];

/// Registers the help text of every facade metric, and makes every one without labels
/// exist from the start (a counter at 0, an empty histogram), so a scrape lists it before
/// it first moves.
pub fn describe_all() {
    for metric in METRICS.iter().filter(|m| m.source == Facade) {
        match metric.kind {
            Counter => {
                metrics::describe_counter!(metric.name, metric.help);
                if metric.labels.is_empty() {
                    metrics::counter!(metric.name).increment(0);
                }
            }
            Gauge => metrics::describe_gauge!(metric.name, metric.help),
            Histogram => {
                let unit = if metric.name.ends_with("_bytes") { metrics::Unit::Bytes } else { metrics::Unit::Seconds };
                metrics::describe_histogram!(metric.name, unit, metric.help);
                if metric.labels.is_empty() {
                    let _ = metrics::histogram!(metric.name);
                }
            }
        }
    }
    // A labelled counter whose label values are known ahead exists from the start too: the
    // overload guard's, by the limit met.
    for limit in ["requests", "bytes"] {
        metrics::counter!("raftkv_overload_shed_total", "limit" => limit).increment(0);
    }
}

/// The metric named `name`.
#[must_use]
pub fn find(name: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        for m in METRICS {
            assert!(m.name.starts_with("raftkv_"), "{}", m.name);
            assert_eq!(m.kind == Counter, m.name.ends_with("_total"), "{}: only counters end in _total", m.name);
            if m.kind == Histogram {
                assert!(m.name.ends_with("_seconds") || m.name.ends_with("_bytes"), "{}: a unit suffix", m.name);
            }
            assert!(!m.help.is_empty() && m.help.ends_with('.'), "{}: a help text", m.name);
        }
    }

    #[test]
    fn the_reference_documents_every_metric() {
        let reference = include_str!("../../../docs/metrics.md");
        for m in METRICS {
            assert!(reference.contains(&format!("`{}`", m.name)), "docs/metrics.md does not list {}", m.name);
        }
    }
}
