//! Cluster operations: membership changes, leadership transfer, snapshots, barriers and
//! leader verification, on one node's Raft.
//!
//! The Admin service ([`crate::AdminService`]) is a thin gRPC layer over these; the engine uses
//! [`transfer_leadership`] to hand leadership over before a planned stop.
//!
//! An operation that needs the leader runs only on the leader: anywhere else it answers
//! [`Routed::Leader`] with the leader, and the caller forwards the request (once, with
//! `forward::to_leader`).
//! Every operation is bounded by a deadline and waits on Raft's metrics, never on a fixed
//! sleep standing in for a condition. Membership operations describe the state wanted, so a
//! change already in place succeeds without writing anything (`changed: false`).
//!
//! Errors are [`ServiceError`]s, retryable only when nothing was proposed: a membership change
//! refused because another is in progress until the deadline is `MembershipBusy`; one
//! proposed and then cut short by a leader change or a stop is `OutcomeUnknown`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use linearizable::{BarrierError, Consistency, WaitError};
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ChangeMembershipError, ClientWriteError, PreconditionFailed, RaftError};
use openraft::raft::{ClientWriteResponse, Precondition};
use openraft::{ChangeMembers, RaftMetrics, ServerState};
use tokio::time::Instant;
use types::{AlarmCommand, Command, NodeId, NodeInfo, TypeConfig};

use crate::forward::{Leader, Routed};
use crate::{NodeContext, ServiceError};

/// The result of a membership operation.
#[derive(Debug, Clone)]
pub struct MembershipChange {
    /// Log index of the membership now in force.
    pub index: u64,
    /// The members afterwards.
    pub members: Vec<MemberState>,
    /// False when the membership was already as asked.
    pub changed: bool,
}

/// One member of the membership, as [`members`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    /// Its id.
    pub id: NodeId,
    /// A voter (else a learner).
    pub voter: bool,
    /// Its addresses, as the membership holds them.
    pub node: NodeInfo,
    /// Whether it is the leader this node knows.
    pub is_leader: bool,
    /// On the leader: the last log index known replicated to it.
    pub matched_index: Option<u64>,
    /// On the leader: how far it is behind the leader's last log index.
    pub lag: Option<u64>,
}

/// The members of the membership in `m`, voters first (then by id), each with its suffrage;
/// on the leader also with its replication progress (matched index and lag).
#[must_use]
pub fn members(m: &Metrics) -> Vec<MemberState> {
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let leader = m.state == ServerState::Leader;
    let last = m.last_log_index.unwrap_or(0);
    let mut members: Vec<MemberState> = membership
        .nodes()
        .map(|(id, info)| {
            let matched = if leader { matched_index(m, id) } else { None };
            MemberState {
                id: id.clone(),
                voter: voters.contains(id),
                node: info.clone(),
                is_leader: m.current_leader.as_ref() == Some(id),
                matched_index: matched,
                lag: matched.map(|i| last.saturating_sub(i)),
            }
        })
        .collect();
    members.sort_by(|a, b| b.voter.cmp(&a.voter).then(a.id.as_str().cmp(b.id.as_str())));
    members
}

/// The result of a leadership transfer.
#[derive(Debug, Clone)]
pub struct Transferred {
    /// The leader before.
    pub previous: NodeId,
    /// The leader now.
    pub leader: NodeId,
    /// The term this node knows the new leader in.
    pub term: u64,
}

type Metrics = RaftMetrics<TypeConfig>;
type WriteResult = Result<ClientWriteResponse<TypeConfig>, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>;

/// How long a transfer waits for the target to catch up before it is triggered anyway.
pub const TRANSFER_CATCH_UP: Duration = Duration::from_secs(2);
/// How often a transfer that has not taken effect is triggered again.
pub const TRANSFER_RETRIGGER: Duration = Duration::from_millis(500);
/// How often a snapshot that has not appeared is triggered again (a build already running
/// when the first trigger arrived makes openraft drop it).
const SNAPSHOT_RETRIGGER: Duration = Duration::from_secs(1);

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn metrics(ctx: &NodeContext) -> Metrics {
    ctx.raft.metrics().borrow_watched().clone()
}

/// The index this member's log is known to match on the leader, from the leader's metrics.
#[must_use]
pub fn matched_index(m: &Metrics, id: &NodeId) -> Option<u64> {
    if *id == m.id {
        return m.last_log_index;
    }
    m.replication.as_ref()?.get(id).map(|l| types::index_of(l.as_ref()))
}

