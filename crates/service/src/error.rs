//! [`ServiceError`] and the one table that maps it to gRPC status codes.

use linearizable::{AskError, BarrierError, ReadError, WaitError};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use types::NodeId;

pub use rpc::metadata::{
    CURRENT_INDEX_HEADER, LEADER_ADDR_HEADER, LEADER_ID_HEADER, OLDEST_INDEX_HEADER, RESUME_INDEX_HEADER,
    RETRYABLE_HEADER,
};
pub use rpc::status::{UNKNOWN_METHOD_MESSAGE, unknown_method_status};

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
    /// The node is past one of its overload limits (`service::overload`): the call was shed
    /// before it ran. Nothing was done; the message names the limit.
    #[error("{0}")]
    Overloaded(String),
    /// The caller's deadline passed.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A watch asked for changes older than the node's history holds. Nothing was sent.
    #[error(
        "compacted: index {requested} is older than this node's watch history; the oldest index still available is {oldest}; read the key, then watch from the read's index + 1"
    )]
    Compacted {
        /// The index asked for.
        requested: u64,
        /// The oldest index a watch can start from.
        oldest: u64,
    },
    /// A watcher did not read fast enough: its bounded buffer filled up and the stream was
    /// cancelled. Every change before `resume_index` was sent.
    #[error("the watcher fell behind and its buffer filled up; resume the watch from index {resume_index}")]
    WatchOverflow {
        /// The index to resume from.
        resume_index: u64,
    },
    /// The node is shutting down and ends a watch stream. Every change before
    /// `resume_index` was sent.
    #[error("the node is shutting down; resume the watch on another node from index {resume_index}")]
    WatchClosed {
        /// The index to resume from.
        resume_index: u64,
    },
    /// The node serves as many watchers as it may; nothing was started.
    #[error("too many watchers on this node (the limit, MAX_WATCHERS, is {0}); retry later or on another node")]
    TooManyWatchers(usize),
    /// Authentication is on and the call carries no valid token. Nothing was done; the
    /// message says why, never the token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is authenticated but lacks the permission or role the call needs. Nothing
    /// was done; the message says what is missing.
    #[error("{0}")]
    PermissionDenied(String),
    /// A storage or internal failure. The error beneath is kept as the source; a failure
    /// with no error beneath is built from its message (`Internal("...".into())`).
    #[error("internal error: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A read barrier that failed ([`linearizable::read_index`]): the node cannot serve the read
/// now, so it is unavailable (retryable), unless the node is stopping or the leader's answer
/// was not understood.
impl From<ReadError> for ServiceError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Deadline => ServiceError::NoQuorum(e.to_string()),
            ReadError::Barrier(e) => e.into(),
            ReadError::Ask(AskError::NoAddress(id)) => ServiceError::NotLeader { id, addr: None },
            ReadError::Ask(AskError::Invalid(e)) => ServiceError::Internal(e),
            ReadError::CatchUp(WaitError::Closed) => ServiceError::ShuttingDown,
            other => ServiceError::NoQuorum(other.to_string()),
        }
    }
}

/// A barrier that failed on this node ([`linearizable::read_barrier`],
/// [`linearizable::leader_read_index`]).
impl From<BarrierError> for ServiceError {
    fn from(e: BarrierError) -> Self {
        match e {
            BarrierError::NotLeader { leader: Some((id, _)) } => ServiceError::NotLeader { id, addr: None },
            BarrierError::NotLeader { leader: None } => ServiceError::NoLeader,
            BarrierError::NoQuorum(e) => ServiceError::NoQuorum(e),
            BarrierError::Stopped(_) => ServiceError::ShuttingDown,
            other => ServiceError::Internal(Box::new(other)),
        }
    }
}

