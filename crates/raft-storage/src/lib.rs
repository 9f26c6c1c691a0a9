//! The Raft log of a raftkv node, on redb.
//!
//! [`LogStore`] implements openraft's [`RaftLogStorage`] and [`RaftLogReader`]: the log
//! entries, the vote and the committed log id live in one redb file
//! (`<node dir>/raft-log.redb`). It passes openraft's own storage test suite
//! (`tests/suite.rs`). At open every page checksum is verified; a damaged file is refused
//! with [`Error::Damaged`] and left as it is: the log's vote and entries are promises to the
//! cluster, never discarded here.
//!
//! # Write path and durability contract
//! Nothing on openraft's path waits for redb, except a vote.
//! - [`RaftLogStorage::append`] encodes the entries, holds them in the in-memory log
//!   (module `cache`: readable at once by every log reader, so replication and the state
//!   machine's apply need no redb read), queues them for the log writer and returns.
//! - The log writer (module `writer`), one dedicated thread, takes every queued operation at
//!   once, writes them in order in **one** redb write transaction and makes it durable with
//!   **one** `Durability::Immediate` commit (one fsync); then it reports the appends
//!   flushed (`IOFlushed`), in order. Appends queued during a commit share the next one:
//!   group commit. A write is acknowledged only once a quorum reports it flushed.
//! - [`RaftLogStorage::save_vote`] goes through the same queue, after every append before
//!   it, and returns only once its commit is durable.
//! - Truncation and purge change the in-memory log at once and go through the same queue,
//!   so redb sees every operation in openraft's order; each is one transaction, so a crash
//!   leaves either the old or the new log, never a hole. After a crash, redb holds the
//!   result of a prefix of the operations: what is on disk is the truth.
//! - The committed log id is kept in memory and saved with the writer's next commit that
//!   covers every operation queued before it: after a crash it can only be behind, which
//!   is safe.
//! - A failed commit fails its operations and every later one, and the store refuses new
//!   ones: openraft sees a storage error and stops.
//!
//! Reads below the cache run on tokio's blocking pool, never on a runtime worker.
//!
//! The store stamps three moments of each entry on the node's [`latency::WriteStages`]
//! clock: appended (held in memory), durable (its commit is done) and committed (openraft
//! saved a committed log id covering it); a few relaxed atomic stores, no lock.
//!
//! This crate must never depend on tonic, on the state machine (`fsm`), or on the service
//! layer: it stores bytes for openraft and knows nothing else.

mod cache;
mod writer;

pub use writer::{APPEND_METRIC, FSYNC_METRIC};

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};

use cache::MemLog;
pub use cache::{LOG_CACHE_BYTES, LOG_CACHE_ENTRIES};
use latency::WriteStages;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use types::{Entry, LogId, TypeConfig, Vote, codec};
use writer::{Op, Writer};

/// A crash point: with feature `failpoints`, `fail::fail_point!(name)` (the `raftkv` binary
/// arms one with an `abort()` callback); without it, nothing.
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}
pub(crate) use crash_point;

/// An error point: with feature `failpoints`, a `fail` point that, once armed with the
/// `return` action (`RAFTKV_CRASH_AT` names it; see the `raftkv` binary), makes the
/// operation fail with an injected I/O error, as a failing disk would; without it, nothing.
macro_rules! error_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |_| {
            tracing::error!(point = $name, "error point reached: failing the operation");
            Err(redb::Error::Io(std::io::Error::other(concat!("I/O error injected at ", $name))).into())
        });
    };
}
pub(crate) use error_point;

/// A failing fsync: with feature `failpoints`, a `fail` point that, once armed
/// (`RAFTKV_CRASH_AT`), makes a durable commit fail with `EIO` after its data is written,
/// where redb's commit runs `fsync`/`fdatasync`: the disk reported the write lost. Without
/// the feature, nothing.
macro_rules! fsync_error_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |_| {
            tracing::error!(point = $name, "error point reached: fsync fails with EIO");
            Err(redb::Error::Io(std::io::Error::from_raw_os_error(5)).into())
        });
    };
}
pub(crate) use fsync_error_point;

