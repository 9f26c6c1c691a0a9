//! The composition root of a raftkv node.
//!
//! # Brief overview
//! [`Node::start`] builds and starts everything, in this order, one function per step:
//! 1. `prepare_dir`: validates the [`NodeConfig`] (every rule with a message naming the
//!    flag) and creates `<raft_data_dir>/<raft_id>/` if needed; then `NodeTls::load`
//!    loads the TLS files of both ports and of the connections to other nodes
//!    ([`NodeConfig::tls_files`]: TLS on both ports or neither; plaintext on a non-loopback
//!    address only with `--insecure`), so unusable files stop the node here;
//! 2. `Listeners::bind`: binds the client (`--grpc_addr`), Raft (`--raft_addr`) and, with
//!    `--metrics-addr`, metrics listeners; one listener carries both when the addresses are equal; port 0 picks a
//!    free port;
//! 3. `start_gossip`: with `--gossip_addr`, starts gossip (chitchat on UDP, every datagram
//!    sealed with the key of `--gossip-key-file` when given, which is read here and refused
//!    when the group or others can read it; port 0 picks a free port), publishing this
//!    node's metadata; then `resolver_chain` builds the resolver
//!    chain (gossip's live nodes, then static `--peers`, then the Raft membership, which a
//!    task keeps current); the Raft network and leader forwarding resolve every peer by node
//!    id through it;
//! 4. `open_storage`: opens the log store (`raft-storage`) and the state machine (`fsm`),
//!    both stamping the node's per-stage clock of writes ([`latency::WriteStages`]), which
//!    the services record each write into and the Admin API's `WriteStages` reports;
//! 5. `build_raft`: starts openraft with the gRPC transport ([`raft_network`]); then
//!    `bootstrap` makes a one-node cluster if asked and the node has no state (idempotent:
//!    restarting with `--raft_bootstrap` on existing state just starts);
//! 6. `start_servers`: serves KV, Auth, Admin, Raft, the Go seeds' `Example`, `RaftAdmin` and
//!    `RaftManager` ([`compat`]), every client-port service but health and reflection behind
//!    [`service::AuthGuard`], gRPC health (`quis.RaftLeader` SERVING only on the leader:
//!    [`compat::leader_health`]) and reflection, with TCP_NODELAY on, over TLS when it is on
//!    (the Raft port with mutual TLS, through [`rpc::server::serve`]); the whole server's
//!    health (`""`) follows the node's readiness ([`service::readiness`], a task started
//!    just before);
//!    then, with `--metrics-addr`, `start_metrics` installs the metrics recorder and serves
//!    the metrics port ([`telemetry`]: `/metrics`, `/livez`, `/readyz`, `/status.json`, the
//!    status page);
//! 7. `announce`: writes `listen.json` (the bound addresses and the pid) for tools and tests;
//! 8. `start_background`: the background work (the `background` module): the periodic
//!    snapshot check (`--snapshot_interval`), with gossip the task publishing this node's
//!    role, leader and applied index, and, with `--join` on a node without state, auto-join
//!    (asking the members named, and with gossip on also those gossip finds); and the
//!    storage guard ([`disk`]: the quota, the free-space reserve and the NOSPACE alarm).
//!
//! [`Node::shutdown`] first hands leadership to a caught-up voter if this node leads (bounded
//! by `shutdown_grace`), so a planned stop costs the cluster no election timeout; then it
//! stops in the reverse order: watch streams and blocking reads are ended (`UNAVAILABLE`,
//! resume elsewhere), the servers drain in-flight requests (bounded by `shutdown_grace`),
//! gossip announces the leave and stops, Raft stops, the state machine is flushed (one
//! fsync), the stores close.
//!
//! Gossip is advisory: nothing here changes the Raft membership because of what gossip says.
//!
//! [`offline`] works on a stopped node's directory: disaster recovery (`raftkv recover`) and
//! seeding a new cluster from a backup (`raftkv restore`).
//!
//! The engine may depend on every crate; nothing depends on it but the binaries.

mod background;
mod config;
pub mod disk;
pub mod offline;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use compat::{
    ExampleService, HashicorpAdmin, LeaderHealth, Operations, RaftAdminService, RaftManagerService, StopRequest,
};
use fsm::{Raft, StateMachine};
use gossip::{Gossip, NodeMeta};
use openraft::async_runtime::WatchReceiver;
use proto::compat::example::example_server::ExampleServer;
use proto::kv::v1::kv_server::KvServer;
use raft_network::LeaderContact;
use raft_network::client::NetworkFactory;
use raft_network::server::RaftService;
use raft_storage::{LOG_FILE, LogStore};
use resolver::{AddressMap, Chain, Resolver};
use rpc::server::PortLimits;
use rpc::tls::{ClientTls, ServerTls};
use serde::Serialize;
use service::overload::Overload;
use service::{AdminService, AuthGuard, AuthService, ForwardService, Forwarder, KvService, NodeContext};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use types::{NodeId, NodeInfo};

