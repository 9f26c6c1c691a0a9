//! The server side of the Raft transport: each handler decodes, calls openraft, encodes.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use fsm::{Raft, Snapshot, StateMachine};
use futures::{Stream, StreamExt};
use linearizable::{BarrierError, Consistency, ReadIndexRequest, ReadIndexResponse};
use openraft::async_runtime::WatchReceiver;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use proto::raft::v1::raft_server::{Raft as RaftRpc, RaftServer};
use proto::raft::v1::snapshot_chunk::Chunk;
use proto::raft::v1::{IdentifyRequest, IdentifyResponse, RaftMessage, SnapshotChunk};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status, Streaming};
use types::{Membership, NodeId, NodeInfo, SnapshotMeta, TypeConfig, Vote, codec};

use crate::transfer_log::{Direction, TransferLog};
use crate::{LeaderContact, MAX_RAFT_MESSAGE_BYTES};

/// Serves `raftkv.raft.v1.Raft` for one node.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft,
    sm: StateMachine,
    leader_contact: Arc<LeaderContact>,
    me: IdentifyResponse,
    /// Becomes true when the node stops: open `StreamAppend` streams end then, or a graceful
    /// drain of the Raft port would wait for the leader's replication stream forever.
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
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
        Self { raft, sm, leader_contact, me, stopping: None }
    }

    /// Ends every open `StreamAppend` stream (UNAVAILABLE, "stopping") once `stopping` is
    /// true, so that a graceful stop of the server does not wait for them.
    #[must_use]
    pub fn with_stop(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = Some(stopping);
        self
    }

    /// The tonic server, with the Raft message size limit.
    #[must_use]
    pub fn into_server(self) -> RaftServer<Self> {
        RaftServer::new(self)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    }
}

impl RaftService {
    /// [`check_sender`] against this node's current membership; a refusal is logged.
    fn check_sender(&self, what: &str, sender: &NodeId) -> Result<(), Status> {
        let membership = self.raft.metrics().borrow_watched().membership_config.clone();
        check_sender(membership.membership(), what, sender).inspect_err(|status| {
            tracing::warn!(sender = %sender, request = what, reason = status.message(), "refused an election message from a non-member");
        })
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

/// Refuses an election message (vote, pre-vote, leadership hand-over) from `sender` when this
/// node has a membership and `sender` is not in it, voter or learner: a node of another
/// cluster, a removed node still campaigning, or a forged id. Such a request could
/// otherwise raise this node's term and depose a healthy leader (openraft grants a
/// hand-over vote despite the leader lease). A node with no membership yet (waiting to be
/// added) refuses nothing. A learner in this node's view is accepted, since a newer
/// membership this node has not received yet may make it a voter.
///
/// Replication (`AppendEntries`, snapshots) is not checked: a leader elected under a
/// membership this node has not received yet (it lags) must still reach it.
fn check_sender(membership: &Membership, what: &str, sender: &NodeId) -> Result<(), Status> {
    let mut members = membership.nodes().map(|(id, _)| id).peekable();
    if members.peek().is_none() || membership.nodes().any(|(id, _)| id == sender) {
        return Ok(());
    }
    let known: Vec<String> = membership.nodes().map(|(id, _)| id.to_string()).collect();
    Err(Status::failed_precondition(format!(
        "{what} from node {sender:?}, which is not a member of this node's cluster (members: {}); a removed node must be added again before it takes part in elections",
        known.join(", ")
    )))
}

/// The node-id rule of the Raft port ([`rpc::tls::check_claimed_id`]): over TLS, the
/// certificate of the connection a message came on must name the node id the message
/// claims; a refusal is logged, and nothing reaches openraft.
fn check_identity<T>(request: &Request<T>, what: &str, claimed: &NodeId) -> Result<(), Status> {
    rpc::tls::check_claimed_id(request, claimed.as_str()).inspect_err(|status| {
        tracing::warn!(claimed = %claimed, request = what, reason = status.message(), "refused a Raft message whose sender's certificate names another node");
    })
}

/// openraft refuses work only when it is stopping: tell the peer to back off.
fn stopped(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft is not running: {e}"))
}

/// Completes once `stopping` is true; never without one (or once its sender is gone).
async fn until_stopping(stopping: Option<tokio::sync::watch::Receiver<bool>>) {
    if let Some(mut stopping) = stopping
        && stopping.wait_for(|s| *s).await.is_ok()
    {
        return;
    }
    std::future::pending::<()>().await;
}

/// The answers of one `StreamAppend` stream.
type AnswerStream = Pin<Box<dyn Stream<Item = Result<RaftMessage, Status>> + Send + 'static>>;

/// The requests of one `StreamAppend` stream, decoded and checked as the unary
/// `AppendEntries` checks them. A message refused ends the requests; the refusal is kept in
/// `refused`, to end the answers with it.
fn checked_requests(
    inbound: Streaming<RaftMessage>,
    identity: tonic::Extensions,
    contact: Arc<LeaderContact>,
    refused: Arc<Mutex<Option<Status>>>,
) -> impl Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + 'static {
    // The last sender whose identity was checked: the certificate of a connection does not
    // change, so a sender is checked once per stream.
    let state = (inbound, identity, contact, refused, None::<NodeId>);
    futures::stream::unfold(state, |(mut inbound, identity, contact, refused, mut checked)| async move {
        // A transport error means the leader went away: the requests end, with no answer due.
        let message = inbound.message().await.ok()??;
        metrics::histogram!(crate::APPEND_MESSAGE_BYTES_METRIC).record(message.payload.len() as f64);
        let refuse = |status: Status| {
            *refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(status);
        };
        let rpc: AppendEntriesRequest<TypeConfig> = match decode("append-entries request", &message.payload) {
            Ok(rpc) => rpc,
            Err(status) => {
                refuse(status);
                return None;
            }
        };
        let sender = &rpc.vote.leader_id().node_id;
        if checked.as_ref() != Some(sender) {
            let request = Request::from_parts(Default::default(), identity.clone(), ());
            if let Err(status) = check_identity(&request, "append-entries request", sender) {
                refuse(status);
                return None;
            }
            checked = Some(sender.clone());
        }
        contact.touch();
        Some((rpc, (inbound, identity, contact, refused, checked)))
    })
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    type StreamAppendStream = AnswerStream;

    async fn stream_append(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let identity = request.extensions().clone();
        let refused = Arc::new(Mutex::new(None));
        let requests = checked_requests(request.into_inner(), identity, self.leader_contact.clone(), refused.clone());
        let answers = self.raft.stream_append(requests).map(|answer| match answer {
            Ok(result) => codec::encode(&result)
                .map(|payload| RaftMessage { payload: payload.into() })
                .map_err(|e| Status::internal(format!("encoding the answer: {e}"))),
            Err(fatal) => Err(stopped(fatal)),
        });
        let stopping = self.stopping.clone();
        let answers = answers.take_until(until_stopping(stopping.clone()));
        // After the last answer, a refused request or a stop ends the stream with its status.
        let last = futures::stream::once(async move {
            let refusal = refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            let stopped = stopping.is_some_and(|s| *s.borrow());
            refusal.or_else(|| stopped.then(|| Status::unavailable("the node is stopping"))).map(Err)
        })
        .filter_map(std::future::ready);
        Ok(Response::new(Box::pin(answers.chain(last))))
    }

    async fn identify(&self, _request: Request<IdentifyRequest>) -> Result<Response<IdentifyResponse>, Status> {
        Ok(Response::new(self.me.clone()))
    }

    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        metrics::histogram!(crate::APPEND_MESSAGE_BYTES_METRIC).record(request.get_ref().payload.len() as f64);
        let rpc: AppendEntriesRequest<TypeConfig> = decode("append-entries request", &request.get_ref().payload)?;
        check_identity(&request, "append-entries request", &rpc.vote.leader_id().node_id)?;
        self.leader_contact.touch();
        encode(&self.raft.append_entries(rpc).await.map_err(stopped)?)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode("vote request", &request.get_ref().payload)?;
        check_identity(&request, "vote request", &rpc.vote.leader_id().node_id)?;
        self.check_sender("vote request", &rpc.vote.leader_id().node_id)?;
        encode(&self.raft.vote(rpc).await.map_err(stopped)?)
    }

