//! Leader-aware gRPC health, as Jille/raft-grpc-leader-rpc's `leaderhealth` does it.
//!
//! The standard `grpc.health.v1.Health` service (tonic-health) reports:
//! - `quis.RaftLeader` ([`RAFT_LEADER_SERVICE`]): `SERVING` only on the node that is the
//!   current leader, `NOT_SERVING` everywhere else, updated on every leadership change;
//! - `""` (the whole server): the node's readiness ([`service::readiness`]): `SERVING` once it
//!   knows a leader and has applied up to the commit index it learned from it when it
//!   started or rejoined, `NOT_SERVING` before (the same answer as `/readyz` on the metrics
//!   port);
//! - the services served on every node (for example `raftkv.v1.KV` and `Example`):
//!   `SERVING` while the node runs.
//!
//! A client that health-checks `quis.RaftLeader` with round-robin load balancing over all
//! nodes therefore sends only to the leader: `raftadmin --leader multi:///a,b,c ...`, or a
//! gRPC service config `{"healthCheckConfig":{"serviceName":"quis.RaftLeader"},
//! "loadBalancingConfig":[{"round_robin":{}}]}`.
//!
//! [`LeaderHealth::start`] sets the first statuses, then a task follows openraft's server metrics channel (state and leader change
//! there, not on every write), so there is no polling. It ends when the node stops: every
//! status it owns turns `NOT_SERVING` and is then removed, which also ends the health `Watch`
//! streams clients hold open (a graceful shutdown waits for open streams). If Raft stops on
//! its own (a fatal error) every status turns `NOT_SERVING` and stays so until the node stops.

use openraft::ServerState;
use openraft::alias::WatchReceiverOf;
use openraft::async_runtime::WatchReceiver;
use openraft::metrics::RaftServerMetrics;
use service::readiness::Readiness;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use types::TypeConfig;

/// The health service name that is `SERVING` only on the leader (the name Jille's
/// `leaderhealth` and `raftadmin --leader` use).
pub const RAFT_LEADER_SERVICE: &str = "quis.RaftLeader";

/// The health service name of the whole server: `SERVING` when the node is ready.
pub const WHOLE_SERVER: &str = "";

/// openraft's server metrics channel: id, state, leader, membership.
pub type ServerMetrics = WatchReceiverOf<TypeConfig, RaftServerMetrics<TypeConfig>>;

