//! The hashicorp/raft admin surface that `RaftAdmin` (Jille/raftadmin) and `RaftManager`
//! (xkeyideal/raft-manager) expose, implemented once over raftkv's native services.
//!
//! [`HashicorpAdmin`] takes and returns plain values; [`crate::raftadmin`] and
//! [`crate::raftmanager`] only translate their messages. Each RPC:
//!
//! | RPC | what raftkv does |
//! |---|---|
//! | `AddVoter{id, address, previous_index}` | asks the node at `address` (its Raft address) for its id and client address ([`identify`]), then the native `Admin.AddVoter` (learner first, promoted once caught up) with `if_membership_index = previous_index`. Index: the membership change's. |
//! | `AddNonvoter{…}` | the same with the native `Admin.AddLearner`. |
//! | `DemoteVoter{id, previous_index}`, `RemoveServer{…}` | the native `Demote` / `Remove` with `if_membership_index`. |
//! | `LeadershipTransfer{}`, `LeadershipTransferToServer{id, address}` | the native `TransferLeader` (the address must be the member's Raft address). Index: 0. |
//! | `Barrier{}` | the native `Barrier`: index is the barrier's. |
//! | `Snapshot{}` | the native `Snapshot` of this node: index is the snapshot's. |
//! | `VerifyLeader{}` | the native `VerifyLeader` (fails on a follower): index is the confirmed read index. |
//! | `ApplyLog{data, extensions}` | `data` is the seed xkeyideal/raft-example's log command ([`seed_command`]); a native `KV.Put`. Index: the write's. |
//! | `Shutdown{}` | this node's graceful shutdown (the same as SIGTERM), begun when the token is forgotten (the Go CLIs `Await`, then `Forget`) or [`SHUTDOWN_UNFORGOTTEN`] after the call; the process then exits. |
//! | `AppliedIndex`, `LastIndex`, `GetConfiguration`, `Leader`, `State`, `Stats`, `LastContact` | this node's view, from openraft's metrics; addresses are Raft addresses, as in hashicorp/raft. |
//! | `Await{token}`, `Forget{token}` | [`Operations`]: the outcome, or a gRPC status when the operation failed. |
//!
//! Every call that needs the leader is forwarded to it by the native services, with the
//! caller's deadline (a Future-returning RPC's deadline bounds its operation, as hashicorp's
//! `timeout` argument does; without one the native defaults apply). Input is checked before
//! a token is issued: a bad id, address, or log command is refused at once with
//! `INVALID_ARGUMENT` and starts nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use openraft::async_runtime::WatchReceiver;
use openraft::{RaftMetrics, ServerState};
use proto::admin::v1 as admin;
use proto::admin::v1::admin_server::Admin;
use proto::kv::v1 as kv;
use proto::kv::v1::kv_server::Kv;
use raft_network::calls;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};
use types::{NodeId, NodeInfo, TypeConfig};

use rpc::deadline::deadline;
use service::{
    AdminService, DEFAULT_ADD_VOTER_TIMEOUT, KvService, MAX_ADMIN_TIMEOUT, NodeContext, ServiceError, check_addr,
    limits, node_id,
};

use crate::operations::{OperationResult, Operations};

/// How long asking a node who it is may take.
pub const IDENTIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long after `Shutdown` the node stops when its token is not forgotten sooner.
pub const SHUTDOWN_UNFORGOTTEN: Duration = Duration::from_secs(10);

/// The longest `Await` waits when the caller sets no deadline; longer than any operation.
const MAX_AWAIT: Duration = Duration::from_secs(600);

/// A request for this node to stop, as SIGTERM does: set by the `Shutdown` RPC, awaited by
/// the engine. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct StopRequest {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for StopRequest {
    fn default() -> Self {
        Self { tx: Arc::new(watch::channel(false).0) }
    }
}

impl StopRequest {
    /// Asks the node to stop.
    pub fn request(&self) {
        self.tx.send_replace(true);
    }

