//! What the status page charts and lists, kept by one task: a sample of the write rate and
//! latency every [`SAMPLE_INTERVAL`] for the last [`HISTORY_SAMPLES`] of them, and the last
//! [`LEADER_CHANGES_KEPT`] leader changes. The same task counts leader changes for
//! `raftkv_raft_leader_changes_total`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fsm::Raft;
use latency::{Stage, WriteStages};
use openraft::async_runtime::WatchReceiver;
use serde::Serialize;
use tokio::sync::watch;
use types::NodeId;

use crate::catalog::RAFT_LEADER_CHANGES;

/// How often a sample is taken.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// How many samples are kept: five minutes.
pub const HISTORY_SAMPLES: usize = 300;
/// How many leader changes are kept.
pub const LEADER_CHANGES_KEPT: usize = 20;

/// One sample.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The applied index then.
    pub applied_index: u64,
    /// Entries applied per second since the sample before (every node applies every write).
    pub applied_per_sec: f64,
    /// Writes proposed on this node and answered since the sample before, per second.
    pub writes_per_sec: f64,
    /// Their median latency, proposed to answered, in milliseconds.
    pub p50_ms: f64,
    /// Their 99th percentile latency, in milliseconds.
    pub p99_ms: f64,
}

/// A leader change this node saw.
#[derive(Debug, Clone, Serialize)]
pub struct LeaderChange {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The new leader.
    pub leader: String,
    /// The term it leads.
    pub term: u64,
}

/// The samples and leader changes, shared with the HTTP handlers.
#[derive(Debug, Default)]
pub struct History {
    inner: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    samples: VecDeque<Sample>,
    changes: VecDeque<LeaderChange>,
}

impl History {
    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The samples, oldest first.
    #[must_use]
    pub fn samples(&self) -> Vec<Sample> {
        self.kept().samples.iter().cloned().collect()
    }

    /// The leader changes, newest first.
    #[must_use]
    pub fn leader_changes(&self) -> Vec<LeaderChange> {
        self.kept().changes.iter().rev().cloned().collect()
    }

    fn push_sample(&self, s: Sample) {
        let mut k = self.kept();
        if k.samples.len() == HISTORY_SAMPLES {
            k.samples.pop_front();
        }
        k.samples.push_back(s);
    }

    fn push_change(&self, c: LeaderChange) {
        let mut k = self.kept();
        if k.changes.len() == LEADER_CHANGES_KEPT {
            k.changes.pop_front();
        }
        k.changes.push_back(c);
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Keeps `history` until `stop` turns true: follows the Raft metrics for leader changes and
/// takes a sample every [`SAMPLE_INTERVAL`].
pub async fn keep(raft: Raft, stages: Arc<WriteStages>, history: Arc<History>, mut stop: watch::Receiver<bool>) {
    // The server metrics change only with the role, the leader or the membership; the full
    // metrics change several times per write, and each change would wake this task.
    let mut metrics = raft.server_metrics();
    let mut leader: Option<NodeId> = None;
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous = Previous::now(&raft, &stages);
    loop {
        let (current, term) = {
            let m = metrics.borrow_watched();
            (m.current_leader.clone(), m.vote.leader_id().term)
        };
        if let Some(new) = current.filter(|c| leader.as_ref() != Some(c)) {
            metrics::counter!(RAFT_LEADER_CHANGES).increment(1);
            history.push_change(LeaderChange { at_ms: now_ms(), leader: new.to_string(), term });
            leader = Some(new);
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tick.tick() => {
                let now = Previous::now(&raft, &stages);
                history.push_sample(now.sample_since(&previous));
                previous = now;
            }
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The figures at one sample.
struct Previous {
    at: std::time::Instant,
    applied: u64,
    answered: latency::Snapshot,
}

impl Previous {
    fn now(raft: &Raft, stages: &WriteStages) -> Self {
        let applied = types::index_of(raft.metrics().borrow_watched().last_applied.as_ref());
        let answered = stages
            .histograms()
            .find(|(s, _, _)| *s == Stage::Answered)
            .map(|(_, _, total)| total.snapshot())
            .unwrap_or_default();
        Self { at: std::time::Instant::now(), applied, answered }
    }

    fn sample_since(&self, before: &Previous) -> Sample {
        let secs = self.at.duration_since(before.at).as_secs_f64().max(1e-3);
        let period = self.answered.since(&before.answered);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Sample {
            at_ms: now_ms(),
            applied_index: self.applied,
            applied_per_sec: self.applied.saturating_sub(before.applied) as f64 / secs,
            writes_per_sec: period.count() as f64 / secs,
            p50_ms: ms(period.quantile(0.5)),
            p99_ms: ms(period.quantile(0.99)),
        }
    }
}
