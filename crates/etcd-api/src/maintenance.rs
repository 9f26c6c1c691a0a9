//! `etcdserverpb.Cluster` (the membership) and `etcdserverpb.Maintenance` (status, hashes,
//! snapshot, leadership, alarms), over the Raft membership and metrics, `service::cluster`'s
//! operations and the native Admin service's handlers, called in process (so forwarding to
//! the leader, deadlines and errors are the Admin API's own).

use std::pin::Pin;
use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use proto::admin::v1::admin_server::Admin;
use proto::admin::v1::backup_chunk::Chunk;
use proto::admin::v1::{self as admin, AlarmType as AdminAlarmType};
use proto::etcd::etcdserverpb::alarm_request::AlarmAction;
use proto::etcd::etcdserverpb::cluster_client::ClusterClient;
use proto::etcd::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use proto::etcd::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use proto::etcd::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, Member, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest,
    SnapshotResponse, StatusRequest, StatusResponse,
};
use service::forward::{Effect, Forwarding, deadline, to_leader};
use service::{
    AdminService, DEFAULT_REQUEST_TIMEOUT, MAX_ADMIN_TIMEOUT, MAX_DECODE_BYTES, Routed, ServiceError, cluster,
};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tonic::codegen::tokio_stream::{Stream, StreamExt};
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};
use types::{NodeId, NodeInfo};

use crate::members::{self, from_admin, node_ids, node_of, peer_addr, url};
use crate::{EtcdError, Node, member_id, signed};

/// A request to the native Admin service of this node, with the caller's metadata (its
/// deadline, credentials and forwarding marks).
fn admin_request<T>(md: &MetadataMap, msg: T) -> Request<T> {
    Request::from_parts(md.clone(), tonic::Extensions::default(), msg)
}

/// The node of the membership this node knows whose member id is `id`.
fn node_named(node: &Node, id: u64) -> Option<NodeId> {
    node_of(node_ids(&node.ctx.raft.metrics().borrow_watched()).into_iter(), id)
}

/// The etcd version Status reports: the etcd API raftkv's answers follow (etcd 3.4's).
/// Clients read it to pick the API they use; it is not raftkv's own version.
pub const ETCD_VERSION: &str = "3.4.0";

/// The `etcdserverpb.Cluster` service of one node.
#[derive(Debug, Clone)]
pub struct EtcdCluster {
    node: Node,
}

impl EtcdCluster {
    pub(crate) fn new(node: Node) -> Self {
        Self { node }
    }

    /// The tonic server for this service, with the decode limit applied.
    #[must_use]
    pub fn into_server(self) -> ClusterServer<Self> {
        ClusterServer::new(self).max_decoding_message_size(MAX_DECODE_BYTES)
    }
}

#[tonic::async_trait]
impl Cluster for EtcdCluster {
    /// The members of the Raft membership this node has applied: id [`member_id`] of the node
    /// id, name the node id, peer URL its Raft address, client URL its gRPC address.
    async fn member_list(&self, _: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        let metrics = self.node.ctx.raft.metrics().borrow_watched().clone();
        let members = cluster::members(&metrics).iter().map(etcd_member).collect();
        let header = self.node.header(self.node.ctx.sm.applied_index());
        Ok(Response::new(MemberListResponse { header: Some(header), members }))
    }

