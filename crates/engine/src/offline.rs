//! Offline operations on a stopped node's data directory: disaster recovery ([`recover`])
//! and seeding a new cluster from a backup ([`restore`]).
//!
//! # How a membership is forced, and why it is safe enough
//! Both write the same thing into the log store, as if this node had been elected leader in
//! a new term and had at once committed a membership entry naming the new voters:
//!
//! 1. the vote becomes a committed vote for this node in term `T + 1`, where `T` is the
//!    highest term in the vote and the log;
//! 2. a membership entry with log id `((T + 1, this node), last index + 1)` is appended and
//!    fsynced;
//! 3. the committed log id is set to that entry (and made durable).
//!
//! On the next start openraft applies every entry up to the new committed one, the new
//! membership included; it starts as a follower (the engine never restores leadership on
//! restart) and, as the only voter, elects itself in a term after `T + 1`. Nothing is rewritten or deleted: the entries before the new one stay where they
//! are, and the history is one a real election could have produced, so openraft's invariants
//! (log ids grow; the vote is at least the last log's leader) hold. The data (the state
//! machine and its snapshot) is untouched, except that `restore` installs the backup first.
//!
//! # Risks (the operator's to weigh)
//! - **Everything in this node's log is committed**, including entries the old cluster
//!   never committed (writes whose client got no answer or an unknown outcome). This is
//!   hashicorp/raft's `RecoverCluster` behaviour; acknowledged writes are never lost by it.
//! - **Writes acknowledged by the old cluster but not on this node are lost.** Recover the
//!   survivor with the highest last log index (`recover` prints it; `raftkvctl status` shows
//!   it on a running node).
//! - **Recover exactly one node.** Two survivors recovered separately would each commit a
//!   different entry at the same index. Other survivors must be wiped (their directories
//!   removed) and join again, empty (`--join` or `raftkvctl member add`).
//! - **The old members must never come back with their old state**: they would not know the
//!   new membership, and a node of the old cluster could win an election in it if its term
//!   were higher. Remove their directories.
//! - Other voters named in `--voters` must start with **no state**; until enough of them run,
//!   the cluster has no quorum.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fsm::StateMachine;
use openraft::entry::RaftEntry;
use openraft::impls::leader_id_adv::LeaderId;
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, RaftLogReader};
use raft_storage::{LOG_FILE, LogStore};
use types::{Entry, LogId, Membership, NodeId, NodeInfo, TypeConfig, Vote};

use crate::{EngineError, LISTEN_FILE};

/// Where a [`restore`] is: it is called after every read of the backup with the bytes read so
/// far and the total. The backup is read twice (verified whole, then installed), so the total
/// is twice its size. The caller renders it (a bar, log lines); clones share it.
#[derive(Clone)]
pub struct RestoreProgress(Arc<dyn Fn(u64, u64) + Send + Sync>);

impl RestoreProgress {
    /// Calls `f(done, total)` after every read.
    pub fn new(f: impl Fn(u64, u64) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// No report.
    #[must_use]
    pub fn none() -> Self {
        Self::new(|_, _| {})
    }

    /// The read callback for a backup of `size` bytes: it adds up the reads of both passes.
    fn counter(&self, size: u64) -> fsm::ReadProgress {
        let total = size.saturating_mul(2);
        let done = Arc::new(AtomicU64::new(0));
        let report = self.0.clone();
        fsm::ReadProgress::new(move |n| report(done.fetch_add(n, Ordering::Relaxed) + n, total))
    }
}

impl std::fmt::Debug for RestoreProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RestoreProgress")
    }
}

/// What [`recover`] or [`restore`] wrote.
#[derive(Debug, Clone)]
pub struct Forced {
    /// The last log index this node had before (the backup's index for a restore).
    pub previous_last_index: u64,
    /// The term of that entry.
    pub previous_last_term: u64,
    /// The index of the new membership entry.
    pub index: u64,
    /// The new term.
    pub term: u64,
    /// The voters of the new membership.
    pub voters: BTreeMap<NodeId, NodeInfo>,
}

