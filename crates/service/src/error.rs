//! [`ServiceError`] and the one table that maps it to gRPC status codes.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use types::NodeId;

/// Metadata key: the id of the leader, on `UNAVAILABLE` answers from a non-leader.
pub const LEADER_ID_HEADER: &str = "x-raftkv-leader-id";
/// Metadata key: the gRPC address of the leader, on `UNAVAILABLE` answers from a non-leader.
pub const LEADER_ADDR_HEADER: &str = "x-raftkv-leader-addr";
/// Metadata key: a key's current `modify_index`, on a failed precondition (0: absent).
pub const CURRENT_INDEX_HEADER: &str = "x-raftkv-current-index";
/// Metadata key: `true` when the request was certainly not applied and may be retried as
/// is; `false` otherwise. Clients retry only on `true`.
pub const RETRYABLE_HEADER: &str = "x-raftkv-retryable";

/// Everything a service call can fail with. [`Status::from`] is the only mapping to gRPC.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The request is malformed or past a limit. Nothing was written.
    #[error("{0}")]
    InvalidArgument(String),
    /// This node is not the leader and forwarding is not possible or not wanted. Nothing
    /// was written.
    #[error("not the leader; the leader is {id}{}", addr.as_ref().map(|a| format!(" at {a}")).unwrap_or_default())]
    NotLeader {
        /// The leader's id.
        id: NodeId,
        /// The leader's gRPC address, when known.
        addr: Option<String>,
    },
    /// No leader is known (an election is under way). Nothing was written.
    #[error("no leader is known yet (an election may be in progress); retry shortly")]
    NoLeader,
    /// The leader could not reach a quorum. Nothing was written.
    #[error("the cluster has no quorum: {0}")]
    NoQuorum(String),
    /// Another membership change was still in progress when the deadline passed; this one
    /// was not proposed. Nothing was written.
    #[error("another membership change is in progress: {0}; retry shortly")]
    MembershipBusy(String),
    /// The write was appended to the log, then leadership changed: it may or may not be
    /// applied. Never safe to retry blindly.
    #[error("write outcome unknown: {0}; read the key before retrying")]
    OutcomeUnknown(String),
    /// The request conflicts with the cluster's state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A write's precondition (compare-and-set) did not hold when it was applied: nothing
    /// changed. `current_index` is the key's modify_index now (0 when absent).
    #[error("{message}")]
    PreconditionFailed {
        /// What did not hold.
        message: String,
        /// The key's modify_index now.
        current_index: u64,
    },
    /// The request names something that does not exist (for example a node that is not a
    /// member). Nothing was written.
    #[error("{0}")]
    NotFound(String),
    /// A bounded resource is full (for example the table of operation tokens). Nothing was
    /// done; the message says what to free.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The caller's deadline passed.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A storage or internal failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// Whether the request certainly had no effect and may be retried unchanged.
    #[must_use]
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ServiceError::NotLeader { .. }
                | ServiceError::NoLeader
                | ServiceError::NoQuorum(_)
                | ServiceError::MembershipBusy(_)
                | ServiceError::ShuttingDown
        )
    }

    fn code(&self) -> Code {
        match self {
            ServiceError::InvalidArgument(_) => Code::InvalidArgument,
            ServiceError::NotLeader { .. }
            | ServiceError::NoLeader
            | ServiceError::NoQuorum(_)
            | ServiceError::MembershipBusy(_)
            | ServiceError::ShuttingDown => Code::Unavailable,
            ServiceError::OutcomeUnknown(_) => Code::Unknown,
            ServiceError::FailedPrecondition(_) | ServiceError::PreconditionFailed { .. } => Code::FailedPrecondition,
            ServiceError::NotFound(_) => Code::NotFound,
            ServiceError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ServiceError::ResourceExhausted(_) => Code::ResourceExhausted,
            ServiceError::Internal(_) => Code::Internal,
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        let mut status = Status::new(e.code(), e.to_string());
        let md = status.metadata_mut();
        md.insert(RETRYABLE_HEADER, MetadataValue::from_static(if e.retryable() { "true" } else { "false" }));
        if let ServiceError::PreconditionFailed { current_index, .. } = &e
            && let Ok(v) = current_index.to_string().parse()
        {
            md.insert(CURRENT_INDEX_HEADER, v);
        }
        if let ServiceError::NotLeader { id, addr } = &e {
            if let Ok(v) = id.as_str().parse() {
                md.insert(LEADER_ID_HEADER, v);
            }
            if let Some(v) = addr.as_deref().and_then(|a| a.parse().ok()) {
                md.insert(LEADER_ADDR_HEADER, v);
            }
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_carries_the_hint() {
        let s = Status::from(ServiceError::NotLeader { id: NodeId::from(2), addr: Some("127.0.0.1:4".into()) });
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.metadata().get(LEADER_ID_HEADER).and_then(|v| v.to_str().ok()), Some("2"));
        assert_eq!(s.metadata().get(LEADER_ADDR_HEADER).and_then(|v| v.to_str().ok()), Some("127.0.0.1:4"));
        assert_eq!(s.metadata().get(RETRYABLE_HEADER).and_then(|v| v.to_str().ok()), Some("true"));
        assert_eq!(s.message(), "not the leader; the leader is 2 at 127.0.0.1:4");
    }

    #[test]
    fn every_code_and_retry_flag() {
        let id = NodeId::from(1);
        let cases = [
            (ServiceError::InvalidArgument("x".into()), Code::InvalidArgument, false),
            (ServiceError::NotLeader { id, addr: None }, Code::Unavailable, true),
            (ServiceError::NoLeader, Code::Unavailable, true),
            (ServiceError::NoQuorum("x".into()), Code::Unavailable, true),
            (ServiceError::MembershipBusy("x".into()), Code::Unavailable, true),
            (ServiceError::OutcomeUnknown("x".into()), Code::Unknown, false),
            (ServiceError::FailedPrecondition("x".into()), Code::FailedPrecondition, false),
            (ServiceError::NotFound("x".into()), Code::NotFound, false),
            (ServiceError::DeadlineExceeded("x".into()), Code::DeadlineExceeded, false),
            (ServiceError::ResourceExhausted("x".into()), Code::ResourceExhausted, false),
            (ServiceError::ShuttingDown, Code::Unavailable, true),
            (ServiceError::Internal("x".into()), Code::Internal, false),
        ];
        for (e, code, retryable) in cases {
            let what = format!("{e:?}");
            let s = Status::from(e);
            assert_eq!(s.code(), code, "{what}");
            let flag = s.metadata().get(RETRYABLE_HEADER).and_then(|v| v.to_str().ok());
            assert_eq!(flag, Some(if retryable { "true" } else { "false" }), "{what}");
        }
    }

    #[test]
    fn unknown_outcome_is_never_retryable() {
        let s = Status::from(ServiceError::OutcomeUnknown("leader changed".into()));
        assert_eq!(s.code(), Code::Unknown);
        assert_eq!(s.metadata().get(RETRYABLE_HEADER).and_then(|v| v.to_str().ok()), Some("false"));
    }
}
