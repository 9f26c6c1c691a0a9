//! etcd's v3 gRPC API on raftkv's client port, so `etcdctl` and etcd's client libraries
//! work against raftkv unchanged.
//!
//! # Brief overview
//! - [`EtcdKv`] (`etcdserverpb.KV`): Range, Put, DeleteRange and Txn, mapped onto raftkv's
//!   write path ([`service::NodeContext::write`], forwarded once to the leader as the native
//!   KV service does) and read path ([`service::NodeContext::read_index`]: linearizable
//!   unless the request is `serializable`). Sorting and the revision filters of Range are
//!   applied here, as etcd applies them (`range`); transactions are checked and translated
//!   onto `types::WriteOp::Txn` (`txn`).
//! - [`EtcdWatch`] (`etcdserverpb.Watch`): the bidirectional watch stream over the node's
//!   change feed (`fsm`'s history and watchers, as raftkv's native watch); `KV.Compact`
//!   compacts that history through the log.
//! - [`EtcdLease`] (`etcdserverpb.Lease`): Grant, Revoke, KeepAlive, TimeToLive and Leases.
//!   Leases and their keys are replicated state (`types::lease`); their deadlines are the
//!   leader's, in memory, and the leader revokes an expired lease through the log
//!   (`lease`: expiry, extension on a new leader, keep-alives on followers).
//! - [`EtcdCluster`] (`etcdserverpb.Cluster`): MemberList, from the Raft membership;
//!   MemberAdd (a voter or a learner), MemberRemove, MemberPromote and MemberUpdate, mapped
//!   onto `service`'s membership operations (`members`: how an added member's node id and
//!   addresses are fixed).
//! - [`EtcdMaintenance`] (`etcdserverpb.Maintenance`): Status; Hash and HashKV, Snapshot,
//!   Alarm through the native Admin service's handlers (the same state hash, backup file
//!   and alarms); MoveLeader through `service::cluster`; Defragment, a no-op.
//! - [`EtcdAuth`] (`etcdserverpb.Auth`): Authenticate and the user and role RPCs over
//!   raftkv's users, roles and tokens (`auth`), and [`guard_rule`], etcd's rule of who may
//!   call what, which `service::AuthGuard` applies to every etcd service: etcd's `token`
//!   metadata, per-key permissions for KV and Watch, the root role for administration.
//! - [`EtcdError`]: etcd's own error messages and codes, and the one mapping to gRPC statuses
//!   of this crate (raftkv's own failures keep `service`'s mapping).
//!
//! # Revisions and ids
//! etcd's revision is raftkv's Raft log index: a key's `create_revision`, `mod_revision` and
//! `version` are its `create_index`, `modify_index` and `version`; a write's header
//! revision is the index it was applied at, a read's the index the node had applied. Member
//! ids are [`member_id`] of the node id (FNV-1a, 64 bits), the cluster id is [`member_id`]
//! of the cluster name (gossip's `--cluster_id`, `raftkv` by default). See
//! `docs/etcd-api.md` for what differs from etcd and why.
//!
//! This crate sits beside `compat`, over `service`; nothing below depends on it, and it
//! must never depend on `engine`, `raft-storage`, `client` or `compat`, nor directly on redb.

mod auth;
mod error;
mod kv;
mod lease;
mod maintenance;
mod members;
mod range;
mod txn;
mod watch;

pub use auth::{EtcdAuth, TOKEN_METADATA, guard_rule};
pub use error::EtcdError;
pub use kv::{EtcdKv, MAX_IGNORE_VALUE_ATTEMPTS};
pub use lease::{EXPIRY_CHECK_INTERVAL, EtcdLease, MAX_LEASE_TTL, MAX_REVOKES_PER_CHECK, MIN_LEASE_TTL};
pub use maintenance::{ETCD_VERSION, EtcdCluster, EtcdMaintenance};
pub use range::MAX_RANGE_RESPONSE_BYTES;
pub use txn::MAX_TXN_OPS;
pub use watch::{EtcdWatch, PROGRESS_NOTIFY_INTERVAL, WATCH_CATCH_UP_TIMEOUT};

use proto::etcd::etcdserverpb::ResponseHeader;
use service::NodeContext;

/// The etcd member id of a raftkv node id (or the cluster id of a cluster name): the 64-bit
/// FNV-1a hash of its bytes, never 0 (etcd reads 0 as "no member"). Stable: the same id
/// always gives the same number, on every node and across restarts.
///
/// A node id of exactly 16 lowercase hex digits, the first not 0, is the member id it spells
/// (`8e9e05c52164694d` is member `0x8e9e05c52164694d`): etcd's `MemberAdd` names the nodes it
/// adds so (see `members`), and `etcdctl` prints member ids in that form.
#[must_use]
pub fn member_id(name: &str) -> u64 {
    if let Some(id) = members::spelled_member_id(name) {
        return id;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash.max(1)
}

/// etcd's revisions and counts are `int64`; raftkv's indexes are `u64` and never get near
/// `i64::MAX`, which a value past it is clamped to.
pub(crate) fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// What every etcd service of one node shares: the node and the ids its headers carry.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) ctx: NodeContext,
    pub(crate) cluster_id: u64,
    pub(crate) member_id: u64,
}

impl Node {
    fn new(ctx: NodeContext, cluster_name: &str) -> Self {
        let member = member_id(ctx.id.as_str());
        Self { ctx, cluster_id: member_id(cluster_name), member_id: member }
    }

    /// etcd's response header at `revision`, with this node's ids and term.
    pub(crate) fn header(&self, revision: u64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision: signed(revision),
            raft_term: self.ctx.header_info().term,
        }
    }
}

/// The etcd services of one node.
#[derive(Debug, Clone)]
pub struct EtcdApi {
    /// `etcdserverpb.Auth`.
    pub auth: EtcdAuth,
    /// `etcdserverpb.KV`.
    pub kv: EtcdKv,
    /// `etcdserverpb.Cluster`.
    pub cluster: EtcdCluster,
    /// `etcdserverpb.Maintenance`.
    pub maintenance: EtcdMaintenance,
    /// `etcdserverpb.Watch`.
    pub watch: EtcdWatch,
    /// `etcdserverpb.Lease`; its expiry loop is started with [`EtcdLease::start_expiry`].
    pub lease: EtcdLease,
}

impl EtcdApi {
    /// The etcd services over `ctx`, in the cluster named `cluster_name` (gossip's cluster
    /// id; its hash is the headers' `cluster_id`).
    #[must_use]
    pub fn new(ctx: NodeContext, cluster_name: &str) -> Self {
        let node = Node::new(ctx, cluster_name);
        Self {
            kv: EtcdKv::new(node.clone()),
            cluster: EtcdCluster::new(node.clone()),
            watch: EtcdWatch::new(node.clone()),
            auth: EtcdAuth::new(node.clone()),
            lease: EtcdLease::new(node.clone()),
            maintenance: EtcdMaintenance::new(node),
        }
    }

    /// The services, with Authenticate's tokens valid for `ttl` (the node's
    /// `--auth-token-ttl`).
    #[must_use]
    pub fn with_token_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.auth = self.auth.with_token_ttl(ttl);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_stable_and_distinct() {
        // FNV-1a's published test vector: the ids never change between builds.
        assert_eq!(member_id("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(member_id("nodeA"), member_id("nodeB"));
        assert_eq!(member_id("nodeA"), member_id("nodeA"));
        assert_ne!(member_id(""), 0);
    }
}