fn membership_change(m: &Metrics, changed: bool, index: Option<u64>) -> MembershipChange {
    MembershipChange {
        index: index.unwrap_or_else(|| types::index_of(m.membership_config.log_id().as_ref())),
        members: members(m),
        changed,
    }
}

/// Where this node stands: the leader (with its metrics), or the leader is elsewhere. Finds
/// the leader, waiting (until `deadline`) while an election is under way.
async fn standing(ctx: &NodeContext, deadline: Instant) -> Result<Routed<Box<Metrics>>, ServiceError> {
    loop {
        let m = metrics(ctx);
        match &m.current_leader {
            Some(l) if *l == ctx.id && m.state == ServerState::Leader => return Ok(Routed::Done(Box::new(m))),
            Some(l) if *l != ctx.id => return Ok(Routed::Leader(l.clone().into())),
            _ => {}
        }
        if m.membership_config.membership().voter_ids().next().is_none() {
            return Err(ServiceError::FailedPrecondition(format!(
                "{} is not part of a cluster yet (it has no Raft state); send the request to a member",
                ctx.id
            )));
        }
        let left = remaining(deadline);
        if left.is_zero() {
            return Err(ServiceError::NoLeader);
        }
        // Wait for the next change of leader or state, briefly.
        let mut rx = ctx.raft.metrics();
        let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), rx.changed()).await;
    }
}

/// Proposes through `propose` until it is committed, the leader is elsewhere, or the deadline
/// passes. Retries (with a backoff) while another membership change is in progress or this
/// leader is not yet writable.
/// Proposes a membership change with [`propose`] and answers the membership it made.
async fn propose_membership<F, Fut>(
    ctx: &NodeContext,
    deadline: Instant,
    what: &str,
    change: F,
) -> Result<Routed<MembershipChange>, ServiceError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = WriteResult>,
{
    Ok(propose(ctx, deadline, what, change).await?.map(|index| membership_change(&metrics(ctx), true, Some(index))))
}

async fn propose<F, Fut>(
    ctx: &NodeContext,
    deadline: Instant,
    what: &str,
    mut propose: F,
) -> Result<Routed<u64>, ServiceError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = WriteResult>,
{
    let mut backoff = Duration::from_millis(20);
    let mut busy = None;
    loop {
        let left = remaining(deadline);
        if left.is_zero() {
            return Err(match busy {
                Some(e) => ServiceError::MembershipBusy(format!("{what} was not proposed: {e}")),
                None => ServiceError::NoLeader,
            });
        }
        let result = match tokio::time::timeout(left, propose()).await {
            Ok(r) => r,
            Err(_) => {
                return Err(ServiceError::DeadlineExceeded(format!(
                    "{what} was proposed but did not complete in time; its outcome is unknown (look at `member list`)"
                )));
            }
        };
        match result {
            Ok(resp) => return Ok(Routed::Done(resp.log_id.index)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                if let Some(id) = f.leader_id.filter(|l| *l != ctx.id) {
                    return Ok(Routed::Leader(Leader { id, node: f.leader_node }));
                }
                // No leader yet, or this node was just elected and is not writable yet.
                match standing(ctx, deadline).await? {
                    Routed::Leader(l) => return Ok(Routed::Leader(l)),
                    Routed::Done(_) => {}
                }
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => match e {
                ChangeMembershipError::InProgress(_) | ChangeMembershipError::UncommittedLeaderLog(_) => {
                    busy = Some(e.to_string());
                }
                other => return Err(ServiceError::FailedPrecondition(format!("{what} refused: {other}"))),
            },
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f))) => {
                return Err(ServiceError::OutcomeUnknown(format!("leadership changed during {what} ({f})")));
            }
            Err(RaftError::APIError(ClientWriteError::PreconditionFailed(
                PreconditionFailed::LastMembershipLogIdMismatch { expected, actual },
            ))) => {
                return Err(membership_moved(types::index_of(expected.as_ref()), types::index_of(actual.as_ref())));
            }
            Err(RaftError::APIError(ClientWriteError::PreconditionFailed(e))) => {
                return Err(ServiceError::FailedPrecondition(format!("{what} refused: {e}")));
            }
            // Raft stopped while the change was in flight: it may or may not commit.
            Err(RaftError::Fatal(f)) => {
                return Err(ServiceError::OutcomeUnknown(format!("raft stopped during {what} ({f})")));
            }
        }
        tokio::time::sleep(backoff.min(remaining(deadline))).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

