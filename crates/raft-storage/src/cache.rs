//! The in-memory view of the log: what openraft has been told is in it, whether or not the
//! log writer has made it durable yet.
//!
//! [`MemLog`] holds the vote, the committed and last-purged log ids, the last log id, and
//! the log's tail in a cache: every entry from [`MemLog::start`] to the last one. Entries
//! below `start` are durable in redb; entries from `start` on are read from the cache only
//! (redb may still hold entries there that were truncated since, or not hold them yet).
//!
//! Every write operation gets a sequence number when it is queued for the writer; the
//! writer reports the last one it made durable ([`MemLog::durable`]). A cached entry leaves
//! the cache only once the append that carried it is durable, oldest first, and only while
//! the cache is above its bounds ([`crate::LogOptions`]; by default [`LOG_CACHE_ENTRIES`]
//! entries or [`LOG_CACHE_BYTES`] bytes): recent entries stay for the state machine's apply
//! and for followers that are a little behind.

use std::collections::VecDeque;
use std::ops::Range;

use types::{Entry, LogId, Vote};

/// The default of [`crate::LogOptions::cache_entries`]: how many durable entries the log
/// cache keeps at most (entries not yet durable are always kept, whatever their number). 4,096 entries cover the state machine's apply lag
/// and a follower a few batches behind at 256 clients; older entries are read from redb.
pub const LOG_CACHE_ENTRIES: usize = 4_096;

/// The default of [`crate::LogOptions::cache_bytes`]: how many bytes (encoded size) of
/// durable entries the log cache keeps at most, so that large values cannot make it grow
/// past this whatever their count: 32 MiB.
pub const LOG_CACHE_BYTES: usize = 32 << 20;

/// One cached entry.
struct Cached {
    entry: Entry,
    /// The sequence number of the append that carried it.
    seq: u64,
    /// Its encoded size, for the byte bound.
    bytes: usize,
}

/// The in-memory log; see the module documentation.
pub(crate) struct MemLog {
    entries: VecDeque<Cached>,
    /// The index of the first cached entry (the index after the last one when empty).
    start: u64,
    cached_bytes: usize,
    /// The bounds on durable entries: (entries, bytes).
    limits: (usize, usize),
    pub(crate) last: Option<LogId>,
    pub(crate) last_purged: Option<LogId>,
    pub(crate) vote: Option<Vote>,
    pub(crate) committed: Option<LogId>,
    /// The sequence number of the last operation queued before `committed` was set: the
    /// writer saves `committed` only with or after that operation.
    pub(crate) committed_seq: u64,
    /// The sequence number of the last queued operation.
    queued: u64,
    /// Every operation up to this sequence number is durable.
    durable: u64,
    /// Set when a commit of the writer failed: no later operation is accepted.
    pub(crate) failed: Option<String>,
}

impl MemLog {
    /// The view of a log whose durable state (read from redb at open) is this.
    pub(crate) fn new(
        last: Option<LogId>,
        last_purged: Option<LogId>,
        vote: Option<Vote>,
        committed: Option<LogId>,
    ) -> Self {
        let start = next_index(last.as_ref().or(last_purged.as_ref()));
        Self {
            entries: VecDeque::new(),
            start,
            cached_bytes: 0,
            limits: (LOG_CACHE_ENTRIES, LOG_CACHE_BYTES),
            last,
            last_purged,
            vote,
            committed,
            committed_seq: 0,
            queued: 0,
            durable: 0,
            failed: None,
        }
    }

    /// Bounds the durable entries kept to `entries` and `bytes` (encoded size).
    pub(crate) fn set_limits(&mut self, entries: usize, bytes: usize) {
        self.limits = (entries, bytes);
    }

    /// Records the committed log id, to be saved with the writer's next commit.
    pub(crate) fn commit(&mut self, committed: Option<LogId>) {
        self.committed = committed;
        self.committed_seq = self.queued;
    }

    /// The next sequence number for an operation about to be queued.
    pub(crate) fn next_seq(&mut self) -> u64 {
        self.queued += 1;
        self.queued
    }

    /// Holds appended entries (with their encoded sizes) under sequence number `seq`. An
    /// append that does not follow the cached tail replaces the tail from its first index.
    pub(crate) fn append(&mut self, entries: Vec<(Entry, usize)>, seq: u64) {
        let Some(first) = entries.first().map(|(e, _)| e.log_id.index) else { return };
        let next = self.start + self.entries.len() as u64;
        if first < next {
            self.truncate_from(first);
        } else if first > next {
            // openraft never leaves a hole; if it did, the cache restarts at the new entry.
            tracing::warn!(first, next, "log append does not follow the log's last entry");
            self.entries.clear();
            self.cached_bytes = 0;
            self.start = first;
        }
        for (entry, bytes) in entries {
            self.last = Some(entry.log_id.clone());
            self.cached_bytes += bytes;
            self.entries.push_back(Cached { entry, seq, bytes });
        }
    }

