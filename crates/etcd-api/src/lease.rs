//! `etcdserverpb.Lease`: LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive and
//! LeaseLeases, as etcd has them.
//!
//! What every node must agree on is replicated ([`types::lease`]): a lease's id and granted
//! TTL, and the keys attached to it, in the state machine. **Time is the leader's alone**,
//! kept in memory ([`Lessor`]), as in etcd: each lease's deadline, on a monotonic clock
//! (tokio's `Instant`). A keep-alive renews the deadline to the full TTL on the leader; the
//! leader's expiry loop ([`EtcdLease::start_expiry`]) sees a deadline pass and proposes a
//! revoke through the log, so every node deletes the lease's keys at the same index. When a
//! node becomes leader (a new term), every lease's deadline is set to its full TTL (etcd's
//! extension on promotion), so a leader change never expires a lease early; it may expire
//! one up to a TTL late.
//!
//! A follower forwards what needs the leader's clock (KeepAlive, TimeToLive) and every
//! change (Grant, Revoke) to the leader, once, as the KV service forwards writes; a
//! keep-alive stream stays with the member the client chose, and each keep-alive on it is
//! forwarded on its own. Leases (the list) is answered from this node's state after a
//! linearizable read index.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use linearizable::Consistency;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use proto::etcd::etcdserverpb::lease_client::LeaseClient;
use proto::etcd::etcdserverpb::lease_server::{Lease, LeaseServer};
use proto::etcd::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use service::cluster::barrier;
use service::forward::{Effect, Forwarding, deadline, to_leader};
use service::{DEFAULT_REQUEST_TIMEOUT, MAX_DECODE_BYTES, Routed, ServiceError};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use types::{Command, CommandResult, LeaseCommand, LeaseId, LeaseOutcome};

use crate::{EtcdError, Node};

/// The shortest TTL a lease is granted, in seconds: a shorter (or zero) request is raised
/// to it, as etcd raises it to its `minLeaseTTL` (1.5 election timeouts, rounded up: 2 s
/// with etcd's defaults). A lease must outlive a leader election, or a leader change would
/// expire it before a client could reach the new leader.
pub const MIN_LEASE_TTL: i64 = 2;

/// The longest TTL a lease is granted, in seconds: etcd's `MaxLeaseTTL` (9 000 000 000 s).
/// Past it: "etcdserver: too large lease TTL".
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// How often the leader's expiry loop looks for leases past their deadline (etcd checks
/// every 500 ms); a lease is revoked at most this late.
pub const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// The most expired leases the leader revokes per check (each is one log entry); the rest
/// wait for the next check. etcd's `leaseRevokeRate` is 1000 a second; this is 400.
pub const MAX_REVOKES_PER_CHECK: usize = 100;

/// After the leader proposed the revoke of an expired lease, it proposes it again only if
/// the lease still exists this much later (the first proposal failed or was lost).
const REVOKE_RETRY: Duration = Duration::from_secs(2);

/// How many answers of one keep-alive stream wait for the client before the stream stops
/// reading its requests.
const STREAM_BUFFER: usize = 16;

/// How many ids a grant with id 0 tries before giving up (an id the generator chose that
/// already exists is tried again with the next one).
const GRANT_ID_ATTEMPTS: usize = 8;

type ResponseStream = service::watch::ResponseStream<LeaseKeepAliveResponse>;

/// A client of the leader's etcd Lease service, with the decode limit both ways.
fn leader_client(channel: Channel) -> LeaseClient<Channel> {
    LeaseClient::new(channel).max_decoding_message_size(MAX_DECODE_BYTES).max_encoding_message_size(MAX_DECODE_BYTES)
}

/// The TTL a grant asks for as the lease is granted: raised to [`MIN_LEASE_TTL`], refused
/// past [`MAX_LEASE_TTL`].
pub(crate) fn granted_ttl(requested: i64) -> Result<i64, EtcdError> {
    if requested > MAX_LEASE_TTL {
        return Err(EtcdError::LeaseTtlTooLarge);
    }
    Ok(requested.max(MIN_LEASE_TTL))
}

/// etcd's id generator (`idutil.Generator`): the member id's low 16 bits, then 48 bits that
/// start at the milliseconds of the start (shifted left 8) and count up, so ids differ
/// between members and across restarts. Only positive ids are used.
#[derive(Debug)]
struct IdGenerator {
    prefix: u64,
    suffix: AtomicU64,
}

