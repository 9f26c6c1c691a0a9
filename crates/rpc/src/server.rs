//! The one place a [`tonic::transport::Server`] is built: both ports of a node are served by
//! [`serve`], with the transport limits and the edge rewording, in plaintext or over TLS
//! ([`ServerTls`]: handshakes run beside the accept loop, each bounded by
//! [`HANDSHAKE_TIMEOUT`], with the configuration re-read when its files change).
//!
//! A port may have a connection limit ([`PortLimits::max_connections`], the client port's
//! `--max-client-connections`): the accept loop counts the connections open, and one past
//! the limit is refused at accept, before any HTTP/2 or TLS work, so a flood of connections
//! costs the node an `accept` and a few bytes each, not a connection's buffers and tasks.
//! In plaintext the refused connection gets the HTTP/2 server preface and a `GOAWAY` with
//! last stream id 0 and `REFUSED_STREAM` (RFC 9113 §6.8: no stream was processed, so every
//! request on it is safe to retry, writes included), whose debug data says why; gRPC clients
//! map it to `UNAVAILABLE`, the code they treat as transient. Over TLS the connection is
//! closed at accept (a GOAWAY would need the handshake, the costly part); the client sees a
//! failed connection, also `UNAVAILABLE`, before any request was sent.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::service::RoutesBuilder;
use tonic::transport::Server;
use tonic::transport::server::Connected;

use crate::tls::{HANDSHAKE_TIMEOUT, MAX_PENDING_HANDSHAKES, ServerTls};

use crate::limits::{
    MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_BYTES, MAX_PENDING_ACCEPT_RESET_STREAMS, MAX_REFUSING_CONNECTIONS,
    REFUSE_LINGER,
};
use crate::metered::MetricsLayer;
use crate::status::{decode_limit_status, unknown_method_status};

/// How long the accept loop waits after `accept` fails (out of file descriptors, say)
/// before it tries again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// How many accepted (and, over TLS, handshaken) connections may wait for the server to
/// take them.
const ACCEPT_QUEUE: usize = 64;
/// At most one warning about refused connections is logged per this interval.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The limits one port applies beyond the common ones of [`crate::limits`].
#[derive(Debug, Clone, Default)]
pub struct PortLimits {
    /// The most connections open at once (`None`: no limit). Past it a connection is
    /// refused at accept (see the module docs).
    pub max_connections: Option<usize>,
    /// Why a connection is refused, for the client (the GOAWAY's debug data) and the log:
    /// say which node, which limit and flag, and that retrying with backoff is safe.
    pub refusal: String,
    /// The HTTP/2 flow-control windows of each connection and each stream, in bytes
    /// (`None`: hyper's, 1 MiB): the most request bytes a connection can push before the
    /// server reads them, so the node's buffers are bounded by connections times this.
    pub window_bytes: Option<u32>,
}

