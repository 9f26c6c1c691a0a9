//! Watch streams and blocking reads, served by any node from its own state machine's change
//! feed (`fsm::changes`). Nothing here polls: every wait is on a watcher's mailbox, which
//! the state machine fills after each apply, or on a timer the caller asked for.
//!
//! The rules a stream keeps (documented for clients on `WatchResponse` in `kv.proto`):
//! changes come in index order, all of one index together (split over messages with `more`
//! only past [`WATCH_MESSAGE_BYTES`]); a client that resumes from the last index it
//! completed + 1 gets every later change once. `delivered` below is that index: every
//! change up to it has left this stream.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use blocking_query::Signal;
use fsm::{Changes, EventKind, StateMachine, Watcher};
use futures::Stream;
use prost::Message;
use proto::kv::v1::{self as pb, watch_response::Kind};
use tokio::time::{Instant, MissedTickBehavior};
use tonic::Status;
use types::{KeyRange, KeyValue, RangeOp};

use crate::ServiceError;
use crate::auth::WatchPermit;
use crate::convert;
use crate::limits::WATCH_MESSAGE_BYTES;

/// A server stream as tonic takes it.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Reads the keys of `range` and the applied index they reflect, in one read transaction.
pub fn read_state(sm: &StateMachine, range: &KeyRange, keys_only: bool) -> Result<(Vec<KeyValue>, u64), ServiceError> {
    let op = RangeOp { range: range.clone(), limit: 0, keys_only, count_only: false };
    let (found, at) = sm.range_at(&op, usize::MAX)?;
    Ok((found.kvs, at))
}

/// Registers a watcher of one key for the changes after `since`, and says whether the
/// history already holds one. When the history no longer reaches back to `since`, the
/// watcher follows only what comes next (the caller then compares the key's own index).
pub fn watch_key_since(sm: &StateMachine, key: &[u8], since: u64) -> Result<(Watcher, bool), ServiceError> {
    let range = KeyRange::Key(key.to_vec());
    match sm.watch(range.clone(), since.saturating_add(1)) {
        Ok((watcher, start)) => Ok((watcher, !start.backlog.is_empty())),
        Err(fsm::Error::Compacted { .. }) => sm.watch(range, 0).map(|(w, _)| (w, false)).map_err(ServiceError::from),
        Err(e) => Err(e.into()),
    }
}

/// What a blocking read found.
pub(crate) struct BlockingRead {
    pub(crate) kv: Option<KeyValue>,
    /// The applied index the value reflects.
    pub(crate) index: u64,
    /// Woken by a snapshot install.
    pub(crate) abandoned: bool,
}

/// A blocking read (Consul's `?index=&wait=`): returns once `key` changed at an index above
/// `min_index`, or after `wait`, with the key's value then. The watcher is registered before
/// the value is first read, so no change can slip between the check and the wait.
pub(crate) async fn blocking_get(
    sm: &StateMachine,
    key: &[u8],
    min_index: u64,
    wait: Duration,
) -> Result<BlockingRead, ServiceError> {
    let end = Instant::now() + wait;
    let (watcher, changed) = watch_key_since(sm, key, min_index)?;
    let range = KeyRange::Key(key.to_vec());
    let (kvs, _) = read_state(sm, &range, false)?;
    let mut abandoned = false;
    let passed = changed || kvs.first().is_some_and(|kv| kv.modify_index > min_index);
    if !passed {
        loop {
            match tokio::time::timeout_at(end, watcher.mailbox().recv()).await {
                Err(_) | Ok(Signal::Overflowed) => break,
                Ok(Signal::Item(c)) if c.index > min_index => break,
                Ok(Signal::Item(_)) => {}
                Ok(Signal::Abandoned(_)) => {
                    abandoned = true;
                    break;
                }
                Ok(Signal::Closed) => return Err(ServiceError::ShuttingDown),
            }
        }
    }
    let (mut kvs, index) = read_state(sm, &range, false)?;
    Ok(BlockingRead { kv: kvs.pop(), index, abandoned })
}

