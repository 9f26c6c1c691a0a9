//! Read barriers: what a node must do before a read may be served from its local state.
//! This crate owns the read barrier end to end, on the leader and on a follower.
//!
//! # Brief overview
//! - [`Consistency`]: the levels a read can ask for.
//! - [`read_index`]: the whole barrier of one read on any node: on the leader
//!   [`read_barrier`]; on a follower [`follower_read`] (the leader is asked through
//!   [`AskLeader`]); during an election it waits for a leader. `STALE` checks nothing.
//!   After it returns, a local read observes every write acknowledged before the read began.
//! - [`read_barrier`]: on the leader, runs openraft's ReadIndex (a heartbeat round to a
//!   quorum confirms leadership, then the node waits until it has applied the commit index
//!   seen when the read arrived), or its lease read.
//! - [`leader_read_index`]: the leader's half of a **follower read**: confirm leadership
//!   (or the lease) and return the read index without waiting for the leader's own apply.
//! - [`follower_read`]: the follower's half: ask the leader for its read index (over the
//!   Raft port, [`ReadIndexRequest`] / [`ReadIndexResponse`], by whatever implements
//!   [`AskLeader`]: `raft_network::calls::LeaderReadIndex`), then [`wait_applied`] (with
//!   `blocking-query`) until this node has applied that index, and read locally:
//!   linearizable reads are served by followers without shipping the data through the
//!   leader.
//! - [`BarrierError`]: not the leader (with the leader's id and addresses when known), no
//!   quorum, or the node is shutting down. [`ReadError`]: why [`read_index`] gave up.
//!
//! # Lease reads and their clock assumption
//! [`Consistency::Lease`] skips the quorum round while the leader's lease holds: it heard
//! from a quorum less than an election timeout ago, so no other leader can have been
//! elected yet. That holds only if clocks on the nodes advance at about the same rate; a
//! leader whose process was paused, or whose clock runs fast, could serve a stale value.
//! It is opt-in for that reason.
//!
//! This crate must never depend on tonic, redb, the network (`raft-network`, `rpc`,
//! `proto`) or the services: it reaches the leader only through [`AskLeader`].

use std::future::Future;
use std::time::Duration;

pub use blocking_query::WaitError;
use openraft::error::{LinearizableReadError, RaftError};
use openraft::storage::RaftStateMachine;
use openraft::{RaftTypeConfig, ReadPolicy};
use tokio::sync::watch;
use tokio::time::Instant;
use types::{NodeId, NodeInfo, TypeConfig};

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began (the default).
    #[default]
    Linearizable,
    /// Linearizable while the leader's lease holds (see the crate docs for the clock
    /// assumption).
    Lease,
    /// Whatever the serving node has applied; may be behind.
    Stale,
}

/// Why a read barrier could not be passed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BarrierError {
    /// This node is not the leader. `leader` is the leader it knows, with its addresses.
    #[error("not the leader; leader is {}", leader.as_ref().map_or("unknown".to_string(), |(id, _)| id.to_string()))]
    NotLeader {
        /// The leader known to this node, if any.
        leader: Option<(NodeId, Option<NodeInfo>)>,
    },
    /// The leader could not confirm its leadership with a quorum.
    #[error("leadership not confirmed by a quorum: {0}")]
    NoQuorum(String),
    /// The node is shutting down or Raft stopped.
    #[error("raft stopped: {0}")]
    Stopped(String),
}

/// Passes the read barrier for `level`; returns the log index the read reflects at least.
///
/// For [`Consistency::Stale`] it returns at once with 0: the caller reads what it has.
pub async fn read_barrier<SM>(raft: &openraft::Raft<TypeConfig, SM>, level: Consistency) -> Result<u64, BarrierError>
where
    SM: RaftStateMachine<TypeConfig>,
{
    let policy = match level {
        Consistency::Stale => return Ok(0),
        Consistency::Linearizable => ReadPolicy::ReadIndex,
        Consistency::Lease => ReadPolicy::LeaseRead,
    };
    match raft.ensure_linearizable(policy).await {
        Ok(read_log_id) => Ok(read_log_id.index()),
        Err(e) => Err(map_error(e)),
    }
}

/// On the leader: confirms leadership (a quorum round, or the lease for
/// [`Consistency::Lease`]) and returns the read index, without waiting for this node to
/// apply it. A follower serving a read waits for that index itself.
pub async fn leader_read_index<SM>(
    raft: &openraft::Raft<TypeConfig, SM>,
    level: Consistency,
) -> Result<u64, BarrierError>
where
    SM: RaftStateMachine<TypeConfig>,
{
    let policy = match level {
        Consistency::Lease => ReadPolicy::LeaseRead,
        Consistency::Linearizable | Consistency::Stale => ReadPolicy::ReadIndex,
    };
    match raft.get_read_linearizer(policy).await {
        Ok(linearizer) => Ok(linearizer.read_log_id().index()),
        Err(e) => Err(map_error(e)),
    }
}