const SUFFIX_BITS: u32 = 48;

impl IdGenerator {
    fn new(member_id: u64) -> Self {
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let start = u64::try_from(millis).unwrap_or(0) << 8;
        Self { prefix: (member_id & 0xffff) << SUFFIX_BITS, suffix: AtomicU64::new(start) }
    }

    fn next(&self) -> LeaseId {
        loop {
            let suffix = self.suffix.fetch_add(1, Ordering::Relaxed).wrapping_add(1) & ((1 << SUFFIX_BITS) - 1);
            let id = (self.prefix | suffix) & (i64::MAX as u64);
            if let Ok(id) = LeaseId::try_from(id)
                && id > 0
            {
                return id;
            }
        }
    }
}

/// The leader's clock of the leases: each lease's deadline, set in the term it was set in.
#[derive(Debug, Default)]
struct Clock {
    /// The term the deadlines belong to; none when this node does not lead.
    term: Option<u64>,
    /// Lease → the instant it expires unless kept alive.
    deadlines: HashMap<LeaseId, Instant>,
    /// Lease → when its revoke was last proposed.
    revoking: HashMap<LeaseId, Instant>,
}

/// The leases' deadlines on the leader (in memory; a follower keeps none).
#[derive(Debug, Default)]
pub(crate) struct Lessor {
    clock: Mutex<Clock>,
}

impl Lessor {
    fn lock(&self) -> std::sync::MutexGuard<'_, Clock> {
        self.clock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Brings the deadlines up to `leases` (id, granted TTL), the state as applied here, as
    /// the leader of `term` at `now`: in a new term every lease gets its full TTL (the
    /// extension on promotion); in the same term a lease not seen yet gets its full TTL
    /// and a lease no longer in the state is forgotten.
    fn sync(&self, term: u64, leases: &[(LeaseId, i64)], now: Instant) {
        let mut clock = self.lock();
        if clock.term != Some(term) {
            clock.deadlines.clear();
            clock.revoking.clear();
            clock.term = Some(term);
            tracing::info!(term, leases = leases.len(), "leading: every lease's deadline set to its full TTL");
        }
        let live: HashMap<LeaseId, i64> = leases.iter().copied().collect();
        clock.deadlines.retain(|id, _| live.contains_key(id));
        clock.revoking.retain(|id, _| live.contains_key(id));
        for (id, ttl) in leases {
            clock.deadlines.entry(*id).or_insert_with(|| now + ttl_duration(*ttl));
        }
    }

    /// This node no longer leads: it forgets every deadline.
    fn demote(&self) {
        let mut clock = self.lock();
        if clock.term.take().is_some() {
            clock.deadlines.clear();
            clock.revoking.clear();
            tracing::info!("no longer leading: the leases' deadlines are the new leader's");
        }
    }

    /// Sets lease `id`'s deadline to `ttl` from `now`, unless it already passed (the lease
    /// is expiring: its revoke is proposed or about to be). Whether it was renewed.
    fn renew(&self, id: LeaseId, ttl: i64, now: Instant) -> bool {
        let mut clock = self.lock();
        match clock.deadlines.get(&id) {
            Some(deadline) if *deadline <= now => false,
            _ => {
                clock.deadlines.insert(id, now + ttl_duration(ttl));
                true
            }
        }
    }

    /// The time lease `id` has left at `now`, if this node keeps its deadline.
    fn remaining(&self, id: LeaseId, now: Instant) -> Option<Duration> {
        self.lock().deadlines.get(&id).map(|d| d.saturating_duration_since(now))
    }

    /// Forgets lease `id` (revoked).
    fn forget(&self, id: LeaseId) {
        let mut clock = self.lock();
        clock.deadlines.remove(&id);
        clock.revoking.remove(&id);
    }