fn is_voter(m: &Metrics, id: &NodeId) -> bool {
    m.membership_config.membership().voter_ids().any(|v| v == *id)
}

fn voters(m: &Metrics) -> BTreeSet<NodeId> {
    m.membership_config.membership().voter_ids().collect()
}

fn not_a_member(id: &NodeId) -> ServiceError {
    ServiceError::NotFound(format!("node {id} is not a member of the cluster (see `raftkvctl member list`)"))
}

fn check_same_addresses(id: &NodeId, existing: &NodeInfo, info: &NodeInfo) -> Result<(), ServiceError> {
    if existing == info {
        return Ok(());
    }
    Err(ServiceError::FailedPrecondition(format!(
        "node {id} is already a member with raft_addr {} and grpc_addr {}; remove it before adding it with other addresses",
        existing.raft_addr, existing.grpc_addr
    )))
}

/// The preconditions of a change asked "only if the membership is the one at `expected`"
/// (`if_membership_index`; hashicorp/raft's previous index): none for `None` or 0; else the
/// latest membership must be at that index now, and still be when openraft proposes.
fn membership_precondition(m: &Metrics, expected: Option<u64>) -> Result<Vec<Precondition<TypeConfig>>, ServiceError> {
    let Some(expected) = expected.filter(|i| *i != 0) else {
        return Ok(Vec::new());
    };
    let log_id = m.membership_config.log_id().clone();
    let latest = types::index_of(log_id.as_ref());
    if latest != expected {
        return Err(membership_moved(expected, latest));
    }
    Ok(vec![Precondition::LastMembershipLogId { last_membership_log_id: log_id }])
}

/// The refusal of a change based on a membership that another change has replaced.
fn membership_moved(expected: u64, latest: u64) -> ServiceError {
    if latest == 0 {
        return ServiceError::FailedPrecondition(format!(
            "the change was asked for the membership configuration at index {expected}, but the latest one is the \
             initial configuration (index 0); nothing was changed: retry with index 0"
        ));
    }
    ServiceError::FailedPrecondition(format!(
        "the change was asked for the membership configuration at index {expected}, but the latest one is at index {latest}; \
         nothing was changed: look at the membership again (`raftkvctl member list`) and retry with index {latest}, or with 0 for no check"
    ))
}

/// This node's metrics and the preconditions `expected` asks for ([`membership_precondition`])
/// when this node leads; else the leader the request must go to.
async fn lead(
    ctx: &NodeContext,
    expected: Option<u64>,
    deadline: Instant,
) -> Result<Routed<(Box<Metrics>, Vec<Precondition<TypeConfig>>)>, ServiceError> {
    match standing(ctx, deadline).await? {
        Routed::Done(m) => {
            let pre = membership_precondition(&m, expected)?;
            Ok(Routed::Done((m, pre)))
        }
        Routed::Leader(l) => Ok(Routed::Leader(l)),
    }
}

/// Adds `id` (with its addresses) as a learner, if the preconditions hold.
fn add_learner_if(
    ctx: &NodeContext,
    id: &NodeId,
    info: &NodeInfo,
    pre: &[Precondition<TypeConfig>],
) -> impl Future<Output = WriteResult> {
    let nodes = BTreeMap::from([(id.clone(), info.clone())]);
    ctx.raft.change_membership_if(ChangeMembers::AddNodes(nodes), true, pre.to_vec())
}

/// Adds `id` as a voter: as a learner first, promoted once it has caught up. `expected`
/// applies to the first change made.
pub async fn add_voter(
    ctx: &NodeContext,
    id: &NodeId,
    info: &NodeInfo,
    expected: Option<u64>,
    deadline: Instant,
) -> Result<Routed<MembershipChange>, ServiceError> {
    let (m, mut pre) = match lead(ctx, expected, deadline).await? {
        Routed::Done(v) => v,
        Routed::Leader(leader) => return Ok(Routed::Leader(leader)),
    };
    if let Some(existing) = m.membership_config.membership().get_node(id) {
        check_same_addresses(id, existing, info)?;
        if is_voter(&m, id) {
            return Ok(Routed::Done(membership_change(&m, false, None)));
        }
    } else {
        tracing::info!(node = %id, raft_addr = %info.raft_addr, grpc_addr = %info.grpc_addr, "adding learner");
        let what = format!("adding {id} as a learner");
        if let Routed::Leader(l) = propose(ctx, deadline, &what, || add_learner_if(ctx, id, info, &pre)).await? {
            return Ok(Routed::Leader(l));
        }
        // The next change builds on the one just made.
        pre.clear();
    }
    promote_caught_up(ctx, id, &pre, deadline).await
}

