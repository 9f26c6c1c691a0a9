//! A cluster on a [`Fabric`]: every node in its own network namespace on fixed ports
//! ([`crate::netns::RAFT_PORT`], …), gossip on, and a recorded workload of linearizable reads
//! and writes run from the clients' namespace and checked with [`checker::check`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use client::{Client, RaftState};

use crate::checker::{self, History, Outcome};
use crate::netns::{Fabric, GOSSIP_PORT, GRPC_PORT, RAFT_PORT, node_ip};
use crate::{BoxError, NodeProc, chaos};

/// The nodes of a cluster on a fabric. Stopped (SIGKILL) on drop, before the fabric goes.
#[derive(Debug)]
pub struct NsCluster {
    /// The nodes, `n1`, `n2`, …
    pub nodes: Vec<NodeProc>,
    _dir: tempfile::TempDir,
}

impl NsCluster {
    /// Starts `fabric`'s nodes with `args` (timing flags) and gossip: n1 bootstraps, the
    /// others join through n1's gossip address. Call [`join`] from the clients'
    /// namespace next.
    pub fn start(fabric: &Fabric, nodes: usize, args: &[&str]) -> Result<Self, BoxError> {
        let dir = tempfile::tempdir()?;
        let mut started = Vec::new();
        for i in 0..nodes {
            let ip = node_ip(i);
            let mut a: Vec<String> = args.iter().map(|s| (*s).to_string()).collect();
            // Plaintext on a non-loopback address: the fabric is the test's own, reachable
            // from nowhere else.
            a.push("--insecure".into());
            a.extend(["--gossip_addr".into(), format!("{ip}:{GOSSIP_PORT}")]);
            if i > 0 {
                a.extend(["--gossip_seeds".into(), format!("{}:{GOSSIP_PORT}", node_ip(0))]);
            }
            let node = NodeProc::builder(crate::binary("raftkv"), format!("n{}", i + 1), dir.path())
                .wrapper(fabric.wrapper(i))
                .rust_log(crate::log_filter())
                .addrs(format!("{ip}:{GRPC_PORT}"), format!("{ip}:{RAFT_PORT}"))
                .bootstrap(i == 0)
                .args(&a)
                .start()?;
            started.push(node);
        }
        Ok(Self { nodes: started, _dir: dir })
    }

    /// Every node's client address.
    #[must_use]
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.grpc_addr.clone()).collect()
    }

    /// Every node's id, Raft and client address.
    #[must_use]
    pub fn members(&self) -> Vec<(String, String, String)> {
        self.nodes.iter().map(|n| (n.id.clone(), n.raft_addr.clone(), n.grpc_addr.clone())).collect()
    }
}

/// From the clients' namespace: waits for n1 to lead, then adds every other node as a voter.
pub async fn join(members: Vec<(String, String, String)>) -> Result<(), BoxError> {
    let Some((_, _, first_grpc)) = members.first() else { return Ok(()) };
    let first = Client::new([first_grpc.clone()], crate::test_options())?;
    crate::wait_for("n1 to lead", Duration::from_secs(60), || async {
        first.status().await.is_ok_and(|s| s.state == RaftState::Leader as i32)
    })
    .await?;
    for (id, raft, grpc) in &members[1..] {
        first.add_voter(id, raft, grpc, Duration::from_secs(60)).await?;
    }
    Ok(())
}

/// Who leads and in which term, as a node says; `None` when it cannot be asked.
pub async fn leader_of(endpoint: &str) -> Option<(String, u64)> {
    let options = client::ClientOptions {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        max_retries: 0,
        ..client::ClientOptions::default()
    };
    let c = Client::new([endpoint.to_string()], options).ok()?;
    let s = c.status().await.ok()?;
    (!s.leader_id.is_empty()).then_some((s.leader_id, s.term))
}

/// The recorded workload: `clients` sessions of [`chaos::session`] over every node.
#[derive(Debug)]
pub struct Recorder {
    /// What they did.
    pub history: Arc<History>,
    keys: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
    sessions: Vec<tokio::task::JoinHandle<()>>,
    endpoints: Vec<String>,
}

impl Recorder {
    /// Starts `clients` sessions on `keys` keys named after `seed`.
    pub fn start(endpoints: Vec<String>, clients: usize, keys: usize, seed: u64) -> Result<Self, BoxError> {
        let history = Arc::new(History::new());
        let keys: Arc<Vec<String>> = Arc::new((0..keys).map(|k| format!("ns-{seed}-k{k}")).collect());
        let values = Arc::new(AtomicU32::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        let mut sessions = Vec::new();
        for c in 0..clients {
            let mut eps = endpoints.clone();
            let len = eps.len();
            eps.rotate_left(c % len);
            let client = Client::new(eps, chaos::session_options())?;
            let (h, k, v, s) = (history.clone(), keys.clone(), values.clone(), stop.clone());
            sessions.push(tokio::spawn(chaos::session(c, client, h, k, v, s, seed)));
        }
        Ok(Self { history, keys, stop, sessions, endpoints })
    }

    /// Stops the sessions, sends every write of unknown outcome again with its request id,
    /// reads every key once more, and checks the whole history.
    pub async fn finish(self) -> Result<checker::Report, BoxError> {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.sessions {
            let _ = tokio::time::timeout(Duration::from_secs(60), s).await;
        }
        let client = Client::new(self.endpoints.clone(), crate::test_options())?;
        let mut ops = self.history.operations();
        for op in &mut ops {
            if matches!(op.outcome, Outcome::Unknown(_)) {
                let outcome = chaos::execute(&client, &op.key, op.input, &op.request_id).await;
                if matches!(outcome, Outcome::Ok { .. }) {
                    op.outcome = outcome;
                    op.complete = self.history.now();
                }
            }
        }
        for key in self.keys.iter() {
            ops.push(chaos::final_read(&client, &self.history, key).await?);
        }
        Ok(checker::check(&ops, Duration::from_secs(60)))
    }
}
