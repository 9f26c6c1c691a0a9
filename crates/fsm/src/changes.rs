//! The change feed: what each applied write changed, kept for a while (the history) and
//! delivered to the watchers of the keys it touched.
//!
//! - `store` records one [`Event`] per key a write changes, in the apply transaction; the
//!   state machine publishes them **after** that transaction commits (`Hub::publish`), so
//!   a watcher never hears of a change a read could not see yet.
//! - The history is an **in-memory** ring bounded by a count of events and a number of bytes
//!   ([`HistoryLimits`]); the oldest index's events go first. It starts empty when the node
//!   starts (only changes applied since are remembered), and it is cleared when a snapshot
//!   is installed. A watch from an index older than what the history holds gets
//!   [`Error::Compacted`] with the oldest index still available.
//! - Watchers register for one key or a range. A key's watchers are found by a hash lookup,
//!   a range's by a scan of the range watchers, so a write wakes only the watchers of the
//!   keys it changed. Each watcher has a bounded [`Mailbox`]; one that does not keep up
//!   overflows and is dropped from the registry, so memory never grows without bound.
//! - Registration, publishing and abandoning take the same lock, so a watch that starts from
//!   the history and then follows live changes has no gap and no repeat, and a snapshot
//!   install cannot slip between a watcher's registration and its wait.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use blocking_query::{Mailbox, MailboxLimits};
use types::{KeyRange, KeyValue};

use crate::Error;

/// Default of [`HistoryLimits::max_events`] (`--watch_history_events`).
pub const DEFAULT_HISTORY_EVENTS: usize = 100_000;
/// Default of [`HistoryLimits::max_bytes`] (`--watch_history_bytes`): 64 MiB.
pub const DEFAULT_HISTORY_BYTES: usize = 64 << 20;
/// The most index groups queued for one watcher before it overflows.
pub const WATCHER_BUFFER_MESSAGES: usize = 1024;
/// The most bytes of events queued for one watcher before it overflows (4 MiB).
pub const WATCHER_BUFFER_BYTES: usize = 4 << 20;
/// The most watchers (watch streams and blocking reads) one node serves at once.
pub const MAX_WATCHERS: usize = 65_536;
/// What one event costs besides its key and value, for the byte bounds.
const EVENT_OVERHEAD_BYTES: usize = 64;

/// What kind of change an [`Event`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was set.
    Put,
    /// The key was deleted.
    Delete,
}

/// One change to one key.
///
/// For a put, `kv` is the key as it is after the write. For a delete, `kv.key` is the key,
/// `kv.modify_index` the index of the delete, and `value`, `create_index` and `version` are
/// empty and 0 (as etcd reports deletions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change.
    pub kv: KeyValue,
    /// The key as it was before the change (none if it did not exist): etcd's `prev_kv`.
    pub prev: Option<KeyValue>,
}

impl Event {
    /// The log index of the write that made this change.
    #[must_use]
    pub fn index(&self) -> u64 {
        self.kv.modify_index
    }

    /// What the event weighs for the history and buffer bounds.
    #[must_use]
    pub fn bytes(&self) -> usize {
        let prev = self.prev.as_ref().map_or(0, |p| p.key.len() + p.value.len());
        self.kv.key.len() + self.kv.value.len() + prev + EVENT_OVERHEAD_BYTES
    }
}

/// The changes at one log index that a watcher asked for, in the order they were applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The log index of the write.
    pub index: u64,
    /// Its changes to the watched keys (never empty).
    pub events: Vec<Arc<Event>>,
}

impl Changes {
    fn bytes(&self) -> usize {
        self.events.iter().map(|e| e.bytes()).sum()
    }
}

/// The bounds of the history of changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// The most events kept.
    pub max_events: usize,
    /// The most bytes of events kept (keys, values and a fixed overhead per event).
    pub max_bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self { max_events: DEFAULT_HISTORY_EVENTS, max_bytes: DEFAULT_HISTORY_BYTES }
    }
}

