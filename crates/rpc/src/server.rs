//! The one place a [`tonic::transport::Server`] is built: both ports of a node are served by
//! [`serve`], with the transport limits and the edge rewording, in plaintext or over TLS
//! ([`ServerTls`]: handshakes run beside the accept loop, each bounded by
//! [`HANDSHAKE_TIMEOUT`], with the configuration re-read when its files change).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::service::RoutesBuilder;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::tls::{HANDSHAKE_TIMEOUT, MAX_PENDING_HANDSHAKES, ServerTls};

use crate::limits::{MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_BYTES, MAX_PENDING_ACCEPT_RESET_STREAMS};
use crate::metered::MetricsLayer;
use crate::status::{decode_limit_status, unknown_method_status};

/// How long the accept loop waits after `accept` fails (out of file descriptors, say)
/// before it tries again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// How many handshaken TLS connections may wait for the server to take them.
const TLS_QUEUE: usize = 64;

/// Serves `routes` on `listener` (TCP_NODELAY on, HTTP/2 keepalive pings every 10 s, the
/// [limits](crate::limits), every call measured by [`MetricsLayer`]) until `shutdown` resolves, then drains the calls in flight; over
/// TLS when `tls` is given (only), in plaintext otherwise. The task ends with the server's
/// error, if any.
pub fn serve(
    routes: RoutesBuilder,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<Result<(), tonic::transport::Error>> {
    let server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        // Outermost, so it counts the codes callers see (after the rewording below).
        .layer(MetricsLayer)
        .layer(tower::util::MapResponseLayer::new(reword_edge_status))
        .add_routes(routes.routes());
    match tls {
        None => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::spawn(async move { server.serve_with_incoming_shutdown(incoming, shutdown).await })
        }
        Some(tls) => {
            let (stop_tx, stop_rx) = watch::channel(false);
            let (tx, rx) = mpsc::channel(TLS_QUEUE);
            tokio::spawn(accept_tls(listener, tls, tx, stop_rx));
            let shutdown = async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            };
            let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
            tokio::spawn(async move { server.serve_with_incoming_shutdown(incoming, shutdown).await })
        }
    }
}

/// The accept loop of a TLS port: each connection's handshake runs in its own task (at most
/// [`MAX_PENDING_HANDSHAKES`] at once, each within [`HANDSHAKE_TIMEOUT`]); a connection
/// that completes it, and whose certificate passes [`ServerTls::check_allowed`], goes to
/// the server through `tx`. A refused handshake is logged with the peer's address; no
/// request of it reaches a service.
async fn accept_tls(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    tx: mpsc::Sender<Result<TlsStream<TcpStream>, std::io::Error>>,
    mut stop: watch::Receiver<bool>,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = MAX_PENDING_HANDSHAKES, "too many TLS handshakes in progress; closing the connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (tls, tx) = (tls.clone(), tx.clone());
        tokio::spawn(async move {
            if let Some(stream) = handshake(tcp, peer, &tls).await {
                let _ = tx.send(Ok(stream)).await;
            }
            drop(permit);
        });
    }
}

/// One server-side handshake; `None` (logged) when it fails, times out or the client's
/// certificate is not among the allowed names.
async fn handshake(tcp: TcpStream, peer: SocketAddr, tls: &ServerTls) -> Option<TlsStream<TcpStream>> {
    let acceptor = TlsAcceptor::from(tls.config());
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => match tls.check_allowed(stream.get_ref().1.peer_certificates()) {
            Ok(()) => Some(stream),
            Err(reason) => {
                tracing::warn!(%peer, %reason, "TLS client refused after the handshake");
                None
            }
        },
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, hint = handshake_hint(&e), "TLS handshake refused");
            None
        }
        Err(_) => {
            tracing::warn!(%peer, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            None
        }
    }
}

/// A word on the likely cause of a failed handshake, for the log.
fn handshake_hint(e: &std::io::Error) -> &'static str {
    let text = e.to_string();
    if text.contains("InvalidContentType") || text.contains("corrupt message") {
        "the client does not speak TLS (a plaintext client on a TLS port?)"
    } else if text.contains("expired") || text.contains("Expired") {
        "a certificate has expired"
    } else if text.contains("invalid peer certificate") {
        "the client's certificate is not signed by the CA this port trusts, has expired, or is not for a client"
    } else if text.contains("no certificates") || text.contains("NoCertificatesPresented") {
        "the client presented no certificate and this port requires one"
    } else if text.contains("received fatal alert") {
        "the client refused this node's certificate (it trusts another CA, or the name does not match)"
    } else {
        "see the error"
    }
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
