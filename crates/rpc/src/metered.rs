//! [`MetricsLayer`]: per-RPC request counts and latency, by service, method and gRPC status
//! code, recorded through the `metrics` facade (nothing when no recorder is installed). Every
//! server built by [`crate::server::serve`] has it, so both ports of a node are measured.
//!
//! The code is read where gRPC puts it: in the response headers of a trailers-only answer
//! (every error tonic makes), else in the trailers at the end of the body; a response body
//! dropped before its end (the client went away, a stream cancelled) counts as `Cancelled`.
//! The latency is the time until that moment, so for a stream (`Watch`) it is the stream's
//! life. A call to a service or method the server does not have is labelled `unknown`, so
//! that no caller can make the label set grow without bound.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::codegen::{Body, Service};
use tower::Layer;

/// Counter: calls served, labels `service`, `method`, `code`.
pub const REQUESTS_METRIC: &str = "raftkv_grpc_requests_total";
/// Histogram: seconds from a call's arrival to its status, same labels.
pub const DURATION_METRIC: &str = "raftkv_grpc_request_duration_seconds";

/// The label of a service or method the server does not have.
const UNKNOWN: &str = "unknown";

/// The tower layer that measures every call; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> Layer<S> for MetricsLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered { inner }
    }
}

/// A service whose calls are measured ([`MetricsLayer`]).
#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for Metered<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    RB: Body + Send + 'static,
{
    type Response = Response<MeteredBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let call = Call::new(req.uri().path());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let mut call = Some(call);
            if let Some(code) = grpc_code(resp.headers())
                && let Some(c) = call.take()
            {
                c.finish(code);
            }
            Ok(resp.map(|inner| MeteredBody { inner: Box::pin(inner), call }))
        })
    }
}

/// One call being measured.
#[derive(Debug)]
struct Call {
    service: String,
    method: String,
    started: Instant,
}

impl Call {
    fn new(path: &str) -> Self {
        let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((UNKNOWN, UNKNOWN));
        Self { service: service.to_string(), method: method.to_string(), started: Instant::now() }
    }

    /// Records the call with its status code.
    fn finish(self, code: tonic::Code) {
        let (service, method) = if code == tonic::Code::Unimplemented {
            (UNKNOWN.to_string(), UNKNOWN.to_string())
        } else {
            (self.service, self.method)
        };
        let code = code_label(code);
        let labels = [("service", service), ("method", method), ("code", code.to_string())];
        metrics::counter!(REQUESTS_METRIC, &labels).increment(1);
        metrics::histogram!(DURATION_METRIC, &labels).record(self.started.elapsed());
    }
}

/// The code's name as gRPC's own libraries spell it (`OK`, `NotFound`, ...).
fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// The `grpc-status` in `headers`, if there is one.
fn grpc_code(headers: &HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(tonic::Code::from(value.parse::<i32>().ok()?))
}

/// A response body that records its call when its trailers arrive, or when it is dropped
/// unfinished.
pub struct MeteredBody<B> {
    inner: Pin<Box<B>>,
    call: Option<Call>,
}

impl<B> std::fmt::Debug for MeteredBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredBody").field("call", &self.call).finish_non_exhaustive()
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = this.inner.as_mut().poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(code) = frame.trailers_ref().and_then(grpc_code)
            && let Some(call) = this.call.take()
        {
            call.finish(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.finish(tonic::Code::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_splits_into_service_and_method() {
        let c = Call::new("/raftkv.v1.KV/Put");
        assert_eq!((c.service.as_str(), c.method.as_str()), ("raftkv.v1.KV", "Put"));
        let c = Call::new("nonsense");
        assert_eq!((c.service.as_str(), c.method.as_str()), (UNKNOWN, UNKNOWN));
    }

    #[test]
    fn codes_are_read_from_the_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(grpc_code(&h), None);
        h.insert("grpc-status", tonic::codegen::http::HeaderValue::from_static("5"));
        assert_eq!(grpc_code(&h), Some(tonic::Code::NotFound));
        assert_eq!(code_label(tonic::Code::Ok), "OK");
        assert_eq!(code_label(tonic::Code::NotFound), "NotFound");
    }
}
