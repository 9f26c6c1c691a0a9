//! The `Example` service of xkeyideal/raft-example (`/Example/Add`, `/Example/Get`,
//! `/Example/Stat`, `/Example/Watch`) and of Jille/raft-grpc-example (`/Example/AddWord`,
//! `/Example/GetWords`, which its `hammer` load generator calls), a thin adapter over the
//! native `raftkv.v1.KV` service. Both seeds call their package-less service `Example`, so
//! one service carries both sets of methods.
//!
//! | RPC | what raftkv does |
//! |---|---|
//! | `Add{key, val}` | the native `KV.Put` path, called in-process with the caller's metadata (deadline, `x-raftkv-no-forward`): limits, Raft, forwarding to the leader once. `commit_index` is the write's log index. |
//! | `Get{key, linearizable: true}` | the native linearizable `KV.Get` (ReadIndex on the leader; a follower forwards). `read_at_index` is the serving node's applied index. |
//! | `Get{key, linearizable: false}` | a local read of this node's state machine, with no leader check and no forwarding: the seed's stale read. `read_at_index` is this node's applied index. |
//! | `Stat{}` | this node's status as pretty JSON in the seed's shape ([`stats`]); never forwarded. |
//! | `AddWord{word}` | the native `KV.Put` of the key [`WORDS_PREFIX`]` + word` (empty value), so every word is one write; `commit_index` is its log index. |
//! | `GetWords{}` | a linearizable native `KV.Range` over [`WORDS_PREFIX`] (keys only, page after page), ranked as the seed ranks words ([`best_words`]); `read_at_index` is the index the first page reflects. |
//!
//! Differences from the seed, on purpose:
//! - **A missing key reads as `""`** with no error, as in the seed (which cannot tell a
//!   missing key from an empty value). This is a seed quirk kept for its clients; the native
//!   API answers `found: false` instead.
//! - **An empty key is refused** with `INVALID_ARGUMENT`, as are keys over 4 KiB and values
//!   over 1 MiB (the native limits); the seed stored an empty key.
//! - **A value that is not UTF-8** (written through the native bytes API) cannot be carried
//!   in the seed's `string` field: `Get` answers `FAILED_PRECONDITION` rather than altering it.
//! - **Words are keys**: the seed (Jille's) kept only its three longest words in memory and
//!   rebuilt them from its log; raftkv keeps every distinct word as a key under
//!   [`WORDS_PREFIX`], readable with the native API, and ranks them on `GetWords`. A word
//!   added twice is one key, so unlike the seed the answer never lists a word twice, and
//!   `GetWords` is linearizable on any node (the seed read the answering node's memory).
//! - Errors are raftkv's ([`ServiceError`]: `UNAVAILABLE` with a leader hint, `UNKNOWN` for an
//!   unknown write outcome, ...), not the seed's plain `UNKNOWN` strings.
//! - **`Watch` wakes only for changes to its key** (the seed's used the node's global applied
//!   index, so any write woke every watcher and sent an unchanged value again) and is
//!   notified, never polling. `current_index` is the applied index the value was read at;
//!   a client that resumes with `min_index = current_index + 1` misses no change. After
//!   `timeout_seconds` without a change (<= 0: 5 minutes, as in the seed; more than a day is
//!   taken as a day) the current value is sent again, the seed's heartbeat. On a snapshot
//!   install it sends `{value: "", current_index: 0, abandoned: true}`, then the restored
//!   value, as the seed meant to. A watcher that does not read is cancelled with
//!   `RESOURCE_EXHAUSTED`; at shutdown the stream ends with `UNAVAILABLE` (resume on
//!   another node); in the seed it was cut after about 35 s by a keepalive setting.

use std::time::Duration;

use fsm::StateMachine;
use openraft::async_runtime::WatchReceiver;
use openraft::{RaftMetrics, ServerState};
use proto::compat::example::example_server::{Example, ExampleServer};
use proto::compat::example::{
    AddRequest, AddResponse, AddWordRequest, AddWordResponse, GetRequest, GetResponse, GetWordsRequest,
    GetWordsResponse, StatRequest, StatResponse, WatchRequest, WatchResponse,
};
use proto::kv::v1 as native;
use proto::kv::v1::kv_server::Kv;
use serde_json::json;
use tonic::{Request, Response, Status};
use types::{NodeId, NodeInfo, TypeConfig};

