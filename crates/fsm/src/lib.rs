//! The raftkv state machine: the key-value data, persisted in redb.
//!
//! # Brief overview
//! - [`StateMachine`] implements openraft's [`RaftStateMachine`]. It applies committed
//!   [`Command`]s to the key-value table, keeping per key a `create_index`, a `modify_index`
//!   (the Raft log index of the write) and a `version` (see [`KeyValue`]).
//! - Each apply batch is **one** redb write transaction, and the last applied log id and the
//!   last membership are written in that same transaction as the data, so the stored state
//!   is always exactly "the log applied up to `last_applied`".
//! - Apply commits are **not** fsynced one by one: a write is acknowledged once its log
//!   entry is fsynced on a quorum, and the log, not the state machine, is what makes it
//!   durable. A commit is made durable at least every [`DURABLE_APPLY_INTERVAL`] and
//!   whenever the membership changes. After a crash the state machine comes back at its
//!   last durable commit, a consistent point at most that interval behind, and openraft
//!   re-applies the committed entries after it from the log (the persisted committed log
//!   id says how far). Snapshot files are fsynced before they are used; building one first
//!   makes the state it holds durable, so a crash does not bring the state back behind its
//!   own newest snapshot. If the state does come back behind the newest snapshot (one
//!   received from the leader, whose log entries may be purged), [`StateMachine::open`]
//!   rebuilds it from that snapshot first. So a restart never loses
//!   an applied entry and never replays more than a short tail of the log.
//! - Snapshots ([`snapshot`]) are built from one read transaction (a consistent view, while
//!   writes go on), written to a file with a header, a format version and a CRC32, and
//!   installed by building a **fresh** database file and swapping it in with an atomic
//!   rename. A corrupt snapshot is refused with [`Error::CorruptSnapshot`] and changes
//!   nothing. At open, every snapshot file is read whole and verified; a damaged one is set
//!   aside (`<name>.damaged-<nanos>`, kept) and openraft builds a fresh one from the state,
//!   which holds at least what the snapshot held. A damaged `state.redb` is set aside too and
//!   rebuilt from the snapshot and the log.
//! - At-most-once writes: each write's request id and outcome are one row of table
//!   `requests_at`, keyed by log index (appended at its right end, swept from its left end),
//!   found through an in-memory map of id → index that reflects committed applies only
//!   (`store::RequestIds`); see [`MAX_REQUEST_IDS`].
//! - [`StateMachine::hash_kv`] hashes the key-value state at its applied index (one read
//!   transaction), for comparing replicas (`Admin.HashKV`, `raftkvctl check`).
//! - [`StateMachine::subscribe_applied`] publishes the applied index (a tokio `watch`), so
//!   readers wait for an index without polling.
//! - Each apply batch stamps its entries applied on the node's [`latency::WriteStages`]
//!   clock once its transaction is committed (relaxed atomic stores, no lock).
//! - The change feed ([`changes`]): each apply records what it changed to which key, keeps
//!   it in a bounded in-memory history, and hands it to the watchers of those keys after the
//!   transaction commits ([`StateMachine::watch`]). Installing a snapshot clears the
//!   history and tells every watcher its state was **abandoned**; [`StateMachine::close_watches`]
//!   ends them all at shutdown.
//! - Authentication ([`StateMachine::auth_state`]): users, roles and permissions are
//!   changed by [`Command::Auth`] entries, stored in `sm_meta` in the same apply
//!   transaction, carried in snapshots, and published on a tokio `watch` before the
//!   batch's changes reach any watcher ([`StateMachine::subscribe_auth`]).
//!
//! # Files, under the directory given to [`StateMachine::open`]
//! - `state.redb`: the live database; `state.redb.installing` while a snapshot is installed.
//! - `snapshots/snap-<index>-<n>.rkvs`: the current snapshot; `*.part` while one is written.
//! - `incoming/`: snapshots being received from the leader.
//!
//! This crate must never depend on tonic, chitchat, gossip, raft-storage or the service
//! layer: it is pure state, driven by openraft.

mod applier;
mod auth;
pub mod changes;
mod error;
pub mod snapshot;

/// The names of the metrics the state machine records at their source (the metrics
/// reference, docs/metrics.md); with no recorder installed they cost nothing.
pub mod metric {
    /// Counter: snapshots built by this node.
    pub const SNAPSHOTS_BUILT: &str = "raftkv_snapshots_built_total";
    /// Counter: snapshots installed on this node (sent by a leader).
    pub const SNAPSHOTS_INSTALLED: &str = "raftkv_snapshots_installed_total";
    /// Histogram: how long building a snapshot took.
    pub const SNAPSHOT_BUILD_SECONDS: &str = "raftkv_snapshot_build_seconds";
    /// Histogram: how long installing a snapshot took.
    pub const SNAPSHOT_INSTALL_SECONDS: &str = "raftkv_snapshot_install_seconds";
    /// Histogram: the size of each snapshot file built or installed.
    pub const SNAPSHOT_SIZE_BYTES: &str = "raftkv_snapshot_size_bytes";
    /// Counter: watchers dropped because they fell too far behind (their buffer overflowed).
    pub const WATCHERS_DROPPED: &str = "raftkv_watchers_dropped_total";
}
mod store;

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableHandle};
use tokio::sync::watch;
use types::{CommandResult, LogId, SnapshotMeta, StoredMembership, TypeConfig, codec};

use changes::Hub;
pub use changes::{
    Changes, DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_EVENTS, Event, EventKind, HistoryLimits, MAX_WATCHERS,
    WATCHER_BUFFER_BYTES, WATCHER_BUFFER_MESSAGES, WatchStart, WatchStats, Watcher,
};

/// A crash point: with feature `failpoints`, `fail::fail_point!(name)` (the `raftkv` binary
/// arms one with an `abort()` callback); without it, nothing.
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}

/// An error point: with feature `failpoints`, a `fail` point that, once armed with the
/// `return` action (`RAFTKV_CRASH_AT` names it; see the `raftkv` binary), makes the
/// operation fail with an injected I/O error, as a failing disk would; without it, nothing.
macro_rules! error_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |_| {
            tracing::error!(point = $name, "error point reached: failing the operation");
            Err(io::Error::other(concat!("I/O error injected at ", $name)))
        });
    };
}

