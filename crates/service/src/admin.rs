//! The `raftkv.admin.v1.Admin` service: status and membership.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, RaftMetrics, ServerState};
use proto::admin::v1::admin_client::AdminClient;
use proto::admin::v1::admin_server::{Admin, AdminServer};
use proto::admin::v1::{AddVoterRequest, AddVoterResponse, Member, RaftState, StatusRequest, StatusResponse, Suffrage};
use tonic::{Request, Response, Status};
use types::{NodeId, NodeInfo, TypeConfig};

use crate::forward::{deadline, forward_failed, forwarded_request, may_forward};
use crate::node::DEFAULT_REQUEST_TIMEOUT;
use crate::{NodeContext, ServiceError};

/// How long adding a voter may take when the caller sets no deadline: catching up a new
/// node can take a while on a large state.
pub const DEFAULT_ADD_VOTER_TIMEOUT: Duration = Duration::from_secs(120);

/// The Admin service of one node.
#[derive(Debug, Clone)]
pub struct AdminService {
    ctx: NodeContext,
}

impl AdminService {
    /// An Admin service over `ctx`.
    #[must_use]
    pub fn new(ctx: NodeContext) -> Self {
        Self { ctx }
    }

    /// The tonic server for this service.
    #[must_use]
    pub fn into_server(self) -> AdminServer<Self> {
        AdminServer::new(self)
    }
}

/// The members of the membership in `m`, voters first, each with its suffrage.
#[must_use]
pub fn members_of(m: &RaftMetrics<TypeConfig>) -> Vec<Member> {
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let mut members: Vec<Member> = membership
        .nodes()
        .map(|(id, info)| Member {
            id: id.to_string(),
            suffrage: if voters.contains(id) { Suffrage::Voter } else { Suffrage::Learner } as i32,
            raft_addr: info.raft_addr.clone(),
            grpc_addr: info.grpc_addr.clone(),
            is_leader: m.current_leader.as_ref() == Some(id),
        })
        .collect();
    members.sort_by(|a, b| {
        (b.suffrage == Suffrage::Voter as i32).cmp(&(a.suffrage == Suffrage::Voter as i32)).then(a.id.cmp(&b.id))
    });
    members
}

fn state_of(s: ServerState) -> RaftState {
    match s {
        ServerState::Learner => RaftState::Learner,
        ServerState::Follower => RaftState::Follower,
        ServerState::Candidate => RaftState::Candidate,
        ServerState::Leader => RaftState::Leader,
        ServerState::Shutdown => RaftState::Shutdown,
    }
}

/// Checks an address given for a node: `host:port`, port a number.
fn check_addr(what: &str, addr: &str) -> Result<(), ServiceError> {
    let ok =
        addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument(format!("{what} {addr:?} is not HOST:PORT with a port from 1 to 65535")))
    }
}