/// Whether the planted bug "ack before fsync" is armed (feature `planted-bugs` and
/// `RAFTKV_PLANTED_BUG=ack-before-fsync`): the writer commits a group of appends alone
/// without an fsync (`Durability::None`, which redb forgets on a crash) and reports it
/// flushed; the appends become durable only with the next group that holds a vote, a
/// truncation or a purge. A test-only bug the fault suite must catch.
#[cfg(feature = "planted-bugs")]
pub(crate) fn ack_before_fsync() -> bool {
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
    /// The log writer could not be started, has stopped, or failed a commit earlier (its
    /// error is in the message): the store takes no more writes.
    #[error("log writer: {0}")]
    Writer(String),
    /// A blocking task panicked or was cancelled.
    #[error("log store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The log file exists but is damaged: redb cannot open it, or a page fails its checksum.
    /// The file is left as it is: the Raft log is not derived data (its vote and entries
    /// are promises this node made to the cluster), so it is never discarded or repaired
    /// here. `cause` is redb's error, once, as text.
    #[error("raft log {} is damaged ({cause})", path.display())]
    Damaged {
        /// The log file.
        path: std::path::PathBuf,
        /// What redb found.
        cause: String,
    },
}

/// Whether redb's error says the file's bytes are wrong (as opposed to an error of the
/// system, such as a permission or a lock held by another process).
fn is_damage(e: &redb::Error) -> bool {
    match e {
        redb::Error::Corrupted(_) => true,
        redb::Error::Io(io) => matches!(io.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData),
        _ => false,
    }
}

/// Opens the log database at `path` and verifies every page's checksum, reading the whole file
/// once: redb's repair does it when the file was not shut down cleanly (a crash, a kill -9),
/// and `check_integrity` when it was. A file that fails is reported as [`Error::Damaged`],
/// untouched by this function beyond what redb's own open does.
fn open_checked(path: &Path, cache_bytes: usize) -> Result<Database, Error> {
    let existed = path.exists();
    let damaged = |e: redb::Error| -> Error {
        if existed && is_damage(&e) {
            Error::Damaged { path: path.to_path_buf(), cause: e.to_string() }
        } else {
            Error::Redb(e)
        }
    };
    let (mut db, repaired) = open_db(path, cache_bytes).map_err(|e| damaged(e.into()))?;
    if repaired {
        // The repair verified the checksum of every page of the committed trees, the same walk
        // as `check_integrity`.
        tracing::info!(file = %path.display(), "verified by redb's repair on open (the file was not shut down cleanly)");
        return Ok(db);
    }
    match db.check_integrity() {
        Ok(true) => Ok(db),
        Ok(false) => Err(Error::Damaged {
            path: path.to_path_buf(),
            cause: "pages failed their checksums; redb rolled the file back to an earlier commit, which may \
                    have dropped entries or a vote this node had acknowledged"
                .into(),
        }),
        Err(e) => Err(damaged(e.into())),
    }
}

/// Opens (or creates) the database at `path`. Returns whether redb's open had to repair the
/// file (it was not shut down cleanly): that repair verifies every page's checksum.
fn open_db(path: &Path, cache_bytes: usize) -> Result<(Database, bool), redb::DatabaseError> {
    let repaired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = repaired.clone();
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .set_repair_callback(move |_| seen.store(true, std::sync::atomic::Ordering::Relaxed))
        .create(path)?;
    Ok((db, repaired.load(std::sync::atomic::Ordering::Relaxed)))
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

/// Locks the in-memory log. A panic while holding it cannot leave it half-changed in a way
/// that matters more than the panic itself, so a poisoned lock is taken over.
fn lock(mem: &Mutex<MemLog>) -> MutexGuard<'_, MemLog> {
    mem.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The Raft log store. Cheap to clone: clones share one redb database, the in-memory log
/// and the log writer, and openraft uses a clone as the log reader of each replication
/// task and of the state machine.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    mem: Arc<Mutex<MemLog>>,
    writer: Arc<WriterHandle>,
    /// The node's per-stage clock of writes.
    stages: Arc<WriteStages>,
    /// [`LogOptions::append_bytes`].
    append_bytes: usize,
}

