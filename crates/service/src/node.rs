//! [`NodeContext`]: what every service needs of the node, and the write and read paths
//! they share.

use std::sync::Arc;
use std::time::Duration;

use fsm::{Raft, StateMachine};
use linearizable::{BarrierError, Consistency};
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use resolver::Resolver;
use types::{Command, CommandResult, NodeId, NodeInfo};

use crate::{Forwarder, ServiceError};

/// The longest any request may take when the caller sets no deadline.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the services share: the node's id, its Raft handle, its state machine, and the way
/// to reach other nodes. Cheap to clone.
#[derive(Clone, Debug)]
pub struct NodeContext {
    /// This node's id.
    pub id: NodeId,
    /// The Raft node.
    pub raft: Raft,
    /// The state machine, for local reads.
    pub sm: StateMachine,
    /// Node id → addresses, used when the leader's address is not in the error itself.
    pub resolver: Arc<dyn Resolver>,
    /// Channels to other nodes, for forwarding.
    pub forwarder: Forwarder,
}

/// Where a request must go.
#[derive(Debug)]
pub(crate) enum Routed<T> {
    /// Served here.
    Done(T),
    /// Must be served by the leader.
    Leader {
        /// The leader's id.
        id: NodeId,
        /// The leader's gRPC address.
        addr: String,
    },
}

/// The fields every response header carries, read from this node's Raft metrics.
#[derive(Debug, Clone)]
pub struct HeaderInfo {
    /// The node that served.
    pub node_id: String,
    /// The leader it knows, or "".
    pub leader_id: String,
    /// Its term.
    pub term: u64,
}

impl NodeContext {
    /// The leader this node knows and the term.
    #[must_use]
    pub fn header_info(&self) -> HeaderInfo {
        let m = self.raft.metrics().borrow_watched().clone();
        HeaderInfo {
            node_id: self.id.to_string(),
            leader_id: m.current_leader.map(|l| l.to_string()).unwrap_or_default(),
            term: m.current_term,
        }
    }

    /// The leader's gRPC address, from the error itself or the resolver.
    fn leader_addr(&self, id: &NodeId, node: Option<&NodeInfo>) -> Option<String> {
        node.map(|n| n.grpc_addr.clone())
            .filter(|a| !a.is_empty())
            .or_else(|| self.resolver.resolve(id).map(|n| n.grpc_addr))
    }

    /// Waits until some node is known as leader, for at most `timeout`.
    async fn wait_for_leader(&self, timeout: Duration) {
        let _ = self.raft.wait(Some(timeout)).metrics(|m| m.current_leader.is_some(), "a leader is known").await;
    }

    /// Classifies "not the leader": the leader elsewhere (forward there), or none usable
    /// yet (wait and retry here).
    fn not_leader(&self, leader: Option<NodeId>, node: Option<&NodeInfo>) -> Option<Routed<()>> {
        let id = leader.filter(|l| *l != self.id)?;
        let addr = self.leader_addr(&id, node)?;
        Some(Routed::Leader { id, addr })
    }

    /// Proposes `cmd` through Raft; returns its log index and result once it is committed
    /// on a quorum, fsynced, and applied here. During an election it waits (within
    /// `timeout`) for a leader; if the leader is another node it routes there.
    pub(crate) async fn write(
        &self,
        cmd: Command,
        timeout: Duration,
    ) -> Result<Routed<(u64, CommandResult)>, ServiceError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut backoff = Duration::from_millis(20);
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(ServiceError::NoLeader);
            }
            let attempt = tokio::time::timeout(remaining, self.raft.client_write(cmd.clone())).await;
            let result = match attempt {
                Ok(r) => r,
                Err(_) => {
                    return Err(ServiceError::DeadlineExceeded(
                        "the write was proposed but not committed in time; its outcome is unknown".into(),
                    ));
                }
            };
            match result {
                Ok(resp) => return Ok(Routed::Done((resp.log_id.index, resp.data))),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    if let Some(Routed::Leader { id, addr }) =
                        self.not_leader(f.leader_id.clone(), f.leader_node.as_ref())
                    {
                        return Ok(Routed::Leader { id, addr });
                    }
                    if let Some(id) = f.leader_id.filter(|l| *l != self.id) {
                        // A leader elsewhere whose address nobody knows.
                        return Err(ServiceError::NotLeader { id, addr: None });
                    }
                    // No leader yet, or this node was just elected and is not writable yet.
                    self.wait_for_leader(remaining).await;
                    tokio::time::sleep(backoff.min(remaining)).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f))) => {
                    return Err(ServiceError::OutcomeUnknown(format!(
                        "leadership changed after the write was appended ({f})"
                    )));
                }
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                    return Err(ServiceError::Internal(format!("unexpected membership error on a write: {e}")));
                }
                Err(RaftError::APIError(ClientWriteError::PreconditionFailed(e))) => {
                    return Err(ServiceError::FailedPrecondition(e.to_string()));
                }
                // openraft answers Fatal when its core stopped before replying, which can be
                // after the entry was appended and replicated: the write may still commit.
                Err(RaftError::Fatal(f)) => {
                    return Err(ServiceError::OutcomeUnknown(format!(
                        "raft stopped while the write was in flight ({f})"
                    )));
                }
            }
        }
    }

    /// Passes the read barrier for `level` here, or says where the read must go. Returns
    /// the index the read reflects at least.
    pub(crate) async fn read_barrier(
        &self,
        level: Consistency,
        timeout: Duration,
    ) -> Result<Routed<u64>, ServiceError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(ServiceError::NoLeader);
            }
            let attempt = tokio::time::timeout(remaining, linearizable::read_barrier(&self.raft, level)).await;
            let Ok(result) = attempt else {
                return Err(ServiceError::DeadlineExceeded("the read barrier did not complete in time".into()));
            };
            match result {
                Ok(index) => return Ok(Routed::Done(index)),
                Err(BarrierError::NotLeader { leader }) => {
                    let (id, node) = match leader {
                        Some((id, node)) => (Some(id), node),
                        None => (None, None),
                    };
                    if let Some(Routed::Leader { id, addr }) = self.not_leader(id.clone(), node.as_ref()) {
                        return Ok(Routed::Leader { id, addr });
                    }
                    if let Some(id) = id.filter(|l| *l != self.id) {
                        return Err(ServiceError::NotLeader { id, addr: None });
                    }
                    self.wait_for_leader(remaining).await;
                    tokio::time::sleep(Duration::from_millis(20).min(remaining)).await;
                }
                Err(BarrierError::NoQuorum(e)) => return Err(ServiceError::NoQuorum(e)),
                Err(BarrierError::Stopped(_)) => return Err(ServiceError::ShuttingDown),
                Err(e) => return Err(ServiceError::Internal(e.to_string())),
            }
        }
    }
}