impl AdminService {
    async fn add_voter_here(
        &self,
        id: NodeId,
        info: NodeInfo,
        timeout: Duration,
    ) -> Result<AddVoterOutcome, ServiceError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let raft = &self.ctx.raft;
        let mut backoff = Duration::from_millis(50);
        loop {
            let m = raft.metrics().borrow_watched().clone();
            if m.current_leader.as_ref() != Some(&self.ctx.id) || m.state != ServerState::Leader {
                return match m.current_leader.filter(|l| *l != self.ctx.id) {
                    Some(leader) => Ok(AddVoterOutcome::Forward(leader)),
                    None => Err(ServiceError::NoLeader),
                };
            }
            let membership = m.membership_config.membership();
            if let Some(existing) = membership.get_node(&id) {
                if *existing != info {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "node {id} is already a member with raft_addr {} and grpc_addr {}; remove it before adding it with other addresses",
                        existing.raft_addr, existing.grpc_addr
                    )));
                }
                if membership.voter_ids().any(|v| v == id) {
                    let index = types::index_of(m.membership_config.log_id().as_ref());
                    return Ok(AddVoterOutcome::Done(index, members_of(&m)));
                }
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(ServiceError::DeadlineExceeded(format!("node {id} was not made a voter in time")));
            }
            let step = async {
                if membership.get_node(&id).is_none() {
                    tracing::info!(node = %id, raft_addr = %info.raft_addr, "adding learner");
                    raft.add_learner(id.clone(), info.clone(), true).await?;
                }
                tracing::info!(node = %id, "promoting learner to voter");
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id.clone()])), false).await
            };
            match tokio::time::timeout(remaining, step).await {
                Err(_) => {
                    return Err(ServiceError::DeadlineExceeded(format!("node {id} was not made a voter in time")));
                }
                Ok(Ok(resp)) => {
                    let m = raft.metrics().borrow_watched().clone();
                    return Ok(AddVoterOutcome::Done(resp.log_id.index, members_of(&m)));
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => match f.leader_id {
                    Some(l) if l != self.ctx.id => return Ok(AddVoterOutcome::Forward(l)),
                    _ => {}
                },
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_) | ChangeMembershipError::UncommittedLeaderLog(_),
                )))) => {}
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                    return Err(ServiceError::FailedPrecondition(format!("cannot add {id}: {e}")));
                }
                Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)))) => {
                    return Err(ServiceError::OutcomeUnknown(format!(
                        "leadership changed during the membership change ({f})"
                    )));
                }
                Ok(Err(RaftError::APIError(ClientWriteError::PreconditionFailed(e)))) => {
                    return Err(ServiceError::FailedPrecondition(format!("cannot add {id}: {e}")));
                }
                Ok(Err(RaftError::Fatal(_))) => return Err(ServiceError::ShuttingDown),
            }
            // Busy or not yet writable: wait a little and look again.
            tokio::time::sleep(backoff.min(remaining)).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
}

enum AddVoterOutcome {
    Done(u64, Vec<Member>),
    Forward(NodeId),
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let m = self.ctx.raft.metrics().borrow_watched().clone();
        Ok(Response::new(StatusResponse {
            node_id: self.ctx.id.to_string(),
            state: state_of(m.state) as i32,
            term: m.current_term,
            leader_id: m.current_leader.as_ref().map(ToString::to_string).unwrap_or_default(),
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: types::index_of(m.local_committed.as_ref()),
            applied_index: types::index_of(m.last_applied.as_ref()),
            snapshot_index: types::index_of(m.snapshot.as_ref()),
            membership_index: types::index_of(m.membership_config.log_id().as_ref()),
            members: members_of(&m),
        }))
    }

    async fn add_voter(&self, request: Request<AddVoterRequest>) -> Result<Response<AddVoterResponse>, Status> {
        let timeout = deadline(request.metadata(), DEFAULT_ADD_VOTER_TIMEOUT.max(DEFAULT_REQUEST_TIMEOUT));
        let forward = may_forward(request.metadata());
        let req = request.into_inner();
        let id = NodeId::new(&req.id).map_err(|e| ServiceError::InvalidArgument(e.to_string()))?;
        check_addr("raft_addr", &req.raft_addr)?;
        check_addr("grpc_addr", &req.grpc_addr)?;
        let info = NodeInfo { raft_addr: req.raft_addr.clone(), grpc_addr: req.grpc_addr.clone() };
        match self.add_voter_here(id, info, timeout).await? {
            AddVoterOutcome::Done(index, members) => Ok(Response::new(AddVoterResponse { index, members })),
            AddVoterOutcome::Forward(leader) => {
                let Some(addr) = self.ctx.resolver.resolve(&leader).map(|n| n.grpc_addr) else {
                    return Err(ServiceError::NotLeader { id: leader, addr: None }.into());
                };
                if !forward {
                    return Err(ServiceError::NotLeader { id: leader, addr: Some(addr) }.into());
                }
                let ch = self
                    .ctx
                    .forwarder
                    .channel(&addr)
                    .await
                    .map_err(|e| forward_failed(&leader, &addr, false, true, &e))?;
                AdminClient::new(ch).add_voter(forwarded_request(req, timeout)).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        assert!(check_addr("raft_addr", "127.0.0.1:5").is_ok());
        assert!(check_addr("raft_addr", "localhost:40051").is_ok());
        assert!(check_addr("raft_addr", "[::1]:40051").is_ok());
        for bad in ["", "localhost", ":80", "h:0", "h:99999", "h:x"] {
            let err = check_addr("raft_addr", bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("HOST:PORT"), "{bad}: {err}");
        }
    }
}
