//! Overload protection on the client port: a concurrency limit, load shedding, a bound on
//! the bytes of request bodies in flight, and a request timeout, as one tower service
//! ([`OverloadGuard`]) in front of every client-port service but health and reflection.
//!
//! - **Concurrency limit and load shedding.** At most `max_in_flight_requests` calls
//!   ([`DEFAULT_MAX_IN_FLIGHT_REQUESTS`], `--max-in-flight-requests`) are served at once. A
//!   call past it is not queued: it is answered at once with `RESOURCE_EXHAUSTED`, a message
//!   naming the limit, and `x-raftkv-retryable: true` (nothing was done), so clients back
//!   off and retry, on another node if they know one.
//! - **Bytes in flight.** Before a call runs, the guard reads the 5-byte gRPC message
//!   prefix of its body and takes that many bytes from a budget of
//!   `max_in_flight_request_bytes` ([`DEFAULT_MAX_IN_FLIGHT_REQUEST_BYTES`],
//!   `--max-in-flight-request-bytes`); when the budget cannot cover the message, the call is
//!   shed the same way. So a burst of 1 MiB values cannot make the node hold more than the
//!   budget of request bodies (and their decoded copies) at once.
//! - **Request timeout.** A call may hold its place for at most `request_timeout`
//!   ([`DEFAULT_SERVER_REQUEST_TIMEOUT`], `--request-timeout`): a caller's deadline
//!   (`grpc-timeout`) longer than that is lowered to it, so handlers answer in their own
//!   words before it, and a call still running [`TIMEOUT_GRACE`] after it is answered
//!   `DEADLINE_EXCEEDED` (for a write: outcome unknown, as for any deadline).
//!
//! - **Connections.** At most `max_client_connections` ([`DEFAULT_MAX_CLIENT_CONNECTIONS`],
//!   `--max-client-connections`) client connections are open at once; one past it is refused
//!   at accept, before any HTTP/2 or TLS work (`rpc::server`: in plaintext an HTTP/2 GOAWAY
//!   with `REFUSED_STREAM`, which gRPC clients see as `UNAVAILABLE` and may retry, writes
//!   included, since nothing was processed). Each connection may push at most
//!   `rpc::limits::CLIENT_PORT_WINDOW_BYTES` (256 KiB) before the node reads it, so the
//!   bytes buffered on the client port are bounded too. Without this limit a flood of
//!   connections costs the node their HTTP/2 work and buffers before any call reaches the
//!   guard below.
//!
//! A call holds its place until its handler has answered: for a unary call, the whole call;
//! for a stream (`KV.Watch`, `Admin.Backup`, the seed's `Example/Watch`), only until the
//! stream is set up, so open streams are never counted against the limit (watches are bounded
//! by `MAX_WATCHERS` instead). A call that goes on to wait a long time without doing work (a
//! blocking `Get` with `min_index`, the compat `Await`) gives its place back first with
//! [`release`]. The Raft port is never behind the guard: heartbeats and replication are never
//! shed.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http_body::{Body as _, Frame};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;

use crate::ServiceError;
use crate::limits::MAX_DECODE_BYTES;

/// The default most client connections open at once (`--max-client-connections`): the
/// common soft limit on a process's open files, past which a node would fail `accept`
/// anyway; Consul limits connections per client address (200 for HTTP, 100 for RPC),
/// etcd leaves them unbounded.
pub const DEFAULT_MAX_CLIENT_CONNECTIONS: usize = 1024;
/// The default most calls served at once on the client port (`--max-in-flight-requests`).
pub const DEFAULT_MAX_IN_FLIGHT_REQUESTS: usize = 1024;
/// The default budget of request-body bytes in flight on the client port, in bytes (64 MiB,
/// `--max-in-flight-request-bytes`).
pub const DEFAULT_MAX_IN_FLIGHT_REQUEST_BYTES: usize = 64 << 20;
/// The smallest byte budget accepted: one message of the largest size decoded
/// ([`MAX_DECODE_BYTES`], 2 MiB), so that every valid request can be served alone.
pub const MIN_IN_FLIGHT_REQUEST_BYTES: usize = MAX_DECODE_BYTES;
/// The default longest time a call may hold its place (`--request-timeout`): 120 s, the
/// longest deadline an Admin call may ask for (`MAX_ADMIN_TIMEOUT`).
pub const DEFAULT_SERVER_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long after the request timeout a call still running is cut off, so that a handler
/// that honours the (lowered) deadline answers in its own words first.
pub const TIMEOUT_GRACE: Duration = Duration::from_secs(1);
/// At most one warning about shed calls is logged per this interval (the rest at debug).
const WARN_EVERY: Duration = Duration::from_secs(10);
/// The length of the gRPC message prefix: a compression flag and a 4-byte length.
const PREFIX_BYTES: usize = 5;