/// What a native watch asked for, checked.
pub(crate) struct WatchParams {
    pub(crate) range: KeyRange,
    pub(crate) start_index: u64,
    pub(crate) keys_only: bool,
    pub(crate) progress: Duration,
    pub(crate) timeout: Option<Duration>,
    pub(crate) node_id: String,
    /// The caller's read permission on `range`, re-checked when the auth state changes
    /// (none while authentication is off).
    pub(crate) permit: Option<WatchPermit>,
}

/// Starts a native watch stream. Fails before the stream starts when `start_index` is
/// compacted, there are too many watchers, or the node is shutting down.
pub(crate) fn native_stream(
    sm: StateMachine,
    p: WatchParams,
) -> Result<ResponseStream<pb::WatchResponse>, ServiceError> {
    let (watcher, start) = sm.watch(p.range.clone(), p.start_index).map_err(ServiceError::from)?;
    let now = Instant::now();
    let mut progress = tokio::time::interval_at(now + p.progress, p.progress);
    progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stream = NativeWatch {
        sm,
        watcher,
        single_key: matches!(p.range, KeyRange::Key(_)),
        range: p.range,
        keys_only: p.keys_only,
        node_id: p.node_id,
        delivered: start.after,
        skip_through: start.after,
        backlog: start.backlog,
        pending: VecDeque::new(),
        progress,
        timeout: p.timeout,
        last_sent: now,
        done: false,
        permit: p.permit,
    };
    stream.pending.push_back((stream.message(Kind::Created, start.after), Some(start.after)));
    tracing::debug!(start = p.start_index, after = start.after, "watch started");
    Ok(Box::pin(futures::stream::unfold(stream, |mut s| async move { s.next().await.map(|item| (item, s)) })))
}

/// Resolves when the permit's auth state changes; never without a permit.
async fn permit_changed(permit: Option<&mut WatchPermit>) {
    match permit {
        Some(p) => p.changed().await,
        None => std::future::pending().await,
    }
}

/// Why a native watch woke.
enum Wake {
    Signal(Signal<Changes>),
    Progress,
    Timeout,
}

struct NativeWatch {
    sm: StateMachine,
    watcher: Watcher,
    range: KeyRange,
    single_key: bool,
    keys_only: bool,
    node_id: String,
    /// Every change up to this index has left the stream.
    delivered: u64,
    /// Changes at or before this index are already reflected (by the start point or a
    /// restored state read) and are skipped.
    skip_through: u64,
    backlog: VecDeque<Changes>,
    /// Messages ready to go, each with the new `delivered` once it has gone.
    pending: VecDeque<(pb::WatchResponse, Option<u64>)>,
    progress: tokio::time::Interval,
    timeout: Option<Duration>,
    last_sent: Instant,
    done: bool,
    /// The caller's permission, when authentication is on.
    permit: Option<WatchPermit>,
}

impl NativeWatch {
    fn message(&self, kind: Kind, index: u64) -> pb::WatchResponse {
        pb::WatchResponse { kind: kind as i32, index, node_id: self.node_id.clone(), ..Default::default() }
    }

