//! The client side of the Raft transport: what openraft calls to reach a peer.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::network::RaftNetworkFactory;
use openraft::network::v2::RaftNetworkV2;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use proto::raft::v1::raft_client::RaftClient;
use proto::raft::v1::snapshot_chunk::Chunk;
use proto::raft::v1::{RaftMessage, SnapshotChunk, SnapshotHeader, SnapshotTrailer};
use resolver::Resolver;
use rpc::channel::{ChannelError, ChannelOptions, Keepalive, Pool};
use rpc::tls::ClientTls;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::Streaming;
use tonic::transport::Channel;
use types::{NodeId, NodeInfo, TypeConfig, Vote, codec};

use super::{CONNECT_TIMEOUT, MAX_RAFT_MESSAGE_BYTES, SNAPSHOT_CHUNK_BYTES, SNAPSHOT_TRANSFER_TIMEOUT, append_timeout};
use crate::transfer_log::{Direction, TransferLog};
use fsm::{Snapshot, SnapshotFile};

/// Makes openraft's per-peer clients; peers at the same address share two connections: one
/// for the log (entries, snapshots, leadership transfers) and one for heartbeats and votes
/// (`Lane`).
///
/// A peer's address is looked up through the resolver on every RPC (by node id), and the
/// address openraft passes in (the membership's) is only the fallback: a peer restarted on
/// another port is reached at its new address as soon as the resolver knows it (gossip).
#[derive(Clone)]
pub struct NetworkFactory {
    channels: Pool,
    /// The connections of [`Lane::Control`].
    control: Pool,
    resolver: Arc<dyn Resolver>,
}

/// Which connection to a peer a call takes.
///
/// HTTP/2 sends one connection's frames in order, within one flow-control window, so a
/// heartbeat on the log's connection waits behind the batches of entries queued before it (a
/// batch can reach [`MAX_RAFT_MESSAGE_BYTES`]); openraft 0.10 gives a heartbeat one heartbeat
/// interval and drops it after that, and followers that hear nothing for an election timeout
/// start an election. Under a flood of large writes that is what changed leaders (issue 19:
/// the term held with batches capped at 8 entries and changed with 300). openraft asks for a
/// client of its own for heartbeats (`new_heartbeat_client`, which also carries the leader's
/// lease probes for linearizable reads); it and votes go on a connection of their own. Raft
/// never relied on the order of messages (the network may reorder them), so splitting them
/// over two connections changes nothing that is safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    /// Replication (entries, unary and streamed), snapshots, leadership transfers.
    Log,
    /// Heartbeats and lease probes, votes and pre-votes.
    Control,
}

/// How channels to peers connect: lazily, within [`CONNECT_TIMEOUT`], with keepalive pings
/// every 5 s that must be answered within 5 s.
const CHANNEL_OPTIONS: ChannelOptions = ChannelOptions {
    connect_timeout: Some(CONNECT_TIMEOUT),
    keepalive: Some(Keepalive { interval: Duration::from_secs(5), timeout: Some(Duration::from_secs(5)) }),
};

impl NetworkFactory {
    /// A factory with no connections yet, resolving peers through `resolver`; over TLS
    /// with the node's peer certificate when `tls` is given, each peer's certificate
    /// verified for its node id.
    #[must_use]
    pub fn new(resolver: Arc<dyn Resolver>, tls: Option<Arc<ClientTls>>) -> Self {
        Self {
            channels: Pool::with_tls(CHANNEL_OPTIONS, tls.clone()),
            control: Pool::with_tls(CHANNEL_OPTIONS, tls),
            resolver,
        }
    }

    fn channel(&self, addr: &str, peer: &NodeId, lane: Lane) -> Result<Channel, ChannelError> {
        let pool = match lane {
            Lane::Log => &self.channels,
            Lane::Control => &self.control,
        };
        pool.connect_lazy(addr, Some(peer.as_str()))
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Peer {
        Peer::new(target, node, self.clone(), Lane::Log)
    }

    async fn new_heartbeat_client(&mut self, target: NodeId, node: &NodeInfo) -> Peer {
        Peer::new(target, node, self.clone(), Lane::Control)
    }
}

/// openraft's handle on one peer.
pub struct Peer {
    target: NodeId,
    /// The peer's addresses as openraft knows them (the membership's), the fallback.
    known: NodeInfo,
    factory: NetworkFactory,
    /// The address last used, to log a change once.
    last_addr: Mutex<String>,
    /// The connection its replication calls take (votes always take [`Lane::Control`]).
    lane: Lane,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

fn unreachable_or_network(status: &tonic::Status) -> RPCError<TypeConfig> {
    let e = TransportError(format!("{}: {}", status.code(), status.message()));
    match status.code() {
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&e)),
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

impl Peer {
    fn new(target: NodeId, known: &NodeInfo, factory: NetworkFactory, lane: Lane) -> Self {
        Self { target, known: known.clone(), factory, last_addr: Mutex::new(String::new()), lane }
    }