/// A follower's request for the leader's read index (sent over the Raft port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadIndexRequest {
    /// Accept the leader's lease instead of a quorum round.
    pub lease: bool,
}

/// The leader's answer: the index the follower must have applied before reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadIndexResponse {
    /// The read index.
    pub index: u64,
}

/// How a follower asks the leader for a read index. `raft_network::calls::LeaderReadIndex`
/// does it over the Raft port; this crate knows nothing of the network.
pub trait AskLeader: Sync {
    /// Asks `leader` (with the addresses this node knows for it, if any) for a read index at
    /// `level` ([`leader_read_index`] on the leader), within `timeout`.
    fn read_index(
        &self,
        leader: &NodeId,
        known: Option<NodeInfo>,
        level: Consistency,
        timeout: Duration,
    ) -> impl Future<Output = Result<u64, AskError>> + Send;
}

/// Why a follower got no read index from the leader.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AskError {
    /// The node asked is not the leader (any more): look for the leader again.
    #[error("the node asked is not the leader")]
    NotLeader,
    /// No address is known for the leader.
    #[error("no address is known for the leader {0}")]
    NoAddress(NodeId),
    /// The leader could not be reached, or answered with a failure.
    #[error("cannot get a read index from the leader {leader} at {addr}: {reason}")]
    Unreachable {
        /// The leader asked.
        leader: NodeId,
        /// The address it was asked at.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The request or the answer could not be encoded or decoded.
    #[error(transparent)]
    Invalid(Box<dyn std::error::Error + Send + Sync>),
}

/// Why [`read_index`] could not make a read ready.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The read index was not confirmed within most of the caller's time.
    #[error("could not confirm the read index before the deadline")]
    Deadline,
    /// This node's barrier failed: no quorum, or Raft stopped.
    #[error(transparent)]
    Barrier(BarrierError),
    /// The leader was asked and gave no read index.
    #[error(transparent)]
    Ask(AskError),
    /// This node did not apply the read index in time, or is shutting down.
    #[error("this node did not catch up in time: {0}")]
    CatchUp(WaitError),
}

/// Makes this node (`me`) ready to serve a read at `level`, and returns the index the read
/// reflects at least. On the leader: [`read_barrier`]. On a follower: [`follower_read`]
/// through `leader`. With no leader known it waits for one. [`Consistency::Stale`]: no
/// check, the index `applied` holds now.
///
/// A fifth of `timeout` is kept back, so that a node that cannot confirm a read index
/// answers [`ReadError::Deadline`] before the caller's deadline, never stale data.
///
/// # Errors
/// [`ReadError`]: the deadline, no quorum, the leader unreachable or without an address, this
/// node not catching up, or a stop.
pub async fn read_index<SM, A>(
    raft: &openraft::Raft<TypeConfig, SM>,
    me: &NodeId,
    applied: watch::Receiver<u64>,
    leader: &A,
    level: Consistency,
    timeout: Duration,
) -> Result<u64, ReadError>
where
    SM: RaftStateMachine<TypeConfig>,
    A: AskLeader,
{
    if level == Consistency::Stale {
        return Ok(*applied.borrow());
    }
    let deadline = Instant::now() + timeout.mul_f32(0.8);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ReadError::Deadline);
        }
        let Ok(local) = tokio::time::timeout(remaining, read_barrier(raft, level)).await else {
            return Err(ReadError::Deadline);
        };
        match local {
            Ok(index) => return Ok(index),
            // The planted bug "stale read": a follower answers from its own state.
            #[cfg(feature = "planted-bugs")]
            Err(BarrierError::NotLeader { leader: Some((id, _)) }) if id != *me && planted_stale_read() => {
                return Ok(*applied.borrow());
            }
            Err(BarrierError::NotLeader { leader: Some((id, node)) }) if id != *me => {
                match follower_read(leader, &id, node, level, applied.clone(), deadline).await {
                    // The leader moved on: look again.
                    Err(ReadError::Ask(AskError::NotLeader)) => {
                        tokio::time::sleep(Duration::from_millis(20).min(remaining)).await;
                    }
                    done => return done,
                }
            }
            Err(BarrierError::NotLeader { .. }) => {
                let _ = raft.wait(Some(remaining)).metrics(|m| m.current_leader.is_some(), "a leader is known").await;
                tokio::time::sleep(Duration::from_millis(20).min(remaining)).await;
            }
            Err(e) => return Err(ReadError::Barrier(e)),
        }
    }
}

/// The follower's half of a read: asks `leader` (known here with `known`'s addresses) for
/// its read index at `level`, then waits until `applied` reaches it, all before `deadline`.
///
/// # Errors
/// [`ReadError::Ask`] when the leader gives no read index ([`AskError::NotLeader`]: ask
/// again), [`ReadError::CatchUp`] when this node does not apply it in time.
pub async fn follower_read<A: AskLeader>(
    ask: &A,
    leader: &NodeId,
    known: Option<NodeInfo>,
    level: Consistency,
    applied: watch::Receiver<u64>,
    deadline: Instant,
) -> Result<u64, ReadError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let index = ask.read_index(leader, known, level, remaining).await.map_err(ReadError::Ask)?;
    let remaining = deadline.saturating_duration_since(Instant::now());
    wait_applied(applied, index, remaining).await.map_err(ReadError::CatchUp)?;
    Ok(index)
}