/// Adds `id` as a learner; returns once the change is committed.
pub async fn add_learner(
    ctx: &NodeContext,
    id: &NodeId,
    info: &NodeInfo,
    expected: Option<u64>,
    deadline: Instant,
) -> Result<Routed<MembershipChange>, ServiceError> {
    let (m, pre) = match lead(ctx, expected, deadline).await? {
        Routed::Done(v) => v,
        Routed::Leader(leader) => return Ok(Routed::Leader(leader)),
    };
    if let Some(existing) = m.membership_config.membership().get_node(id) {
        check_same_addresses(id, existing, info)?;
        if is_voter(&m, id) {
            return Err(ServiceError::FailedPrecondition(format!(
                "node {id} is a voter; to make it a learner, demote it (`raftkvctl member demote {id}`)"
            )));
        }
        return Ok(Routed::Done(membership_change(&m, false, None)));
    }
    tracing::info!(node = %id, raft_addr = %info.raft_addr, grpc_addr = %info.grpc_addr, "adding learner");
    let what = format!("adding {id} as a learner");
    propose_membership(ctx, deadline, &what, || add_learner_if(ctx, id, info, &pre)).await
}

/// Promotes the learner `id` to voter once it has caught up with the leader's log as it was
/// when the call arrived.
pub async fn promote(
    ctx: &NodeContext,
    id: &NodeId,
    expected: Option<u64>,
    deadline: Instant,
) -> Result<Routed<MembershipChange>, ServiceError> {
    let (m, pre) = match lead(ctx, expected, deadline).await? {
        Routed::Done(v) => v,
        Routed::Leader(leader) => return Ok(Routed::Leader(leader)),
    };
    if m.membership_config.membership().get_node(id).is_none() {
        return Err(not_a_member(id));
    }
    if is_voter(&m, id) {
        return Ok(Routed::Done(membership_change(&m, false, None)));
    }
    promote_caught_up(ctx, id, &pre, deadline).await
}

/// Waits until the learner `id` has the leader's log as it is now, then makes it a voter.
async fn promote_caught_up(
    ctx: &NodeContext,
    id: &NodeId,
    pre: &[Precondition<TypeConfig>],
    deadline: Instant,
) -> Result<Routed<MembershipChange>, ServiceError> {
    let target = metrics(ctx).last_log_index.unwrap_or(0);
    let caught_up = ctx
        .raft
        .wait(Some(remaining(deadline)))
        .metrics(
            |m| m.state != ServerState::Leader || matched_index(m, id).is_some_and(|i| i >= target),
            "the learner to catch up",
        )
        .await;
    let m = metrics(ctx);
    if caught_up.is_err() {
        let matched = matched_index(&m, id).unwrap_or(0);
        return Err(ServiceError::DeadlineExceeded(format!(
            "learner {id} did not catch up in time (it has index {matched}, the leader had {target}); it is still a learner, not a voter"
        )));
    }
    if m.state != ServerState::Leader {
        return match standing(ctx, deadline).await? {
            Routed::Leader(l) => Ok(Routed::Leader(l)),
            Routed::Done(_) => Err(ServiceError::NoLeader),
        };
    }
    tracing::info!(node = %id, "promoting learner to voter");
    let what = format!("promoting {id} to voter");
    let change = || {
        let voters = ChangeMembers::AddVoterIds(BTreeSet::from([id.clone()]));
        ctx.raft.change_membership_if(voters, false, pre.to_vec())
    };
    propose_membership(ctx, deadline, &what, change).await
}

fn refuse_last_voter(m: &Metrics, id: &NodeId, verb: &str) -> Result<(), ServiceError> {
    let voters = voters(m);
    if voters.len() == 1 && voters.contains(id) {
        return Err(ServiceError::FailedPrecondition(format!(
            "cannot {verb} {id}: it is the only voter, and a cluster needs at least one; add or promote another voter first"
        )));
    }
    Ok(())
}

