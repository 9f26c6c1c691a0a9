//! [`EtcdError`]: the failures etcd's clients recognise by message and code, and the one
//! mapping of this crate's errors to gRPC statuses.

use service::{RETRYABLE_HEADER, ServiceError};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// An etcd API call's failure. The etcd variants carry etcd 3.4's exact message and code
/// (`rpctypes` in etcd's source), which clients match; raftkv's own failures
/// ([`EtcdError::Service`]) keep the native mapping, with its retry and leader hints.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// An empty key (etcd's `ErrGRPCEmptyKey`).
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// A put with `ignore_value` of a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A put with `ignore_value` and a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// A put with `ignore_lease` and a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A transaction past `MAX_TXN_OPS` compares or operations in a branch.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A transaction branch that writes one key twice.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A read at a revision this node cannot serve (older than what it keeps).
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// A read at a revision past the newest one.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// A lease that does not exist (never granted, expired or revoked).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A grant of a lease id that exists (`ErrGRPCLeaseExist`).
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A grant past `crate::MAX_LEASE_TTL` (`ErrGRPCLeaseTTLTooLarge`).
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A sort order or target that is not one of etcd's.
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// A member id that is not in the membership (etcd's `ErrGRPCMemberNotFound`).
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// A MemberAdd or MemberUpdate with a peer URL another member has
    /// (`ErrGRPCPeerURLExist`).
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// Peer URLs that are not `http(s)://HOST:PORT` (`ErrGRPCMemberBadURLs`).
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    /// A MemberPromote of a voter (`ErrGRPCMemberNotLearner`).
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    /// A MoveLeader sent to a member that is not the leader (`ErrGRPCNotLeader`).
    #[error("etcdserver: not leader")]
    NotLeader,
    /// A MoveLeader to a member that cannot lead: not a member, or a learner
    /// (`ErrGRPCBadLeaderTransferee`).
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// A request etcd accepts but raftkv does not serve yet; the message says what and
    /// what to do instead.
    #[error("{0}")]
    Unsupported(String),
    /// A range whose answer would exceed [`crate::MAX_RANGE_RESPONSE_BYTES`].
    #[error("{0}")]
    TooLarge(String),
    /// raftkv's own failure (no leader, no quorum, deadline, limits, ...).
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl From<fsm::Error> for EtcdError {
    fn from(e: fsm::Error) -> Self {
        EtcdError::Service(e.into())
    }
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Self {
        if let EtcdError::Service(s) = e {
            return s.into();
        }
        let code = match &e {
            EtcdError::EmptyKey
            | EtcdError::KeyNotFound
            | EtcdError::ValueProvided
            | EtcdError::LeaseProvided
            | EtcdError::TooManyOps
            | EtcdError::DuplicateKey
            | EtcdError::InvalidSortOption
            | EtcdError::Unsupported(_) => Code::InvalidArgument,
            EtcdError::Compacted | EtcdError::FutureRevision | EtcdError::LeaseTtlTooLarge => Code::OutOfRange,
            EtcdError::LeaseNotFound | EtcdError::MemberNotFound => Code::NotFound,
            EtcdError::MemberBadUrls => Code::InvalidArgument,
            EtcdError::PeerUrlExists
            | EtcdError::LeaseExists
            | EtcdError::MemberNotLearner
            | EtcdError::NotLeader
            | EtcdError::BadLeaderTransferee => Code::FailedPrecondition,
            EtcdError::TooLarge(_) => Code::ResourceExhausted,
            // Answered above with the native mapping.
            EtcdError::Service(_) => Code::Internal,
        };
        // Marked as this service's own answer (not retryable as it is), as raftkv's own
        // failures are: a follower that forwarded the request passes it through unchanged
        // rather than reading it as a failure to reach the leader.
        let mut status = Status::new(code, e.to_string());
        status.metadata_mut().insert(RETRYABLE_HEADER, MetadataValue::from_static("false"));
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcds_messages_and_codes() {
        let s = Status::from(EtcdError::TooManyOps);
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, "etcdserver: too many operations in txn request"));
        let s = Status::from(EtcdError::Compacted);
        assert_eq!(
            (s.code(), s.message()),
            (Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
        );
        let s = Status::from(EtcdError::LeaseNotFound);
        assert_eq!((s.code(), s.message()), (Code::NotFound, "etcdserver: requested lease not found"));
        assert_eq!(s.metadata().get(RETRYABLE_HEADER).and_then(|v| v.to_str().ok()), Some("false"));
        let s = Status::from(EtcdError::LeaseExists);
        assert_eq!((s.code(), s.message()), (Code::FailedPrecondition, "etcdserver: lease already exists"));
        let s = Status::from(EtcdError::LeaseTtlTooLarge);
        assert_eq!((s.code(), s.message()), (Code::OutOfRange, "etcdserver: too large lease TTL"));
        let s = Status::from(EtcdError::Service(ServiceError::NoLeader));
        assert_eq!(s.code(), Code::Unavailable);
    }
}
