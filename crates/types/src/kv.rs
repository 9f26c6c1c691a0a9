//! The key-value vocabulary of the replicated log: write operations, their preconditions,
//! and what applying them answers. All of it travels in log entries (postcard), so every
//! type here is part of the stored format: variants and fields are only ever appended.

use serde::{Deserialize, Serialize};

/// A key with its value and indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value (empty when only keys were asked for).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Log index of the put that created the key (since it was last absent).
    pub create_index: u64,
    /// Log index of the put that last changed the key.
    pub modify_index: u64,
    /// Number of puts since the key was created: 1 after the first.
    pub version: u64,
    /// The etcd lease the key is attached to ([`crate::lease`]), 0 for none. Stored with
    /// the key in the state machine and filled in when it is read; not part of this type's
    /// encoding (it was added after outcomes holding key-values were first stored), so a
    /// stored outcome read back has 0 here.
    #[serde(skip)]
    pub lease: crate::lease::LeaseId,
}

/// A set of keys: one key, or a half-open interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyRange {
    /// Exactly this key.
    Key(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Every key `k` with `start <= k < end`; `end: None` means no upper bound.
    Range {
        /// The first key of the range (inclusive).
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        /// The end of the range (exclusive), or none.
        #[serde(with = "serde_bytes")]
        end: Option<Vec<u8>>,
    },
}

impl KeyRange {
    /// Every key that starts with `prefix`.
    #[must_use]
    pub fn prefix(prefix: &[u8]) -> Self {
        KeyRange::Range { start: prefix.to_vec(), end: prefix_end(prefix) }
    }

    /// Whether `key` is in the range.
    #[must_use]
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Key(k) => k == key,
            KeyRange::Range { start, end } => {
                key >= start.as_slice() && end.as_ref().is_none_or(|e| key < e.as_slice())
            }
        }
    }

    /// Whether two ranges share a key.
    #[must_use]
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        match (self, other) {
            (KeyRange::Key(k), r) | (r, KeyRange::Key(k)) => r.contains(k),
            (KeyRange::Range { start: s1, end: e1 }, KeyRange::Range { start: s2, end: e2 }) => {
                let s1_before_e2 = e2.as_ref().is_none_or(|e| s1 < e);
                let s2_before_e1 = e1.as_ref().is_none_or(|e| s2 < e);
                s1_before_e2 && s2_before_e1
            }
        }
    }
}

/// The smallest key greater than every key starting with `prefix`, or none when every key
/// from `prefix` on qualifies (an empty prefix, or one made only of 0xFF bytes).
#[must_use]
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A precondition on one key, checked when the write is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    /// The key exists and its `modify_index` is this.
    ModifyIndex(u64),
    /// The key does not exist.
    Absent,
}

/// Set a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutOp {
    /// The key; never empty.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The new value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Apply only if this holds.
    pub expect: Option<Expect>,
    /// Return the key's previous value and indexes.
    pub prev_kv: bool,
}

/// Delete one key or a range of keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteOp {
    /// What to delete.
    pub range: KeyRange,
    /// Apply only if this holds (single keys only).
    pub expect: Option<Expect>,
    /// Return the deleted keys with their values and indexes.
    pub prev_kv: bool,
}

/// Read keys (inside a transaction, or served from a node's state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeOp {
    /// What to read.
    pub range: KeyRange,
    /// At most this many keys; 0 means no limit (the size bound still applies).
    pub limit: u64,
    /// Leave values out.
    pub keys_only: bool,
    /// Only count the keys.
    pub count_only: bool,
}

/// What is compared in a transaction's condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The value (a missing key has none: only `NotEqual` holds).
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The `modify_index` (0 for a missing key).
    ModifyIndex(u64),
    /// The `create_index` (0 for a missing key).
    CreateIndex(u64),
    /// The `version` (0 for a missing key).
    Version(u64),
    /// Whether the key exists (`Equal`/`NotEqual` only).
    Exists(bool),
    /// The etcd lease the key is attached to (0 for none, and for a missing key).
    Lease(crate::lease::LeaseId),
}

/// How the key's current state is compared with the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// Current == target.
    Equal,
    /// Current != target.
    NotEqual,
    /// Current > target.
    Greater,
    /// Current < target.
    Less,
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key compared.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The comparison.
    pub op: CompareOp,
    /// What the key's state is compared with.
    pub target: CompareTarget,
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// A put (without a precondition of its own).
    Put(PutOp),
    /// A delete (without a precondition of its own).
    Delete(DeleteOp),
    /// A read.
    Range(RangeOp),
}