/// A failing fsync: with feature `failpoints`, a `fail` point that, once armed
/// (`RAFTKV_CRASH_AT`), makes a durable apply commit fail with `EIO`, where redb's commit runs
/// `fsync`/`fdatasync`. Without the feature, nothing.
macro_rules! fsync_error_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |_| {
            tracing::error!(point = $name, "error point reached: fsync fails with EIO");
            Err(Error::Redb(redb::Error::Io(io::Error::from_raw_os_error(5))))
        });
    };
}

pub use error::Error;
pub use snapshot::{ReadProgress, SnapshotFile};
use snapshot::{SnapshotReader, SnapshotWriter};
use store::{
    KV, LEASE_KEYS, LEASES, META, META_LAST_APPLIED, META_MEMBERSHIP, REQUESTS, REQUESTS_AT, REQUESTS_BY_INDEX, Record,
    RequestIds,
};
pub use store::{MAX_REQUEST_IDS, TXN_READ_BUDGET_BYTES};
pub use types::{Alarm, AlarmAction, AlarmCommand, AlarmKind};
pub use types::{Command, KeyValue, RangeOp, RangeResult};

/// The lease map of a write that attaches no key to a lease.
static NO_LEASES: std::collections::BTreeMap<Vec<u8>, types::LeaseAttach> = std::collections::BTreeMap::new();

/// One etcd lease as the state machine holds it ([`StateMachine::lease`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    /// The lease id.
    pub id: types::LeaseId,
    /// The TTL it was granted with, in seconds.
    pub ttl: i64,
    /// The keys attached to it, in key order (when asked for).
    pub keys: Vec<Vec<u8>>,
}

/// A snapshot as openraft sees it: metadata and the file.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>;

/// The Raft node type of raftkv: openraft with this state machine.
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

const DB_FILE: &str = "state.redb";
const DB_INSTALLING: &str = "state.redb.installing";
const SNAPSHOT_DIR: &str = "snapshots";
const INCOMING_DIR: &str = "incoming";
const SNAPSHOT_EXT: &str = "rkvs";
const PART_EXT: &str = "part";

/// An apply commit is made durable (fsynced) at least this often; the ones between are not.
pub const DURABLE_APPLY_INTERVAL: Duration = Duration::from_millis(500);

/// The default of [`Options::db_cache_bytes`]: 16 MiB. redb's own default is 1 GiB per
/// file, which with a large state is most of a node's memory; reads of pages outside the
/// cache come from the operating system's page cache (one `pread` each). With 1,000,000
/// keys of 256 bytes, 16 MiB instead of 64 MiB (and 4 MiB instead of 16 MiB for the log's
/// cache) took a node's RSS from 224-238 MiB to 144-157 MiB, and the load and the gets
/// after it were no slower (BENCHMARKS.md, "The
/// caches' defaults").
pub const DEFAULT_DB_CACHE_BYTES: usize = 16 << 20;

/// The memory settings of the state machine, each bounding one cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The bounds of the watch history ([`HistoryLimits::default`]).
    pub history: HistoryLimits,
    /// redb's page cache for `state.redb`, in bytes ([`DEFAULT_DB_CACHE_BYTES`]).
    pub db_cache_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self { history: HistoryLimits::default(), db_cache_bytes: DEFAULT_DB_CACHE_BYTES }
    }
}

/// While a snapshot is installed, records are committed in batches of about this many bytes,
/// so the installer's memory stays bounded whatever the snapshot size.
const INSTALL_BATCH_BYTES: usize = 16 << 20;

/// The key-value state machine. Cheap to clone: clones share one state, so the engine gives
/// one to openraft and keeps another for reads.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// redb's cache size for the live database (and every one swapped in).
    db_cache_bytes: usize,
    /// The live database. Swapped whole when a snapshot is installed; the lock is held only
    /// to clone or replace the `Arc`, never across an await or a transaction.
    db: RwLock<Arc<Database>>,
    applied: watch::Sender<u64>,
    current: Mutex<Option<CurrentSnapshot>>,
    seq: AtomicU64,
    /// When an apply commit was last made durable.
    last_durable: Mutex<Instant>,
    /// The change feed: history and watchers.
    hub: Arc<Hub>,
    /// The thread every apply batch runs on.
    applier: applier::Applier,
    /// The node's per-stage clock of writes.
    stages: Arc<latency::WriteStages>,
    /// The authentication state as last applied.
    auth: watch::Sender<Arc<types::auth::AuthState>>,
    /// Set once an apply failed: nothing is committed any more (see [`StateMachine::flush`]).
    failed: std::sync::atomic::AtomicBool,
    /// The active alarms as last applied (a copy of `sm_meta`'s, for the write path's
    /// check without a read transaction).
    alarms: RwLock<Arc<Vec<Alarm>>>,
    /// Where each remembered request id was applied, as of the last committed apply (see
    /// [`RequestIds`]). Locked by the apply for its whole batch, and replaced when the
    /// database is (a snapshot installed); nothing else touches it.
    requests: Mutex<RequestIds>,
}

/// A hash of the key-value state at an applied index ([`StateMachine::hash_kv`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    /// The applied index the state reflects.
    pub index: u64,
    /// CRC32 of every key and its stored record, in key order.
    pub hash: u32,
    /// The number of keys.
    pub keys: u64,
}

#[derive(Clone)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    path: PathBuf,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

