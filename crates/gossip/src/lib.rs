//! Gossip discovery for raftkv, on chitchat.
//!
//! This crate owns what a node tells the others over gossip and what it hears back: every
//! node publishes its metadata ([`NodeMeta`]: id, Raft and gRPC addresses, role, the leader
//! it sees, applied index, version) under the key names in [`keys`], the only place they are
//! spelled; chitchat's phi-accrual failure detector says which nodes are live and which are
//! dead; a graceful [`Gossip::leave`] tells the others this node is going before it goes.
//!
//! # Brief overview
//! - [`GossipConfig`]: the flags (`--gossip_addr`, `--gossip_seeds`,
//!   `--gossip_advertise_addr`, `--cluster_id`, the interval and failure-detector settings),
//!   validated with messages naming the flag.
//! - [`Gossip::start`]: spawns chitchat (on UDP, or any chitchat `Transport`, such as the
//!   in-process `ChannelTransport` of the unit tests) and a task that follows chitchat's
//!   live-node watcher: it keeps a [`resolver::AddressMap`] equal to the live nodes'
//!   addresses ([`Gossip::resolver`]) and emits [`GossipEvent`]s (joined, left, dead).
//! - [`Gossip::view`]: every node gossip knows, live, dead or left, one entry per node id.
//! - [`compare`]: gossip's view beside the Raft membership, as a list of
//!   [`Disagreement`]s.
//!
//! Nodes with another cluster id are ignored by chitchat itself (the id travels in every
//! message), so two clusters on one network never mix.
//!
//! With a key (`--gossip-key-file`, [`GossipConfig::key_file`]), [`Gossip::start_udp`]
//! seals every datagram ([`seal`]: ChaCha20-Poly1305, the cluster id bound in, a replay
//! window): forged, replayed, stale and foreign datagrams are dropped before chitchat sees
//! them, and counted ([`Gossip::drops`]).
//!
//! **Gossip is advisory**: nothing here changes the Raft membership. The engine uses gossip
//! to find addresses (the resolver), to find the cluster for `--join`, and to show liveness
//! in `Status`.
//!
//! This crate must never depend on openraft directly (it may reach openraft's types only
//! through `types`; `cargo xtask deps` checks this), nor on tonic or the engine.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chitchat::transport::Transport;
use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState, ProtocolVersion,
    spawn_chitchat,
};
use resolver::{AddressMap, Resolver};
use tokio::sync::{Mutex, broadcast, watch};
use tokio::task::JoinHandle;
use types::{NodeId, NodeInfo};

pub use chitchat::transport::{ChannelTransport, UdpTransport};
pub use seal::{DropCounts, GossipKey, KeyError};

pub mod seal;

/// The gossip keys a node publishes about itself; the only place they are spelled.
pub mod keys {
    /// The node's id (`--raft_id`); also chitchat's node id.
    pub const NODE_ID: &str = "node_id";
    /// The node's Raft address, as advertised.
    pub const RAFT_ADDR: &str = "raft_addr";
    /// The node's client (gRPC) address, as advertised.
    pub const GRPC_ADDR: &str = "grpc_addr";
    /// The node's Raft role: `leader`, `follower`, `candidate`, `learner`, `shutdown`.
    pub const ROLE: &str = "role";
    /// The leader the node sees; empty when it knows none.
    pub const LEADER: &str = "leader";
    /// The last log index the node has applied (published at most once per gossip interval).
    pub const APPLIED_INDEX: &str = "applied_index";
    /// The raftkv version the node runs.
    pub const VERSION: &str = "version";
    /// Set (to `true`) by a node that is leaving gracefully, just before it stops gossiping.
    pub const LEAVING: &str = "leaving";

    /// Every key, for checks.
    pub const ALL: [&str; 8] = [NODE_ID, RAFT_ADDR, GRPC_ADDR, ROLE, LEADER, APPLIED_INDEX, VERSION, LEAVING];
}

