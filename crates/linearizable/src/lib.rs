//! Read barriers: what a node must do before a read may be served from its local state.
//!
//! # Brief overview
//! - [`Consistency`]: the levels a read can ask for.
//! - [`read_barrier`]: on the leader, runs openraft's ReadIndex (a heartbeat round to a
//!   quorum confirms leadership, then the node waits until it has applied the commit index
//!   seen when the read arrived), or its lease read. After it returns, a local read observes
//!   every write acknowledged before the read began.
//! - [`leader_read_index`]: the leader's half of a **follower read**: confirm leadership
//!   (or the lease) and return the read index without waiting for the leader's own apply.
//!   The follower gets it over the Raft port ([`ReadIndexRequest`] / [`ReadIndexResponse`]),
//!   waits until it has applied that index itself, and reads locally: linearizable reads
//!   are served by followers without shipping the data through the leader.
//! - [`BarrierError`]: not the leader (with the leader's id and addresses when known), no
//!   quorum, or the node is shutting down.
//!
//! # Lease reads and their clock assumption
//! [`Consistency::Lease`] skips the quorum round while the leader's lease holds: it heard
//! from a quorum less than an election timeout ago, so no other leader can have been
//! elected yet. That holds only if clocks on the nodes advance at about the same rate; a
//! leader whose process was paused, or whose clock runs fast, could serve a stale value.
//! It is opt-in for that reason.
//!
//! This crate must never depend on tonic or redb.

use openraft::error::{LinearizableReadError, RaftError};
use openraft::storage::RaftStateMachine;
use openraft::{RaftTypeConfig, ReadPolicy};
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
    use super::*;

    #[test]
    fn not_leader_names_the_leader() {
        let e = BarrierError::NotLeader { leader: Some((NodeId::from(2), None)) };
        assert_eq!(e.to_string(), "not the leader; leader is 2");
        let e = BarrierError::NotLeader { leader: None };
        assert_eq!(e.to_string(), "not the leader; leader is unknown");
    }
}