    /// The leases past their deadline at `now` whose revoke is not already under way, at
    /// most [`MAX_REVOKES_PER_CHECK`], marked as being revoked.
    fn expired(&self, now: Instant) -> Vec<LeaseId> {
        let mut clock = self.lock();
        let Clock { deadlines, revoking, .. } = &mut *clock;
        let mut due: Vec<(Instant, LeaseId)> = deadlines
            .iter()
            .filter(|(id, d)| **d <= now && revoking.get(id).is_none_or(|at| now.duration_since(*at) >= REVOKE_RETRY))
            .map(|(id, d)| (*d, *id))
            .collect();
        due.sort_unstable();
        due.truncate(MAX_REVOKES_PER_CHECK);
        for (_, id) in &due {
            revoking.insert(*id, now);
        }
        due.into_iter().map(|(_, id)| id).collect()
    }
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

/// The `etcdserverpb.Lease` service of one node.
#[derive(Debug, Clone)]
pub struct EtcdLease {
    node: Node,
    lessor: Arc<Lessor>,
    ids: Arc<IdGenerator>,
}

impl EtcdLease {
    pub(crate) fn new(node: Node) -> Self {
        let ids = Arc::new(IdGenerator::new(node.member_id));
        Self { node, lessor: Arc::default(), ids }
    }

    /// The tonic server for this service, with the decode limit applied.
    #[must_use]
    pub fn into_server(self) -> LeaseServer<Self> {
        LeaseServer::new(self).max_decoding_message_size(MAX_DECODE_BYTES)
    }