    /// Adds the node at the one peer URL, as a learner or a voter: its node id and client
    /// address are fixed as `members` says (id: the new member id in hex; client address: the
    /// peer address). A voter is added learner-first and promoted once caught up, within the
    /// call's deadline (the Admin service's AddVoter); a node not running by then stays a
    /// learner, and the error (`FAILED_PRECONDITION`) says how to start and promote it.
    async fn member_add(&self, request: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        let (md, _, req) = request.into_parts();
        let addr = peer_addr(&req.peer_ur_ls)?;
        let m = self.node.ctx.raft.metrics().borrow_watched().clone();
        if m.membership_config.membership().nodes().any(|(_, n)| n.raft_addr == addr) {
            return Err(EtcdError::PeerUrlExists.into());
        }
        let taken: Vec<u64> = node_ids(&m).iter().map(|n| member_id(n.as_str())).collect();
        let id = members::new_member_id(self.node.cluster_id, &addr, |i| taken.contains(&i));
        let name = members::node_name(id);
        tracing::info!(member = %name, raft_addr = %addr, learner = req.is_learner, "etcd MemberAdd");
        let admin = self.admin();
        let (index, list) = if req.is_learner {
            let add = admin::AddLearnerRequest {
                id: name.clone(),
                raft_addr: addr.clone(),
                grpc_addr: addr.clone(),
                if_membership_index: None,
            };
            let r = admin.add_learner(admin_request(&md, add)).await?.into_inner();
            (r.index, r.members)
        } else {
            let add = admin::AddVoterRequest {
                id: name.clone(),
                raft_addr: addr.clone(),
                grpc_addr: addr.clone(),
                if_membership_index: None,
            };
            match admin.add_voter(admin_request(&md, add)).await {
                Ok(r) => {
                    let r = r.into_inner();
                    (r.index, r.members)
                }
                // FAILED_PRECONDITION, not DEADLINE_EXCEEDED: the learner was added, and a
                // client retrying the add would only find its peer URL taken.
                Err(s) if s.code() == Code::DeadlineExceeded => {
                    return Err(EtcdError::from(ServiceError::FailedPrecondition(format!(
                        "{}; member {name} stays a learner: start raftkv with --raft_id {name} --raft_addr {addr} \
                         --grpc_addr {addr}, then promote it (etcdctl member promote {name})",
                        s.message()
                    )))
                    .into());
                }
                Err(s) => return Err(s),
            }
        };
        let members: Vec<Member> = list.iter().map(from_admin).collect();
        let member = members.iter().find(|m| m.id == id).cloned().unwrap_or_else(|| Member {
            id,
            name: name.clone(),
            peer_ur_ls: vec![url(&addr)],
            client_ur_ls: vec![url(&addr)],
            is_learner: req.is_learner,
        });
        let header = Some(self.header_after(index, &md).await);
        Ok(Response::new(MemberAddResponse { header, member: Some(member), members }))
    }

    /// Takes the member out of the Raft membership (the Admin service's Remove: the leader
    /// hands leadership over first when it is the one removed).
    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let (md, _, req) = request.into_parts();
        let name = node_named(&self.node, req.id).ok_or(EtcdError::MemberNotFound)?;
        let remove = admin::RemoveRequest { id: name.to_string(), if_membership_index: None };
        let r = self.admin().remove(admin_request(&md, remove)).await?.into_inner();
        let header = Some(self.header_after(r.index, &md).await);
        Ok(Response::new(MemberRemoveResponse { header, members: r.members.iter().map(from_admin).collect() }))
    }

    /// Records the member's new peer URL as its Raft address (`service::cluster::update_addresses`);
    /// its client address follows when it was the same address (a member MemberAdd added),
    /// and stays otherwise.
    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let ctx = &self.node.ctx;
        let name = node_named(&self.node, request.get_ref().id).ok_or(EtcdError::MemberNotFound)?;
        let addr = peer_addr(&request.get_ref().peer_ur_ls)?;
        let m = ctx.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let existing = membership.get_node(&name).cloned().ok_or(EtcdError::MemberNotFound)?;
        if membership.nodes().any(|(id, n)| *id != name && n.raft_addr == addr) {
            return Err(EtcdError::PeerUrlExists.into());
        }
        let grpc_addr = if existing.grpc_addr == existing.raft_addr { addr.clone() } else { existing.grpc_addr };
        let info = NodeInfo { raft_addr: addr, grpc_addr };
        let until = Instant::now() + deadline(request.metadata(), MAX_ADMIN_TIMEOUT).mul_f32(0.8);
        match cluster::update_addresses(ctx, &name, &info, until).await.map_err(EtcdError::from)? {
            Routed::Done(c) => {
                let header = Some(self.header_after(c.index, request.metadata()).await);
                Ok(Response::new(MemberUpdateResponse { header, members: c.members.iter().map(etcd_member).collect() }))
            }
            Routed::Leader(leader) => {
                let how = Forwarding::of(request.metadata(), Effect::Change, until);
                let req = request.into_inner();
                to_leader(ctx, leader, how, req, |ch, r| async move {
                    ClusterClient::new(ch).max_decoding_message_size(MAX_DECODE_BYTES).member_update(r).await
                })
                .await
            }
        }
    }

    /// Makes the learner a voter once it has caught up (the Admin service's Promote, which
    /// waits for it within the call's deadline); a voter is etcd's "can only promote a
    /// learner member".
    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let (md, _, req) = request.into_parts();
        let name = node_named(&self.node, req.id).ok_or(EtcdError::MemberNotFound)?;
        let m = self.node.ctx.raft.metrics().borrow_watched().clone();
        if m.membership_config.membership().voter_ids().any(|v| v == name) {
            return Err(EtcdError::MemberNotLearner.into());
        }
        let promote = admin::PromoteRequest { id: name.to_string(), if_membership_index: None };
        let r = self.admin().promote(admin_request(&md, promote)).await?.into_inner();
        let header = Some(self.header_after(r.index, &md).await);
        Ok(Response::new(MemberPromoteResponse { header, members: r.members.iter().map(from_admin).collect() }))
    }
}