    /// A client for the peer's current Raft address (resolved now, by node id), on `lane`'s
    /// connection.
    fn client(&self, lane: Lane) -> Result<RaftClient<Channel>, RPCError<TypeConfig>> {
        let addr = self
            .factory
            .resolver
            .resolve_or(&self.target, Some(self.known.clone()))
            .map_or_else(|| self.known.raft_addr.clone(), |n| n.raft_addr);
        {
            let mut last = self.last_addr.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if *last != addr {
                if !last.is_empty() {
                    tracing::info!(peer = %self.target, old = %last, new = %addr, "peer's Raft address changed");
                }
                last.clone_from(&addr);
            }
        }
        let channel = self.factory.channel(&addr, &self.target, lane).map_err(|e| {
            RPCError::Unreachable(Unreachable::new(&TransportError(format!("peer {} at {addr}: {e}", self.target))))
        })?;
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES))
    }

    /// Sends one unary Raft RPC: encode, call with the deadline `ttl` gives for the encoded
    /// size, decode.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        lane: Lane,
        req: &Req,
        ttl: impl FnOnce(usize) -> Duration,
        call: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, tonic::Request<RaftMessage>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftMessage>, tonic::Status>>,
    {
        let payload = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let deadline = ttl(payload.len());
        let mut request = tonic::Request::new(RaftMessage { payload: payload.into() });
        request.set_timeout(deadline);
        let resp = call(self.client(lane)?, request).await.map_err(|s| unreachable_or_network(&s))?;
        codec::decode(&resp.into_inner().payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // Not openraft's heartbeat-long TTL: see `APPEND_MIN_TIMEOUT`.
        let asked = option.hard_ttl();
        self.unary(
            self.lane,
            &rpc,
            |bytes| append_timeout(asked, bytes),
            |mut c, r| async move { c.append_entries(r).await },
        )
        .await
    }

    /// Replication, pipelined: every request openraft yields goes out at once on one
    /// `StreamAppend` stream, without waiting for the answers to those before it, and the
    /// answers come back in order. openraft's default sends one request and waits for its
    /// answer before it sends the next. Each request must be answered within
    /// [`append_timeout`] of being sent, as a unary call would be.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        Box::pin(async move {
            let asked = option.hard_ttl();
            let pending = Arc::new(Pending::default());
            let outgoing = outgoing(input, pending.clone(), asked);
            let mut client = self.client(self.lane)?;
            // Only the answer's headers are awaited here: the follower sends them at once.
            let call = tokio::time::timeout(append_timeout(asked, 0), client.stream_append(outgoing)).await;
            let answers = match call {
                Ok(Ok(resp)) => resp.into_inner(),
                Ok(Err(status)) => return Err(unreachable_or_network(&status)),
                Err(_) => return Err(network_error(format!("peer {} did not open the stream in time", self.target))),
            };
            Ok(answers_of(answers, pending, self.target.clone()).boxed())
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(Lane::Control, &rpc, |_| option.hard_ttl(), |mut c, r| async move { c.vote(r).await }).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(Lane::Control, &rpc, |_| option.hard_ttl(), |mut c, r| async move { c.pre_vote(r).await }).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(self.lane, &req, |_| option.hard_ttl(), |mut c, r| async move { c.transfer_leader(r).await }).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let to_network =
            |e: &dyn std::fmt::Display| StreamingError::Network(NetworkError::new(&TransportError(e.to_string())));
        let header = SnapshotHeader {
            vote: codec::encode(&vote).map_err(|e| to_network(&e))?.into(),
            meta: codec::encode(&snapshot.meta).map_err(|e| to_network(&e))?.into(),
            size: snapshot.snapshot.len(),
        };
        let mut client = self.client(self.lane).map_err(|e| to_network(&e))?;
        tracing::info!(target_node = %self.target, size = header.size, last_log_id = ?snapshot.meta.last_log_id, "sending snapshot");
        let log = TransferLog::new(Direction::Sending, self.target.to_string(), header.size);
        let chunks = snapshot_stream(header, Arc::new(snapshot.snapshot), log);
        let mut request = tonic::Request::new(chunks);
        request.set_timeout(SNAPSHOT_TRANSFER_TIMEOUT);
        let resp = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = client.install_snapshot(request) => r,
        };
        let resp = resp.map_err(|s| match unreachable_or_network(&s) {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            other => to_network(&other),
        })?;
        codec::decode(&resp.into_inner().payload).map_err(|e| to_network(&e))
    }
}

fn network_error(message: String) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&TransportError(message)))
}

/// The requests of one `StreamAppend` stream that are sent and not answered yet, by the
/// instant each must be answered by (oldest first), plus what makes the reader look again.
#[derive(Default)]
struct Pending {
    deadlines: Mutex<VecDeque<Instant>>,
    /// Set when a request could not be encoded: the stream ends there.
    failed: Mutex<Option<String>>,
    /// Wakes the reader when a request is sent (or the sending ends) while it waits with
    /// nothing pending.
    changed: Notify,
}