    /// Removes every entry after `after` (all of them for `None`).
    pub(crate) fn truncate_after(&mut self, after: Option<&LogId>) {
        self.truncate_from(next_index(after));
        match after {
            Some(a) if self.last.as_ref().is_some_and(|l| l.index > a.index) => self.last = Some(a.clone()),
            Some(_) => {}
            None => self.last = self.last_purged.clone(),
        }
    }

    fn truncate_from(&mut self, from: u64) {
        while self.entries.back().is_some_and(|c| c.entry.log_id.index >= from) {
            if let Some(c) = self.entries.pop_back() {
                self.cached_bytes -= c.bytes;
            }
        }
        self.start = self.start.min(from);
    }

    /// Removes every entry up to `upto`, inclusive.
    pub(crate) fn purge(&mut self, upto: &LogId) {
        while self.entries.front().is_some_and(|c| c.entry.log_id.index <= upto.index) {
            self.pop_front();
        }
        self.start = self.start.max(upto.index + 1);
        if self.last.as_ref().is_none_or(|l| l.index < upto.index) {
            self.last = Some(upto.clone());
        }
        self.last_purged = Some(upto.clone());
    }

    fn pop_front(&mut self) {
        if let Some(c) = self.entries.pop_front() {
            self.cached_bytes -= c.bytes;
            self.start += 1;
        }
    }

    /// Records that every operation up to `seq` is durable, and lets the oldest durable
    /// entries leave the cache while it is above its bounds.
    pub(crate) fn durable(&mut self, seq: u64) {
        self.durable = self.durable.max(seq);
        while (self.entries.len() > self.limits.0 || self.cached_bytes > self.limits.1)
            && self.entries.front().is_some_and(|c| c.seq <= self.durable)
        {
            self.pop_front();
        }
    }

    /// Splits a read of `range` (indexes, end exclusive): the entries found in the cache,
    /// and the part to read from redb (below the cache, above the purged entries).
    pub(crate) fn read(&self, range: Range<u64>) -> (Vec<Entry>, Range<u64>) {
        let (cached, disk) = self.split(range);
        (cached.map(|c| c.entry.clone()).collect(), disk)
    }

    /// [`Self::read`], with the cached entries' encoded sizes, stopping before the cached
    /// entry that would take them past `budget` bytes (the first one is always taken).
    pub(crate) fn read_limited(&self, range: Range<u64>, budget: usize) -> (Vec<(Entry, usize)>, Range<u64>) {
        let (cached, disk) = self.split(range);
        let mut taken = Vec::new();
        let mut used = 0usize;
        for c in cached {
            used = used.saturating_add(c.bytes);
            if used > budget && !taken.is_empty() {
                break;
            }
            taken.push((c.entry.clone(), c.bytes));
        }
        (taken, disk)
    }

    /// The cached entries of `range` and the part of it below the cache, above the purged
    /// entries (empty when `range` holds no entry of the log).
    fn split(&self, range: Range<u64>) -> (impl Iterator<Item = &Cached>, Range<u64>) {
        let lowest = next_index(self.last_purged.as_ref());
        let end = range.end.min(next_index(self.last.as_ref()));
        let start = range.start.max(lowest);
        let (skip, take, disk) = if start >= end {
            (0, 0, 0..0)
        } else {
            (start.saturating_sub(self.start), end.saturating_sub(self.start.max(start)), start..end.min(self.start))
        };
        (self.entries.iter().skip(skip as usize).take(take as usize), disk)
    }

    /// How many entries the cache holds (for tests).
    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        self.entries.len()
    }
}