use service::watch::{ResponseStream, read_state, watch_key_since};
use service::{KvService, MAX_DECODE_BYTES, NodeContext, ServiceError, limits};

/// The seed's Watch timeout when the request gives none (`timeout_seconds <= 0`).
pub const SEED_WATCH_DEFAULT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// The longest Watch timeout taken; a longer one is taken as this (the seed had no cap).
pub const SEED_WATCH_MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// Where `AddWord` (Jille/raft-grpc-example) stores its words: the key is this prefix
/// followed by the word's bytes.
pub const WORDS_PREFIX: &[u8] = b"raft-grpc-example/words/";
/// How many words `GetWords` answers with (the seed's `[3]string`).
pub const BEST_WORDS: usize = 3;

/// The `Example` service of one node.
#[derive(Debug, Clone)]
pub struct ExampleService {
    ctx: NodeContext,
    kv: KvService,
    me: NodeInfo,
}

impl ExampleService {
    /// An `Example` service over `ctx`; `me` are the addresses this node advertises (for
    /// `Stat`).
    #[must_use]
    pub fn new(ctx: NodeContext, me: NodeInfo) -> Self {
        Self { kv: KvService::new(ctx.clone()), ctx, me }
    }

    /// The tonic server for this service, with the decode limit applied.
    #[must_use]
    pub fn into_server(self) -> ExampleServer<Self> {
        ExampleServer::new(self).max_decoding_message_size(MAX_DECODE_BYTES)
    }
}

/// The seed's stale read: this node's state machine, no leader check, no forwarding.
fn stale_get(sm: &StateMachine, key: &str) -> Result<GetResponse, ServiceError> {
    limits::check_key(key.as_bytes())?;
    // The applied index is read before the key, so the value reflects at least it.
    let read_at_index = sm.applied_index();
    let kv = sm.get(key.as_bytes()).map_err(ServiceError::from)?;
    tracing::debug!(read_at_index, found = kv.is_some(), "Example.Get: local stale read");
    Ok(GetResponse { read_at_index, value: value_string(kv.map(|kv| kv.value))? })
}

/// The seed's `value` string: `""` for a missing key; a non-UTF-8 value is refused, not
/// altered.
fn value_string(value: Option<Vec<u8>>) -> Result<String, ServiceError> {
    String::from_utf8(value.unwrap_or_default()).map_err(|e| {
        ServiceError::FailedPrecondition(format!(
            "the value is {} bytes that are not valid UTF-8; the Example API carries strings, read it with raftkv.v1.KV/Get",
            e.as_bytes().len()
        ))
    })
}

/// The seed's ranking of words (Jille/raft-grpc-example's `compareWords`): longer first,
/// then the one that sorts first (byte order). Gives the best [`BEST_WORDS`] of `words`,
/// padded with `""` as the seed's fixed-size array is.
#[must_use]
pub fn best_words(words: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut best: Vec<String> = Vec::with_capacity(BEST_WORDS + 1);
    for word in words {
        let pos = best.iter().position(|b| word.len() > b.len() || (word.len() == b.len() && word < *b));
        match pos {
            Some(i) => best.insert(i, word),
            None => best.push(word),
        }
        best.truncate(BEST_WORDS);
    }
    best.resize(BEST_WORDS, String::new());
    best
}

/// The index in a native response header; every native answer carries one.
fn header_index(header: Option<&native::ResponseHeader>) -> Result<u64, ServiceError> {
    header.map(|h| h.index).ok_or_else(|| ServiceError::Internal("the KV service answered without a header".into()))
}

/// The seed's name for a Raft state. A raftkv learner is reported as `Follower`, as a
/// hashicorp/raft non-voter is (its `raft.voter` is `false`).
fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "Leader",
        ServerState::Candidate => "Candidate",
        ServerState::Follower | ServerState::Learner => "Follower",
        ServerState::Shutdown => "Shutdown",
    }
}

