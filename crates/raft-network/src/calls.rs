//! The calls a node's services make to another node's Raft port: a follower asking the
//! leader for a read index, and `Identify`. The caller brings the channel (its pool decides
//! how to connect) and maps the failures to its own errors.

use std::time::Duration;

use linearizable::{ReadIndexRequest, ReadIndexResponse};
use proto::raft::v1::raft_client::RaftClient;
use proto::raft::v1::{IdentifyRequest, RaftMessage};
use tonic::transport::Channel;
use types::{NodeInfo, codec};

/// Why a call to another node's Raft port failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The node asked for a read index is not the leader (any more).
    #[error("the node asked is not the leader")]
    NotLeader,
    /// The call failed: the node answered with this status, or could not be reached.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// The request could not be encoded or the answer decoded.
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
}

/// Asks the leader at the other end of `channel` for a read index (`lease`: by its lease
/// instead of a quorum round), within `timeout`.
///
/// # Errors
/// [`CallError::NotLeader`] when the node asked is not the leader; [`CallError::Status`]
/// for any other failed call; [`CallError::Codec`] for a message that does not encode or
/// decode.
pub async fn read_index(channel: Channel, lease: bool, timeout: Duration) -> Result<u64, CallError> {
    let payload = codec::encode(&ReadIndexRequest { lease })?;
    let mut request = tonic::Request::new(RaftMessage { payload: payload.into() });
    request.set_timeout(timeout);
    match RaftClient::new(channel).read_index(request).await {
        Ok(resp) => Ok(codec::decode::<ReadIndexResponse>(&resp.into_inner().payload)?.index),
        Err(s) if s.code() == tonic::Code::FailedPrecondition => Err(CallError::NotLeader),
        Err(s) => Err(CallError::Status(s)),
    }
}

/// Who answers at a Raft address: its node id (as it spells it) and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The node's id, unchecked.
    pub node_id: String,
    /// Its Raft and client addresses.
    pub node: NodeInfo,
}

/// Asks the node at the other end of `channel` who it is (`Identify`), within `timeout`.
///
/// # Errors
/// [`CallError::Status`] when the call fails.
pub async fn identify(channel: Channel, timeout: Duration) -> Result<Identity, CallError> {
    let mut request = tonic::Request::new(IdentifyRequest {});
    request.set_timeout(timeout);
    let me = RaftClient::new(channel).identify(request).await.map_err(CallError::Status)?.into_inner();
    Ok(Identity { node_id: me.node_id, node: NodeInfo { raft_addr: me.raft_addr, grpc_addr: me.grpc_addr } })
}
