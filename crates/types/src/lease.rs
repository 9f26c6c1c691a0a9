//! etcd's leases as they go through the log: granting and revoking a lease
//! ([`Command::Lease`](crate::Command::Lease)), and client writes whose puts attach keys to
//! leases ([`Command::LeasedWrite`](crate::Command::LeasedWrite)).
//!
//! Only what every node must agree on is replicated: a lease's id, its granted TTL and the
//! keys attached to it. When a lease expires is decided by the leader alone, from its own
//! clock, and applied as a [`LeaseCommand::Revoke`] through the log, so every node deletes
//! the same keys at the same index. Every type here is part of the stored format: variants
//! and fields are only ever appended.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kv::CheckedWrite;

/// A lease id: etcd's `int64` lease id. Granted leases have positive ids; 0 means "no
/// lease" on a key.
pub type LeaseId = i64;

/// A change to the set of leases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseCommand {
    /// Grant lease `id` (chosen by the leader when the client gave none) for `ttl` seconds.
    /// An id that already exists is refused ([`LeaseOutcome::Exists`]).
    Grant {
        /// The lease id; positive.
        id: LeaseId,
        /// The granted time to live, in seconds.
        ttl: i64,
    },
    /// Revoke lease `id`: every key attached to it is deleted, at this entry's index. Both a
    /// client's revoke and the leader's decision that the lease expired.
    Revoke {
        /// The lease id.
        id: LeaseId,
    },
}

/// What applying a [`LeaseCommand`] answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseOutcome {
    /// The lease was granted.
    Granted {
        /// Its id.
        id: LeaseId,
        /// Its TTL in seconds.
        ttl: i64,
    },
    /// The lease was revoked and its keys deleted.
    Revoked {
        /// How many keys were deleted.
        deleted: u64,
    },
    /// A grant of an id that already exists: nothing changed.
    Exists,
    /// A revoke of a lease that does not exist (never granted, expired or revoked).
    NotFound,
}

/// What a put of a [`LeasedWrite`] does with the key's lease. A put the write's `leases`
/// does not name detaches its key from any lease (etcd's put with lease 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseAttach {
    /// Keep the key's current lease (etcd's `ignore_lease`).
    Keep,
    /// Attach the key to this lease (detaching it from its old one); the whole write is
    /// refused with [`crate::WriteResult::LeaseNotFound`] if the lease does not exist when
    /// the write is applied.
    Lease(LeaseId),
}

/// A client write whose puts attach keys to leases: the write as every client write is
/// logged (with the user its permission was checked for), and, per key put, what happens to
/// its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeasedWrite {
    /// The write.
    pub write: CheckedWrite,
    /// Key → what a put of that key does with its lease; keys not named are detached.
    pub leases: BTreeMap<Vec<u8>, LeaseAttach>,
}

impl std::fmt::Display for LeaseCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseCommand::Grant { id, ttl } => write!(f, "lease grant id={id} ttl={ttl}"),
            LeaseCommand::Revoke { id } => write!(f, "lease revoke id={id}"),
        }
    }
}