/// If every compare holds, apply `success`, else `failure`; atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// The conditions.
    pub compares: Vec<Compare>,
    /// Applied when every compare holds.
    pub success: Vec<TxnOp>,
    /// Applied otherwise.
    pub failure: Vec<TxnOp>,
}

/// A client write as it goes through the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteCommand {
    /// A client-chosen id: a write whose id was already applied is not applied again; its
    /// first result is answered instead.
    pub request_id: Option<String>,
    /// What to do.
    pub op: WriteOp,
}

/// A client write with the identity whose permission the leader checked before proposing
/// it ([`crate::Command::CheckedWrite`]). The state machine checks that permission again at
/// the index the write is applied ([`crate::auth::AuthState::check_write`]), as etcd does,
/// so a write checked just before a revocation commits does not apply after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckedWrite {
    /// The authenticated user; none when authentication was off when the write was
    /// checked (such a write is refused if authentication is on when it is applied).
    pub user: Option<String>,
    /// The write.
    pub write: WriteCommand,
}

/// The write operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Set a key.
    Put(PutOp),
    /// Delete a key or a range.
    Delete(DeleteOp),
    /// A transaction.
    Txn(Txn),
}

/// What a read of a range found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResult {
    /// The keys returned (none for a count-only read).
    pub kvs: Vec<KeyValue>,
    /// How many keys the whole range holds.
    pub count: u64,
    /// Whether keys after the last returned one remain in the range.
    pub more: bool,
}

/// What one transaction operation answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResult {
    /// A put: the previous key, if asked for and present.
    Put {
        /// The previous key-value.
        prev: Option<KeyValue>,
    },
    /// A delete.
    Delete {
        /// How many keys were deleted.
        deleted: u64,
        /// The deleted keys, if asked for.
        prev: Vec<KeyValue>,
    },
    /// A read.
    Range(RangeResult),
}

/// What applying a write answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteResult {
    /// A put was applied.
    Put {
        /// The previous key-value, if asked for and present.
        prev: Option<KeyValue>,
    },
    /// A delete was applied (0 deleted is not an error).
    Delete {
        /// How many keys were deleted.
        deleted: u64,
        /// The deleted keys, if asked for.
        prev: Vec<KeyValue>,
    },
    /// A transaction was applied.
    Txn {
        /// Whether every compare held (the success branch ran).
        succeeded: bool,
        /// One result per operation of the branch that ran.
        results: Vec<TxnOpResult>,
    },
    /// A precondition did not hold: nothing changed.
    PreconditionFailed {
        /// The key whose precondition failed.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// What was expected.
        expected: Expect,
        /// The key's `modify_index` now (0 when absent).
        current_modify_index: u64,
    },
    /// The user (of a [`CheckedWrite`]) no longer had the permission the write needs when
    /// it was applied (revoked, or authentication enabled, after the leader checked it):
    /// nothing changed.
    PermissionDenied {
        /// The user, or none when the write was accepted while authentication was off.
        user: Option<String>,
        /// The first key range the user may no longer access.
        range: KeyRange,
        /// The access it needs there.
        access: crate::auth::Access,
    },
    /// A put named an etcd lease that does not exist when the write was applied (never
    /// granted, expired or revoked): nothing changed.
    LeaseNotFound {
        /// The lease.
        lease: crate::lease::LeaseId,
    },
}

/// The answer to a write, as stored for at-most-once retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOutcome {
    /// The log index at which the write was first applied.
    pub index: u64,
    /// True when this answer repeats an earlier application of the same request id.
    pub duplicate: bool,
    /// What applying it answered.
    pub result: WriteResult,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"abc"), Some(b"abd".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn ranges_contain_and_overlap() {
        let p = KeyRange::prefix(b"a/");
        assert!(p.contains(b"a/"));
        assert!(p.contains(b"a/\xff\xff"));
        assert!(!p.contains(b"a0"));
        assert!(!p.contains(b"a"));
        let all = KeyRange::Range { start: vec![], end: None };
        assert!(all.contains(b"\xff\xff\xff"));
        assert!(p.overlaps(&KeyRange::Key(b"a/x".to_vec())));
        assert!(!p.overlaps(&KeyRange::Key(b"b".to_vec())));
        let r1 = KeyRange::Range { start: b"a".to_vec(), end: Some(b"c".to_vec()) };
        let r2 = KeyRange::Range { start: b"c".to_vec(), end: None };
        assert!(!r1.overlaps(&r2));
        let r3 = KeyRange::Range { start: b"b".to_vec(), end: Some(b"d".to_vec()) };
        assert!(r1.overlaps(&r3) && r3.overlaps(&r2));
    }
}
