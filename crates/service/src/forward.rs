//! Leader forwarding: a pool of client channels to other nodes' gRPC addresses, the hop
//! guard, and deadline propagation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::ServiceError;

/// Metadata key set on a forwarded request. A node that receives it never forwards again,
/// so a request is forwarded at most once and never bounces between nodes.
pub const FORWARDED_HEADER: &str = "x-raftkv-forwarded";
/// Metadata key a client sets to `true` to ask for no forwarding: a non-leader then
/// answers `UNAVAILABLE` with the leader's id and address.
pub const NO_FORWARD_HEADER: &str = "x-raftkv-no-forward";

/// How long connecting to the leader may take before forwarding gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Reused channels to other nodes, keyed by gRPC address.
#[derive(Debug, Clone, Default)]
pub struct Forwarder {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
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
        if let Some(ch) = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(addr) {
            return Ok(ch.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let ch = endpoint.connect().await?;
        self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// Drops the cached channel to `addr` (after a transport failure), so the next call
    /// reconnects.
    pub fn forget(&self, addr: &str) {
        self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(addr);
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

/// The caller's deadline from the `grpc-timeout` header, capped at `max`.
#[must_use]
pub fn deadline(md: &MetadataMap, max: Duration) -> Duration {
    md.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout).map_or(max, |d| d.min(max))
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (`H M S m u n`).
fn parse_grpc_timeout(s: &str) -> Option<Duration> {
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
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
pub(crate) use client::never_sent;

#[cfg(test)]
mod tests {
    use super::*;

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
