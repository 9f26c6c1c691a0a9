//! `etcdserverpb.Watch`: etcd's bidirectional watch stream, served by the node asked from
//! its own state machine's change feed (`StateMachine::watch`, the same history and
//! watcher registry as raftkv's native `KV.Watch`).
//!
//! One stream holds any number of watches, each created, cancelled and asked for progress
//! by the client's messages. Everything runs in one task per stream, so the order of what
//! the client sees is simple: a watch's `created` answer before its events, its events in
//! revision order, all of one revision in one message (split with `fragment` only when the
//! client asked for it), and a progress answer only once every event up to its revision
//! has been sent.
//!
//! How the stream ends: when the client closes its side; with `UNAVAILABLE` when the node
//! stops (`StateMachine::close_watches`) or when one of its watches falls too far behind
//! (its mailbox overflowed). etcd's clients reconnect on `UNAVAILABLE`, to any member, and
//! resume every watch from the revision after the last one they saw, which the other
//! member's history replays.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use blocking_query::Signal;
use fsm::{Changes, EventKind, Watcher};
use futures::Stream;
use linearizable::Consistency;
use prost::Message;
use proto::etcd::etcdserverpb::watch_create_request::FilterType;
use proto::etcd::etcdserverpb::watch_request::RequestUnion;
use proto::etcd::etcdserverpb::watch_server::{Watch, WatchServer};
use proto::etcd::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use proto::etcd::mvccpb;
use service::auth::{Caller, WatchPermit};
use service::limits::WATCH_MESSAGE_BYTES;
use service::{MAX_DECODE_BYTES, ServiceError};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use types::KeyRange;
use types::auth::Access;

use crate::range::{key_range, key_value};
use crate::{EtcdError, Node};

/// How often a watch created with `progress_notify` hears the revision it has reached when
/// nothing else was sent to it: etcd's default (`--experimental-watch-progress-notify-interval`).
pub const PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// How long a watch from a past revision waits to catch up with the leader's commit (a
/// ReadIndex round) before it is served from this node's history as it is.
pub const WATCH_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// Messages one stream may have ready for a client that does not read them yet; past it
/// the stream waits (and its watches' mailboxes fill, then overflow).
const STREAM_BUFFER: usize = 64;

/// etcd's watch id for an answer that belongs to no watch (`clientv3.InvalidWatchID`).
const NO_WATCH_ID: i64 = -1;

/// etcd's reason for a watch id already in use on the stream.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// A server stream as tonic takes it.
type ResponseStream = service::watch::ResponseStream<WatchResponse>;

/// The `etcdserverpb.Watch` service of one node.
#[derive(Debug, Clone)]
pub struct EtcdWatch {
    node: Node,
}

impl EtcdWatch {
    pub(crate) fn new(node: Node) -> Self {
        Self { node }
    }

    /// The tonic server for this service, with the decode limit applied.
    #[must_use]
    pub fn into_server(self) -> WatchServer<Self> {
        WatchServer::new(self).max_decoding_message_size(MAX_DECODE_BYTES)
    }
}

#[tonic::async_trait]
impl Watch for EtcdWatch {
    type WatchStream = ResponseStream;

    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let (md, _, incoming) = request.into_parts();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = EtcdStream::new(self.node.clone(), md, tx);
        tokio::spawn(stream.run(incoming));
        let out = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        Ok(Response::new(Box::pin(out) as std::pin::Pin<Box<dyn Stream<Item = _> + Send>>))
    }
}

/// The etcd watch range of a create request: etcd's `key`/`range_end`, where an empty key
/// with `range_end` `"\0"` is every key.
/// A status as etcd's Go server writes an error into a watch's `cancel_reason`
/// (`err.Error()` of a gRPC status).
fn go_error(status: &Status) -> String {
    format!("rpc error: code = {:?} desc = {}", status.code(), status.message())
}

fn watch_range(key: &[u8], range_end: &[u8]) -> Result<KeyRange, EtcdError> {
    if key.is_empty() && range_end == [0] {
        return Ok(KeyRange::Range { start: Vec::new(), end: None });
    }
    key_range(key, range_end)
}

