//! The Raft log of a raftkv node, on redb.
//!
//! [`LogStore`] implements openraft's [`RaftLogStorage`] and [`RaftLogReader`]: the log
//! entries, the vote and the committed log id live in one redb file
//! (`<node dir>/raft-log.redb`). It passes openraft's own storage test suite
//! (`tests/suite.rs`).
//!
//! # Durability contract
//! - [`RaftLogStorage::append`] writes every entry of one call in **one** write transaction,
//!   committed without an fsync so the entries are readable as soon as the call returns
//!   (openraft can start replicating them while the leader's own fsync runs). The entries
//!   are reported flushed only after a flusher thread's `Durability::Immediate` commit,
//!   which makes every earlier commit durable. openraft merges queued appends into one
//!   call, and appends that arrive during an fsync share the next one: group commit. A
//!   write is acknowledged only once a quorum reports it flushed.
//! - The vote is written with `Durability::Immediate` before the call returns. The committed
//!   log id is written without an fsync of its own and becomes durable with the next durable
//!   commit: after a crash it can only be behind, which is safe.
//! - Truncation and purge are single transactions too; a crash leaves either the old or the
//!   new log, never a hole.
//!
//! redb is synchronous, so every transaction runs on tokio's blocking pool, never on a
//! runtime worker.
//!
//! This crate must never depend on tonic, on the state machine (`fsm`), or on the service
//! layer: it stores bytes for openraft and knows nothing else.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use types::{Entry, LogId, TypeConfig, Vote, codec};

/// A crash point: with feature `failpoints`, `fail::fail_point!(name)` (the `raftkv` binary
/// arms one with an `abort()` callback); without it, nothing.
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}

/// Whether the planted bug "ack before fsync" is armed (feature `planted-bugs` and
/// `RAFTKV_PLANTED_BUG=ack-before-fsync`): appends are reported flushed as soon as they are
/// written, before the flusher's fsync. A test-only bug the fault suite must catch.
#[cfg(feature = "planted-bugs")]
fn ack_before_fsync() -> bool {
    static ARMED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ARMED.get_or_init(|| std::env::var("RAFTKV_PLANTED_BUG").is_ok_and(|v| v == "ack-before-fsync"))
}

/// Log entries by index; the value is a [`codec`]-encoded [`Entry`].
const LOGS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("raft_logs");
/// Small named values: [`KEY_VOTE`], [`KEY_COMMITTED`], [`KEY_LAST_PURGED`].
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

/// The file name of the log database inside a node's directory.
pub const LOG_FILE: &str = "raft-log.redb";

/// What can go wrong in the log store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// redb failed: the file could not be opened, read or committed.
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    /// A stored value could not be decoded, or a value could not be encoded.
    #[error("log store codec: {0}")]
    Codec(#[from] codec::CodecError),
    /// The flusher thread could not be started or has stopped.
    #[error("log flusher: {0}")]
    Flusher(String),
    /// A blocking task panicked or was cancelled.
    #[error("log store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
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
        io::Error::other(e)
    }
}

/// The Raft log store. Cheap to clone: clones share one redb database, and openraft uses a
/// clone as the log reader of each replication task.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// Appends waiting for their fsync go to the flusher thread.
    flusher: Arc<Flusher>,
}