    /// Resolves once a stop was requested (at once if it already was).
    pub async fn requested(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// hashicorp/raft's suffrage of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suffrage {
    /// Votes.
    Voter,
    /// A learner (hashicorp/raft's non-voter).
    Nonvoter,
}

/// A member as hashicorp/raft's `GetConfiguration` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Its suffrage.
    pub suffrage: Suffrage,
    /// Its node id.
    pub id: String,
    /// Its Raft address.
    pub address: String,
    /// Whether this node knows it as the leader.
    pub leader: bool,
}

/// hashicorp/raft's `GetConfiguration`: the latest membership (possibly not yet committed)
/// and its log index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configuration {
    /// Voters first, then learners, each by id.
    pub servers: Vec<Server>,
    /// The log index of this membership.
    pub index: u64,
}

/// The state hashicorp/raft reports. A raftkv learner is a `Follower`, as a hashicorp
/// non-voter is.
#[must_use]
pub fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "Leader",
        ServerState::Candidate => "Candidate",
        ServerState::Follower | ServerState::Learner => "Follower",
        ServerState::Shutdown => "Shutdown",
    }
}

/// The hashicorp/raft admin operations of one node.
#[derive(Debug, Clone)]
pub struct HashicorpAdmin {
    ctx: NodeContext,
    admin: AdminService,
    kv: KvService,
    ops: Operations,
    stop: StopRequest,
    /// The token of a `Shutdown` call: forgetting it stops the node.
    shutdown_token: Arc<std::sync::Mutex<Option<String>>>,
}

/// The seed xkeyideal/raft-example's log command: `{"type": 1, "payload": <bytes>}`, bytes
/// in base64 as Go's `encoding/json` writes them.
#[derive(Debug, Deserialize)]
struct SeedCommand {
    #[serde(rename = "type")]
    kind: i64,
    payload: Option<String>,
}

/// The payload of the seed's `Insert` command: `{"key": <bytes>, "val": <bytes>}`.
#[derive(Debug, Deserialize)]
struct SeedSetPayload {
    key: Option<String>,
    val: Option<String>,
}

/// The seed's `Insert` command type; `Query` (0) is a read.
const SEED_INSERT: i64 = 1;

fn base64_field(what: &str, field: Option<&str>) -> Result<Vec<u8>, ServiceError> {
    base64::engine::general_purpose::STANDARD.decode(field.unwrap_or_default()).map_err(|e| {
        ServiceError::InvalidArgument(format!(
            "ApplyLog: {what} is not base64 (as Go's encoding/json writes bytes): {e}"
        ))
    })
}