/// The log writer thread and its queue. Dropped with the last [`LogStore`] clone: it then
/// closes the queue and waits for the thread (which saves the last committed log id), so
/// the database is closed when the store is gone.
struct WriterHandle {
    queue: Option<Sender<Op>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        drop(self.queue.take());
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

/// The default of [`LogOptions::db_cache_bytes`]: 4 MiB. The writer appends at the end of
/// the log and reads of recent entries come from the log cache, so redb's own cache needs
/// little more than the B-tree's upper pages and one commit's dirty pages (redb's default
/// is 1 GiB per file).
pub const DEFAULT_DB_CACHE_BYTES: usize = 4 << 20;

/// The default of [`LogOptions::append_bytes`]: 1 MiB, etcd's `MaxSizePerMsg`. With values
/// of 64 KiB, openraft's 300 entries would make a 19 MiB message; a follower busy decoding
/// and appending that answers late and can miss its election deadline. Replication keeps
/// several messages in flight on its stream, so smaller messages cost little throughput.
pub const MAX_APPEND_BYTES: usize = 1 << 20;

/// The memory settings of the log store, each bounding one cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// redb's page cache for `raft-log.redb`, in bytes ([`DEFAULT_DB_CACHE_BYTES`]).
    pub db_cache_bytes: usize,
    /// The most durable entries the in-memory log cache keeps ([`LOG_CACHE_ENTRIES`]).
    pub cache_entries: usize,
    /// The most bytes (encoded) of durable entries it keeps ([`LOG_CACHE_BYTES`]).
    pub cache_bytes: usize,
    /// The most bytes (encoded) of entries one replication message to a follower carries
    /// ([`MAX_APPEND_BYTES`]); openraft's `max_payload_entries` bounds their number.
    pub append_bytes: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            db_cache_bytes: DEFAULT_DB_CACHE_BYTES,
            cache_entries: LOG_CACHE_ENTRIES,
            cache_bytes: LOG_CACHE_BYTES,
            append_bytes: MAX_APPEND_BYTES,
        }
    }
}

impl LogStore {
    /// Opens (or creates) the log database at `path` with the default [`LogOptions`].
    pub fn open(path: &Path) -> Result<Self, Error> {
        Self::open_with(path, LogOptions::default())
    }

    /// Opens (or creates) the log database at `path`, reads its durable state and starts
    /// the log writer, with the caches bounded by `options`.
    pub fn open_with(path: &Path, options: LogOptions) -> Result<Self, Error> {
        Self::open_with_stages(path, options, Arc::new(WriteStages::new()))
    }