/// A member of the membership as etcd's `Member`: id [`member_id`] of the node id, name the
/// node id, peer URL its Raft address, client URL its gRPC address.
fn etcd_member(m: &cluster::MemberState) -> Member {
    Member {
        id: member_id(m.id.as_str()),
        name: m.id.to_string(),
        peer_ur_ls: vec![url(&m.node.raft_addr)],
        client_ur_ls: vec![url(&m.node.grpc_addr)],
        is_learner: !m.voter,
    }
}

/// The longest a membership answer waits for this node to have the change it made (so a
/// MemberList sent here next lists it, as `etcdctl member add` does).
const MEMBERSHIP_SEEN_WAIT: Duration = Duration::from_secs(2);

impl EtcdCluster {
    fn admin(&self) -> AdminService {
        AdminService::new(self.node.ctx.clone())
    }

    /// The header of a membership answer, once this node has the membership at `index`
    /// (waiting at most [`MEMBERSHIP_SEEN_WAIT`] or the caller's deadline).
    async fn header_after(&self, index: u64, md: &MetadataMap) -> proto::etcd::etcdserverpb::ResponseHeader {
        let wait = deadline(md, MEMBERSHIP_SEEN_WAIT).min(MEMBERSHIP_SEEN_WAIT);
        let seen = |m: &openraft::RaftMetrics<types::TypeConfig>| {
            types::index_of(m.membership_config.log_id().as_ref()) >= index
        };
        let _ = self.node.ctx.raft.wait(Some(wait)).metrics(seen, "the membership change").await;
        self.node.header(self.node.ctx.sm.applied_index())
    }
}

/// The `etcdserverpb.Maintenance` service of one node.
#[derive(Debug, Clone)]
pub struct EtcdMaintenance {
    node: Node,
}

impl EtcdMaintenance {
    pub(crate) fn new(node: Node) -> Self {
        Self { node }
    }

    /// The tonic server for this service, with the decode limit applied.
    #[must_use]
    pub fn into_server(self) -> MaintenanceServer<Self> {
        MaintenanceServer::new(self).max_decoding_message_size(MAX_DECODE_BYTES)
    }
}

