//! The node's background work beside openraft: the periodic snapshot check, publishing this
//! node's state over gossip, auto-join, and the leadership hand-over before a planned stop.

use std::time::Duration;

use fsm::Raft;
use gossip::{Gossip, Liveness};
use openraft::async_runtime::WatchReceiver;
use proto::admin::v1::AddVoterRequest;
use proto::admin::v1::admin_client::AdminClient;
use proto::auth::v1::AuthenticateRequest;
use proto::auth::v1::auth_client::AuthClient;
use rpc::channel::{ChannelOptions, Security};
use rpc::tls::ClientTls;
use service::NodeContext;
use service::Routed;
use service::cluster::transfer_leadership;
use tokio::sync::watch;
use types::{NodeId, NodeInfo};

/// Checks every `interval` whether entries were applied since the last snapshot, and if so
/// asks openraft for one (openraft has only a log-count policy; this is the seed's
/// `SnapshotInterval`). Ends when `stop` is set.
pub(crate) async fn snapshot_timer(raft: Raft, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let m = raft.metrics().borrow_watched().clone();
        let applied = types::index_of(m.last_applied.as_ref());
        let snapshot = types::index_of(m.snapshot.as_ref());
        if applied > snapshot {
            tracing::info!(applied, snapshot, interval = ?interval, "entries applied since the last snapshot; taking one");
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
    }
}

/// How long one AddVoter call of auto-join may take (catching up a large state included).
const JOIN_CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest pause between two rounds of auto-join.
const JOIN_MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Whether `me` is a voter in the membership this node knows.
fn is_voter(raft: &Raft, me: &NodeId) -> bool {
    raft.metrics().borrow_watched().membership_config.membership().voter_ids().any(|v| v == *me)
}

