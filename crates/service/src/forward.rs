//! Leader forwarding: a pool of client channels to other nodes' gRPC addresses, the hop
//! guard, and deadline propagation.

use std::time::Duration;

use rpc::channel::{ChannelOptions, Keepalive, Pool};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;

use crate::ServiceError;

pub use rpc::deadline::deadline;
pub use rpc::metadata::{FORWARDED_HEADER, NO_FORWARD_HEADER};

/// How channels to other nodes connect: within 2 s (then forwarding gives up), with
/// keepalive pings every 10 s.
const CHANNEL_OPTIONS: ChannelOptions = ChannelOptions {
    connect_timeout: Some(Duration::from_secs(2)),
    keepalive: Some(Keepalive { interval: Duration::from_secs(10), timeout: None }),
};

/// Reused channels to other nodes, keyed by address.
#[derive(Debug, Clone)]
pub struct Forwarder {
    channels: Pool,
}

impl Default for Forwarder {
    fn default() -> Self {
        Self { channels: Pool::new(CHANNEL_OPTIONS) }
    }
}

impl Forwarder {
    /// An empty pool.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A connected channel to `addr`. Connecting is eager, so a failure here means the
    /// request was never sent and is safe to retry elsewhere.
    pub async fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.channels.connect(addr).await
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

/// Maps a failure to reach the leader. A connect failure means nothing was sent; anything
/// after that leaves a write's outcome unknown.
pub(crate) fn forward_failed(
    leader: &types::NodeId,
    addr: &str,
    connected: bool,
    write: bool,
    e: &dyn std::fmt::Display,
) -> ServiceError {
    if !connected || !write {
        tracing::debug!(leader = %leader, addr, error = %e, "forwarding to the leader failed");
        ServiceError::NotLeader { id: leader.clone(), addr: Some(addr.to_string()) }
    } else {
        ServiceError::OutcomeUnknown(format!("the connection to the leader {leader} at {addr} failed: {e}"))
    }
}

/// Whether a failed call to another node was certainly never sent; the one heuristic, shared
/// with the client library (it reads hyper's error text, so it lives in one place).
pub(crate) use rpc::never_sent;

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