    async fn pre_vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode("pre-vote request", &request.get_ref().payload)?;
        check_identity(&request, "pre-vote request", &rpc.vote.leader_id().node_id)?;
        self.check_sender("pre-vote request", &rpc.vote.leader_id().node_id)?;
        encode(&self.raft.pre_vote(rpc).await.map_err(stopped)?)
    }

    async fn transfer_leader(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: TransferLeaderRequest<TypeConfig> = decode("transfer-leader request", &request.get_ref().payload)?;
        check_identity(&request, "transfer-leader request", &rpc.from_leader().leader_id().node_id)?;
        self.check_sender("transfer-leader request", &rpc.from_leader().leader_id().node_id)?;
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
        let tls_identity = request.extensions().clone();
        let mut stream = request.into_inner();
        let Some(Chunk::Header(header)) = stream.message().await?.and_then(|c| c.chunk) else {
            return Err(Status::invalid_argument("a snapshot stream must start with its header"));
        };
        let vote: Vote = decode("snapshot vote", &header.vote)?;
        check_identity(
            &Request::from_parts(Default::default(), tls_identity, ()),
            "snapshot",
            &vote.leader_id().node_id,
        )?;
        let meta: SnapshotMeta = decode("snapshot metadata", &header.meta)?;
        let mut incoming = self.sm.incoming_snapshot().map_err(|e| Status::internal(e.to_string()))?;
        let mut crc = crc32fast::Hasher::new();
        let mut log = TransferLog::new(Direction::Receiving, vote.leader_id().node_id.to_string(), header.size);
        loop {
            match stream.message().await?.and_then(|c| c.chunk) {
                Some(Chunk::Data(data)) => {
                    log.at(incoming.written());
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn membership(voters: &[&str], learners: &[&str]) -> Membership {
        let node = NodeInfo { raft_addr: "127.0.0.1:1".into(), grpc_addr: "127.0.0.1:2".into() };
        let nodes: BTreeMap<NodeId, NodeInfo> = voters.iter().chain(learners).map(|n| (id(n), node.clone())).collect();
        let voters: BTreeSet<NodeId> = voters.iter().map(|n| id(n)).collect();
        Membership::new(vec![voters], nodes).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn election_messages_from_non_members_are_refused_naming_the_sender() {
        let m = membership(&["a", "b"], &["c"]);
        assert!(check_sender(&m, "vote request", &id("a")).is_ok());
        assert!(check_sender(&m, "vote request", &id("c")).is_ok(), "a learner may be a voter in a newer membership");
        let refused = check_sender(&m, "vote request", &id("intruder")).err().unwrap_or_else(|| Status::ok(""));
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(
            refused.message().contains("\"intruder\"") && refused.message().contains("not a member"),
            "{}",
            refused.message()
        );
        assert!(refused.message().contains("a, b, c"), "{}", refused.message());
    }

    #[test]
    fn a_node_without_membership_refuses_nothing() {
        let empty = Membership::new_with_defaults(vec![], Vec::<NodeId>::new());
        assert!(check_sender(&empty, "vote request", &id("anyone")).is_ok());
    }
}