    /// Starts the expiry loop: every [`EXPIRY_CHECK_INTERVAL`], while this node leads, it
    /// revokes (through the log) each lease whose deadline passed. It ends when `stop`
    /// becomes true or its sender is dropped (the node stops).
    pub fn start_expiry(&self, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EXPIRY_CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    gone = async { stop.wait_for(|s| *s).await.is_err() } => {
                        if gone {
                            tracing::debug!("lease expiry loop: the node's stop signal is gone");
                        }
                        break;
                    }
                    _ = tick.tick() => this.check_expiry().await,
                }
            }
            this.lessor.demote();
            tracing::debug!("lease expiry loop stopped");
        })
    }

    /// The term this node leads in, if it leads.
    fn leading(&self) -> Option<u64> {
        let metrics = self.node.ctx.raft.metrics();
        let m = metrics.borrow_watched();
        (m.state == ServerState::Leader).then_some(m.current_term)
    }

    /// On the leader: brings the deadlines up to the applied state. Elsewhere: forgets them.
    fn sync(&self) -> Result<Option<u64>, EtcdError> {
        match self.leading() {
            Some(term) => {
                let leases = self.node.ctx.sm.leases()?;
                self.lessor.sync(term, &leases, Instant::now());
                Ok(Some(term))
            }
            None => {
                self.lessor.demote();
                Ok(None)
            }
        }
    }

    async fn check_expiry(&self) {
        match self.sync() {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "lease expiry: reading the leases failed; retrying at the next check");
                return;
            }
        }
        let expired = self.lessor.expired(Instant::now());
        let revokes = expired.into_iter().map(|id| async move { (id, self.propose_revoke(id).await) });
        for (id, result) in join_all(revokes).await {
            match result {
                Ok(Routed::Done((index, LeaseOutcome::Revoked { deleted }))) => {
                    self.lessor.forget(id);
                    tracing::info!(lease = id, index, deleted, "lease expired: revoked through the log");
                }
                Ok(Routed::Done((_, LeaseOutcome::NotFound))) => self.lessor.forget(id),
                Ok(Routed::Done((index, other))) => {
                    tracing::warn!(lease = id, index, outcome = ?other, "lease expiry: unexpected revoke outcome");
                }
                Ok(Routed::Leader(leader)) => {
                    tracing::debug!(lease = id, leader = %leader.id, "lease expiry: no longer leading");
                    self.lessor.demote();
                }
                Err(e) => tracing::warn!(lease = id, error = %e, "lease expiry: the revoke failed; it is retried"),
            }
        }
    }

    /// Proposes a lease command here; [`Routed::Leader`] when only the leader can.
    async fn propose(&self, cmd: LeaseCommand, timeout: Duration) -> Result<Routed<(u64, LeaseOutcome)>, EtcdError> {
        Ok(match self.node.ctx.write(Command::Lease(cmd), timeout).await? {
            Routed::Done((index, CommandResult::Lease(outcome))) => Routed::Done((index, outcome)),
            Routed::Done((index, other)) => {
                return Err(ServiceError::Internal(
                    format!("the lease command at index {index} answered {other:?}").into(),
                )
                .into());
            }
            Routed::Leader(leader) => Routed::Leader(leader),
        })
    }

    async fn propose_revoke(&self, id: LeaseId) -> Result<Routed<(u64, LeaseOutcome)>, EtcdError> {
        self.propose(LeaseCommand::Revoke { id }, DEFAULT_REQUEST_TIMEOUT).await
    }

    fn header(&self, revision: u64) -> Option<proto::etcd::etcdserverpb::ResponseHeader> {
        Some(self.node.header(revision))
    }

    async fn do_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let timeout = deadline(request.metadata(), DEFAULT_REQUEST_TIMEOUT);
        let how = Forwarding::of(request.metadata(), Effect::Write, Instant::now() + timeout);
        let req = request.into_inner();
        let ttl = granted_ttl(req.ttl)?;
        if req.id < 0 {
            return Err(EtcdError::Unsupported(format!(
                "lease ID {} is negative: give a positive ID, or 0 to have one chosen",
                req.id
            ))
            .into());
        }
        let until = Instant::now() + timeout;
        for _ in 0..GRANT_ID_ATTEMPTS {
            // Chosen here only when this node proposes (it leads); a follower forwards the 0.
            let id = if req.id == 0 { self.ids.next() } else { req.id };
            let left = until.saturating_duration_since(Instant::now());
            match self.propose(LeaseCommand::Grant { id, ttl }, left).await? {
                Routed::Done((index, LeaseOutcome::Granted { id, ttl })) => {
                    // The grant was applied here, the leader: its clock starts now.
                    self.lessor.renew(id, ttl, Instant::now());
                    tracing::debug!(lease = id, ttl, index, "lease granted");
                    return Ok(Response::new(LeaseGrantResponse {
                        header: self.header(index),
                        id,
                        ttl,
                        error: String::new(),
                    }));
                }
                Routed::Done((_, LeaseOutcome::Exists)) if req.id == 0 => continue,
                Routed::Done((_, LeaseOutcome::Exists)) => return Err(EtcdError::LeaseExists.into()),
                Routed::Done((index, other)) => {
                    return Err(EtcdError::Service(ServiceError::Internal(
                        format!("the grant at index {index} answered {other:?}").into(),
                    ))
                    .into());
                }
                Routed::Leader(leader) => {
                    return to_leader(&self.node.ctx, leader, how, req, |ch, r| async move {
                        leader_client(ch).lease_grant(r).await
                    })
                    .await;
                }
            }
        }
        Err(EtcdError::LeaseExists.into())
    }

    async fn do_revoke(&self, request: Request<LeaseRevokeRequest>) -> Result<Response<LeaseRevokeResponse>, Status> {
        let timeout = deadline(request.metadata(), DEFAULT_REQUEST_TIMEOUT);
        let how = Forwarding::of(request.metadata(), Effect::Write, Instant::now() + timeout);
        let req = request.into_inner();
        match self.propose(LeaseCommand::Revoke { id: req.id }, timeout).await? {
            Routed::Done((index, LeaseOutcome::Revoked { deleted })) => {
                self.lessor.forget(req.id);
                tracing::debug!(lease = req.id, index, deleted, "lease revoked");
                Ok(Response::new(LeaseRevokeResponse { header: self.header(index) }))
            }
            Routed::Done((_, LeaseOutcome::NotFound)) => Err(EtcdError::LeaseNotFound.into()),
            Routed::Done((index, other)) => Err(EtcdError::Service(ServiceError::Internal(
                format!("the revoke at index {index} answered {other:?}").into(),
            ))
            .into()),
            Routed::Leader(leader) => {
                to_leader(
                    &self.node.ctx,
                    leader,
                    how,
                    req,
                    |ch, r| async move { leader_client(ch).lease_revoke(r).await },
                )
                .await
            }
        }
    }

    /// Confirms this node leads and has applied everything committed before the call
    /// ([`service::cluster::barrier`]), then brings its deadlines up to the state; or the
    /// leader to forward to.
    async fn as_leader(&self, until: Instant) -> Result<Routed<u64>, EtcdError> {
        match barrier(&self.node.ctx, until).await? {
            Routed::Done(index) => {
                if self.sync()?.is_none() {
                    // Lost the leadership since the barrier: the caller retries elsewhere.
                    return Err(ServiceError::NoLeader.into());
                }
                Ok(Routed::Done(index))
            }
            Routed::Leader(leader) => Ok(Routed::Leader(leader)),
        }
    }

    /// One keep-alive: on the leader, renews the lease to its full TTL and answers the TTL
    /// (0 when the lease does not exist or is expiring, as etcd answers); elsewhere, sent
    /// to the leader on a stream of its own.
    async fn keep_alive(&self, md: &MetadataMap, id: LeaseId) -> Result<LeaseKeepAliveResponse, Status> {
        let timeout = deadline(md, DEFAULT_REQUEST_TIMEOUT);
        let until = Instant::now() + timeout;
        match self.as_leader(until).await? {
            Routed::Done(index) => {
                let ttl = match self.node.ctx.sm.lease(id, false).map_err(EtcdError::from)? {
                    Some(lease) if self.lessor.renew(id, lease.ttl, Instant::now()) => lease.ttl,
                    _ => 0,
                };
                Ok(LeaseKeepAliveResponse { header: self.header(index), id, ttl })
            }
            Routed::Leader(leader) => {
                let how = Forwarding::of(md, Effect::Read, until);
                let req = LeaseKeepAliveRequest { id };
                let answer = to_leader(&self.node.ctx, leader, how, req, |ch, r| async move {
                    let (md, ext, msg) = r.into_parts();
                    let once = Request::from_parts(md, ext, futures::stream::iter([msg]));
                    let mut answers = leader_client(ch).lease_keep_alive(once).await?.into_inner();
                    match answers.message().await? {
                        Some(answer) => Ok(Response::new(answer)),
                        None => {
                            Err(Status::unavailable("the leader ended the keep-alive stream without an answer; retry"))
                        }
                    }
                })
                .await?;
                Ok(answer.into_inner())
            }
        }
    }

    async fn do_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let timeout = deadline(request.metadata(), DEFAULT_REQUEST_TIMEOUT);
        let until = Instant::now() + timeout;
        let how = Forwarding::of(request.metadata(), Effect::Read, until);
        let req = request.into_inner();
        match self.as_leader(until).await? {
            Routed::Done(index) => {
                let Some(lease) = self.node.ctx.sm.lease(req.id, req.keys).map_err(EtcdError::from)? else {
                    // etcd's answer for a lease that does not exist: TTL -1, no error.
                    return Ok(Response::new(LeaseTimeToLiveResponse {
                        header: self.header(index),
                        id: req.id,
                        ttl: -1,
                        ..Default::default()
                    }));
                };
                let left = self.lessor.remaining(req.id, Instant::now()).unwrap_or_else(|| ttl_duration(lease.ttl));
                Ok(Response::new(LeaseTimeToLiveResponse {
                    header: self.header(index),
                    id: req.id,
                    // As etcd: whole seconds left, rounded down.
                    ttl: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                    granted_ttl: lease.ttl,
                    keys: lease.keys.into_iter().map(Into::into).collect(),
                }))
            }
            Routed::Leader(leader) => {
                to_leader(&self.node.ctx, leader, how, req, |ch, r| async move {
                    leader_client(ch).lease_time_to_live(r).await
                })
                .await
            }
        }
    }

    async fn do_leases(&self, request: Request<LeaseLeasesRequest>) -> Result<LeaseLeasesResponse, EtcdError> {
        let timeout = deadline(request.metadata(), DEFAULT_REQUEST_TIMEOUT);
        self.node.ctx.read_index(Consistency::Linearizable, timeout).await?;
        let applied = self.node.ctx.sm.applied_index();
        let leases = self.node.ctx.sm.leases()?;
        Ok(LeaseLeasesResponse {
            header: self.header(applied),
            leases: leases.into_iter().map(|(id, _)| LeaseStatus { id }).collect(),
        })
    }
}