impl StateMachine {
    /// Opens (or creates) the state machine in `dir`, cleaning up what an interrupted
    /// snapshot build, transfer or install left behind. If the newest snapshot is ahead of
    /// the database (a crash between writing a received snapshot and swapping it in), the
    /// database is rebuilt from that snapshot.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        Self::open_with_options(dir, Options::default())
    }

    /// [`StateMachine::open`] with the change history bounded by `history`.
    pub fn open_with(dir: &Path, history: HistoryLimits) -> Result<Self, Error> {
        Self::open_with_options(dir, Options { history, ..Options::default() })
    }

    /// [`StateMachine::open`] with the caches bounded by `options`.
    pub fn open_with_options(dir: &Path, options: Options) -> Result<Self, Error> {
        Self::open_with_stages(dir, options, Arc::new(latency::WriteStages::new()))
    }

    /// [`StateMachine::open_with_options`], stamping the applied moment of each entry on
    /// `stages`, the node's clock of writes.
    pub fn open_with_stages(dir: &Path, options: Options, stages: Arc<latency::WriteStages>) -> Result<Self, Error> {
        let Options { history, db_cache_bytes } = options;
        let snap_dir = dir.join(SNAPSHOT_DIR);
        let incoming = dir.join(INCOMING_DIR);
        for d in [dir, &snap_dir, &incoming] {
            fs::create_dir_all(d).map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
        remove_if_exists(&dir.join(DB_INSTALLING))?;
        for entry in read_dir(&incoming)? {
            remove_if_exists(&entry)?;
        }
        let mut snapshots = Vec::new();
        for path in read_dir(&snap_dir)? {
            match path.extension().and_then(|e| e.to_str()) {
                // The whole file is read and its checksum verified: a snapshot is what a lagging
                // follower is sent, so a damaged one must never leave this node.
                Some(SNAPSHOT_EXT) => match snapshot::verify_file(&path) {
                    Ok((meta, _)) => snapshots.push(CurrentSnapshot { meta, path }),
                    Err(Error::CorruptSnapshot(why)) => set_aside_snapshot(&path, &why)?,
                    Err(e) => return Err(e),
                },
                _ if is_set_aside(&path) => {}
                _ => remove_if_exists(&path)?,
            }
        }
        snapshots.sort_by(|a, b| a.meta.last_log_id.cmp(&b.meta.last_log_id));
        let current = snapshots.pop();
        for old in snapshots {
            remove_if_exists(&old.path)?;
        }

        let db = open_checked(&dir.join(DB_FILE), db_cache_bytes)?;
        let sm = Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                db_cache_bytes,
                db: RwLock::new(Arc::new(db)),
                applied: watch::channel(0).0,
                current: Mutex::new(current.clone()),
                seq: AtomicU64::new(0),
                last_durable: Mutex::new(Instant::now()),
                hub: Arc::new(Hub::new(0, history)),
                applier: applier::Applier::start()?,
                stages,
                auth: watch::channel(Arc::default()).0,
                alarms: RwLock::new(Arc::new(Vec::new())),
                failed: std::sync::atomic::AtomicBool::new(false),
                requests: Mutex::new(RequestIds::default()),
            }),
        };
        let (applied, _) = sm.read_applied_state()?;
        if let Some(snap) = current
            && snap.meta.last_log_id > applied
        {
            tracing::warn!(
                snapshot = ?snap.meta.last_log_id,
                applied = ?applied,
                "state is behind the newest snapshot; rebuilding it from the snapshot"
            );
            let file = SnapshotFile::open(&snap.path)?;
            sm.rebuild_from(&file, &snap.meta)?;
        }
        let (applied, _) = sm.read_applied_state()?;
        let applied = types::index_of(applied.as_ref());
        sm.reload_auth()?;
        sm.reload_alarms()?;
        sm.reload_request_ids()?;
        // The history starts empty: only changes applied from now on can be replayed.
        sm.inner.hub.abandon(applied);
        sm.inner.applied.send_replace(applied);
        Ok(sm)
    }

    /// A storage error that names the database file, for the message the node stops with.
    fn file_error(&self, doing: &str, e: Error) -> io::Error {
        let kind = match &e {
            Error::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, format!("{doing} {}: {e}", self.inner.dir.join(DB_FILE).display()))
    }

    fn db(&self) -> Arc<Database> {
        match self.inner.db.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads one key. Reads never wait for the writer (redb is MVCC).
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, Error> {
        let db = self.db();
        let txn = db.begin_read()?;
        let table = txn.open_table(KV)?;
        store::get(&table, key)
    }

    /// Reads a range of keys from one consistent view: at most `op.limit` keys (0: no
    /// limit) and about `max_bytes` of keys and values (always at least one key), with the
    /// number of keys in the whole range.
    pub fn range(&self, op: &RangeOp, max_bytes: usize) -> Result<RangeResult, Error> {
        let db = self.db();
        let txn = db.begin_read()?;
        let table = txn.open_table(KV)?;
        store::range(&table, op, max_bytes)
    }

    /// Reads a range (see [`StateMachine::range`]) together with the applied index it
    /// reflects, both from one read transaction.
    pub fn range_at(&self, op: &RangeOp, max_bytes: usize) -> Result<(RangeResult, u64), Error> {
        let db = self.db();
        let txn = db.begin_read()?;
        let table = txn.open_table(KV)?;
        let found = store::range(&table, op, max_bytes)?;
        let meta = txn.open_table(META)?;
        let applied: Option<LogId> = match meta.get(META_LAST_APPLIED)? {
            Some(v) => Some(codec::decode(v.value())?),
            None => None,
        };
        Ok((found, types::index_of(applied.as_ref())))
    }

    /// The etcd lease `id` as applied here, with its attached keys when `with_keys`; none
    /// when it does not exist.
    pub fn lease(&self, id: types::LeaseId, with_keys: bool) -> Result<Option<LeaseState>, Error> {
        let db = self.db();
        let txn = db.begin_read()?;
        let Some(ttl) = txn.open_table(LEASES)?.get(id)?.map(|v| v.value()) else { return Ok(None) };
        let keys = if with_keys { store::lease_keys(&txn.open_table(LEASE_KEYS)?, id)? } else { Vec::new() };
        Ok(Some(LeaseState { id, ttl, keys }))
    }

    /// Every etcd lease applied here, as (id, granted TTL in seconds), in id order.
    pub fn leases(&self) -> Result<Vec<(types::LeaseId, i64)>, Error> {
        let db = self.db();
        let txn = db.begin_read()?;
        let table = txn.open_table(LEASES)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (id, ttl) = row?;
            out.push((id.value(), ttl.value()));
        }
        Ok(out)
    }

    /// Hashes the key-value state (etcd's `hashkv`) from one read transaction: CRC32 over
    /// every key in key order, each as its length (u32 LE), the key, the stored record's
    /// length (u32 LE) and the record (create index, modify index, version, value). Returns
    /// the applied index that state reflects, the hash and the number of keys. Replicas at the
    /// same index must have the same hash; reads while it runs never wait (redb is MVCC).
    pub fn hash_kv(&self) -> Result<KvHash, Error> {
        let db = self.db();
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let applied: Option<LogId> = match meta.get(META_LAST_APPLIED)? {
            Some(v) => Some(codec::decode(v.value())?),
            None => None,
        };
        let table = txn.open_table(KV)?;
        let mut crc = crc32fast::Hasher::new();
        let mut keys = 0u64;
        for row in table.iter()? {
            let (k, v) = row?;
            let (k, v) = (k.value(), v.value());
            for part in [k, v] {
                let len = u32::try_from(part.len()).map_err(|_| Error::CorruptRecord("longer than 4 GiB"))?;
                crc.update(&len.to_le_bytes());
                crc.update(part);
            }
            keys += 1;
        }
        Ok(KvHash { index: types::index_of(applied.as_ref()), hash: crc.finalize(), keys })
    }

    /// Registers a watcher of `range` for every change at or after `start_index` (0: the
    /// changes after the last one published). Changes still in the history come in
    /// [`WatchStart::backlog`], later ones through the watcher's mailbox, with no gap and no
    /// repeat between them.
    ///
    /// Fails with [`Error::Compacted`] when `start_index` is older than the history holds,
    /// [`Error::TooManyWatchers`] past [`MAX_WATCHERS`], and [`Error::Closed`] after
    /// [`StateMachine::close_watches`].
    pub fn watch(&self, range: types::KeyRange, start_index: u64) -> Result<(Watcher, WatchStart), Error> {
        self.inner.hub.watch(range, start_index)
    }

    /// Ends every watcher (each is told [`blocking_query::Signal::Closed`]) and refuses new
    /// ones: the node is shutting down.
    pub fn close_watches(&self) {
        self.inner.hub.close();
    }

    /// Becomes `true` once [`StateMachine::close_watches`] ran: a stream that holds no
    /// watcher (an etcd watch stream between watches) ends on it.
    #[must_use]
    pub fn subscribe_watches_closed(&self) -> watch::Receiver<bool> {
        self.inner.hub.subscribe_closed()
    }

    /// The newest point the history was compacted at through the log
    /// ([`types::Command::Compact`]); 0 when none was applied since the node started.
    #[must_use]
    pub fn compacted_revision(&self) -> u64 {
        self.inner.hub.compacted()
    }

    /// Figures about the watchers and the history.
    #[must_use]
    pub fn watch_stats(&self) -> WatchStats {
        self.inner.hub.stats()
    }

    /// The authentication state as applied here.
    #[must_use]
    pub fn auth_state(&self) -> Arc<types::auth::AuthState> {
        self.inner.auth.borrow().clone()
    }

    /// A receiver that sees the authentication state each time an apply batch or a snapshot
    /// install changes it; it changes before the batch's events reach any watcher.
    #[must_use]
    pub fn subscribe_auth(&self) -> watch::Receiver<Arc<types::auth::AuthState>> {
        self.inner.auth.subscribe()
    }

    /// Reads the authentication state from the live database into the published copy.
    /// Rebuilds the index of remembered request ids from the live database.
    fn reload_request_ids(&self) -> Result<(), Error> {
        let mut ids = self.inner.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let db = self.db();
        let txn = db.begin_read()?;
        *ids = RequestIds::load(&txn.open_table(REQUESTS_AT)?)?;
        Ok(())
    }

    fn reload_auth(&self) -> Result<(), Error> {
        let db = self.db();
        let txn = db.begin_read()?;
        let state = auth::read(&txn.open_table(META)?)?;
        self.inner.auth.send_replace(Arc::new(state));
        Ok(())
    }

    /// The index of the last applied log entry (0 before any).
    #[must_use]
    pub fn applied_index(&self) -> u64 {
        *self.inner.applied.borrow()
    }

    /// A receiver that sees the applied index each time a batch is applied or a snapshot
    /// installed. Waiting on it is how readers wait for an index: no polling.
    #[must_use]
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }

    /// Makes every applied commit durable now (one fsync). Called on a clean stop, so a
    /// restart has nothing to re-apply. Never after an apply failed ([`Error::Failed`]):
    /// a failed commit's fsync is not retried.
    pub fn flush(&self) -> Result<(), Error> {
        if self.inner.failed.load(Ordering::SeqCst) {
            return Err(Error::Failed);
        }
        let db = self.db();
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.commit()?;
        *self.inner.last_durable.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        Ok(())
    }

    /// The active alarms, as applied here (see [`types::alarm`]).
    #[must_use]
    pub fn alarms(&self) -> Arc<Vec<Alarm>> {
        match self.inner.alarms.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_alarms(&self, alarms: Vec<Alarm>) {
        let mut slot = match self.inner.alarms.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *slot = Arc::new(alarms);
    }

    /// Reads the alarms from the live database into memory.
    fn reload_alarms(&self) -> Result<(), Error> {
        let db = self.db();
        let txn = db.begin_read()?;
        let alarms = store::read_alarms(&txn.open_table(META)?)?;
        self.set_alarms(alarms);
        Ok(())
    }

    /// The size of the state machine's database file, `state.redb`, in bytes: what the
    /// storage quota (`--quota_backend_bytes`) is compared with.
    pub fn db_file_bytes(&self) -> Result<u64, Error> {
        let path = self.inner.dir.join(DB_FILE);
        fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|e| Error::io(format!("reading the size of {}", path.display()), e))
    }

    /// Gives the space that deleted keys left free inside `state.redb` back to the
    /// filesystem (redb's compaction), so the file shrinks. Waits at most `wait` for the
    /// reads and the apply in progress to end; returns whether it compacted. Reads and
    /// applies wait while it runs.
    pub fn compact(&self, wait: Duration) -> Result<bool, Error> {
        let mut slot = match self.inner.db.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let deadline = Instant::now() + wait;
        while Arc::strong_count(&slot) > 1 {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let Some(db) = Arc::get_mut(&mut slot) else { return Ok(false) };
        let before = self.db_file_bytes()?;
        let mut compacted = false;
        while db.compact().map_err(redb::Error::from)? {
            compacted = true;
        }
        if compacted {
            tracing::info!(before, after = self.db_file_bytes()?, "state machine database compacted");
        }
        Ok(compacted)
    }

    /// Number of keys stored (a full count; for tests and status, not for hot paths).
    pub fn len(&self) -> Result<u64, Error> {
        let db = self.db();
        let txn = db.begin_read()?;
        Ok(txn.open_table(KV)?.len()?)
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }

    /// Starts receiving a snapshot from the leader into a temporary file of this state
    /// machine. The file is removed if the transfer is dropped before [`IncomingSnapshot::finish`].
    pub fn incoming_snapshot(&self) -> Result<IncomingSnapshot, Error> {
        let path = self.inner.dir.join(INCOMING_DIR).join(self.unique_name("recv", PART_EXT));
        let file = File::create(&path).map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        Ok(IncomingSnapshot { out: Some(BufWriter::with_capacity(1 << 20, file)), path, written: 0 })
    }

    fn unique_name(&self, prefix: &str, ext: &str) -> String {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{nanos}-{seq}.{ext}")
    }

    fn read_applied_state(&self) -> Result<(Option<LogId>, StoredMembership), Error> {
        let db = self.db();
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let applied = match meta.get(META_LAST_APPLIED)? {
            Some(v) => Some(codec::decode(v.value())?),
            None => None,
        };
        let membership = match meta.get(META_MEMBERSHIP)? {
            Some(v) => codec::decode(v.value())?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    /// Applies a batch of entries in one write transaction; returns one result per entry.
    ///
    /// The commit is durable (fsynced) only when the last durable one is older than
    /// [`DURABLE_APPLY_INTERVAL`], or the batch changes the membership; see the crate docs
    /// for why that is safe.
    fn apply_batch(&self, db: &Database, entries: &[types::Entry]) -> Result<Vec<CommandResult>, Error> {
        let mut results = Vec::with_capacity(entries.len());
        let mut events = Vec::new();
        let Some(last) = entries.last() else { return Ok(results) };
        let has_membership = entries.iter().any(|e| matches!(e.payload, EntryPayload::Membership(_)));
        let durable = has_membership || self.durable_due();
        let mut txn = db.begin_write()?;
        txn.set_durability(if durable { Durability::Immediate } else { Durability::None })?;
        let mut membership = None;
        let mut auth = auth::BatchAuth::new(&self.inner.auth);
        let mut alarms: Option<Vec<Alarm>> = None;
        let mut compact_at: Option<u64> = None;
        // Held for the whole batch: the index changes only once the transaction commits.
        let mut ids = self.inner.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let request_change = {
            let mut tables = store::ApplyTables::open(&txn, &ids)?;
            for entry in entries {
                let result = match &entry.payload {
                    EntryPayload::Blank => CommandResult::None,
                    EntryPayload::Normal(Command::Write(w)) => {
                        CommandResult::Write(tables.apply_write(entry.log_id.index, w, &NO_LEASES, &mut events)?)
                    }
                    EntryPayload::Normal(Command::CheckedWrite(c)) => {
                        let index = entry.log_id.index;
                        CommandResult::Write(match auth.check_write(index, c) {
                            // Refused: nothing changes, and the request id is not
                            // remembered (a retry once permitted applies).
                            Some(result) => types::WriteOutcome { index, duplicate: false, result },
                            None => tables.apply_write(index, &c.write, &NO_LEASES, &mut events)?,
                        })
                    }
                    EntryPayload::Normal(Command::LeasedWrite(l)) => {
                        let index = entry.log_id.index;
                        CommandResult::Write(match auth.check_write(index, &l.write) {
                            Some(result) => types::WriteOutcome { index, duplicate: false, result },
                            None => tables.apply_write(index, &l.write.write, &l.leases, &mut events)?,
                        })
                    }
                    EntryPayload::Normal(Command::Lease(l)) => {
                        let outcome = tables.apply_lease(entry.log_id.index, l, &mut events)?;
                        tracing::debug!(index = entry.log_id.index, command = %l, outcome = ?outcome, "lease command applied");
                        CommandResult::Lease(outcome)
                    }
                    EntryPayload::Normal(Command::Auth(a)) => CommandResult::Auth(auth.apply(entry.log_id.index, a)),
                    EntryPayload::Normal(Command::Alarm(a)) => {
                        let list = alarms.get_or_insert_with(|| self.alarms().as_ref().clone());
                        if types::alarm::apply_alarm(list, a, entry.log_id.index) {
                            tracing::warn!(index = entry.log_id.index, alarm = %a.kind, member = %a.member, action = ?a.action, "alarm changed");
                        }
                        CommandResult::None
                    }
                    EntryPayload::Normal(Command::Compact(revision)) => {
                        // Never past the entry itself: nothing after it is known yet.
                        let at = (*revision).min(entry.log_id.index);
                        compact_at = Some(compact_at.map_or(at, |c| c.max(at)));
                        CommandResult::None
                    }
                    EntryPayload::Membership(m) => {
                        membership = Some(StoredMembership::new(Some(entry.log_id.clone()), m.clone()));
                        CommandResult::None
                    }
                };
                results.push(result);
            }
            if store::sweep_due(entries[0].log_id.index, last.log_id.index) {
                tables.forget_old_requests()?;
            }
            tables.finish()
        };
        store::write_applied(&txn, &last.log_id, membership.as_ref(), alarms.as_deref())?;
        auth.write(&txn)?;
        if durable {
            fsync_error_point!("fsm::fsync-fails");
        }
        txn.commit()?;
        ids.commit(request_change);
        drop(ids);
        if let Some(a) = alarms {
            self.set_alarms(a);
        }
        // Before the events: a watcher that sees a change after a revocation can see it.
        auth.publish();
        self.inner.stages.applied(entries[0].log_id.index..=last.log_id.index);
        // Watchers hear of the changes only once a read can see them.
        self.inner.hub.publish(last.log_id.index, events);
        if let Some(revision) = compact_at {
            self.inner.hub.compact(revision);
        }
        if durable {
            *self.inner.last_durable.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        }
        Ok(results)
    }

    /// Whether the next apply commit should be durable.
    fn durable_due(&self) -> bool {
        self.inner.last_durable.lock().unwrap_or_else(std::sync::PoisonError::into_inner).elapsed()
            >= DURABLE_APPLY_INTERVAL
    }

    /// Writes a snapshot of the current state to a new file and makes it current.
    fn build_snapshot_file(&self) -> Result<CurrentSnapshot, Error> {
        let db = self.db();
        let txn = db.begin_read()?;
        // Make durable every commit this view holds (and any after it): otherwise a crash
        // after the snapshot brings the state back behind it, and `open` must rebuild the
        // whole state from the snapshot (7 s with a million keys) instead of re-applying a
        // short tail of the log.
        self.flush()?;
        let meta_table = txn.open_table(META)?;
        let last_log_id: Option<LogId> = match meta_table.get(META_LAST_APPLIED)? {
            Some(v) => Some(codec::decode(v.value())?),
            None => None,
        };
        let last_membership: StoredMembership = match meta_table.get(META_MEMBERSHIP)? {
            Some(v) => codec::decode(v.value())?,
            None => StoredMembership::default(),
        };
        let meta = SnapshotMeta { last_log_id, last_membership };
        let snap_dir = self.inner.dir.join(SNAPSHOT_DIR);
        let index = types::index_of(meta.last_log_id.as_ref());
        let part = snap_dir.join(self.unique_name(&format!("snap-{index:020}"), PART_EXT));
        let result = (|| -> Result<CurrentSnapshot, Error> {
            let file = File::create(&part).map_err(|e| Error::io(format!("creating {}", part.display()), e))?;
            let mut writer = SnapshotWriter::new(file, &meta)?;
            let kv = txn.open_table(KV)?;
            for item in kv.iter()? {
                let (k, v) = item?;
                writer.record(k.value(), v.value())?;
            }
            // Only the ids a later write can still honour (expired ones may not be swept yet).
            let oldest = store::oldest_remembered(index + 1);
            // In index order; the stream's (id, outcome) items are the same as when the
            // table was keyed by id (then in id order), and an installer takes either order.
            for item in txn.open_table(REQUESTS_AT)?.range(oldest..)? {
                let (_, row) = item?;
                let (id, outcome) = row.value();
                writer.request(id, outcome)?;
            }
            for item in txn.open_table(LEASES)?.iter()? {
                let (id, ttl) = item?;
                writer.lease(id.value(), ttl.value())?;
            }
            let auth_state = auth::read(&meta_table)?;
            if auth_state != types::auth::AuthState::default() {
                writer.auth(&codec::encode(&auth_state)?)?;
            }
            let alarms = store::read_alarms(&meta_table)?;
            if !alarms.is_empty() {
                writer.alarms(&codec::encode(&alarms)?)?;
            }
            let out = writer.finish()?;
            let file = out.into_inner().map_err(|e| Error::io("flushing snapshot", e.into_error()))?;
            file.sync_all().map_err(|e| Error::io("syncing snapshot", e))?;
            let path = part.with_extension(SNAPSHOT_EXT);
            fs::rename(&part, &path).map_err(|e| Error::io("renaming snapshot", e))?;
            sync_dir(&snap_dir)?;
            Ok(CurrentSnapshot { meta, path })
        })();
        if result.is_err() {
            let _ = fs::remove_file(&part);
        }
        let snap = result?;
        self.set_current(snap.clone())?;
        Ok(snap)
    }

    /// Makes `snap` the current snapshot if it is newer, and removes every other file.
    fn set_current(&self, snap: CurrentSnapshot) -> Result<(), Error> {
        let mut current = match self.inner.current.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let keep = match current.as_ref() {
            Some(cur) if cur.meta.last_log_id > snap.meta.last_log_id => cur.clone(),
            _ => snap,
        };
        for path in read_dir(&self.inner.dir.join(SNAPSHOT_DIR))? {
            if path != keep.path && path.extension().and_then(|e| e.to_str()) == Some(SNAPSHOT_EXT) {
                remove_if_exists(&path)?;
            }
        }
        *current = Some(keep);
        Ok(())
    }

    /// Installs a snapshot: copies it in, rebuilds the database from it in a fresh file,
    /// and swaps that file in. Any error leaves the live state untouched.
    fn install(&self, meta: &SnapshotMeta, data: &SnapshotFile) -> Result<(), Error> {
        let snap_dir = self.inner.dir.join(SNAPSHOT_DIR);
        let index = types::index_of(meta.last_log_id.as_ref());
        let part = snap_dir.join(self.unique_name(&format!("snap-{index:020}"), PART_EXT));
        let result = (|| -> Result<CurrentSnapshot, Error> {
            // Keep a copy as this node's current snapshot, so it can serve it later.
            let mut out = BufWriter::with_capacity(
                1 << 20,
                File::create(&part).map_err(|e| Error::io("creating snapshot copy", e))?,
            );
            io::copy(&mut data.reader().map_err(|e| Error::io("reading snapshot", e))?, &mut out)
                .map_err(|e| Error::io("copying snapshot", e))?;
            let file = out.into_inner().map_err(|e| Error::io("flushing snapshot copy", e.into_error()))?;
            file.sync_all().map_err(|e| Error::io("syncing snapshot copy", e))?;
            let copy = SnapshotFile::open(&part)?;
            crash_point!("fsm::install-snapshot");
            self.rebuild_from(&copy, meta)?;
            // Every blocking read and watch learns its state was replaced, before any later
            // apply can publish a change.
            self.inner.hub.abandon(index);
            let path = part.with_extension(SNAPSHOT_EXT);
            fs::rename(&part, &path).map_err(|e| Error::io("renaming snapshot", e))?;
            sync_dir(&snap_dir)?;
            Ok(CurrentSnapshot { meta: meta.clone(), path })
        })();
        if result.is_err() {
            let _ = fs::remove_file(&part);
        }
        self.set_current(result?)
    }

    /// Builds a fresh database from `data` and swaps it in for the live one.
    fn rebuild_from(&self, data: &SnapshotFile, meta: &SnapshotMeta) -> Result<(), Error> {
        let dir = &self.inner.dir;
        let new_path = dir.join(DB_INSTALLING);
        remove_if_exists(&new_path)?;
        let result = (|| -> Result<(), Error> {
            let mut reader = SnapshotReader::new(data.reader().map_err(|e| Error::io("reading snapshot", e))?)?;
            if reader.meta != *meta {
                return Err(Error::CorruptSnapshot(format!(
                    "the file holds the snapshot at {:?}, not the one announced at {:?}",
                    reader.meta.last_log_id, meta.last_log_id
                )));
            }
            let (db, _) = open_db(&new_path, self.inner.db_cache_bytes)?;
            let mut alarms: Option<Vec<u8>> = None;
            let mut done = false;
            while !done {
                let mut txn = db.begin_write()?;
                txn.set_durability(Durability::None)?;
                {
                    let mut kv = txn.open_table(KV)?;
                    let mut requests = txn.open_table(REQUESTS_AT)?;
                    let mut leases = txn.open_table(LEASES)?;
                    let mut lease_keys = txn.open_table(LEASE_KEYS)?;
                    let mut bytes = 0;
                    while bytes < INSTALL_BATCH_BYTES {
                        match reader.next_record()? {
                            Some(snapshot::Item::Kv(k, rec)) => {
                                let lease = Record::lease(&rec)?;
                                if lease != 0 {
                                    lease_keys.insert(store::lease_key(lease, &k).as_slice(), ())?;
                                }
                                bytes += k.len() + rec.len();
                                kv.insert(k.as_slice(), rec.as_slice())?;
                            }
                            Some(snapshot::Item::Request(id, outcome)) => {
                                let decoded: types::WriteOutcome = codec::decode(&outcome)
                                    .map_err(|e| Error::CorruptSnapshot(format!("request {id:?}: {e}")))?;
                                bytes += id.len() + outcome.len();
                                if let Some(other) =
                                    requests.insert(decoded.index, (id.as_str(), outcome.as_slice()))?
                                {
                                    return Err(Error::CorruptSnapshot(format!(
                                        "request ids {:?} and {id:?} both at log index {}",
                                        other.value().0,
                                        decoded.index
                                    )));
                                }
                            }
                            Some(snapshot::Item::Auth(body)) => {
                                auth::check_encoded(&body)?;
                                bytes += body.len();
                                txn.open_table(META)?.insert(auth::META_AUTH, body.as_slice())?;
                            }
                            Some(snapshot::Item::Lease(id, ttl)) => {
                                bytes += 16;
                                leases.insert(id, ttl)?;
                            }
                            Some(snapshot::Item::Alarms(encoded)) => {
                                let _: Vec<Alarm> = codec::decode(&encoded)
                                    .map_err(|e| Error::CorruptSnapshot(format!("alarms: {e}")))?;
                                alarms = Some(encoded);
                            }
                            None => {
                                done = true;
                                break;
                            }
                        }
                    }
                }
                txn.commit()?;
            }
            // The whole file has been read and its checksum verified: make it durable.
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let mut m = txn.open_table(META)?;
                if let Some(last) = &meta.last_log_id {
                    m.insert(META_LAST_APPLIED, codec::encode(last)?.as_slice())?;
                }
                m.insert(META_MEMBERSHIP, codec::encode(&meta.last_membership)?.as_slice())?;
                if let Some(a) = &alarms {
                    m.insert(store::META_ALARMS, a.as_slice())?;
                }
            }
            txn.commit()?;
            drop(db);
            Ok(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&new_path);
            return Err(e);
        }
        // No apply runs while the database is swapped and the request-id index rebuilt.
        let mut ids = self.inner.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Swap: the rename is atomic, then the directory entry is made durable.
        let mut slot = match self.inner.db.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let live = dir.join(DB_FILE);
        fs::rename(&new_path, &live).map_err(|e| Error::io("swapping in the installed state", e))?;
        sync_dir(dir)?;
        let db = Arc::new(open_db(&live, self.inner.db_cache_bytes)?.0);
        *ids = RequestIds::load(&db.begin_read()?.open_table(REQUESTS_AT)?)?;
        *slot = db;
        drop(slot);
        drop(ids);
        self.reload_auth()?;
        self.reload_alarms()?;
        self.inner.applied.send_replace(types::index_of(meta.last_log_id.as_ref()));
        tracing::info!(last_log_id = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&StateMachine) -> Result<T, Error> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this)).await?
    }
}