/// Hands leadership to another voter before this leader demotes or removes itself, and
/// returns where the request must go now.
async fn step_aside(
    ctx: &NodeContext,
    id: &NodeId,
    deadline: Instant,
) -> Result<Routed<MembershipChange>, ServiceError> {
    tracing::info!(node = %id, "the leader is the node to change: handing leadership over first");
    match transfer_leadership(ctx, None, deadline).await? {
        Routed::Done(t) => Ok(Routed::Leader(t.leader.into())),
        Routed::Leader(l) => Ok(Routed::Leader(l)),
    }
}

/// Makes the voter `id` a learner. Refuses the last voter.
pub async fn demote(
    ctx: &NodeContext,
    id: &NodeId,
    expected: Option<u64>,
    deadline: Instant,
) -> Result<Routed<MembershipChange>, ServiceError> {
    let (m, pre) = match lead(ctx, expected, deadline).await? {
        Routed::Done(v) => v,
        Routed::Leader(leader) => return Ok(Routed::Leader(leader)),
    };
    if m.membership_config.membership().get_node(id).is_none() {
        return Err(not_a_member(id));
    }
    if !is_voter(&m, id) {
        return Ok(Routed::Done(membership_change(&m, false, None)));
    }
    refuse_last_voter(&m, id, "demote")?;
    if *id == ctx.id {
        return step_aside(ctx, id, deadline).await;
    }
    tracing::info!(node = %id, "demoting voter to learner");
    let what = format!("demoting {id} to learner");
    let change = || {
        let voters = ChangeMembers::RemoveVoters(BTreeSet::from([id.clone()]));
        ctx.raft.change_membership_if(voters, true, pre.clone())
    };
    propose_membership(ctx, deadline, &what, change).await
}

/// Takes `id` out of the cluster. Refuses the last voter.
pub async fn remove(
    ctx: &NodeContext,
    id: &NodeId,
    expected: Option<u64>,
    deadline: Instant,
) -> Result<Routed<MembershipChange>, ServiceError> {
    let (m, pre) = match lead(ctx, expected, deadline).await? {
        Routed::Done(v) => v,
        Routed::Leader(leader) => return Ok(Routed::Leader(leader)),
    };
    if m.membership_config.membership().get_node(id).is_none() {
        return Ok(Routed::Done(membership_change(&m, false, None)));
    }
    refuse_last_voter(&m, id, "remove")?;
    if *id == ctx.id {
        return step_aside(ctx, id, deadline).await;
    }
    tracing::info!(node = %id, voter = is_voter(&m, id), "removing member");
    let what = format!("removing {id}");
    let ids = BTreeSet::from([id.clone()]);
    let voter = is_voter(&m, id);
    let change = || {
        let changes =
            if voter { ChangeMembers::RemoveVoters(ids.clone()) } else { ChangeMembers::RemoveNodes(ids.clone()) };
        ctx.raft.change_membership_if(changes, false, pre.clone())
    };
    propose_membership(ctx, deadline, &what, change).await
}

/// Changes the addresses the membership records for the member `id` (etcd's MemberUpdate),
/// through openraft's `SetNodes`, which replaces the member's entry; its suffrage stays. The
/// node itself must be (re)started at the new addresses.
pub async fn update_addresses(
    ctx: &NodeContext,
    id: &NodeId,
    info: &NodeInfo,
    deadline: Instant,
) -> Result<Routed<MembershipChange>, ServiceError> {
    let (m, pre) = match lead(ctx, None, deadline).await? {
        Routed::Done(v) => v,
        Routed::Leader(leader) => return Ok(Routed::Leader(leader)),
    };
    let Some(existing) = m.membership_config.membership().get_node(id) else {
        return Err(not_a_member(id));
    };
    if existing == info {
        return Ok(Routed::Done(membership_change(&m, false, None)));
    }
    tracing::info!(node = %id, raft_addr = %info.raft_addr, grpc_addr = %info.grpc_addr, "changing a member's addresses");
    let what = format!("changing the addresses of {id}");
    let nodes = BTreeMap::from([(id.clone(), info.clone())]);
    let change = || ctx.raft.change_membership_if(ChangeMembers::SetNodes(nodes.clone()), true, pre.clone());
    propose_membership(ctx, deadline, &what, change).await
}

