//! Leader forwarding, once for every service: [`Routed`] (served here, or this is the
//! leader), `to_leader` (the one forwarding function, with the classification of the
//! leader's answer), the hop guard ([`Hop`]), deadline propagation, and the pool of client
//! channels to other nodes ([`Forwarder`]).
//!
//! KV writes (Put, Delete, Txn) go to the leader with `write_to_leader`: over one
//! long-lived `raftkv.forward.v1.Forward/Writes` stream per follower (to the leader it last
//! forwarded to), each write a message with its own id, deadline and credentials, its
//! answer matched back by id; the leader serves each as the unary KV call
//! ([`crate::ForwardService`]). Failures are classified as for a unary call, in the same
//! function. A write the stream cannot carry (a leader that does not serve it, an
//! oversized message) goes as a unary call.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use openraft::async_runtime::WatchReceiver;
use prost::Message;
use proto::kv::forward::v1::forward_client::ForwardClient;
use proto::kv::forward::v1::{
    ForwardedAnswer, ForwardedStatus, ForwardedWrite, MetadataEntry, forwarded_answer, forwarded_write,
};
use proto::kv::v1::{DeleteRequest, DeleteResponse, PutRequest, PutResponse, TxnRequest, TxnResponse};
use rpc::channel::{ChannelError, ChannelOptions, Keepalive, Pool};
use rpc::tls::ClientTls;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::metadata::{Ascii, KeyAndValueRef, MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use types::{NodeId, NodeInfo};

use crate::error::RETRYABLE_HEADER;
use crate::{MAX_DECODE_BYTES, NodeContext, ServiceError};

pub use rpc::deadline::deadline;
pub use rpc::metadata::{FORWARDED_HEADER, NO_FORWARD_HEADER};

/// How channels to other nodes connect: within 2 s (then forwarding gives up), with
/// keepalive pings every 10 s.
const CHANNEL_OPTIONS: ChannelOptions = ChannelOptions {
    connect_timeout: Some(Duration::from_secs(2)),
    keepalive: Some(Keepalive { interval: Duration::from_secs(10), timeout: None }),
};

/// Reused channels to other nodes, keyed by address (and node id, over TLS), and the
/// stream of writes forwarded to the leader.
#[derive(Debug, Clone)]
pub struct Forwarder {
    channels: Pool,
    writes: Arc<WriteStreams>,
}

impl Default for Forwarder {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Forwarder {
    /// An empty pool; over TLS with the node's peer certificate when `tls` is given.
    #[must_use]
    pub fn new(tls: Option<Arc<ClientTls>>) -> Self {
        Self { channels: Pool::with_tls(CHANNEL_OPTIONS, tls), writes: Arc::default() }
    }

    /// A connected channel to node `node` at `addr` (over TLS, its certificate must be
    /// valid for the name `node`). Connecting is eager, so a failure here means the
    /// request was never sent and is safe to retry elsewhere.
    pub async fn channel(&self, addr: &str, node: &NodeId) -> Result<Channel, ChannelError> {
        self.channels.connect(addr, Some(node.as_str())).await
    }

    /// The pool itself, for calls to other nodes' Raft ports (follower read indexes).
    #[must_use]
    pub fn pool(&self) -> &Pool {
        &self.channels
    }

    /// Drops the cached channel to `addr` (after a transport failure), so the next call
    /// reconnects.
    pub fn forget(&self, addr: &str) {
        self.channels.forget(addr);
    }
}

/// Where a request is answered: on this node, or only the leader can answer it. What the
/// write path ([`NodeContext`]'s `write`) and every [`crate::cluster`] operation return; the
/// services forward a [`Routed::Leader`] with `to_leader`.
#[derive(Debug)]
pub enum Routed<T> {
    /// Served on this node.
    Done(T),
    /// Only the leader can serve it; this is the leader.
    Leader(Leader),
}

impl<T> Routed<T> {
    /// Maps what was served here; a route to the leader stays as it is.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Routed<U> {
        match self {
            Routed::Done(t) => Routed::Done(f(t)),
            Routed::Leader(l) => Routed::Leader(l),
        }
    }
}

/// The leader a request must go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The leader's id.
    pub id: NodeId,
    /// Its addresses as the Raft error that named it carried them, if it did: the fallback
    /// after the resolver chain (else the membership's).
    pub node: Option<NodeInfo>,
}