/// The flusher thread and the way to feed it. Dropped with the last [`LogStore`] clone: it
/// then closes the channel and waits for the thread, so the database is closed when the
/// store is gone.
struct Flusher {
    tx: Option<std::sync::mpsc::Sender<IOFlushed<TypeConfig>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens (or creates) the log database at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(LOGS)?;
            txn.open_table(META)?;
        }
        txn.commit()?;
        let db = Arc::new(db);
        let (tx, pending) = std::sync::mpsc::channel();
        let flush_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flush_loop(&flush_db, &pending))
            .map_err(|e| Error::Flusher(e.to_string()))?;
        Ok(Self { db, flusher: Arc::new(Flusher { tx: Some(tx), thread: Some(thread) }) })
    }

    /// Runs `f` on the blocking pool with the database.
    async fn blocking<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, Error> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db)).await?
    }

    fn read_meta<T: codec::DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, Error> {
        let txn = db.begin_read()?;
        let table = txn.open_table(META)?;
        match table.get(key)? {
            Some(v) => Ok(Some(codec::decode(v.value())?)),
            None => Ok(None),
        }
    }

    fn write_meta(db: &Database, key: &'static str, bytes: Vec<u8>, durability: Durability) -> Result<(), Error> {
        let mut txn = db.begin_write()?;
        txn.set_durability(durability)?;
        {
            let mut table = txn.open_table(META)?;
            table.insert(key, bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The last log id in the log, if any.
    fn last_log_id(db: &Database) -> Result<Option<LogId>, Error> {
        let txn = db.begin_read()?;
        let table = txn.open_table(LOGS)?;
        match table.last()? {
            Some((_, v)) => {
                let entry: Entry = codec::decode(v.value())?;
                Ok(Some(entry.log_id))
            }
            None => Ok(None),
        }
    }
}

/// The flusher thread: waits for appended batches, makes every one written so far durable
/// with a single empty `Durability::Immediate` commit (which persists all earlier
/// non-durable commits), then reports each of them flushed. Appends that arrive while it
/// fsyncs share the next fsync: group commit across `append` calls. It ends when every
/// [`LogStore`] clone is dropped.
fn flush_loop(db: &Database, pending: &std::sync::mpsc::Receiver<IOFlushed<TypeConfig>>) {
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        batch.extend(pending.try_iter());
        let result = (|| -> Result<(), Error> {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                tracing::trace!(appends = batch.len(), "log appends durable");
                for cb in batch {
                    cb.io_completed(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "log fsync failed");
                for cb in batch {
                    cb.io_completed(Err(io::Error::other(e.to_string())));
                }
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        let entries = self
            .blocking(move |db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(LOGS)?;
                let mut out = Vec::new();
                for item in table.range::<u64>((start, end))? {
                    let (_, v) = item?;
                    out.push(codec::decode::<Entry>(v.value())?);
                }
                Ok(out)
            })
            .await?;
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.blocking(|db| Self::read_meta(db, KEY_VOTE)).await?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let state = self
            .blocking(|db| {
                let last_purged: Option<LogId> = Self::read_meta(db, KEY_LAST_PURGED)?;
                let last = Self::last_log_id(db)?.or_else(|| last_purged.clone());
                Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
            })
            .await?;
        Ok(state)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let bytes = codec::encode(vote).map_err(Error::from)?;
        crash_point!("raft-storage::save-vote");
        self.blocking(move |db| Self::write_meta(db, KEY_VOTE, bytes, Durability::Immediate)).await?;
        crash_point!("raft-storage::save-vote-done");
        Ok(())
    }

    /// Records the committed log id **without** an fsync of its own: it becomes durable with
    /// the next durable commit (the next append or vote). After a crash the stored value can
    /// only be behind the real one, never ahead, and a committed id that is behind is always
    /// safe: openraft re-learns the rest from the leader.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let bytes = codec::encode(&committed).map_err(Error::from)?;
        Ok(self.blocking(move |db| Self::write_meta(db, KEY_COMMITTED, bytes, Durability::None)).await?)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        let committed: Option<Option<LogId>> = self.blocking(|db| Self::read_meta(db, KEY_COMMITTED)).await?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Encode on the caller's task, then one write transaction and one fsync for the batch.
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| codec::encode(&e).map(|b| (e.log_id.index, b)))
            .collect::<Result<_, _>>()
            .map_err(Error::from)?;
        let count = encoded.len();
        crash_point!("raft-storage::append");
        let result = self
            .blocking(move |db| {
                let mut txn = db.begin_write()?;
                // Readable at once; the flusher makes it durable before reporting it flushed.
                txn.set_durability(Durability::None)?;
                {
                    let mut table = txn.open_table(LOGS)?;
                    for (index, bytes) in &encoded {
                        table.insert(*index, bytes.as_slice())?;
                    }
                }
                txn.commit()?;
                Ok(())
            })
            .await;
        match result {
            Ok(()) => {
                tracing::trace!(entries = count, "log append written; waiting for its fsync");
                crash_point!("raft-storage::append-written");
                #[cfg(feature = "planted-bugs")]
                let callback = {
                    if ack_before_fsync() {
                        callback.io_completed(Ok(()));
                        return Ok(());
                    }
                    callback
                };
                let sent = match &self.flusher.tx {
                    Some(tx) => tx.send(callback),
                    None => Err(std::sync::mpsc::SendError(callback)),
                };
                if let Err(std::sync::mpsc::SendError(callback)) = sent {
                    let err = Error::Flusher("the flusher thread has stopped".into());
                    callback.io_completed(Err(io::Error::other(err.to_string())));
                    return Err(err.into());
                }
                Ok(())
            }
            Err(e) => {
                let err = io::Error::from(e);
                callback.io_completed(Err(io::Error::new(err.kind(), err.to_string())));
                Err(err)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = match &last_log_id {
            Some(l) => Bound::Excluded(l.index),
            None => Bound::Unbounded,
        };
        self.blocking(move |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let mut table = txn.open_table(LOGS)?;
                table.retain_in::<u64, _>((from, Bound::Unbounded), |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })
        .await?;
        tracing::debug!(after = ?last_log_id, "log truncated");
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        crash_point!("raft-storage::purge");
        let upto = log_id.index;
        let bytes = codec::encode(&log_id).map_err(Error::from)?;
        self.blocking(move |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let mut meta = txn.open_table(META)?;
                meta.insert(KEY_LAST_PURGED, bytes.as_slice())?;
                let mut table = txn.open_table(LOGS)?;
                table.retain_in::<u64, _>(..=upto, |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })
        .await?;
        tracing::debug!(upto, "log purged");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;
    use openraft::type_config::TypeConfigExt;

    use super::*;

    #[tokio::test]
    async fn reopen_keeps_entries_vote_and_committed() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(LOG_FILE);
        let leader = openraft::impls::leader_id_adv::LeaderId { term: 2, node_id: types::NodeId::from(1) };
        let vote = Vote::new(2, types::NodeId::from(1));
        let committed = LogId::new(leader.clone(), 2);
        {
            let mut store = LogStore::open(&path)?;
            let entries: Vec<Entry> = (1..=3).map(|i| Entry::new_blank(LogId::new(leader.clone(), i))).collect();
            let (tx, rx) = TypeConfig::oneshot();
            store.append(entries, IOFlushed::signal(tx)).await?;
            rx.await??;
            store.save_vote(&vote).await?;
            store.save_committed(Some(committed.clone())).await?;
        }
        let mut store = LogStore::open(&path)?;
        assert_eq!(store.read_vote().await?, Some(vote));
        assert_eq!(store.read_committed().await?, Some(committed));
        assert_eq!(store.try_get_log_entries(1..=3).await?.len(), 3);
        let state = store.get_log_state().await?;
        assert_eq!(state.last_log_id.map(|l| l.index), Some(3));
        Ok(())
    }
}
