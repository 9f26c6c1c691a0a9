//! The `raftkv.admin.v1.Admin` service: status, membership, leadership, snapshots, backups.
//!
//! Each handler checks its input, bounds the call by the caller's deadline (capped), runs the
//! operation from [`crate::cluster`], and forwards the request once to the leader when the
//! operation says only the leader can do it, with the same forwarding as the KV service
//! ([`crate::forward::to_leader`]: hop guard, no-forward opt-out, failure classification).

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::{RaftMetrics, ServerState};
use proto::admin::v1::admin_client::AdminClient;
use proto::admin::v1::admin_server::{Admin, AdminServer};
use proto::admin::v1::alarm_request::AlarmAction as WireAlarmAction;
use proto::admin::v1::{
    AddLearnerRequest, AddVoterRequest, AddVoterResponse, AlarmMember, AlarmRequest, AlarmResponse, AlarmType,
    BackupHeader, BackupRequest, BarrierRequest, BarrierResponse, DemoteRequest, GossipDrops, GossipLiveness,
    GossipNode, HashKvRequest, HashKvResponse, Member, MembershipChangeResponse, PromoteRequest, RaftState,
    RemoveRequest, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse, Suffrage, TransferLeaderRequest,
    TransferLeaderResponse, VerifyLeaderRequest, VerifyLeaderResponse, WriteStage, WriteStagesRequest,
    WriteStagesResponse,
};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use types::{Alarm, AlarmAction, AlarmCommand, AlarmKind, NodeId, NodeInfo, TypeConfig};

use crate::backup::{BackupStream, stream_file};
use crate::cluster::{self, MemberState, MembershipChange};
use crate::forward::{Effect, Forwarding, Leader, Routed, deadline, to_leader};
use crate::node::DEFAULT_REQUEST_TIMEOUT;
use crate::{NodeContext, ServiceError};