/// Chooses whom to hand leadership to: `to` if given (it must be another voter), else the
/// voter other than this leader whose log matches furthest.
fn transfer_target(m: &Metrics, me: &NodeId, to: Option<&NodeId>) -> Result<NodeId, ServiceError> {
    let membership = m.membership_config.membership();
    if let Some(to) = to {
        if membership.get_node(to).is_none() {
            return Err(not_a_member(to));
        }
        if !is_voter(m, to) {
            return Err(ServiceError::FailedPrecondition(format!(
                "node {to} is a learner and cannot lead; promote it first (`raftkvctl member promote {to}`)"
            )));
        }
        return Ok(to.clone());
    }
    voters(m).into_iter().filter(|v| v != me).max_by_key(|v| matched_index(m, v)).ok_or_else(|| {
        ServiceError::FailedPrecondition(format!(
            "{me} is the only voter: there is no other voter to hand leadership to"
        ))
    })
}

/// Hands leadership to `to` (or the most caught-up other voter) and waits until a new leader
/// is known. On a node that is not the leader it answers [`Routed::Leader`].
///
/// The target is given up to 2 s (`TRANSFER_CATCH_UP`) to match the leader's last log index
/// first (openraft's target ignores a transfer while its log is behind), and the transfer is
/// triggered again every 500 ms (`TRANSFER_RETRIGGER`) until it takes effect or `deadline` passes.
pub async fn transfer_leadership(
    ctx: &NodeContext,
    to: Option<&NodeId>,
    deadline: Instant,
) -> Result<Routed<Transferred>, ServiceError> {
    let m = match standing(ctx, deadline).await? {
        Routed::Done(m) => m,
        Routed::Leader(l) => return Ok(Routed::Leader(l)),
    };
    if to == Some(&ctx.id) {
        return Ok(Routed::Done(Transferred {
            previous: ctx.id.clone(),
            leader: ctx.id.clone(),
            term: m.current_term,
        }));
    }
    let target = transfer_target(&m, &ctx.id, to)?;
    let last = m.last_log_index.unwrap_or(0);
    let catch_up = remaining(deadline).min(TRANSFER_CATCH_UP);
    let _ = ctx
        .raft
        .wait(Some(catch_up))
        .metrics(|m| matched_index(m, &target).is_some_and(|i| i >= last), "the transfer target to catch up")
        .await;
    tracing::info!(from = %ctx.id, to = %target, term = m.current_term, "transferring leadership");
    loop {
        ctx.raft.trigger().transfer_leader(target.clone()).await.map_err(|_| ServiceError::ShuttingDown)?;
        let left = remaining(deadline);
        if left.is_zero() {
            return Err(ServiceError::DeadlineExceeded(format!(
                "leadership was not handed to {target} in time; the transfer may still take effect"
            )));
        }
        let me = ctx.id.clone();
        let waited = ctx
            .raft
            .wait(Some(left.min(TRANSFER_RETRIGGER)))
            .metrics(|m| m.current_leader.as_ref().is_some_and(|l| *l != me), "a new leader")
            .await;
        if let Ok(now) = waited {
            let leader = now.current_leader.clone().unwrap_or_else(|| target.clone());
            tracing::info!(from = %ctx.id, to = %leader, term = now.current_term, "leadership transferred");
            return Ok(Routed::Done(Transferred { previous: ctx.id.clone(), leader, term: now.current_term }));
        }
        let now = metrics(ctx);
        if now.state != ServerState::Leader && now.current_leader.is_none() {
            // An election is under way; wait for its outcome.
            match standing(ctx, deadline).await? {
                Routed::Leader(l) => {
                    return Ok(Routed::Done(Transferred {
                        previous: ctx.id.clone(),
                        leader: l.id,
                        term: metrics(ctx).current_term,
                    }));
                }
                Routed::Done(_) => {}
            }
        }
        tracing::debug!(to = %target, "leadership transfer has not taken effect yet; triggering it again");
    }
}