/// The `Stat` JSON of a node, with the keys of the seed's `Stat` (xkeyideal/raft-example)
/// for which raftkv has the data, under the same names and nesting:
///
/// ```text
/// node_id, addr, last_applied_index,
/// leader { node_id, addr },
/// nodes [ { id, addr, suffrage } ]   sorted by id; suffrage "Voter" or "Nonvoter" (a learner)
/// raft { state, term, commit_index, applied_index, last_log_index, last_snapshot_index,
///        latest_configuration_index, num_peers, voter }
/// fsm { fsm_index, key_count }
/// watch { watchers, notifications, history_oldest_index, history_events, history_bytes }
/// ```
///
/// Every `addr` is a Raft address (`--raft_addr`), as in the seed. `leader` has empty strings
/// when no leader is known, as hashicorp/raft's `LeaderWithID` gives. `raft.state` is the
/// seed's spelling (`Leader`, `Follower`, `Candidate`, `Shutdown`); `num_peers` counts the
/// other voters, and is 0 when this node is not a voter, as in hashicorp/raft. `key_count` is
/// not a seed key: it is the number of keys stored. `watch` is not a seed key either: the
/// watchers registered now (watch streams and blocking reads), how many times in all a
/// watcher was handed a change, and the bounds of the history of changes.
///
/// Omitted, because raftkv does not have the data:
/// - `db_applied_index`: the seed counts the index of the last write made through this
///   node's own `Add` path; raftkv keeps no such counter.
/// - `raft_dir`, `raft_dir_size`, `fsm.fsm_dir`, `fsm.fsm_dir_size`: the service does not
///   know the data directory (the engine owns it) and measuring it would walk the disk on
///   every call.
/// - `observer{observed, dropped}`: raftkv has no hashicorp/raft observer; it follows
///   openraft's metrics channel, which drops nothing and counts nothing.
/// - The rest of hashicorp/raft's `Stats()` (`last_log_term`, `last_snapshot_term`,
///   `last_contact`, `fsm_pending`, `protocol_version`, `latest_configuration`, ...) and
///   `raft.log_size`: openraft's metrics do not carry them in that form.
/// - `fsm.snapshot_count`, `restore_count` and the `last_snapshot_*` / `last_restore_*`
///   figures: the state machine does not record snapshot statistics.
#[must_use]
pub fn stats(
    id: &NodeId,
    me: &NodeInfo,
    m: &RaftMetrics<TypeConfig>,
    fsm_index: u64,
    key_count: u64,
    watch: &fsm::WatchStats,
) -> serde_json::Value {
    let membership = m.membership_config.membership();
    let is_voter = |n: &NodeId| membership.voter_ids().any(|v| v == *n);
    let mut nodes: Vec<(&NodeId, &NodeInfo)> = membership.nodes().collect();
    nodes.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    let nodes: Vec<serde_json::Value> = nodes
        .into_iter()
        .map(|(n, info)| {
            json!({
                "id": n.as_str(),
                "addr": info.raft_addr,
                "suffrage": if is_voter(n) { "Voter" } else { "Nonvoter" },
            })
        })
        .collect();
    let (leader_id, leader_addr) = match &m.current_leader {
        Some(l) => (l.to_string(), membership.get_node(l).map(|n| n.raft_addr.clone()).unwrap_or_default()),
        None => (String::new(), String::new()),
    };
    let voter = is_voter(id);
    let num_peers = if voter { membership.voter_ids().filter(|v| v != id).count() } else { 0 };
    json!({
        "node_id": id.as_str(),
        "addr": me.raft_addr,
        "last_applied_index": types::index_of(m.last_applied.as_ref()),
        "leader": { "node_id": leader_id, "addr": leader_addr },
        "nodes": nodes,
        "raft": {
            "state": state_name(m.state),
            "term": m.current_term,
            "commit_index": types::index_of(m.local_committed.as_ref()),
            "applied_index": types::index_of(m.last_applied.as_ref()),
            "last_log_index": m.last_log_index.unwrap_or(0),
            "last_snapshot_index": types::index_of(m.snapshot.as_ref()),
            "latest_configuration_index": types::index_of(m.membership_config.log_id().as_ref()),
            "num_peers": num_peers,
            "voter": voter,
        },
        "fsm": { "fsm_index": fsm_index, "key_count": key_count },
        "watch": {
            "watchers": watch.watchers,
            "notifications": watch.notifications,
            "history_oldest_index": watch.oldest_index,
            "history_events": watch.history_events,
            "history_bytes": watch.history_bytes,
        },
    })
}