/// How long adding a voter may take when the caller sets no deadline: catching up a new
/// node can take a while on a large state.
pub const DEFAULT_ADD_VOTER_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest any other admin call may take (membership changes, transfers, snapshots,
/// backups before their first byte): the caller's deadline, capped at this.
pub const MAX_ADMIN_TIMEOUT: Duration = Duration::from_secs(120);

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

/// The members of the membership in `m`, voters first, each with its suffrage; on the leader
/// also with its replication progress (matched index and lag): [`cluster::members`] on the
/// wire.
#[must_use]
pub fn members_of(m: &RaftMetrics<TypeConfig>) -> Vec<Member> {
    wire_members(cluster::members(m))
}

/// Members as the Admin API sends them.
fn wire_members(members: Vec<MemberState>) -> Vec<Member> {
    members
        .into_iter()
        .map(|member| Member {
            id: member.id.to_string(),
            suffrage: if member.voter { Suffrage::Voter } else { Suffrage::Learner } as i32,
            raft_addr: member.node.raft_addr,
            grpc_addr: member.node.grpc_addr,
            is_leader: member.is_leader,
            matched_index: member.matched_index,
            lag: member.lag,
        })
        .collect()
}

/// Gossip's view as `GossipNode`s, and where it disagrees with the membership in `m`.
fn gossip_status(view: &gossip::View, m: &RaftMetrics<TypeConfig>) -> (Vec<GossipNode>, Vec<String>) {
    let members = m.membership_config.membership().nodes().map(|(id, n)| (id.clone(), n.clone())).collect();
    let disagreements = gossip::compare(view, &members).iter().map(ToString::to_string).collect();
    let nodes = view
        .values()
        .map(|p| GossipNode {
            id: p.meta.id.to_string(),
            liveness: match p.liveness {
                gossip::Liveness::Live => GossipLiveness::Live,
                gossip::Liveness::Left => GossipLiveness::Left,
                gossip::Liveness::Dead => GossipLiveness::Dead,
            } as i32,
            raft_addr: p.meta.addrs.raft_addr.clone(),
            grpc_addr: p.meta.addrs.grpc_addr.clone(),
            gossip_addr: p.gossip_addr.to_string(),
            role: p.meta.role.clone(),
            leader_id: p.meta.leader.as_ref().map(ToString::to_string).unwrap_or_default(),
            applied_index: p.meta.applied_index,
            version: p.meta.version.clone(),
        })
        .collect();
    (nodes, disagreements)
}

/// A [`latency::Report`] as the Admin API sends it.
fn write_stages_of(node_id: String, r: &latency::Report) -> WriteStagesResponse {
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    WriteStagesResponse {
        node_id,
        writes: r.writes,
        unmatched: r.unmatched,
        period_ns: ns(r.period),
        stages: r
            .stages
            .iter()
            .map(|s| WriteStage {
                name: s.stage.name().into(),
                count: s.step.count(),
                step_p50_ns: ns(s.step.quantile(0.5)),
                step_p99_ns: ns(s.step.quantile(0.99)),
                step_max_ns: ns(s.step.max()),
                step_sum_ns: ns(s.step.sum()),
                total_p50_ns: ns(s.total.quantile(0.5)),
                total_p99_ns: ns(s.total.quantile(0.99)),
                total_max_ns: ns(s.total.max()),
                overtaken: s.overtaken,
            })
            .collect(),
    }
}

/// Active alarms as the Admin API sends them.
fn wire_alarms(alarms: &[Alarm]) -> Vec<AlarmMember> {
    alarms
        .iter()
        .map(|a| AlarmMember {
            member_id: a.member.to_string(),
            alarm: match a.kind {
                AlarmKind::NoSpace => AlarmType::Nospace,
            } as i32,
            detail: a.detail.clone(),
            index: a.index,
        })
        .collect()
}

/// The alarm kind a request names; `None` for every kind.
fn alarm_kind(alarm: i32) -> Result<Option<AlarmKind>, ServiceError> {
    match AlarmType::try_from(alarm) {
        Ok(AlarmType::None) => Ok(None),
        Ok(AlarmType::Nospace) => Ok(Some(AlarmKind::NoSpace)),
        Err(_) => Err(ServiceError::InvalidArgument(format!("alarm {alarm} is not a known alarm type (NOSPACE is 1)"))),
    }
}

/// The alarm changes a request asks for, given the alarms active here: one raise, or one
/// clear per matching active alarm (none: nothing to do).
fn alarm_changes(req: &AlarmRequest, active: &[Alarm]) -> Result<Vec<AlarmCommand>, ServiceError> {
    let kind = alarm_kind(req.alarm)?;
    let member = if req.member_id.is_empty() { None } else { Some(node_id("member_id", &req.member_id)?) };
    match WireAlarmAction::try_from(req.action) {
        Ok(WireAlarmAction::Get) => Ok(Vec::new()),
        Ok(WireAlarmAction::Activate) => {
            let (Some(member), Some(kind)) = (member, kind) else {
                return Err(ServiceError::InvalidArgument("ACTIVATE needs a member_id and an alarm type".into()));
            };
            Ok(vec![AlarmCommand { member, kind, action: AlarmAction::Raise { detail: req.detail.clone() } }])
        }
        Ok(WireAlarmAction::Deactivate) => Ok(active
            .iter()
            .filter(|a| member.as_ref().is_none_or(|m| *m == a.member) && kind.is_none_or(|k| k == a.kind))
            .map(|a| AlarmCommand { member: a.member.clone(), kind: a.kind, action: AlarmAction::Clear })
            .collect()),
        Err(_) => Err(ServiceError::InvalidArgument(format!(
            "action {} is not GET (0), ACTIVATE (1) or DEACTIVATE (2)",
            req.action
        ))),
    }
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
///
/// # Errors
/// `InvalidArgument` naming `what` otherwise.
pub fn check_addr(what: &str, addr: &str) -> Result<(), ServiceError> {
    let ok =
        addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument(format!("{what} {addr:?} is not HOST:PORT with a port from 1 to 65535")))
    }
}

/// Parses a node id given as `what`.
///
/// # Errors
/// `InvalidArgument` naming `what` when it is not a valid id.
pub fn node_id(what: &str, id: &str) -> Result<NodeId, ServiceError> {
    NodeId::new(id).map_err(|e| ServiceError::InvalidArgument(format!("{what}: {e}")))
}

fn node_info(raft_addr: &str, grpc_addr: &str) -> Result<NodeInfo, ServiceError> {
    check_addr("raft_addr", raft_addr)?;
    check_addr("grpc_addr", grpc_addr)?;
    Ok(NodeInfo { raft_addr: raft_addr.to_string(), grpc_addr: grpc_addr.to_string() })
}