pub use config::{
    APPEND_BYTES_RANGE, DEFAULT_SNAPSHOT_THRESHOLD, JoinCredentials, MAX_APPEND_ENTRIES_LIMIT, MIN_SNAPSHOT_INTERVAL,
    NodeConfig, TlsFiles, TlsFlags,
};
pub use disk::{DEFAULT_DISK_RESERVE_BYTES, DEFAULT_QUOTA_BACKEND_BYTES, DiskLimits};
pub use fsm::DEFAULT_DB_CACHE_BYTES as DEFAULT_SM_DB_CACHE_BYTES;
/// The bounds of the watch history, as [`NodeConfig::watch_history`] takes them.
pub use fsm::{DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_EVENTS, HistoryLimits};
/// The cache settings' defaults, as [`NodeConfig::sm_db_cache_bytes`] and
/// [`NodeConfig::log_caches`] take them.
pub use raft_storage::{
    DEFAULT_DB_CACHE_BYTES as DEFAULT_LOG_DB_CACHE_BYTES, LOG_CACHE_BYTES, LOG_CACHE_ENTRIES, LogOptions,
    MAX_APPEND_BYTES,
};
pub use service::overload::{
    DEFAULT_MAX_CLIENT_CONNECTIONS, DEFAULT_MAX_IN_FLIGHT_REQUEST_BYTES, DEFAULT_MAX_IN_FLIGHT_REQUESTS, OverloadLimits,
};

/// The name of the file, in the node's directory, that holds the bound addresses.
pub const LISTEN_FILE: &str = "listen.json";