/// A snapshot being received: chunks are written to a temporary file as they arrive, so
/// memory stays bounded whatever the snapshot size.
#[derive(Debug)]
pub struct IncomingSnapshot {
    out: Option<BufWriter<File>>,
    path: PathBuf,
    written: u64,
}

impl IncomingSnapshot {
    /// Appends a chunk.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let out = self.out.as_mut().ok_or(Error::CorruptSnapshot("write after finish".into()))?;
        out.write_all(chunk).map_err(|e| Error::io("writing received snapshot", e))?;
        self.written += chunk.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    #[must_use]
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes the file and returns a handle on it. The file's name is removed at once; the
    /// handle keeps the data readable until it is dropped.
    pub fn finish(mut self) -> Result<SnapshotFile, Error> {
        let out = self.out.take().ok_or(Error::CorruptSnapshot("finished twice".into()))?;
        out.into_inner().map_err(|e| Error::io("flushing received snapshot", e.into_error()))?;
        let file = SnapshotFile::open(&self.path)?;
        remove_if_exists(&self.path)?;
        Ok(file)
    }
}

impl Drop for IncomingSnapshot {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Opens (or creates) the live database and its tables. Returns whether redb's open had to
/// repair the file (it was not shut down cleanly): that repair verified the checksum of every
/// page of the committed trees, the same walk as `check_integrity`.
fn open_db(path: &Path, cache_bytes: usize) -> Result<(Database, bool), Error> {
    let repaired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = repaired.clone();
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .set_repair_callback(move |_| seen.store(true, Ordering::Relaxed))
        .create(path)?;
    let repaired = repaired.load(Ordering::Relaxed);
    let txn = db.begin_write()?;
    {
        txn.open_table(KV)?;
        txn.open_table(META)?;
        let mut requests_at = txn.open_table(REQUESTS_AT)?;
        txn.open_table(LEASES)?;
        txn.open_table(LEASE_KEYS)?;
        // Written by builds before request ids were remembered by log-index window; the
        // `requests` rows it indexed are a superset of the window's, so nothing is lost.
        txn.delete_table(REQUESTS_BY_INDEX)?;
        // Written by builds before `requests_at`: each row moves to the index its outcome
        // names (expired ones too; the window rule ignores them until the next sweep).
        if txn.list_tables()?.any(|t| t.name() == REQUESTS.name()) {
            let old = txn.open_table(REQUESTS)?;
            let mut moved = 0u64;
            for row in old.iter()? {
                let (id, outcome) = row?;
                let decoded: types::WriteOutcome = codec::decode(outcome.value())?;
                if let Some(other) = requests_at.insert(decoded.index, (id.value(), outcome.value()))? {
                    return Err(Error::Invariant(format!(
                        "request ids {:?} and {:?} both at log index {}",
                        other.value().0,
                        id.value(),
                        decoded.index
                    )));
                }
                moved += 1;
            }
            drop(old);
            txn.delete_table(REQUESTS)?;
            tracing::info!(file = %path.display(), moved, "request ids moved to the requests_at table");
        }
    }
    txn.commit()?;
    Ok((db, repaired))
}

/// Opens the live database and verifies every page's checksum: redb's repair does it when the
/// file was not shut down cleanly (a crash, a kill -9), and `check_integrity` when it was, so
/// each open reads the whole file once, not twice. A
/// database that fails is **set aside** (renamed `state.redb.damaged-<nanos>`, kept for
/// inspection) and a fresh one is opened: the state machine is derived data, rebuilt from the
/// newest snapshot (by [`StateMachine::open`]) and the Raft log (re-applied by openraft), or
/// from the leader's snapshot. Never served: a damaged value.
fn open_checked(path: &Path, cache_bytes: usize) -> Result<Database, Error> {
    let started = Instant::now();
    let checked = open_db(path, cache_bytes).and_then(|(mut db, repaired)| {
        if repaired {
            tracing::info!(file = %path.display(), elapsed = ?started.elapsed(), "verified by redb's repair on open (the file was not shut down cleanly)");
            return Ok(db);
        }
        match db.check_integrity() {
            Ok(true) => {
                tracing::debug!(file = %path.display(), elapsed = ?started.elapsed(), "verified");
                Ok(db)
            }
            Ok(false) => {
                Err(Error::Invariant("its checksums do not match (it was repaired from an older commit)".into()))
            }
            Err(e) => Err(Error::Redb(e.into())),
        }
    });
    match checked {
        Ok(db) => Ok(db),
        Err(e) if path.exists() => {
            let aside = aside_path(path);
            fs::rename(path, &aside)
                .map_err(|re| Error::io(format!("{} is damaged ({e}); setting it aside", path.display()), re))?;
            tracing::error!(
                file = %path.display(),
                set_aside = %aside.display(),
                error = %e,
                "the state machine database is damaged: set aside; rebuilding it from the snapshot and the Raft log (remove the damaged copy once the node serves)"
            );
            open_db(path, cache_bytes).map(|(db, _)| db)
        }
        Err(e) => Err(e),
    }
}

/// The suffix of a damaged file set aside: `<name>.damaged-<nanos>`, kept for inspection and
/// never read again.
const DAMAGED_SUFFIX: &str = ".damaged-";

/// Whether `path` is a damaged file set aside (see [`DAMAGED_SUFFIX`]).
fn is_set_aside(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(DAMAGED_SUFFIX))
}

