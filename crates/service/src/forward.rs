//! Leader forwarding, once for every service: [`Routed`] (served here, or this is the
//! leader), `to_leader` (the one forwarding function, with the classification of the
//! leader's answer), the hop guard ([`Hop`]), deadline propagation, and the pool of client
//! channels to other nodes ([`Forwarder`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use rpc::channel::{ChannelError, ChannelOptions, Keepalive, Pool};
use rpc::tls::ClientTls;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use types::{NodeId, NodeInfo};

use crate::error::RETRYABLE_HEADER;
use crate::{NodeContext, ServiceError};

pub use rpc::deadline::deadline;
pub use rpc::metadata::{FORWARDED_HEADER, NO_FORWARD_HEADER};

/// How channels to other nodes connect: within 2 s (then forwarding gives up), with
/// keepalive pings every 10 s.
const CHANNEL_OPTIONS: ChannelOptions = ChannelOptions {
    connect_timeout: Some(Duration::from_secs(2)),
    keepalive: Some(Keepalive { interval: Duration::from_secs(10), timeout: None }),
};

/// Reused channels to other nodes, keyed by address (and node id, over TLS).
#[derive(Debug, Clone)]
pub struct Forwarder {
    channels: Pool,
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
        Self { channels: Pool::with_tls(CHANNEL_OPTIONS, tls) }
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
    let Some(addr) = leader_addr(ctx, &leader) else {
        return Err(ServiceError::NotLeader { id: leader.id, addr: None }.into());
    };
    if how.hop == Hop::Refused {
        return Err(ServiceError::NotLeader { id: leader.id, addr: Some(addr) }.into());
    }
    let failed = |delivery, e: &dyn std::fmt::Display| forward_failed(&leader.id, &addr, delivery, how.effect, e);
    let channel = ctx.forwarder.channel(&addr, &leader.id).await.map_err(|e| failed(Delivery::NotSent, &e))?;
    let timeout = how.until.saturating_duration_since(Instant::now());
    metrics::counter!(FORWARDED_METRIC).increment(1);
    let mut request = forwarded_request(req, timeout);
    if let Some(credentials) = how.credentials {
        request.metadata_mut().insert(crate::auth::AUTHORIZATION_HEADER, credentials);
    }
    match call(channel, request).await {
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
            let outcome = match how.effect {
                Effect::Read => "",
                Effect::Write => "; the write's outcome is unknown",
                Effect::Change => "; the change may still take effect",
            };
            Err(ServiceError::DeadlineExceeded(format!("the leader {} did not answer in time{outcome}", leader.id))
                .into())
        }
        Err(s) => {
            ctx.forwarder.forget(&addr);
            // A request hyper never sent (the connection to the leader was gone) had no
            // effect, like a failed connect. Anything later may have.
            let delivery = if never_sent(&s) { Delivery::NotSent } else { Delivery::MaybeSent };
            Err(failed(delivery, &s).into())
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