/// What can stop a node from starting or stopping cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A setting is invalid; the message names the flag and the rule.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file or directory operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The log store failed to open.
    #[error("opening the Raft log: {0}")]
    Log(#[from] raft_storage::Error),
    /// The state machine failed to open.
    #[error("opening the state machine: {0}")]
    StateMachine(#[from] fsm::Error),
    /// Gossip failed to start: its address cannot be resolved, or chitchat cannot bind.
    /// (Invalid gossip settings are [`EngineError::Config`].)
    #[error("gossip: {0}")]
    Gossip(#[source] gossip::GossipError),
    /// openraft refused to start, stopped with an error, or (offline) a Raft store
    /// operation failed.
    #[error("raft: {context}: {source}")]
    Raft {
        /// What was being done.
        context: String,
        /// openraft's or the store's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// openraft's core stopped by itself while the node ran (a storage error or a panic in
    /// the core); the node shut down rather than serve a state it can no longer keep up.
    #[error("the Raft core stopped ({0}); the node stopped too: check the disk and the log above, then restart it")]
    RaftStopped(String),
    /// A TLS file named by a flag cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] rpc::tls::TlsError),
    /// A server failed.
    #[error("server: {0}")]
    Server(#[from] tonic::transport::Error),
    /// A file of this node's storage is damaged in a way the node cannot recover from by
    /// itself; the message names the file, the cause and what the operator should do. It
    /// carries no source: the cause is in the message once.
    #[error("{0}")]
    Damaged(String),
    /// An offline operation ([`offline`]) refused to run; the message says why and what to do.
    /// Nothing was written.
    #[error("{0}")]
    Refused(String),
}

impl EngineError {
    /// A Raft failure while doing `context`.
    pub(crate) fn raft(context: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        EngineError::Raft { context: context.into(), source: Box::new(source) }
    }
}

impl From<gossip::GossipError> for EngineError {
    /// Invalid settings are a configuration error, as the validation reports them; anything
    /// else is gossip failing to start.
    fn from(e: gossip::GossipError) -> Self {
        match e {
            gossip::GossipError::Config(message) => EngineError::Config(message),
            gossip::GossipError::Key(e) => EngineError::Config(e.to_string()),
            other => EngineError::Gossip(other),
        }
    }
}

/// The addresses a node listens on, as written to `listen.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ListenAddrs {
    /// The Raft address actually bound.
    pub raft_addr: String,
    /// The client address actually bound.
    pub grpc_addr: String,
    /// The gossip (UDP) address advertised, with the port actually bound; `None` without
    /// gossip.
    pub gossip_addr: Option<String>,
    /// The metrics port (HTTP) actually bound; `None` without `--metrics-addr`.
    pub metrics_addr: Option<String>,
    /// This process's id.
    pub pid: u32,
}

/// A running node.
pub struct Node {
    config: NodeConfig,
    raft: Raft,
    sm: StateMachine,
    listen: ListenAddrs,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
    membership_task: JoinHandle<()>,
    leader_health: JoinHandle<()>,
    ctx: NodeContext,
    background: Vec<JoinHandle<()>>,
    stop_request: StopRequest,
    gossip: Option<Gossip>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.config.id).field("listen", &self.listen).finish_non_exhaustive()
    }
}

/// The address to advertise for a listener: the configured one, with the bound port when
/// port 0 was asked for.
fn advertised(configured: &str, bound: SocketAddr) -> String {
    match configured.rsplit_once(':') {
        Some((host, "0")) => format!("{host}:{}", bound.port()),
        _ => configured.to_string(),
    }
}

/// The accept queue asked for on every listening port. Rust's standard library asks for
/// 128 and tokio for 1,024; a flood of thousands of connects in under a second (the overload
/// figure: 5,000) overflows that, and the kernel then drops their handshakes, so the clients
/// wait for retransmissions instead of getting the node's refusal at once. Go servers such
/// as etcd ask for `net.core.somaxconn`; Linux caps the value at it (4,096 by default).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listening port on `addr` (a name is resolved; each address is tried in turn)
/// with [`LISTEN_BACKLOG`].
async fn bind(addr: &str) -> Result<TcpListener, EngineError> {
    let failed = |source| EngineError::Bind { addr: addr.to_string(), source };
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await.map_err(failed)? {
        match listen_on(a) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(failed(last.unwrap_or_else(|| std::io::Error::other("the address resolved to nothing"))))
}

/// One listening socket on `addr`, as `TcpListener::bind` makes it (`SO_REUSEADDR` on, so a
/// restarted node can bind while old connections linger in `TIME_WAIT`), with a longer queue.
fn listen_on(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Node {
    /// Starts a node; see the crate documentation for the order. Each step is a function
    /// below, named for what it does.
    pub async fn start(config: NodeConfig) -> Result<Node, EngineError> {
        let dir = prepare_dir(&config)?;
        let tls = NodeTls::load(&config)?;
        let Listeners { grpc, raft: raft_listener, metrics: metrics_listener, grpc_bound, raft_bound, me } =
            Listeners::bind(&config).await?;
        let gossip = start_gossip(&config, &me).await?;
        let membership = Arc::new(AddressMap::membership());
        let resolver = resolver_chain(gossip.as_ref(), config.static_peers()?, membership.clone());
        let stages = Arc::new(latency::WriteStages::new());
        let (mut log, sm) = open_storage(&config, &dir, &stages)?;
        check_coverage(&config, &dir, &mut log, &sm).await?;
        let raft = build_raft(&config, resolver.clone(), tls.as_ref(), log, sm.clone()).await?;
        let membership_task = tokio::spawn(follow_membership(raft.clone(), membership));
        if config.bootstrap {
            bootstrap(&raft, &config.id, me.clone()).await?;
        }
        let ctx = node_context(&config, &raft, &sm, resolver, gossip.clone(), tls.as_ref(), stages);
        let (stop, _) = watch::channel(false);
        let (ready, readiness_task) =
            service::readiness::follow(ctx.clone(), config.election_timeout, stop.subscribe());
        let servers =
            start_servers(&config, (grpc, raft_listener), tls.as_ref(), &me, &ctx, ready.clone(), &stop).await?;
        let metrics_bound = metrics_listener.as_ref().map(local_addr).transpose()?;
        let listen = ListenAddrs {
            raft_addr: raft_bound.to_string(),
            grpc_addr: grpc_bound.to_string(),
            gossip_addr: gossip.as_ref().map(|g| g.advertise_addr().to_string()),
            metrics_addr: metrics_bound.map(|a| a.to_string()),
            pid: std::process::id(),
        };
        let mut background = vec![readiness_task];
        if let Some(listener) = metrics_listener {
            background.extend(start_metrics(listener, &ctx, ready, &stop)?);
        }
        announce(&config, &dir, &listen)?;
        background.extend(start_background(&config, &raft, gossip.as_ref(), tls.as_ref(), me, &stop));
        background.push(tokio::spawn(disk::guard(ctx.clone(), dir.clone(), config.disk, stop.subscribe())));
        Ok(Node {
            config,
            raft,
            sm,
            listen,
            stop,
            servers: servers.handles,
            membership_task,
            leader_health: servers.leader_health,
            ctx,
            background,
            stop_request: servers.stop_request,
            gossip,
        })
    }

    /// Resolves when a stop was asked through the API (`RaftAdmin`/`RaftManager`
    /// `Shutdown`); the caller then runs [`Node::shutdown`], as on SIGTERM.
    pub async fn stop_requested(&self) {
        self.stop_request.requested().await;
    }

    /// Resolves when openraft's core has stopped without being asked to (a storage error: a
    /// failed log write or apply, or a panic in the core), with the reason. Such a node can no
    /// longer vote, replicate or apply, yet its servers would go on answering with the state
    /// it had: it must stop (fail-stop, as etcd does on a storage error), so that a
    /// supervisor restarts it from its durable state and the cluster sees it as down.
    ///
    /// It follows the server metrics (role, leader, membership), which change only with an
    /// election or a membership change, not the full metrics, which change several times per
    /// write: each change would wake this task. When the core task ends its channels close,
    /// which wakes the watch; the reason is then in the full metrics' running state.
    pub async fn raft_stopped(&self) -> String {
        let mut server = self.raft.server_metrics();
        loop {
            if let Err(fatal) = &self.raft.metrics().borrow_watched().running_state {
                return fatal.to_string();
            }
            if server.changed().await.is_err() {
                return match &self.raft.metrics().borrow_watched().running_state {
                    Err(fatal) => fatal.to_string(),
                    Ok(()) => "the Raft core task ended".to_string(),
                };
            }
        }
    }

    /// The addresses actually bound.
    #[must_use]
    pub fn listen_addrs(&self) -> &ListenAddrs {
        &self.listen
    }

    /// The Raft handle.
    #[must_use]
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The state machine.
    #[must_use]
    pub fn state_machine(&self) -> &StateMachine {
        &self.sm
    }

    /// Stops the node: a leader hands leadership over first (bounded by the shutdown grace),
    /// then the servers drain (bounded by the shutdown grace), then gossip leaves, then Raft
    /// stops, then the stores close.
    pub async fn shutdown(self) -> Result<(), EngineError> {
        let id = self.config.id.clone();
        let grace = self.config.shutdown_grace;
        background::hand_over_leadership(&self.ctx, grace).await;
        tracing::info!(node = %id, "shutting down: draining gRPC servers");
        // Watch streams and blocking reads never end on their own: end them now, each with
        // UNAVAILABLE and its resume index, so the drain below does not wait for them.
        self.sm.close_watches();
        let _ = self.stop.send(true);
        for task in &self.background {
            task.abort();
        }
        for mut server in self.servers {
            match tokio::time::timeout(grace, &mut server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(node = %id, error = %e, "server ended with an error"),
                Ok(Err(e)) => tracing::warn!(node = %id, error = %e, "server task failed"),
                Err(_) => {
                    tracing::warn!(node = %id, grace = ?grace, "server did not drain in time; closing it");
                    server.abort();
                }
            }
        }
        if let Some(g) = &self.gossip {
            tracing::info!(node = %id, "leaving gossip");
            g.leave(g.config().interval * 2).await;
        }
        tracing::info!(node = %id, "stopping raft");
        self.membership_task.abort();
        self.leader_health.abort();
        let result = self.raft.shutdown().await.map_err(|e| EngineError::raft("stopping", e));
        let sm = self.sm.clone();
        match tokio::task::spawn_blocking(move || sm.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(node = %id, error = %e, "flushing the state machine failed; a restart re-applies from the log")
            }
            Err(e) => {
                tracing::warn!(node = %id, error = %e, "flushing the state machine failed; a restart re-applies from the log")
            }
        }
        let _ = std::fs::remove_file(self.config.node_dir().join(LISTEN_FILE));
        drop(self.raft);
        drop(self.sm);
        tracing::info!(node = %id, "stopped");
        result
    }
}

/// Runs a node until `signal` resolves or a stop is asked through the API (`Shutdown` of
/// `RaftAdmin`/`RaftManager`), then shuts it down gracefully. If the Raft core stops by
/// itself ([`Node::raft_stopped`]), the node shuts down too and the reason is the error.
pub async fn run(config: NodeConfig, signal: impl std::future::Future<Output = ()>) -> Result<(), EngineError> {
    let node = Node::start(config).await?;
    let stopped = tokio::select! {
        () = signal => None,
        () = node.stop_requested() => {
            tracing::info!(node = %node.config.id, "stopping: asked through the admin API");
            None
        }
        reason = node.raft_stopped() => {
            tracing::error!(node = %node.config.id, reason, "stopping: the Raft core stopped by itself");
            Some(reason)
        }
    };
    if stopped.is_some() {
        // Join the stopped core first, here, where nothing cancels the wait. openraft's join
        // of its core task is not cancel-safe (alpha.37, `RaftInner::join_core_task`): a Raft
        // call that finds the core gone joins it too, and if that call is dropped mid-join (as
        // the drain below drops in-flight RPCs) every later joiner panics with "RaftCore should
        // have already quit" and poisons the lock, and the node exits with a panic instead of
        // naming the storage error. Once joined here, later calls find the core done at once.
        let _ = node.raft().shutdown().await;
    }
    let result = node.shutdown().await;
    match stopped {
        Some(reason) => Err(EngineError::RaftStopped(reason)),
        None => result,
    }
}

fn local_addr(l: &TcpListener) -> Result<SocketAddr, EngineError> {
    l.local_addr().map_err(|source| EngineError::Io { context: "reading a bound address".into(), source })
}

/// Serves `routes` on `listener` until `stop` is set ([`rpc::server::serve`]), over TLS
/// when `tls` is given.
fn serve(
    routes: RoutesBuilder,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    limits: PortLimits,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<Result<(), tonic::transport::Error>> {
    rpc::server::serve(routes, listener, tls, limits, async move {
        let _ = stop.wait_for(|s| *s).await;
    })
}

/// A node's TLS, loaded once at start (the files are re-read when they change): each
/// port's server side and the client side of connections to other nodes.
#[derive(Clone)]
struct NodeTls {
    client_port: Arc<ServerTls>,
    raft_port: Arc<ServerTls>,
    outbound: Arc<ClientTls>,
}

impl NodeTls {
    /// Step 1b: loads the TLS files the flags name (`None`: TLS is off), so a node with
    /// unusable files refuses to start, naming the file.
    fn load(config: &NodeConfig) -> Result<Option<NodeTls>, EngineError> {
        let Some(files) = config.tls_files()? else {
            if config.insecure {
                tracing::warn!(grpc_addr = %config.grpc_addr, raft_addr = %config.raft_addr, "--insecure: serving plaintext");
            }
            return Ok(None);
        };
        Ok(Some(NodeTls {
            client_port: Arc::new(ServerTls::new(files.client_port)?),
            raft_port: Arc::new(ServerTls::new(files.raft_port)?),
            outbound: Arc::new(ClientTls::new(files.outbound)?),
        }))
    }
}

/// Step 1: checks the configuration and creates the node's directory, which it returns.
fn prepare_dir(config: &NodeConfig) -> Result<PathBuf, EngineError> {
    config.validate()?;
    let dir = config.node_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|source| EngineError::Io { context: format!("creating {}", dir.display()), source })?;
    Ok(dir)
}

/// The bound TCP listeners (one when the client and Raft addresses are equal) and the
/// addresses this node advertises.
struct Listeners {
    grpc: TcpListener,
    /// `None` when the client listener carries the Raft port too.
    raft: Option<TcpListener>,
    /// The metrics port, with `--metrics-addr`.
    metrics: Option<TcpListener>,
    grpc_bound: SocketAddr,
    raft_bound: SocketAddr,
    me: NodeInfo,
}

impl Listeners {
    /// Step 2: binds the client, Raft and (with `--metrics-addr`) metrics listeners; port 0
    /// picks a free port.
    async fn bind(config: &NodeConfig) -> Result<Listeners, EngineError> {
        let grpc = bind(&config.grpc_addr).await?;
        let grpc_bound = local_addr(&grpc)?;
        // Equal addresses share one server (the Jille layout); two port-0 addresses ask for two
        // free ports, not one.
        let shared = config.raft_addr == config.grpc_addr && !config.grpc_addr.ends_with(":0");
        let raft = if shared { None } else { Some(bind(&config.raft_addr).await?) };
        let raft_bound = match &raft {
            Some(l) => local_addr(l)?,
            None => grpc_bound,
        };
        let me = NodeInfo {
            raft_addr: advertised(&config.raft_addr, raft_bound),
            grpc_addr: advertised(&config.grpc_addr, grpc_bound),
        };
        let metrics = match &config.metrics_addr {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Listeners { grpc, raft, metrics, grpc_bound, raft_bound, me })
    }
}

/// Step 3: starts gossip when `--gossip_addr` is set, publishing this node's metadata.
async fn start_gossip(config: &NodeConfig, me: &NodeInfo) -> Result<Option<Gossip>, EngineError> {
    let Some(g) = &config.gossip else {
        return Ok(None);
    };
    let meta = NodeMeta::new(config.id.clone(), me.clone(), env!("CARGO_PKG_VERSION"));
    Ok(Some(Gossip::start_udp(g.clone(), meta).await.map_err(EngineError::from)?))
}

/// Step 4: opens the log store and the state machine in the node's directory.
fn open_storage(
    config: &NodeConfig,
    dir: &std::path::Path,
    stages: &Arc<latency::WriteStages>,
) -> Result<(LogStore, StateMachine), EngineError> {
    let log =
        LogStore::open_with_stages(&dir.join(LOG_FILE), config.log_caches, stages.clone()).map_err(|e| match e {
            raft_storage::Error::Damaged { .. } => EngineError::Damaged(format!(
                "{e}: this node's Raft log cannot be trusted (its vote and entries are promises to the cluster, \
             so it is not discarded); remove the node from the cluster (`raftkvctl member remove {id}`), \
             move its data directory {dir} away, and add it back as a new member with an empty directory \
             (`raftkvctl member add {id} --raft-addr ... --grpc-addr ...`, or start it with --join); see \"Failing disks and damaged files\" in docs/reference.md",
                id = config.id,
                dir = dir.display(),
            )),
            other => EngineError::Log(other),
        })?;
    let sm_options = fsm::Options { history: config.watch_history, db_cache_bytes: config.sm_db_cache_bytes };
    let sm = StateMachine::open_with_stages(&dir.join("sm"), sm_options, stages.clone())?;
    Ok((log, sm))
}

/// Part of step 4: the state machine must reach the Raft log. openraft re-applies the
/// entries after the state machine's applied index from the log; if the log was purged past
/// it (its entries live in a snapshot) and no intact snapshot covers the gap (the snapshot
/// file was damaged and set aside, and the state machine was damaged too), this node cannot
/// rebuild its state from its own files. It refuses to start, naming the files and the
/// remedy, rather than fail inside openraft.
async fn check_coverage(
    config: &NodeConfig,
    dir: &std::path::Path,
    log: &mut LogStore,
    sm: &StateMachine,
) -> Result<(), EngineError> {
    use openraft::storage::RaftLogStorage;
    let state = log.get_log_state().await.map_err(|e| EngineError::raft("reading the log state", e))?;
    let purged = types::index_of(state.last_purged_log_id.as_ref());
    let applied = sm.applied_index();
    if applied < purged {
        return Err(EngineError::Damaged(format!(
            "the state machine {sm} is at index {applied}, but the Raft log {log} holds no entries up to \
             index {purged} and no intact snapshot covers them (a damaged state machine or snapshot file \
             was set aside; see the log above): this node cannot rebuild its state from its own files; \
             remove it from the cluster (`raftkvctl member remove {id}`), move its data directory {dir} \
             away, and add it back as a new member with an empty directory (`raftkvctl member add {id} ...`)",
            sm = dir.join("sm").join("state.redb").display(),
            log = dir.join(LOG_FILE).display(),
            id = config.id,
            dir = dir.display(),
        )));
    }
    Ok(())
}

/// Step 5: starts openraft on the stores, with the gRPC Raft network resolving peers
/// through `resolver`.
async fn build_raft(
    config: &NodeConfig,
    resolver: Arc<dyn Resolver>,
    tls: Option<&NodeTls>,
    log: LogStore,
    sm: StateMachine,
) -> Result<Raft, EngineError> {
    let raft_config = Arc::new(config.raft_config()?);
    let network = NetworkFactory::new(resolver, tls.map(|t| t.outbound.clone()));
    Raft::new(config.id.clone(), raft_config, network, log, sm).await.map_err(|e| EngineError::raft("starting", e))
}

/// What every service of this node shares.
fn node_context(
    config: &NodeConfig,
    raft: &Raft,
    sm: &StateMachine,
    resolver: Arc<dyn Resolver>,
    gossip: Option<Gossip>,
    tls: Option<&NodeTls>,
    stages: Arc<latency::WriteStages>,
) -> NodeContext {
    NodeContext {
        id: config.id.clone(),
        raft: raft.clone(),
        sm: sm.clone(),
        resolver,
        gossip,
        forwarder: Forwarder::new(tls.map(|t| t.outbound.clone())),
        leader_contact: Arc::new(LeaderContact::default()),
        stages,
    }
}

/// The running servers, and what [`Node::shutdown`] stops with them.
struct Servers {
    handles: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
    leader_health: JoinHandle<()>,
    stop_request: StopRequest,
}

/// Step 6: serves the client port (KV, Admin, the compat services, health, reflection) and
/// the Raft port, on one listener or two, until `stop` is set; starts the leader health.
async fn start_servers(
    config: &NodeConfig,
    (grpc, raft_listener): (TcpListener, Option<TcpListener>),
    tls: Option<&NodeTls>,
    me: &NodeInfo,
    ctx: &NodeContext,
    ready: watch::Receiver<service::readiness::Readiness>,
    stop: &watch::Sender<bool>,
) -> Result<Servers, EngineError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let stop_request = StopRequest::default();
    let raft_svc = RaftService::new(ctx.raft.clone(), ctx.sm.clone(), ctx.leader_contact.clone(), &config.id, me)
        .with_stop(stop.subscribe())
        .into_server();
    let overload = Overload::new(config.id.to_string(), config.overload);
    let mut client_routes = client_routes(ctx, me, health, &stop_request, config, &overload, stop)?;
    let served = [KvServer::<KvService>::NAME, ExampleServer::<ExampleService>::NAME];
    let leader_health =
        LeaderHealth::new(health_reporter, served).start(ctx.raft.server_metrics(), ready, stop.subscribe()).await;
    let mut handles = Vec::new();
    let max = config.overload.max_client_connections;
    let client_limits = PortLimits {
        max_connections: Some(max),
        refusal: format!(
            "node {} has {max} client connections open, its limit (--max-client-connections); nothing was done, retry with backoff or on another node",
            config.id
        ),
        window_bytes: Some(rpc::limits::CLIENT_PORT_WINDOW_BYTES),
    };
    match raft_listener {
        // One listener for both happens only without TLS (`NodeConfig::tls_files`): the
        // connection limit then counts the peers' connections too.
        None => {
            client_routes.add_service(raft_svc);
            handles.push(serve(client_routes, grpc, None, client_limits, stop.subscribe()));
        }
        Some(raft_listener) => {
            let client_tls = tls.map(|t| t.client_port.clone());
            handles.push(serve(client_routes, grpc, client_tls, client_limits, stop.subscribe()));
            let mut raft_routes = RoutesBuilder::default();
            raft_routes.add_service(raft_svc);
            let raft_tls = tls.map(|t| t.raft_port.clone());
            handles.push(serve(raft_routes, raft_listener, raft_tls, PortLimits::default(), stop.subscribe()));
        }
    }
    Ok(Servers { handles, leader_health, stop_request })
}

/// The services of the client port: KV (and the followers' streams of forwarded KV writes), Admin, the Go seeds' `Example`, `RaftAdmin` and
/// `RaftManager`, etcd's v3 `KV`, `Watch`, `Lease`, `Cluster`, `Maintenance` and `Auth` ([`etcd_api`]), gRPC health
/// and reflection. KV requests slower than the config's `slow_request_threshold` are
/// logged; tokens last its `auth_token_ttl`. Every service but health and reflection is
/// behind the overload guard (outermost, so a shed call costs no token check) and the
/// authentication check.
fn client_routes(
    ctx: &NodeContext,
    me: &NodeInfo,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    stop_request: &StopRequest,
    config: &NodeConfig,
    overload: &Overload,
    stop: &watch::Sender<bool>,
) -> Result<RoutesBuilder, EngineError> {
    let slow_request = config.slow_request_threshold;
    let reflection =
        reflection_builder().build_v1().map_err(|e| EngineError::Config(format!("gRPC reflection: {e}")))?;
    // grpcurl and many GUI clients still ask the v1alpha protocol first; both describe the
    // same files.
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|e| EngineError::Config(format!("gRPC reflection (v1alpha): {e}")))?;
    let hashicorp = HashicorpAdmin::new(ctx.clone(), Operations::default(), stop_request.clone());
    let cluster_name = ctx.gossip.as_ref().map_or(gossip::DEFAULT_CLUSTER_ID, |g| g.config().cluster_id.as_str());
    let etcd = etcd_api::EtcdApi::new(ctx.clone(), cluster_name).with_token_ttl(config.auth_token_ttl);
    // The leader's lease expiry; it ends when the node stops (`stop`).
    drop(etcd.lease.start_expiry(stop.subscribe()));
    let mut routes = RoutesBuilder::default();
    // Every service but health and reflection behind the one authentication check.
    let sm = &ctx.sm;
    let kv = KvService::new(ctx.clone()).with_slow_request_threshold(slow_request);
    // The followers' streams of forwarded KV writes: behind the overload guard (each write
    // takes its own place), not the authentication check (each write is checked by the KV
    // service on its own credentials; the stream is no user's).
    let forward = ForwardService::new(kv.clone(), overload.clone()).with_stop(stop.subscribe());
    routes
        .add_service(overload.guard(AuthGuard::new(sm, kv.into_server())))
        .add_service(overload.guard(forward.into_server()))
        .add_service(overload.guard(AuthGuard::new(
            sm,
            AuthService::new(ctx.clone()).with_token_ttl(config.auth_token_ttl).into_server(),
        )))
        .add_service(overload.guard(AuthGuard::new(sm, ExampleService::new(ctx.clone(), me.clone()).into_server())))
        .add_service(overload.guard(AuthGuard::new(sm, AdminService::new(ctx.clone()).into_server())))
        .add_service(overload.guard(AuthGuard::new(sm, RaftAdminService::new(hashicorp.clone()).into_server())))
        .add_service(overload.guard(AuthGuard::new(sm, RaftManagerService::new(hashicorp).into_server())))
        // The etcd services behind etcd's rule: its clients' `token` metadata, per-key checks
        // for KV and Watch, the root role for administration (etcd_api::guard_rule).
        .add_service(overload.guard(AuthGuard::with_rule(sm, etcd.kv.into_server(), etcd_api::guard_rule)))
        .add_service(overload.guard(AuthGuard::with_rule(sm, etcd.cluster.into_server(), etcd_api::guard_rule)))
        .add_service(overload.guard(AuthGuard::with_rule(sm, etcd.maintenance.into_server(), etcd_api::guard_rule)))
        .add_service(overload.guard(AuthGuard::with_rule(sm, etcd.watch.into_server(), etcd_api::guard_rule)))
        .add_service(overload.guard(AuthGuard::with_rule(sm, etcd.auth.into_server(), etcd_api::guard_rule)))
        .add_service(overload.guard(AuthGuard::with_rule(sm, etcd.lease.into_server(), etcd_api::guard_rule)))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha);
    Ok(routes)
}