/// Waits (without polling) until the index `applied` publishes reaches `index`, for at
/// most `timeout`; returns the applied index seen, which may be beyond `index`.
///
/// # Errors
/// [`WaitError::Timeout`], or [`WaitError::Closed`] when the publisher is gone (a stop).
pub async fn wait_applied(mut applied: watch::Receiver<u64>, index: u64, timeout: Duration) -> Result<u64, WaitError> {
    blocking_query::wait_for_index(&mut applied, index, timeout).await
}

/// Whether the planted bug "stale read" is armed (feature `planted-bugs` and
/// `RAFTKV_PLANTED_BUG=stale-read`): a follower serves linearizable reads from its own
/// state without the leader's read index. A test-only bug the fault suite must catch.
#[cfg(feature = "planted-bugs")]
fn planted_stale_read() -> bool {
    static ARMED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ARMED.get_or_init(|| std::env::var("RAFTKV_PLANTED_BUG").is_ok_and(|v| v == "stale-read"))
}

fn map_error<C>(e: RaftError<C, LinearizableReadError<C>>) -> BarrierError
where
    C: RaftTypeConfig<NodeId = NodeId, Node = NodeInfo>,
{
    match e {
        RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => {
            BarrierError::NotLeader { leader: f.leader_id.map(|id| (id, f.leader_node)) }
        }
        RaftError::APIError(LinearizableReadError::QuorumNotEnough(q)) => BarrierError::NoQuorum(q.to_string()),
        RaftError::Fatal(f) => BarrierError::Stopped(f.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A leader that answers each ask with the next of its answers.
    struct Leader(Mutex<Vec<Result<u64, AskError>>>);

    impl AskLeader for Leader {
        async fn read_index(
            &self,
            _leader: &NodeId,
            _known: Option<NodeInfo>,
            _level: Consistency,
            _timeout: Duration,
        ) -> Result<u64, AskError> {
            let next = self.0.lock().ok().and_then(|mut answers| answers.pop());
            next.unwrap_or(Err(AskError::NotLeader))
        }
    }

    fn leader(answer: Result<u64, AskError>) -> Leader {
        Leader(Mutex::new(vec![answer]))
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn a_follower_waits_until_it_has_applied_the_leaders_read_index() {
        let (tx, rx) = watch::channel(3);
        let publisher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(4);
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(7);
            tx
        });
        let read = follower_read(&leader(Ok(5)), &NodeId::from(1), None, Consistency::Linearizable, rx, soon()).await;
        assert_eq!(read.ok(), Some(5));
        let _ = publisher.await;
    }

    #[tokio::test]
    async fn a_follower_that_does_not_catch_up_gives_up_at_the_deadline() {
        let (_tx, rx) = watch::channel(3);
        let deadline = Instant::now() + Duration::from_millis(50);
        let read = follower_read(&leader(Ok(5)), &NodeId::from(1), None, Consistency::Linearizable, rx, deadline).await;
        assert!(matches!(read, Err(ReadError::CatchUp(WaitError::Timeout { wanted: 5, current: 3 }))), "{read:?}");
        let e = read.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("this node did not catch up in time"), "{e}");
    }

    #[tokio::test]
    async fn a_stop_while_waiting_is_reported_as_closed() {
        let (tx, rx) = watch::channel(3);
        drop(tx);
        let read = follower_read(&leader(Ok(5)), &NodeId::from(1), None, Consistency::Linearizable, rx, soon()).await;
        assert!(matches!(read, Err(ReadError::CatchUp(WaitError::Closed))), "{read:?}");
    }

    #[tokio::test]
    async fn the_leaders_refusal_is_passed_on() {
        let (_tx, rx) = watch::channel(9);
        let read = follower_read(
            &leader(Err(AskError::NotLeader)),
            &NodeId::from(1),
            None,
            Consistency::Lease,
            rx.clone(),
            soon(),
        )
        .await;
        assert!(matches!(read, Err(ReadError::Ask(AskError::NotLeader))), "{read:?}");
        let unreachable =
            AskError::Unreachable { leader: NodeId::from(2), addr: "h:1".into(), reason: "refused".into() };
        let read =
            follower_read(&leader(Err(unreachable)), &NodeId::from(2), None, Consistency::Linearizable, rx, soon())
                .await;
        let e = read.err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(e, "cannot get a read index from the leader 2 at h:1: refused");
    }

    #[test]
    fn not_leader_names_the_leader() {
        let e = BarrierError::NotLeader { leader: Some((NodeId::from(2), None)) };
        assert_eq!(e.to_string(), "not the leader; leader is 2");
        let e = BarrierError::NotLeader { leader: None };
        assert_eq!(e.to_string(), "not the leader; leader is unknown");
    }
}