    /// [`LogStore::open_with`], stamping the appended, durable and committed moments of each
    /// entry on `stages`, the node's clock of writes.
    pub fn open_with_stages(path: &Path, options: LogOptions, stages: Arc<WriteStages>) -> Result<Self, Error> {
        let db = open_checked(path, options.db_cache_bytes)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(LOGS)?;
            txn.open_table(META)?;
        }
        txn.commit()?;
        let committed: Option<Option<LogId>> = Self::read_meta(&db, KEY_COMMITTED)?;
        let committed = committed.flatten();
        let last_purged: Option<LogId> = Self::read_meta(&db, KEY_LAST_PURGED)?;
        let last = Self::last_log_id(&db)?.or_else(|| last_purged.clone());
        let vote = Self::read_meta(&db, KEY_VOTE)?;
        let mut mem = MemLog::new(last, last_purged, vote, committed.clone());
        mem.set_limits(options.cache_entries, options.cache_bytes);
        let mem = Arc::new(Mutex::new(mem));
        let db = Arc::new(db);
        let (queue, ops) = std::sync::mpsc::channel();
        let writer = Writer {
            db: db.clone(),
            mem: mem.clone(),
            written_seq: 0,
            saved_committed: committed,
            stages: stages.clone(),
            path: path.to_path_buf(),
        };
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer.run(&ops))
            .map_err(|e| Error::Writer(e.to_string()))?;
        Ok(Self {
            db,
            mem,
            writer: Arc::new(WriterHandle { queue: Some(queue), thread: Some(thread) }),
            stages,
            append_bytes: options.append_bytes,
        })
    }

    fn mem(&self) -> MutexGuard<'_, MemLog> {
        lock(&self.mem)
    }

    /// Queues the operation `make` builds from its sequence number, under the lock of the
    /// in-memory log and after `change` has updated it, so that the queue's order is the
    /// order of the changes. If an earlier commit failed or the writer is gone, the
    /// operation is reported failed (its callback or answer gets the error) and so is the
    /// call.
    fn queue(&self, change: impl FnOnce(&mut MemLog, u64), make: impl FnOnce(u64) -> Op) -> Result<(), Error> {
        let mut mem = self.mem();
        let seq = mem.next_seq();
        let op = make(seq);
        let refused = match (&mem.failed, &self.writer.queue) {
            (Some(e), _) => Error::Writer(format!("an earlier commit failed: {e}")),
            (None, Some(queue)) => {
                change(&mut mem, seq);
                match queue.send(op) {
                    Ok(()) => return Ok(()),
                    Err(std::sync::mpsc::SendError(op)) => {
                        drop(mem);
                        let err = Error::Writer("the log writer thread has stopped".into());
                        op.finish(&Err(err.to_string()));
                        return Err(err);
                    }
                }
            }
            (None, None) => Error::Writer("the log writer thread has stopped".into()),
        };
        drop(mem);
        op.finish(&Err(refused.to_string()));
        Err(refused)
    }

    fn read_meta<T: codec::DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, Error> {
        let txn = db.begin_read()?;
        let table = txn.open_table(META)?;
        match table.get(key)? {
            Some(v) => Ok(Some(codec::decode(v.value())?)),
            None => Ok(None),
        }
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

    /// Reads the entries of `range` from redb, on the blocking pool.
    async fn read_durable(&self, range: std::ops::Range<u64>) -> Result<Vec<Entry>, Error> {
        Ok(self.read_durable_limited(range, usize::MAX).await?.0)
    }

    /// Reads the durable entries in `range` from redb, stopping before the entry that would
    /// take their encoded size past `budget` (the first one is always read); returns them
    /// and the bytes they take.
    async fn read_durable_limited(
        &self,
        range: std::ops::Range<u64>,
        budget: usize,
    ) -> Result<(Vec<Entry>, usize), Error> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(LOGS)?;
            let (mut out, mut used) = (Vec::new(), 0usize);
            for item in table.range::<u64>(range)? {
                let (_, v) = item?;
                used = used.saturating_add(v.value().len());
                if used > budget && !out.is_empty() {
                    break;
                }
                out.push(codec::decode::<Entry>(v.value())?);
            }
            Ok((out, used.min(budget)))
        })
        .await?
    }
}

/// `range`'s indexes as a half-open range.
fn half_open(range: &impl RangeBounds<u64>) -> std::ops::Range<u64> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    start..end
}