/// What gRPC reflection describes on the client port: every raftkv package, health and the
/// Go seeds' services.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(proto::compat::example::FILE_DESCRIPTOR_SET)
        // RaftAdmin and RaftManager define the same package-less message names; each
        // service resolves to its own complete file, and a bare message name to the last.
        .register_encoded_file_descriptor_set(proto::compat::raftmanager::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(proto::compat::raftadmin::FILE_DESCRIPTOR_SET)
}

/// Step 6b: with `--metrics-addr`, installs the process's metrics recorder and serves the
/// metrics port ([`telemetry`]: `/metrics`, `/livez`, `/readyz`, `/status.json`, the status
/// page) until `stop` is set.
fn start_metrics(
    listener: TcpListener,
    ctx: &NodeContext,
    ready: watch::Receiver<service::readiness::Readiness>,
    stop: &watch::Sender<bool>,
) -> Result<Vec<JoinHandle<()>>, EngineError> {
    let recorder = telemetry::install_recorder().map_err(|e| EngineError::Config(e.to_string()))?;
    let sources = telemetry::Sources {
        id: ctx.id.clone(),
        raft: ctx.raft.clone(),
        sm: ctx.sm.clone(),
        gossip: ctx.gossip.clone(),
        stages: ctx.stages.clone(),
        ready,
        history: Arc::new(telemetry::History::default()),
        recorder,
    };
    Ok(telemetry::serve(listener, sources, stop.subscribe()))
}