/// `path` renamed `<name>.damaged-<nanos>`, beside it.
fn aside_path(path: &Path) -> PathBuf {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let name = path.file_name().map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!("{name}{DAMAGED_SUFFIX}{nanos}"))
}

/// Sets a damaged snapshot file aside (renamed, kept). The snapshot is derived data: the
/// state machine holds at least what it held (building a snapshot first makes the state it
/// holds durable), so openraft builds a fresh one at start when the log has been purged; if
/// the state machine is behind it too, the engine refuses to start (see `engine`).
fn set_aside_snapshot(path: &Path, why: &str) -> Result<(), Error> {
    let aside = aside_path(path);
    fs::rename(path, &aside)
        .map_err(|e| Error::io(format!("snapshot {} is damaged ({why}); setting it aside", path.display()), e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    tracing::error!(
        file = %path.display(),
        set_aside = %aside.display(),
        error = %why,
        "a snapshot file is damaged: set aside; a fresh snapshot is built from the state machine (remove the damaged copy once the node serves)"
    );
    Ok(())
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))? {
        out.push(entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?.path());
    }
    Ok(out)
}

fn remove_if_exists(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let started = std::time::Instant::now();
        let snap = self.blocking(|sm| sm.build_snapshot_file()).await?;
        tracing::info!(last_log_id = ?snap.meta.last_log_id, path = %snap.path.display(), "snapshot built");
        let file = SnapshotFile::open(&snap.path)?;
        metrics::counter!(metric::SNAPSHOTS_BUILT).increment(1);
        metrics::histogram!(metric::SNAPSHOT_BUILD_SECONDS).record(started.elapsed());
        metrics::histogram!(metric::SNAPSHOT_SIZE_BYTES).record(file.len() as f64);
        Ok(Snapshot { snapshot: file, meta: snap.meta })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok(self.read_applied_state()?)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            batch.push(entry);
            responders.push(responder);
        }
        let Some(last) = batch.last().map(|e| e.log_id.index) else { return Ok(()) };
        crash_point!("fsm::apply");
        error_point!("fsm::apply-fails");
        let this = self.clone();
        let results = self
            .inner
            .applier
            .run(move || {
                let db = this.db();
                this.apply_batch(&db, &batch)
            })
            .await
            .and_then(|r| r)
            .map_err(|e| {
                self.inner.failed.store(true, Ordering::SeqCst);
                self.file_error("applying committed entries to", e)
            })?;
        crash_point!("fsm::apply-committed");
        self.inner.applied.send_replace(last);
        for (responder, result) in responders.into_iter().zip(results) {
            if let Some(r) = responder {
                r.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotFile) -> Result<(), io::Error> {
        let meta = meta.clone();
        let started = std::time::Instant::now();
        let size = snapshot.len();
        self.blocking(move |sm| sm.install(&meta, &snapshot)).await?;
        metrics::counter!(metric::SNAPSHOTS_INSTALLED).increment(1);
        metrics::histogram!(metric::SNAPSHOT_INSTALL_SECONDS).record(started.elapsed());
        metrics::histogram!(metric::SNAPSHOT_SIZE_BYTES).record(size as f64);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let current = match self.inner.current.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        match current {
            Some(c) => Ok(Some(Snapshot { snapshot: SnapshotFile::open(&c.path)?, meta: c.meta })),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests;