fn change_response(c: MembershipChange) -> MembershipChangeResponse {
    MembershipChangeResponse { index: c.index, members: wire_members(c.members), changed: c.changed }
}

/// How a cluster change goes: the instant it must answer by (the caller's deadline, capped at
/// `max`, less a fifth), and whether the request allows forwarding. The fifth kept back is for
/// the answer: an operation that cannot finish in time (a learner still catching up, another
/// membership change in progress) says why before the caller gives up, rather than the caller
/// seeing only its own timeout.
fn budget<T>(request: &Request<T>, max: Duration) -> Forwarding {
    let until = Instant::now() + deadline(request.metadata(), max).mul_f32(0.8);
    Forwarding::of(request.metadata(), Effect::Change, until)
}

impl AdminService {
    /// Forwards `req` to `leader` ([`to_leader`]) through the Admin client method `call`.
    async fn forward<Req, Resp, F, Fut>(
        &self,
        leader: Leader,
        route: Forwarding,
        req: Req,
        call: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(AdminClient<Channel>, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        to_leader(&self.ctx, leader, route, req, |ch, r| call(AdminClient::new(ch), r)).await
    }

    /// Waits here until `index` (the leader's barrier) is applied, and answers.
    async fn barrier_here(&self, index: u64, until: Instant) -> Result<BarrierResponse, ServiceError> {
        cluster::wait_applied(&self.ctx, index, until).await?;
        Ok(BarrierResponse { node_id: self.ctx.id.to_string(), index })
    }

    /// The barrier index: from this node if it leads, else from the leader (forwarded once).
    async fn barrier_index(&self, route: Forwarding) -> Result<u64, Status> {
        match cluster::barrier(&self.ctx, route.until).await? {
            Routed::Done(index) => Ok(index),
            Routed::Leader(leader) => {
                let route = Forwarding { effect: Effect::Read, ..route };
                let barrier = |mut c: AdminClient<Channel>, r| async move { c.barrier(r).await };
                Ok(self.forward(leader, route, BarrierRequest {}, barrier).await?.into_inner().index)
            }
        }
    }
}

macro_rules! membership_call {
    ($self:ident, $route:ident, $req:ident, $outcome:expr, $method:ident) => {
        match $outcome {
            Routed::Done(c) => Ok(Response::new(change_response(c))),
            Routed::Leader(leader) => {
                $self.forward(leader, $route, $req, |mut c, r| async move { c.$method(r).await }).await
            }
        }
    };
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let m = self.ctx.raft.metrics().borrow_watched().clone();
        let (gossip_nodes, disagreements) = match &self.ctx.gossip {
            Some(g) => gossip_status(&g.view().await, &m),
            None => (Vec::new(), Vec::new()),
        };
        let gossip_drops = self.ctx.gossip.as_ref().and_then(gossip::Gossip::drops).map(|d| GossipDrops {
            unauthenticated: d.unauthenticated,
            replayed: d.replayed,
            stale: d.stale,
            malformed: d.malformed,
            oversize: d.oversize,
        });
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
            purged_index: types::index_of(m.purged.as_ref()),
            gossip_enabled: self.ctx.gossip.is_some(),
            gossip_nodes,
            disagreements,
            gossip_sealed: gossip_drops.is_some(),
            gossip_drops,
            alarms: wire_alarms(&self.ctx.sm.alarms()),
        }))
    }

    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let route = budget(&request, MAX_ADMIN_TIMEOUT);
        let min_index = request.into_inner().min_index;
        cluster::wait_applied(&self.ctx, min_index, route.until).await?;
        let sm = self.ctx.sm.clone();
        let h = tokio::task::spawn_blocking(move || sm.hash_kv())
            .await
            .map_err(|e| ServiceError::Internal(format!("hashing the state: {e}").into()))?
            .map_err(ServiceError::from)?;
        Ok(Response::new(HashKvResponse {
            node_id: self.ctx.id.to_string(),
            index: h.index,
            hash: h.hash,
            keys: h.keys,
        }))
    }

    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let route = budget(&request, DEFAULT_REQUEST_TIMEOUT);
        let req = request.into_inner();
        let get = WireAlarmAction::try_from(req.action) == Ok(WireAlarmAction::Get);
        let changes = alarm_changes(&req, &self.ctx.sm.alarms())?;
        if !get && changes.is_empty() {
            // Nothing active here to clear; the leader may know of more (this node may lag).
            if let Routed::Leader(leader) = cluster::barrier(&self.ctx, route.until).await? {
                return self.forward(leader, route, req, |mut c, r| async move { c.alarm(r).await }).await;
            }
        }
        for cmd in changes {
            tracing::info!(member = %cmd.member, alarm = %cmd.kind, action = ?cmd.action, "alarm change requested");
            if let Routed::Leader(leader) = cluster::change_alarm(&self.ctx, cmd, route.until).await? {
                return self.forward(leader, route, req, |mut c, r| async move { c.alarm(r).await }).await;
            }
        }
        Ok(Response::new(AlarmResponse {
            node_id: self.ctx.id.to_string(),
            alarms: wire_alarms(&self.ctx.sm.alarms()),
        }))
    }

    async fn add_voter(&self, request: Request<AddVoterRequest>) -> Result<Response<AddVoterResponse>, Status> {
        let route = budget(&request, DEFAULT_ADD_VOTER_TIMEOUT.max(DEFAULT_REQUEST_TIMEOUT));
        let req = request.into_inner();
        let id = node_id("id", &req.id)?;
        let info = node_info(&req.raft_addr, &req.grpc_addr)?;
        match cluster::add_voter(&self.ctx, &id, &info, req.if_membership_index, route.until).await? {
            Routed::Done(c) => Ok(Response::new(AddVoterResponse { index: c.index, members: wire_members(c.members) })),
            Routed::Leader(leader) => {
                self.forward(leader, route, req, |mut c, r| async move { c.add_voter(r).await }).await
            }
        }
    }

    async fn add_learner(
        &self,
        request: Request<AddLearnerRequest>,
    ) -> Result<Response<MembershipChangeResponse>, Status> {
        let route = budget(&request, MAX_ADMIN_TIMEOUT);
        let req = request.into_inner();
        let id = node_id("id", &req.id)?;
        let info = node_info(&req.raft_addr, &req.grpc_addr)?;
        membership_call!(
            self,
            route,
            req,
            cluster::add_learner(&self.ctx, &id, &info, req.if_membership_index, route.until).await?,
            add_learner
        )
    }

    async fn promote(&self, request: Request<PromoteRequest>) -> Result<Response<MembershipChangeResponse>, Status> {
        let route = budget(&request, MAX_ADMIN_TIMEOUT);
        let req = request.into_inner();
        let id = node_id("id", &req.id)?;
        membership_call!(
            self,
            route,
            req,
            cluster::promote(&self.ctx, &id, req.if_membership_index, route.until).await?,
            promote
        )
    }

    async fn demote(&self, request: Request<DemoteRequest>) -> Result<Response<MembershipChangeResponse>, Status> {
        let route = budget(&request, MAX_ADMIN_TIMEOUT);
        let req = request.into_inner();
        let id = node_id("id", &req.id)?;
        membership_call!(
            self,
            route,
            req,
            cluster::demote(&self.ctx, &id, req.if_membership_index, route.until).await?,
            demote
        )
    }

    async fn remove(&self, request: Request<RemoveRequest>) -> Result<Response<MembershipChangeResponse>, Status> {
        let route = budget(&request, MAX_ADMIN_TIMEOUT);
        let req = request.into_inner();
        let id = node_id("id", &req.id)?;
        membership_call!(
            self,
            route,
            req,
            cluster::remove(&self.ctx, &id, req.if_membership_index, route.until).await?,
            remove
        )
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let route = budget(&request, MAX_ADMIN_TIMEOUT);
        let req = request.into_inner();
        let to = if req.to.is_empty() { None } else { Some(node_id("to", &req.to)?) };
        match cluster::transfer_leadership(&self.ctx, to.as_ref(), route.until).await? {
            Routed::Done(t) => Ok(Response::new(TransferLeaderResponse {
                previous_leader_id: t.previous.to_string(),
                leader_id: t.leader.to_string(),
                term: t.term,
            })),
            Routed::Leader(leader) => {
                self.forward(leader, route, req, |mut c, r| async move { c.transfer_leader(r).await }).await
            }
        }
    }

    async fn snapshot(&self, request: Request<SnapshotRequest>) -> Result<Response<SnapshotResponse>, Status> {
        let route = budget(&request, MAX_ADMIN_TIMEOUT);
        let (index, term) = cluster::snapshot(&self.ctx, route.until).await?;
        Ok(Response::new(SnapshotResponse { node_id: self.ctx.id.to_string(), index, term }))
    }

    type BackupStream = BackupStream;

    async fn backup(&self, request: Request<BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        let route = budget(&request, MAX_ADMIN_TIMEOUT);
        // Everything committed before the call is applied here, then snapshotted.
        let index = self.barrier_index(route.clone()).await?;
        cluster::wait_applied(&self.ctx, index, route.until).await?;
        cluster::snapshot(&self.ctx, route.until).await?;
        let snapshot = self
            .ctx
            .raft
            .get_snapshot()
            .await
            .map_err(|e| ServiceError::Internal(format!("reading the current snapshot: {e}").into()))?
            .ok_or_else(|| ServiceError::Internal("no snapshot after building one".into()))?;
        let last = snapshot.meta.last_log_id.clone();
        let snap_index = types::index_of(last.as_ref());
        if snap_index < index {
            return Err(ServiceError::Internal(
                format!("the current snapshot ends at {snap_index}, before the barrier at {index}").into(),
            )
            .into());
        }
        let header = BackupHeader {
            node_id: self.ctx.id.to_string(),
            index: snap_index,
            term: last.map(|l| l.leader_id.term).unwrap_or(0),
            size: snapshot.snapshot.len(),
        };
        tracing::info!(index = snap_index, size = header.size, "streaming a backup");
        Ok(Response::new(stream_file(header, snapshot.snapshot)))
    }

    async fn barrier(&self, request: Request<BarrierRequest>) -> Result<Response<BarrierResponse>, Status> {
        let route = budget(&request, MAX_ADMIN_TIMEOUT);
        let index = self.barrier_index(route.clone()).await?;
        Ok(Response::new(self.barrier_here(index, route.until).await?))
    }

    async fn verify_leader(
        &self,
        request: Request<VerifyLeaderRequest>,
    ) -> Result<Response<VerifyLeaderResponse>, Status> {
        let route = budget(&request, DEFAULT_REQUEST_TIMEOUT);
        let v = cluster::verify_leader(&self.ctx, route.until).await?;
        Ok(Response::new(VerifyLeaderResponse {
            leader_id: self.ctx.id.to_string(),
            term: v.term,
            read_index: v.read_index,
        }))
    }

    async fn write_stages(
        &self,
        request: Request<WriteStagesRequest>,
    ) -> Result<Response<WriteStagesResponse>, Status> {
        let report = self.ctx.stages.report(request.into_inner().reset);
        Ok(Response::new(write_stages_of(self.ctx.id.to_string(), &report)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_stages_go_on_the_wire_in_order_in_nanoseconds() {
        let clock = latency::WriteStages::new();
        let proposed = clock.now();
        clock.appended(1..=1);
        clock.durable(1..=1);
        clock.committed(1);
        clock.applied(1..=1);
        std::thread::sleep(Duration::from_millis(2));
        clock.answered(1, proposed);
        let wire = write_stages_of("n1".into(), &clock.report(false));
        assert_eq!((wire.node_id.as_str(), wire.writes, wire.unmatched), ("n1", 1, 0));
        let names: Vec<&str> = wire.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["appended", "durable", "committed", "applied", "answered"]);
        let answered = &wire.stages[4];
        assert_eq!(answered.count, 1);
        // About 2 ms from proposed to answered (the histogram's precision is a few percent).
        assert!(answered.total_p50_ns >= 1_900_000 && answered.total_p50_ns <= answered.total_max_ns);
        assert!(answered.step_sum_ns >= 1_900_000, "the answer came 2 ms after the apply");
    }

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

    #[test]
    fn ids_are_checked() {
        let err = node_id("id", "a/b").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("id: ") && err.contains("'/'"), "{err}");
        assert!(node_id("to", "").is_err());
        assert!(node_id("id", "nodeA").is_ok());
    }
}
