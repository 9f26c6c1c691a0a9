//! The calls a node's services make to another node's Raft port: a follower asking the
//! leader for a read index ([`LeaderReadIndex`], linearizable's [`AskLeader`] over this
//! port), and `Identify`. The caller brings the channel or the pool (it decides how to
//! connect) and maps the failures to its own errors.

use std::time::Duration;

use linearizable::{AskError, AskLeader, Consistency, ReadIndexRequest, ReadIndexResponse};
use proto::raft::v1::raft_client::RaftClient;
use proto::raft::v1::{IdentifyRequest, RaftMessage};
use resolver::Resolver;
use rpc::channel::Pool;
use tonic::transport::Channel;
use types::{NodeId, NodeInfo, codec};

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

/// A follower's way to ask the leader for a read index over the Raft port: the leader's
/// Raft address from the resolver chain (the addresses the caller knows as the fallback),
/// a channel from the caller's pool, dropped from it when the leader is unavailable.
#[derive(Debug, Clone, Copy)]
pub struct LeaderReadIndex<'a> {
    /// Node id → addresses.
    pub resolver: &'a dyn Resolver,
    /// The channels to other nodes.
    pub pool: &'a Pool,
}

impl AskLeader for LeaderReadIndex<'_> {
    async fn read_index(
        &self,
        leader: &NodeId,
        known: Option<NodeInfo>,
        level: Consistency,
        timeout: Duration,
    ) -> Result<u64, AskError> {
        let Some(addr) = self.resolver.resolve_or(leader, known).map(|n| n.raft_addr) else {
            return Err(AskError::NoAddress(leader.clone()));
        };
        let unreachable = |reason: String| AskError::Unreachable { leader: leader.clone(), addr: addr.clone(), reason };
        let channel = self.pool.connect(&addr, Some(leader.as_str())).await.map_err(|e| unreachable(e.to_string()))?;
        match read_index(channel, level == Consistency::Lease, timeout).await {
            Ok(index) => Ok(index),
            Err(CallError::NotLeader) => Err(AskError::NotLeader),
            Err(CallError::Status(s)) => {
                if s.code() == tonic::Code::Unavailable {
                    self.pool.forget(&addr);
                }
                Err(unreachable(s.message().to_string()))
            }
            Err(e) => Err(AskError::Invalid(Box::new(e))),
        }
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

#[cfg(test)]
mod tests {
    use resolver::AddressMap;

    use super::*;

    #[tokio::test]
    async fn a_leader_without_an_address_is_named() {
        let (resolver, pool) = (AddressMap::membership(), Pool::default());
        let ask = LeaderReadIndex { resolver: &resolver, pool: &pool };
        let e = ask.read_index(&NodeId::from(2), None, Consistency::Linearizable, Duration::from_secs(1)).await;
        assert!(matches!(&e, Err(AskError::NoAddress(id)) if *id == NodeId::from(2)), "{e:?}");
    }

    #[tokio::test]
    async fn an_unreachable_leader_is_named_with_its_raft_address() {
        let known = NodeInfo { raft_addr: "127.0.0.1:1".into(), grpc_addr: "127.0.0.1:2".into() };
        let (resolver, pool) = (AddressMap::membership(), Pool::default());
        let ask = LeaderReadIndex { resolver: &resolver, pool: &pool };
        let e = ask.read_index(&NodeId::from(2), Some(known), Consistency::Lease, Duration::from_secs(1)).await;
        let e = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("cannot get a read index from the leader 2 at 127.0.0.1:1: "), "{e}");
    }
}