/// What can stop gossip from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GossipError {
    /// A setting is invalid; the message names the flag.
    #[error("{0}")]
    Config(String),
    /// An address could not be resolved.
    #[error("{flag} {addr:?} cannot be resolved: {reason}")]
    Resolve {
        /// The flag that gave it.
        flag: &'static str,
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The gossip key file cannot be used (the message names it, never its contents).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// chitchat failed to start (typically: the UDP port is taken).
    #[error("gossip on {addr} failed to start: {reason}")]
    Start {
        /// The listen address.
        addr: SocketAddr,
        /// chitchat's error.
        reason: String,
    },
}

/// The cluster id used when `--cluster_id` is not given.
pub const DEFAULT_CLUSTER_ID: &str = "raftkv";

/// Gossip settings of one node.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// Where to listen for gossip (`--gossip_addr`, UDP `HOST:PORT`; port 0 picks a free port).
    pub listen_addr: String,
    /// The address other nodes gossip to (`--gossip_advertise_addr`); default: the listen
    /// address with the bound port. Required when the listen host is `0.0.0.0` or `::`.
    pub advertise_addr: Option<String>,
    /// Gossip addresses of nodes to contact first (`--gossip_seeds`); itself included is fine.
    pub seeds: Vec<String>,
    /// Nodes gossip only with nodes of the same cluster id (`--cluster_id`).
    pub cluster_id: String,
    /// How often a node gossips (`--gossip_interval`).
    pub interval: Duration,
    /// The failure detector's phi threshold (`--gossip_phi_threshold`): a node is dead when
    /// the time since its last heartbeat exceeds this many times its mean heartbeat interval.
    pub phi_threshold: f64,
    /// How long a dead node is still listed before it is forgotten (`--gossip_dead_grace`).
    pub dead_grace: Duration,
    /// The cluster's gossip key (`--gossip-key-file`): with it, every datagram is sealed
    /// ([`seal`]) and [`Gossip::start_udp`] reads the file when gossip starts.
    pub key_file: Option<PathBuf>,
}

impl GossipConfig {
    /// Defaults for a node gossiping on `listen_addr`: cluster id `raftkv`, a 500 ms interval,
    /// phi threshold 8, dead nodes listed for an hour.
    #[must_use]
    pub fn new(listen_addr: impl Into<String>) -> Self {
        Self {
            listen_addr: listen_addr.into(),
            advertise_addr: None,
            seeds: Vec::new(),
            cluster_id: DEFAULT_CLUSTER_ID.into(),
            interval: Duration::from_millis(500),
            phi_threshold: 8.0,
            dead_grace: Duration::from_secs(3600),
            key_file: None,
        }
    }

