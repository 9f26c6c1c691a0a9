//! The Raft port (`raftkv.raft.v1.Raft`), both ways: everything one node says to another.
//!
//! - [`client`]: openraft's [`RaftNetworkFactory`](openraft::network::RaftNetworkFactory)
//!   and [`RaftNetworkV2`](openraft::network::v2::RaftNetworkV2): one reused HTTP/2
//!   connection per peer address, TCP_NODELAY on, a deadline on every RPC. Replication is
//!   pipelined: openraft's `stream_append` sends each session's AppendEntries requests on one
//!   bidirectional `StreamAppend` call without waiting for earlier answers.
//! - [`server`]: the handlers, each one call into openraft (and [`LeaderContact`], touched
//!   by every AppendEntries).
//! - [`calls`]: the calls a node's services make to another node's Raft port: a follower's
//!   read index from the leader (`calls::LeaderReadIndex`, how `linearizable` asks the
//!   leader), and `Identify` (who listens at a Raft address).
//!
//! With TLS on, the node-id rule holds both ways: [`client`] verifies each peer's
//! certificate for the peer's node id, and [`server`] refuses (`PERMISSION_DENIED`) any
//! message naming a sender whose id the connection's client certificate does not name
//! ([`rpc::tls::check_claimed_id`]).
//!
//! Messages are openraft's own types in the [`types::codec`] encoding (postcard behind a
//! format byte), carried in `RaftMessage.payload`. Snapshots are client-streamed in
//! [`SNAPSHOT_CHUNK_BYTES`] chunks with a CRC32 over the data; the receiver writes each
//! chunk to a file as it arrives, so memory stays bounded whatever the snapshot size. Both
//! sides log a transfer's progress every [`SNAPSHOT_PROGRESS_INTERVAL`].
//!
//! This crate must never depend on `service`, `compat`, `client` or `engine` (the API layer
//! and the composition root sit above it); `cargo xtask deps` checks this.

pub mod calls;
pub mod client;
mod contact;
pub mod server;
mod transfer_log;

pub use contact::LeaderContact;
pub use transfer_log::SNAPSHOT_PROGRESS_INTERVAL;

use std::time::Duration;

/// The size of one snapshot data chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// The deadline of a whole snapshot transfer.
pub const SNAPSHOT_TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);
/// The largest Raft message accepted (a batch of entries can carry many large values).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 512 << 20;
/// The histogram of the size of each AppendEntries message a node receives (its encoded
/// payload): what the leader's `--max_append_bytes` bounds.
pub const APPEND_MESSAGE_BYTES_METRIC: &str = "raftkv_raft_append_message_bytes";
/// How long connecting to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The shortest deadline of an AppendEntries call. openraft asks for one heartbeat interval
/// (50-100 ms), which a follower's fsync of a batch of large values, a loaded machine or a
/// slow link can exceed on every attempt: the follower would then never catch up, and with
/// two such followers no write would commit. etcd gives its peer connections a 5 s read
/// timeout for the same reason. A dead peer is still noticed by the heartbeats, which keep
/// their own short deadlines.
pub const APPEND_MIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The slowest transfer rate an AppendEntries call is given time for: on top of
/// [`APPEND_MIN_TIMEOUT`], each 10 MiB of encoded entries adds one second.
pub const APPEND_MIN_BYTES_PER_SEC: u64 = 10 << 20;

/// The deadline of an AppendEntries call of `bytes` encoded bytes that openraft asked to
/// finish within `asked`: see [`APPEND_MIN_TIMEOUT`] and [`APPEND_MIN_BYTES_PER_SEC`].
#[must_use]
pub fn append_timeout(asked: Duration, bytes: usize) -> Duration {
    let transfer =
        Duration::from_millis(u64::try_from(bytes).unwrap_or(u64::MAX).saturating_mul(1000) / APPEND_MIN_BYTES_PER_SEC);
    asked.max(APPEND_MIN_TIMEOUT).saturating_add(transfer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_deadline_has_a_floor_and_grows_with_the_payload() {
        // A heartbeat interval is not enough time for a batch of entries.
        assert_eq!(append_timeout(Duration::from_millis(50), 0), APPEND_MIN_TIMEOUT);
        assert_eq!(append_timeout(Duration::from_millis(50), 10 << 20), APPEND_MIN_TIMEOUT + Duration::from_secs(1));
        assert_eq!(
            append_timeout(Duration::from_millis(50), MAX_RAFT_MESSAGE_BYTES),
            APPEND_MIN_TIMEOUT + Duration::from_millis(51_200)
        );
        // A longer deadline asked for is kept.
        assert_eq!(append_timeout(Duration::from_secs(7), 0), Duration::from_secs(7));
        assert_eq!(append_timeout(Duration::MAX, usize::MAX), Duration::MAX);
    }
}