/// Serves `routes` on `listener` (TCP_NODELAY on, HTTP/2 keepalive pings every 10 s, the
/// [limits](crate::limits) and the port's `limits`, every call measured by
/// [`MetricsLayer`]) until `shutdown` resolves, then drains the calls in flight; over TLS
/// when `tls` is given (only), in plaintext otherwise. The task ends with the server's
/// error, if any.
pub fn serve(
    routes: RoutesBuilder,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    limits: PortLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<Result<(), tonic::transport::Error>> {
    let server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .initial_connection_window_size(limits.window_bytes)
        .initial_stream_window_size(limits.window_bytes)
        // Outermost, so it counts the codes callers see (after the rewording below).
        .layer(MetricsLayer)
        .layer(tower::util::MapResponseLayer::new(reword_edge_status))
        .add_routes(routes.routes());
    let gate = Arc::new(Gate::new(&limits));
    let (stop_tx, stop_rx) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    match tls {
        None => {
            let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
            tokio::spawn(accept_plain(listener, gate, tx, stop_rx));
            let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
            tokio::spawn(async move { server.serve_with_incoming_shutdown(incoming, shutdown).await })
        }
        Some(tls) => {
            let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
            tokio::spawn(accept_tls(listener, tls, gate, tx, stop_rx));
            let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
            tokio::spawn(async move { server.serve_with_incoming_shutdown(incoming, shutdown).await })
        }
    }
}

/// The connection limit of one port: a permit per open connection, and the refusals.
#[derive(Debug)]
struct Gate {
    /// One permit per connection that may be open (`None`: no limit).
    open: Option<Arc<Semaphore>>,
    limit: usize,
    /// The refused plaintext connections being answered (a GOAWAY) at once.
    refusing: Arc<Semaphore>,
    /// The HTTP/2 frames a refused plaintext connection gets.
    goaway: bytes::Bytes,
    refusal: String,
    refused: AtomicU64,
    /// Milliseconds since `epoch` of the last warning.
    last_warn_ms: AtomicU64,
    epoch: Instant,
}

impl Gate {
    fn new(limits: &PortLimits) -> Self {
        let limit = limits.max_connections.map_or(0, |n| n.clamp(1, Semaphore::MAX_PERMITS));
        Self {
            open: limits.max_connections.map(|_| Arc::new(Semaphore::new(limit))),
            limit,
            refusing: Arc::new(Semaphore::new(MAX_REFUSING_CONNECTIONS)),
            goaway: goaway_frames(limits.refusal.as_bytes()),
            refusal: limits.refusal.clone(),
            refused: AtomicU64::new(0),
            last_warn_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// A connection's place, `Ok(None)` when the port has no limit, `Err` past the limit.
    fn admit(&self) -> Result<Option<OwnedSemaphorePermit>, ()> {
        match &self.open {
            None => Ok(None),
            Some(open) => open.clone().try_acquire_owned().map(Some).map_err(|_| ()),
        }
    }

    /// Logs a refusal: a warning at most every [`WARN_EVERY`] with the count since the last.
    fn note_refused(&self, peer: SocketAddr) {
        let count = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        let every = u64::try_from(WARN_EVERY.as_millis()).unwrap_or(u64::MAX);
        if (last == 0 || now.saturating_sub(last) >= every)
            && self.last_warn_ms.compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(%peer, limit = self.limit, refused_so_far = count, reason = %self.refusal, "refusing connections past the limit (logged at most every 10 s)");
        } else {
            tracing::debug!(%peer, limit = self.limit, "connection refused");
        }
    }
}

/// The HTTP/2 server preface (an empty SETTINGS frame) and a GOAWAY frame with last stream
/// id 0, `REFUSED_STREAM` and `debug` (cut to fit one frame of the default size).
fn goaway_frames(debug: &[u8]) -> bytes::Bytes {
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const REFUSED_STREAM: u32 = 0x7;
    let debug = &debug[..debug.len().min(16_384 - 8)];
    let mut out = Vec::with_capacity(9 + 9 + 8 + debug.len());
    out.extend_from_slice(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]);
    let len = u32::try_from(8 + debug.len()).unwrap_or(8).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], GOAWAY, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&REFUSED_STREAM.to_be_bytes());
    out.extend_from_slice(debug);
    out.into()
}

/// Answers a refused plaintext connection with [`goaway_frames`], then reads what the
/// client still sends until it closes (so the kernel does not reset the connection before
/// the client has read the GOAWAY), for at most [`REFUSE_LINGER`]. At most
/// [`MAX_REFUSING_CONNECTIONS`] at once; past that, [`refuse_at_once`].
fn refuse_plain(gate: &Gate, mut tcp: TcpStream) {
    let frames = gate.goaway.clone();
    let Ok(permit) = gate.refusing.clone().try_acquire_owned() else {
        refuse_at_once(&tcp, &frames);
        return;
    };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSE_LINGER, async {
            if tcp.write_all(&frames).await.is_err() || tcp.shutdown().await.is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            while let Ok(n) = tcp.read(&mut buf).await
                && n > 0
            {}
        })
        .await;
        drop(permit);
    });
}