#[tonic::async_trait]
impl Maintenance for EtcdMaintenance {
    /// This node's status: the leader it knows, its last log index (`raftIndex`), term and
    /// applied index, the size of its state machine's file (`sm/state.redb`), and the active
    /// alarms as `errors`.
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let ctx = &self.node.ctx;
        let m = ctx.raft.metrics().borrow_watched().clone();
        let applied = ctx.sm.applied_index();
        let db_size = signed(ctx.sm.db_file_bytes().map_err(ServiceError::from)?);
        let is_learner = !m.membership_config.membership().voter_ids().any(|id| id == ctx.id)
            && m.membership_config.membership().get_node(&ctx.id).is_some();
        let errors = ctx
            .sm
            .alarms()
            .iter()
            .map(|a| format!("memberID:{} alarm:{} ({})", member_id(a.member.as_str()), a.kind, a.detail))
            .collect();
        Ok(Response::new(StatusResponse {
            header: Some(self.node.header(applied)),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: m.current_leader.as_ref().map_or(0, |l| member_id(l.as_str())),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: applied,
            errors,
            db_size_in_use: db_size,
            is_learner,
        }))
    }

    /// The alarms this node has applied (GET, of one type or all); ACTIVATE raises NOSPACE
    /// for a member, DEACTIVATE clears the matching alarms (raftkv's disarm), both through
    /// the Admin service's Alarm (forwarded to the leader, applied through the log). The
    /// answer lists the alarms listed, raised or cleared, as etcd's does.
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let (md, _, req) = request.into_parts();
        let action = AlarmAction::try_from(req.action).map_err(|_| {
            EtcdError::Unsupported(format!(
                "alarm action {} is not GET (0), ACTIVATE (1) or DEACTIVATE (2)",
                req.action
            ))
        })?;
        let kind = AlarmType::try_from(req.alarm).map_err(|_| {
            EtcdError::Unsupported(format!("alarm type {} is not NONE (0), NOSPACE (1) or CORRUPT (2)", req.alarm))
        })?;
        // raftkv's only alarm is NOSPACE: a CORRUPT alarm is never active.
        let wanted = |a: &types::Alarm| {
            kind != AlarmType::Corrupt && (req.member_id == 0 || member_id(a.member.as_str()) == req.member_id)
        };
        let active: Vec<AlarmMember> = self
            .node
            .ctx
            .sm
            .alarms()
            .iter()
            .filter(|a| wanted(a))
            .map(|a| AlarmMember { member_id: member_id(a.member.as_str()), alarm: AlarmType::Nospace as i32 })
            .collect();
        let member = match req.member_id {
            0 => None,
            id => Some(node_named(&self.node, id).ok_or(EtcdError::MemberNotFound)),
        };
        let alarms = match action {
            AlarmAction::Get => active,
            AlarmAction::Activate => {
                let member = member.ok_or(EtcdError::MemberNotFound)??;
                if kind != AlarmType::Nospace {
                    return Err(EtcdError::Unsupported(format!(
                        "raftkv raises only NOSPACE alarms, not {}",
                        kind.as_str_name()
                    ))
                    .into());
                }
                let raise = admin::AlarmRequest {
                    action: admin::alarm_request::AlarmAction::Activate as i32,
                    member_id: member.to_string(),
                    alarm: AdminAlarmType::Nospace as i32,
                    detail: "raised through etcd's Maintenance.Alarm".into(),
                };
                self.admin().alarm(admin_request(&md, raise)).await?;
                vec![AlarmMember { member_id: req.member_id, alarm: AlarmType::Nospace as i32 }]
            }
            AlarmAction::Deactivate => {
                let member = member.transpose();
                if kind == AlarmType::Corrupt || member.is_err() {
                    Vec::new()
                } else {
                    let clear = admin::AlarmRequest {
                        action: admin::alarm_request::AlarmAction::Deactivate as i32,
                        member_id: member.ok().flatten().map(|m| m.to_string()).unwrap_or_default(),
                        alarm: if kind == AlarmType::Nospace { AdminAlarmType::Nospace } else { AdminAlarmType::None }
                            as i32,
                        detail: String::new(),
                    };
                    self.admin().alarm(admin_request(&md, clear)).await?;
                    active
                }
            }
        };
        let header = Some(self.node.header(self.node.ctx.sm.applied_index()));
        Ok(Response::new(AlarmResponse { header, alarms }))
    }

    /// Answered and does nothing: redb reuses the pages freed by deletes itself, and its
    /// compaction needs the database to itself, which a serving node never has
    /// (docs/etcd-api.md).
    async fn defragment(&self, _: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        let header = Some(self.node.header(self.node.ctx.sm.applied_index()));
        Ok(Response::new(DefragmentResponse { header }))
    }

    /// The state hash of HashKV (raftkv has one store: the key-value state is all of it).
    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let (md, _, _) = request.into_parts();
        let h = self.admin().hash_kv(admin_request(&md, admin::HashKvRequest { min_index: 0 })).await?.into_inner();
        Ok(Response::new(HashResponse { header: Some(self.node.header(h.index)), hash: h.hash }))
    }

    /// The Admin service's HashKV: CRC32 of every key with its value, revisions and version,
    /// once this node has applied `revision` (0: at once); the header's revision is the index
    /// the hash reflects, so replicas compare at equal header revisions.
    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let (md, _, req) = request.into_parts();
        let min_index = u64::try_from(req.revision).unwrap_or(0);
        let h = self.admin().hash_kv(admin_request(&md, admin::HashKvRequest { min_index })).await?.into_inner();
        Ok(Response::new(HashKvResponse { header: Some(self.node.header(h.index)), hash: h.hash, compact_revision: 0 }))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

    /// The Admin service's Backup, as etcd's stream: the same snapshot file, holding every
    /// write committed before the call, in `blob`s with the bytes still to come, then etcd's
    /// trailer (`etcd_trailer`); the first message's header revision is the snapshot's
    /// index.
    async fn snapshot(&self, request: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        let (md, _, _) = request.into_parts();
        let backup = self.admin().backup(admin_request(&md, admin::BackupRequest {})).await?.into_inner();
        let node = self.node.clone();
        let (mut size, mut sent, mut header) = (0u64, 0u64, None);
        let mut sha = Sha256::new();
        let stream = backup.filter_map(move |chunk| match chunk {
            Err(s) => Some(Err(s)),
            Ok(admin::BackupChunk { chunk: Some(Chunk::Header(h)) }) => {
                size = h.size;
                header = Some(node.header(h.index));
                None
            }
            Ok(admin::BackupChunk { chunk: Some(Chunk::Data(blob)) }) => {
                sent += blob.len() as u64;
                sha.update(&blob);
                Some(Ok(SnapshotResponse {
                    header: header.take(),
                    remaining_bytes: etcd_total(size).saturating_sub(sent),
                    blob,
                }))
            }
            Ok(admin::BackupChunk { chunk: Some(Chunk::Trailer(_)) }) => Some(Ok(SnapshotResponse {
                header: header.take(),
                remaining_bytes: 0,
                blob: etcd_trailer(sent, std::mem::take(&mut sha)).into(),
            })),
            Ok(admin::BackupChunk { chunk: None }) => None,
        });
        Ok(Response::new(Box::pin(stream)))
    }

    /// Hands leadership to the target (`service::cluster::transfer_leadership`). Only the
    /// leader takes it (etcd's "not leader" elsewhere); a target that is not a voter of the
    /// membership is etcd's "bad leader transferee".
    async fn move_leader(&self, request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        let ctx = &self.node.ctx;
        let m = ctx.raft.metrics().borrow_watched().clone();
        if m.state != ServerState::Leader {
            return Err(EtcdError::NotLeader.into());
        }
        let target =
            node_of(node_ids(&m).into_iter(), request.get_ref().target_id).ok_or(EtcdError::BadLeaderTransferee)?;
        if !m.membership_config.membership().voter_ids().any(|v| v == target) {
            return Err(EtcdError::BadLeaderTransferee.into());
        }
        let until = Instant::now() + deadline(request.metadata(), DEFAULT_REQUEST_TIMEOUT).mul_f32(0.8);
        match cluster::transfer_leadership(ctx, Some(&target), until).await.map_err(EtcdError::from)? {
            Routed::Done(_) => {
                Ok(Response::new(MoveLeaderResponse { header: Some(self.node.header(ctx.sm.applied_index())) }))
            }
            Routed::Leader(_) => Err(EtcdError::NotLeader.into()),
        }
    }
}