impl From<NodeId> for Leader {
    fn from(id: NodeId) -> Self {
        Leader { id, node: None }
    }
}

/// Whether a request may still go to the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// It may be forwarded (once).
    Allowed,
    /// It was forwarded already, or the client opted out: answer `NotLeader` with the hint.
    Refused,
}

impl Hop {
    /// The hop a request's metadata allows ([`may_forward`]).
    #[must_use]
    pub fn of(md: &MetadataMap) -> Self {
        if may_forward(md) { Hop::Allowed } else { Hop::Refused }
    }
}

/// What a forwarded request does, which decides what a failure after sending means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// It changes nothing (a barrier): any failure is "not the leader", to retry.
    Read,
    /// A KV write: a failure after sending leaves its outcome unknown.
    Write,
    /// A cluster change (membership, leadership): likewise, it may still take effect.
    Change,
}

/// Whether a failed call to the leader had sent the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// Certainly never sent: it had no effect.
    NotSent,
    /// Maybe sent.
    MaybeSent,
}

/// How one request goes to the leader.
#[derive(Debug, Clone)]
pub struct Forwarding {
    /// Whether it may.
    pub hop: Hop,
    /// What it does.
    pub effect: Effect,
    /// The instant the leader must answer by (sent as the request's timeout).
    pub until: Instant,
    /// The caller's `authorization` value, sent on so the leader authenticates the caller
    /// itself (a token is valid on every node).
    pub credentials: Option<MetadataValue<Ascii>>,
}

impl Forwarding {
    /// How a request with metadata `md` goes to the leader: its hop, what it does, by when,
    /// with its credentials.
    pub fn of(md: &MetadataMap, effect: Effect, until: Instant) -> Self {
        let credentials = md.get(crate::auth::AUTHORIZATION_HEADER).cloned();
        Forwarding { hop: Hop::of(md), effect, until, credentials }
    }
}

/// The counter of requests this node sent on to the leader (the metrics reference,
/// docs/metrics.md).
pub const FORWARDED_METRIC: &str = "raftkv_forwarded_requests_total";

/// Sends `req` once to `leader`'s gRPC address (the resolver chain first, then the addresses
/// the route carried or the membership's), marked as forwarded, with what is left until
/// `how.until`, through `call` (a client method on the channel). Refused hops, unknown
/// addresses and failed calls become [`ServiceError`]s here, for every service.
pub async fn to_leader<Req, Resp, F, Fut>(
    ctx: &NodeContext,
    leader: Leader,
    how: Forwarding,
    req: Req,
    call: F,
) -> Result<Response<Resp>, Status>
where
    F: FnOnce(Channel, Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    let (addr, channel) = reach(ctx, &leader, &how).await?;
    unary(ctx, &leader, &addr, channel, how, req, call).await
}