/// Publishes this node's role, the leader it sees and its applied index over gossip when
/// they change, at most once per gossip interval. Ends when `stop` is set.
pub(crate) async fn publish_to_gossip(raft: Raft, gossip: Gossip, mut stop: watch::Receiver<bool>) {
    let mut metrics = raft.metrics();
    let interval = gossip.config().interval;
    loop {
        let m = metrics.borrow_watched().clone();
        let role = match m.state {
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Follower => "follower",
            openraft::ServerState::Candidate => "candidate",
            openraft::ServerState::Learner => "learner",
            openraft::ServerState::Shutdown => "shutdown",
        };
        gossip.publish_state(role, m.current_leader.as_ref(), types::index_of(m.last_applied.as_ref())).await;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Whom auto-join asks: the members named with `--join`, and with gossip on the live nodes
/// gossip finds (leaders first, then nodes that see a leader).
pub(crate) struct JoinSeeds {
    /// `--join` addresses (gRPC).
    pub(crate) named: Vec<String>,
    /// Gossip, when on.
    pub(crate) gossip: Option<Gossip>,
    /// The node's outbound TLS, when on (each seed's certificate is verified for its host).
    pub(crate) tls: Option<std::sync::Arc<ClientTls>>,
    /// The user this node authenticates as when the cluster has authentication on
    /// (`--join-user`; it needs the root role).
    pub(crate) credentials: Option<crate::config::JoinCredentials>,
}

impl JoinSeeds {
    /// The gRPC addresses to ask this round, without `me` and without repeats.
    async fn round(&self, id: &NodeId, me: &NodeInfo) -> Vec<String> {
        let mut found = Vec::new();
        if let Some(g) = &self.gossip {
            let mut live: Vec<_> =
                g.view().await.into_values().filter(|p| p.liveness == Liveness::Live && p.meta.id != *id).collect();
            live.sort_by_key(|p| (p.meta.role != "leader", p.meta.leader.is_none()));
            found.extend(live.into_iter().map(|p| p.meta.addrs.grpc_addr));
        }
        let mut seeds: Vec<String> = Vec::new();
        for s in found.into_iter().chain(self.named.iter().cloned()) {
            if s != me.grpc_addr && !seeds.contains(&s) {
                seeds.push(s);
            }
        }
        seeds
    }
}

/// Asks the members `seeds` names (gRPC addresses), one after the other, to add this node as
/// a voter, with a growing pause between rounds, until one succeeds or this node is a voter.
/// Does nothing if the node already has Raft state. Ends when `stop` is set.
pub(crate) async fn auto_join(raft: Raft, id: NodeId, me: NodeInfo, seeds: JoinSeeds, mut stop: watch::Receiver<bool>) {
    match raft.is_initialized().await {
        Ok(true) => {
            tracing::info!(node = %id, "existing Raft state found; --join has nothing to do");
            return;
        }
        Ok(false) => {}
        Err(_) => return,
    }
    let mut backoff = Duration::from_millis(200);
    let mut round = 0u32;
    loop {
        let this_round = seeds.round(&id, &me).await;
        if this_round.is_empty() {
            tracing::info!(node = %id, round, "no member to ask yet (gossip has found none); will retry");
        }
        for seed in &this_round {
            if is_voter(&raft, &id) {
                tracing::info!(node = %id, "this node is a voter; auto-join done");
                return;
            }
            let attempt = join_once(seed, &id, &me, seeds.tls.as_deref(), seeds.credentials.as_ref());
            let result = tokio::select! {
                r = attempt => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            match result {
                Ok(index) => {
                    tracing::info!(node = %id, via = %seed, membership_index = index, "joined the cluster as a voter");
                    return;
                }
                Err(status) => {
                    let denied = matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied);
                    let fatal = matches!(status.code(), tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument);
                    if denied {
                        let fix = if seeds.credentials.is_some() {
                            "check --join-user and its password (the user needs the root role)"
                        } else {
                            "the cluster has authentication enabled: give --join-user NAME (a user with the root role) and its password (--join-password-file or RAFTKV_JOIN_PASSWORD)"
                        };
                        tracing::error!(node = %id, via = %seed, code = ?status.code(), error = %status.message(), fix,
                            "the cluster refused to add this node: not authorized (it will keep asking)");
                    } else if fatal {
                        tracing::error!(node = %id, via = %seed, code = ?status.code(), error = %status.message(),
                            "the cluster refused to add this node; fix the cause (it will keep asking)");
                    } else {
                        tracing::warn!(node = %id, via = %seed, code = ?status.code(), error = %status.message(),
                            round, "asking to join failed; will retry");
                    }
                }
            }
        }
        round += 1;
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(JOIN_MAX_BACKOFF);
    }
}

/// One AddVoter call to `seed`; returns the membership index. With `credentials`, it first
/// authenticates at `seed` and sends the token (none when the cluster has auth off).
async fn join_once(
    seed: &str,
    id: &NodeId,
    me: &NodeInfo,
    tls: Option<&ClientTls>,
    credentials: Option<&crate::config::JoinCredentials>,
) -> Result<u64, tonic::Status> {
    let options = ChannelOptions { connect_timeout: Some(Duration::from_secs(2)), keepalive: None };
    let security = match tls {
        Some(tls) => Security::Tls { tls, name: rpc::tls::host_of(seed) },
        None => Security::Plaintext,
    };
    let endpoint = rpc::channel::endpoint(seed, &options, security)
        .map_err(|e| tonic::Status::invalid_argument(format!("--join {seed}: {e}")))?;
    let channel = endpoint.connect().await.map_err(|e| {
        tonic::Status::unavailable(format!("cannot connect to {seed}: {}", rpc::status::error_chain(&e)))
    })?;
    let mut request = tonic::Request::new(AddVoterRequest {
        id: id.to_string(),
        raft_addr: me.raft_addr.clone(),
        grpc_addr: me.grpc_addr.clone(),
        if_membership_index: None,
    });
    request.set_timeout(JOIN_CALL_TIMEOUT);
    if let Some(c) = credentials {
        let mut auth = tonic::Request::new(AuthenticateRequest { name: c.user.clone(), password: c.password.clone() });
        auth.set_timeout(JOIN_CALL_TIMEOUT);
        match AuthClient::new(channel.clone()).authenticate(auth).await {
            Ok(resp) => {
                let value = format!("Bearer {}", resp.into_inner().token)
                    .parse()
                    .map_err(|_| tonic::Status::internal("the token answered cannot be sent as a header"))?;
                request.metadata_mut().insert(rpc::metadata::AUTHORIZATION_HEADER, value);
            }
            // Authentication is off: AddVoter needs no token.
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {}
            Err(s) => return Err(s),
        }
    }
    tracing::info!(node = %id, via = %seed, raft_addr = %me.raft_addr, grpc_addr = %me.grpc_addr, user = credentials.map(|c| c.user.as_str()), "asking to join the cluster");
    Ok(AdminClient::new(channel).add_voter(request).await?.into_inner().index)
}

/// Before a planned stop: if this node leads and another voter exists, hands leadership to
/// the most caught-up voter, waiting at most `bound`, so the cluster does not wait an
/// election timeout for a new leader.
pub(crate) async fn hand_over_leadership(ctx: &NodeContext, bound: Duration) {
    let m = ctx.raft.metrics().borrow_watched().clone();
    let leads = m.current_leader.as_ref() == Some(&ctx.id) && m.state == openraft::ServerState::Leader;
    let others = m.membership_config.membership().voter_ids().any(|v| v != ctx.id);
    if !leads || !others {
        return;
    }
    tracing::info!(node = %ctx.id, bound = ?bound, "stopping while leader: handing leadership over first");
    match transfer_leadership(ctx, None, tokio::time::Instant::now() + bound).await {
        Ok(Routed::Done(t)) => {
            tracing::info!(node = %ctx.id, new_leader = %t.leader, term = t.term, "leadership handed over before stopping");
        }
        Ok(Routed::Leader(l)) => tracing::info!(node = %ctx.id, leader = %l.id, "no longer the leader"),
        Err(e) => tracing::warn!(node = %ctx.id, error = %e, "leadership hand-over failed; stopping anyway"),
    }
}