#[tonic::async_trait]
impl Example for ExampleService {
    async fn add(&self, request: Request<AddRequest>) -> Result<Response<AddResponse>, Status> {
        let (metadata, extensions, req) = request.into_parts();
        #[allow(clippy::needless_update, reason = "the native request may gain fields; they keep their defaults")]
        let put = native::PutRequest { key: req.key.into(), value: req.val.into(), ..Default::default() };
        let resp = self.kv.put(Request::from_parts(metadata, extensions, put)).await?.into_inner();
        let commit_index = header_index(resp.header.as_ref())?;
        Ok(Response::new(AddResponse { commit_index }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let (metadata, extensions, req) = request.into_parts();
        if !req.linearizable {
            return Ok(Response::new(stale_get(&self.ctx.sm, &req.key)?));
        }
        #[allow(clippy::needless_update, reason = "the native request may gain fields; they keep their defaults")]
        let get = native::GetRequest { key: req.key.into(), ..Default::default() };
        let resp = self.kv.get(Request::from_parts(metadata, extensions, get)).await?.into_inner();
        let read_at_index = header_index(resp.header.as_ref())?;
        let value = resp.kv.filter(|_| resp.found).map(|kv| kv.value.to_vec());
        Ok(Response::new(GetResponse { read_at_index, value: value_string(value)? }))
    }

    async fn stat(&self, _request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let m = self.ctx.raft.metrics().borrow_watched().clone();
        let fsm_index = self.ctx.sm.applied_index();
        let key_count = self.ctx.sm.len().map_err(ServiceError::from)?;
        let value = stats(&self.ctx.id, &self.me, &m, fsm_index, key_count, &self.ctx.sm.watch_stats());
        let stats = serde_json::to_string_pretty(&value).map_err(|e| ServiceError::Internal(Box::new(e)))?;
        Ok(Response::new(StatResponse { stats }))
    }

    async fn add_word(&self, request: Request<AddWordRequest>) -> Result<Response<AddWordResponse>, Status> {
        let (metadata, extensions, req) = request.into_parts();
        let key = [WORDS_PREFIX, req.word.as_bytes()].concat();
        #[allow(clippy::needless_update, reason = "the native request may gain fields; they keep their defaults")]
        let put = native::PutRequest { key: key.into(), ..Default::default() };
        let resp = self.kv.put(Request::from_parts(metadata, extensions, put)).await?.into_inner();
        let commit_index = header_index(resp.header.as_ref())?;
        Ok(Response::new(AddWordResponse { commit_index }))
    }

    async fn get_words(&self, request: Request<GetWordsRequest>) -> Result<Response<GetWordsResponse>, Status> {
        let (metadata, extensions, _) = request.into_parts();
        // The first page is linearizable; the next ones read this node's state, which is
        // then at least as new.
        let mut page = native::RangeRequest {
            key: WORDS_PREFIX.to_vec().into(),
            prefix: true,
            keys_only: true,
            consistency: native::Consistency::Linearizable.into(),
            ..Default::default()
        };
        // The later pages carry the caller's metadata too (its token, when auth is on).
        let later = metadata.clone();
        let mut read = Some(Request::from_parts(metadata, extensions, page.clone()));
        let mut read_at_index = None;
        let mut words = Vec::new();
        while let Some(req) = read.take() {
            let resp = self.kv.range(req).await?.into_inner();
            read_at_index = read_at_index.or(Some(header_index(resp.header.as_ref())?));
            let word = |kv: &native::KeyValue| {
                String::from_utf8_lossy(kv.key.get(WORDS_PREFIX.len()..).unwrap_or_default()).into_owned()
            };
            words.extend(resp.kvs.iter().map(word));
            if resp.more {
                page.key = resp.next_key;
                page.range_end = resp.range_end;
                page.prefix = false;
                page.consistency = native::Consistency::Stale.into();
                read = Some(Request::from_parts(later.clone(), tonic::Extensions::default(), page.clone()));
            }
        }
        Ok(Response::new(GetWordsResponse { read_at_index: read_at_index.unwrap_or(0), best_words: best_words(words) }))
    }

    type WatchStream = ResponseStream<WatchResponse>;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        limits::check_key(req.key.as_bytes())?;
        let timeout = match u64::try_from(req.timeout_seconds) {
            Ok(0) | Err(_) => SEED_WATCH_DEFAULT_TIMEOUT,
            Ok(s) => Duration::from_secs(s).min(SEED_WATCH_MAX_TIMEOUT),
        };
        let key = req.key.into_bytes();
        let (watcher, changed) = watch_key_since(&self.ctx.sm, &key, req.min_index.saturating_sub(1))?;
        let range = types::KeyRange::Key(key);
        // The seed sends at once when min_index is 0 or already reached (registered first,
        // so a change after this check is in the watcher's mailbox).
        let reached = changed
            || read_state(&self.ctx.sm, &range, true)?.0.first().is_some_and(|kv| kv.modify_index >= req.min_index);
        let state = SeedWatch {
            sm: self.ctx.sm.clone(),
            range,
            watcher,
            send_now: req.min_index == 0 || reached,
            min_index: req.min_index,
            timeout,
            last_sent: tokio::time::Instant::now(),
            done: false,
        };
        let stream = futures::stream::unfold(state, |mut s| async move { s.next().await.map(|item| (item, s)) });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// One `/Example/Watch` stream: the seed's value-based protocol over a watcher of one key.
struct SeedWatch {
    sm: StateMachine,
    range: types::KeyRange,
    watcher: fsm::Watcher,
    /// Send the current value at the next turn.
    send_now: bool,
    /// Send when the key changes at or after this index.
    min_index: u64,
    timeout: Duration,
    last_sent: tokio::time::Instant,
    done: bool,
}

impl SeedWatch {
    async fn next(&mut self) -> Option<Result<WatchResponse, Status>> {
        use blocking_query::Signal;
        if self.done {
            return None;
        }
        loop {
            if self.send_now {
                self.send_now = false;
                let sent = self.current().map_err(Status::from);
                self.done = sent.is_err();
                return Some(sent);
            }
            let signal = tokio::time::timeout_at(self.last_sent + self.timeout, self.watcher.mailbox().recv()).await;
            match signal {
                // The seed's heartbeat: the current value again.
                Err(_) => self.send_now = true,
                Ok(Signal::Item(c)) => self.send_now = c.index >= self.min_index,
                Ok(Signal::Abandoned(_)) => {
                    self.min_index = 0;
                    self.send_now = true;
                    self.last_sent = tokio::time::Instant::now();
                    return Some(Ok(WatchResponse { value: String::new(), current_index: 0, abandoned: true }));
                }
                Ok(Signal::Overflowed) => {
                    self.done = true;
                    return Some(Err(ServiceError::WatchOverflow { resume_index: self.min_index }.into()));
                }
                Ok(Signal::Closed) => {
                    self.done = true;
                    return Some(Err(ServiceError::WatchClosed { resume_index: self.min_index }.into()));
                }
            }
        }
    }

    /// The key's value now, with the applied index it reflects; later changes up to that
    /// index are already in it.
    fn current(&mut self) -> Result<WatchResponse, ServiceError> {
        let (mut kvs, index) = read_state(&self.sm, &self.range, false)?;
        let value = value_string(kvs.pop().map(|kv| kv.value))?;
        self.min_index = index + 1;
        self.last_sent = tokio::time::Instant::now();
        Ok(WatchResponse { value, current_index: index, abandoned: false })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use openraft::impls::leader_id_adv::LeaderId;
    use types::{LogId, Membership, StoredMembership};

    use super::*;

    fn info(n: u64) -> NodeInfo {
        NodeInfo { raft_addr: format!("127.0.0.1:5005{n}"), grpc_addr: format!("127.0.0.1:4005{n}") }
    }

    fn log_id(index: u64) -> LogId {
        LogId::new(LeaderId { term: 3, node_id: NodeId::from(1) }, index)
    }

    /// Node `me` of a cluster whose voters are n1 and n3 and whose learner is n2; n3 leads.
    fn metrics(me: u64, state: ServerState) -> Result<RaftMetrics<TypeConfig>, Box<dyn std::error::Error>> {
        let nodes: BTreeMap<NodeId, NodeInfo> = [3, 1, 2].into_iter().map(|n| (NodeId::from(n), info(n))).collect();
        let voters = BTreeSet::from([NodeId::from(1), NodeId::from(3)]);
        let membership = Membership::new(vec![voters], nodes)?;
        let mut m = RaftMetrics::new_initial(NodeId::from(me));
        m.state = state;
        m.current_term = 3;
        m.current_leader = Some(NodeId::from(3));
        m.last_log_index = Some(42);
        m.local_committed = Some(log_id(41));
        m.last_applied = Some(log_id(40));
        m.snapshot = Some(log_id(30));
        m.membership_config = Arc::new(StoredMembership::new(Some(log_id(7)), membership));
        Ok(m)
    }

    #[test]
    fn stat_has_the_seed_keys_and_real_values() -> Result<(), Box<dyn std::error::Error>> {
        let watch =
            fsm::WatchStats { watchers: 2, notifications: 9, oldest_index: 3, history_events: 4, history_bytes: 5 };
        let v = stats(&NodeId::from(1), &info(1), &metrics(1, ServerState::Follower)?, 40, 5, &watch);
        assert_eq!(v["node_id"], "1");
        assert_eq!(v["addr"], "127.0.0.1:50051");
        assert_eq!(v["last_applied_index"], 40);
        assert_eq!(v["leader"], json!({ "node_id": "3", "addr": "127.0.0.1:50053" }));
        assert_eq!(
            v["nodes"],
            json!([
                { "id": "1", "addr": "127.0.0.1:50051", "suffrage": "Voter" },
                { "id": "2", "addr": "127.0.0.1:50052", "suffrage": "Nonvoter" },
                { "id": "3", "addr": "127.0.0.1:50053", "suffrage": "Voter" },
            ])
        );
        assert_eq!(
            v["raft"],
            json!({
                "state": "Follower", "term": 3, "commit_index": 41, "applied_index": 40, "last_log_index": 42,
                "last_snapshot_index": 30, "latest_configuration_index": 7, "num_peers": 1, "voter": true,
            })
        );
        assert_eq!(v["fsm"], json!({ "fsm_index": 40, "key_count": 5 }));
        let keys: Vec<&String> = v.as_object().map(|o| o.keys().collect()).unwrap_or_default();
        assert_eq!(keys, ["addr", "fsm", "last_applied_index", "leader", "node_id", "nodes", "raft", "watch"]);
        assert_eq!(
            v["watch"],
            json!({
                "watchers": 2, "notifications": 9, "history_oldest_index": 3, "history_events": 4, "history_bytes": 5,
            })
        );
        Ok(())
    }

    #[test]
    fn stat_of_a_learner_without_a_known_leader() -> Result<(), Box<dyn std::error::Error>> {
        let mut m = metrics(2, ServerState::Learner)?;
        m.current_leader = None;
        let v = stats(&NodeId::from(2), &info(2), &m, 0, 0, &fsm::WatchStats::default());
        assert_eq!(v["leader"], json!({ "node_id": "", "addr": "" }));
        assert_eq!(v["raft"]["state"], "Follower");
        assert_eq!(v["raft"]["voter"], false);
        assert_eq!(v["raft"]["num_peers"], 0);
        Ok(())
    }

    #[test]
    fn state_names_are_the_seeds() {
        assert_eq!(state_name(ServerState::Leader), "Leader");
        assert_eq!(state_name(ServerState::Candidate), "Candidate");
        assert_eq!(state_name(ServerState::Shutdown), "Shutdown");
    }

    #[test]
    fn values_are_strings_and_missing_keys_read_as_empty() {
        assert_eq!(value_string(None).ok().as_deref(), Some(""));
        assert_eq!(value_string(Some(b"hello".to_vec())).ok().as_deref(), Some("hello"));
        let err = value_string(Some(vec![0xff, 0xfe])).err().map(Status::from);
        assert_eq!(err.as_ref().map(Status::code), Some(tonic::Code::FailedPrecondition));
        assert!(err.is_some_and(|s| s.message().contains("not valid UTF-8")));
    }

    #[tokio::test]
    async fn the_stale_read_is_local_and_reads_a_missing_key_as_empty() -> Result<(), Box<dyn std::error::Error>> {
        use openraft::entry::RaftEntry;
        use openraft::storage::RaftStateMachine;
        use types::{Command, Entry, PutOp, WriteCommand, WriteOp};

        let dir = tempfile::tempdir()?;
        let mut sm = StateMachine::open(dir.path())?;
        let put = |index: u64, key: &str, value: &[u8]| {
            let op = PutOp { key: key.as_bytes().to_vec(), value: value.to_vec(), expect: None, prev_kv: false };
            Entry::new_normal(log_id(index), Command::Write(WriteCommand { request_id: None, op: WriteOp::Put(op) }))
        };
        let entries = vec![put(1, "greeting", b"hello"), put(2, "empty", b""), put(3, "binary", &[0xff])];
        sm.apply(futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))))).await?;

        let got = stale_get(&sm, "greeting")?;
        assert_eq!((got.read_at_index, got.value.as_str()), (3, "hello"));
        let missing = stale_get(&sm, "missing")?;
        assert_eq!(
            (missing.read_at_index, missing.value.as_str()),
            (3, ""),
            "the seed's quirk: missing reads as empty"
        );
        assert_eq!(stale_get(&sm, "empty")?.value, "");
        let binary = stale_get(&sm, "binary").err().map(Status::from);
        assert_eq!(binary.map(|s| s.code()), Some(tonic::Code::FailedPrecondition));
        let empty_key = stale_get(&sm, "").err().map(Status::from);
        assert_eq!(empty_key.map(|s| s.code()), Some(tonic::Code::InvalidArgument));
        Ok(())
    }

