//! [`Error`], the one error type of the state machine.

use std::io;

/// What can go wrong in the state machine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// redb failed.
    #[error("state machine database: {0}")]
    Redb(#[from] redb::Error),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: io::Error,
    },
    /// A stored value could not be decoded or encoded.
    #[error("state machine codec: {0}")]
    Codec(#[from] types::codec::CodecError),
    /// A stored key record is malformed.
    #[error("corrupt record for a key: {0}")]
    CorruptRecord(&'static str),
    /// A snapshot file is malformed, truncated, or fails its checksum. Nothing was applied.
    #[error("snapshot refused: {0}")]
    CorruptSnapshot(String),
    /// A state the code never produces was met (a bug).
    #[error("internal invariant broken: {0}")]
    Invariant(String),
    /// A watch asked for changes from an index the history no longer holds (older than its
    /// window, or from before this node started or installed a snapshot).
    #[error(
        "compacted: index {requested} is no longer in the watch history; the oldest index still available is {oldest}"
    )]
    Compacted {
        /// The index asked for.
        requested: u64,
        /// The oldest index a watch can start from now.
        oldest: u64,
    },
    /// The node already serves as many watchers as it may.
    #[error("too many watchers: this node serves at most {limit} (MAX_WATCHERS)")]
    TooManyWatchers {
        /// The limit.
        limit: usize,
    },
    /// The change feed is closed: the node is shutting down.
    #[error("the change feed is closed (the node is shutting down)")]
    Closed,
    /// The apply thread is gone (an apply panicked); no batch can be applied any more.
    #[error("the state machine's apply thread has stopped")]
    ApplyThread,
    /// An apply failed earlier (a failed write or fsync): the state machine commits nothing
    /// more, so a failed fsync is never retried; a restart re-applies from the log.
    #[error("an earlier apply failed; the state machine commits nothing more until the node restarts")]
    Failed,
    /// A blocking task panicked or was cancelled.
    #[error("state machine task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Redb(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io { source, context } => io::Error::new(source.kind(), format!("{context}: {source}")),
            Error::CorruptSnapshot(_) => io::Error::new(io::ErrorKind::InvalidData, e),
            other => io::Error::other(other),
        }
    }
}