/// A KV write sent to the leader: on the follower's stream of forwarded writes (see the
/// module docs), else as [`to_leader`] sends it, through `call`. The same routing, hop
/// guard, deadline, credentials and classification of failures as [`to_leader`].
pub async fn write_to_leader<W, F, Fut>(
    ctx: &NodeContext,
    leader: Leader,
    how: Forwarding,
    req: W,
    call: F,
) -> Result<Response<W::Response>, Status>
where
    W: StreamedWrite,
    F: FnOnce(Channel, Request<W>) -> Fut,
    Fut: Future<Output = Result<Response<W::Response>, Status>>,
{
    let (addr, channel) = reach(ctx, &leader, &how).await?;
    let authorization = match &how.credentials {
        None => Some(String::new()),
        Some(c) => c.to_str().ok().map(str::to_string),
    };
    let fits = |auth: &String| req.encoded_len().saturating_add(auth.len()) <= MAX_DECODE_BYTES;
    let authorization = match authorization {
        Some(auth) if fits(&auth) && !ctx.forwarder.writes.unsupported(&addr) => auth,
        _ => return unary(ctx, &leader, &addr, channel, how, req, call).await,
    };
    let timeout = how.until.saturating_duration_since(Instant::now());
    metrics::counter!(FORWARDED_METRIC).increment(1);
    let write = ForwardedWrite {
        id: 0,
        timeout_micros: u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX),
        authorization,
        write: Some(req.into_write()),
    };
    let stream = ctx.forwarder.writes.stream_to(&addr, &channel);
    let Some((answer, _pending)) = stream.send(write) else {
        let e = format!("the stream of forwarded writes to {addr} had ended");
        return Err(forward_failed(&leader.id, &addr, Delivery::NotSent, how.effect, &e).into());
    };
    let answered = match tokio::time::timeout_at(how.until, answer).await {
        Ok(Ok(Ok(answer))) => W::from_answer(answer).map(Response::new),
        Ok(Ok(Err(Unanswered::NotSent(e)))) => {
            return Err(forward_failed(&leader.id, &addr, Delivery::NotSent, how.effect, &e).into());
        }
        Ok(Ok(Err(Unanswered::Failed(status)))) => Err(status),
        Ok(Err(_)) => Err(Status::unavailable("the stream of forwarded writes ended with this write unanswered")),
        Err(_) => Err(Status::deadline_exceeded("no answer on the stream of forwarded writes in time")),
    };
    classify(ctx, &leader, &addr, how.effect, answered)
}

/// The leader's address and a connected channel to it, or the error that says why the
/// request cannot go there (a refused hop, an unknown address, a failed connect).
async fn reach(ctx: &NodeContext, leader: &Leader, how: &Forwarding) -> Result<(String, Channel), Status> {
    let Some(addr) = leader_addr(ctx, leader) else {
        return Err(ServiceError::NotLeader { id: leader.id.clone(), addr: None }.into());
    };
    if how.hop == Hop::Refused {
        return Err(ServiceError::NotLeader { id: leader.id.clone(), addr: Some(addr) }.into());
    }
    match ctx.forwarder.channel(&addr, &leader.id).await {
        Ok(channel) => Ok((addr, channel)),
        Err(e) => Err(forward_failed(&leader.id, &addr, Delivery::NotSent, how.effect, &e).into()),
    }
}

/// One unary call to the leader at `addr`, marked as forwarded, with what is left until
/// `how.until` and the caller's credentials.
async fn unary<Req, Resp, F, Fut>(
    ctx: &NodeContext,
    leader: &Leader,
    addr: &str,
    channel: Channel,
    how: Forwarding,
    req: Req,
    call: F,
) -> Result<Response<Resp>, Status>
where
    F: FnOnce(Channel, Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    let timeout = how.until.saturating_duration_since(Instant::now());
    metrics::counter!(FORWARDED_METRIC).increment(1);
    let mut request = forwarded_request(req, timeout);
    if let Some(credentials) = how.credentials {
        request.metadata_mut().insert(crate::auth::AUTHORIZATION_HEADER, credentials);
    }
    classify(ctx, leader, addr, how.effect, call(channel, request).await)
}

/// What the answer of a request forwarded to the leader at `addr` means, for every service
/// and both ways of sending (unary, the stream of writes): the leader's own answers pass
/// through; a deadline or a cancellation is "did not answer in time"; any other failure
/// drops the channel and is "not the leader" when nothing was sent, else an unknown
/// outcome for what changes something.
fn classify<Resp>(
    ctx: &NodeContext,
    leader: &Leader,
    addr: &str,
    effect: Effect,
    answer: Result<Response<Resp>, Status>,
) -> Result<Response<Resp>, Status> {
    match answer {
        Ok(resp) => Ok(resp),
        // An answer from the leader's service (it carries the retryable header, or is a
        // decoding refusal) passes through unchanged; anything else came from the transport.
        Err(s)
            if s.metadata().get(RETRYABLE_HEADER).is_some()
                || matches!(
                    s.code(),
                    Code::InvalidArgument | Code::OutOfRange | Code::Unauthenticated | Code::PermissionDenied
                ) =>
        {
            Err(s)
        }
        Err(s) if matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled) => {
            let outcome = match effect {
                Effect::Read => "",
                Effect::Write => "; the write's outcome is unknown",
                Effect::Change => "; the change may still take effect",
            };
            Err(ServiceError::DeadlineExceeded(format!("the leader {} did not answer in time{outcome}", leader.id))
                .into())
        }
        Err(s) => {
            ctx.forwarder.forget(addr);
            // A request hyper never sent (the connection to the leader was gone) had no
            // effect, like a failed connect. Anything later may have.
            let delivery = if never_sent(&s) { Delivery::NotSent } else { Delivery::MaybeSent };
            Err(forward_failed(&leader.id, addr, delivery, effect, &s).into())
        }
    }
}

