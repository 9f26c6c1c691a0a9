//! [`NodeContext`]: what every service needs of the node, and the write and read paths
//! they share.

use std::sync::Arc;
use std::time::Duration;

use fsm::{Raft, StateMachine};
use linearizable::Consistency;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use resolver::Resolver;
use types::{AlarmKind, Command, CommandResult, NodeId, TxnOp, WriteOp};

use raft_network::LeaderContact;
use raft_network::calls::LeaderReadIndex;

use crate::forward::{Leader, Routed};
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
    /// Node id → addresses (gossip, static peers, then the membership); asked first, before
    /// the addresses a Raft error carries, which are the membership's and may be stale.
    pub resolver: Arc<dyn Resolver>,
    /// Gossip, when on: its view of the cluster for `Status`.
    pub gossip: Option<gossip::Gossip>,
    /// Channels to other nodes, for forwarding and read indexes.
    pub forwarder: Forwarder,
    /// When this node last heard from a leader (for stale reads' headers).
    pub leader_contact: Arc<LeaderContact>,
    /// The per-stage clock of this node's writes (the log store and the state machine stamp
    /// the same one); every write proposed and answered here is recorded in it.
    pub stages: Arc<latency::WriteStages>,
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
        // Reads the two figures under the watch's borrow: cloning the whole `RaftMetrics`
        // (membership, replication map) on every request cost an allocation per member.
        let metrics = self.raft.metrics();
        let (leader_id, term) = {
            let m = metrics.borrow_watched();
            (m.current_leader.as_ref().map(ToString::to_string).unwrap_or_default(), m.current_term)
        };
        HeaderInfo { node_id: self.id.to_string(), leader_id, term }
    }

    /// The leader this node follows, when it knows one and it is another node, with the
    /// addresses the membership gives it. A write then goes there at once: asking RaftCore
    /// would cost a message to its task, only to hear `ForwardToLeader` with the same leader.
    fn other_leader(&self) -> Option<Leader> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        if m.state == openraft::ServerState::Leader {
            return None;
        }
        let id = m.current_leader.as_ref().filter(|l| **l != self.id)?.clone();
        let node = m.membership_config.membership().get_node(&id).cloned();
        Some(Leader { id, node })
    }

    /// Waits until some node is known as leader, for at most `timeout`.
    async fn wait_for_leader(&self, timeout: Duration) {
        let _ = self.raft.wait(Some(timeout)).metrics(|m| m.current_leader.is_some(), "a leader is known").await;
    }

    /// Proposes `cmd` through Raft; returns its log index and result once it is committed
    /// on a quorum, fsynced, and applied here. During an election it waits (within
    /// `timeout`) for a leader; if the leader is another node it routes there (the caller
    /// forwards with [`crate::forward::to_leader`]); a follower that knows the leader routes
    /// there without proposing.
    pub async fn write(&self, cmd: Command, timeout: Duration) -> Result<Routed<(u64, CommandResult)>, ServiceError> {
        self.check_space(&cmd)?;
        if let Some(leader) = self.other_leader() {
            return Ok(Routed::Leader(leader));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut backoff = Duration::from_millis(20);
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(ServiceError::NoLeader);
            }
            let proposed = self.stages.now();
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
                Ok(resp) => {
                    self.stages.answered(resp.log_id.index, proposed);
                    return Ok(Routed::Done((resp.log_id.index, resp.data)));
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    if let Some(id) = f.leader_id.filter(|l| *l != self.id) {
                        return Ok(Routed::Leader(Leader { id, node: f.leader_node }));
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
                    return Err(ServiceError::Internal(format!("unexpected membership error on a write: {e}").into()));
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

    /// Refuses a write that adds data while a NOSPACE alarm is active, as this node has
    /// applied the alarms (the leader, which proposes every write, checks again when the
    /// write is forwarded there). Deletes, and transactions without a put, go through: they
    /// are how space is freed.
    fn check_space(&self, cmd: &Command) -> Result<(), ServiceError> {
        let Some(w) = cmd.write() else { return Ok(()) };
        if !adds_data(&w.op) {
            return Ok(());
        }
        let alarms = self.sm.alarms();
        match alarms.iter().find(|a| a.kind == AlarmKind::NoSpace) {
            None => Ok(()),
            Some(a) => Err(ServiceError::ResourceExhausted(format!(
                "no space left on {}: {}; writes that add data are refused until space is freed and the alarm is cleared (`raftkvctl alarm disarm`); deletes still work",
                a.member, a.detail
            ))),
        }
    }

    /// Makes this node ready to serve a read at `level` and returns the index the read will
    /// reflect at least: [`linearizable::read_index`], asking the leader over the Raft port
    /// ([`LeaderReadIndex`]) on a follower. A node that cannot confirm the read index within
    /// most of the caller's deadline answers UNAVAILABLE, never stale data.
    pub async fn read_index(&self, level: Consistency, timeout: Duration) -> Result<u64, ServiceError> {
        let leader = LeaderReadIndex { resolver: self.resolver.as_ref(), pool: self.forwarder.pool() };
        let applied = self.sm.subscribe_applied();
        Ok(linearizable::read_index(&self.raft, &self.id, applied, &leader, level, timeout).await?)
    }
}

/// Whether a write may make the stored data grow: a put, or a transaction with a put in
/// either branch.
fn adds_data(op: &WriteOp) -> bool {
    match op {
        WriteOp::Put(_) => true,
        WriteOp::Delete(_) => false,
        WriteOp::Txn(t) => t.success.iter().chain(&t.failure).any(|op| matches!(op, TxnOp::Put(_))),
    }
}

#[cfg(test)]
mod tests {
    use types::{DeleteOp, KeyRange, PutOp, Txn};

    use super::*;

    #[test]
    fn only_puts_add_data() {
        let put = PutOp { key: b"k".to_vec(), value: vec![1], expect: None, prev_kv: false };
        let del = DeleteOp { range: KeyRange::Key(b"k".to_vec()), expect: None, prev_kv: false };
        assert!(adds_data(&WriteOp::Put(put.clone())));
        assert!(!adds_data(&WriteOp::Delete(del.clone())));
        let txn = |success, failure| WriteOp::Txn(Txn { compares: vec![], success, failure });
        assert!(!adds_data(&txn(vec![TxnOp::Delete(del.clone())], vec![])));
        assert!(adds_data(&txn(vec![TxnOp::Delete(del)], vec![TxnOp::Put(put)])));
    }
}
