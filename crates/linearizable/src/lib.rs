//! Read barriers: what a node must do before a read may be served from its local state.
//!
//! # Brief overview
//! - [`Consistency`]: the levels a read can ask for.
//! - [`read_barrier`]: on the leader, runs openraft's ReadIndex (a heartbeat round to a
//!   quorum confirms leadership, then the node waits until it has applied the commit index
//!   seen when the read arrived). After it returns, a local read observes every write
//!   acknowledged before the read began.
//! - [`BarrierError`]: not the leader (with the leader's id and addresses when known), no
//!   quorum, or the node is shutting down.
//!
//! A follower does not pass the barrier: the service forwards its linearizable reads to the
//! leader. Follower-served linearizable reads (read index fetched from the leader) and lease
//! reads are the client-API issue's work.
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
    match level {
        Consistency::Stale => Ok(0),
        Consistency::Linearizable => match raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(read_log_id) => Ok(read_log_id.index()),
            Err(e) => Err(map_error(e)),
        },
    }
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