/// The leader's gRPC address: from the resolver (gossip, static peers, membership, in that
/// order), else the one the route carried, else the membership's.
fn leader_addr(ctx: &NodeContext, leader: &Leader) -> Option<String> {
    let known = leader.node.clone().or_else(|| {
        let m = ctx.raft.metrics().borrow_watched().clone();
        m.membership_config.membership().get_node(&leader.id).cloned()
    });
    ctx.resolver.resolve_or(&leader.id, known).map(|n| n.grpc_addr).filter(|a| !a.is_empty())
}

/// Whether a request may be forwarded: not already forwarded, and the client did not opt
/// out.
#[must_use]
pub fn may_forward(md: &MetadataMap) -> bool {
    md.get(FORWARDED_HEADER).is_none() && md.get(NO_FORWARD_HEADER).and_then(|v| v.to_str().ok()) != Some("true")
}

/// Builds the request sent to the leader: the same message, marked as forwarded, with the
/// caller's remaining deadline.
pub fn forwarded_request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(FORWARDED_HEADER, MetadataValue::from_static("1"));
    req.set_timeout(timeout);
    req
}

/// Maps a failure to reach the leader: retryable `NotLeader` when nothing was sent or the
/// request changes nothing; else the outcome is unknown.
fn forward_failed(
    leader: &NodeId,
    addr: &str,
    delivery: Delivery,
    effect: Effect,
    e: &dyn std::fmt::Display,
) -> ServiceError {
    if delivery == Delivery::NotSent || effect == Effect::Read {
        tracing::debug!(leader = %leader, addr, error = %e, "forwarding to the leader failed");
        ServiceError::NotLeader { id: leader.clone(), addr: Some(addr.to_string()) }
    } else {
        ServiceError::OutcomeUnknown(format!("the connection to the leader {leader} at {addr} failed: {e}"))
    }
}

/// Whether a failed call to another node was certainly never sent; the one heuristic, shared
/// with the client library (it reads hyper's error text, so it lives in one place).
use rpc::never_sent;

/// The most bytes a KV request or answer may have on the stream of forwarded writes besides
/// the id, deadline and credentials around it: the KV service's decode limit
/// ([`MAX_DECODE_BYTES`]), as for a unary call. A larger write goes as a unary call; a larger
/// answer is refused for that write alone ([`crate::ForwardService`]).
pub const MAX_STREAMED_WRITE_BYTES: usize = MAX_DECODE_BYTES;
/// The room a message of the stream of forwarded writes has besides its KV request or
/// answer (ids, deadline, the caller's credentials, a status's metadata): the stream's
/// decode limit is [`MAX_STREAMED_WRITE_BYTES`] plus this.
pub const STREAM_ENVELOPE_BYTES: usize = 64 << 10;

/// A KV write that may go to the leader on the stream of forwarded writes.
pub trait StreamedWrite: Message + Sized {
    /// The unary call's answer.
    type Response;
    /// The request as the stream carries it.
    fn into_write(self) -> forwarded_write::Write;
    /// The answer the unary call would have given: the response, or its status.
    fn from_answer(answer: forwarded_answer::Answer) -> Result<Self::Response, Status>;
}