/// Makes this node take a snapshot of everything it has applied (unless its current snapshot
/// already covers it), waits for it, and returns its (index, term).
pub async fn snapshot(ctx: &NodeContext, deadline: Instant) -> Result<(u64, u64), ServiceError> {
    let m = metrics(ctx);
    let Some(applied) = m.last_applied.clone() else {
        return Err(ServiceError::FailedPrecondition(
            "this node has applied nothing yet (it is not part of a cluster); there is nothing to snapshot".into(),
        ));
    };
    let covered = |m: &Metrics| m.snapshot.as_ref().is_some_and(|s| s.index >= applied.index);
    if !covered(&m) {
        tracing::info!(applied = applied.index, "snapshot requested");
        loop {
            ctx.raft.trigger().snapshot().await.map_err(|_| ServiceError::ShuttingDown)?;
            let left = remaining(deadline);
            if left.is_zero() {
                return Err(ServiceError::DeadlineExceeded(format!(
                    "the snapshot at index {} was not built in time; it may still be",
                    applied.index
                )));
            }
            let built =
                ctx.raft.wait(Some(left.min(SNAPSHOT_RETRIGGER))).metrics(covered, "the snapshot to be built").await;
            if built.is_ok() {
                break;
            }
        }
    }
    let m = metrics(ctx);
    let snap = m.snapshot.as_ref().map(|s| (s.index, s.leader_id.term)).unwrap_or((0, 0));
    Ok(snap)
}