impl Pending {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The encoded requests, each recorded in `pending` with its deadline as it is sent.
fn outgoing<S>(input: S, pending: Arc<Pending>, asked: Duration) -> impl Stream<Item = RaftMessage> + Send + 'static
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    futures::stream::unfold((input, pending), move |(mut input, pending)| async move {
        let req = input.next().await?;
        match codec::encode(&req) {
            Ok(payload) => {
                Pending::lock(&pending.deadlines).push_back(Instant::now() + append_timeout(asked, payload.len()));
                pending.changed.notify_one();
                Some((RaftMessage { payload: payload.into() }, (input, pending)))
            }
            Err(e) => {
                *Pending::lock(&pending.failed) = Some(format!("encoding an append-entries request: {e}"));
                pending.changed.notify_one();
                None
            }
        }
    })
}

/// The follower's answers, decoded, in order. A request not answered by its deadline, a
/// stream that ends while requests are pending, and a failed request end it with an error.
fn answers_of(
    answers: Streaming<RaftMessage>,
    pending: Arc<Pending>,
    peer: NodeId,
) -> impl Stream<Item = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>> + Send + 'static {
    futures::stream::unfold(Some((answers, pending)), move |state| {
        let peer = peer.clone();
        async move {
            let (mut answers, pending) = state?;
            let next = match next_answer(&mut answers, &pending).await {
                Ok(Some(message)) => {
                    Pending::lock(&pending.deadlines).pop_front();
                    codec::decode::<StreamAppendResult<TypeConfig>>(&message.payload)
                        .map_err(|e| network_error(format!("undecodable answer from peer {peer}: {e}")))
                }
                Ok(None) => {
                    let unanswered = Pending::lock(&pending.deadlines).len();
                    match Pending::lock(&pending.failed).take() {
                        Some(failed) => Err(network_error(failed)),
                        None if unanswered > 0 => Err(network_error(format!(
                            "peer {peer} ended the append stream with {unanswered} requests unanswered"
                        ))),
                        None => return None,
                    }
                }
                Err(e) => Err(e),
            };
            let go_on = next.is_ok();
            Some((next, go_on.then_some((answers, pending))))
        }
    })
}

/// The next answer: within the oldest pending request's deadline, or, with nothing pending,
/// whenever it comes (the follower may still end the stream) or a request is sent.
async fn next_answer(
    answers: &mut Streaming<RaftMessage>,
    pending: &Pending,
) -> Result<Option<RaftMessage>, RPCError<TypeConfig>> {
    loop {
        if Pending::lock(&pending.failed).is_some() {
            return Ok(None);
        }
        let oldest = Pending::lock(&pending.deadlines).front().copied();
        let answer = match oldest {
            Some(deadline) => match tokio::time::timeout_at(deadline, answers.message()).await {
                Ok(answer) => answer,
                Err(_) => return Err(network_error("no answer to an append-entries request in time".into())),
            },
            // `Streaming::message` is cancel-safe: a message half read stays buffered.
            None => tokio::select! {
                answer = answers.message() => answer,
                () = pending.changed.notified() => continue,
            },
        };
        return answer.map_err(|status| unreachable_or_network(&status));
    }
}

/// The chunks of one snapshot: the header, the data read lazily chunk by chunk (one chunk
/// in memory at a time), then the trailer with the CRC32 of the data.
fn snapshot_stream(
    header: SnapshotHeader,
    file: Arc<SnapshotFile>,
    log: TransferLog,
) -> impl futures::Stream<Item = SnapshotChunk> + Send {
    enum Phase {
        Header(SnapshotHeader, TransferLog),
        Data { offset: u64, crc: crc32fast::Hasher, log: TransferLog },
        Done,
    }
    let chunk = |c: Chunk| SnapshotChunk { chunk: Some(c) };
    futures::stream::unfold((Phase::Header(header, log), file), move |(phase, file)| async move {
        match phase {
            Phase::Header(h, log) => {
                let next = Phase::Data { offset: 0, crc: crc32fast::Hasher::new(), log };
                Some((chunk(Chunk::Header(h)), (next, file)))
            }
            Phase::Data { offset, mut crc, mut log } => {
                let f = file.clone();
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                    let mut filled = 0;
                    while filled < buf.len() {
                        let n = f.read_at(&mut buf[filled..], offset + filled as u64)?;
                        if n == 0 {
                            break;
                        }
                        filled += n;
                    }
                    buf.truncate(filled);
                    Ok::<_, std::io::Error>(buf)
                })
                .await;
                match read {
                    Ok(Ok(buf)) if !buf.is_empty() => {
                        crc.update(&buf);
                        log.at(offset);
                        let next = Phase::Data { offset: offset + buf.len() as u64, crc, log };
                        Some((chunk(Chunk::Data(buf.into())), (next, file)))
                    }
                    Ok(Ok(_)) => {
                        Some((chunk(Chunk::Trailer(SnapshotTrailer { crc32: crc.finalize() })), (Phase::Done, file)))
                    }
                    Ok(Err(e)) => {
                        // Ending without a trailer makes the receiver refuse the snapshot.
                        tracing::warn!(error = %e, "reading the snapshot to send failed");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the snapshot to send failed");
                        None
                    }
                }
            }
            Phase::Done => None,
        }
    })
    .boxed()
}