    /// Checks every setting; each message names the flag.
    pub fn validate(&self) -> Result<(), GossipError> {
        let bad = |m: String| Err(GossipError::Config(m));
        let host_port = |flag: &str, a: &str, zero_ok: bool| -> Result<(), GossipError> {
            let ok = a
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| zero_ok || p != 0));
            if ok {
                Ok(())
            } else {
                let ports = if zero_ok { "0 picks a free port" } else { "1 to 65535" };
                Err(GossipError::Config(format!("{flag} {a:?} is not HOST:PORT (port {ports})")))
            }
        };
        host_port("--gossip_addr", &self.listen_addr, true)?;
        if let Some(a) = &self.advertise_addr {
            host_port("--gossip_advertise_addr", a, false)?;
        }
        for s in &self.seeds {
            host_port("--gossip_seeds", s, false)?;
        }
        if self.cluster_id.is_empty() || self.cluster_id.len() > 128 {
            return bad(format!("--cluster_id {:?} must be 1 to 128 bytes", self.cluster_id));
        }
        if self.interval < Duration::from_millis(10) || self.interval > Duration::from_secs(60) {
            return bad(format!("--gossip_interval is {:?}; it must be from 10ms to 60s", self.interval));
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold >= 1.0 && self.phi_threshold <= 100.0) {
            return bad(format!("--gossip_phi_threshold is {}; it must be from 1 to 100", self.phi_threshold));
        }
        if self.dead_grace < self.interval {
            return bad(format!(
                "--gossip_dead_grace ({:?}) must be at least --gossip_interval ({:?})",
                self.dead_grace, self.interval
            ));
        }
        Ok(())
    }

    /// How long after a node's last heartbeat it should be reported dead, with heartbeats
    /// arriving once per interval: phi threshold × interval, plus one interval for the next
    /// liveness check. Heartbeats that arrive late (a loaded machine, a relayed one) raise
    /// the mean interval and so the real detection time; tests allow a margin over this.
    #[must_use]
    pub fn detection_bound(&self) -> Duration {
        self.interval.mul_f64(self.phi_threshold + 1.0)
    }

    fn chitchat_config(&self, id: ChitchatId, listen: SocketAddr) -> ChitchatConfig {
        ChitchatConfig {
            chitchat_id: id,
            cluster_id: self.cluster_id.clone(),
            gossip_interval: self.interval,
            listen_addr: listen,
            seed_nodes: self.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: self.phi_threshold,
                sampling_window_size: 1000,
                max_interval: self.interval * 20,
                initial_interval: self.interval,
                dead_node_grace_period: self.dead_grace,
            },
            marked_for_deletion_grace_period: self.dead_grace,
            catchup_callback: None,
            // A node that announced its leave is not live, even before its heartbeats stop.
            extra_liveness_predicate: Some(Box::new(|s: &NodeState| s.get(keys::LEAVING).is_none())),
            protocol_version: ProtocolVersion::V0,
        }
    }
}

/// What a node publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMeta {
    /// The node id.
    pub id: NodeId,
    /// The advertised Raft and gRPC addresses.
    pub addrs: NodeInfo,
    /// The Raft role (see [`keys::ROLE`]).
    pub role: String,
    /// The leader the node sees.
    pub leader: Option<NodeId>,
    /// The last applied log index.
    pub applied_index: u64,
    /// The raftkv version.
    pub version: String,
}

impl NodeMeta {
    /// Metadata of a node that has just started: role `starting`, no leader, nothing applied.
    #[must_use]
    pub fn new(id: NodeId, addrs: NodeInfo, version: impl Into<String>) -> Self {
        Self { id, addrs, role: "starting".into(), leader: None, applied_index: 0, version: version.into() }
    }

    fn key_values(&self) -> Vec<(String, String)> {
        vec![
            (keys::NODE_ID.into(), self.id.to_string()),
            (keys::RAFT_ADDR.into(), self.addrs.raft_addr.clone()),
            (keys::GRPC_ADDR.into(), self.addrs.grpc_addr.clone()),
            (keys::ROLE.into(), self.role.clone()),
            (keys::LEADER.into(), self.leader.as_ref().map(ToString::to_string).unwrap_or_default()),
            (keys::APPLIED_INDEX.into(), self.applied_index.to_string()),
            (keys::VERSION.into(), self.version.clone()),
        ]
    }

    /// Reads a node's metadata from its gossip state; `None` if the node id or an address is
    /// missing or malformed (such a node is ignored).
    fn from_state(id: &ChitchatId, s: &NodeState) -> Option<Self> {
        let node_id = NodeId::new(&id.node_id).ok()?;
        let raft_addr = s.get(keys::RAFT_ADDR).filter(|a| !a.is_empty())?.to_string();
        let grpc_addr = s.get(keys::GRPC_ADDR).filter(|a| !a.is_empty())?.to_string();
        Some(Self {
            id: node_id,
            addrs: NodeInfo { raft_addr, grpc_addr },
            role: s.get(keys::ROLE).unwrap_or_default().to_string(),
            leader: s.get(keys::LEADER).and_then(|l| NodeId::new(l).ok()),
            applied_index: s.get(keys::APPLIED_INDEX).and_then(|a| a.parse().ok()).unwrap_or(0),
            version: s.get(keys::VERSION).unwrap_or_default().to_string(),
        })
    }
}