/// The status of [`RAFT_LEADER_SERVICE`] for these metrics: `Serving` when this node is the
/// leader and knows it is.
#[must_use]
pub fn leader_status(m: &RaftServerMetrics<TypeConfig>) -> ServingStatus {
    if m.state == ServerState::Leader && m.current_leader.as_ref() == Some(&m.id) {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// The status of the whole server for a readiness.
fn ready_status(r: &Readiness) -> ServingStatus {
    if r.ready { ServingStatus::Serving } else { ServingStatus::NotServing }
}

/// The statuses last set.
#[derive(Debug, Clone, Copy)]
struct Reported {
    leader: ServingStatus,
    whole: ServingStatus,
}

/// Keeps the health statuses of one node: [`RAFT_LEADER_SERVICE`] from leadership, the
/// whole server and the given services `SERVING` while the node runs.
#[derive(Debug)]
pub struct LeaderHealth {
    reporter: HealthReporter,
    served: Vec<&'static str>,
}

impl LeaderHealth {
    /// Statuses reported through `reporter`; `served` are the services (by gRPC name)
    /// that every node serves, reported `SERVING` while the node runs.
    #[must_use]
    pub fn new(reporter: HealthReporter, served: impl IntoIterator<Item = &'static str>) -> Self {
        Self { reporter, served: served.into_iter().collect() }
    }

    /// Every name this reporter owns.
    fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        [WHOLE_SERVER, RAFT_LEADER_SERVICE].into_iter().chain(self.served.iter().copied())
    }

    async fn set_all(&self, status: ServingStatus) {
        for name in self.names() {
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// Sets the first statuses (the served services `SERVING`, `quis.RaftLeader` from
    /// `metrics`, the whole server from `ready`), then spawns the task that follows `metrics`
    /// and `ready` until `stop` turns true. The statuses are in place when this returns,
    /// before the server takes its first request.
    pub async fn start(
        self,
        metrics: ServerMetrics,
        ready: watch::Receiver<Readiness>,
        stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        for name in self.served.iter().copied() {
            self.reporter.set_service_status(name, ServingStatus::Serving).await;
        }
        let whole = ready_status(&ready.borrow());
        self.reporter.set_service_status(WHOLE_SERVER, whole).await;
        let first = leader_status(&metrics.borrow_watched());
        self.reporter.set_service_status(RAFT_LEADER_SERVICE, first).await;
        tokio::spawn(self.run(Reported { leader: first, whole }, metrics, ready, stop))
    }

    /// Follows `metrics` and `ready` until `stop` turns true; `reported` is what is already
    /// set.
    async fn run(
        mut self,
        mut reported: Reported,
        mut metrics: ServerMetrics,
        mut ready: watch::Receiver<Readiness>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut ready_open = true;
        let raft_running = loop {
            let whole = ready_status(&ready.borrow_and_update());
            if whole != reported.whole {
                self.reporter.set_service_status(WHOLE_SERVER, whole).await;
                reported.whole = whole;
            }
            let (status, node, leader, state) = {
                let m = metrics.borrow_watched();
                (leader_status(&m), m.id.clone(), m.current_leader.clone(), m.state)
            };
            if status != reported.leader {
                self.reporter.set_service_status(RAFT_LEADER_SERVICE, status).await;
                tracing::info!(
                    node = %node,
                    state = ?state,
                    leader = ?leader,
                    status = ?status,
                    service = RAFT_LEADER_SERVICE,
                    "leader health changed"
                );
                reported.leader = status;
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { break false },
                changed = ready.changed(), if ready_open => ready_open = changed.is_ok(),
                _ = stop.wait_for(|s| *s) => break true,
            }
        };
        self.set_all(ServingStatus::NotServing).await;
        if !raft_running {
            tracing::warn!("raft stopped: every health status is NOT_SERVING until the node stops");
            let _ = stop.wait_for(|s| *s).await;
        }
        // Removing a status drops its sender, which ends the Watch streams on it (they have
        // just seen NOT_SERVING), so the server's graceful drain does not wait for them.
        let names: Vec<&'static str> = self.names().collect();
        for name in names {
            self.reporter.clear_service_status(name).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::RaftMetrics;
    use openraft::async_runtime::WatchSender;
    use openraft::type_config::TypeConfigExt;
    use tonic::{Code, Request};
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    use tonic_health::pb::health_server::Health;
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
    use tonic_health::server::HealthService;
    use types::NodeId;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn readiness(ready: bool) -> Readiness {
        Readiness { ready, leader: None, caught_up_to: None, reason: String::new() }
    }

    fn server_metrics(id: u64, state: ServerState, leader: Option<u64>) -> RaftServerMetrics<TypeConfig> {
        let base = RaftMetrics::<TypeConfig>::new_initial(NodeId::from(id));
        RaftServerMetrics {
            id: base.id,
            vote: base.vote,
            state,
            current_leader: leader.map(NodeId::from),
            membership_config: base.membership_config,
            committed_membership_config: base.committed_membership_config,
        }
    }

    /// The status of `name` as a client sees it: `Ok(wire status)` or the error code.
    async fn check(health: &HealthService, name: &str) -> Result<i32, Code> {
        Health::check(health, Request::new(HealthCheckRequest { service: name.into() }))
            .await
            .map(|r| HealthCheckResponse::status(r.get_ref()) as i32)
            .map_err(|s| s.code())
    }

    async fn wait_status(health: &HealthService, name: &str, want: Result<i32, Code>) -> TestResult {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let got = check(health, name).await;
            if got == want {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("{name:?}: wanted {want:?}, still {got:?} after 5s").into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn only_a_leader_that_knows_it_leads_is_serving() {
        assert_eq!(leader_status(&server_metrics(1, ServerState::Leader, Some(1))), ServingStatus::Serving);
        assert_eq!(leader_status(&server_metrics(1, ServerState::Follower, Some(2))), ServingStatus::NotServing);
        assert_eq!(leader_status(&server_metrics(1, ServerState::Candidate, None)), ServingStatus::NotServing);
        assert_eq!(leader_status(&server_metrics(1, ServerState::Learner, Some(2))), ServingStatus::NotServing);
        // Leader state while the leader is not (yet) recorded as itself.
        assert_eq!(leader_status(&server_metrics(1, ServerState::Leader, None)), ServingStatus::NotServing);
        assert_eq!(leader_status(&server_metrics(1, ServerState::Shutdown, Some(1))), ServingStatus::NotServing);
    }

    #[tokio::test]
    async fn follows_leadership_and_withdraws_on_stop() -> TestResult {
        let (reporter, _server) = tonic_health::server::health_reporter();
        let health = HealthService::from_health_reporter(reporter.clone());
        let (tx, rx) = TypeConfig::watch_channel(server_metrics(1, ServerState::Follower, Some(2)));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = watch::channel(readiness(false));
        let task = LeaderHealth::new(reporter, ["Example"]).start(rx, ready_rx, stop_rx).await;

        let (serving, not_serving) = (Wire::Serving as i32, Wire::NotServing as i32);
        assert_eq!(check(&health, "Example").await, Ok(serving), "set before start returns");
        assert_eq!(check(&health, RAFT_LEADER_SERVICE).await, Ok(not_serving));
        assert_eq!(check(&health, WHOLE_SERVER).await, Ok(not_serving), "not ready yet");
        ready_tx.send(readiness(true))?;
        wait_status(&health, WHOLE_SERVER, Ok(serving)).await?;

        tx.send(server_metrics(1, ServerState::Leader, Some(1)))?;
        wait_status(&health, RAFT_LEADER_SERVICE, Ok(serving)).await?;
        tx.send(server_metrics(1, ServerState::Follower, Some(3)))?;
        wait_status(&health, RAFT_LEADER_SERVICE, Ok(not_serving)).await?;
        assert_eq!(check(&health, WHOLE_SERVER).await, Ok(serving), "the server stays serving as a follower");

        tx.send(server_metrics(1, ServerState::Leader, Some(1)))?;
        wait_status(&health, RAFT_LEADER_SERVICE, Ok(serving)).await?;
        stop_tx.send(true)?;
        tokio::time::timeout(Duration::from_secs(5), task).await??;
        for name in [RAFT_LEADER_SERVICE, WHOLE_SERVER, "Example"] {
            assert_eq!(check(&health, name).await, Err(Code::NotFound), "{name:?} is withdrawn on stop");
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_stopped_raft_is_not_serving_until_the_node_stops() -> TestResult {
        let (reporter, _server) = tonic_health::server::health_reporter();
        let health = HealthService::from_health_reporter(reporter.clone());
        let (tx, rx) = TypeConfig::watch_channel(server_metrics(1, ServerState::Leader, Some(1)));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (_ready_tx, ready_rx) = watch::channel(readiness(true));
        let task = LeaderHealth::new(reporter, []).start(rx, ready_rx, stop_rx).await;
        assert_eq!(check(&health, RAFT_LEADER_SERVICE).await, Ok(Wire::Serving as i32), "set before start returns");

        drop(tx); // what openraft does when Raft stops
        wait_status(&health, WHOLE_SERVER, Ok(Wire::NotServing as i32)).await?;
        wait_status(&health, RAFT_LEADER_SERVICE, Ok(Wire::NotServing as i32)).await?;
        assert!(!task.is_finished(), "the statuses stay until the node stops");

        stop_tx.send(true)?;
        tokio::time::timeout(Duration::from_secs(5), task).await??;
        assert_eq!(check(&health, WHOLE_SERVER).await, Err(Code::NotFound));
        Ok(())
    }
}