/// An answer of another kind than the write sent (a leader's fault).
fn mismatched(answer: &forwarded_answer::Answer) -> Status {
    let kind = match answer {
        forwarded_answer::Answer::Put(_) => "Put",
        forwarded_answer::Answer::Delete(_) => "Delete",
        forwarded_answer::Answer::Txn(_) => "Txn",
        forwarded_answer::Answer::Status(_) => "a status",
    };
    ServiceError::Internal(format!("the leader answered a forwarded write with a {kind} answer of another kind").into())
        .into()
}

macro_rules! streamed_write {
    ($req:ty, $resp:ty, $variant:ident) => {
        impl StreamedWrite for $req {
            type Response = $resp;
            fn into_write(self) -> forwarded_write::Write {
                forwarded_write::Write::$variant(self)
            }
            fn from_answer(answer: forwarded_answer::Answer) -> Result<$resp, Status> {
                match answer {
                    forwarded_answer::Answer::$variant(resp) => Ok(resp),
                    forwarded_answer::Answer::Status(status) => Err(status_of(status)),
                    other => Err(mismatched(&other)),
                }
            }
        }
    };
}

streamed_write!(PutRequest, PutResponse, Put);
streamed_write!(DeleteRequest, DeleteResponse, Delete);
streamed_write!(TxnRequest, TxnResponse, Txn);

/// A status as the stream of forwarded writes carries it: code, message, details, and
/// the ASCII metadata (binary metadata is not carried; no raftkv status has any).
#[must_use]
pub fn status_message(status: &Status) -> ForwardedStatus {
    let metadata = status
        .metadata()
        .iter()
        .filter_map(|entry| match entry {
            KeyAndValueRef::Ascii(key, value) => {
                value.to_str().ok().map(|v| MetadataEntry { key: key.as_str().to_string(), value: v.to_string() })
            }
            KeyAndValueRef::Binary(..) => None,
        })
        .collect();
    ForwardedStatus {
        code: status.code() as i32,
        message: status.message().to_string(),
        details: bytes::Bytes::copy_from_slice(status.details()),
        metadata,
    }
}

/// The status [`status_message`] carried.
#[must_use]
pub fn status_of(carried: ForwardedStatus) -> Status {
    let mut md = MetadataMap::new();
    for entry in carried.metadata {
        if let (Ok(key), Ok(value)) =
            (MetadataKey::<Ascii>::from_bytes(entry.key.as_bytes()), MetadataValue::try_from(entry.value.as_str()))
        {
            md.insert(key, value);
        }
    }
    Status::with_details_and_metadata(Code::from_i32(carried.code), carried.message, carried.details, md)
}

/// Why a write sent on the stream got no answer.
#[derive(Debug)]
enum Unanswered {
    /// It certainly never reached the leader (the stream could not be opened: the leader
    /// does not serve it).
    NotSent(String),
    /// It may have: how the stream failed, for [`classify`].
    Failed(Status),
}

type Answered = Result<forwarded_answer::Answer, Unanswered>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The follower's stream of forwarded writes: one at a time, to the leader it last
/// forwarded to (a write to another address replaces it; the old one ends once its writes
/// are answered), and the addresses found not to serve it.
#[derive(Default)]
struct WriteStreams {
    current: Mutex<Option<WriteStream>>,
    unsupported: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for WriteStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = lock(&self.current).as_ref().map(|s| s.addr.clone());
        f.debug_struct("WriteStreams").field("current", &current).finish_non_exhaustive()
    }
}

impl WriteStreams {
    /// Whether the node at `addr` answered that it does not serve the stream.
    fn unsupported(&self, addr: &str) -> bool {
        lock(&self.unsupported).contains(addr)
    }

    /// The open stream to `addr`, opened on `channel` if there is none.
    fn stream_to(&self, addr: &str, channel: &Channel) -> WriteStream {
        let mut current = lock(&self.current);
        if let Some(stream) = current.as_ref()
            && stream.addr == addr
            && !stream.shared.ended()
        {
            return stream.clone();
        }
        let stream = WriteStream::open(addr, channel.clone(), self.unsupported.clone());
        *current = Some(stream.clone());
        stream
    }
}