/// What gossip says about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Liveness {
    /// Heartbeats arrive.
    Live,
    /// Announced a graceful leave.
    Left,
    /// The failure detector gave up on it.
    Dead,
}

impl std::fmt::Display for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Liveness::Live => "live",
            Liveness::Left => "left",
            Liveness::Dead => "dead",
        })
    }
}

/// One node as gossip sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    /// What it published.
    pub meta: NodeMeta,
    /// Live, left or dead.
    pub liveness: Liveness,
    /// Where it gossips.
    pub gossip_addr: SocketAddr,
    /// Its chitchat generation (start time in ms): a restarted node has a new one.
    pub generation: u64,
}

/// Every node gossip knows, one entry per node id: the live generation if there is one,
/// else the newest.
pub type View = BTreeMap<NodeId, PeerState>;

/// A change in the set of live nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipEvent {
    /// A node became live (a new node, a restarted one, or one back from a partition).
    Joined {
        /// The node.
        id: NodeId,
        /// Its addresses.
        addrs: NodeInfo,
    },
    /// A node is no longer live.
    Left {
        /// The node.
        id: NodeId,
        /// True when it announced its leave; false when the failure detector declared it dead.
        graceful: bool,
    },
}

/// A running gossip member. Cheap to clone; every clone is the same member.
#[derive(Clone)]
pub struct Gossip {
    inner: Arc<Inner>,
}

struct Inner {
    config: GossipConfig,
    me: ChitchatId,
    /// With a key: the datagrams dropped, by reason.
    drops: Option<Arc<seal::DropCounters>>,
    handle: Mutex<Option<ChitchatHandle>>,
    chitchat: Arc<Mutex<Chitchat>>,
    resolver: Arc<AddressMap>,
    events: broadcast::Sender<GossipEvent>,
    follower: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl std::fmt::Debug for Gossip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gossip").field("me", &self.inner.me).finish_non_exhaustive()
    }
}

/// Resolves `addr` (`HOST:PORT`) to one socket address, preferring IPv4.
async fn resolve(flag: &'static str, addr: &str) -> Result<SocketAddr, GossipError> {
    let err = |reason: String| GossipError::Resolve { flag, addr: addr.to_string(), reason };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr).await.map_err(|e| err(e.to_string()))?.collect();
    addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied().ok_or_else(|| err("no address found".into()))
}

/// Asks the OS for a free UDP port on `addr`'s host. The socket is closed again before
/// chitchat binds the port, so another process could take it in between (a race of
/// microseconds); [`Gossip::start`] then tries again with a new port.
fn free_udp_port(addr: SocketAddr) -> Result<SocketAddr, GossipError> {
    let socket = std::net::UdpSocket::bind(addr)
        .map_err(|e| GossipError::Start { addr, reason: format!("cannot bind a UDP socket: {e}") })?;
    socket.local_addr().map_err(|e| GossipError::Start { addr, reason: e.to_string() })
}

/// How many times [`Gossip::start`] tries a fresh port when asked for port 0.
const PORT_ZERO_ATTEMPTS: usize = 5;

impl Gossip {
    /// Starts gossiping `me` with `config` over UDP: sealed with the key of
    /// [`GossipConfig::key_file`] when it is set ([`seal::SealedUdpTransport`]), else plain
    /// chitchat ([`UdpTransport`]). With port 0 in `--gossip_addr` a free port is picked (see
    /// [`Gossip::advertise_addr`] for the one chosen).
    pub async fn start_udp(config: GossipConfig, me: NodeMeta) -> Result<Self, GossipError> {
        let Some(path) = &config.key_file else {
            return Self::start_on(config, me, &UdpTransport, None).await;
        };
        let key = GossipKey::from_file(path)?;
        let drops = Arc::new(seal::DropCounters::default());
        let transport = seal::SealedUdpTransport::new(key, &config.cluster_id, drops.clone());
        Self::start_on(config, me, &transport, Some(drops)).await
    }