/// Decodes `data` of `ApplyLog` as the seed's `Insert` command, into a key and a value.
///
/// # Errors
/// `INVALID_ARGUMENT` saying what is wrong, for anything but a well-formed `Insert` within
/// the key and value limits.
pub fn seed_command(data: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ServiceError> {
    const FORMAT: &str = r#"{"type":1,"payload":base64 of {"key":base64,"val":base64}}"#;
    let command: SeedCommand = serde_json::from_slice(data).map_err(|e| {
        ServiceError::InvalidArgument(format!(
            "ApplyLog: data is not the seed's log command {FORMAT}: {e}; raftkv's own API is raftkv.v1.KV"
        ))
    })?;
    if command.kind != SEED_INSERT {
        let why = if command.kind == 0 {
            "type 0 (Query) is a read, which raftkv never logs (use Get)".to_string()
        } else {
            format!("type {} is unknown", command.kind)
        };
        return Err(ServiceError::InvalidArgument(format!(
            "ApplyLog: command {why}; only type 1 (Insert) can be applied"
        )));
    }
    let payload = base64_field("payload", command.payload.as_deref())?;
    let set: SeedSetPayload = serde_json::from_slice(&payload).map_err(|e| {
        ServiceError::InvalidArgument(format!(
            "ApplyLog: the payload is not the seed's {{\"key\",\"val\"}} object: {e}"
        ))
    })?;
    let key = base64_field("key", set.key.as_deref())?;
    let value = base64_field("val", set.val.as_deref())?;
    limits::check_key(&key)?;
    limits::check_value(&value)?;
    Ok((key, value))
}

/// A request to a native service carrying the caller's metadata (deadline, no-forward).
fn native<T>(md: &MetadataMap, message: T) -> Request<T> {
    let mut req = Request::new(message);
    *req.metadata_mut() = md.clone();
    req
}

fn previous(index: u64) -> Option<u64> {
    (index != 0).then_some(index)
}

fn metrics_of(ctx: &NodeContext) -> RaftMetrics<TypeConfig> {
    ctx.raft.metrics().borrow_watched().clone()
}

/// Asks the node listening at `raft_addr` who it is, and returns its addresses. A member
/// already known at that address is not asked (it may be down, and the change a no-op).
///
/// # Errors
/// `UNAVAILABLE` when nothing answers; `FAILED_PRECONDITION` when the node there has
/// another id, or is not a raftkv node.
pub async fn identify(ctx: &NodeContext, id: &NodeId, raft_addr: &str, until: Instant) -> Result<NodeInfo, Status> {
    let known = metrics_of(ctx).membership_config.membership().get_node(id).cloned();
    if let Some(info) = known.filter(|n| n.raft_addr == raft_addr) {
        return Ok(info);
    }
    let unreachable = |e: &dyn std::fmt::Display| {
        Status::from(ServiceError::FailedPrecondition(format!(
            "cannot reach node {id} at {raft_addr} to learn its client address ({e}); \
             start it first, and give its --raft_addr"
        )))
    };
    let channel = ctx.forwarder.channel(raft_addr, id).await.map_err(|e| unreachable(&e))?;
    let timeout = until.saturating_duration_since(Instant::now()).min(IDENTIFY_TIMEOUT);
    let me = match calls::identify(channel, timeout).await {
        Ok(me) => me,
        Err(e) => {
            ctx.forwarder.forget(raft_addr);
            return Err(unreachable(&e));
        }
    };
    if me.node_id != id.as_str() {
        return Err(ServiceError::FailedPrecondition(format!(
            "the node at {raft_addr} is {:?}, not {id:?}; nothing was changed",
            me.node_id
        ))
        .into());
    }
    Ok(me.node)
}

impl HashicorpAdmin {
    /// The adapter over `ctx`'s native services; `stop` is what `Shutdown` sets.
    #[must_use]
    pub fn new(ctx: NodeContext, ops: Operations, stop: StopRequest) -> Self {
        Self {
            admin: AdminService::new(ctx.clone()),
            kv: KvService::new(ctx.clone()),
            ctx,
            ops,
            stop,
            shutdown_token: Arc::default(),
        }
    }

    fn metrics(&self) -> RaftMetrics<TypeConfig> {
        metrics_of(&self.ctx)
    }

    /// `AddVoter` (`voter`) or `AddNonvoter`.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` for a bad id or address; `RESOURCE_EXHAUSTED` when too many
    /// operations are pending.
    pub fn add(
        &self,
        md: &MetadataMap,
        id: &str,
        address: &str,
        previous_index: u64,
        voter: bool,
    ) -> Result<String, Status> {
        let id = node_id("id", id)?;
        check_addr("address", address)?;
        let (ctx, admin, md, address) = (self.ctx.clone(), self.admin.clone(), md.clone(), address.to_string());
        let max = if voter { DEFAULT_ADD_VOTER_TIMEOUT } else { MAX_ADMIN_TIMEOUT };
        let until = Instant::now() + deadline(&md, max);
        Ok(self.ops.start(async move {
            let info = identify(&ctx, &id, &address, until).await?;
            let (id, raft_addr, grpc_addr) = (id.to_string(), info.raft_addr, info.grpc_addr);
            let if_membership_index = previous(previous_index);
            if voter {
                let req = admin::AddVoterRequest { id, raft_addr, grpc_addr, if_membership_index };
                Ok(admin.add_voter(native(&md, req)).await?.into_inner().index)
            } else {
                let req = admin::AddLearnerRequest { id, raft_addr, grpc_addr, if_membership_index };
                Ok(admin.add_learner(native(&md, req)).await?.into_inner().index)
            }
        })?)
    }

    /// `DemoteVoter`.
    ///
    /// # Errors
    /// As [`Self::add`].
    pub fn demote(&self, md: &MetadataMap, id: &str, previous_index: u64) -> Result<String, Status> {
        let id = node_id("id", id)?.to_string();
        let (admin, md) = (self.admin.clone(), md.clone());
        let req = admin::DemoteRequest { id, if_membership_index: previous(previous_index) };
        Ok(self.ops.start(async move { Ok(admin.demote(native(&md, req)).await?.into_inner().index) })?)
    }

    /// `RemoveServer`.
    ///
    /// # Errors
    /// As [`Self::add`].
    pub fn remove(&self, md: &MetadataMap, id: &str, previous_index: u64) -> Result<String, Status> {
        let id = node_id("id", id)?.to_string();
        let (admin, md) = (self.admin.clone(), md.clone());
        let req = admin::RemoveRequest { id, if_membership_index: previous(previous_index) };
        Ok(self.ops.start(async move { Ok(admin.remove(native(&md, req)).await?.into_inner().index) })?)
    }

    /// `LeadershipTransfer` (`to` is `None`) or `LeadershipTransferToServer{id, address}`.
    ///
    /// # Errors
    /// As [`Self::add`].
    pub fn transfer(&self, md: &MetadataMap, to: Option<(&str, &str)>) -> Result<String, Status> {
        let to = match to {
            None => None,
            Some((id, address)) => {
                let id = node_id("id", id)?;
                check_addr("address", address)?;
                Some((id, address.to_string()))
            }
        };
        let (ctx, admin, md) = (self.ctx.clone(), self.admin.clone(), md.clone());
        Ok(self.ops.start(async move {
            let to = match to {
                None => String::new(),
                Some((id, address)) => {
                    let m = metrics_of(&ctx);
                    let known = m.membership_config.membership().get_node(&id).map(|n| n.raft_addr.clone());
                    match known {
                        None => return Err(ServiceError::NotFound(format!("node {id} is not a member")).into()),
                        Some(a) if a != address => {
                            return Err(ServiceError::FailedPrecondition(format!(
                                "node {id} is at {a}, not {address}; nothing was changed"
                            ))
                            .into());
                        }
                        Some(_) => id.to_string(),
                    }
                }
            };
            admin.transfer_leader(native(&md, admin::TransferLeaderRequest { to })).await?;
            Ok(0)
        })?)
    }

    /// `Barrier`.
    ///
    /// # Errors
    /// `RESOURCE_EXHAUSTED` when too many operations are pending.
    pub fn barrier(&self, md: &MetadataMap) -> Result<String, Status> {
        let (admin, md) = (self.admin.clone(), md.clone());
        Ok(self
            .ops
            .start(async move { Ok(admin.barrier(native(&md, admin::BarrierRequest {})).await?.into_inner().index) })?)
    }

    /// `Snapshot`.
    ///
    /// # Errors
    /// As [`Self::barrier`].
    pub fn snapshot(&self, md: &MetadataMap) -> Result<String, Status> {
        let (admin, md) = (self.admin.clone(), md.clone());
        Ok(self.ops.start(async move {
            Ok(admin.snapshot(native(&md, admin::SnapshotRequest {})).await?.into_inner().index)
        })?)
    }

    /// `VerifyLeader`.
    ///
    /// # Errors
    /// As [`Self::barrier`].
    pub fn verify_leader(&self, md: &MetadataMap) -> Result<String, Status> {
        let (admin, md) = (self.admin.clone(), md.clone());
        Ok(self.ops.start(async move {
            Ok(admin.verify_leader(native(&md, admin::VerifyLeaderRequest {})).await?.into_inner().read_index)
        })?)
    }

    /// `ApplyLog`.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` for anything but the seed's `Insert` command ([`seed_command`]) or
    /// for extensions; as [`Self::barrier`].
    pub fn apply_log(&self, md: &MetadataMap, data: &[u8], extensions: &[u8]) -> Result<String, Status> {
        if !extensions.is_empty() {
            return Err(ServiceError::InvalidArgument(format!(
                "ApplyLog: raftkv does not store log extensions ({} bytes given); send them empty",
                extensions.len()
            ))
            .into());
        }
        let (key, value) = seed_command(data)?;
        let (kv, md) = (self.kv.clone(), md.clone());
        Ok(self.ops.start(async move {
            #[allow(clippy::needless_update, reason = "the native request may gain fields; they keep their defaults")]
            let put = kv::PutRequest { key: key.into(), value: value.into(), ..Default::default() };
            let resp = kv.put(native(&md, put)).await?.into_inner();
            Ok(resp.header.map_or(0, |h| h.index))
        })?)
    }

    /// `Shutdown`: this node stops gracefully (as on SIGTERM) once the returned token is
    /// forgotten, which is what the Go CLIs do right after `Await`, or
    /// [`SHUTDOWN_UNFORGOTTEN`] after the call, whichever comes first. Stopping at once would
    /// refuse the `Await` and `Forget` that follow on the same connection.
    ///
    /// # Errors
    /// As [`Self::barrier`].
    pub fn shutdown(&self) -> Result<String, Status> {
        tracing::info!(node = %self.ctx.id, "shutdown requested through the RaftAdmin/RaftManager API");
        let token = self.ops.start(async { Ok(0) })?;
        if let Ok(mut pending) = self.shutdown_token.lock() {
            *pending = Some(token.clone());
        }
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(SHUTDOWN_UNFORGOTTEN).await;
            stop.request();
        });
        Ok(token)
    }

    /// `Await`: the outcome of the operation of `token`, waiting at most the caller's
    /// deadline.
    ///
    /// # Errors
    /// The operation's failure; see [`Operations::wait`].
    pub async fn wait(&self, md: &MetadataMap, token: &str) -> OperationResult {
        self.ops.wait(token, Instant::now() + deadline(md, MAX_AWAIT)).await
    }

    /// `Forget`; forgetting the token of `Shutdown` stops the node.
    pub fn forget(&self, token: &str) {
        self.ops.forget(token);
        let shutdown = self.shutdown_token.lock().is_ok_and(|pending| pending.as_deref() == Some(token));
        if shutdown {
            self.stop.request();
        }
    }

    /// `AppliedIndex`: the last index applied to this node's state machine.
    #[must_use]
    pub fn applied_index(&self) -> u64 {
        self.ctx.sm.applied_index()
    }

    /// `LastIndex`: the last index in this node's log (or snapshot).
    #[must_use]
    pub fn last_index(&self) -> u64 {
        let m = self.metrics();
        m.last_log_index.unwrap_or(0).max(types::index_of(m.snapshot.as_ref()))
    }

    /// `GetConfiguration`.
    #[must_use]
    pub fn configuration(&self) -> Configuration {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let leader_addr = m.current_leader.as_ref().and_then(|l| membership.get_node(l)).map(|n| n.raft_addr.clone());
        let mut servers: Vec<Server> = membership
            .nodes()
            .map(|(id, info)| Server {
                suffrage: if membership.voter_ids().any(|v| v == *id) { Suffrage::Voter } else { Suffrage::Nonvoter },
                id: id.to_string(),
                address: info.raft_addr.clone(),
                leader: leader_addr.as_deref() == Some(info.raft_addr.as_str()),
            })
            .collect();
        servers.sort_by(|a, b| (a.suffrage != Suffrage::Voter, &a.id).cmp(&(b.suffrage != Suffrage::Voter, &b.id)));
        Configuration { servers, index: types::index_of(m.membership_config.log_id().as_ref()) }
    }

    /// `Leader`: the leader's Raft address and id, empty when none is known.
    #[must_use]
    pub fn leader(&self) -> (String, String) {
        let m = self.metrics();
        match &m.current_leader {
            None => (String::new(), String::new()),
            Some(l) => {
                let addr = m.membership_config.membership().get_node(l).map(|n| n.raft_addr.clone());
                (addr.unwrap_or_default(), l.to_string())
            }
        }
    }

    /// `State`.
    #[must_use]
    pub fn state(&self) -> ServerState {
        self.metrics().state
    }

    /// `LastContact`: when this node last heard from a leader, in nanoseconds since the Unix
    /// epoch; now on the leader; 0 when never.
    #[must_use]
    pub fn last_contact_unix_nanos(&self) -> i64 {
        let now = std::time::SystemTime::now();
        let at = if self.metrics().state == ServerState::Leader {
            Some(now)
        } else {
            self.ctx.leader_contact.millis_since().map(|ms| now - Duration::from_millis(ms))
        };
        at.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    }

    /// `Stats`: hashicorp/raft's `Stats()` keys that raftkv has the data for, plus
    /// `node_id`, `leader_id` and `purged_index`.
    #[must_use]
    pub fn stats(&self) -> BTreeMap<String, String> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voter = membership.voter_ids().any(|v| v == self.ctx.id);
        let num_peers = if voter { membership.voter_ids().filter(|v| *v != self.ctx.id).count() } else { 0 };
        let config = self.configuration();
        let latest_configuration = config
            .servers
            .iter()
            .map(|s| {
                let suffrage = if s.suffrage == Suffrage::Voter { "Voter" } else { "Nonvoter" };
                format!("{{Suffrage:{suffrage} ID:{} Address:{}}}", s.id, s.address)
            })
            .collect::<Vec<_>>()
            .join(" ");
        let committed = types::index_of(m.local_committed.as_ref());
        let applied = types::index_of(m.last_applied.as_ref());
        let last_contact = match (m.state, self.ctx.leader_contact.millis_since()) {
            (ServerState::Leader, _) => "0".to_string(),
            (_, None) => "never".to_string(),
            (_, Some(ms)) => format!("{ms}ms"),
        };
        let pairs = [
            ("state", state_name(m.state).to_string()),
            ("term", m.current_term.to_string()),
            ("last_log_index", m.last_log_index.unwrap_or(0).to_string()),
            ("commit_index", committed.to_string()),
            ("applied_index", applied.to_string()),
            ("fsm_pending", committed.saturating_sub(applied).to_string()),
            ("last_snapshot_index", types::index_of(m.snapshot.as_ref()).to_string()),
            ("last_snapshot_term", m.snapshot.as_ref().map_or(0, |l| l.leader_id.term).to_string()),
            ("latest_configuration_index", config.index.to_string()),
            ("latest_configuration", format!("[{latest_configuration}]")),
            ("num_peers", num_peers.to_string()),
            ("last_contact", last_contact),
            ("node_id", self.ctx.id.to_string()),
            ("leader_id", m.current_leader.as_ref().map(ToString::to_string).unwrap_or_default()),
            ("purged_index", types::index_of(m.purged.as_ref()).to_string()),
        ];
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

