//! `RaftAdmin` (Jille/raftadmin, `proto/compat/raftadmin.proto`): the messages of raftadmin
//! over [`HashicorpAdmin`], which documents what each RPC does.

use openraft::ServerState;
use proto::compat::raftadmin as pb;
use proto::compat::raftadmin::get_configuration_response::server::Suffrage as PbSuffrage;
use proto::compat::raftadmin::raft_admin_server::{RaftAdmin, RaftAdminServer};
use proto::compat::raftadmin::state_response::State as PbState;
use tonic::{Request, Response, Status};

use service::MAX_DECODE_BYTES;

use crate::hashicorp::{HashicorpAdmin, Suffrage, hashicorp_service};

/// The `RaftAdmin` service of one node.
#[derive(Debug, Clone)]
pub struct RaftAdminService {
    core: HashicorpAdmin,
}

impl RaftAdminService {
    /// The service over `core`.
    #[must_use]
    pub fn new(core: HashicorpAdmin) -> Self {
        Self { core }
    }

    /// The tonic server for this service, with the decode limit applied.
    #[must_use]
    pub fn into_server(self) -> RaftAdminServer<Self> {
        RaftAdminServer::new(self).max_decoding_message_size(MAX_DECODE_BYTES)
    }
}

/// raftadmin's state enum: a raftkv learner is a `FOLLOWER` (hashicorp's non-voter is).
fn state(s: ServerState) -> PbState {
    match s {
        ServerState::Leader => PbState::Leader,
        ServerState::Candidate => PbState::Candidate,
        ServerState::Follower | ServerState::Learner => PbState::Follower,
        ServerState::Shutdown => PbState::Shutdown,
    }
}

hashicorp_service!(RaftAdminService, RaftAdmin, pb, {
    async fn get_configuration(
        &self,
        _r: Request<pb::GetConfigurationRequest>,
    ) -> Result<Response<pb::GetConfigurationResponse>, Status> {
        let servers = self
            .core
            .configuration()
            .servers
            .into_iter()
            .map(|s| pb::get_configuration_response::Server {
                suffrage: match s.suffrage {
                    Suffrage::Voter => PbSuffrage::Voter,
                    Suffrage::Nonvoter => PbSuffrage::Nonvoter,
                } as i32,
                id: s.id,
                address: s.address,
            })
            .collect();
        Ok(Response::new(pb::GetConfigurationResponse { servers }))
    }

    async fn last_contact(
        &self,
        _r: Request<pb::LastContactRequest>,
    ) -> Result<Response<pb::LastContactResponse>, Status> {
        Ok(Response::new(pb::LastContactResponse { unix_nano: self.core.last_contact_unix_nanos() }))
    }

    async fn leader(&self, _r: Request<pb::LeaderRequest>) -> Result<Response<pb::LeaderResponse>, Status> {
        Ok(Response::new(pb::LeaderResponse { address: self.core.leader().0 }))
    }

    async fn state(&self, _r: Request<pb::StateRequest>) -> Result<Response<pb::StateResponse>, Status> {
        Ok(Response::new(pb::StateResponse { state: state(self.core.state()) as i32 }))
    }
});
