//! The transport limits both ports apply, before any handler runs.

/// The largest gRPC message decoded, in bytes (2 MiB), by the servers and the client. A
/// larger one is refused before any handler runs (answered `INVALID_ARGUMENT` by
/// [`decode_limit_status`](crate::status::decode_limit_status)).
pub const MAX_DECODE_BYTES: usize = 2 << 20;
/// The most HTTP/2 streams (calls) one connection may have open at once, on both ports
/// (`SETTINGS_MAX_CONCURRENT_STREAMS`). A client past it is refused further streams
/// (`REFUSED_STREAM`) until some end; other connections are unaffected. Without it hyper
/// sets no bound.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// The largest header block (request metadata, uncompressed) accepted, in bytes
/// (`SETTINGS_MAX_HEADER_LIST_SIZE`, 16 KiB). A larger one is refused before any handler
/// runs.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 << 10;
/// The most streams a client may open and reset before the server has accepted them
/// (HTTP/2 rapid reset, CVE-2023-44487); past it the connection is closed with
/// `ENHANCE_YOUR_CALM`.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// The HTTP/2 flow-control window of each client-port connection and stream, in bytes
/// (256 KiB; hyper's default is 1 MiB): the most request bytes one connection can push
/// before the node reads them, so the client port's buffers stay under
/// `--max-client-connections` times this. A 1 MiB value takes four window updates.
pub const CLIENT_PORT_WINDOW_BYTES: u32 = 256 << 10;
/// The most connections refused past a port's connection limit that are answered (a
/// GOAWAY, then a wait for the client to close first) at once; past it a refused connection
/// gets the GOAWAY only if its socket takes it at once, and is closed.
pub const MAX_REFUSING_CONNECTIONS: usize = 4096;
/// How long a refused connection is kept, after its GOAWAY, for the client to read it and
/// close first.
pub const REFUSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);