fn raft_err(context: &str, e: impl std::error::Error + Send + Sync + 'static) -> EngineError {
    EngineError::raft(context, e)
}

fn node_dir(data_dir: &Path, id: &NodeId) -> PathBuf {
    data_dir.join(id.as_str())
}

/// Opens the log store of a node that must be stopped: redb's lock refuses a database
/// another process has open.
fn open_log(dir: &Path) -> Result<LogStore, EngineError> {
    LogStore::open(&dir.join(LOG_FILE)).map_err(|e| {
        EngineError::Refused(format!(
            "cannot open the Raft log in {} ({e}); is the node still running? Stop it first",
            dir.display()
        ))
    })
}

/// The last membership this node knows: the last membership entry in its log, else the one
/// its state machine applied.
async fn last_membership(log: &mut LogStore, sm: &mut StateMachine) -> Result<Membership, EngineError> {
    let state = log.get_log_state().await.map_err(|e| raft_err("reading the log state", e))?;
    let first = types::index_of(state.last_purged_log_id.as_ref()) + u64::from(state.last_purged_log_id.is_some());
    let last = types::index_of(state.last_log_id.as_ref());
    let mut end = last + 1;
    while end > first {
        let start = end.saturating_sub(256).max(first);
        let entries = log.try_get_log_entries(start..end).await.map_err(|e| raft_err("reading the log", e))?;
        if let Some(m) = entries.iter().rev().find_map(|e| match &e.payload {
            EntryPayload::Membership(m) => Some(m.clone()),
            _ => None,
        }) {
            return Ok(m);
        }
        end = start;
    }
    let (_, stored) = sm.applied_state().await.map_err(|e| raft_err("reading the state machine", e))?;
    Ok(stored.membership().clone())
}

/// Appends the membership entry after `last`, with the vote and committed id that make it
/// committed (see the module documentation). Returns the new entry's log id.
async fn force_membership(
    log: &mut LogStore,
    id: &NodeId,
    term: u64,
    last_index: Option<u64>,
    voters: &BTreeMap<NodeId, NodeInfo>,
) -> Result<LogId, EngineError> {
    let ids: BTreeSet<NodeId> = voters.keys().cloned().collect();
    let membership = Membership::new(vec![ids], voters.clone()).map_err(|e| raft_err("building the membership", e))?;
    let index = last_index.map_or(0, |i| i + 1);
    let log_id = LogId::new(LeaderId { term, node_id: id.clone() }, index);
    let vote = Vote::new_committed(term, id.clone());
    // The vote first: the new entry's leader must never be ahead of the stored vote.
    log.save_vote(&vote).await.map_err(|e| raft_err("saving the vote", e))?;
    let (tx, rx) = TypeConfig::oneshot();
    log.append([Entry::new_membership(log_id.clone(), membership)], IOFlushed::signal(tx))
        .await
        .map_err(|e| raft_err("appending the membership entry", e))?;
    rx.await
        .map_err(|e| raft_err("waiting for the membership entry", e))?
        .map_err(|e| raft_err("syncing the membership entry", e))?;
    log.save_committed(Some(log_id.clone())).await.map_err(|e| raft_err("saving the committed index", e))?;
    // Saving the vote again is a durable commit: it makes the committed index durable too.
    log.save_vote(&vote).await.map_err(|e| raft_err("saving the vote", e))?;
    Ok(log_id)
}