/// One open stream of forwarded writes to the leader at `addr`.
#[derive(Clone)]
struct WriteStream {
    addr: String,
    outgoing: mpsc::UnboundedSender<ForwardedWrite>,
    shared: Arc<StreamShared>,
}

/// What a stream's senders and its reader share.
struct StreamShared {
    /// The writes sent and not answered, by id; `None` once the stream ended.
    pending: Mutex<Option<HashMap<u64, oneshot::Sender<Answered>>>>,
    next_id: AtomicU64,
}

impl StreamShared {
    fn ended(&self) -> bool {
        lock(&self.pending).is_none()
    }

    fn take(&self, id: u64) -> Option<oneshot::Sender<Answered>> {
        lock(&self.pending).as_mut().and_then(|p| p.remove(&id))
    }
}

/// A write's place among the pending ones, given up when its sender stops waiting.
struct PendingWrite {
    shared: Arc<StreamShared>,
    id: u64,
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        self.shared.take(self.id);
    }
}

impl WriteStream {
    /// Opens the stream on `channel`: its reader task sends it and dispatches its answers.
    fn open(addr: &str, channel: Channel, unsupported: Arc<Mutex<HashSet<String>>>) -> Self {
        let (outgoing, requests) = mpsc::unbounded_channel();
        let shared = Arc::new(StreamShared { pending: Mutex::new(Some(HashMap::new())), next_id: AtomicU64::new(1) });
        let client = ForwardClient::new(channel)
            .max_decoding_message_size(MAX_STREAMED_WRITE_BYTES + STREAM_ENVELOPE_BYTES)
            .max_encoding_message_size(MAX_STREAMED_WRITE_BYTES + STREAM_ENVELOPE_BYTES);
        tokio::spawn(read_answers(client, requests, shared.clone(), addr.to_string(), unsupported));
        tracing::debug!(leader_addr = addr, "opened a stream of forwarded writes");
        Self { addr: addr.to_string(), outgoing, shared }
    }

    /// Sends `write` with the stream's next id: the receiver of its answer, and its place
    /// among the pending writes; `None` when the stream has ended (it was not sent).
    fn send(&self, mut write: ForwardedWrite) -> Option<(oneshot::Receiver<Answered>, PendingWrite)> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        write.id = id;
        let (answer, answered) = oneshot::channel();
        lock(&self.shared.pending).as_mut()?.insert(id, answer);
        let pending = PendingWrite { shared: self.shared.clone(), id };
        self.outgoing.send(write).ok()?;
        Some((answered, pending))
    }
}