    /// Starts gossiping `me` with `config` over any chitchat `transport` (the unit tests use
    /// the in-process [`ChannelTransport`]), unsealed; nodes use [`Gossip::start_udp`].
    ///
    /// # Errors
    /// As [`Gossip::start_udp`]; a [`GossipConfig::key_file`] is refused here.
    pub async fn start(config: GossipConfig, me: NodeMeta, transport: &dyn Transport) -> Result<Self, GossipError> {
        if config.key_file.is_some() {
            return Err(GossipError::Config("a gossip key needs the sealed UDP transport (Gossip::start_udp)".into()));
        }
        Self::start_on(config, me, transport, None).await
    }

    async fn start_on(
        config: GossipConfig,
        me: NodeMeta,
        transport: &dyn Transport,
        drops: Option<Arc<seal::DropCounters>>,
    ) -> Result<Self, GossipError> {
        config.validate()?;
        let listen = resolve("--gossip_addr", &config.listen_addr).await?;
        let advertise_given = match &config.advertise_addr {
            Some(a) => Some(resolve("--gossip_advertise_addr", a).await?),
            None if listen.ip().is_unspecified() => {
                return Err(GossipError::Config(format!(
                    "--gossip_addr {} listens on every interface; give --gossip_advertise_addr, the address \
                     other nodes reach this one at",
                    config.listen_addr
                )));
            }
            None => None,
        };
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let attempts = if listen.port() == 0 { PORT_ZERO_ATTEMPTS } else { 1 };
        let mut last_error = None;
        for _ in 0..attempts {
            let bind = if listen.port() == 0 { free_udp_port(listen)? } else { listen };
            let advertise = advertise_given.unwrap_or(bind);
            let id = ChitchatId::new(me.id.to_string(), generation, advertise);
            let chitchat_config = config.chitchat_config(id.clone(), bind);
            match spawn_chitchat(chitchat_config, me.key_values(), transport).await {
                Ok(handle) => return Ok(Self::follow(config, id, handle, &me, drops)),
                Err(e) => last_error = Some(GossipError::Start { addr: bind, reason: format!("{e:#}") }),
            }
        }
        Err(last_error.unwrap_or(GossipError::Start { addr: listen, reason: "no attempt made".into() }))
    }

    fn follow(
        config: GossipConfig,
        me: ChitchatId,
        handle: ChitchatHandle,
        meta: &NodeMeta,
        drops: Option<Arc<seal::DropCounters>>,
    ) -> Self {
        let chitchat = handle.chitchat();
        let resolver = Arc::new(AddressMap::gossip());
        resolver.set(meta.id.clone(), meta.addrs.clone());
        let (events, _) = broadcast::channel(256);
        let follower = tokio::spawn(follow_live_nodes(chitchat.clone(), resolver.clone(), events.clone()));
        tracing::info!(
            node = %meta.id,
            gossip_addr = %me.gossip_advertise_addr,
            cluster_id = %config.cluster_id,
            seeds = ?config.seeds,
            sealed = drops.is_some(),
            "gossip started"
        );
        Self {
            inner: Arc::new(Inner {
                config,
                me,
                drops,
                handle: Mutex::new(Some(handle)),
                chitchat,
                resolver,
                events,
                follower,
            }),
        }
    }

    /// The address other nodes gossip to (with the port actually bound when port 0 was
    /// asked for and no advertise address was given).
    #[must_use]
    pub fn advertise_addr(&self) -> SocketAddr {
        self.inner.me.gossip_advertise_addr
    }

    /// The settings gossip runs with.
    #[must_use]
    pub fn config(&self) -> &GossipConfig {
        &self.inner.config
    }

    /// With a gossip key: the datagrams dropped since gossip started, by reason; `None`
    /// when gossip is not sealed.
    #[must_use]
    pub fn drops(&self) -> Option<DropCounts> {
        self.inner.drops.as_ref().map(|d| d.snapshot())
    }