    async fn next(&mut self) -> Option<Result<pb::WatchResponse, Status>> {
        loop {
            // Before anything is sent: the auth state is published before the events of the
            // batch that changed it, so no event after a revocation gets out.
            if !self.done
                && let Some(permit) = self.permit.as_mut()
                && let Err(e) = permit.recheck()
            {
                self.done = true;
                tracing::info!(reason = %e, "watch closed: its permission was revoked");
                return Some(Err(e.into()));
            }
            if let Some((msg, delivered)) = self.pending.pop_front() {
                if let Some(d) = delivered {
                    self.delivered = self.delivered.max(d);
                }
                self.last_sent = Instant::now();
                return Some(Ok(msg));
            }
            if self.done {
                return None;
            }
            if let Some(c) = self.backlog.pop_front() {
                self.queue_changes(&c);
                continue;
            }
            let timeout_at = self.timeout.map(|t| self.last_sent + t);
            let wake = tokio::select! {
                biased;
                s = self.watcher.mailbox().recv() => Wake::Signal(s),
                _ = self.progress.tick() => Wake::Progress,
                () = sleep_until(timeout_at), if timeout_at.is_some() => Wake::Timeout,
                () = permit_changed(self.permit.as_mut()) => continue,
            };
            let resume_index = self.delivered + 1;
            match wake {
                Wake::Signal(Signal::Item(c)) => self.queue_changes(&c),
                Wake::Signal(Signal::Abandoned(index)) => {
                    if let Err(e) = self.queue_restored(index) {
                        self.done = true;
                        return Some(Err(e.into()));
                    }
                }
                Wake::Signal(Signal::Overflowed) => {
                    self.done = true;
                    tracing::info!(resume_index, "watcher fell behind; its stream is cancelled");
                    return Some(Err(ServiceError::WatchOverflow { resume_index }.into()));
                }
                Wake::Signal(Signal::Closed) => {
                    self.done = true;
                    return Some(Err(ServiceError::WatchClosed { resume_index }.into()));
                }
                Wake::Progress => {
                    // Read what was published before looking at the mailbox: if it is empty
                    // now, every change up to that index has been taken and sent.
                    let published = self.watcher.published();
                    if self.watcher.mailbox().is_empty() {
                        let index = self.delivered.max(published);
                        self.pending.push_back((self.message(Kind::Progress, index), Some(index)));
                    }
                }
                Wake::Timeout => {
                    let (kvs, index) = if self.single_key {
                        match read_state(&self.sm, &self.range, self.keys_only) {
                            Ok(state) => state,
                            Err(e) => return Some(Err(e.into())),
                        }
                    } else {
                        (Vec::new(), self.sm.applied_index())
                    };
                    let mut msg = self.message(Kind::Timeout, index);
                    msg.kvs = kvs.into_iter().map(convert::kv).collect();
                    self.pending.push_back((msg, None));
                }
            }
        }
    }

    /// Queues the messages of one index's changes (several only past the message size).
    fn queue_changes(&mut self, c: &Changes) {
        if c.index <= self.skip_through {
            return;
        }
        let events: Vec<pb::Event> = c.events.iter().map(|e| event(e, self.keys_only)).collect();
        for (chunk, last) in chunks(events) {
            let mut msg = self.message(Kind::Events, c.index);
            msg.events = chunk;
            msg.more = !last;
            self.pending.push_back((msg, last.then_some(c.index)));
        }
    }