/// Ends when `closed` becomes true (the node stops); never if its sender is gone.
async fn stopping(closed: &mut watch::Receiver<bool>) {
    if closed.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[tonic::async_trait]
impl Lease for EtcdLease {
    type LeaseKeepAliveStream = ResponseStream;

    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        self.do_grant(request).await
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        self.do_revoke(request).await
    }

    /// Each request on the stream is answered in order; a failure ends the stream with its
    /// status (etcd's clients open a new one). The stream ends when the client ends its
    /// side, or the node stops.
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let (md, _, mut incoming) = request.into_parts();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let this = self.clone();
        let mut closed = self.node.ctx.sm.subscribe_watches_closed();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    biased;
                    () = stopping(&mut closed) => {
                        let _ = tx.send(Err(ServiceError::ShuttingDown.into())).await;
                        return;
                    }
                    () = tx.closed() => return,
                    next = incoming.message() => next,
                };
                let req = match next {
                    Ok(Some(req)) => req,
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(error = %status, "etcd keep-alive stream: the client's side failed");
                        return;
                    }
                };
                let answer = this.keep_alive(&md, req.id).await;
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        let out = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        Ok(Response::new(Box::pin(out) as ResponseStream))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.do_time_to_live(request).await
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        Ok(Response::new(self.do_leases(request).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_raised_to_the_minimum_and_refused_past_the_maximum() {
        assert_eq!(granted_ttl(0).ok(), Some(MIN_LEASE_TTL));
        assert_eq!(granted_ttl(-5).ok(), Some(MIN_LEASE_TTL));
        assert_eq!(granted_ttl(MIN_LEASE_TTL + 1).ok(), Some(MIN_LEASE_TTL + 1));
        assert_eq!(granted_ttl(MAX_LEASE_TTL).ok(), Some(MAX_LEASE_TTL));
        assert!(matches!(granted_ttl(MAX_LEASE_TTL + 1), Err(EtcdError::LeaseTtlTooLarge)));
    }

    #[test]
    fn generated_ids_are_positive_distinct_and_carry_the_member() {
        let g = IdGenerator::new(0xffff_ffff_ffff_abcd);
        let a = g.next();
        let b = g.next();
        assert!(a > 0 && b > 0 && a != b);
        assert_eq!((a.cast_unsigned() >> SUFFIX_BITS) & 0x7fff, 0x2bcd, "the member's low bits, top bit cleared");
    }

    #[test]
    fn the_clock_extends_on_promotion_renews_and_expires() {
        let lessor = Lessor::default();
        let t0 = Instant::now();
        lessor.sync(1, &[(7, 5), (8, 2)], t0);
        assert_eq!(lessor.remaining(7, t0), Some(Duration::from_secs(5)));
        // Nothing is due before its deadline; at it, once (then again only after the retry).
        assert!(lessor.expired(t0 + Duration::from_secs(1)).is_empty());
        let at = t0 + Duration::from_secs(2);
        assert_eq!(lessor.expired(at), [8]);
        assert!(lessor.expired(at).is_empty(), "a revoke under way is not proposed twice");
        assert_eq!(lessor.expired(at + REVOKE_RETRY), [8]);
        // A renew sets the full TTL again; an expiring lease is not renewed.
        assert!(lessor.renew(7, 5, t0 + Duration::from_secs(4)));
        assert_eq!(lessor.remaining(7, t0 + Duration::from_secs(4)), Some(Duration::from_secs(5)));
        assert!(!lessor.renew(8, 2, at));
        // A later sync in the same term keeps deadlines and forgets revoked leases.
        lessor.sync(1, &[(7, 5)], t0 + Duration::from_secs(4));
        assert_eq!(lessor.remaining(8, at), None);
        assert_eq!(lessor.remaining(7, t0 + Duration::from_secs(4)), Some(Duration::from_secs(5)));
        // A new term (after a demotion or not) gives every lease its full TTL again.
        let later = t0 + Duration::from_secs(8);
        lessor.demote();
        assert_eq!(lessor.remaining(7, later), None);
        lessor.sync(2, &[(7, 5), (9, 3)], later);
        assert_eq!(lessor.remaining(7, later), Some(Duration::from_secs(5)));
        assert_eq!(lessor.remaining(9, later), Some(Duration::from_secs(3)));
        lessor.sync(3, &[(7, 5)], later + Duration::from_secs(4));
        assert_eq!(lessor.remaining(7, later + Duration::from_secs(4)), Some(Duration::from_secs(5)));
    }

    #[test]
    fn expiry_is_bounded_per_check() {
        let lessor = Lessor::default();
        let t0 = Instant::now();
        let leases: Vec<(LeaseId, i64)> = (1..=(MAX_REVOKES_PER_CHECK as i64 + 5)).map(|id| (id, 0)).collect();
        lessor.sync(1, &leases, t0);
        assert_eq!(lessor.expired(t0).len(), MAX_REVOKES_PER_CHECK);
        assert_eq!(lessor.expired(t0).len(), 5);
    }
}