    /// Node id → addresses of the live nodes (this one included), kept current.
    #[must_use]
    pub fn resolver(&self) -> Arc<AddressMap> {
        self.inner.resolver.clone()
    }

    /// Join and leave events from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<GossipEvent> {
        self.inner.events.subscribe()
    }

    /// Publishes this node's role, the leader it sees and its applied index. Only changed
    /// values are sent.
    pub async fn publish_state(&self, role: &str, leader: Option<&NodeId>, applied_index: u64) {
        let leader = leader.map(ToString::to_string).unwrap_or_default();
        let mut chitchat = self.inner.chitchat.lock().await;
        let state = chitchat.self_node_state();
        state.set(keys::ROLE, role);
        state.set(keys::LEADER, leader);
        state.set(keys::APPLIED_INDEX, applied_index);
    }

    /// Every node gossip knows (this one included), one entry per node id.
    pub async fn view(&self) -> View {
        let chitchat = self.inner.chitchat.lock().await;
        view_of(&chitchat)
    }

    /// Leaves gracefully: announces the leave, gives it `wait` to spread (two gossip
    /// intervals is plenty on a LAN), then stops gossiping. Idempotent.
    pub async fn leave(&self, wait: Duration) {
        let Some(handle) = self.inner.handle.lock().await.take() else { return };
        handle.with_chitchat(|c| c.self_node_state().set(keys::LEAVING, "true")).await;
        tracing::info!(node = %self.inner.me.node_id, wait = ?wait, "gossip: announcing leave");
        tokio::time::sleep(wait).await;
        self.inner.follower.abort();
        if let Err(e) = handle.shutdown().await {
            tracing::warn!(node = %self.inner.me.node_id, error = %e, "gossip did not stop cleanly");
        }
    }
}

fn view_of(chitchat: &Chitchat) -> View {
    let live: BTreeSet<&ChitchatId> = chitchat.live_nodes().collect();
    let mut view = View::new();
    for (id, state) in chitchat.node_states() {
        let Some(meta) = NodeMeta::from_state(id, state) else { continue };
        let liveness = if state.get(keys::LEAVING).is_some() {
            Liveness::Left
        } else if live.contains(id) {
            Liveness::Live
        } else {
            Liveness::Dead
        };
        let peer = PeerState { meta, liveness, gossip_addr: id.gossip_advertise_addr, generation: id.generation_id };
        match view.get(&peer.meta.id) {
            Some(old)
                if (old.liveness, std::cmp::Reverse(old.generation))
                    <= (liveness, std::cmp::Reverse(peer.generation)) => {}
            _ => {
                view.insert(peer.meta.id.clone(), peer);
            }
        }
    }
    view
}

/// Follows chitchat's live-node watcher: keeps `resolver` equal to the live nodes' addresses
/// and sends join and leave events.
async fn follow_live_nodes(
    chitchat: Arc<Mutex<Chitchat>>,
    resolver: Arc<AddressMap>,
    events: broadcast::Sender<GossipEvent>,
) {
    let mut watcher: watch::Receiver<BTreeMap<ChitchatId, NodeState>> = chitchat.lock().await.live_nodes_watcher();
    let mut previous: BTreeMap<NodeId, NodeInfo> = BTreeMap::new();
    loop {
        let live: BTreeMap<NodeId, NodeInfo> = {
            let snapshot = watcher.borrow_and_update();
            // The newest generation of each node id wins.
            let mut newest: BTreeMap<NodeId, (u64, NodeInfo)> = BTreeMap::new();
            for (id, state) in snapshot.iter() {
                let Some(meta) = NodeMeta::from_state(id, state) else { continue };
                if newest.get(&meta.id).is_none_or(|(g, _)| *g < id.generation_id) {
                    newest.insert(meta.id, (id.generation_id, meta.addrs));
                }
            }
            newest.into_iter().map(|(id, (_, addrs))| (id, addrs)).collect()
        };
        resolver.replace_all(live.clone());
        for (id, addrs) in &live {
            if previous.get(id) != Some(addrs) {
                tracing::info!(peer = %id, raft_addr = %addrs.raft_addr, grpc_addr = %addrs.grpc_addr, "gossip: node live");
                let _ = events.send(GossipEvent::Joined { id: id.clone(), addrs: addrs.clone() });
            }
        }
        let gone: Vec<NodeId> = previous.keys().filter(|id| !live.contains_key(*id)).cloned().collect();
        if !gone.is_empty() {
            let view = view_of(&*chitchat.lock().await);
            for id in gone {
                let graceful = view.get(&id).is_some_and(|p| p.liveness == Liveness::Left);
                tracing::info!(peer = %id, graceful, "gossip: node no longer live");
                let _ = events.send(GossipEvent::Left { id, graceful });
            }
        }
        previous = live;
        if watcher.changed().await.is_err() {
            return;
        }
    }
}