/// Rewrites the membership of the stopped node `id` in `data_dir` after a loss of quorum:
/// `voters` (by default this node alone, at the addresses its membership records) become
/// the only members. See the module documentation for what this does and its risks.
pub async fn recover(
    data_dir: &Path,
    id: &NodeId,
    voters: Option<BTreeMap<NodeId, NodeInfo>>,
) -> Result<Forced, EngineError> {
    let dir = node_dir(data_dir, id);
    if !dir.join(LOG_FILE).exists() {
        return Err(EngineError::Refused(format!(
            "no Raft log in {}: nothing to recover (check --raft_data_dir and --raft_id)",
            dir.display()
        )));
    }
    let mut log = open_log(&dir)?;
    let mut sm = StateMachine::open(&dir.join("sm"))?;
    let vote = log.read_vote().await.map_err(|e| raft_err("reading the vote", e))?;
    let state = log.get_log_state().await.map_err(|e| raft_err("reading the log state", e))?;
    let Some(last) = state.last_log_id.clone() else {
        return Err(EngineError::Refused(format!(
            "{} has no Raft state (it never joined a cluster): nothing to recover; start a new cluster with --raft_bootstrap",
            dir.display()
        )));
    };
    let current = last_membership(&mut log, &mut sm).await?;
    let voters = match voters {
        Some(v) => {
            if !v.contains_key(id) {
                return Err(EngineError::Refused(format!(
                    "--voters must include this node ({id}): it is the one that keeps the data"
                )));
            }
            v
        }
        None => match current.get_node(id) {
            Some(info) => BTreeMap::from([(id.clone(), info.clone())]),
            None => {
                return Err(EngineError::Refused(format!(
                    "{id} is not in its own last membership, so its addresses are unknown; give them with --voters {id}=RAFT_ADDR@GRPC_ADDR"
                )));
            }
        },
    };
    let old_term = vote.as_ref().map_or(0, |v| v.leader_id().term).max(last.leader_id.term);
    let term = old_term + 1;
    tracing::warn!(node = %id, last_index = last.index, last_term = last.leader_id.term, term,
        voters = ?voters.keys().collect::<Vec<_>>(), "forcing a new membership (disaster recovery)");
    let log_id = force_membership(&mut log, id, term, Some(last.index), &voters).await?;
    drop(log);
    drop(sm);
    let _ = std::fs::remove_file(dir.join(LISTEN_FILE));
    Ok(Forced {
        previous_last_index: last.index,
        previous_last_term: last.leader_id.term,
        index: log_id.index,
        term,
        voters,
    })
}