/// Go's `time.Time.String()` of a Unix time in UTC, as raft-manager's `time_format`:
/// `2006-01-02 15:04:05.999999999 +0000 UTC`; 0 is Go's zero time.
#[must_use]
pub fn go_time_string(unix_nanos: i64) -> String {
    if unix_nanos == 0 {
        return "0001-01-01 00:00:00 +0000 UTC".into();
    }
    let t = chrono::DateTime::from_timestamp_nanos(unix_nanos);
    let frac = t.timestamp_subsec_nanos();
    let frac = if frac == 0 { String::new() } else { format!(".{frac:09}").trim_end_matches('0').to_string() };
    format!("{}{frac} +0000 UTC", t.format("%Y-%m-%d %H:%M:%S"))
}

/// Implements a hashicorp-style admin service (`$trait` from the generated module `$pb`) for
/// `$service`, a struct with a `core: HashicorpAdmin` field: the 16 RPCs whose messages
/// are the same in raftadmin and raft-manager, plus the `$extra` methods given.
macro_rules! hashicorp_service {
    ($service:ty, $trait:path, $pb:ident, { $($extra:tt)* }) => {
        #[tonic::async_trait]
        impl $trait for $service {
            async fn add_nonvoter(&self, r: Request<$pb::AddNonvoterRequest>) -> Result<Response<$pb::Future>, Status> {
                let q = r.get_ref();
                future(self.core.add(r.metadata(), &q.id, &q.address, q.previous_index, false))
            }

            async fn add_voter(&self, r: Request<$pb::AddVoterRequest>) -> Result<Response<$pb::Future>, Status> {
                let q = r.get_ref();
                future(self.core.add(r.metadata(), &q.id, &q.address, q.previous_index, true))
            }

            async fn applied_index(
                &self,
                _r: Request<$pb::AppliedIndexRequest>,
            ) -> Result<Response<$pb::AppliedIndexResponse>, Status> {
                Ok(Response::new($pb::AppliedIndexResponse { index: self.core.applied_index() }))
            }

            async fn apply_log(&self, r: Request<$pb::ApplyLogRequest>) -> Result<Response<$pb::Future>, Status> {
                let q = r.get_ref();
                future(self.core.apply_log(r.metadata(), &q.data, &q.extensions))
            }

            async fn barrier(&self, r: Request<$pb::BarrierRequest>) -> Result<Response<$pb::Future>, Status> {
                future(self.core.barrier(r.metadata()))
            }

            async fn demote_voter(&self, r: Request<$pb::DemoteVoterRequest>) -> Result<Response<$pb::Future>, Status> {
                let q = r.get_ref();
                future(self.core.demote(r.metadata(), &q.id, q.previous_index))
            }

            async fn last_index(&self, _r: Request<$pb::LastIndexRequest>) -> Result<Response<$pb::LastIndexResponse>, Status> {
                Ok(Response::new($pb::LastIndexResponse { index: self.core.last_index() }))
            }

            async fn leadership_transfer(
                &self,
                r: Request<$pb::LeadershipTransferRequest>,
            ) -> Result<Response<$pb::Future>, Status> {
                future(self.core.transfer(r.metadata(), None))
            }

            async fn leadership_transfer_to_server(
                &self,
                r: Request<$pb::LeadershipTransferToServerRequest>,
            ) -> Result<Response<$pb::Future>, Status> {
                let q = r.get_ref();
                future(self.core.transfer(r.metadata(), Some((&q.id, &q.address))))
            }

            async fn remove_server(&self, r: Request<$pb::RemoveServerRequest>) -> Result<Response<$pb::Future>, Status> {
                let q = r.get_ref();
                future(self.core.remove(r.metadata(), &q.id, q.previous_index))
            }

            async fn shutdown(&self, _r: Request<$pb::ShutdownRequest>) -> Result<Response<$pb::Future>, Status> {
                future(self.core.shutdown())
            }

            async fn snapshot(&self, r: Request<$pb::SnapshotRequest>) -> Result<Response<$pb::Future>, Status> {
                future(self.core.snapshot(r.metadata()))
            }

            async fn stats(&self, _r: Request<$pb::StatsRequest>) -> Result<Response<$pb::StatsResponse>, Status> {
                Ok(Response::new($pb::StatsResponse { stats: self.core.stats().into_iter().collect() }))
            }

            async fn verify_leader(&self, r: Request<$pb::VerifyLeaderRequest>) -> Result<Response<$pb::Future>, Status> {
                future(self.core.verify_leader(r.metadata()))
            }

            async fn r#await(&self, r: Request<$pb::Future>) -> Result<Response<$pb::AwaitResponse>, Status> {
                // Await waits without working: it gives its place under the overload limits back.
                service::overload::release(r.extensions());
                let index = self.core.wait(r.metadata(), &r.get_ref().operation_token).await?;
                Ok(Response::new($pb::AwaitResponse { error: String::new(), index }))
            }

            async fn forget(&self, r: Request<$pb::Future>) -> Result<Response<$pb::ForgetResponse>, Status> {
                self.core.forget(&r.get_ref().operation_token);
                Ok(Response::new($pb::ForgetResponse {}))
            }

            $($extra)*
        }

        /// A started operation's token as this service's `Future`.
        fn future(token: Result<String, Status>) -> Result<Response<$pb::Future>, Status> {
            Ok(Response::new($pb::Future { operation_token: token? }))
        }
    };
}

