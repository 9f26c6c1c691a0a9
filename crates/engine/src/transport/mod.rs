//! Raft traffic over gRPC (`raftkv.raft.v1.Raft`), both sides.
//!
//! - [`client`]: openraft's [`RaftNetworkFactory`](openraft::network::RaftNetworkFactory)
//!   and [`RaftNetworkV2`](openraft::network::v2::RaftNetworkV2): one reused HTTP/2
//!   connection per peer address, TCP_NODELAY on, a deadline on every RPC.
//! - [`server`]: the handlers, each one call into openraft.
//!
//! Messages are openraft's own types in the [`types::codec`] encoding (postcard behind a
//! format byte), carried in `RaftMessage.payload`. Snapshots are client-streamed in
//! [`SNAPSHOT_CHUNK_BYTES`] chunks with a CRC32 over the data; the receiver writes each
//! chunk to a file as it arrives, so memory stays bounded whatever the snapshot size.

pub mod client;
pub mod server;

use std::time::Duration;

/// The size of one snapshot data chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// The deadline of a whole snapshot transfer.
pub const SNAPSHOT_TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);
/// The largest Raft message accepted (a batch of entries can carry many large values).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 512 << 20;
/// How long connecting to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