/// The state machine's errors: the change feed's refusals have their own variants (and
/// codes); everything else is internal, with the state machine's error as the source.
impl From<fsm::Error> for ServiceError {
    fn from(e: fsm::Error) -> Self {
        match e {
            fsm::Error::Compacted { requested, oldest } => ServiceError::Compacted { requested, oldest },
            fsm::Error::TooManyWatchers { limit } => ServiceError::TooManyWatchers(limit),
            fsm::Error::Closed => ServiceError::ShuttingDown,
            other => ServiceError::Internal(Box::new(other)),
        }
    }
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
                | ServiceError::TooManyWatchers(_)
                | ServiceError::Overloaded(_)
        )
    }

    fn code(&self) -> Code {
        match self {
            ServiceError::InvalidArgument(_) => Code::InvalidArgument,
            ServiceError::NotLeader { .. }
            | ServiceError::NoLeader
            | ServiceError::NoQuorum(_)
            | ServiceError::MembershipBusy(_)
            | ServiceError::ShuttingDown
            | ServiceError::WatchClosed { .. } => Code::Unavailable,
            ServiceError::Compacted { .. } => Code::OutOfRange,
            ServiceError::WatchOverflow { .. } | ServiceError::TooManyWatchers(_) => Code::ResourceExhausted,
            ServiceError::OutcomeUnknown(_) => Code::Unknown,
            ServiceError::FailedPrecondition(_) | ServiceError::PreconditionFailed { .. } => Code::FailedPrecondition,
            ServiceError::NotFound(_) => Code::NotFound,
            ServiceError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ServiceError::ResourceExhausted(_) | ServiceError::Overloaded(_) => Code::ResourceExhausted,
            ServiceError::Unauthenticated(_) => Code::Unauthenticated,
            ServiceError::PermissionDenied(_) => Code::PermissionDenied,
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
        let index_header = match &e {
            ServiceError::Compacted { oldest, .. } => Some((OLDEST_INDEX_HEADER, *oldest)),
            ServiceError::WatchOverflow { resume_index } | ServiceError::WatchClosed { resume_index } => {
                Some((RESUME_INDEX_HEADER, *resume_index))
            }
            _ => None,
        };
        if let Some((name, index)) = index_header
            && let Ok(v) = index.to_string().parse()
        {
            md.insert(name, v);
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
    fn an_unknown_method_is_told_what_to_check() {
        let (code, text) = unknown_method_status(Code::Unimplemented, "").unwrap_or((Code::Ok, String::new()));
        assert_eq!(code, Code::Unimplemented);
        assert!(text.contains("unknown service or method") && text.contains("reflection"), "{text}");
        assert!(unknown_method_status(Code::Unimplemented, "Content is compressed with `gzip`").is_none());
        assert!(unknown_method_status(Code::Internal, "").is_none());
    }

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
            (ServiceError::Unauthenticated("x".into()), Code::Unauthenticated, false),
            (ServiceError::PermissionDenied("x".into()), Code::PermissionDenied, false),
            (ServiceError::Compacted { requested: 1, oldest: 2 }, Code::OutOfRange, false),
            (ServiceError::WatchOverflow { resume_index: 1 }, Code::ResourceExhausted, false),
            (ServiceError::WatchClosed { resume_index: 1 }, Code::Unavailable, false),
            (ServiceError::TooManyWatchers(1), Code::ResourceExhausted, true),
            (ServiceError::Overloaded("x".into()), Code::ResourceExhausted, true),
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
    fn internal_errors_keep_their_source() {
        let e = ServiceError::from(fsm::Error::CorruptRecord("short"));
        assert!(matches!(e, ServiceError::Internal(_)), "{e:?}");
        assert_eq!(e.to_string(), "internal error: corrupt record for a key: short");
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("corrupt record for a key: short"));
        assert_eq!(Status::from(e).code(), Code::Internal);
    }

    #[test]
    fn failed_read_barriers_are_unavailable_or_stopping() {
        let cases = [
            (ReadError::Deadline, Code::Unavailable, "could not confirm the read index before the deadline"),
            (ReadError::Barrier(BarrierError::NoQuorum("q".into())), Code::Unavailable, "q"),
            (ReadError::Barrier(BarrierError::Stopped("s".into())), Code::Unavailable, "shutting down"),
            (ReadError::Ask(AskError::NoAddress(NodeId::from(2))), Code::Unavailable, "the leader is 2"),
            (ReadError::CatchUp(WaitError::Closed), Code::Unavailable, "shutting down"),
            (ReadError::CatchUp(WaitError::Timeout { wanted: 5, current: 3 }), Code::Unavailable, "did not catch up"),
            (ReadError::Ask(AskError::Invalid("bad".into())), Code::Internal, "bad"),
        ];
        for (e, code, text) in cases {
            let s = Status::from(ServiceError::from(e));
            assert_eq!(s.code(), code, "{s:?}");
            assert!(s.message().contains(text), "{s:?}");
        }
    }

    #[test]
    fn unknown_outcome_is_never_retryable() {
        let s = Status::from(ServiceError::OutcomeUnknown("leader changed".into()));
        assert_eq!(s.code(), Code::Unknown);
        assert_eq!(s.metadata().get(RETRYABLE_HEADER).and_then(|v| v.to_str().ok()), Some("false"));
    }
}

#[cfg(test)]
mod watch_tests {
    use super::*;

    fn header(s: &Status, name: &str) -> Option<String> {
        s.metadata().get(name).and_then(|v| v.to_str().ok()).map(String::from)
    }

    #[test]
    fn compacted_names_the_oldest_index() {
        let s = Status::from(ServiceError::Compacted { requested: 3, oldest: 120 });
        assert_eq!(s.code(), Code::OutOfRange);
        assert!(s.message().starts_with("compacted") && s.message().contains("120"), "{}", s.message());
        assert_eq!(header(&s, OLDEST_INDEX_HEADER).as_deref(), Some("120"));
    }

    #[test]
    fn ended_watches_say_where_to_resume() {
        let s = Status::from(ServiceError::WatchOverflow { resume_index: 77 });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(header(&s, RESUME_INDEX_HEADER).as_deref(), Some("77"));
        let s = Status::from(ServiceError::WatchClosed { resume_index: 78 });
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("another node"), "{}", s.message());
        assert_eq!(header(&s, RESUME_INDEX_HEADER).as_deref(), Some("78"));
    }
}