/// Seeds a new one-node cluster of `id` (at `me`) in `data_dir` from the backup `file`: the
/// file is verified whole first (format, bounds, record count, CRC32), installed as the state
/// machine's snapshot, and the membership is forced to this node alone. The node directory
/// must not exist or be empty. `progress` is told the bytes read so far of the total (see
/// [`RestoreProgress`]).
pub async fn restore(
    file: &Path,
    data_dir: &Path,
    id: &NodeId,
    me: NodeInfo,
    progress: RestoreProgress,
) -> Result<Forced, EngineError> {
    let size = match std::fs::File::open(file).and_then(|f| f.metadata()) {
        Ok(m) => m.len(),
        Err(e) => return Err(EngineError::Refused(format!("cannot read the backup {}: {e}", file.display()))),
    };
    let reads = progress.counter(size);
    let (meta, records) = fsm::snapshot::verify_file_with(file, Some(reads.clone())).map_err(|e| match e {
        fsm::Error::CorruptSnapshot(why) => EngineError::Refused(format!(
            "{} is not an intact raftkv backup: {why}; nothing was written",
            file.display()
        )),
        other => EngineError::StateMachine(other),
    })?;
    let Some(last) = meta.last_log_id.clone() else {
        return Err(EngineError::Refused(format!(
            "{} holds no log position; it cannot seed a cluster",
            file.display()
        )));
    };
    let dir = node_dir(data_dir, id);
    if let Ok(mut entries) = std::fs::read_dir(&dir)
        && entries.next().is_some()
    {
        return Err(EngineError::Refused(format!(
            "{} already has data; restore seeds a new node and needs an empty (or absent) directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(&dir)
        .map_err(|source| EngineError::Io { context: format!("creating {}", dir.display()), source })?;
    let result = seed(file, reads, &dir, id, me, &meta, &last).await;
    if result.is_err() {
        // Leave no half-seeded node behind: a new attempt needs an empty directory.
        let _ = std::fs::remove_dir_all(&dir);
    }
    let forced = result?;
    tracing::info!(node = %id, index = last.index, records, "backup restored into a new one-node cluster");
    Ok(forced)
}

async fn seed(
    file: &Path,
    reads: fsm::ReadProgress,
    dir: &Path,
    id: &NodeId,
    me: NodeInfo,
    meta: &types::SnapshotMeta,
    last: &LogId,
) -> Result<Forced, EngineError> {
    let mut sm = StateMachine::open(&dir.join("sm"))?;
    let snapshot = fsm::SnapshotFile::open(file)?.with_progress(reads);
    sm.install_snapshot(meta, snapshot).await.map_err(|e| raft_err("installing the backup", e))?;
    let mut log = open_log(dir)?;
    log.purge(last.clone()).await.map_err(|e| raft_err("recording the backup's position", e))?;
    let term = last.leader_id.term + 1;
    let voters = BTreeMap::from([(id.clone(), me)]);
    let log_id = force_membership(&mut log, id, term, Some(last.index), &voters).await?;
    drop(log);
    sm.flush()?;
    Ok(Forced {
        previous_last_index: last.index,
        previous_last_term: last.leader_id.term,
        index: log_id.index,
        term,
        voters,
    })
}

#[cfg(test)]
mod tests {
    /// A plain put of `key` = "v", as a client write.
    fn put_cmd(key: &[u8]) -> Command {
        Command::Write(types::WriteCommand {
            request_id: None,
            op: types::WriteOp::Put(types::PutOp {
                key: key.to_vec(),
                value: b"v".to_vec(),
                expect: None,
                prev_kv: false,
            }),
        })
    }

    use std::time::Duration;

    use openraft::async_runtime::WatchReceiver;
    use types::Command;

    use super::*;
    use crate::{Node, NodeConfig};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn config(dir: &Path, id: &str) -> Result<NodeConfig, Box<dyn std::error::Error>> {
        let mut c = NodeConfig::new(NodeId::new(id)?);
        c.data_dir = dir.to_path_buf();
        c.raft_addr = "127.0.0.1:0".into();
        c.grpc_addr = "127.0.0.1:0".into();
        c.heartbeat_interval = Duration::from_millis(50);
        c.election_timeout = Duration::from_millis(300);
        c.snapshot_interval = Duration::ZERO;
        c.shutdown_grace = Duration::from_secs(1);
        Ok(c)
    }

    async fn wait_leader(node: &Node) -> TestResult {
        node.raft()
            .wait(Some(Duration::from_secs(20)))
            .metrics(|m| m.state == openraft::ServerState::Leader, "leader")
            .await?;
        Ok(())
    }

    async fn put(node: &Node, key: &str) -> TestResult {
        let cmd = put_cmd(key.as_bytes());
        node.raft().client_write(cmd).await?;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recover_forces_a_one_node_membership_and_keeps_the_data() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut c = config(dir.path(), "a")?;
        c.bootstrap = true;
        let node = Node::start(c.clone()).await?;
        wait_leader(&node).await?;
        put(&node, "k1").await?;
        let me = NodeInfo { raft_addr: node.listen_addrs().raft_addr.clone(), grpc_addr: "127.0.0.1:9".into() };
        // A second voter that will never exist: without it the node has no quorum.
        let ghost = NodeInfo { raft_addr: "127.0.0.1:1".into(), grpc_addr: "127.0.0.1:2".into() };
        node.raft().add_learner(NodeId::new("ghost")?, ghost, false).await?;
        // The joint membership with the ghost can never commit: the node has lost its quorum.
        let change = node.raft().change_membership([NodeId::new("a")?, NodeId::new("ghost")?], false);
        assert!(tokio::time::timeout(Duration::from_millis(500), change).await.is_err());
        let write = node.raft().client_write(put_cmd(b"k-lost"));
        let r = tokio::time::timeout(Duration::from_millis(500), write).await;
        assert!(!matches!(r, Ok(Ok(_))), "a write committed without a quorum: {r:?}");
        node.shutdown().await?;

        // Tasks of the stopped Raft may hold the log open a little longer; a separate
        // `raftkv recover` process never sees that, the test waits for it.
        let path = dir.path().join("a").join(LOG_FILE);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while LogStore::open(&path).is_err() {
            assert!(std::time::Instant::now() < deadline, "the stopped node kept its log open");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let id = NodeId::new("a")?;
        let voters = BTreeMap::from([(id.clone(), me.clone())]);
        let forced = recover(dir.path(), &id, Some(voters)).await?;
        assert_eq!(forced.index, forced.previous_last_index + 1);
        assert!(forced.term > forced.previous_last_term);

        let node = Node::start(config(dir.path(), "a")?).await?;
        wait_leader(&node).await?;
        let m = node.raft().metrics().borrow_watched().clone();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        assert_eq!(voters, vec![id]);
        assert!(node.state_machine().get(b"k1")?.is_some());
        put(&node, "k2").await?;
        node.shutdown().await?;
        Ok(())
    }

    #[tokio::test]
    async fn recover_needs_state_and_this_node_among_the_voters() -> TestResult {
        let dir = tempfile::tempdir()?;
        let id = NodeId::new("a")?;
        let e = recover(dir.path(), &id, None).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("no Raft log") && e.contains("nothing to recover"), "{e}");
        std::fs::create_dir_all(dir.path().join("a"))?;
        drop(LogStore::open(&dir.path().join("a").join(LOG_FILE))?);
        let e = recover(dir.path(), &id, None).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("has no Raft state"), "{e}");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restore_refuses_a_corrupt_file_and_a_used_directory() -> TestResult {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("backup.rkvs");
        std::fs::write(&file, b"RKVSNAP\0garbage")?;
        let id = NodeId::new("r")?;
        let me = NodeInfo { raft_addr: "127.0.0.1:1".into(), grpc_addr: "127.0.0.1:2".into() };
        let e = restore(&file, dir.path(), &id, me.clone(), RestoreProgress::none())
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("is not an intact raftkv backup") && e.contains("nothing was written"), "{e}");
        assert!(!dir.path().join("r").exists(), "a refused restore wrote something");

        // A real backup: the snapshot of a node that wrote a key.
        let mut c = config(dir.path(), "a")?;
        c.bootstrap = true;
        let node = Node::start(c).await?;
        wait_leader(&node).await?;
        put(&node, "kept").await?;
        node.raft().trigger().snapshot().await?;
        node.raft().wait(Some(Duration::from_secs(20))).metrics(|m| m.snapshot.is_some(), "snapshot").await?;
        let snapshot = node.raft().get_snapshot().await?.ok_or("no snapshot")?;
        let mut bytes = vec![0u8; usize::try_from(snapshot.snapshot.len())?];
        let mut at = 0;
        while at < bytes.len() {
            at += snapshot.snapshot.read_at(&mut bytes[at..], at as u64)?;
        }
        std::fs::write(&file, &bytes)?;
        node.shutdown().await?;

        std::fs::create_dir_all(dir.path().join("r"))?;
        std::fs::write(dir.path().join("r").join("something"), b"x")?;
        let e = restore(&file, dir.path(), &id, me.clone(), RestoreProgress::none())
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("already has data"), "{e}");
        std::fs::remove_dir_all(dir.path().join("r"))?;

        let mut c = config(dir.path(), "r")?;
        c.raft_addr = "127.0.0.1:0".into();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let progress = {
            let seen = seen.clone();
            RestoreProgress::new(move |done, total| seen.lock().map(|mut s| s.push((done, total))).unwrap_or(()))
        };
        let forced = restore(&file, dir.path(), &id, me, progress).await?;
        assert_eq!(forced.voters.len(), 1);
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        let total = 2 * bytes.len() as u64;
        assert!(seen.len() >= 2, "both passes report: {seen:?}");
        assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0 && w[1].1 == total), "{seen:?}");
        assert_eq!(seen.last(), Some(&(total, total)), "verified and installed, every byte counted once a pass");
        let node = Node::start(c).await?;
        wait_leader(&node).await?;
        assert!(node.state_machine().get(b"kept")?.is_some());
        node.shutdown().await?;
        Ok(())
    }
}