impl RaftLogReader<TypeConfig> for LogStore {
    /// The cached tail comes from memory; only entries below the cache are read from redb,
    /// where they are durable.
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (cached, below) = self.mem().read(half_open(&range));
        if below.is_empty() {
            return Ok(cached);
        }
        let mut entries = self.read_durable(below).await?;
        entries.extend(cached);
        Ok(entries)
    }

    /// What replication sends in one message: the entries from `start` on whose encoded
    /// size stays within [`LogOptions::append_bytes`] (at least one), so that a batch of
    /// large values cannot make a follower decode and append tens of MiB before it answers
    /// (and resets its election timer). Taken under one look at the in-memory log.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
        let budget = self.append_bytes;
        let (cached, below) = self.mem().read_limited(start..end, budget);
        if below.is_empty() {
            return Ok(cached.into_iter().map(|(e, _)| e).collect());
        }
        let len = below.end - below.start;
        let (mut entries, used) = self.read_durable_limited(below, budget).await?;
        if (entries.len() as u64) < len {
            return Ok(entries);
        }
        let mut left = budget - used;
        for (entry, bytes) in cached {
            if bytes > left {
                break;
            }
            left -= bytes;
            entries.push(entry);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.mem().vote.clone())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let mem = self.mem();
        Ok(LogState { last_purged_log_id: mem.last_purged.clone(), last_log_id: mem.last.clone() })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// Queued after every earlier append; returns once the writer's commit that holds it
    /// is durable.
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        crash_point!("raft-storage::save-vote");
        let (saved, done) = tokio::sync::oneshot::channel();
        let vote = vote.clone();
        self.queue(|_, _| {}, |seq| Op::Vote { seq, vote: vote.clone(), saved })?;
        match done.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Writer(e).into()),
            Err(_) => return Err(Error::Writer("the log writer stopped before saving the vote".into()).into()),
        }
        self.mem().vote = Some(vote);
        crash_point!("raft-storage::save-vote-done");
        Ok(())
    }

    /// Records the committed log id in memory only: the writer saves it with its next
    /// commit. After a crash the stored value can only be behind the real one, never ahead,
    /// and a committed id that is behind is always safe: openraft re-learns the rest from
    /// the leader.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        if let Some(c) = &committed {
            self.stages.committed(c.index);
        }
        self.mem().commit(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.mem().committed.clone())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        crash_point!("raft-storage::append");
        let mut cached = Vec::new();
        let mut encoded = Vec::new();
        for entry in entries {
            match codec::encode(&entry) {
                Ok(bytes) => {
                    encoded.push((entry.log_id.index, bytes));
                    cached.push((entry, encoded.last().map_or(0, |(_, b)| b.len())));
                }
                Err(e) => {
                    let err = Error::from(e);
                    callback.io_completed(Err(io::Error::other(err.to_string())));
                    return Err(err.into());
                }
            }
        }
        let count = encoded.len();
        // Before the writer can see them, so that their durable moment comes after.
        if let (Some((first, _)), Some((last, _))) = (encoded.first(), encoded.last()) {
            self.stages.appended(*first..=*last);
        }
        self.queue(
            |mem, seq| mem.append(cached, seq),
            |seq| Op::Append { seq, entries: encoded, flushed: callback, queued: std::time::Instant::now() },
        )?;
        tracing::trace!(entries = count, "log append held in memory; queued for the writer");
        Ok(())
    }

    /// Changes the in-memory log at once; the writer truncates redb in queue order.
    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let after = last_log_id.as_ref().map(|l| l.index);
        self.queue(|mem, _| mem.truncate_after(last_log_id.as_ref()), |seq| Op::Truncate { seq, after })?;
        tracing::debug!(after = ?last_log_id, "log truncated");
        Ok(())
    }

    /// Changes the in-memory log at once; the writer purges redb in queue order.
    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        crash_point!("raft-storage::purge");
        let upto = log_id.clone();
        self.queue(|mem, _| mem.purge(&log_id), |seq| Op::Purge { seq, upto })?;
        tracing::debug!(upto = log_id.index, "log purged");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;
    use openraft::type_config::TypeConfigExt;

    use super::*;

    /// Flips every byte of each place `bytes` holds `pattern`; returns how many it flipped.
    fn flip_every(bytes: &mut [u8], pattern: &[u8]) -> usize {
        let (mut flipped, mut at) = (0, 0);
        while let Some(pos) = bytes[at..].windows(pattern.len()).position(|w| w == pattern) {
            let start = at + pos;
            bytes[start..start + pattern.len()].iter_mut().for_each(|b| *b ^= 0xff);
            flipped += 1;
            at = start + pattern.len();
        }
        flipped
    }

    /// A log file with 64 rows of 4 KiB of a recognizable pattern, closed.
    fn sample_log(path: &Path) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let pattern = b"damage-me-".repeat(410);
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            let mut logs = txn.open_table(LOGS)?;
            // Rows whose bytes the test can find; the last row a real entry, which opening decodes.
            for i in 0..64u64 {
                logs.insert(i, pattern.as_slice())?;
            }
            logs.insert(64, codec::encode(&Entry::new_blank(id(1, 64)))?.as_slice())?;
            txn.open_table(META)?;
        }
        txn.commit()?;
        drop(db);
        Ok(pattern)
    }

    #[test]
    fn a_damaged_log_file_is_refused_naming_it_and_left_in_place() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(LOG_FILE);
        let pattern = sample_log(&path)?;
        drop(LogStore::open(&path)?);
        let intact = std::fs::read(&path)?;

        // Bytes of live rows flipped.
        let mut bytes = intact.clone();
        assert!(flip_every(&mut bytes, &pattern[..64]) > 0);
        // The file truncated to a third.
        let truncated = intact[..intact.len() / 3].to_vec();
        for (how, damaged) in [("flip", bytes), ("truncate", truncated)] {
            std::fs::write(&path, &damaged)?;
            match LogStore::open(&path) {
                Err(Error::Damaged { path: named, cause }) => {
                    assert_eq!(named, path, "{how}");
                    assert!(!cause.is_empty(), "{how}");
                    let text = Error::Damaged { path: named, cause }.to_string();
                    assert!(text.starts_with(&format!("raft log {} is damaged (", path.display())), "{how}: {text}");
                }
                Err(other) => panic!("{how}: not reported as damage: {other}"),
                Ok(_) => panic!("{how}: a damaged log was opened"),
            }
            assert!(path.exists(), "{how}: the damaged log was removed");
        }
        Ok(())
    }

    /// A copy of the file taken while the store is open is what a kill -9 leaves: redb repairs
    /// it on open, and that repair is the check (every page's checksum). Damage is still refused.
    #[test]
    fn a_log_file_not_shut_down_cleanly_is_verified_by_the_repair() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(LOG_FILE);
        let pattern = sample_log(&path)?;
        let open = LogStore::open(&path)?;
        let crashed = std::fs::read(&path)?;
        drop(open);
        let (_, repaired) = open_db(&path, DEFAULT_DB_CACHE_BYTES)?;
        assert!(!repaired, "a cleanly closed file was repaired");

        let copy = dir.path().join("crashed.redb");
        std::fs::write(&copy, &crashed)?;
        let (db, repaired) = open_db(&copy, DEFAULT_DB_CACHE_BYTES)?;
        assert!(repaired, "the file left open was not repaired");
        assert_eq!(redb::ReadableTableMetadata::len(&db.begin_read()?.open_table(LOGS)?)?, 65, "the repair lost rows");
        drop(db);
        std::fs::write(&copy, &crashed)?;
        drop(LogStore::open(&copy)?);

        let mut bytes = crashed.clone();
        assert!(flip_every(&mut bytes, &pattern[..64]) > 0, "no row found to damage");
        std::fs::write(&copy, &bytes)?;
        match LogStore::open(&copy) {
            Err(Error::Damaged { path: named, .. }) => assert_eq!(named, copy),
            Err(other) => panic!("not reported as damage: {other}"),
            Ok(_) => panic!("a damaged log left open by a crash was opened"),
        }
        Ok(())
    }

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

    fn id(term: u64, index: u64) -> LogId {
        LogId::new(openraft::impls::leader_id_adv::LeaderId { term, node_id: types::NodeId::from(1) }, index)
    }

    fn blanks(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        indexes.map(|i| Entry::new_blank(id(term, i))).collect()
    }

    /// Appends without waiting for the flush; returns the flush's receiver.
    async fn append(
        store: &mut LogStore,
        entries: Vec<Entry>,
    ) -> Result<openraft::alias::OneshotReceiverOf<TypeConfig, Result<(), io::Error>>, io::Error> {
        let (tx, rx) = TypeConfig::oneshot();
        store.append(entries, IOFlushed::signal(tx)).await?;
        Ok(rx)
    }

    fn terms(entries: &[Entry]) -> Vec<(u64, u64)> {
        entries.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect()
    }

    #[tokio::test]
    async fn replication_reads_stop_at_the_byte_bound_across_redb_and_the_cache()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        // The cache keeps 2 durable entries: 200..=217 are read from redb, 218 and 219 from memory.
        let options = LogOptions { cache_entries: 2, ..LogOptions::default() };
        let mut store = LogStore::open_with(&dir.path().join(LOG_FILE), options)?;
        append(&mut store, blanks(1, 200..=219)).await?.await??;
        assert_eq!(store.mem().read(200..220).1, 200..218);
        // Every index here takes two varint bytes, so every entry encodes to the same size.
        let one = codec::encode(&Entry::new_blank(id(1, 200)))?.len();
        let indexes = |v: Vec<Entry>| v.iter().map(|e| e.log_id.index).collect::<Vec<_>>();
        let cases: [(usize, u64, Vec<u64>); 6] = [
            (5 * one, 200, (200..=204).collect()),           // redb only
            (5 * one, 215, (215..=219).collect()),           // redb, then the cache
            (5 * one + one / 2, 214, (214..=218).collect()), // stops inside the cache
            (5 * one, 218, vec![218, 219]),                  // the cache only, below the bound
            (one - 1, 210, vec![210]),                       // one entry past the bound still goes
            (one - 1, 219, vec![219]),
        ];
        for (budget, start, want) in cases {
            store.append_bytes = budget;
            assert_eq!(indexes(store.limited_get_log_entries(start, 220).await?), want, "{budget} from {start}");
        }
        store.append_bytes = MAX_APPEND_BYTES;
        assert_eq!(store.limited_get_log_entries(200, 220).await?.len(), 20);
        store.append_bytes = one;
        assert_eq!(store.try_get_log_entries(200..220).await?.len(), 20, "the apply's reads have no bound");
        Ok(())
    }

    #[tokio::test]
    async fn truncation_and_purge_reach_redb_in_the_order_openraft_issued_them()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(LOG_FILE);
        {
            let mut store = LogStore::open(&path)?;
            // None of these waits for the writer: the reader sees the in-memory log at once.
            let first = append(&mut store, blanks(1, 1..=6)).await?;
            store.truncate_after(Some(id(1, 3))).await?;
            let second = append(&mut store, blanks(2, 4..=5)).await?;
            store.purge(id(1, 1)).await?;
            let expected = vec![(1, 2), (1, 3), (2, 4), (2, 5)];
            assert_eq!(terms(&store.try_get_log_entries(0..100).await?), expected);
            first.await??;
            second.await??;
            // A vote is durable when save_vote returns, and so is everything queued before it.
            store.save_committed(Some(id(2, 5))).await?;
            store.save_vote(&Vote::new(2, types::NodeId::from(1))).await?;
            drop(store);
            let mut store = LogStore::open(&path)?;
            assert_eq!(terms(&store.try_get_log_entries(0..100).await?), expected);
            assert_eq!(store.read_committed().await?, Some(id(2, 5)));
            let state = store.get_log_state().await?;
            assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(id(1, 1)), Some(id(2, 5))));
        }
        Ok(())
    }

    #[tokio::test]
    async fn the_committed_id_is_saved_on_close_without_a_write_after_it() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(LOG_FILE);
        let mut store = LogStore::open(&path)?;
        append(&mut store, blanks(1, 0..=2)).await?.await??;
        store.save_committed(Some(id(1, 2))).await?;
        drop(store);
        assert_eq!(LogStore::open(&path)?.read_committed().await?, Some(id(1, 2)));
        Ok(())
    }

    #[tokio::test]
    async fn after_a_failed_commit_every_write_fails_and_reports_it() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut store = LogStore::open(&dir.path().join(LOG_FILE))?;
        store.mem().failed = Some("disk on fire".into());
        let (tx, rx) = TypeConfig::oneshot();
        let appended = store.append(blanks(1, 0..=0), IOFlushed::signal(tx)).await;
        assert!(appended.is_err_and(|e| e.to_string().contains("disk on fire")));
        assert!(rx.await?.is_err_and(|e| e.to_string().contains("disk on fire")), "the callback hears of it too");
        assert!(store.save_vote(&Vote::new(1, types::NodeId::from(1))).await.is_err());
        assert!(store.truncate_after(None).await.is_err());
        assert!(store.purge(id(1, 0)).await.is_err());
        Ok(())
    }

    #[tokio::test]
    async fn appends_are_stamped_appended_durable_and_committed_in_order() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let stages = Arc::new(WriteStages::new());
        let mut store = LogStore::open_with_stages(&dir.path().join(LOG_FILE), LogOptions::default(), stages.clone())?;
        let proposed = stages.now();
        append(&mut store, blanks(1, 1..=3)).await?.await??;
        store.save_committed(Some(id(1, 3))).await?;
        for index in 1..=3 {
            stages.answered(index, proposed);
        }
        let report = stages.report(false);
        assert_eq!((report.writes, report.unmatched), (3, 0));
        let overtaken: Vec<u64> = report.stages.iter().map(|s| s.overtaken).collect();
        // The log's three moments came in order; applied is the state machine's to stamp.
        assert_eq!(overtaken, [0, 0, 0, 3, 0], "{report:?}");
        Ok(())
    }

    #[tokio::test]
    async fn an_append_over_the_tail_replaces_all_of_it_in_redb_too() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(LOG_FILE);
        let mut store = LogStore::open(&path)?;
        append(&mut store, blanks(1, 0..=5)).await?.await??;
        append(&mut store, blanks(2, 3..=3)).await?.await??;
        let expected = vec![(1, 0), (1, 1), (1, 2), (2, 3)];
        assert_eq!(terms(&store.try_get_log_entries(0..100).await?), expected);
        drop(store);
        assert_eq!(terms(&LogStore::open(&path)?.try_get_log_entries(0..100).await?), expected);
        Ok(())
    }
}