/// The reader of one stream: opens it with the writes queued in `requests`, hands each
/// answer to the write it answers, and when the stream ends fails every write still
/// pending (a stream that could not be opened because the leader does not serve it:
/// nothing was sent; any other end: the writes' outcomes are unknown).
async fn read_answers(
    mut client: ForwardClient<Channel>,
    requests: mpsc::UnboundedReceiver<ForwardedWrite>,
    shared: Arc<StreamShared>,
    addr: String,
    unsupported: Arc<Mutex<HashSet<String>>>,
) {
    let requests = futures::stream::unfold(requests, |mut r| async move { r.recv().await.map(|w| (w, r)) });
    let failure = match client.writes(requests).await {
        Err(status) if status.code() == Code::Unimplemented => {
            tracing::info!(leader_addr = %addr, "the leader does not serve the stream of forwarded writes; forwarding with one call per write");
            lock(&unsupported).insert(addr.clone());
            Unanswered::NotSent(format!("the node at {addr} does not serve the stream of forwarded writes"))
        }
        Err(status) => Unanswered::Failed(status),
        Ok(answers) => {
            let mut answers = answers.into_inner();
            let ended = loop {
                match answers.next().await {
                    Some(Ok(ForwardedAnswer { id, answer: Some(answer) })) => {
                        if let Some(waiting) = shared.take(id) {
                            let _ = waiting.send(Ok(answer));
                        }
                    }
                    Some(Ok(ForwardedAnswer { id, answer: None })) => {
                        if let Some(waiting) = shared.take(id) {
                            let e = ServiceError::Internal(
                                format!("the leader at {addr} answered a forwarded write with nothing").into(),
                            );
                            let _ = waiting.send(Err(Unanswered::Failed(e.into())));
                        }
                    }
                    None => break "the leader ended it".to_string(),
                    Some(Err(status)) => break format!("{}: {}", status.code(), status.message()),
                };
            };
            Unanswered::Failed(Status::unavailable(format!(
                "the stream of forwarded writes to the leader at {addr} ended with this write unanswered ({ended})"
            )))
        }
    };
    let pending = lock(&shared.pending).take();
    if let Some(pending) = pending.filter(|p| !p.is_empty()) {
        tracing::debug!(leader_addr = %addr, unanswered = pending.len(), reason = ?failure, "a stream of forwarded writes ended");
        for waiting in pending.into_values() {
            let each = match &failure {
                Unanswered::NotSent(e) => Unanswered::NotSent(e.clone()),
                Unanswered::Failed(s) => Unanswered::Failed(Status::new(s.code(), s.message())),
            };
            let _ = waiting.send(Err(each));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc::deadline::parse_grpc_timeout;

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("5"), None);
        assert_eq!(parse_grpc_timeout("x5S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }

    #[test]
    fn hop_guard_and_opt_out() {
        let mut md = MetadataMap::new();
        assert!(may_forward(&md));
        md.insert(NO_FORWARD_HEADER, MetadataValue::from_static("true"));
        assert!(!may_forward(&md));
        let req = forwarded_request((), Duration::from_secs(1));
        assert!(!may_forward(req.metadata()));
    }

    #[test]
    fn the_hop_follows_the_guard() {
        let mut md = MetadataMap::new();
        assert_eq!(Hop::of(&md), Hop::Allowed);
        md.insert(NO_FORWARD_HEADER, MetadataValue::from_static("true"));
        assert_eq!(Hop::of(&md), Hop::Refused);
        assert_eq!(Hop::of(forwarded_request((), Duration::from_secs(1)).metadata()), Hop::Refused);
    }

    #[test]
    fn only_a_sent_change_has_an_unknown_outcome() {
        let id = NodeId::from(2);
        for effect in [Effect::Write, Effect::Change] {
            let e = forward_failed(&id, "h:1", Delivery::MaybeSent, effect, &"reset");
            assert!(matches!(&e, ServiceError::OutcomeUnknown(m) if m.contains("leader 2 at h:1")), "{e:?}");
            let e = forward_failed(&id, "h:1", Delivery::NotSent, effect, &"refused");
            assert!(matches!(&e, ServiceError::NotLeader { addr: Some(a), .. } if a == "h:1"), "{e:?}");
        }
        let e = forward_failed(&id, "h:1", Delivery::MaybeSent, Effect::Read, &"reset");
        assert!(matches!(e, ServiceError::NotLeader { .. }), "{e:?}");
    }

    #[test]
    fn a_route_maps_only_what_was_served_here() {
        assert!(matches!(Routed::Done(2).map(|i| i * 10), Routed::Done(20)));
        let to_leader: Routed<u64> = Routed::Leader(Leader::from(NodeId::from(3)));
        assert!(
            matches!(to_leader.map(|i| i * 10), Routed::Leader(Leader { id, node: None }) if id == NodeId::from(3))
        );
    }

    #[test]
    fn only_unsent_calls_count_as_never_sent() {
        assert!(never_sent(&tonic::Status::unavailable("tcp connect error")));
        assert!(never_sent(&tonic::Status::cancelled("operation was canceled: connection closed")));
        let mut refused = tonic::Status::unavailable("transport error");
        refused.set_source(std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
        assert!(never_sent(&refused));
        assert!(!never_sent(&tonic::Status::unavailable("connection reset")));
        assert!(!never_sent(&tonic::Status::unknown("operation was canceled")));
    }

    #[test]
    fn deadline_is_capped() {
        let mut md = MetadataMap::new();
        assert_eq!(deadline(&md, Duration::from_secs(3)), Duration::from_secs(3));
        md.insert("grpc-timeout", MetadataValue::from_static("1S"));
        assert_eq!(deadline(&md, Duration::from_secs(3)), Duration::from_secs(1));
    }
}
