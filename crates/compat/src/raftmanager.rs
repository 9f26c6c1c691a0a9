//! `RaftManager` (xkeyideal/raft-manager, `proto/compat/raftmanager.proto`): the messages of
//! raft-manager over [`HashicorpAdmin`], which documents what each RPC does. It differs from
//! `RaftAdmin` only in four answers: the configuration carries its index and each server's
//! leader flag, suffrage and state are strings, LastContact adds Go's time string, and
//! Leader adds the leader's id.

use proto::compat::raftmanager as pb;
use proto::compat::raftmanager::raft_manager_server::{RaftManager, RaftManagerServer};
use tonic::{Request, Response, Status};

use service::MAX_DECODE_BYTES;

use crate::hashicorp::{HashicorpAdmin, Suffrage, go_time_string, hashicorp_service, state_name};

/// The `RaftManager` service of one node.
#[derive(Debug, Clone)]
pub struct RaftManagerService {
    core: HashicorpAdmin,
}

impl RaftManagerService {
    /// The service over `core`.
    #[must_use]
    pub fn new(core: HashicorpAdmin) -> Self {
        Self { core }
    }

    /// The tonic server for this service, with the decode limit applied.
    #[must_use]
    pub fn into_server(self) -> RaftManagerServer<Self> {
        RaftManagerServer::new(self).max_decoding_message_size(MAX_DECODE_BYTES)
    }
}

hashicorp_service!(RaftManagerService, RaftManager, pb, {
    async fn get_configuration(
        &self,
        _r: Request<pb::GetConfigurationRequest>,
    ) -> Result<Response<pb::GetConfigurationResponse>, Status> {
        let config = self.core.configuration();
        let servers = config
            .servers
            .into_iter()
            .map(|s| pb::get_configuration_response::Server {
                suffrage: match s.suffrage {
                    Suffrage::Voter => "Voter",
                    Suffrage::Nonvoter => "Nonvoter",
                }
                .into(),
                id: s.id,
                address: s.address,
                leader: s.leader,
            })
            .collect();
        Ok(Response::new(pb::GetConfigurationResponse { servers, index: config.index }))
    }

    async fn last_contact(
        &self,
        _r: Request<pb::LastContactRequest>,
    ) -> Result<Response<pb::LastContactResponse>, Status> {
        let unix_nano = self.core.last_contact_unix_nanos();
        Ok(Response::new(pb::LastContactResponse { unix_nano, time_format: go_time_string(unix_nano) }))
    }

    async fn leader(&self, _r: Request<pb::LeaderRequest>) -> Result<Response<pb::LeaderResponse>, Status> {
        let (address, server_id) = self.core.leader();
        Ok(Response::new(pb::LeaderResponse { address, server_id }))
    }

    async fn state(&self, _r: Request<pb::StateRequest>) -> Result<Response<pb::StateResponse>, Status> {
        Ok(Response::new(pb::StateResponse { state: state_name(self.core.state()).into() }))
    }
});