/// The bytes etcd's snapshot stream carries after a raftkv backup of `size` bytes: the
/// backup, then [`etcd_trailer`].
fn etcd_total(size: u64) -> u64 {
    (size + 8).div_ceil(512) * 512 + 32
}

/// What follows the backup file (`size` bytes, hashed into `sha`) in etcd's snapshot
/// stream: zero bytes up to 8 before a multiple of 512, the file's size (u64 LE), and the
/// SHA-256 of every byte before it. `etcdctl snapshot save` requires etcd's form (a 512-byte
/// multiple, then a SHA-256); the size says where raftkv's file ends (docs/etcd-api.md).
fn etcd_trailer(size: u64, mut sha: Sha256) -> Vec<u8> {
    let padded = etcd_total(size) - 32;
    let mut tail = vec![0u8; usize::try_from(padded - size - 8).unwrap_or(0)];
    tail.extend_from_slice(&size.to_le_bytes());
    sha.update(&tail);
    tail.extend_from_slice(&sha.finalize());
    tail
}

impl EtcdMaintenance {
    fn admin(&self) -> AdminService {
        AdminService::new(self.node.ctx.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_etcd_trailer_makes_a_512_multiple_plus_a_sha256_and_names_the_size() {
        for size in [0u64, 1, 303, 504, 505, 512, 1 << 20] {
            let file: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let mut sha = Sha256::new();
            sha.update(&file);
            let tail = etcd_trailer(size, sha);
            let total = size + tail.len() as u64;
            assert_eq!(total, etcd_total(size));
            assert_eq!(total % 512, 32, "etcdctl's check, size {size}");
            let n = tail.len() - 40;
            assert_eq!(u64::from_le_bytes(tail[n..n + 8].try_into().unwrap_or_default()), size);
            let whole = [file.as_slice(), &tail[..tail.len() - 32]].concat();
            assert_eq!(Sha256::digest(&whole).as_slice(), &tail[tail.len() - 32..]);
        }
    }
}
