//! The server side of the Raft transport: each handler decodes, calls openraft, encodes.

use std::sync::Arc;

use fsm::{Raft, Snapshot, StateMachine};
use linearizable::{BarrierError, Consistency, ReadIndexRequest, ReadIndexResponse};
use proto::raft::v1::raft_server::{Raft as RaftRpc, RaftServer};
use proto::raft::v1::snapshot_chunk::Chunk;
use proto::raft::v1::{IdentifyRequest, IdentifyResponse, RaftMessage, SnapshotChunk};
use serde::Serialize;
use serde::de::DeserializeOwned;
use service::LeaderContact;
use tonic::{Request, Response, Status, Streaming};
use types::{NodeId, NodeInfo, SnapshotMeta, Vote, codec};

use super::MAX_RAFT_MESSAGE_BYTES;

/// Serves `raftkv.raft.v1.Raft` for one node.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft,
    sm: StateMachine,
    leader_contact: Arc<LeaderContact>,
    me: IdentifyResponse,
}

impl RaftService {
    /// The service over this node's Raft and state machine (snapshots are received into
    /// the state machine's directory); `id` and `me` are what `Identify` answers.
    #[must_use]
    pub fn new(raft: Raft, sm: StateMachine, leader_contact: Arc<LeaderContact>, id: &NodeId, me: &NodeInfo) -> Self {
        let me = IdentifyResponse {
            node_id: id.to_string(),
            raft_addr: me.raft_addr.clone(),
            grpc_addr: me.grpc_addr.clone(),
        };
        Self { raft, sm, leader_contact, me }
    }

    /// The tonic server, with the Raft message size limit.
    #[must_use]
    pub fn into_server(self) -> RaftServer<Self> {
        RaftServer::new(self)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    }
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, Status> {
    codec::decode(bytes).map_err(|e| Status::invalid_argument(format!("undecodable {what}: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    codec::encode(value)
        .map(|payload| Response::new(RaftMessage { payload: payload.into() }))
        .map_err(|e| Status::internal(format!("encoding the answer: {e}")))
}

/// openraft refuses work only when it is stopping: tell the peer to back off.
fn stopped(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft is not running: {e}"))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn identify(&self, _request: Request<IdentifyRequest>) -> Result<Response<IdentifyResponse>, Status> {
        Ok(Response::new(self.me.clone()))
    }

    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode("append-entries request", &request.into_inner().payload)?;
        self.leader_contact.touch();
        encode(&self.raft.append_entries(rpc).await.map_err(stopped)?)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode("vote request", &request.into_inner().payload)?;
        encode(&self.raft.vote(rpc).await.map_err(stopped)?)
    }

    async fn pre_vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode("pre-vote request", &request.into_inner().payload)?;
        encode(&self.raft.pre_vote(rpc).await.map_err(stopped)?)
    }

    async fn transfer_leader(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode("transfer-leader request", &request.into_inner().payload)?;
        encode(&self.raft.handle_transfer_leader(rpc).await.map_err(stopped)?)
    }

    async fn read_index(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let req: ReadIndexRequest = decode("read-index request", &request.into_inner().payload)?;
        let level = if req.lease { Consistency::Lease } else { Consistency::Linearizable };
        match linearizable::leader_read_index(&self.raft, level).await {
            Ok(index) => encode(&ReadIndexResponse { index }),
            Err(BarrierError::NotLeader { .. }) => Err(Status::failed_precondition("not the leader")),
            Err(BarrierError::NoQuorum(e)) => Err(Status::unavailable(format!("no quorum: {e}"))),
            Err(e) => Err(stopped(e)),
        }
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        let mut stream = request.into_inner();
        let Some(Chunk::Header(header)) = stream.message().await?.and_then(|c| c.chunk) else {
            return Err(Status::invalid_argument("a snapshot stream must start with its header"));
        };
        let vote: Vote = decode("snapshot vote", &header.vote)?;
        let meta: SnapshotMeta = decode("snapshot metadata", &header.meta)?;
        let mut incoming = self.sm.incoming_snapshot().map_err(|e| Status::internal(e.to_string()))?;
        let mut crc = crc32fast::Hasher::new();
        loop {
            match stream.message().await?.and_then(|c| c.chunk) {
                Some(Chunk::Data(data)) => {
                    if incoming.written() + data.len() as u64 > header.size {
                        return Err(Status::invalid_argument(format!(
                            "snapshot stream carries more than the {} bytes its header announced",
                            header.size
                        )));
                    }
                    crc.update(&data);
                    incoming.write(&data).map_err(|e| Status::internal(e.to_string()))?;
                }
                Some(Chunk::Trailer(trailer)) => {
                    if incoming.written() != header.size {
                        return Err(Status::invalid_argument(format!(
                            "snapshot stream carried {} bytes; its header announced {}",
                            incoming.written(),
                            header.size
                        )));
                    }
                    let crc = crc.finalize();
                    if crc != trailer.crc32 {
                        return Err(Status::data_loss(format!(
                            "snapshot stream checksum mismatch: sent {:#010x}, received {crc:#010x}",
                            trailer.crc32
                        )));
                    }
                    break;
                }
                Some(Chunk::Header(_)) => return Err(Status::invalid_argument("a second snapshot header")),
                None => return Err(Status::invalid_argument("the snapshot stream ended before its trailer")),
            }
        }
        let file = incoming.finish().map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(size = header.size, last_log_id = ?meta.last_log_id, "snapshot received");
        let resp = self.raft.install_full_snapshot(vote, Snapshot { meta, snapshot: file }).await.map_err(stopped)?;
        encode(&resp)
    }
}