/// Step 7: writes `listen.json` for tools and tests, and logs that the node started.
fn announce(config: &NodeConfig, dir: &std::path::Path, listen: &ListenAddrs) -> Result<(), EngineError> {
    write_listen_file(&dir.join(LISTEN_FILE), listen)?;
    tracing::info!(
        node = %config.id,
        grpc_addr = %listen.grpc_addr,
        raft_addr = %listen.raft_addr,
        gossip_addr = listen.gossip_addr.as_deref().unwrap_or("off"),
        metrics_addr = listen.metrics_addr.as_deref().unwrap_or("off"),
        dir = %dir.display(),
        "node started"
    );
    Ok(())
}

/// Step 8: the background tasks: the periodic snapshot check, publishing to gossip, and
/// auto-join.
fn start_background(
    config: &NodeConfig,
    raft: &Raft,
    gossip: Option<&Gossip>,
    tls: Option<&NodeTls>,
    me: NodeInfo,
    stop: &watch::Sender<bool>,
) -> Vec<JoinHandle<()>> {
    let mut background = Vec::new();
    if !config.snapshot_interval.is_zero() {
        let timer = background::snapshot_timer(raft.clone(), config.snapshot_interval, stop.subscribe());
        background.push(tokio::spawn(timer));
    }
    if let Some(g) = gossip {
        background.push(tokio::spawn(background::publish_to_gossip(raft.clone(), g.clone(), stop.subscribe())));
    }
    if !config.join.is_empty() || config.join_via_gossip {
        let seeds = background::JoinSeeds {
            named: config.join.clone(),
            gossip: gossip.cloned(),
            tls: tls.map(|t| t.outbound.clone()),
            credentials: config.join_credentials.clone(),
        };
        let join = background::auto_join(raft.clone(), config.id.clone(), me, seeds, stop.subscribe());
        background.push(tokio::spawn(join));
    }
    background
}

