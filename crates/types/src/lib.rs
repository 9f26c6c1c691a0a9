//! The vocabulary every raftkv crate shares.
//!
//! # Brief overview
//! - [`NodeId`]: the id a user gives a node (`nodeA`), a newtype over a string.
//! - [`NodeInfo`]: the addresses stored for each member in the Raft membership, so the
//!   leader's client address is always known without a resolver.
//! - [`Command`] and [`CommandResult`]: what goes through the Raft log and what applying it
//!   answers; [`kv`] holds the key-value operations they carry (puts and deletes with
//!   preconditions, ranges, transactions, request ids for at-most-once writes).
//! - [`TypeConfig`]: the openraft type configuration binding these together, and aliases
//!   of the openraft types built from it ([`LogId`], [`Entry`], [`Vote`], ...).
//! - [`auth`]: users, roles and permissions, changed through the log by
//!   [`Command::Auth`].
//! - [`lease`]: etcd's leases, granted and revoked by [`Command::Lease`]; writes that
//!   attach keys to them, [`Command::LeasedWrite`].
//! - [`alarm`]: alarms (NOSPACE) a member raises through the log, [`Command::Alarm`].
//! - [`codec`]: the one binary encoding (postcard behind a format byte) used for the log,
//!   the state machine's metadata and Raft messages on the wire.
//!
//! This crate depends on openraft, serde (with serde_bytes) and postcard only. It must never
//! depend on tonic, redb, chitchat or any other crate of ours: everything else depends on it.

pub mod alarm;
pub mod auth;
pub mod codec;
mod ids;
pub mod kv;
pub mod lease;

use serde::{Deserialize, Serialize};

pub use alarm::{Alarm, AlarmAction, AlarmCommand, AlarmKind};

pub use ids::{InvalidNodeId, NodeId};
pub use kv::{
    CheckedWrite, Compare, CompareOp, CompareTarget, DeleteOp, Expect, KeyRange, KeyValue, PutOp, RangeOp, RangeResult,
    Txn, TxnOp, TxnOpResult, WriteCommand, WriteOp, WriteOutcome, WriteResult,
};
pub use lease::{LeaseAttach, LeaseCommand, LeaseId, LeaseOutcome, LeasedWrite};

/// The addresses of one member, stored in the Raft membership.
///
/// `raft_addr` carries Raft traffic between nodes; `grpc_addr` serves clients and admin
/// requests. They may be equal (one server then carries both).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Where the node listens for Raft traffic (`--raft_addr`).
    pub raft_addr: String,
    /// Where the node serves clients (`--grpc_addr`).
    pub grpc_addr: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "raft={} grpc={}", self.raft_addr, self.grpc_addr)
    }
}

/// A state-machine command: what a client write becomes in the Raft log.
///
/// New variants are only ever added at the end, so entries written by an older build
/// still decode (postcard encodes the variant by its position).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A client write: put, delete or transaction, with an optional request id.
    Write(WriteCommand),
    /// A change to users, roles, permissions or whether authentication is on.
    Auth(auth::AuthCommand),
    /// Raise or clear an alarm ([`alarm`]): replicated so every node refuses writes from
    /// the same index on.
    Alarm(AlarmCommand),
    /// A client write with the user whose permission was checked before it was proposed;
    /// the permission is checked again when it is applied. What every build since writes
    /// instead of [`Command::Write`], which older logs hold and which applies unchecked.
    CheckedWrite(CheckedWrite),
    /// Compact the change history (etcd's `KV.Compact`): every change before this index is
    /// dropped from the watch history, and a watch or a read at a past revision from before
    /// it is refused as compacted. Replicated so every node compacts at the same point of
    /// the log; the current state is untouched.
    Compact(u64),
    /// Grant or revoke an etcd lease ([`lease`]); a revoke deletes the lease's keys.
    Lease(LeaseCommand),
    /// A client write whose puts attach keys to leases (or keep their lease); checked as a
    /// [`Command::CheckedWrite`] is, and refused whole when a lease it names does not exist.
    LeasedWrite(LeasedWrite),
}

impl Command {
    /// The client write this command carries, if it is one.
    #[must_use]
    pub fn write(&self) -> Option<&WriteCommand> {
        match self {
            Command::Write(w)
            | Command::CheckedWrite(CheckedWrite { write: w, .. })
            | Command::LeasedWrite(LeasedWrite { write: CheckedWrite { write: w, .. }, .. }) => Some(w),
            Command::Auth(_) | Command::Alarm(_) | Command::Compact(_) | Command::Lease(_) => None,
        }
    }
}

/// How a write command is logged: its operation's kind and sizes, never a key or value.
fn write_summary(w: &WriteCommand) -> String {
    let op = match &w.op {
        WriteOp::Put(p) => format!("put key_len={} value_len={}", p.key.len(), p.value.len()),
        WriteOp::Delete(_) => "delete".to_string(),
        WriteOp::Txn(t) => {
            format!("txn compares={} success={} failure={}", t.compares.len(), t.success.len(), t.failure.len())
        }
    };
    match &w.request_id {
        Some(id) => format!("{op} request_id={id}"),
        None => op,
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Write(w) => f.write_str(&write_summary(w)),
            Command::CheckedWrite(c) => match &c.user {
                Some(user) => write!(f, "{} user={user:?}", write_summary(&c.write)),
                None => f.write_str(&write_summary(&c.write)),
            },
            Command::Auth(a) => write!(f, "{a}"),
            Command::Compact(revision) => write!(f, "compact revision={revision}"),
            Command::Lease(l) => write!(f, "{l}"),
            Command::LeasedWrite(l) => write!(f, "{} leases={}", write_summary(&l.write.write), l.leases.len()),
            Command::Alarm(a) => {
                let action = match a.action {
                    AlarmAction::Raise { .. } => "raise",
                    AlarmAction::Clear => "clear",
                };
                write!(f, "alarm {action} {} member={}", a.kind, a.member)
            }
        }
    }
}

/// What applying a log entry answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// A blank or membership entry: nothing to report.
    #[default]
    None,
    /// A client write.
    Write(WriteOutcome),
    /// An auth change.
    Auth(auth::AuthOutcome),
    /// A lease grant or revoke.
    Lease(LeaseOutcome),
}

openraft::declare_raft_types!(
    /// The openraft type configuration of raftkv.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = NodeInfo,
);

/// A Raft log id: a term (with its leader) and an index.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A Raft vote.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// A Raft log entry.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// Snapshot metadata: the last log id it covers and the membership at that point.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A membership configuration with the log id that introduced it.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// A membership configuration.
pub type Membership = openraft::Membership<NodeId, NodeInfo>;

/// The index part of an optional log id; 0 when there is none.
#[must_use]
pub fn index_of(log_id: Option<&LogId>) -> u64 {
    log_id.map_or(0, |l| l.index)
}