/// The client port's overload limits (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverloadLimits {
    /// The most calls served at once (at least 1).
    pub max_in_flight_requests: usize,
    /// The budget of request-body bytes in flight (at least [`MIN_IN_FLIGHT_REQUEST_BYTES`]).
    pub max_in_flight_request_bytes: usize,
    /// The longest a call may hold its place.
    pub request_timeout: Duration,
    /// The most client connections open at once (at least 1), applied by the client port's
    /// accept loop (`rpc::server::PortLimits`).
    pub max_client_connections: usize,
}

impl Default for OverloadLimits {
    fn default() -> Self {
        Self {
            max_in_flight_requests: DEFAULT_MAX_IN_FLIGHT_REQUESTS,
            max_in_flight_request_bytes: DEFAULT_MAX_IN_FLIGHT_REQUEST_BYTES,
            request_timeout: DEFAULT_SERVER_REQUEST_TIMEOUT,
            max_client_connections: DEFAULT_MAX_CLIENT_CONNECTIONS,
        }
    }
}

impl OverloadLimits {
    /// Checks the limits; the error names the flag to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_in_flight_requests == 0 || self.max_in_flight_requests > Semaphore::MAX_PERMITS {
            return Err(format!("--max-in-flight-requests is {}; it must be at least 1", self.max_in_flight_requests));
        }
        let b = self.max_in_flight_request_bytes;
        if !(MIN_IN_FLIGHT_REQUEST_BYTES..=Semaphore::MAX_PERMITS).contains(&b) {
            return Err(format!(
                "--max-in-flight-request-bytes is {b}; it must be at least {MIN_IN_FLIGHT_REQUEST_BYTES} (MIN_IN_FLIGHT_REQUEST_BYTES, one message of the largest size)"
            ));
        }
        if self.max_client_connections == 0 || self.max_client_connections > Semaphore::MAX_PERMITS {
            return Err(format!("--max-client-connections is {}; it must be at least 1", self.max_client_connections));
        }
        if self.request_timeout < Duration::from_millis(100) {
            return Err(format!("--request-timeout is {:?}; it must be at least 100ms", self.request_timeout));
        }
        Ok(())
    }
}

/// Which limit a shed call met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Requests,
    Bytes,
}

/// The shared state of the guard: one per node, cloned into every guarded service.
#[derive(Debug, Clone)]
pub struct Overload {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    node: String,
    limits: OverloadLimits,
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    /// Milliseconds since `epoch` of the last warning about shed calls.
    last_warn_ms: AtomicU64,
    epoch: Instant,
}