/// The index after `log_id`'s (0 for none).
fn next_index(log_id: Option<&LogId>) -> u64 {
    log_id.map_or(0, |l| l.index + 1)
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;

    use super::*;

    fn id(term: u64, index: u64) -> LogId {
        LogId::new(openraft::impls::leader_id_adv::LeaderId { term, node_id: types::NodeId::from(1) }, index)
    }

    fn entries(term: u64, indexes: Range<u64>) -> Vec<(Entry, usize)> {
        indexes.map(|i| (Entry::new_blank(id(term, i)), 10)).collect()
    }

    fn indexes(v: &[Entry]) -> Vec<(u64, u64)> {
        v.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect()
    }

    #[test]
    fn reads_split_between_redb_and_the_cache() {
        let mut log = MemLog::new(Some(id(1, 9)), None, None, None);
        log.append(entries(1, 10..15), 1);
        let (cached, disk) = log.read(5..12);
        assert_eq!(disk, 5..10);
        assert_eq!(indexes(&cached), vec![(1, 10), (1, 11)]);
        let (cached, disk) = log.read(12..100);
        assert!(disk.is_empty());
        assert_eq!(indexes(&cached), vec![(1, 12), (1, 13), (1, 14)]);
    }

    #[test]
    fn limited_reads_of_the_cache_stop_before_the_entry_past_the_budget() {
        let mut log = MemLog::new(Some(id(1, 9)), None, None, None);
        log.append(entries(1, 10..15), 1);
        let idx = |v: Vec<(Entry, usize)>| v.iter().map(|(e, _)| e.log_id.index).collect::<Vec<_>>();
        assert_eq!(idx(log.read_limited(10..15, 30).0), vec![10, 11, 12], "exactly at the budget");
        assert_eq!(idx(log.read_limited(10..15, 29).0), vec![10, 11]);
        assert_eq!(idx(log.read_limited(12..15, 1).0), vec![12], "the first entry always goes");
        assert_eq!(idx(log.read_limited(10..15, usize::MAX).0), vec![10, 11, 12, 13, 14]);
        let (cached, disk) = log.read_limited(5..15, 20);
        assert_eq!((idx(cached), disk), (vec![10, 11], 5..10), "the redb part is the caller's to bound");
    }

    #[test]
    fn truncated_entries_are_never_read_even_if_redb_still_has_them() {
        let mut log = MemLog::new(Some(id(1, 9)), None, None, None);
        log.append(entries(1, 10..15), 1);
        log.truncate_after(Some(&id(1, 7)));
        assert_eq!(log.last, Some(id(1, 7)));
        let (cached, disk) = log.read(0..100);
        assert!(cached.is_empty());
        assert_eq!(disk, 0..8, "redb still holds 8 and 9 until the writer truncates them");
        log.append(entries(2, 8..10), 2);
        let (cached, disk) = log.read(0..100);
        assert_eq!(disk, 0..8);
        assert_eq!(indexes(&cached), vec![(2, 8), (2, 9)]);
    }

    #[test]
    fn an_overlapping_append_replaces_the_tail() {
        let mut log = MemLog::new(None, None, None, None);
        log.append(entries(1, 0..5), 1);
        log.append(entries(2, 3..4), 2);
        assert_eq!(indexes(&log.read(0..10).0), vec![(1, 0), (1, 1), (1, 2), (2, 3)]);
    }

    #[test]
    fn only_durable_entries_leave_the_cache_and_only_above_the_bound() {
        let mut log = MemLog::new(None, None, None, None);
        let n = LOG_CACHE_ENTRIES as u64;
        log.append(entries(1, 0..n), 1);
        log.append(entries(1, n..n + 10), 2);
        log.durable(1);
        assert_eq!(log.cached(), LOG_CACHE_ENTRIES, "the 10 newest are not durable yet");
        assert_eq!(log.read(0..5).1, 0..5);
        let mut log = MemLog::new(None, None, None, None);
        log.append(entries(1, 0..n + 10), 1);
        assert_eq!(log.cached(), LOG_CACHE_ENTRIES + 10, "nothing durable: everything stays");
        log.durable(1);
        assert_eq!(log.cached(), LOG_CACHE_ENTRIES);
    }

    #[test]
    fn the_bounds_are_settings() {
        let mut log = MemLog::new(None, None, None, None);
        log.set_limits(3, usize::MAX);
        log.append(entries(1, 0..10), 1);
        log.durable(1);
        assert_eq!(log.cached(), 3);
        log.set_limits(usize::MAX, 0);
        log.append(entries(1, 10..12), 2);
        log.durable(2);
        assert_eq!(log.cached(), 0, "a zero byte bound keeps no durable entry");
    }

    #[test]
    fn purge_past_the_last_entry_leaves_an_empty_log_at_the_purged_id() {
        let mut log = MemLog::new(None, None, None, None);
        log.append(entries(1, 0..5), 1);
        log.purge(&id(1, 9));
        assert_eq!(log.last, Some(id(1, 9)));
        assert_eq!(log.last_purged, Some(id(1, 9)));
        let (cached, disk) = log.read(0..100);
        assert!(cached.is_empty() && disk.is_empty());
        log.append(entries(1, 10..11), 2);
        assert_eq!(indexes(&log.read(0..100).0), vec![(1, 10)]);
    }
}