/// One watch of a stream.
struct Sub {
    id: i64,
    watcher: Watcher,
    /// Signals taken from the mailbox (or the history's backlog) and not handled yet.
    inbox: VecDeque<Signal<Changes>>,
    /// Every change up to this index has been sent (or was before the watch's start).
    delivered: u64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    fragment: bool,
    progress_notify: bool,
    last_sent: Instant,
    permit: Option<WatchPermit>,
}

/// Why the stream's task woke.
enum Wake {
    Request(Result<Option<WatchRequest>, Status>),
    Signal(usize, Signal<Changes>),
    Progress,
    Closed,
    ClientGone,
}

/// How the stream's task goes on after a step.
enum Next {
    Continue,
    /// End the stream, after this error when there is one.
    End(Option<Status>),
}

struct EtcdStream {
    node: Node,
    md: MetadataMap,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
    subs: Vec<Sub>,
    /// The next id etcd would assign (`watch_id` 0 asks the server for one).
    next_id: i64,
    closed: watch::Receiver<bool>,
}

/// Waits for the next signal of any watch (never, with none).
async fn next_signal(subs: &[Sub]) -> (usize, Signal<Changes>) {
    if subs.is_empty() {
        return std::future::pending().await;
    }
    let (signal, i, _) = futures::future::select_all(subs.iter().map(|s| Box::pin(s.watcher.mailbox().recv()))).await;
    (i, signal)
}