/// On the leader: confirms leadership with a quorum and waits until everything committed
/// before the call is applied here ([`linearizable::read_barrier`]), and returns that index.
/// Elsewhere it answers [`Routed::Leader`]: the caller gets the index from the leader and
/// then waits with [`wait_applied`].
pub async fn barrier(ctx: &NodeContext, deadline: Instant) -> Result<Routed<u64>, ServiceError> {
    loop {
        let left = remaining(deadline);
        if left.is_zero() {
            return Err(ServiceError::NoLeader);
        }
        let barrier = linearizable::read_barrier(&ctx.raft, Consistency::Linearizable);
        let Ok(result) = tokio::time::timeout(left, barrier).await else {
            return Err(ServiceError::DeadlineExceeded("the barrier did not complete in time".into()));
        };
        match result {
            Ok(index) => return Ok(Routed::Done(index)),
            Err(BarrierError::NotLeader { leader: Some((id, node)) }) if id != ctx.id => {
                return Ok(Routed::Leader(Leader { id, node }));
            }
            Err(BarrierError::NotLeader { .. }) => {
                if let Routed::Leader(l) = standing(ctx, deadline).await? {
                    return Ok(Routed::Leader(l));
                }
                tokio::time::sleep(Duration::from_millis(20).min(remaining(deadline))).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Raises or clears an alarm through the log; returns the entry's index once it is applied
/// here, or the leader to forward to.
pub async fn change_alarm(
    ctx: &NodeContext,
    cmd: AlarmCommand,
    deadline: Instant,
) -> Result<Routed<u64>, ServiceError> {
    Ok(match ctx.write(Command::Alarm(cmd), remaining(deadline)).await? {
        Routed::Done((index, _)) => Routed::Done(index),
        Routed::Leader(l) => Routed::Leader(l),
    })
}

/// Waits until this node has applied `index` ([`linearizable::wait_applied`]).
pub async fn wait_applied(ctx: &NodeContext, index: u64, deadline: Instant) -> Result<u64, ServiceError> {
    match linearizable::wait_applied(ctx.sm.subscribe_applied(), index, remaining(deadline)).await {
        Ok(applied) => Ok(applied),
        Err(WaitError::Closed) => Err(ServiceError::ShuttingDown),
        Err(_) => Err(ServiceError::DeadlineExceeded(format!(
            "this node had applied {} of the {index} entries committed before the call when the deadline passed",
            ctx.sm.applied_index()
        ))),
    }
}

/// What a leader verification found.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The term.
    pub term: u64,
    /// The commit index the quorum round confirmed.
    pub read_index: u64,
}

/// Confirms with a quorum that this node is the leader ([`linearizable::leader_read_index`]).
/// Never forwards: a follower answers `NotLeader` with the leader hint.
pub async fn verify_leader(ctx: &NodeContext, deadline: Instant) -> Result<Verified, ServiceError> {
    let check = linearizable::leader_read_index(&ctx.raft, Consistency::Linearizable);
    let Ok(result) = tokio::time::timeout(remaining(deadline), check).await else {
        return Err(ServiceError::DeadlineExceeded("the leadership check did not complete in time".into()));
    };
    match result {
        Ok(read_index) => Ok(Verified { term: metrics(ctx).current_term, read_index }),
        Err(BarrierError::NotLeader { leader: Some((l, _)) }) if l != ctx.id => {
            let addr = ctx.resolver.resolve(&l).map(|n| n.grpc_addr).filter(|a| !a.is_empty());
            Err(ServiceError::NotLeader { id: l, addr })
        }
        Err(BarrierError::NotLeader { .. }) => Err(ServiceError::NoLeader),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use openraft::impls::leader_id_adv::LeaderId;
    use types::{LogId, Membership, StoredMembership};

    use super::*;

    fn node(i: u64) -> NodeInfo {
        NodeInfo { raft_addr: format!("127.0.0.1:{}", 5000 + i), grpc_addr: format!("127.0.0.1:{}", 4000 + i) }
    }

    /// Metrics of leader 1 with `voters` and `learners`, and replication progress `matched`.
    fn leader_metrics(voters: &[u64], learners: &[u64], matched: &[(u64, u64)]) -> Metrics {
        let nodes: BTreeMap<NodeId, NodeInfo> =
            voters.iter().chain(learners).map(|i| (NodeId::from(*i), node(*i))).collect();
        let voter_set: BTreeSet<NodeId> = voters.iter().map(|i| NodeId::from(*i)).collect();
        let membership = Membership::new(vec![voter_set], nodes).unwrap_or_else(|e| panic!("{e}"));
        let leader = LeaderId { term: 3, node_id: NodeId::from(1) };
        let mut m = Metrics::new_initial(NodeId::from(1));
        m.state = ServerState::Leader;
        m.current_leader = Some(NodeId::from(1));
        m.last_log_index = Some(100);
        m.membership_config = Arc::new(StoredMembership::new(Some(LogId::new(leader.clone(), 7)), membership));
        m.replication =
            Some(matched.iter().map(|(id, idx)| (NodeId::from(*id), Some(LogId::new(leader.clone(), *idx)))).collect());
        m
    }

    #[test]
    fn transfer_goes_to_the_most_caught_up_other_voter() {
        let m = leader_metrics(&[1, 2, 3], &[4], &[(1, 100), (2, 90), (3, 99), (4, 100)]);
        let me = NodeId::from(1);
        assert_eq!(transfer_target(&m, &me, None).ok(), Some(NodeId::from(3)));
        assert_eq!(transfer_target(&m, &me, Some(&NodeId::from(2))).ok(), Some(NodeId::from(2)));
        let e = transfer_target(&m, &me, Some(&NodeId::from(4))).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("learner") && e.contains("promote"), "{e}");
        let e = transfer_target(&m, &me, Some(&NodeId::from(9)));
        assert!(matches!(e, Err(ServiceError::NotFound(_))));
    }

    #[test]
    fn a_lone_voter_has_no_one_to_transfer_to() {
        let m = leader_metrics(&[1], &[2], &[(1, 100), (2, 100)]);
        let e = transfer_target(&m, &NodeId::from(1), None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("only voter"), "{e}");
    }

    #[test]
    fn the_last_voter_is_never_demoted_or_removed() {
        let m = leader_metrics(&[1], &[2], &[]);
        let e = refuse_last_voter(&m, &NodeId::from(1), "remove").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("cannot remove 1") && e.contains("only voter"), "{e}");
        assert!(refuse_last_voter(&m, &NodeId::from(2), "remove").is_ok());
        let m = leader_metrics(&[1, 2], &[], &[]);
        assert!(refuse_last_voter(&m, &NodeId::from(1), "demote").is_ok());
    }

    #[test]
    fn matched_index_of_self_is_the_last_log_index() {
        let m = leader_metrics(&[1, 2], &[], &[(2, 42)]);
        assert_eq!(matched_index(&m, &NodeId::from(1)), Some(100));
        assert_eq!(matched_index(&m, &NodeId::from(2)), Some(42));
        assert_eq!(matched_index(&m, &NodeId::from(3)), None);
    }

    #[test]
    fn other_addresses_for_a_member_are_refused() {
        let id = NodeId::from(2);
        assert!(check_same_addresses(&id, &node(2), &node(2)).is_ok());
        let e = check_same_addresses(&id, &node(2), &node(3)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("already a member") && e.contains("remove it"), "{e}");
    }
}
