//! Readiness: whether this node can serve a linearizable read at once, without first catching
//! up. `/readyz` on the metrics port and `grpc.health.v1` for the whole server (`""`) both
//! report it.
//!
//! A node is **ready** when it knows a leader and has applied up to the commit index it
//! learned from that leader when it started or rejoined: [`follow`] runs one linearizable read
//! barrier ([`NodeContext`]'s read index: a quorum round on the leader; on a follower the
//! leader's read index over the Raft port, then a wait until this node has applied that far).
//! It is ready once that barrier passes, and stays ready until it no longer knows a leader,
//! or (not being the leader) has heard from none for [`REJOIN_AFTER_TIMEOUTS`] election
//! timeouts, or its own checks were held up that long (the process was stopped): a paused or
//! partitioned node that comes back is not ready again until it has caught up once more. The check repeats every [`CHECK_INTERVAL`].

use std::time::Duration;

use linearizable::Consistency;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use types::NodeId;

use crate::NodeContext;

/// How often readiness is checked (and a failed barrier retried).
pub const CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// A node that is not the leader and has heard from no leader for this many election
/// timeouts has been away (paused, partitioned): it must catch up again before it is ready.
pub const REJOIN_AFTER_TIMEOUTS: u32 = 2;

/// How long one barrier may take before it is tried again.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the node is ready, and why (not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Ready to serve a linearizable read at once.
    pub ready: bool,
    /// The leader this node knows.
    pub leader: Option<NodeId>,
    /// The commit index learned from the leader that this node applied, once ready.
    pub caught_up_to: Option<u64>,
    /// What is missing (empty when ready), in a few words for `/readyz`.
    pub reason: String,
}

impl Readiness {
    fn not_ready(leader: Option<NodeId>, reason: impl Into<String>) -> Self {
        Self { ready: false, leader, caught_up_to: None, reason: reason.into() }
    }
}

/// Starts the task that keeps the node's [`Readiness`] current until `stop` turns true;
/// returns the channel it is published on and the task.
pub fn follow(
    ctx: NodeContext,
    election_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> (watch::Receiver<Readiness>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Readiness::not_ready(None, "starting"));
    let away_after = election_timeout * REJOIN_AFTER_TIMEOUTS;
    let task = tokio::spawn(async move {
        let mut last_check = tokio::time::Instant::now();
        loop {
            // A check that comes this late means the process itself was stopped (SIGSTOP, a
            // suspended VM): whatever was ready before must be checked again.
            let paused = last_check.elapsed() > away_after;
            last_check = tokio::time::Instant::now();
            let previous = if paused { Readiness::not_ready(None, "paused") } else { tx.borrow().clone() };
            let next = check(&ctx, &previous, away_after).await;
            tx.send_if_modified(|current| {
                if *current == next {
                    return false;
                }
                tracing::info!(node = %ctx.id, ready = next.ready, reason = %next.reason, "readiness changed");
                *current = next;
                true
            });
            tokio::select! {
                () = tokio::time::sleep(CHECK_INTERVAL) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    });
    (rx, task)
}

/// One check: the readiness now, given the previous one.
async fn check(ctx: &NodeContext, previous: &Readiness, away_after: Duration) -> Readiness {
    let (leader, state) = {
        let metrics = ctx.raft.metrics();
        let m = metrics.borrow_watched();
        (m.current_leader.clone(), m.state)
    };
    let Some(leader_id) = leader.clone() else {
        return Readiness::not_ready(None, "no leader known");
    };
    if state != ServerState::Leader {
        let away = ctx.leader_contact.millis_since().is_none_or(|ms| ms > millis(away_after));
        if away {
            return Readiness::not_ready(leader, "no recent contact with the leader");
        }
    }
    if previous.ready && previous.leader.as_ref() == Some(&leader_id) {
        return previous.clone();
    }
    match ctx.read_index(Consistency::Linearizable, BARRIER_TIMEOUT).await {
        Ok(index) => Readiness { ready: true, leader, caught_up_to: Some(index), reason: String::new() },
        Err(e) => Readiness::not_ready(leader, format!("catching up with the leader: {e}")),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
