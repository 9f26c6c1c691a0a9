//! The log writer: one dedicated thread that owns every write to redb.
//!
//! [`LogStore`](crate::LogStore) queues each write operation (append, truncate, purge, vote)
//! in the order openraft issued it. The thread takes everything queued at once, applies it
//! in order in **one** write transaction, saves the committed log id if it can, and makes
//! it durable with **one** `Durability::Immediate` commit; only then does it report the
//! appends flushed and the votes saved, in order. Operations queued while it commits share
//! the next commit: group commit.
//!
//! What is on disk is therefore always the result of a prefix of the queued operations:
//! after a crash, the log is one openraft could have seen, with every append reported
//! flushed and every vote reported saved.
//!
//! A failed commit is final: the operations of the failed group and every later one fail
//! with the error (appends through their `IOFlushed`, votes through their answer), and the
//! store refuses new ones. openraft stops on a storage error.

use std::io;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::storage::IOFlushed;
use redb::{Database, Durability, Table, WriteTransaction};
use types::{LogId, TypeConfig, Vote, codec};

use crate::cache::MemLog;
use crate::{Error, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, LOGS, META, lock};

/// The histogram of the time from `append` to its entries being durable (queued, written,
/// fsynced), per append (the metrics reference, docs/metrics.md).
pub const APPEND_METRIC: &str = "raftkv_log_append_seconds";
/// The histogram of the log writer's durable commits (one write transaction and its fsync).
pub const FSYNC_METRIC: &str = "raftkv_log_fsync_seconds";

/// A write operation for the writer, with its sequence number ([`MemLog::next_seq`]).
pub(crate) enum Op {
    /// Insert the encoded entries (in place of any from the first one on); report `flushed`
    /// once they are durable. `queued` is when `append` queued them.
    Append { seq: u64, entries: Vec<(u64, Vec<u8>)>, flushed: IOFlushed<TypeConfig>, queued: Instant },
    /// Remove every entry after `after` (all for `None`).
    Truncate { seq: u64, after: Option<u64> },
    /// Remove every entry up to `upto`, inclusive, and record it as the last purged.
    Purge { seq: u64, upto: LogId },
    /// Save the vote; answer once it is durable.
    Vote { seq: u64, vote: Vote, saved: tokio::sync::oneshot::Sender<Result<(), String>> },
}

impl Op {
    fn seq(&self) -> u64 {
        match self {
            Op::Append { seq, .. } | Op::Truncate { seq, .. } | Op::Purge { seq, .. } | Op::Vote { seq, .. } => *seq,
        }
    }

    /// Reports the operation done (or failed).
    pub(crate) fn finish(self, result: &Result<(), String>) {
        match self {
            Op::Append { flushed, .. } => flushed.io_completed(result.clone().map_err(io::Error::other)),
            Op::Vote { saved, .. } => {
                // The caller may have given up waiting; nothing to tell then.
                let _ = saved.send(result.clone());
            }
            Op::Truncate { .. } | Op::Purge { .. } => {}
        }
    }
}

/// The writer thread's state.
pub(crate) struct Writer {
    pub(crate) db: Arc<Database>,
    pub(crate) mem: Arc<Mutex<MemLog>>,
    /// The sequence number of the last operation written.
    pub(crate) written_seq: u64,
    /// The committed log id stored in redb.
    pub(crate) saved_committed: Option<LogId>,
    /// The node's per-stage clock of writes: appends are stamped durable after the commit.
    pub(crate) stages: Arc<latency::WriteStages>,
    /// The database file, named in errors.
    pub(crate) path: std::path::PathBuf,
}

impl Writer {
    /// Runs until every sender is dropped, then stores the last committed log id.
    pub(crate) fn run(mut self, queue: &Receiver<Op>) {
        let mut failed: Option<String> = None;
        while let Ok(first) = queue.recv() {
            let mut ops = vec![first];
            ops.extend(queue.try_iter());
            let started = Instant::now();
            let result = match &failed {
                Some(e) => Err(e.clone()),
                None => self.commit(&ops).map_err(|e| format!("writing the Raft log to {}: {e}", self.path.display())),
            };
            if result.is_ok() {
                metrics::histogram!(FSYNC_METRIC).record(started.elapsed());
            }
            if let Err(e) = &result
                && failed.is_none()
            {
                tracing::error!(error = %e, "log commit failed; the log store refuses every later write");
                lock(&self.mem).failed = Some(e.clone());
                failed = Some(e.clone());
            }
            if result.is_ok()
                && let Some(last) = ops.last()
            {
                lock(&self.mem).durable(last.seq());
                for op in &ops {
                    if let Op::Append { entries, queued, .. } = op
                        && let (Some((first, _)), Some((last, _))) = (entries.first(), entries.last())
                    {
                        self.stages.durable(*first..=*last);
                        metrics::histogram!(APPEND_METRIC).record(queued.elapsed());
                    }
                }
            }
            tracing::trace!(ops = ops.len(), ok = result.is_ok(), "log group committed");
            for op in ops {
                op.finish(&result);
            }
        }
        if failed.is_none()
            && let Err(e) = self.commit(&[])
        {
            tracing::error!(error = %e, "saving the committed log id on close failed");
        }
    }