/// A watcher's mailbox.
pub type WatchMailbox = Mailbox<Changes>;

/// What one publish hands one watcher: its mailbox, what it watches (to unregister it on
/// overflow), and its events.
type Delivery = (Arc<WatchMailbox>, KeyRange, Vec<Arc<Event>>);

/// The history ring.
#[derive(Debug)]
struct History {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    /// Every change with an index at or after this is in `events` (or none happened).
    complete_from: u64,
    limits: HistoryLimits,
}

impl History {
    fn push(&mut self, event: Arc<Event>) {
        self.bytes += event.bytes();
        self.events.push_back(event);
    }

    /// Drops the oldest indexes, a whole index at a time, until within the limits.
    fn trim(&mut self) {
        while self.events.len() > self.limits.max_events || self.bytes > self.limits.max_bytes {
            let Some(oldest) = self.events.front().map(|e| e.index()) else { break };
            while self.events.front().is_some_and(|e| e.index() == oldest) {
                if let Some(e) = self.events.pop_front() {
                    self.bytes -= e.bytes();
                }
            }
            self.complete_from = oldest + 1;
        }
    }
}

#[derive(Debug)]
struct HubState {
    history: History,
    /// The last index published (every change up to it is in the history or compacted).
    published: u64,
    next_id: u64,
    keys: HashMap<Vec<u8>, HashMap<u64, Arc<WatchMailbox>>>,
    ranges: HashMap<u64, (KeyRange, Arc<WatchMailbox>)>,
    /// How many watchers `keys` and `ranges` hold.
    count: usize,
    closed: bool,
    /// The newest compaction point ([`Hub::compact`]): no change before it is replayed.
    compacted: u64,
}

impl HubState {
    fn watchers(&self) -> usize {
        self.count
    }

    fn remove(&mut self, id: u64, range: &KeyRange) {
        let removed = match range {
            KeyRange::Key(k) => {
                let Some(m) = self.keys.get_mut(k) else { return };
                let removed = m.remove(&id).is_some();
                if m.is_empty() {
                    self.keys.remove(k);
                }
                removed
            }
            KeyRange::Range { .. } => self.ranges.remove(&id).is_some(),
        };
        if removed {
            self.count -= 1;
        }
    }
}

/// The change feed of one state machine: the history and the registered watchers.
#[derive(Debug)]
pub(crate) struct Hub {
    state: Mutex<HubState>,
    /// `HubState::published`, readable without the lock.
    published: AtomicU64,
    /// How many times a watcher's mailbox was handed changes (a measure of wake-ups).
    notifications: AtomicU64,
    /// Set once the hub is closed, for streams that hold no watcher to wait on.
    closed: tokio::sync::watch::Sender<bool>,
}

/// How a new watch starts.
#[derive(Debug)]
pub struct WatchStart {
    /// Every change after this index reaches the watcher: first from `backlog`, then through
    /// its mailbox. Changes at or before it are not delivered.
    pub after: u64,
    /// Changes from the history, oldest first, delivered before the mailbox's.
    pub backlog: VecDeque<Changes>,
}

/// A registered watcher. Dropping it unregisters it.
#[derive(Debug)]
pub struct Watcher {
    id: u64,
    range: KeyRange,
    hub: Arc<Hub>,
    mailbox: Arc<WatchMailbox>,
}

impl Watcher {
    /// Where the changes arrive.
    #[must_use]
    pub fn mailbox(&self) -> &WatchMailbox {
        &self.mailbox
    }

    /// The last index published by the state machine: once the mailbox is empty, every
    /// change up to it has been taken.
    #[must_use]
    pub fn published(&self) -> u64 {
        self.hub.published.load(Ordering::Acquire)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.hub.lock().remove(self.id, &self.range);
    }
}