/// One way gossip and the Raft membership disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disagreement {
    /// A member that gossip does not see live (dead, left, or never heard of).
    MemberNotLive {
        /// The member.
        id: NodeId,
        /// What gossip says, if it knows the node.
        liveness: Option<Liveness>,
    },
    /// A live node gossip sees that is not a member.
    LiveNotMember {
        /// The node.
        id: NodeId,
    },
    /// A member whose addresses in the membership differ from those it publishes now
    /// (restarted on other ports: it is reached at the gossiped ones).
    AddressChanged {
        /// The member.
        id: NodeId,
        /// In the membership.
        membership: NodeInfo,
        /// Published over gossip.
        gossip: NodeInfo,
    },
}

impl Disagreement {
    /// The node concerned.
    #[must_use]
    pub fn id(&self) -> &NodeId {
        match self {
            Disagreement::MemberNotLive { id, .. }
            | Disagreement::LiveNotMember { id }
            | Disagreement::AddressChanged { id, .. } => id,
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Disagreement::MemberNotLive { .. } => 0,
            Disagreement::LiveNotMember { .. } => 1,
            Disagreement::AddressChanged { .. } => 2,
        }
    }
}

impl std::fmt::Display for Disagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Disagreement::MemberNotLive { id, liveness: Some(l) } => write!(f, "member {id} is {l} in gossip"),
            Disagreement::MemberNotLive { id, liveness: None } => write!(f, "member {id} is unknown to gossip"),
            Disagreement::LiveNotMember { id } => write!(f, "{id} is live in gossip but not a member"),
            Disagreement::AddressChanged { id, membership, gossip } => write!(
                f,
                "member {id} is at raft {} / grpc {} in gossip but raft {} / grpc {} in the membership",
                gossip.raft_addr, gossip.grpc_addr, membership.raft_addr, membership.grpc_addr
            ),
        }
    }
}

/// Where gossip's `view` and the Raft `members` disagree, sorted.
#[must_use]
pub fn compare(view: &View, members: &BTreeMap<NodeId, NodeInfo>) -> Vec<Disagreement> {
    let mut out = Vec::new();
    for (id, info) in members {
        match view.get(id) {
            Some(p) if p.liveness == Liveness::Live => {
                if p.meta.addrs != *info {
                    out.push(Disagreement::AddressChanged {
                        id: id.clone(),
                        membership: info.clone(),
                        gossip: p.meta.addrs.clone(),
                    });
                }
            }
            other => out.push(Disagreement::MemberNotLive { id: id.clone(), liveness: other.map(|p| p.liveness) }),
        }
    }
    for (id, p) in view {
        if p.liveness == Liveness::Live && !members.contains_key(id) {
            out.push(Disagreement::LiveNotMember { id: id.clone() });
        }
    }
    out.sort_by(|a, b| (a.rank(), a.id()).cmp(&(b.rank(), b.id())));
    out
}

#[cfg(test)]
mod tests;