impl Overload {
    /// The guard state of node `node` with `limits` (checked by [`OverloadLimits::validate`]
    /// beforehand; out-of-range values are clamped).
    #[must_use]
    pub fn new(node: impl Into<String>, limits: OverloadLimits) -> Self {
        let requests = limits.max_in_flight_requests.clamp(1, Semaphore::MAX_PERMITS);
        let bytes = limits.max_in_flight_request_bytes.clamp(MIN_IN_FLIGHT_REQUEST_BYTES, Semaphore::MAX_PERMITS);
        Self {
            shared: Arc::new(Shared {
                node: node.into(),
                limits,
                requests: Arc::new(Semaphore::new(requests)),
                bytes: Arc::new(Semaphore::new(bytes)),
                last_warn_ms: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        }
    }

    /// `inner` behind the guard.
    #[must_use]
    pub fn guard<S>(&self, inner: S) -> OverloadGuard<S> {
        OverloadGuard { inner, overload: self.clone() }
    }

    /// The calls and request-body bytes in flight now.
    #[must_use]
    pub fn in_flight(&self) -> (usize, usize) {
        let s = &self.shared;
        let limits = &s.limits;
        (
            limits.max_in_flight_requests.saturating_sub(s.requests.available_permits()),
            limits.max_in_flight_request_bytes.saturating_sub(s.bytes.available_permits()),
        )
    }

    /// The answer to a shed call, logged (a warning at most every [`WARN_EVERY`]).
    fn shed(&self, limit: Limit, path: &str, message_bytes: usize) -> http::Response<Body> {
        self.shed_status(limit, path, message_bytes).into_http()
    }

    /// [`Overload::shed`]'s status.
    fn shed_status(&self, limit: Limit, path: &str, message_bytes: usize) -> tonic::Status {
        let s = &self.shared;
        let error = match limit {
            Limit::Requests => ServiceError::Overloaded(format!(
                "node {} is overloaded: {} requests are in flight, the limit (--max-in-flight-requests) is {}; nothing was done, retry with backoff or on another node",
                s.node, s.limits.max_in_flight_requests, s.limits.max_in_flight_requests
            )),
            Limit::Bytes => ServiceError::Overloaded(format!(
                "node {} is overloaded: this {message_bytes}-byte request does not fit in the {} bytes of request bodies it may hold at once (--max-in-flight-request-bytes), {} free; nothing was done, retry with backoff or on another node",
                s.node,
                s.limits.max_in_flight_request_bytes,
                s.bytes.available_permits()
            )),
        };
        metrics::counter!(SHED_METRIC, "limit" => match limit { Limit::Requests => "requests", Limit::Bytes => "bytes" })
            .increment(1);
        let now = u64::try_from(s.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = s.last_warn_ms.load(Ordering::Relaxed);
        let every = u64::try_from(WARN_EVERY.as_millis()).unwrap_or(u64::MAX);
        if (last == 0 || now.saturating_sub(last) >= every)
            && s.last_warn_ms.compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(node = %s.node, path, reason = %error, "shedding load (logged at most every 10 s)");
        } else {
            tracing::debug!(node = %s.node, path, reason = %error, "call shed");
        }
        tonic::Status::from(error)
    }

    /// A place for one call that is not an HTTP/2 request of its own: a write forwarded on a
    /// follower's stream (`raftkv.forward.v1.Forward/Writes`), counted under the same limits
    /// as the unary call to `path` with a `message_bytes`-byte message would be. Refused
    /// with the status a shed unary call gets. The caller holds the [`Slot`] while it serves
    /// the call, lowers the call's deadline to [`Overload::request_timeout`] and cuts it off
    /// [`TIMEOUT_GRACE`] after that ([`Overload::timed_out`]), as the guard does.
    pub fn admit(&self, path: &str, message_bytes: usize) -> Result<Slot, tonic::Status> {
        let shared = &self.shared;
        let Ok(call_permit) = shared.requests.clone().try_acquire_owned() else {
            return Err(self.shed_status(Limit::Requests, path, 0));
        };
        let charge = message_bytes.saturating_add(PREFIX_BYTES).min(MAX_DECODE_BYTES);
        let Ok(permits) = u32::try_from(charge) else {
            return Err(self.shed_status(Limit::Bytes, path, charge));
        };
        match shared.bytes.clone().try_acquire_many_owned(permits) {
            Ok(p) => Ok(Slot(Arc::new(Mutex::new(Some((call_permit, Some(p))))))),
            Err(_) => Err(self.shed_status(Limit::Bytes, path, charge)),
        }
    }

    /// The longest a call may hold its place (`--request-timeout`).
    #[must_use]
    pub fn request_timeout(&self) -> Duration {
        self.shared.limits.request_timeout
    }

    /// The status of a call still running [`TIMEOUT_GRACE`] past the request timeout.
    #[must_use]
    pub fn timed_out(&self) -> tonic::Status {
        timed_out_status(self.shared.limits.request_timeout)
    }
}

/// Counter: calls shed by the overload guard, label `limit` (`requests` or `bytes`).
pub const SHED_METRIC: &str = "raftkv_overload_shed_total";

/// The place a call holds while it is served: its share of the concurrency limit and of the
/// byte budget. Put in the request's extensions; [`release`] gives it back early.
#[derive(Debug, Clone)]
pub struct Slot(Arc<Mutex<Option<Held>>>);

/// The permits a call holds: its place under the concurrency limit, and its bytes.
type Held = (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>);

impl Slot {
    fn released(&self) -> bool {
        self.0.lock().map_or(true, |held| held.is_none())
    }
}

/// Gives back the place the call of `extensions` holds (no-op when it holds none): for a
/// call about to wait a long time without working, such as a blocking read. It no longer
/// counts against the limits and the request timeout no longer cuts it off.
pub fn release(extensions: &http::Extensions) {
    if let Some(slot) = extensions.get::<Slot>()
        && let Ok(mut held) = slot.0.lock()
    {
        held.take();
    }
}

/// A service behind the overload guard (see the module docs).
#[derive(Debug, Clone)]
pub struct OverloadGuard<S> {
    inner: S,
    overload: Overload,
}

impl<S: NamedService> NamedService for OverloadGuard<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for OverloadGuard<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let overload = self.overload.clone();
        Box::pin(guarded(overload, inner, req))
    }
}