/// Figures about the watchers of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WatchStats {
    /// Watchers registered now.
    pub watchers: usize,
    /// How many times, in all, a watcher was handed changes.
    pub notifications: u64,
    /// The oldest index the history can replay from.
    pub oldest_index: u64,
    /// Events in the history.
    pub history_events: usize,
    /// Bytes of events in the history.
    pub history_bytes: usize,
}

impl Hub {
    pub(crate) fn new(applied: u64, limits: HistoryLimits) -> Self {
        Self {
            state: Mutex::new(HubState {
                history: History { events: VecDeque::new(), bytes: 0, complete_from: applied + 1, limits },
                published: applied,
                next_id: 0,
                keys: HashMap::new(),
                ranges: HashMap::new(),
                count: 0,
                closed: false,
                compacted: 0,
            }),
            published: AtomicU64::new(applied),
            notifications: AtomicU64::new(0),
            closed: tokio::sync::watch::channel(false).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a watcher of `range` for every change at or after `start_index` (0: only
    /// changes after the last one published).
    pub(crate) fn watch(self: &Arc<Self>, range: KeyRange, start_index: u64) -> Result<(Watcher, WatchStart), Error> {
        let mut s = self.lock();
        if s.closed {
            return Err(Error::Closed);
        }
        if s.watchers() >= MAX_WATCHERS {
            return Err(Error::TooManyWatchers { limit: MAX_WATCHERS });
        }
        let mut backlog = VecDeque::new();
        let after = if start_index == 0 {
            s.published
        } else {
            if start_index <= s.published && start_index < s.history.complete_from {
                return Err(Error::Compacted { requested: start_index, oldest: s.history.complete_from });
            }
            for e in s.history.events.iter().filter(|e| e.index() >= start_index && range.contains(&e.kv.key)) {
                match backlog.back_mut() {
                    Some(Changes { index, events }) if *index == e.index() => events.push(e.clone()),
                    _ => backlog.push_back(Changes { index: e.index(), events: vec![e.clone()] }),
                }
            }
            start_index - 1
        };
        let id = s.next_id;
        s.next_id += 1;
        let mailbox = Arc::new(Mailbox::new(MailboxLimits {
            max_items: WATCHER_BUFFER_MESSAGES,
            max_bytes: WATCHER_BUFFER_BYTES,
        }));
        match &range {
            KeyRange::Key(k) => {
                s.keys.entry(k.clone()).or_default().insert(id, mailbox.clone());
            }
            KeyRange::Range { .. } => {
                s.ranges.insert(id, (range.clone(), mailbox.clone()));
            }
        }
        s.count += 1;
        drop(s);
        Ok((Watcher { id, range, hub: self.clone(), mailbox }, WatchStart { after, backlog }))
    }

    /// Records the changes of an applied batch whose last entry is `last_index`, and hands
    /// each watcher the changes to its keys. Called after the batch's transaction commits.
    pub(crate) fn publish(&self, last_index: u64, events: Vec<Event>) {
        let mut s = self.lock();
        let mut i = 0;
        let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
        while i < events.len() {
            let index = events[i].index();
            let end = events[i..].iter().position(|e| e.index() != index).map_or(events.len(), |n| i + n);
            let group = &events[i..end];
            // Each interested watcher gets this index's changes to its keys, in one item.
            let mut per_watcher: HashMap<u64, Delivery> = HashMap::new();
            for e in group {
                if let Some(watchers) = s.keys.get(&e.kv.key) {
                    for (id, mb) in watchers {
                        per_watcher
                            .entry(*id)
                            .or_insert_with(|| (mb.clone(), KeyRange::Key(e.kv.key.clone()), Vec::new()))
                            .2
                            .push(e.clone());
                    }
                }
                for (id, (range, mb)) in &s.ranges {
                    if range.contains(&e.kv.key) {
                        per_watcher
                            .entry(*id)
                            .or_insert_with(|| (mb.clone(), range.clone(), Vec::new()))
                            .2
                            .push(e.clone());
                    }
                }
            }
            for (id, (mb, range, events)) in per_watcher {
                #[cfg(feature = "planted-bugs")]
                if drop_watch_event(index) {
                    continue;
                }
                let changes = Changes { index, events };
                let bytes = changes.bytes();
                self.notifications.fetch_add(1, Ordering::Relaxed);
                if !mb.push(changes, bytes) {
                    // Overflowed (or closed): it gets nothing more, so it needs no lookups.
                    if !s.closed {
                        metrics::counter!(crate::metric::WATCHERS_DROPPED).increment(1);
                    }
                    s.remove(id, &range);
                }
            }
            for e in group {
                s.history.push(e.clone());
            }
            i = end;
        }
        s.history.trim();
        s.published = s.published.max(last_index);
        self.published.store(s.published, Ordering::Release);
    }

    /// A snapshot replaced the state at `index`: the history no longer leads to it, so it is
    /// cleared, and every watcher is told.
    pub(crate) fn abandon(&self, index: u64) {
        let mut s = self.lock();
        s.history.events.clear();
        s.history.bytes = 0;
        s.history.complete_from = index + 1;
        s.published = index;
        self.published.store(index, Ordering::Release);
        for mb in s.keys.values().flat_map(HashMap::values).chain(s.ranges.values().map(|(_, mb)| mb)) {
            mb.abandon(index);
        }
        if s.watchers() > 0 {
            tracing::info!(index, watchers = s.watchers(), "watchers told their state was replaced by a snapshot");
        }
    }

    /// Compacts the history at `revision`: every change before it is dropped, and a watch
    /// from before it is refused as compacted from then on. An older or equal compaction
    /// point than the last one changes nothing.
    pub(crate) fn compact(&self, revision: u64) {
        let mut s = self.lock();
        if revision <= s.compacted {
            return;
        }
        s.compacted = revision;
        while s.history.events.front().is_some_and(|e| e.index() < revision) {
            if let Some(e) = s.history.events.pop_front() {
                s.history.bytes -= e.bytes();
            }
        }
        s.history.complete_from = s.history.complete_from.max(revision);
        tracing::info!(revision, oldest = s.history.complete_from, "watch history compacted");
    }

    /// The newest compaction point (0: none since the node started).
    pub(crate) fn compacted(&self) -> u64 {
        self.lock().compacted
    }

    /// Becomes `true` when the hub is closed.
    pub(crate) fn subscribe_closed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Closes every watcher (shutdown) and refuses new ones.
    pub(crate) fn close(&self) {
        self.closed.send_replace(true);
        let mut s = self.lock();
        s.closed = true;
        for mb in s.keys.values().flat_map(HashMap::values).chain(s.ranges.values().map(|(_, mb)| mb)) {
            mb.close();
        }
        s.keys.clear();
        s.ranges.clear();
        s.count = 0;
    }

    pub(crate) fn stats(&self) -> WatchStats {
        let s = self.lock();
        WatchStats {
            watchers: s.watchers(),
            notifications: self.notifications.load(Ordering::Relaxed),
            oldest_index: s.history.complete_from,
            history_events: s.history.events.len(),
            history_bytes: s.history.bytes,
        }
    }
}

/// Whether the planted bug "dropped watch event" is armed (feature `planted-bugs` and
/// `RAFTKV_PLANTED_BUG=drop-watch-event`) and drops the live delivery of the changes at
/// `index`: one index in ten never reaches the watchers waiting for it (the history, and so
/// a replay, still has it). A test-only bug the fault suite must catch.
#[cfg(feature = "planted-bugs")]
fn drop_watch_event(index: u64) -> bool {
    static ARMED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    index % 10 == 3 && *ARMED.get_or_init(|| std::env::var("RAFTKV_PLANTED_BUG").is_ok_and(|v| v == "drop-watch-event"))
}

#[cfg(test)]
mod tests {
    use blocking_query::Signal;

    use super::*;

    fn put(index: u64, key: &str) -> Event {
        let kv = KeyValue {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            create_index: index,
            modify_index: index,
            version: 1,
            lease: 0,
        };
        Event { kind: EventKind::Put, kv, prev: None }
    }

    fn hub(limits: HistoryLimits) -> Arc<Hub> {
        Arc::new(Hub::new(0, limits))
    }

    fn key(k: &str) -> KeyRange {
        KeyRange::Key(k.as_bytes().to_vec())
    }

    fn indexes(changes: &VecDeque<Changes>) -> Vec<u64> {
        changes.iter().map(|c| c.index).collect()
    }

    #[test]
    fn a_write_reaches_only_the_watchers_of_its_key() -> Result<(), Error> {
        let hub = hub(HistoryLimits::default());
        let (a, _) = hub.watch(key("a"), 0)?;
        let (b, _) = hub.watch(key("b"), 0)?;
        let (p, _) = hub.watch(KeyRange::prefix(b"a"), 0)?;
        hub.publish(1, vec![put(1, "a")]);
        assert!(matches!(a.mailbox().try_recv(), Some(Signal::Item(c)) if c.index == 1));
        assert!(b.mailbox().try_recv().is_none());
        assert!(matches!(p.mailbox().try_recv(), Some(Signal::Item(c)) if c.index == 1));
        assert_eq!(hub.stats().notifications, 2);
        Ok(())
    }

    #[test]
    fn one_index_is_one_item() -> Result<(), Error> {
        let hub = hub(HistoryLimits::default());
        let (p, _) = hub.watch(KeyRange::prefix(b"k"), 0)?;
        hub.publish(3, vec![put(2, "k1"), put(2, "k2"), put(3, "k1")]);
        let Some(Signal::Item(c)) = p.mailbox().try_recv() else { panic!("expected changes") };
        assert_eq!((c.index, c.events.len()), (2, 2));
        assert!(matches!(p.mailbox().try_recv(), Some(Signal::Item(c)) if c.index == 3));
        Ok(())
    }

    #[test]
    fn replays_from_history_then_follows_live_with_no_gap() -> Result<(), Error> {
        let hub = hub(HistoryLimits::default());
        hub.publish(3, vec![put(1, "a"), put(2, "b"), put(3, "a")]);
        let (w, start) = hub.watch(key("a"), 2)?;
        assert_eq!(start.after, 1);
        assert_eq!(indexes(&start.backlog), [3]);
        hub.publish(4, vec![put(4, "a")]);
        assert!(matches!(w.mailbox().try_recv(), Some(Signal::Item(c)) if c.index == 4));
        // From now: only what comes next.
        let (_, start) = hub.watch(key("a"), 0)?;
        assert_eq!((start.after, start.backlog.len()), (4, 0));
        // From the future: nothing yet.
        let (_, start) = hub.watch(key("a"), 9)?;
        assert_eq!((start.after, start.backlog.len()), (8, 0));
        Ok(())
    }

    #[test]
    fn history_is_bounded_by_count_and_says_what_is_compacted() -> Result<(), Error> {
        let hub = hub(HistoryLimits { max_events: 2, max_bytes: usize::MAX });
        hub.publish(3, vec![put(1, "a"), put(2, "a"), put(3, "a")]);
        assert_eq!(hub.stats().oldest_index, 2);
        assert!(matches!(hub.watch(key("a"), 1), Err(Error::Compacted { requested: 1, oldest: 2 })));
        let (_, start) = hub.watch(key("a"), 2)?;
        assert_eq!(indexes(&start.backlog), [2, 3], "at the limit");
        Ok(())
    }

    #[test]
    fn history_is_bounded_by_bytes() {
        let one = put(1, "a").bytes();
        let hub = hub(HistoryLimits { max_events: 100, max_bytes: 2 * one });
        hub.publish(2, vec![put(1, "a"), put(2, "a")]);
        assert_eq!(hub.stats().history_events, 2, "at the limit");
        hub.publish(3, vec![put(3, "a")]);
        let stats = hub.stats();
        assert_eq!((stats.history_events, stats.history_bytes, stats.oldest_index), (2, 2 * one, 2));
    }

    #[test]
    fn a_slow_watcher_overflows_and_is_unregistered() -> Result<(), Error> {
        let hub = hub(HistoryLimits::default());
        let (w, _) = hub.watch(key("a"), 0)?;
        for i in 1..=(WATCHER_BUFFER_MESSAGES as u64 + 1) {
            hub.publish(i, vec![put(i, "a")]);
        }
        assert_eq!(w.mailbox().try_recv(), Some(Signal::Overflowed));
        assert_eq!(hub.stats().watchers, 0);
        Ok(())
    }

    #[test]
    fn abandon_clears_history_and_tells_every_watcher() -> Result<(), Error> {
        let hub = hub(HistoryLimits::default());
        let (w, _) = hub.watch(key("a"), 0)?;
        hub.publish(1, vec![put(1, "a")]);
        hub.abandon(10);
        assert_eq!(w.mailbox().try_recv(), Some(Signal::Abandoned(10)));
        assert!(matches!(hub.watch(key("a"), 5), Err(Error::Compacted { requested: 5, oldest: 11 })));
        Ok(())
    }

    #[test]
    fn compaction_drops_older_changes_and_refuses_watches_from_before_it() -> Result<(), Error> {
        let hub = hub(HistoryLimits::default());
        hub.publish(4, vec![put(1, "a"), put(2, "a"), put(3, "a"), put(4, "b")]);
        hub.compact(3);
        assert_eq!((hub.compacted(), hub.stats().oldest_index, hub.stats().history_events), (3, 3, 2));
        assert!(matches!(hub.watch(key("a"), 2), Err(Error::Compacted { requested: 2, oldest: 3 })));
        let (_, start) = hub.watch(key("a"), 3)?;
        assert_eq!(indexes(&start.backlog), [3], "at the compaction point");
        // An older compaction point changes nothing.
        hub.compact(2);
        assert_eq!(hub.compacted(), 3);
        Ok(())
    }

    #[test]
    fn close_ends_watchers_and_refuses_new_ones() -> Result<(), Error> {
        let hub = hub(HistoryLimits::default());
        let (w, _) = hub.watch(key("a"), 0)?;
        let closed = hub.subscribe_closed();
        assert!(!*closed.borrow());
        hub.close();
        assert!(*closed.borrow());
        assert_eq!(w.mailbox().try_recv(), Some(Signal::Closed));
        assert!(matches!(hub.watch(key("a"), 0), Err(Error::Closed)));
        Ok(())
    }

    #[test]
    fn watchers_are_bounded_at_and_past_the_limit() -> Result<(), Error> {
        let hub = hub(HistoryLimits::default());
        let mut watchers = Vec::with_capacity(MAX_WATCHERS);
        for i in 0..MAX_WATCHERS {
            watchers.push(hub.watch(key(&format!("k{}", i % 100)), 0)?.0);
        }
        assert_eq!(hub.stats().watchers, MAX_WATCHERS, "at the limit");
        assert!(matches!(hub.watch(key("k"), 0), Err(Error::TooManyWatchers { limit: MAX_WATCHERS })));
        watchers.pop();
        assert!(hub.watch(KeyRange::prefix(b"k"), 0).is_ok(), "room again after one left");
        Ok(())
    }

    #[test]
    fn dropping_a_watcher_unregisters_it() -> Result<(), Error> {
        let hub = hub(HistoryLimits::default());
        let (w, _) = hub.watch(key("a"), 0)?;
        let (p, _) = hub.watch(KeyRange::prefix(b"a"), 0)?;
        assert_eq!(hub.stats().watchers, 2);
        drop(w);
        drop(p);
        assert_eq!(hub.stats().watchers, 0);
        Ok(())
    }
}