    /// Applies `ops` in order in one write transaction, with the committed log id when it
    /// is covered by the log written so far, and commits it durably. An empty group with
    /// nothing new to save commits nothing.
    fn commit(&mut self, ops: &[Op]) -> Result<(), Error> {
        let committed = self.committed_to_save(ops);
        if ops.is_empty() && committed.is_none() {
            return Ok(());
        }
        crate::error_point!("raft-storage::commit-fails");
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        #[cfg(feature = "planted-bugs")]
        if crate::ack_before_fsync() && ops.iter().all(|op| matches!(op, Op::Append { .. })) {
            txn.set_durability(Durability::None)?;
        }
        self.write(&txn, ops, committed.as_ref())?;
        if ops.iter().any(|op| matches!(op, Op::Append { .. })) {
            crate::crash_point!("raft-storage::append-written");
        }
        // The commit's fsync. A failure is final (see the module docs): the writer never
        // commits again, so the fsync is never retried (the PostgreSQL "fsyncgate" lesson:
        // after a failed fsync the kernel may have dropped the dirty pages, and a later
        // fsync that succeeds proves nothing).
        crate::fsync_error_point!("raft-storage::fsync-fails");
        txn.commit()?;
        if let Some(last) = ops.last() {
            self.written_seq = last.seq();
        }
        if committed.is_some() {
            self.saved_committed = committed;
        }
        Ok(())
    }

    fn write(&self, txn: &WriteTransaction, ops: &[Op], committed: Option<&LogId>) -> Result<(), Error> {
        let mut logs = txn.open_table(LOGS)?;
        let mut meta = txn.open_table(META)?;
        for op in ops {
            self.write_op(&mut logs, &mut meta, op)?;
        }
        if let Some(c) = committed {
            meta.insert(KEY_COMMITTED, codec::encode(&Some(c.clone()))?.as_slice())?;
        }
        Ok(())
    }

    fn write_op(
        &self,
        logs: &mut Table<'_, u64, &'static [u8]>,
        meta: &mut Table<'_, &'static str, &'static [u8]>,
        op: &Op,
    ) -> Result<(), Error> {
        match op {
            Op::Append { entries, .. } => {
                // openraft truncates before it overwrites; should an append still overwrite
                // the tail, redb drops the rest of it too, as the in-memory log does.
                if let Some((first, _)) = entries.first() {
                    logs.retain_in::<u64, _>(*first.., |_, _| false)?;
                }
                for (index, bytes) in entries {
                    logs.insert(*index, bytes.as_slice())?;
                }
            }
            Op::Truncate { after, .. } => {
                let from = after.map_or(0, |a| a + 1);
                logs.retain_in::<u64, _>(from.., |_, _| false)?;
            }
            Op::Purge { upto, .. } => {
                meta.insert(KEY_LAST_PURGED, codec::encode(upto)?.as_slice())?;
                logs.retain_in::<u64, _>(..=upto.index, |_, _| false)?;
            }
            Op::Vote { vote, .. } => {
                meta.insert(KEY_VOTE, codec::encode(vote)?.as_slice())?;
            }
        }
        Ok(())
    }

    /// The committed log id to save with `ops`, if it changed and every operation queued
    /// before it was saved is in `ops` or written before. openraft only commits entries it
    /// appended before, and the queue keeps its order, so the id then names an entry of the
    /// log as written, never one that a queued truncation has yet to replace.
    fn committed_to_save(&self, ops: &[Op]) -> Option<LogId> {
        let written = ops.last().map_or(self.written_seq, Op::seq);
        let mem = lock(&self.mem);
        let committed = mem.committed.clone()?;
        (mem.committed_seq <= written && self.saved_committed.as_ref() != Some(&committed)).then_some(committed)
    }
}