/// One call through the guard.
async fn guarded<S>(
    overload: Overload,
    mut inner: S,
    req: http::Request<Body>,
) -> Result<http::Response<Body>, Infallible>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    let started = Instant::now();
    let shared = &overload.shared;
    let path = req.uri().path().to_string();
    let Ok(call_permit) = shared.requests.clone().try_acquire_owned() else {
        return Ok(overload.shed(Limit::Requests, &path, 0));
    };
    let timeout = shared.limits.request_timeout;
    let (mut parts, body) = req.into_parts();
    lower_deadline(&mut parts.headers, timeout);
    let Ok(prefixed) = tokio::time::timeout(timeout, Prefixed::read(body)).await else {
        return Ok(timed_out(timeout));
    };
    let charge = prefixed.message_bytes().min(MAX_DECODE_BYTES);
    let byte_permit = if charge == 0 {
        None
    } else {
        let Ok(permits) = u32::try_from(charge) else {
            return Ok(overload.shed(Limit::Bytes, &path, charge));
        };
        match shared.bytes.clone().try_acquire_many_owned(permits) {
            Ok(p) => Some(p),
            Err(_) => return Ok(overload.shed(Limit::Bytes, &path, charge)),
        }
    };
    let slot = Slot(Arc::new(Mutex::new(Some((call_permit, byte_permit)))));
    parts.extensions.insert(slot.clone());
    let call = inner.call(http::Request::from_parts(parts, Body::new(prefixed)));
    tokio::pin!(call);
    let left = (timeout + TIMEOUT_GRACE).saturating_sub(started.elapsed());
    let answer = match tokio::time::timeout(left, &mut call).await {
        Ok(answer) => answer,
        Err(_) if slot.released() => call.await,
        Err(_) => Ok(timed_out(timeout)),
    };
    drop(slot);
    answer
}

/// Lowers the caller's `grpc-timeout` to `max` when it asks for more.
fn lower_deadline(headers: &mut http::HeaderMap, max: Duration) {
    let asked = headers.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(rpc::deadline::parse_grpc_timeout);
    if asked.is_some_and(|d| d > max)
        && let Ok(v) = http::HeaderValue::from_str(&format!("{}m", max.as_millis().min(99_999_999)))
    {
        headers.insert("grpc-timeout", v);
    }
}

/// The answer to a call still running past the request timeout.
fn timed_out(timeout: Duration) -> http::Response<Body> {
    timed_out_status(timeout).into_http()
}

/// [`timed_out`]'s status.
fn timed_out_status(timeout: Duration) -> tonic::Status {
    tonic::Status::from(ServiceError::DeadlineExceeded(format!(
        "the request ran longer than this node's request timeout (--request-timeout, {timeout:?}); a write's outcome is unknown: read the key before retrying"
    )))
}

/// A request body whose first frames were read (to learn the message's length) and are
/// handed on before the rest.
#[derive(Debug)]
struct Prefixed {
    head: VecDeque<Result<Frame<Bytes>, tonic::Status>>,
    /// The data bytes of `head` (the message prefix among them).
    head_data: Vec<u8>,
    rest: Body,
    /// The body ended while its first frames were read.
    ended: bool,
}

