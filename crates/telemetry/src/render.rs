//! The metrics read from the node's state when `/metrics` is scraped (the catalog's
//! [`Source::Scrape`](crate::catalog::Source) ones), written in the Prometheus text format
//! after the facade's.

use std::fmt::Write;
use std::time::Duration;

use gossip::Liveness;
use latency::Stage;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;

use crate::Sources;
use crate::catalog::{self, Kind};

/// The bucket bounds of the write-stage histograms, in seconds.
pub(crate) const STAGE_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Writes the `# HELP` and `# TYPE` lines of `name` (which must be in the catalog).
fn header(out: &mut String, name: &str) {
    if let Some(m) = catalog::find(name) {
        let _ = writeln!(out, "# HELP {name} {}", m.help);
        let _ = writeln!(out, "# TYPE {name} {}", m.kind.as_str());
    }
}

fn gauge(out: &mut String, name: &str, value: u64) {
    header(out, name);
    let _ = writeln!(out, "{name} {value}");
}

/// Everything read at scrape time, as text.
pub(crate) async fn scraped(src: &Sources) -> String {
    let mut out = String::new();
    raft(&mut out, src);
    stages(&mut out, src);
    gauge(&mut out, catalog::WATCHERS, src.sm.watch_stats().watchers as u64);
    gauge(&mut out, catalog::READY, u64::from(src.ready.borrow().ready));
    if let Some(g) = &src.gossip {
        let view = g.view().await;
        header(&mut out, catalog::GOSSIP_NODES);
        for state in [Liveness::Live, Liveness::Dead, Liveness::Left] {
            let n = view.values().filter(|p| p.liveness == state).count();
            let _ = writeln!(out, "{}{{state=\"{state}\"}} {n}", catalog::GOSSIP_NODES);
        }
    }
    out
}

/// Term, leadership, indexes, and on the leader each member's replication.
fn raft(out: &mut String, src: &Sources) {
    let m = src.raft.metrics().borrow_watched().clone();
    let leader = m.state == ServerState::Leader;
    let last = m.last_log_index.unwrap_or(0);
    let committed = types::index_of(m.local_committed.as_ref());
    let applied = types::index_of(m.last_applied.as_ref());
    gauge(out, catalog::RAFT_TERM, m.current_term);
    gauge(out, catalog::RAFT_IS_LEADER, u64::from(leader));
    gauge(out, catalog::RAFT_HAS_LEADER, u64::from(m.current_leader.is_some()));
    gauge(out, catalog::RAFT_LAST_LOG_INDEX, last);
    gauge(out, catalog::RAFT_COMMITTED_INDEX, committed);
    gauge(out, catalog::RAFT_APPLIED_INDEX, applied);
    gauge(out, catalog::RAFT_APPLY_LAG, committed.saturating_sub(applied));
    gauge(out, catalog::RAFT_SNAPSHOT_INDEX, types::index_of(m.snapshot.as_ref()));
    let followers: Vec<(String, u64)> = if leader {
        service::cluster::members(&m)
            .into_iter()
            .filter(|member| member.id != m.id)
            .map(|member| (member.id.to_string(), member.matched_index.unwrap_or(0)))
            .collect()
    } else {
        Vec::new()
    };
    header(out, catalog::REPLICATION_MATCH_INDEX);
    for (id, matched) in &followers {
        let _ = writeln!(out, "{}{{follower=\"{id}\"}} {matched}", catalog::REPLICATION_MATCH_INDEX);
    }
    header(out, catalog::REPLICATION_LAG);
    for (id, matched) in &followers {
        let _ = writeln!(out, "{}{{follower=\"{id}\"}} {}", catalog::REPLICATION_LAG, last.saturating_sub(*matched));
    }
}

/// The per-stage write latency, from the node's [`latency::WriteStages`].
fn stages(out: &mut String, src: &Sources) {
    let all: Vec<(Stage, latency::Snapshot, latency::Snapshot)> =
        src.stages.histograms().map(|(s, step, total)| (s, step.snapshot(), total.snapshot())).collect();
    header(out, catalog::WRITE_STAGE_SECONDS);
    for (stage, step, _) in &all {
        histogram(out, catalog::WRITE_STAGE_SECONDS, stage.name(), step);
    }
    header(out, catalog::WRITE_STAGE_CUMULATIVE_SECONDS);
    for (stage, _, total) in &all {
        histogram(out, catalog::WRITE_STAGE_CUMULATIVE_SECONDS, stage.name(), total);
    }
}

/// One labelled series of a histogram, on [`STAGE_BUCKETS`]: the latency crate's fine
/// buckets summed up to each bound.
fn histogram(out: &mut String, name: &str, stage: &str, snap: &latency::Snapshot) {
    debug_assert_eq!(catalog::find(name).map(|m| m.kind), Some(Kind::Histogram));
    let fine: Vec<(Duration, u64)> = snap.buckets().collect();
    for bound in STAGE_BUCKETS {
        let upto = Duration::from_secs_f64(bound);
        let n: u64 = fine.iter().filter(|(high, _)| *high <= upto).map(|(_, c)| c).sum();
        let _ = writeln!(out, "{name}_bucket{{stage=\"{stage}\",le=\"{bound}\"}} {n}");
    }
    let count = snap.count();
    let _ = writeln!(out, "{name}_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{stage=\"{stage}\"}} {}", snap.sum().as_secs_f64());
    let _ = writeln!(out, "{name}_count{{stage=\"{stage}\"}} {count}");
}