pub(crate) use hashicorp_service;

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn insert(key: &[u8], val: &[u8]) -> Vec<u8> {
        let payload = format!(r#"{{"key":"{}","val":"{}"}}"#, b64(key), b64(val));
        format!(r#"{{"type":1,"payload":"{}"}}"#, b64(payload.as_bytes())).into_bytes()
    }

    #[test]
    fn the_seed_insert_command_decodes() {
        assert_eq!(seed_command(&insert(b"k", b"v")).expect("insert"), (b"k".to_vec(), b"v".to_vec()));
        // A nil value (JSON null) is an empty value, as in Go.
        let payload = format!(r#"{{"key":"{}","val":null}}"#, b64(b"k"));
        let data = format!(r#"{{"type":1,"payload":"{}"}}"#, b64(payload.as_bytes()));
        assert_eq!(seed_command(data.as_bytes()).expect("null value"), (b"k".to_vec(), Vec::new()));
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        let cases: [(&[u8], &str); 6] = [
            (b"put k v", "not the seed's log command"),
            (br#"{"type":0,"payload":""}"#, "0 (Query) is a read"),
            (br#"{"type":7,"payload":""}"#, "type 7 is unknown"),
            (br#"{"type":1,"payload":"%%%"}"#, "payload is not base64"),
            (br#"{"type":1,"payload":"e30="}"#, "key is empty"),
            (br#"{"type":1,"payload":"eyJrZXkiOjF9"}"#, "payload is not the seed's"),
        ];
        for (data, want) in cases {
            let err = seed_command(data).expect_err("refused").to_string();
            assert!(err.contains(want), "{}: {err}", String::from_utf8_lossy(data));
        }
        let long = vec![b'k'; limits::MAX_KEY_BYTES + 1];
        let err = seed_command(&insert(&long, b"v")).expect_err("key limit").to_string();
        assert!(err.contains("key"), "{err}");
        let at_limit = vec![b'k'; limits::MAX_KEY_BYTES];
        assert!(seed_command(&insert(&at_limit, b"v")).is_ok());
    }

    #[test]
    fn go_times_look_like_go() {
        assert_eq!(go_time_string(0), "0001-01-01 00:00:00 +0000 UTC");
        assert_eq!(go_time_string(1_700_000_000_000_000_000), "2023-11-14 22:13:20 +0000 UTC");
        assert_eq!(go_time_string(1_700_000_000_123_400_000), "2023-11-14 22:13:20.1234 +0000 UTC");
    }

    #[tokio::test]
    async fn a_stop_request_is_seen_by_later_waiters() {
        let stop = StopRequest::default();
        stop.clone().request();
        tokio::time::timeout(Duration::from_secs(5), stop.requested()).await.expect("already requested");
    }
}