    /// After a snapshot install: the watched keys as restored, read with the index they
    /// reflect; changes up to that index are then skipped.
    ///
    /// A stream never goes backwards: a snapshot at or below what the stream already covered
    /// (it resumed, on a node that lags, at an index the node had not reached, and the
    /// snapshot brought the node only part of the way) has nothing the client lacks. Every
    /// change after the snapshot still reaches the mailbox (the hub publishes nothing older
    /// after an abandon), and those up to the covered index are skipped, so the abandon is
    /// dropped and the stream goes on.
    fn queue_restored(&mut self, abandoned_at: u64) -> Result<(), ServiceError> {
        let covered = self.delivered.max(self.skip_through);
        if abandoned_at <= covered {
            tracing::info!(
                abandoned_at,
                covered,
                "snapshot install within what the watch stream covered; nothing to resend"
            );
            return Ok(());
        }
        let (kvs, at) = read_state(&self.sm, &self.range, self.keys_only)?;
        tracing::info!(abandoned_at, restored_at = at, keys = kvs.len(), "watch abandoned by a snapshot install");
        self.skip_through = self.skip_through.max(at);
        let kvs: Vec<pb::KeyValue> = kvs.into_iter().map(convert::kv).collect();
        for (chunk, last) in chunks(kvs) {
            let mut msg = self.message(Kind::Abandoned, at);
            msg.kvs = chunk;
            msg.more = !last;
            self.pending.push_back((msg, last.then_some(at)));
        }
        Ok(())
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One change, as the client sees it.
fn event(e: &fsm::Event, keys_only: bool) -> pb::Event {
    let mut kv = e.kv.clone();
    if keys_only {
        kv.value.clear();
    }
    let kind = match e.kind {
        EventKind::Put => pb::event::EventType::Put,
        EventKind::Delete => pb::event::EventType::Delete,
    };
    pb::Event { r#type: kind as i32, kv: Some(convert::kv(kv)) }
}

/// Splits items into runs of about [`WATCH_MESSAGE_BYTES`] (at least one item each, and
/// always at least one run); each run comes with whether it is the last.
fn chunks<T: Message>(items: Vec<T>) -> Vec<(Vec<T>, bool)> {
    let mut out: Vec<(Vec<T>, bool)> = vec![(Vec::new(), false)];
    let mut bytes = 0;
    for item in items {
        let size = item.encoded_len();
        if let Some((current, _)) = out.last_mut()
            && !current.is_empty()
            && bytes + size > WATCH_MESSAGE_BYTES
        {
            out.push((Vec::new(), false));
            bytes = 0;
        }
        bytes += size;
        if let Some((current, _)) = out.last_mut() {
            current.push(item);
        }
    }
    if let Some((_, last)) = out.last_mut() {
        *last = true;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(n: usize, value_bytes: usize) -> pb::KeyValue {
        pb::KeyValue {
            key: format!("k{n}").into_bytes().into(),
            value: vec![0; value_bytes].into(),
            ..Default::default()
        }
    }

    #[test]
    fn chunks_split_past_the_message_size() {
        let one = chunks(vec![kv(1, 10), kv(2, 10)]);
        assert_eq!(one.iter().map(|(c, last)| (c.len(), *last)).collect::<Vec<_>>(), [(2, true)]);
        let none = chunks(Vec::<pb::KeyValue>::new());
        assert_eq!(none.iter().map(|(c, last)| (c.len(), *last)).collect::<Vec<_>>(), [(0, true)]);
        let big = chunks(vec![kv(1, WATCH_MESSAGE_BYTES / 2), kv(2, WATCH_MESSAGE_BYTES / 2), kv(3, 1)]);
        assert_eq!(big.iter().map(|(c, last)| (c.len(), *last)).collect::<Vec<_>>(), [(1, false), (2, true)]);
    }

    #[test]
    fn feed_errors_map_to_service_errors() {
        assert!(matches!(
            ServiceError::from(fsm::Error::Compacted { requested: 1, oldest: 5 }),
            ServiceError::Compacted { requested: 1, oldest: 5 }
        ));
        assert!(matches!(ServiceError::from(fsm::Error::Closed), ServiceError::ShuttingDown));
        assert!(matches!(
            ServiceError::from(fsm::Error::TooManyWatchers { limit: 3 }),
            ServiceError::TooManyWatchers(3)
        ));
    }

    /// A put of `value` to `k` at `index`, as the log would carry it.
    fn put(index: u64, value: &str) -> types::Entry {
        use openraft::entry::RaftEntry;
        use types::{Command, Entry, LogId, NodeId, PutOp, WriteCommand, WriteOp};
        let log_id = LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: NodeId::from(1) }, index);
        let op = PutOp { key: b"k".to_vec(), value: value.as_bytes().to_vec(), expect: None, prev_kv: false };
        Entry::new_normal(log_id, Command::Write(WriteCommand { request_id: None, op: WriteOp::Put(op) }))
    }

    #[tokio::test]
    async fn a_stream_resumed_ahead_of_a_lagging_node_never_goes_back() -> Result<(), Box<dyn std::error::Error>> {
        use futures::StreamExt as _;
        use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};

        let dir = tempfile::tempdir()?;
        let mut leader = StateMachine::open(&dir.path().join("leader"))?;
        let entries: Vec<_> = (1..=3).map(|i| Ok((put(i, &format!("v{i}")), None))).collect();
        leader.apply(futures::stream::iter(entries)).await?;
        let snap = leader.get_snapshot_builder().await.build_snapshot().await?;

        // The client saw everything up to 5 elsewhere and resumes at 6 on a node at 0.
        let mut lagging = StateMachine::open(&dir.path().join("lagging"))?;
        let params = WatchParams {
            range: KeyRange::Key(b"k".to_vec()),
            start_index: 6,
            keys_only: false,
            progress: Duration::from_secs(3600),
            timeout: None,
            node_id: "n2".into(),
            permit: None,
        };
        let mut stream = native_stream(lagging.clone(), params)?;
        let first = stream.next().await.ok_or("no message")??;
        assert_eq!((first.kind, first.index), (Kind::Created as i32, 5));
        // A snapshot at 3 brings the node only part of the way: nothing for the client.
        lagging.install_snapshot(&snap.meta, snap.snapshot).await?;
        let after_install = futures::FutureExt::now_or_never(stream.next());
        assert!(after_install.is_none(), "a restored state older than the stream was sent: {after_install:?}");
        let later: Vec<_> = (4..=7).map(|i| Ok((put(i, &format!("v{i}")), None))).collect();
        lagging.apply(futures::stream::iter(later)).await?;
        let next = stream.next().await.ok_or("no message")??;
        assert_eq!((next.kind, next.index), (Kind::Events as i32, 6), "{next:?}");
        let next = stream.next().await.ok_or("no message")??;
        assert_eq!((next.kind, next.index), (Kind::Events as i32, 7), "{next:?}");

        // A snapshot past what the stream covered is told, with the state it restored.
        let entries: Vec<_> = (4..=9).map(|i| Ok((put(i, &format!("w{i}")), None))).collect();
        leader.apply(futures::stream::iter(entries)).await?;
        let snap = leader.get_snapshot_builder().await.build_snapshot().await?;
        lagging.install_snapshot(&snap.meta, snap.snapshot).await?;
        let next = stream.next().await.ok_or("no message")??;
        assert_eq!((next.kind, next.index), (Kind::Abandoned as i32, 9), "{next:?}");
        assert_eq!(next.kvs.first().map(|kv| kv.value.to_vec()), Some(b"w9".to_vec()));
        Ok(())
    }

    #[tokio::test]
    async fn a_blocking_read_waits_for_a_change_above_min_index() -> Result<(), Box<dyn std::error::Error>> {
        use openraft::storage::RaftStateMachine;

        let dir = tempfile::tempdir()?;
        let mut sm = StateMachine::open(dir.path())?;
        sm.apply(futures::stream::iter([Ok((put(1, "a"), None))])).await?;
        // Already past min_index: at once.
        let r = blocking_get(&sm, b"k", 0, Duration::from_secs(30)).await?;
        assert_eq!((r.index, r.abandoned), (1, false));
        // Not yet: wakes on the write.
        let waiter = {
            let sm = sm.clone();
            tokio::spawn(async move { blocking_get(&sm, b"k", 1, Duration::from_secs(30)).await.map(|r| r.kv) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        sm.apply(futures::stream::iter([Ok((put(2, "b"), None))])).await?;
        let kv = waiter.await??.ok_or("no value")?;
        assert_eq!((kv.value.as_slice(), kv.modify_index), (&b"b"[..], 2));
        // Nothing changes: the current value after the wait.
        let r = blocking_get(&sm, b"k", 2, Duration::from_millis(50)).await?;
        assert_eq!(r.kv.map(|kv| kv.modify_index), Some(2));
        // A change since min_index that is still in the history answers at once.
        let r = blocking_get(&sm, b"k", 1, Duration::from_secs(30)).await?;
        assert_eq!(r.index, 2);
        Ok(())
    }
}