    #[test]
    fn a_native_answer_without_header_is_an_internal_error() {
        assert_eq!(header_index(Some(&native::ResponseHeader { index: 9, ..Default::default() })).ok(), Some(9));
        let err = header_index(None).err().map(Status::from);
        assert_eq!(err.map(|s| s.code()), Some(tonic::Code::Internal));
    }

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|w| (*w).to_string()).collect()
    }

    #[test]
    fn best_words_rank_as_the_seed_does() {
        // Longer first; of equal length, the one that sorts first.
        let got = best_words(words(&["een", "twee", "drie", "zeventien", "elf", "achttien", "dertien"]));
        assert_eq!(got, words(&["zeventien", "achttien", "dertien"]));
        let got = best_words(words(&["bb", "ab", "ba", "aa"]));
        assert_eq!(got, words(&["aa", "ab", "ba"]));
        // Order of arrival does not matter.
        let mut shuffled = words(&["dertien", "een", "zeventien", "achttien", "twee"]);
        shuffled.reverse();
        assert_eq!(best_words(shuffled), words(&["zeventien", "achttien", "dertien"]));
    }

    #[test]
    fn best_words_pad_with_empty_strings_like_the_seeds_array() {
        assert_eq!(best_words(Vec::new()), words(&["", "", ""]));
        assert_eq!(best_words(words(&["een"])), words(&["een", "", ""]));
        // The empty word ranks last, as in the seed (it never displaces a word).
        assert_eq!(best_words(words(&["", "x", "yy"])), words(&["yy", "x", ""]));
    }
}