/// Starts a one-node cluster of this node, unless it already has state.
async fn bootstrap(raft: &Raft, id: &NodeId, me: NodeInfo) -> Result<(), EngineError> {
    let initialized = raft.is_initialized().await.map_err(|e| EngineError::raft("reading the state", e))?;
    if initialized {
        tracing::info!(node = %id, "existing Raft state found; --raft_bootstrap has nothing to do");
        return Ok(());
    }
    match raft.initialize(BTreeMap::from([(id.clone(), me)])).await {
        Ok(()) => {
            tracing::info!(node = %id, "bootstrapped a new one-node cluster");
            Ok(())
        }
        Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {
            tracing::info!(node = %id, "already initialized; --raft_bootstrap has nothing to do");
            Ok(())
        }
        Err(e) => Err(EngineError::raft("bootstrap failed", e)),
    }
}

/// The resolver chain: gossip's live nodes (what a node says about itself now), then the
/// static peers (what the operator wrote), then the membership (what a node said when it
/// joined). Empty sources are left out.
fn resolver_chain(gossip: Option<&Gossip>, peers: AddressMap, membership: Arc<AddressMap>) -> Arc<dyn Resolver> {
    let mut sources: Vec<Arc<dyn Resolver>> = Vec::new();
    if let Some(g) = gossip {
        sources.push(g.resolver());
    }
    if !peers.all().is_empty() {
        sources.push(Arc::new(peers));
    }
    sources.push(membership);
    Arc::new(Chain::new(sources))
}

