//! [`EtcdError`]: the failures etcd's clients recognise by message and code, and the one
//! mapping of this crate's errors to gRPC statuses.

use service::ServiceError;
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
    /// Authenticate while authentication is off (`ErrGRPCAuthNotEnabled`); etcd's clients
    /// then go on without a token.
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// An unknown user or a wrong password (`ErrGRPCAuthFailed`).
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// A token raftkv does not accept: expired, not this cluster's, of a deleted user or of
    /// an earlier password (`ErrGRPCInvalidAuthToken`); etcd's clients authenticate again.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// No token while authentication is on, or an empty user name (`ErrGRPCUserEmpty`).
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// The caller's roles do not allow the call (`ErrGRPCPermissionDenied`).
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// AuthEnable without a root user (`ErrGRPCRootUserNotExist`).
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// UserAdd of an existing user (`ErrGRPCUserAlreadyExist`).
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// A user that does not exist (`ErrGRPCUserNotFound`).
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// RoleAdd of an existing role (`ErrGRPCRoleAlreadyExist`).
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    /// A role that does not exist (`ErrGRPCRoleNotFound`).
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// RoleAdd with an empty name (`ErrGRPCRoleEmpty`).
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// UserRevokeRole of a role the user does not have (`ErrGRPCRoleNotGranted`).
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// RoleRevokePermission of a range the role holds no permission on
    /// (`ErrGRPCPermissionNotGranted`).
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// Deleting the root user, or taking the root role from it, while authentication is
    /// on; deleting or changing the root role (`ErrGRPCInvalidAuthMgmt`).
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
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
            | EtcdError::Unsupported(_)
            | EtcdError::AuthFailed
            | EtcdError::UserEmpty
            | EtcdError::RoleEmpty
            | EtcdError::InvalidAuthMgmt => Code::InvalidArgument,
            EtcdError::AuthNotEnabled
            | EtcdError::RootUserNotExist
            | EtcdError::UserAlreadyExist
            | EtcdError::UserNotFound
            | EtcdError::RoleAlreadyExist
            | EtcdError::RoleNotFound
            | EtcdError::RoleNotGranted
            | EtcdError::PermissionNotGranted => Code::FailedPrecondition,
            EtcdError::InvalidAuthToken => Code::Unauthenticated,
            EtcdError::PermissionDenied => Code::PermissionDenied,
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
        let mut status = Status::new(code, e.to_string());
        // The node's own answer, never a transport failure: a follower that forwarded the
        // request passes it back unchanged (`service::forward` tells them apart by this
        // header), and raftkv's clients do not retry it elsewhere.
        status.metadata_mut().insert(service::RETRYABLE_HEADER, tonic::metadata::MetadataValue::from_static("false"));
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
        let s = Status::from(EtcdError::InvalidAuthToken);
        assert_eq!((s.code(), s.message()), (Code::Unauthenticated, "etcdserver: invalid auth token"));
        let s = Status::from(EtcdError::PermissionDenied);
        assert_eq!((s.code(), s.message()), (Code::PermissionDenied, "etcdserver: permission denied"));
        let s = Status::from(EtcdError::AuthFailed);
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "etcdserver: authentication failed, invalid user ID or password")
        );
        // Marked as the node's own answer, so a follower passes it back as it is.
        let s = Status::from(EtcdError::RoleAlreadyExist);
        assert_eq!(s.metadata().get(service::RETRYABLE_HEADER).and_then(|v| v.to_str().ok()), Some("false"));
        let s = Status::from(EtcdError::LeaseExists);
        assert_eq!((s.code(), s.message()), (Code::FailedPrecondition, "etcdserver: lease already exists"));
        let s = Status::from(EtcdError::LeaseTtlTooLarge);
        assert_eq!((s.code(), s.message()), (Code::OutOfRange, "etcdserver: too large lease TTL"));
        let s = Status::from(EtcdError::Service(ServiceError::NoLeader));
        assert_eq!(s.code(), Code::Unavailable);
    }
}