/// Resolves when `closed` becomes true (the node is stopping).
async fn stopping(closed: &mut watch::Receiver<bool>) {
    if closed.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl EtcdStream {
    fn new(node: Node, md: MetadataMap, tx: mpsc::Sender<Result<WatchResponse, Status>>) -> Self {
        let closed = node.ctx.sm.subscribe_watches_closed();
        Self { node, md, tx, subs: Vec::new(), next_id: 0, closed }
    }

    async fn run(mut self, mut incoming: Streaming<WatchRequest>) {
        let mut progress =
            tokio::time::interval_at(Instant::now() + PROGRESS_NOTIFY_INTERVAL, PROGRESS_NOTIFY_INTERVAL);
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let next = match self.flush().await {
                Next::Continue => {
                    let wake = tokio::select! {
                        biased;
                        () = stopping(&mut self.closed) => Wake::Closed,
                        () = self.tx.closed() => Wake::ClientGone,
                        (i, s) = next_signal(&self.subs) => Wake::Signal(i, s),
                        r = incoming.message() => Wake::Request(r),
                        _ = progress.tick() => Wake::Progress,
                    };
                    self.handle(wake).await
                }
                end @ Next::End(_) => end,
            };
            if let Next::End(error) = next {
                if let Some(status) = error {
                    let _ = self.tx.send(Err(status)).await;
                }
                tracing::debug!(watches = self.subs.len(), "etcd watch stream ended");
                return;
            }
        }
    }

    async fn handle(&mut self, wake: Wake) -> Next {
        match wake {
            Wake::Closed => Next::End(Some(ServiceError::ShuttingDown.into())),
            Wake::ClientGone | Wake::Request(Ok(None)) => Next::End(None),
            Wake::Request(Err(status)) => {
                tracing::debug!(error = %status, "etcd watch stream: the client's side failed");
                Next::End(None)
            }
            Wake::Signal(i, signal) => {
                if let Some(sub) = self.subs.get_mut(i) {
                    sub.inbox.push_back(signal);
                }
                Next::Continue
            }
            Wake::Progress => self.progress_notify().await,
            Wake::Request(Ok(Some(req))) => match req.request_union {
                Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
                Some(RequestUnion::CancelRequest(c)) => self.cancel(c.watch_id).await,
                Some(RequestUnion::ProgressRequest(_)) => self.progress_request().await,
                None => Next::Continue,
            },
        }
    }

    async fn send(&self, msg: WatchResponse) -> Next {
        if self.tx.send(Ok(msg)).await.is_err() { Next::End(None) } else { Next::Continue }
    }

    fn response(&self, watch_id: i64, revision: u64) -> WatchResponse {
        WatchResponse { header: Some(self.node.header(revision)), watch_id, ..Default::default() }
    }

    /// A create request: etcd answers `created` (with `canceled` and a reason when it
    /// refuses), then, for a start revision older than the history, `compact_revision`.
    async fn create(&mut self, c: WatchCreateRequest) -> Next {
        let start = u64::try_from(c.start_revision).unwrap_or(0);
        if start != 0 {
            // From a past revision: first catch up with the leader's commit, so a compaction
            // (or a write) acknowledged before this request is known here too.
            if let Err(e) = self.node.ctx.read_index(Consistency::Linearizable, WATCH_CATCH_UP_TIMEOUT).await {
                tracing::debug!(error = %e, start, "etcd watch: no catch-up with the leader; served from this node's history");
            }
        }
        let sm = &self.node.ctx.sm;
        let now = sm.applied_index();
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.subs.iter().any(|s| s.id == self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        let refuse = |this: &Self, reason: String| {
            let mut msg = this.response(NO_WATCH_ID, now);
            msg.created = true;
            msg.canceled = true;
            msg.cancel_reason = reason;
            msg
        };
        if self.subs.iter().any(|s| s.id == id) {
            let msg = refuse(self, DUPLICATE_ID.to_string());
            return self.send(msg).await;
        }
        let range = match watch_range(&c.key, &c.range_end) {
            Ok(r) => r,
            Err(e) => {
                let msg = refuse(self, e.to_string());
                return self.send(msg).await;
            }
        };
        // As etcd: the caller's read permission on the range (etcd's refusal, as
        // `rpc error: ...`, in cancel_reason); as raftkv's native watch, checked again
        // whenever the auth state changes.
        let permit = match crate::auth::authorize(&sm.auth_state(), &self.md, &[(range.clone(), Access::Read)]) {
            Ok(None) => None,
            Ok(Some(user)) => WatchPermit::new(sm, Caller::User(user), &range),
            Err(e) => {
                let msg = refuse(self, go_error(&Status::from(e)));
                return self.send(msg).await;
            }
        };
        let (watcher, begin) = match sm.watch(range, start) {
            Ok(w) => w,
            Err(fsm::Error::Compacted { oldest, .. }) => {
                // etcd: the watch is created, then cancelled with the oldest revision left.
                let mut created = self.response(id, now);
                created.created = true;
                if let Next::End(e) = self.send(created).await {
                    return Next::End(e);
                }
                let mut msg = self.response(id, now);
                msg.compact_revision = crate::signed(oldest);
                msg.canceled = true;
                msg.cancel_reason = EtcdError::Compacted.to_string().trim_start_matches("etcdserver: ").to_string();
                tracing::debug!(watch_id = id, start, oldest, "etcd watch from a compacted revision");
                return self.send(msg).await;
            }
            Err(fsm::Error::Closed) => return Next::End(Some(ServiceError::ShuttingDown.into())),
            Err(e) => {
                let msg = refuse(self, Status::from(ServiceError::from(e)).message().to_string());
                return self.send(msg).await;
            }
        };
        let filters = |f: FilterType| c.filters.contains(&(f as i32));
        let sub = Sub {
            id,
            watcher,
            inbox: begin.backlog.into_iter().map(Signal::Item).collect(),
            delivered: begin.after,
            prev_kv: c.prev_kv,
            no_put: filters(FilterType::Noput),
            no_delete: filters(FilterType::Nodelete),
            fragment: c.fragment,
            progress_notify: c.progress_notify,
            last_sent: Instant::now(),
            permit,
        };
        let mut created = self.response(id, if start == 0 { begin.after } else { now });
        created.created = true;
        tracing::debug!(watch_id = id, start, after = begin.after, "etcd watch created");
        self.subs.push(sub);
        self.send(created).await
    }

    async fn cancel(&mut self, id: i64) -> Next {
        let Some(i) = self.subs.iter().position(|s| s.id == id) else {
            // etcd answers nothing for an unknown id.
            return Next::Continue;
        };
        self.subs.remove(i);
        let mut msg = self.response(id, self.node.ctx.sm.applied_index());
        msg.canceled = true;
        self.send(msg).await
    }

    /// Takes what is in every watch's mailbox into its inbox; returns the revision every
    /// change up to which is now in an inbox or sent (the published index read first).
    fn drain(&mut self) -> u64 {
        // Every watcher of the node reads the same published index.
        let published = self.subs.first().map_or_else(|| self.node.ctx.sm.applied_index(), |s| s.watcher.published());
        for sub in &mut self.subs {
            while let Some(signal) = sub.watcher.mailbox().try_recv() {
                sub.inbox.push_back(signal);
            }
        }
        published
    }

    /// A progress request: one answer with no watch id, at a revision every change up to
    /// which has been sent to every watch of the stream (changes after it wait until the
    /// answer is out), so a client that resumes from it misses nothing and gets nothing twice.
    async fn progress_request(&mut self) -> Next {
        let at = self.drain();
        if let Next::End(e) = self.flush_through(at).await {
            return Next::End(e);
        }
        let msg = self.response(NO_WATCH_ID, at);
        self.send(msg).await
    }

    /// The periodic progress of the watches created with `progress_notify` that sent
    /// nothing for [`PROGRESS_NOTIFY_INTERVAL`].
    async fn progress_notify(&mut self) -> Next {
        if !self.subs.iter().any(|s| s.progress_notify) {
            return Next::Continue;
        }
        let at = self.drain();
        if let Next::End(e) = self.flush_through(at).await {
            return Next::End(e);
        }
        let quiet: Vec<i64> = self
            .subs
            .iter()
            .filter(|s| s.progress_notify && s.last_sent.elapsed() >= PROGRESS_NOTIFY_INTERVAL)
            .map(|s| s.id)
            .collect();
        for id in quiet {
            let msg = self.response(id, at);
            if let Next::End(e) = self.send(msg).await {
                return Next::End(e);
            }
            if let Some(s) = self.subs.iter_mut().find(|s| s.id == id) {
                s.last_sent = Instant::now();
                s.delivered = s.delivered.max(at);
            }
        }
        Next::Continue
    }

    /// Sends everything ready in the inboxes.
    async fn flush(&mut self) -> Next {
        self.flush_through(u64::MAX).await
    }

    /// Sends what the inboxes hold up to revision `through` (the rest stays), watch by watch.
    async fn flush_through(&mut self, through: u64) -> Next {
        let mut i = 0;
        while i < self.subs.len() {
            match self.flush_one(i, through).await {
                Ok(true) => i += 1,
                // The watch was cancelled: the next one is at the same place.
                Ok(false) => {}
                Err(next) => return next,
            }
        }
        Next::Continue
    }

    /// Sends sub `i`'s ready signals; `Ok(false)` when it was cancelled and removed.
    async fn flush_one(&mut self, i: usize, through: u64) -> Result<bool, Next> {
        loop {
            let Some(sub) = self.subs.get_mut(i) else { return Ok(false) };
            // Before anything is sent, as the native watch: no event after a revocation.
            if let Some(permit) = sub.permit.as_mut()
                && let Err(e) = permit.recheck()
            {
                let id = sub.id;
                tracing::info!(watch_id = id, reason = %e, "etcd watch cancelled: its permission was revoked");
                self.subs.remove(i);
                let mut msg = self.response(id, self.node.ctx.sm.applied_index());
                msg.canceled = true;
                msg.cancel_reason = go_error(&Status::from(EtcdError::PermissionDenied));
                self.sent(self.send(msg).await)?;
                return Ok(false);
            }
            let ready = match sub.inbox.front() {
                None => return Ok(true),
                Some(Signal::Item(c)) => c.index <= through,
                Some(_) => true,
            };
            if !ready {
                return Ok(true);
            }
            let Some(signal) = sub.inbox.pop_front() else { return Ok(true) };
            match signal {
                Signal::Item(c) => {
                    if c.index <= sub.delivered {
                        continue;
                    }
                    let messages = self.event_messages(sub_ref(&self.subs, i)?, &c);
                    for msg in messages {
                        self.sent(self.send(msg).await)?;
                    }
                    if let Some(sub) = self.subs.get_mut(i) {
                        sub.delivered = c.index;
                        sub.last_sent = Instant::now();
                    }
                }
                Signal::Abandoned(at) => {
                    if at <= sub.delivered {
                        // The snapshot brought nothing the client lacks.
                        continue;
                    }
                    // The history no longer leads from what the client has to the state now:
                    // etcd's answer for events it no longer holds.
                    let id = sub.id;
                    tracing::info!(watch_id = id, at, "etcd watch cancelled: a snapshot install cleared the history");
                    self.subs.remove(i);
                    let mut msg = self.response(id, at);
                    msg.canceled = true;
                    msg.compact_revision = crate::signed(at + 1);
                    msg.cancel_reason = EtcdError::Compacted.to_string().trim_start_matches("etcdserver: ").to_string();
                    self.sent(self.send(msg).await)?;
                    return Ok(false);
                }
                Signal::Overflowed => {
                    let resume_index = sub.delivered + 1;
                    tracing::info!(watch_id = sub.id, resume_index, "etcd watch fell behind; its stream is ended");
                    return Err(Next::End(Some(Status::unavailable(format!(
                        "the watch {} fell behind (its buffer overflowed); reconnect and resume from revision {resume_index}",
                        sub.id
                    )))));
                }
                Signal::Closed => return Err(Next::End(Some(ServiceError::ShuttingDown.into()))),
            }
        }
    }

    fn sent(&self, next: Next) -> Result<(), Next> {
        match next {
            Next::Continue => Ok(()),
            end @ Next::End(_) => Err(end),
        }
    }

    /// The messages of one revision's changes for `sub`: filtered, with `prev_kv` when asked,
    /// and split over several messages (`fragment`) only when the client allows it.
    fn event_messages(&self, sub: &Sub, c: &Changes) -> Vec<WatchResponse> {
        let events: Vec<mvccpb::Event> = c
            .events
            .iter()
            .filter(|e| match e.kind {
                EventKind::Put => !sub.no_put,
                EventKind::Delete => !sub.no_delete,
            })
            .map(|e| event(e, sub.prev_kv))
            .collect();
        if events.is_empty() {
            return Vec::new();
        }
        let runs = if sub.fragment { fragments(events) } else { vec![events] };
        let last = runs.len().saturating_sub(1);
        runs.into_iter()
            .enumerate()
            .map(|(n, run)| {
                let mut msg = self.response(sub.id, c.index);
                msg.events = run;
                msg.fragment = n < last;
                msg
            })
            .collect()
    }
}

fn sub_ref(subs: &[Sub], i: usize) -> Result<&Sub, Next> {
    subs.get(i).ok_or(Next::Continue)
}

/// One change as etcd reports it. A delete's `kv` has the key and the delete's revision only;
/// `prev_kv` is the key before the change (none for a creation, as etcd).
fn event(e: &Arc<fsm::Event>, prev_kv: bool) -> mvccpb::Event {
    let kind = match e.kind {
        EventKind::Put => mvccpb::event::EventType::Put,
        EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(key_value(e.kv.clone())),
        prev_kv: if prev_kv { e.prev.clone().map(key_value) } else { None },
    }
}

/// Splits events into runs of about [`WATCH_MESSAGE_BYTES`], at least one event each.
fn fragments(events: Vec<mvccpb::Event>) -> Vec<Vec<mvccpb::Event>> {
    let mut out: Vec<Vec<mvccpb::Event>> = vec![Vec::new()];
    let mut bytes = 0;
    for e in events {
        let size = e.encoded_len();
        if out.last().is_some_and(|run| !run.is_empty()) && bytes + size > WATCH_MESSAGE_BYTES {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(run) = out.last_mut() {
            run.push(e);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(value_bytes: usize) -> mvccpb::Event {
        mvccpb::Event {
            kv: Some(mvccpb::KeyValue {
                key: b"k".to_vec().into(),
                value: vec![0; value_bytes].into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn fragments_split_past_the_message_size() {
        assert_eq!(fragments(vec![ev(10), ev(10)]).iter().map(Vec::len).collect::<Vec<_>>(), [2]);
        let big = fragments(vec![ev(WATCH_MESSAGE_BYTES / 2), ev(WATCH_MESSAGE_BYTES / 2), ev(1)]);
        assert_eq!(big.iter().map(Vec::len).collect::<Vec<_>>(), [1, 2]);
        let huge = fragments(vec![ev(WATCH_MESSAGE_BYTES * 2)]);
        assert_eq!(huge.iter().map(Vec::len).collect::<Vec<_>>(), [1], "one event is never split");
    }

    #[test]
    fn watch_ranges_follow_etcd() -> Result<(), EtcdError> {
        let all = KeyRange::Range { start: Vec::new(), end: None };
        assert_eq!(watch_range(b"", b"\0")?, all);
        assert_eq!(watch_range(b"a", b"")?, KeyRange::Key(b"a".to_vec()));
        assert_eq!(watch_range(b"a", b"b")?, KeyRange::Range { start: b"a".to_vec(), end: Some(b"b".to_vec()) });
        assert!(matches!(watch_range(b"", b""), Err(EtcdError::EmptyKey)));
        Ok(())
    }
}