/// Keeps `resolver` equal to the membership openraft reports. Follows the server metrics,
/// which change only with the role, the leader or the membership (not with every write).
async fn follow_membership(raft: Raft, resolver: Arc<AddressMap>) {
    let mut metrics = raft.server_metrics();
    let mut last_log_id = None;
    loop {
        let membership = metrics.borrow_watched().membership_config.clone();
        if last_log_id.as_ref() != Some(membership.log_id()) {
            resolver.replace_all(membership.nodes().map(|(id, n)| (id.clone(), n.clone())));
            last_log_id = Some(membership.log_id().clone());
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

fn write_listen_file(path: &std::path::Path, listen: &ListenAddrs) -> Result<(), EngineError> {
    let io = |context: String| move |source| EngineError::Io { context, source };
    let json = serde_json::to_vec(listen).map_err(|e| EngineError::Config(e.to_string()))?;
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    std::fs::write(&tmp, json).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("renaming {}", tmp.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertises_the_bound_port_only_for_port_zero() {
        let bound: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 4242));
        assert_eq!(advertised("localhost:0", bound), "localhost:4242");
        assert_eq!(advertised("localhost:40051", bound), "localhost:40051");
    }

    /// The accept queue the kernel reports for a listening socket (`ss`'s Send-Q).
    fn backlog_of(port: u16) -> Option<u32> {
        let out = std::process::Command::new("ss").args(["-ltnH", &format!("sport = :{port}")]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).split_whitespace().nth(2)?.parse().ok()
    }

    #[tokio::test]
    async fn ports_listen_with_the_long_accept_queue_and_a_taken_port_is_named() -> Result<(), EngineError> {
        let listener = bind("localhost:0").await?;
        let port = listener.local_addr().map_err(|e| EngineError::Bind { addr: "local".into(), source: e })?.port();
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(LISTEN_BACKLOG);
        assert_eq!(backlog_of(port), Some(LISTEN_BACKLOG.min(somaxconn)), "tokio's own bind asks for 1,024");
        let taken = format!("127.0.0.1:{port}");
        match bind(&taken).await {
            Err(EngineError::Bind { addr, source }) => {
                assert_eq!(addr, taken);
                assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
            }
            other => panic!("binding a taken port: {other:?}"),
        }
        Ok(())
    }
}
