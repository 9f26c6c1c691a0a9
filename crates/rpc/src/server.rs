//! The one place a [`tonic::transport::Server`] is built: both ports of a node are served by
//! [`serve`], with the transport limits and the edge rewording. TLS settings go here.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::service::RoutesBuilder;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::limits::{MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_BYTES, MAX_PENDING_ACCEPT_RESET_STREAMS};
use crate::status::{decode_limit_status, unknown_method_status};

/// Serves `routes` on `listener` (TCP_NODELAY on, HTTP/2 keepalive pings every 10 s, the
/// [limits](crate::limits)) until `shutdown` resolves, then drains the calls in flight. The
/// task ends with the server's error, if any.
pub fn serve(
    routes: RoutesBuilder,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<Result<(), tonic::transport::Error>> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .layer(tower::util::MapResponseLayer::new(reword_edge_status))
        .add_routes(routes.routes());
    tokio::spawn(async move { server.serve_with_incoming_shutdown(incoming, shutdown).await })
}

/// Rewords two of tonic's own answers at the server's edge: a message over the gRPC decode
/// limit is answered like every other limit, `INVALID_ARGUMENT` naming the limit (tonic says
/// `OUT_OF_RANGE`), and an unknown service or method gets a message saying what to check
/// (tonic's is empty). Both are in the headers of a trailers-only response, so rewriting them
/// is enough.
fn reword_edge_status<B>(mut resp: tonic::codegen::http::Response<B>) -> tonic::codegen::http::Response<B> {
    if let Some(status) = tonic::Status::from_header_map(resp.headers())
        && let Some((code, message)) = decode_limit_status(status.code(), status.message())
            .or_else(|| unknown_method_status(status.code(), status.message()))
    {
        let _ = tonic::Status::new(code, message).add_header(resp.headers_mut());
    }
    resp
}