/// Refuses a plaintext connection without a task or a wait, when [`MAX_REFUSING_CONNECTIONS`]
/// are lingering already (a flood of thousands of connections at once): the GOAWAY if the
/// socket takes it at once, then whatever the client has sent so far read and dropped, so
/// that the close is a FIN. Linux answers the close of a socket with unread data with a
/// reset, which a client can see before it reads the GOAWAY ("connection reset", outcome
/// unknown) instead of a refusal it may retry. Data that arrives after the close still
/// draws a reset: this is the best effort that costs nothing per connection.
fn refuse_at_once(tcp: &TcpStream, frames: &[u8]) {
    let _ = tcp.try_write(frames);
    let mut buf = [0u8; 4096];
    // More than a client can send before it reads our settings: HTTP/2's default window
    // (64 KiB) and its headers.
    for _ in 0..REFUSE_DRAIN_READS {
        match tcp.try_read(&mut buf) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

/// The most reads of [`refuse_at_once`]: 4 KiB each, 1 MiB in all.
const REFUSE_DRAIN_READS: usize = 256;

/// A connection holding its place under the port's connection limit until it is dropped.
#[derive(Debug)]
pub struct Counted<IO> {
    io: IO,
    _place: Option<OwnedSemaphorePermit>,
}

impl<IO: Connected> Connected for Counted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accepts one connection; `None` when the port stops. Errors of `accept` (out of file
/// descriptors, say) are logged and retried after [`ACCEPT_ERROR_BACKOFF`].
async fn accept_one(listener: &TcpListener, stop: &mut watch::Receiver<bool>) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(accepted) => return Some(accepted),
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// The accept loop of a plaintext port: a connection within the limit goes to the server
/// through `tx` (TCP_NODELAY on); one past it is refused ([`refuse_plain`]).
async fn accept_plain(
    listener: TcpListener,
    gate: Arc<Gate>,
    tx: mpsc::Sender<Result<Counted<TcpStream>, std::io::Error>>,
    mut stop: watch::Receiver<bool>,
) {
    while let Some((tcp, peer)) = accept_one(&listener, &mut stop).await {
        let Ok(place) = gate.admit() else {
            gate.note_refused(peer);
            refuse_plain(&gate, tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        if tx.send(Ok(Counted { io: tcp, _place: place })).await.is_err() {
            return;
        }
    }
}

/// The accept loop of a TLS port: a connection past the port's limit is closed at once;
/// each other connection's handshake runs in its own task (at most
/// [`MAX_PENDING_HANDSHAKES`] at once, each within [`HANDSHAKE_TIMEOUT`]); a connection
/// that completes it, and whose certificate passes [`ServerTls::check_allowed`], goes to
/// the server through `tx`. A refused handshake is logged with the peer's address; no
/// request of it reaches a service.
async fn accept_tls(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    gate: Arc<Gate>,
    tx: mpsc::Sender<Result<Counted<TlsStream<TcpStream>>, std::io::Error>>,
    mut stop: watch::Receiver<bool>,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    while let Some((tcp, peer)) = accept_one(&listener, &mut stop).await {
        let Ok(place) = gate.admit() else {
            gate.note_refused(peer);
            continue;
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = MAX_PENDING_HANDSHAKES, "too many TLS handshakes in progress; closing the connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (tls, tx) = (tls.clone(), tx.clone());
        tokio::spawn(async move {
            if let Some(stream) = handshake(tcp, peer, &tls).await {
                let _ = tx.send(Ok(Counted { io: stream, _place: place })).await;
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A refused connection whose client had already sent a request body gets the GOAWAY and
    /// then a clean end of stream, not a reset, even when no task lingers for it.
    #[tokio::test]
    async fn a_connection_refused_at_once_ends_with_the_goaway_not_a_reset() -> std::io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut client = TcpStream::connect(listener.local_addr()?).await?;
        let sent = vec![7u8; 64 << 10];
        client.write_all(&sent).await?;
        let (server, _) = listener.accept().await?;
        // Wait until everything the client sent is in the server's receive queue.
        let mut peek = vec![0u8; sent.len()];
        tokio::time::timeout(Duration::from_secs(10), async {
            while server.peek(&mut peek).await? < sent.len() {
                tokio::task::yield_now().await;
            }
            Ok::<_, std::io::Error>(())
        })
        .await??;
        let frames = goaway_frames(b"past the limit");
        refuse_at_once(&server, &frames);
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await?;
        assert_eq!(got, frames.to_vec(), "the client reads the GOAWAY, then the end");
        Ok(())
    }
}