impl Prefixed {
    /// Reads frames of `body` until the 5-byte message prefix is in, the body ends or fails.
    async fn read(mut body: Body) -> Self {
        let mut head = VecDeque::new();
        let mut head_data = Vec::new();
        let mut ended = false;
        while head_data.len() < PREFIX_BYTES {
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                None => {
                    ended = true;
                    break;
                }
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        head_data.extend_from_slice(&data.chunk()[..data.len().min(PREFIX_BYTES)]);
                    }
                    head.push_back(Ok(frame));
                }
                Some(Err(e)) => {
                    head.push_back(Err(e));
                    ended = true;
                    break;
                }
            }
        }
        Self { head, head_data, rest: body, ended }
    }

    /// The size of the first message on the wire (prefix included), as its prefix says; 0
    /// when the body ended before a whole prefix.
    fn message_bytes(&self) -> usize {
        match self.head_data.get(1..PREFIX_BYTES) {
            Some(len) => {
                let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
                usize::try_from(len).unwrap_or(usize::MAX).saturating_add(PREFIX_BYTES)
            }
            None => 0,
        }
    }
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        if let Some(frame) = this.head.pop_front() {
            return Poll::Ready(Some(frame));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        Pin::new(&mut this.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && (self.ended || self.rest.is_end_stream())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inner service that answers OK after `wait`, echoing the body's length in a header.
    #[derive(Clone)]
    struct Echo {
        wait: Duration,
    }

    impl tower::Service<http::Request<Body>> for Echo {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<Body>) -> Self::Future {
            let wait = self.wait;
            Box::pin(async move {
                let (parts, mut body) = req.into_parts();
                let blocking = parts.headers.contains_key("x-test-blocking");
                let mut len = 0;
                while let Some(Ok(frame)) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                    len += frame.data_ref().map_or(0, Bytes::len);
                }
                if blocking {
                    release(&parts.extensions);
                }
                tokio::time::sleep(wait).await;
                let mut resp = tonic::Status::ok("").into_http();
                if let Ok(v) = http::HeaderValue::from_str(&len.to_string()) {
                    resp.headers_mut().insert("x-test-len", v);
                }
                if let Some(t) = parts.headers.get("grpc-timeout") {
                    resp.headers_mut().insert("x-test-timeout", t.clone());
                }
                Ok(resp)
            })
        }
    }

    fn grpc_request(message: usize) -> http::Request<Body> {
        let mut data = vec![0u8; PREFIX_BYTES + message];
        data[1..PREFIX_BYTES].copy_from_slice(&u32::try_from(message).unwrap_or(u32::MAX).to_be_bytes());
        let body = http_body_util_full(Bytes::from(data));
        let mut req = http::Request::new(body);
        *req.uri_mut() = http::Uri::from_static("/raftkv.v1.KV/Put");
        req
    }

    /// A body of one frame, split in two to exercise a prefix across frames.
    fn http_body_util_full(data: Bytes) -> Body {
        let split = data.len().min(3);
        let frames = vec![Ok(Frame::data(data.slice(..split))), Ok(Frame::data(data.slice(split..)))];
        Body::new(Prefixed {
            head: frames.into_iter().collect(),
            head_data: Vec::new(),
            rest: Body::empty(),
            ended: true,
        })
    }

    fn code(resp: &http::Response<Body>) -> tonic::Code {
        tonic::Status::from_header_map(resp.headers()).map_or(tonic::Code::Ok, |s| s.code())
    }

    fn header(resp: &http::Response<Body>, name: &str) -> Option<String> {
        resp.headers().get(name).and_then(|v| v.to_str().ok()).map(String::from)
    }

    fn limits(requests: usize, bytes: usize) -> OverloadLimits {
        OverloadLimits {
            max_in_flight_requests: requests,
            max_in_flight_request_bytes: bytes,
            request_timeout: Duration::from_secs(5),
            max_client_connections: DEFAULT_MAX_CLIENT_CONNECTIONS,
        }
    }

    #[tokio::test]
    async fn calls_past_the_limit_are_shed_at_once_and_retryable() {
        let overload = Overload::new("n1", limits(2, 8 << 20));
        let guard = overload.guard(Echo { wait: Duration::from_millis(300) });
        let running: Vec<_> =
            (0..2).map(|_| tokio::spawn(guarded(overload.clone(), guard.inner.clone(), grpc_request(10)))).collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(overload.in_flight().0, 2);
        let started = Instant::now();
        let Ok(shed) = guarded(overload.clone(), guard.inner.clone(), grpc_request(10)).await;
        assert!(started.elapsed() < Duration::from_millis(200), "shed at once, not queued");
        assert_eq!(code(&shed), tonic::Code::ResourceExhausted);
        assert_eq!(header(&shed, crate::RETRYABLE_HEADER).as_deref(), Some("true"));
        let message =
            tonic::Status::from_header_map(shed.headers()).map(|s| s.message().to_string()).unwrap_or_default();
        assert!(message.contains("--max-in-flight-requests") && message.contains("retry"), "{message}");
        for r in running {
            let Ok(Ok(resp)) = r.await else { panic!("the call failed") };
            assert_eq!(code(&resp), tonic::Code::Ok);
            assert_eq!(header(&resp, "x-test-len").as_deref(), Some("15"), "the whole body reaches the handler");
        }
        assert_eq!(overload.in_flight(), (0, 0), "every place is given back");
        let Ok(after) = guarded(overload.clone(), guard.inner.clone(), grpc_request(10)).await;
        assert_eq!(code(&after), tonic::Code::Ok, "served again once the load is gone");
    }

    #[tokio::test]
    async fn bodies_past_the_byte_budget_are_shed() {
        let overload = Overload::new("n1", limits(100, MIN_IN_FLIGHT_REQUEST_BYTES));
        let echo = Echo { wait: Duration::from_millis(300) };
        let big = MIN_IN_FLIGHT_REQUEST_BYTES / 2;
        let first = tokio::spawn(guarded(overload.clone(), echo.clone(), grpc_request(big)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(overload.in_flight(), (1, big + PREFIX_BYTES));
        let Ok(shed) = guarded(overload.clone(), echo.clone(), grpc_request(big)).await;
        assert_eq!(code(&shed), tonic::Code::ResourceExhausted);
        let message =
            tonic::Status::from_header_map(shed.headers()).map(|s| s.message().to_string()).unwrap_or_default();
        assert!(message.contains("--max-in-flight-request-bytes"), "{message}");
        // A small one still fits beside the first.
        let Ok(small) = guarded(overload.clone(), echo.clone(), grpc_request(100)).await;
        assert_eq!(code(&small), tonic::Code::Ok);
        let Ok(Ok(first)) = first.await else { panic!("the call failed") };
        assert_eq!(code(&first), tonic::Code::Ok);
        assert_eq!(overload.in_flight(), (0, 0));
    }

    #[tokio::test]
    async fn a_call_past_the_request_timeout_is_cut_off_unless_it_gave_its_place_back() {
        let mut l = limits(10, 8 << 20);
        l.request_timeout = Duration::from_millis(100);
        let overload = Overload::new("n1", l);
        let echo = Echo { wait: TIMEOUT_GRACE + Duration::from_millis(300) };
        let Ok(cut) = guarded(overload.clone(), echo.clone(), grpc_request(1)).await;
        assert_eq!(code(&cut), tonic::Code::DeadlineExceeded);
        assert_eq!(overload.in_flight(), (0, 0));
        let mut blocking = grpc_request(1);
        blocking.headers_mut().insert("x-test-blocking", http::HeaderValue::from_static("1"));
        let Ok(waited) = guarded(overload.clone(), echo, blocking).await;
        assert_eq!(code(&waited), tonic::Code::Ok, "a released call is not cut off");
    }

    #[tokio::test]
    async fn a_longer_caller_deadline_is_lowered_to_the_request_timeout() {
        let overload = Overload::new("n1", limits(10, 8 << 20));
        let echo = Echo { wait: Duration::ZERO };
        let mut long = grpc_request(1);
        long.headers_mut().insert("grpc-timeout", http::HeaderValue::from_static("60S"));
        let Ok(resp) = guarded(overload.clone(), echo.clone(), long).await;
        assert_eq!(header(&resp, "x-test-timeout").as_deref(), Some("5000m"));
        let mut short = grpc_request(1);
        short.headers_mut().insert("grpc-timeout", http::HeaderValue::from_static("2S"));
        let Ok(resp) = guarded(overload, echo, short).await;
        assert_eq!(header(&resp, "x-test-timeout").as_deref(), Some("2S"));
    }

    #[test]
    fn limits_are_checked_at_and_past_their_bounds() {
        assert!(OverloadLimits::default().validate().is_ok());
        assert!(limits(1, MIN_IN_FLIGHT_REQUEST_BYTES).validate().is_ok());
        let err = limits(0, MIN_IN_FLIGHT_REQUEST_BYTES).validate().err().unwrap_or_default();
        assert!(err.contains("--max-in-flight-requests"), "{err}");
        let err = limits(1, MIN_IN_FLIGHT_REQUEST_BYTES - 1).validate().err().unwrap_or_default();
        assert!(err.contains("--max-in-flight-request-bytes"), "{err}");
        let mut l = limits(1, MIN_IN_FLIGHT_REQUEST_BYTES);
        l.request_timeout = Duration::from_millis(99);
        assert!(l.validate().err().unwrap_or_default().contains("--request-timeout"));
        let mut l = limits(1, MIN_IN_FLIGHT_REQUEST_BYTES);
        l.max_client_connections = 1;
        assert!(l.validate().is_ok());
        l.max_client_connections = 0;
        assert!(l.validate().err().unwrap_or_default().contains("--max-client-connections"));
    }
}
