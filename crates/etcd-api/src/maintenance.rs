//! `etcdserverpb.Cluster` (MemberList) and `etcdserverpb.Maintenance` (Status), from the
//! Raft membership and metrics.

use openraft::async_runtime::WatchReceiver;
use proto::etcd::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use proto::etcd::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use proto::etcd::etcdserverpb::{Member, MemberListRequest, MemberListResponse, StatusRequest, StatusResponse};
use service::{MAX_DECODE_BYTES, ServiceError, cluster};
use tonic::{Request, Response, Status};

use crate::{Node, member_id, signed};

/// The etcd version Status reports: the etcd API raftkv's answers follow (etcd 3.4's).
/// Clients read it to pick the API they use; it is not raftkv's own version.
pub const ETCD_VERSION: &str = "3.4.0";

/// An address as a URL: `http://` in front unless it has a scheme.
fn url(addr: &str) -> String {
    if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") }
}

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
        let members = cluster::members(&metrics)
            .into_iter()
            .map(|m| Member {
                id: member_id(m.id.as_str()),
                name: m.id.to_string(),
                peer_ur_ls: vec![url(&m.node.raft_addr)],
                client_ur_ls: vec![url(&m.node.grpc_addr)],
                is_learner: !m.voter,
            })
            .collect();
        let header = self.node.header(self.node.ctx.sm.applied_index());
        Ok(Response::new(MemberListResponse { header: Some(header), members }))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_urls() {
        assert_eq!(url("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(url("https://a:1"), "https://a:1");
    }
}
