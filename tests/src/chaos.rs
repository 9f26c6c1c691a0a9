//! The fault harness: a cluster of real `raftkv` processes behind controllable links,
//! concurrent clients recording a history, a seeded schedule of overlapping faults, then
//! every check.
//!
//! - **Nodes** bind distinct loopback addresses (`127.0.0.11`, `127.0.0.12`, ...), ports
//!   from the OS.
//! - **Links**: for every ordered pair of nodes (i, j) the harness runs two
//!   [`crate::proxy::Link`]s, one for i's Raft calls to j and one for i's forwarded client calls to
//!   j, and starts node i with static `--peers j=RAFT_LINK@GRPC_LINK`. The engine's resolver
//!   asks static peers before the membership (gossip is off), so all of i's traffic to j
//!   goes through links the harness controls, and a link's port names its source and
//!   destination. No product change is needed. Clients talk to the nodes directly.
//! - **Faults** ([`FaultKind`]): symmetric isolation of the leader or a follower, one-way
//!   partitions, link delay (75 ± 50 ms), connection resets, SIGKILL of the leader or a
//!   follower (restarted when the fault ends), SIGSTOP/SIGCONT of the leader or a follower
//!   for longer than the election timeout, restart of all nodes, leader transfer, and a
//!   membership change (a follower demoted to learner, promoted back when the fault ends).
//!   A [`Plan`] draws them from the seed: at least `faults` of them, overlapping, spread
//!   over the traffic phase.
//! - **Clients**: `clients` sessions, each a `client::Client` over every node, running get,
//!   put, delete and compare-and-set (a `Txn` comparing the value) on a few keys; every
//!   write has a request id of the harness's own and writes a value nobody else writes.
//!   Each operation is recorded ([`checker::History`]).
//! - **Watchers**: `watchers` resuming watch streams (even ones on the schedule's whole
//!   prefix, odd ones on one key), each starting on a different node from an index before
//!   any write, recording every message ([`watch_check::WatchLog`]). When every node says
//!   the resume index is compacted (a restarted node keeps no history), the watcher records
//!   the explicit gap and restarts from the oldest index offered.
//! - **After the schedule**: every fault is healed, killed nodes restart, demoted nodes are
//!   promoted; writes of unknown outcome are sent again with the same request id (the node
//!   answers the first outcome if it was applied, or applies it now), a final read of every
//!   key closes the history; [`checker::check`] runs; every replica's full scan (`STALE`
//!   range at the same applied index) must be identical; every watcher must catch up with
//!   that index; [`watch_check::check`] runs on the watchers' logs; every node must stop
//!   cleanly.
//!
//! Everything random comes from the seed, so a failing schedule is replayed by its seed
//! (process timing still varies from run to run). A failing schedule also keeps every
//! node's log and the harness's record of its faults and membership calls under
//! `target/chaos-failures/seed-N/` ([`crate::record`]) and says where.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use client::auth::{Access, Permission};
use client::kv::{
    Compare, Consistency, DeleteRequest, GetRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, compare,
    request_op,
};
use client::{Client, ClientError, ClientOptions, Credentials, RaftState, Suffrage};
use proc_harness::certs::CertFiles;
use rpc::tls::ClientTlsFiles;

use crate::checker::{self, History, Input, Operation, Outcome, Output, ValueId, Violation};
use crate::proxy::{Link, Mode};
use crate::record::{self, Journal};
use crate::watch_check::{self, Change, WatchLog, WatchRecord};
use crate::{BoxError, NodeProc, wait_for};

pub mod lease;

/// A small deterministic generator (xorshift64*, seeded through splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, 0 included).
    #[must_use]
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A duration in `lo..=hi`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = u64::try_from((hi.saturating_sub(lo)).as_millis()).unwrap_or(0);
        lo + Duration::from_millis(self.below(span + 1))
    }
}

/// The faults a schedule draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// Cut the leader off from every peer, both ways.
    IsolateLeader,
    /// Cut a follower off from every peer, both ways.
    IsolateFollower,
    /// Drop everything from one node to another (the other way still works).
    OneWay,
    /// Delay every link of one node by 75 ± 50 ms.
    Delay,
    /// Close every open connection between nodes.
    ResetLinks,
    /// SIGKILL the leader; restart it when the fault ends.
    KillLeader,
    /// SIGKILL a follower; restart it when the fault ends.
    KillFollower,
    /// SIGSTOP the leader past the election timeout; SIGCONT when the fault ends.
    PauseLeader,
    /// SIGSTOP a follower; SIGCONT when the fault ends.
    PauseFollower,
    /// SIGKILL every running node, then start them all again.
    RestartAll,
    /// Ask the leader to hand leadership to another voter.
    TransferLeader,
    /// Demote a follower to learner; promote it back when the fault ends.
    Membership,
    /// One node's clock (wall and monotonic, through libfaketime) runs 10 % fast until the
    /// fault ends. Only in schedules with [`ChaosConfig::clock`].
    ClockFast,
    /// One node's clock runs 10 % slow until the fault ends.
    ClockSlow,
    /// Close every open client connection (clients reach the nodes through proxy links),
    /// mid-request. Only in schedules with [`ChaosConfig::client_links`].
    ClientReset,
    /// Drop everything on one node's client link both ways until the fault ends: requests
    /// in flight to it time out and the clients move to another node.
    ClientStall,
    /// One node's clock (wall and monotonic) jumps a minute forward, as a node frozen for a
    /// minute sees it, and stays there (a monotonic clock never steps back).
    ClockJump,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 12] = [
        FaultKind::IsolateLeader,
        FaultKind::IsolateFollower,
        FaultKind::OneWay,
        FaultKind::Delay,
        FaultKind::ResetLinks,
        FaultKind::KillLeader,
        FaultKind::KillFollower,
        FaultKind::PauseLeader,
        FaultKind::PauseFollower,
        FaultKind::RestartAll,
        FaultKind::TransferLeader,
        FaultKind::Membership,
    ];

    /// The clock faults (libfaketime), drawn only by schedules with [`ChaosConfig::clock`].
    pub const CLOCK: [FaultKind; 3] = [FaultKind::ClockFast, FaultKind::ClockSlow, FaultKind::ClockJump];

    /// The client-link faults, drawn only by schedules with [`ChaosConfig::client_links`].
    pub const CLIENT: [FaultKind; 2] = [FaultKind::ClientReset, FaultKind::ClientStall];

    /// Whether this is a clock fault.
    #[must_use]
    pub fn is_clock(self) -> bool {
        Self::CLOCK.contains(&self)
    }
}

/// One planned fault.
#[derive(Debug, Clone, Copy)]
pub struct PlannedFault {
    /// What.
    pub kind: FaultKind,
    /// When, from the start of traffic.
    pub at: Duration,
    /// How long it lasts (0 for the instantaneous kinds).
    pub hold: Duration,
}

/// The faults of one schedule.
#[derive(Debug, Clone)]
pub struct Plan {
    /// By start time.
    pub faults: Vec<PlannedFault>,
}

impl Plan {
    /// Draws `count` faults over `duration` from `seed`: one every `duration / count` (± a
    /// third of that), each lasting 1 to 4 s, so consecutive faults overlap.
    #[must_use]
    pub fn draw(seed: u64, duration: Duration, count: usize) -> Self {
        Self::draw_from(seed, duration, count, &FaultKind::ALL)
    }

    /// As [`Plan::draw`], from the given kinds only.
    #[must_use]
    pub fn draw_from(seed: u64, duration: Duration, count: usize, kinds: &[FaultKind]) -> Self {
        let kinds = if kinds.is_empty() { &FaultKind::ALL[..] } else { kinds };
        let mut rng = Rng::new(seed ^ 0xfa17);
        let slot = duration / u32::try_from(count.max(1)).unwrap_or(1);
        let mut faults = Vec::new();
        for k in 0..count {
            let kind = kinds[usize::try_from(rng.below(kinds.len() as u64)).unwrap_or(0)];
            let base = slot * u32::try_from(k).unwrap_or(0);
            let at = base + rng.between(Duration::ZERO, slot * 2 / 3);
            let hold = match kind {
                FaultKind::ResetLinks
                | FaultKind::RestartAll
                | FaultKind::TransferLeader
                | FaultKind::ClockJump
                | FaultKind::ClientReset => Duration::ZERO,
                FaultKind::PauseLeader | FaultKind::PauseFollower => {
                    rng.between(Duration::from_millis(1000), Duration::from_millis(2500))
                }
                _ => rng.between(Duration::from_secs(1), Duration::from_secs(4)),
            };
            faults.push(PlannedFault { kind, at, hold });
        }
        faults.sort_by_key(|f| f.at);
        Plan { faults }
    }
}

/// What a schedule runs.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Everything random comes from it.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// The traffic phase, during which faults happen.
    pub duration: Duration,
    /// Concurrent client sessions.
    pub clients: usize,
    /// Keys they share.
    pub keys: usize,
    /// Watchers: even ones watch every key of the schedule (a prefix), odd ones one key.
    pub watchers: usize,
    /// Faults planned.
    pub faults: usize,
    /// The kinds drawn from (empty: all).
    pub kinds: Vec<FaultKind>,
    /// Extra arguments for every node (e.g. nothing, or what a canary needs).
    pub node_args: Vec<String>,
    /// Extra environment for every node (crash points, planted bugs).
    pub node_env: Vec<(String, String)>,
    /// The directory of the `raftkv` binary to run; `None`: [`crate::bin_dir`].
    pub bin_dir: Option<std::path::PathBuf>,
    /// Run every node under libfaketime ([`crate::clock`]) and, when `kinds` is empty, draw
    /// the clock faults ([`FaultKind::CLOCK`]) too.
    pub clock: bool,
    /// The recording sessions reach each node through a proxy link of the harness, and,
    /// when `kinds` is empty, the client-link faults ([`FaultKind::CLIENT`]) are drawn too.
    pub client_links: bool,
    /// TLS on both ports (mutual TLS on the Raft port, `--client-cert-auth` on the client
    /// port) and authentication on, with tokens lasting [`SECURE_TOKEN_TTL`]: the sessions
    /// are [`SESSION_USER`] (readwrite on the schedule's key prefix only), the watchers
    /// [`WATCH_USER`] (read on it), everything else `root`.
    pub secure: bool,
}

impl ChaosConfig {
    /// The quick tier's schedule for `seed`: 3 nodes, 20 s of traffic, 8 clients on 6 keys,
    /// 4 watchers, 7 overlapping faults, the default snapshot policy (see
    /// [`SNAPSHOT_OFTEN`] for schedules that install snapshots).
    #[must_use]
    pub fn quick(seed: u64) -> Self {
        Self {
            seed,
            nodes: 3,
            duration: Duration::from_secs(20),
            clients: 8,
            keys: 6,
            watchers: 4,
            faults: 7,
            kinds: Vec::new(),
            node_args: Vec::new(),
            node_env: Vec::new(),
            bin_dir: None,
            clock: false,
            client_links: false,
            secure: false,
        }
    }

    /// The tiers' schedule for `seed`: [`ChaosConfig::quick`], every third seed with
    /// [`SNAPSHOT_OFTEN`], so that lagging followers install snapshots (and their watchers
    /// see them) under the faults, and every third seed from 1 (1, 4, 7, ...)
    /// [`secure`](ChaosConfig::secure): TLS and authentication. The quick tier and the long
    /// tier both draw from it, so a seed replays the same way in either.
    #[must_use]
    pub fn tier(seed: u64) -> Self {
        let mut cfg = Self::quick(seed);
        if seed.is_multiple_of(3) {
            cfg.node_args = SNAPSHOT_OFTEN.iter().map(|s| (*s).to_string()).collect();
        }
        cfg.secure = seed % 3 == 1;
        cfg
    }
}

/// Node arguments for a snapshot every 100 applied entries, keeping only 20 entries of log
/// behind it: a follower that falls 20 entries behind (isolated, paused, killed, or slow
/// behind a delayed link) is brought back by a snapshot install rather than by the log.
pub const SNAPSHOT_OFTEN: [&str; 4] = ["--snapshot_threshold", "100", "--trailing_logs", "20"];

/// What one schedule did and found.
#[derive(Debug, Default)]
pub struct ScheduleReport {
    /// The seed, to replay it.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Whether it ran with TLS and authentication ([`ChaosConfig::secure`]).
    pub secure: bool,
    /// Tokens the nodes issued (a secure schedule; from the nodes' logs).
    pub tokens_issued: usize,
    /// Calls refused because their token had expired, after which the client
    /// authenticated again (a secure schedule; from the nodes' logs).
    pub tokens_expired: usize,
    /// Faults injected, in order, as `t+SECONDS kind target`.
    pub faults: Vec<String>,
    /// Fault kinds injected (planned faults that found no target are not counted).
    pub kinds: Vec<FaultKind>,
    /// The checker's figures.
    pub operations: usize,
    /// Operations answered.
    pub ok: usize,
    /// Writes of unknown outcome after resolution.
    pub unknown: usize,
    /// Writes of unknown outcome that the resend resolved.
    pub resolved: usize,
    /// What the watchers saw (see [`watch_check`]).
    pub watch: watch_check::WatchReport,
    /// Snapshots built, over every node (from the nodes' logs).
    pub snapshots_built: usize,
    /// Snapshots installed from the leader, over every node (from the nodes' logs).
    pub snapshots_installed: usize,
    /// Every violation: the checker's, and divergence or unclean stops as text.
    pub violations: Vec<String>,
    /// How long it took after healing until every node was a voter again.
    pub promoted_after: Option<Duration>,
    /// Where the nodes' logs and the harness's record were kept (a failing schedule only).
    pub kept: Option<std::path::PathBuf>,
}

impl ScheduleReport {
    /// Whether every check passed.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for ScheduleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "schedule seed={} nodes={}{}: {} operations ({} ok, {} unknown, {} resolved by resending), {} faults, {}",
            self.seed,
            self.nodes,
            if self.secure { " tls+auth" } else { "" },
            self.operations,
            self.ok,
            self.unknown,
            self.resolved,
            self.faults.len(),
            if self.passed() { "PASSED".to_string() } else { format!("{} VIOLATIONS", self.violations.len()) },
        )?;
        writeln!(
            f,
            "    watchers: {} events, {} resumed streams, {} compacted restarts, {} abandons",
            self.watch.events, self.watch.reconnects, self.watch.compactions, self.watch.abandons
        )?;
        writeln!(f, "    snapshots: {} built, {} installed", self.snapshots_built, self.snapshots_installed)?;
        if self.secure {
            writeln!(
                f,
                "    auth: {} tokens issued, {} calls refused with an expired token",
                self.tokens_issued, self.tokens_expired
            )?;
        }
        if let Some(after) = self.promoted_after {
            writeln!(f, "    healed: every node a voter {:.1}s after the faults ended", after.as_secs_f64())?;
        }
        for fault in &self.faults {
            writeln!(f, "    {fault}")?;
        }
        for v in &self.violations {
            writeln!(f, "  VIOLATION: {v}")?;
        }
        if !self.passed() {
            writeln!(f, "  replay: cargo xtask chaos --schedules 1 --seed {}", self.seed)?;
        }
        if let Some(dir) = &self.kept {
            writeln!(f, "  nodes' logs and the harness's record kept in {}", dir.display())?;
        }
        Ok(())
    }
}

/// The user of the recording sessions in a secure schedule: role [`SESSION_USER`],
/// readwrite on the schedule's key prefix (`chaos-SEED-`) and nothing else.
pub const SESSION_USER: &str = "chaos-rw";
/// The user of the watchers in a secure schedule: role [`WATCH_USER`], read on the
/// schedule's key prefix.
pub const WATCH_USER: &str = "chaos-ro";
/// How long a token lasts in a secure schedule (`--auth-token-ttl`): a fraction of the
/// traffic phase, so every session's and watcher's token expires during the schedule and
/// the client authenticates again by itself.
pub const SECURE_TOKEN_TTL: Duration = Duration::from_secs(5);
/// The token lifetime of a secure schedule with clock faults: longer than a
/// [`FaultKind::ClockJump`], since a node compares a token's expiry with its own clock, and
/// a token issued by another node looks expired to a node a minute ahead, however often the
/// client authenticates again.
pub const SECURE_TOKEN_TTL_CLOCK: Duration = Duration::from_secs(90);

/// Who a harness client is, in a secure schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// `root`: setup, status, admin faults, healing, final reads and the replicas' scans.
    Root,
    /// [`SESSION_USER`]: the recording sessions and the resending of unknown writes.
    Session,
    /// [`WATCH_USER`]: the watchers.
    Watcher,
}

/// The TLS files and users of a secure schedule ([`ChaosConfig::secure`]).
struct Secure {
    /// A throwaway CA, a certificate per node and the harness's client certificate.
    files: CertFiles,
    /// The schedule's key prefix: the only keys its users may touch.
    prefix: String,
    seed: u64,
    /// `--auth-token-ttl`.
    ttl: Duration,
    /// root's token and when it was issued, shared by the harness's admin clients so that
    /// each does not authenticate (an Argon2 hash on a node) on its first call.
    root_token: Mutex<Option<(String, Instant)>>,
    /// The last attempt to fetch root's token and how many there were: a failed attempt
    /// (no quorum, a paused node) is not repeated for [`ROOT_TOKEN_RETRY`], and each
    /// attempt starts at another node.
    root_attempt: Mutex<(Option<Instant>, usize)>,
}

/// How long after a failed attempt to fetch root's shared token the harness tries again
/// (meanwhile each admin client authenticates by itself when it needs to).
const ROOT_TOKEN_RETRY: Duration = Duration::from_secs(1);
/// How long one attempt to fetch root's shared token may take.
const ROOT_TOKEN_TIMEOUT: Duration = Duration::from_millis(1500);

impl Secure {
    /// Certificates in `dir`: node `i`'s names its node id (the Raft port's node-id rule),
    /// `localhost`, `127.0.0.1` (the proxy links' address: clients reaching a node through a
    /// link verify it for that address) and its own address, `127.0.0.(11 + i)`.
    fn new(dir: &std::path::Path, cfg: &ChaosConfig) -> Result<Self, BoxError> {
        let certs = dir.join("certs");
        let (ca, mut files) = proc_harness::certs::generate(&certs, &[], "chaos-client")?;
        for i in 0..cfg.nodes {
            let (id, ip) = (node_id(i), node_ip(i));
            let (cert, key) = (certs.join(format!("{id}.crt")), certs.join(format!("{id}.key")));
            ca.issue(&id, &[&id, "localhost", "127.0.0.1", &ip], true)?.write(&cert, &key)?;
            files.nodes.insert(id, (cert, key));
        }
        let ttl = if cfg.clock { SECURE_TOKEN_TTL_CLOCK } else { SECURE_TOKEN_TTL };
        Ok(Self {
            files,
            prefix: key_prefix(cfg.seed),
            seed: cfg.seed,
            ttl,
            root_token: Mutex::new(None),
            root_attempt: Mutex::new((None, 0)),
        })
    }

    fn name(who: Who) -> &'static str {
        match who {
            Who::Root => types::auth::ROOT_USER,
            Who::Session => SESSION_USER,
            Who::Watcher => WATCH_USER,
        }
    }

    fn password(&self, who: Who) -> String {
        format!("{}-pw-{:x}", Self::name(who), self.seed.wrapping_mul(0x9e37_79b9))
    }

    /// Node `id`'s flags: TLS on both ports with its certificate, client certificates
    /// required on the client port too, and the schedule's token lifetime.
    fn node_args(&self, id: &str) -> Vec<String> {
        let mut args = self.files.node_args(id);
        args.extend(["--client-cert-auth".into(), "--auth-token-ttl".into(), format!("{}s", self.ttl.as_secs())]);
        args
    }

    /// The harness's TLS files: the CA and its client certificate.
    fn tls(&self) -> ClientTlsFiles {
        ClientTlsFiles { ca: self.files.ca.clone(), identity: Some(self.files.client.clone()) }
    }

    /// `base` with TLS and `who`'s credentials (the client authenticates on its first call
    /// and again whenever its token expired), and root's shared token while it is fresh.
    fn options(&self, who: Who, base: ClientOptions) -> ClientOptions {
        let fresh =
            |(token, at): &(String, Instant)| (at.elapsed() + Duration::from_secs(1) < self.ttl).then(|| token.clone());
        let token = if who == Who::Root {
            self.root_token.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().and_then(fresh)
        } else {
            None
        };
        ClientOptions {
            tls: Some(self.tls()),
            token,
            credentials: Some(Credentials { name: Self::name(who).into(), password: self.password(who) }),
            ..base
        }
    }
}

/// The address node `i` binds.
fn node_ip(i: usize) -> String {
    format!("127.0.0.{}", 11 + i)
}

/// The prefix of every key of the schedule of `seed`.
fn key_prefix(seed: u64) -> String {
    format!("chaos-{seed}-")
}

/// The nodes and the links between them.
struct Net {
    nodes: Vec<NodeProc>,
    /// `raft[i][j]`: i's Raft calls to j (`None` on the diagonal).
    raft: Vec<Vec<Option<Link>>>,
    /// `grpc[i][j]`: i's forwarded client calls to j.
    grpc: Vec<Vec<Option<Link>>>,
    /// Network faults in force, by id.
    active: BTreeMap<u64, NetFault>,
    /// Nodes demoted by a membership fault.
    demoted: Vec<usize>,
    /// `client_links[i]`: the sessions' link to node i (empty without
    /// [`ChaosConfig::client_links`]).
    client_links: Vec<Link>,
    /// Each node's libfaketime control, when the schedule skews clocks.
    clocks: Vec<crate::clock::FakeClock>,
    /// What the harness did, kept with the nodes' logs when the schedule fails.
    journal: Journal,
    /// TLS and authentication, in a secure schedule.
    secure: Option<Secure>,
    _dir: tempfile::TempDir,
}

#[derive(Debug, Clone, Copy)]
enum NetFault {
    ClientStall(usize),
    Isolate(usize),
    OneWay { from: usize, to: usize },
    Delay(usize),
}

impl Net {
    async fn start(cfg: &ChaosConfig) -> Result<Self, BoxError> {
        Self::start_with(cfg, false).await
    }

    /// As [`Net::start`]; with `uncached_clocks`, the nodes read their fake clock's file on
    /// every clock call ([`crate::clock::FakeClock::uncached`]).
    async fn start_with(cfg: &ChaosConfig, uncached_clocks: bool) -> Result<Self, BoxError> {
        let n = cfg.nodes;
        let dir = tempfile::tempdir()?;
        let mut raft = Vec::new();
        let mut grpc = Vec::new();
        for i in 0..n {
            let (mut r, mut g) = (Vec::new(), Vec::new());
            for j in 0..n {
                if i == j {
                    r.push(None);
                    g.push(None);
                } else {
                    let s = cfg.seed ^ ((i as u64) << 32) ^ ((j as u64) << 16);
                    r.push(Some(Link::start(s).await?));
                    g.push(Some(Link::start(s ^ 1).await?));
                }
            }
            raft.push(r);
            grpc.push(g);
        }
        let journal = Journal::new();
        journal.note(format_args!("seed {} nodes {} args {:?} secure {}", cfg.seed, n, cfg.node_args, cfg.secure));
        let secure = if cfg.secure { Some(Secure::new(dir.path(), cfg)?) } else { None };
        let clocks = if cfg.clock {
            (0..n)
                .map(|i| {
                    let clock = crate::clock::FakeClock::new(dir.path(), &node_id(i))?;
                    Ok::<_, BoxError>(if uncached_clocks { clock.uncached() } else { clock })
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        let mut client_links = Vec::new();
        if cfg.client_links {
            for i in 0..n {
                client_links.push(Link::start(cfg.seed ^ 0xc11e_0000 ^ (i as u64)).await?);
            }
        }
        let mut net = Net {
            nodes: Vec::new(),
            raft,
            grpc,
            client_links,
            active: BTreeMap::new(),
            demoted: Vec::new(),
            clocks,
            journal,
            secure,
            _dir: dir,
        };
        for i in 0..n {
            let peers: Vec<String> = (0..n)
                .filter(|j| *j != i)
                .map(|j| {
                    format!("{}={}@{}", node_id(j), net.link(&net.raft, i, j).addr(), net.link(&net.grpc, i, j).addr())
                })
                .collect();
            let mut args: Vec<String> = crate::FAST_TIMING
                .iter()
                .map(|s| (*s).to_string())
                .chain(["--peers".into(), peers.join(",")])
                .collect();
            args.extend(cfg.node_args.iter().cloned());
            let mut log_filter = crate::log_filter();
            if let Some(secure) = &net.secure {
                args.extend(secure.node_args(&node_id(i)));
                // Tokens issued and calls refused with an expired token, for the report.
                log_filter.push_str(",service::auth=debug,service::auth_service=debug");
            }
            let host = format!("{}:0", node_ip(i));
            let program = cfg.bin_dir.as_ref().map_or_else(|| crate::binary("raftkv"), |dir| dir.join("raftkv"));
            let node = NodeProc::builder(program, node_id(i), net._dir.path())
                .rust_log(log_filter)
                .addrs(&host, &host)
                .bootstrap(i == 0)
                .args(&args)
                .envs(cfg.node_env.iter().cloned())
                .envs(net.clocks.get(i).map(crate::clock::FakeClock::env).unwrap_or_default())
                .start()?;
            for j in 0..n {
                if j != i {
                    net.link(&net.raft, j, i).set_target(node.raft_addr.parse()?);
                    net.link(&net.grpc, j, i).set_target(node.grpc_addr.parse()?);
                }
            }
            if let Some(link) = net.client_links.get(i) {
                link.set_target(node.grpc_addr.parse()?);
            }
            net.nodes.push(node);
        }
        let first = Client::new([net.nodes[0].grpc_addr.clone()], net.options(Who::Root, crate::test_options()))?;
        wait_for("n1 to lead", Duration::from_secs(30), || async {
            first.status().await.is_ok_and(|s| s.state == RaftState::Leader as i32)
        })
        .await?;
        for node in &net.nodes[1..] {
            first.add_voter(&node.id, &node.raft_addr, &node.grpc_addr, Duration::from_secs(60)).await?;
            net.journal.note(format_args!("add_voter {}: ok", node.id));
        }
        if net.secure.is_some() {
            net.enable_auth(&first).await?;
            net.check_secured().await?;
        }
        Ok(net)
    }

    /// Adds root, [`SESSION_USER`] and [`WATCH_USER`] with their roles, then turns
    /// authentication on (through `first`, before it is on).
    async fn enable_auth(&self, first: &Client) -> Result<(), BoxError> {
        let Some(secure) = &self.secure else { return Ok(()) };
        let prefix = secure.prefix.as_bytes().to_vec();
        for (who, access) in [(Who::Session, Access::Readwrite), (Who::Watcher, Access::Read)] {
            let name = Secure::name(who);
            first.user_add(name, &secure.password(who)).await?;
            first.role_add(name).await?;
            let permission = Permission {
                access: access as i32,
                key: prefix.clone().into(),
                range_end: Vec::new().into(),
                prefix: true,
            };
            first.role_grant_permission(name, permission).await?;
            first.user_grant_role(name, name).await?;
        }
        first.user_add(types::auth::ROOT_USER, &secure.password(Who::Root)).await?;
        first.auth_enable().await?;
        self.journal.note(format_args!(
            "auth enabled: users root, {SESSION_USER} (readwrite on {:?}), {WATCH_USER} (read on it); tokens last {:?}",
            secure.prefix, secure.ttl
        ));
        Ok(())
    }

    /// Proves the schedule is secured before its traffic starts: a plaintext client is
    /// refused, a TLS client without credentials is `UNAUTHENTICATED`, and the sessions'
    /// and watchers' users are `PERMISSION_DENIED` outside what they were granted.
    async fn check_secured(&self) -> Result<(), BoxError> {
        let Some(secure) = &self.secure else { return Ok(()) };
        let addr = vec![self.nodes[0].grpc_addr.clone()];
        let once = ClientOptions { max_retries: 0, ..quick_options() };
        if let Ok(s) = Client::new(addr.clone(), once.clone())?.status().await {
            return Err(format!("a plaintext client was served by a TLS node: {s:?}").into());
        }
        let anonymous = ClientOptions { tls: Some(secure.tls()), ..crate::test_options() };
        let key = format!("{}k0", secure.prefix);
        let get = |c: Client, key: String| async move {
            c.get_request(GetRequest { key: key.into_bytes().into(), ..Default::default() }).await.map(|_| ())
        };
        let put = |c: Client, key: String| async move { c.put(key.into_bytes(), b"x".to_vec()).await.map(|_| ()) };
        let expect = |what: &str, r: Result<(), ClientError>, code: tonic::Code| -> Result<(), BoxError> {
            match r {
                Err(e) if e.status().is_some_and(|s| s.code() == code) => Ok(()),
                other => Err(format!("{what}: expected {code:?}, got {other:?}").into()),
            }
        };
        expect(
            "a get without credentials",
            get(Client::new(addr.clone(), anonymous)?, key.clone()).await,
            tonic::Code::Unauthenticated,
        )?;
        let session = Client::new(addr.clone(), self.options(Who::Session, crate::test_options()))?;
        let outside = format!("outside-{}", secure.seed);
        expect(
            "a put by the sessions' user outside its prefix",
            put(session, outside).await,
            tonic::Code::PermissionDenied,
        )?;
        let watcher = Client::new(addr, self.options(Who::Watcher, crate::test_options()))?;
        expect("a put by the watchers' user", put(watcher, key).await, tonic::Code::PermissionDenied)?;
        self.journal
            .note("secured: plaintext refused, no credentials unauthenticated, users held to their permissions");
        Ok(())
    }

    /// Client options for `who`: `base` as it is in a plaintext schedule, with TLS and the
    /// user's credentials in a secure one ([`Secure::options`]).
    fn options(&self, who: Who, base: ClientOptions) -> ClientOptions {
        match &self.secure {
            Some(secure) => secure.options(who, base),
            None => base,
        }
    }

    /// A root client of `endpoints` (in a secure schedule, with root's shared token, fetched
    /// again first when it is about to expire).
    async fn admin(&self, endpoints: Vec<String>, base: ClientOptions) -> Result<Client, ClientError> {
        self.refresh_root_token().await;
        Client::new(endpoints, self.options(Who::Root, base))
    }

    /// Fetches root's shared token when it is missing or about to expire. A failure (no
    /// node answers within [`ROOT_TOKEN_TIMEOUT`]) leaves it missing: each admin client
    /// then authenticates by itself when a call needs it.
    async fn refresh_root_token(&self) {
        let Some(secure) = &self.secure else { return };
        let root = secure.options(Who::Root, quick_options());
        if root.token.is_some() {
            return;
        }
        let attempt = {
            let mut last = secure.root_attempt.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.0.is_some_and(|at| at.elapsed() < ROOT_TOKEN_RETRY) {
                return;
            }
            *last = (Some(Instant::now()), last.1 + 1);
            last.1
        };
        let mut endpoints = self.endpoints();
        let first = attempt % endpoints.len().max(1);
        endpoints.rotate_left(first);
        let Ok(c) = Client::new(endpoints, ClientOptions { credentials: None, ..root }) else { return };
        let issued = Instant::now();
        let fetched = tokio::time::timeout(
            ROOT_TOKEN_TIMEOUT,
            c.authenticate(types::auth::ROOT_USER, &secure.password(Who::Root)),
        )
        .await;
        if let Ok(Ok(token)) = fetched {
            *secure.root_token.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((token, issued));
        }
    }

    fn link<'a>(&self, links: &'a [Vec<Option<Link>>], i: usize, j: usize) -> &'a Link {
        links[i][j].as_ref().unwrap_or_else(|| unreachable!("no link from a node to itself"))
    }

    fn links(&self) -> impl Iterator<Item = (usize, usize, &Link)> {
        self.raft.iter().chain(self.grpc.iter()).enumerate().flat_map(|(row, links)| {
            let i = row % self.nodes.len();
            links.iter().enumerate().filter_map(move |(j, l)| l.as_ref().map(|l| (i, j, l)))
        })
    }

    /// Sets every link from the network faults in force: a blackhole wins over a delay.
    fn apply_links(&self) {
        let delay = Mode::Delay { base: Duration::from_millis(75), jitter: Duration::from_millis(50) };
        for (i, j, link) in self.links() {
            // forward: bytes from i to j; backward: bytes from j to i.
            let (mut fwd, mut bwd) = (Mode::Pass, Mode::Pass);
            for fault in self.active.values() {
                match *fault {
                    NetFault::Isolate(x) if x == i || x == j => (fwd, bwd) = (Mode::Blackhole, Mode::Blackhole),
                    NetFault::OneWay { from, to } if from == i && to == j => fwd = Mode::Blackhole,
                    NetFault::OneWay { from, to } if from == j && to == i => bwd = Mode::Blackhole,
                    NetFault::Delay(x) if x == i || x == j => {
                        if fwd == Mode::Pass {
                            fwd = delay;
                        }
                        if bwd == Mode::Pass {
                            bwd = delay;
                        }
                    }
                    _ => {}
                }
            }
            if link.state().forward != fwd || link.state().backward != bwd {
                link.set(fwd, bwd);
            }
        }
        for (i, link) in self.client_links.iter().enumerate() {
            let stalled = self.active.values().any(|f| matches!(f, NetFault::ClientStall(x) if *x == i));
            let mode = if stalled { Mode::Blackhole } else { Mode::Pass };
            if link.state().forward != mode || link.state().backward != mode {
                link.set(mode, mode);
            }
        }
    }

    /// Where the recording sessions send their requests: the client links, or the nodes.
    fn session_endpoints(&self) -> Vec<String> {
        if self.client_links.is_empty() {
            return self.endpoints();
        }
        self.client_links.iter().map(|l| l.addr().to_string()).collect()
    }

    fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.grpc_addr.clone()).collect()
    }

    /// The running, unpaused node that says it leads, by index.
    async fn leader(&self, paused: &[usize]) -> Option<usize> {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.pid().is_none() || paused.contains(&i) {
                continue;
            }
            let c = self.admin(vec![node.grpc_addr.clone()], quick_options()).await.ok()?;
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(500), c.status()).await
                && s.state == RaftState::Leader as i32
            {
                return Some(i);
            }
        }
        None
    }
}

impl Net {
    /// Every node's log file, by id.
    fn logs(&self) -> Vec<(String, std::path::PathBuf)> {
        self.nodes.iter().map(|n| (n.id.clone(), n.log_path().to_path_buf())).collect()
    }

    /// The status of the node that leads, as it says itself (the highest term among the
    /// running nodes that say they lead); `None` during an election.
    async fn leader_view(&self) -> Option<proto::admin::v1::StatusResponse> {
        let mut best: Option<proto::admin::v1::StatusResponse> = None;
        for node in self.nodes.iter().filter(|node| node.pid().is_some()) {
            let Ok(c) = self.admin(vec![node.grpc_addr.clone()], quick_options()).await else { continue };
            let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(3), c.status()).await else { continue };
            if s.state == RaftState::Leader as i32 && best.as_ref().is_none_or(|b| s.term > b.term) {
                best = Some(s);
            }
        }
        best
    }

    /// Notes every running node's own view of the cluster in the journal.
    async fn note_statuses(&self) {
        for node in &self.nodes {
            let seen = match self.admin(vec![node.grpc_addr.clone()], quick_options()).await {
                Ok(c) => match tokio::time::timeout(Duration::from_secs(3), c.status()).await {
                    Ok(Ok(s)) => describe(&s),
                    Ok(Err(e)) => format!("status failed: {e}"),
                    Err(_) => "status timed out".into(),
                },
                Err(e) => format!("no client: {e}"),
            };
            let running = if node.pid().is_some() { "running" } else { "not running" };
            self.journal.note(format_args!("{} ({running}) says: {seen}", node.id));
        }
    }

    /// When `result` is a failure, keeps the nodes' logs and the journal in
    /// `target/chaos-failures/NAME/` and says where (in the report, or in the error).
    async fn keep_if_failed(
        &self,
        name: &str,
        result: Result<ScheduleReport, BoxError>,
    ) -> Result<ScheduleReport, BoxError> {
        let Some(why) = failure(&result) else { return result };
        self.journal.note(format_args!("FAILED: {why}"));
        self.note_statuses().await;
        let dest = record::failures_dir().join(name);
        if let Err(e) = record::keep(&dest, &self.logs(), &self.journal, &why) {
            eprintln!("{name}: could not keep the nodes' logs in {}: {e}", dest.display());
            return result;
        }
        eprintln!("{name} failed: the nodes' logs and the harness's record are in {}", dest.display());
        match result {
            Ok(mut report) => {
                report.kept = Some(dest);
                Ok(report)
            }
            Err(e) => Err(format!("{e}\n  nodes' logs and the harness's record kept in {}", dest.display()).into()),
        }
    }
}

/// What failed, when something did: the harness's error, or the report of a schedule with
/// violations. `None` for a passing schedule, which keeps nothing.
fn failure(result: &Result<ScheduleReport, BoxError>) -> Option<String> {
    match result {
        Ok(report) if report.passed() => None,
        Ok(report) => Some(report.to_string()),
        Err(e) => Some(format!("harness error: {e}")),
    }
}

/// One line for a node's status as the journal records it.
fn describe(s: &proto::admin::v1::StatusResponse) -> String {
    let members: Vec<String> = s
        .members
        .iter()
        .map(|m| {
            let role = if m.suffrage == Suffrage::Voter as i32 { "voter" } else { "learner" };
            let mut text = format!("{} {role}", m.id);
            if let Some(matched) = m.matched_index {
                text.push_str(&format!(" matched {matched}"));
            }
            if let Some(lag) = m.lag {
                text.push_str(&format!(" lag {lag}"));
            }
            text
        })
        .collect();
    format!(
        "{} state {} term {} leader {:?} last {} committed {} applied {} snapshot {} purged {} membership@{} [{}]",
        s.node_id,
        RaftState::try_from(s.state).map_or_else(|_| s.state.to_string(), |r| format!("{r:?}")),
        s.term,
        s.leader_id,
        s.last_log_index,
        s.committed_index,
        s.applied_index,
        s.snapshot_index,
        s.purged_index,
        s.membership_index,
        members.join(", ")
    )
}

fn node_id(i: usize) -> String {
    format!("n{}", i + 1)
}

fn quick_options() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        max_retries: 3,
        ..ClientOptions::default()
    }
}

/// Client options of the recording sessions: short deadlines, a few retries (request ids
/// make retried writes safe), so faults show up as unknown outcomes rather than long stalls.
pub fn session_options() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        max_retries: 4,
        auto_request_ids: true,
        no_forward: false,
        tls: None,
        token: None,
        credentials: None,
    }
}

fn value_bytes(v: ValueId) -> Vec<u8> {
    format!("v{v}").into_bytes()
}

fn parse_value(bytes: &[u8]) -> ValueId {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.strip_prefix('v'))
        .and_then(|s| s.parse().ok())
        .unwrap_or(ValueId::MAX)
}

fn put_op(key: &str, v: ValueId) -> PutRequest {
    PutRequest { key: key.as_bytes().to_vec().into(), value: value_bytes(v).into(), ..Default::default() }
}

/// Sends one operation; the outcome as the history records it.
pub async fn execute(client: &Client, key: &str, input: Input, request_id: &str) -> Outcome {
    let key_bytes: bytes::Bytes = key.as_bytes().to_vec().into();
    let result: Result<(Output, u64), ClientError> = match input {
        Input::Get => client
            .get_request(GetRequest {
                key: key_bytes,
                consistency: Consistency::Linearizable as i32,
                ..Default::default()
            })
            .await
            .map(|r| {
                let read = r.kv.filter(|_| r.found).map(|kv| (parse_value(&kv.value), kv.modify_index));
                (Output::Get(read), r.header.map_or(0, |h| h.index))
            }),
        Input::Put(v) => client
            .put_request(PutRequest { request_id: request_id.into(), ..put_op(key, v) })
            .await
            .map(|r| (Output::Put, r.header.map_or(0, |h| h.index))),
        Input::Delete => client
            .delete_request(DeleteRequest { key: key_bytes, request_id: request_id.into(), ..Default::default() })
            .await
            .map(|r| (Output::Delete { deleted: r.deleted > 0 }, r.header.map_or(0, |h| h.index))),
        Input::Cas { expected, new } => client
            .txn(TxnRequest {
                compare: vec![Compare {
                    key: key_bytes,
                    result: compare::Result::Equal as i32,
                    target: Some(compare::Target::Value(value_bytes(expected).into())),
                }],
                success: vec![RequestOp { request: Some(request_op::Request::Put(put_op(key, new))) }],
                failure: vec![],
                request_id: request_id.into(),
            })
            .await
            .map(|r| (Output::Cas { succeeded: r.succeeded }, r.header.map_or(0, |h| h.index))),
    };
    match result {
        Ok((output, index)) => Outcome::Ok { output, index },
        // A read that failed tells nothing; a refused request was certainly not applied.
        Err(e) if !input.is_write() => Outcome::Fail(e.to_string()),
        Err(e) if e.status().is_some_and(|s| s.code() == tonic::Code::InvalidArgument) => Outcome::Fail(e.to_string()),
        // Anything else about a write: the client may have retried after an unknown
        // outcome, so even an error marked retryable does not prove it was not applied.
        Err(e) => Outcome::Unknown(e.to_string()),
    }
}

/// One recording session until `stop`: random gets (linearizable), puts, deletes and
/// compare-and-sets on `keys`, each write with a request id and a value nobody else writes
/// (from `values`), every operation recorded in `history`.
pub async fn session(
    c: usize,
    client: Client,
    history: Arc<History>,
    keys: Arc<Vec<String>>,
    values: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = Rng::new(seed ^ (c as u64).wrapping_mul(0x1234_5678_9abc));
    let mut known: BTreeMap<String, ValueId> = BTreeMap::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = keys[usize::try_from(rng.below(keys.len() as u64)).unwrap_or(0)].clone();
        let fresh = || values.fetch_add(1, Ordering::Relaxed);
        let input = match rng.below(20) {
            0..=9 => Input::Get,
            10..=14 => Input::Put(fresh()),
            15..=16 => Input::Delete,
            _ => match known.get(&key) {
                Some(&expected) => Input::Cas { expected, new: fresh() },
                None => Input::Put(fresh()),
            },
        };
        n += 1;
        let request_id = if input.is_write() { format!("s{seed}-c{c}-{n}") } else { String::new() };
        let invoke = history.now();
        let outcome = execute(&client, &key, input, &request_id).await;
        let complete = history.now();
        match (&outcome, input) {
            (Outcome::Ok { output: Output::Get(Some((v, _))), .. }, _) => {
                known.insert(key.clone(), *v);
            }
            (Outcome::Ok { .. }, Input::Put(v)) => {
                known.insert(key.clone(), v);
            }
            _ => {}
        }
        let failed = !matches!(outcome, Outcome::Ok { .. });
        history.record(Operation { client: c, key, input, request_id, invoke, complete, outcome });
        if failed {
            // Nothing to do but try again; a short pause keeps a dead cluster from being
            // hammered (the schedule, not this pause, decides when faults end).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn lock(log: &Mutex<WatchLog>) -> std::sync::MutexGuard<'_, WatchLog> {
    log.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One watcher until aborted: a [`client::WatchStream`] over every node (starting at a
/// different one per watcher), with `options` (TLS and credentials in a secure schedule;
/// its timeouts are [`quick_options`]'s), recording each message it delivers. When no node can serve
/// it for a while it opens a new stream from where it got to. When every node that answers
/// says its resume index is compacted (a restarted node keeps no history), it records the
/// explicit gap and restarts from the oldest index a node offered.
async fn watcher(w: usize, endpoints: Vec<String>, options: ClientOptions, log: Arc<Mutex<WatchLog>>) {
    let (key, prefix) = {
        let l = lock(&log);
        (l.key.clone(), l.prefix)
    };
    let n = endpoints.len();
    let mut first = w + 1;
    // Since the last message: the oldest index offered by each node that said "compacted",
    // and failed attempts.
    let mut compacted: BTreeMap<usize, u64> = BTreeMap::new();
    let mut failures = 0usize;
    loop {
        let mut eps = endpoints.clone();
        eps.rotate_left(first % n);
        let options = ClientOptions { max_retries: u32::try_from(2 * n).unwrap_or(6), ..options.clone() };
        let Ok(client) = Client::new(eps, options) else { return };
        let resume = lock(&log).resume_index();
        let mut stream = client.watch(
            key.as_bytes().to_vec(),
            client::WatchOptions {
                prefix,
                start_index: resume,
                progress_interval: Some(Duration::from_millis(300)),
                ..Default::default()
            },
        );
        // Events (or restored keys) of one index continued over several messages.
        let mut partial: Vec<(String, Change)> = Vec::new();
        let mut reconnects = 0;
        let error = loop {
            match stream.next().await {
                Ok(msg) => {
                    compacted.clear();
                    failures = 0;
                    let mut l = lock(&log);
                    if stream.reconnects() != reconnects {
                        // The stream resumed elsewhere: an index cut short is sent again whole.
                        partial.clear();
                        l.reconnects += stream.reconnects() - reconnects;
                        reconnects = stream.reconnects();
                    }
                    if let Some(record) = record_message(&msg, &mut partial) {
                        l.records.push(record);
                    }
                }
                Err(e) => break e,
            }
        };
        lock(&log).reconnects += stream.reconnects() - reconnects + 1;
        failures += 1;
        let offered = error
            .status()
            .filter(|s| s.code() == tonic::Code::OutOfRange)
            .and_then(|s| s.metadata().get("x-raftkv-oldest-index")?.to_str().ok()?.parse::<u64>().ok());
        if let Some(oldest) = offered {
            compacted.insert(first % n, oldest);
        }
        first += 1;
        // Every node said compacted, or some did and the others cannot be reached.
        if !compacted.is_empty() && (compacted.len() == n || failures >= 3 * n) {
            let oldest = compacted.values().copied().min().unwrap_or(resume);
            lock(&log).records.push(WatchRecord::Compacted { resume, oldest });
            compacted.clear();
            failures = 0;
        } else if offered.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The record for one watch message, once an index's events (or a restored state) are
/// complete.
fn record_message(msg: &client::kv::WatchResponse, partial: &mut Vec<(String, Change)>) -> Option<WatchRecord> {
    use client::kv::watch_response::Kind;
    let put = |kv: &client::KeyValue| Change::Put {
        value: parse_value(&kv.value),
        create_index: kv.create_index,
        version: kv.version,
    };
    let key = |kv: &client::KeyValue| String::from_utf8_lossy(&kv.key).into_owned();
    match Kind::try_from(msg.kind) {
        Ok(Kind::Created) => Some(WatchRecord::Created { after: msg.index }),
        Ok(Kind::Progress) => Some(WatchRecord::Progress { index: msg.index }),
        Ok(Kind::Events) => {
            for e in &msg.events {
                let Some(kv) = &e.kv else { continue };
                let change =
                    if e.r#type == client::kv::event::EventType::Delete as i32 { Change::Delete } else { put(kv) };
                partial.push((key(kv), change));
            }
            (!msg.more).then(|| WatchRecord::Events { index: msg.index, events: std::mem::take(partial) })
        }
        Ok(Kind::Abandoned) => {
            partial.extend(msg.kvs.iter().map(|kv| (key(kv), put(kv))));
            (!msg.more).then(|| WatchRecord::Abandoned { index: msg.index, kvs: std::mem::take(partial) })
        }
        Ok(Kind::Timeout) | Err(_) => None,
    }
}

/// Runs one schedule and every check. `Err` only when the harness itself could not run
/// (a node would not start); a broken property is a violation in the report.
pub async fn run_schedule(cfg: &ChaosConfig) -> Result<ScheduleReport, BoxError> {
    let mut report =
        ScheduleReport { seed: cfg.seed, nodes: cfg.nodes, secure: cfg.secure, ..ScheduleReport::default() };
    let mut net = Net::start(cfg).await?;
    let mut kinds: Vec<FaultKind> = cfg.kinds.clone();
    if kinds.is_empty() && (cfg.clock || cfg.client_links) {
        kinds.extend(FaultKind::ALL);
        if cfg.clock {
            kinds.extend(FaultKind::CLOCK);
        }
        if cfg.client_links {
            kinds.extend(FaultKind::CLIENT);
        }
    }
    let plan = Plan::draw_from(cfg.seed, cfg.duration, cfg.faults, &kinds);
    let result = async {
        let workload = Workload::start(&net, cfg).await?;
        run_faults(&mut net, &plan, cfg, &mut report).await;
        finish(&mut net, workload, report).await
    }
    .await;
    net.keep_if_failed(&format!("seed-{}", cfg.seed), result).await
}

/// The recording sessions and watchers of one run.
struct Workload {
    history: Arc<History>,
    keys: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
    sessions: Vec<tokio::task::JoinHandle<()>>,
    watch_logs: Vec<Arc<Mutex<WatchLog>>>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    async fn start(net: &Net, cfg: &ChaosConfig) -> Result<Self, BoxError> {
        let history = Arc::new(History::new());
        let prefix = key_prefix(cfg.seed);
        let keys: Arc<Vec<String>> = Arc::new((0..cfg.keys).map(|k| format!("{prefix}k{k}")).collect());
        let values = Arc::new(AtomicU32::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        let endpoints = net.endpoints();
        // The watchers start at an index before any write to the schedule's keys, so they
        // know every key starts absent and must see every change.
        let applied = net.admin(endpoints.clone(), crate::test_options()).await?.status().await?.applied_index;
        let watch_options = net.options(Who::Watcher, quick_options());
        let mut watch_logs = Vec::new();
        let mut watchers = Vec::new();
        for w in 0..cfg.watchers {
            let (key, prefix) =
                if w % 2 == 0 { (prefix.clone(), true) } else { (keys[(w / 2) % keys.len()].clone(), false) };
            let log = Arc::new(Mutex::new(WatchLog::new(w, key, prefix, applied + 1)));
            watch_logs.push(log.clone());
            watchers.push(tokio::spawn(watcher(w, endpoints.clone(), watch_options.clone(), log)));
        }
        let session_endpoints = net.session_endpoints();
        let sessions = (0..cfg.clients)
            .map(|c| {
                // Each session starts at another node.
                let mut eps = session_endpoints.clone();
                let len = eps.len();
                eps.rotate_left(c % len);
                let client = Client::new(eps, net.options(Who::Session, session_options()));
                let (h, k, v, s) = (history.clone(), keys.clone(), values.clone(), stop.clone());
                let seed = cfg.seed;
                tokio::spawn(async move {
                    if let Ok(client) = client {
                        session(c, client, h, k, v, s, seed).await;
                    }
                })
            })
            .collect();
        Ok(Self { history, keys, stop, sessions, watch_logs, watchers })
    }

    /// Waits until `n` more operations than now have completed.
    async fn progress(&self, n: usize, timeout: Duration) -> Result<(), BoxError> {
        let target = self.history.operations().len() + n;
        wait_for(&format!("{target} operations"), timeout, || {
            std::future::ready(self.history.operations().len() >= target)
        })
        .await
    }
}

/// Stops the sessions, heals, resolves unknown writes, reads every key, checks the history,
/// compares the replicas and stops every node.
async fn finish(net: &mut Net, workload: Workload, mut report: ScheduleReport) -> Result<ScheduleReport, BoxError> {
    let Workload { history, keys, stop, sessions, watch_logs, watchers } = workload;
    stop.store(true, Ordering::Relaxed);
    for s in sessions {
        let _ = tokio::time::timeout(Duration::from_secs(60), s).await;
    }

    heal(net, &mut report).await?;
    let resolved = resolve_unknown(net, &history, &mut report).await;
    final_reads(net, &history, &keys).await?;

    let mut ops = history.operations();
    // Writes resolved by resending replace their unknown records.
    for (i, op) in resolved {
        ops[i] = op;
    }
    let checked = checker::check(&ops, Duration::from_secs(60));
    report.operations = checked.operations;
    report.ok = checked.ok;
    report.unknown = checked.unknown;
    report.violations.extend(checked.violations.iter().map(Violation::to_string));

    let applied = converged(net, &keys).await;
    if let Err(e) = &applied {
        report.violations.push(e.to_string());
    }
    // Every watcher, whatever it went through, catches up with the final state.
    if let Ok(applied) = applied {
        let caught_up = wait_for("every watcher to catch up", Duration::from_secs(30), || {
            std::future::ready(watch_logs.iter().all(|l| lock(l).resume_index() > applied))
        })
        .await;
        if caught_up.is_err() {
            for l in &watch_logs {
                let l = lock(l);
                if l.resume_index() <= applied {
                    report.violations.push(format!(
                        "watcher w{} did not resume: every change before index {} arrived, the nodes applied {applied}",
                        l.watcher,
                        l.resume_index()
                    ));
                }
            }
        }
    }
    for w in watchers {
        w.abort();
    }
    let logs: Vec<WatchLog> = watch_logs.iter().map(|l| lock(l).clone()).collect();
    report.watch = watch_check::check(&logs, &ops);
    report.violations.extend(report.watch.violations.iter().map(ToString::to_string));

    // Secrets stay out of the logs: the users' passwords, password hashes and the root
    // token's signature (a log could print that part alone).
    let secrets: Vec<String> = net.secure.as_ref().map_or_else(Vec::new, |secure| {
        let mut secrets: Vec<String> = [Who::Root, Who::Session, Who::Watcher].map(|w| secure.password(w)).into();
        secrets.push("$argon2".into());
        let root = secure.root_token.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        secrets.extend(root.as_ref().and_then(|(t, _)| t.rsplit('.').next()).map(str::to_string));
        secrets
    });
    for node in &mut net.nodes {
        if node.pid().is_some() && !node.stop() {
            report.violations.push(format!("node {} did not stop cleanly; log:\n{}", node.id, node.log_tail()));
        }
        // A node's log spans its restarts (it is appended to).
        let log = node.log();
        if let Some(n) = secrets.iter().position(|s| log.contains(s.as_str())) {
            report.violations.push(format!(
                "node {}'s log holds a secret (number {n} of the scan's list: passwords, hash prefix, root token)",
                node.id
            ));
        }
        report.snapshots_built += log.matches("snapshot built").count();
        report.snapshots_installed += log.matches("snapshot installed").count();
        report.tokens_issued += log.matches("token issued").count();
        report.tokens_expired += log.matches("it has expired").count();
    }
    Ok(report)
}

/// Where a crash point is reached and what makes it happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashTrigger {
    /// Client writes (append, apply, purge with a small snapshot threshold).
    Load,
    /// An election: the leader is killed, so the follower saves a vote.
    Election,
    /// The follower is down while the leader snapshots and purges past it; on its restart
    /// the leader sends it a snapshot.
    SnapshotTransfer,
}

/// Arms crash point `point` (see `bin/raftkv/src/crash.rs`) in one follower, run with the
/// testing binary of `cfg.bin_dir`, under the usual sessions; checks that the follower
/// aborted there, restarts it without the crash point, and runs every check.
pub async fn run_crash_point(
    cfg: &ChaosConfig,
    point: &str,
    trigger: CrashTrigger,
) -> Result<ScheduleReport, BoxError> {
    let mut net = Net::start(cfg).await?;
    net.journal.note(format_args!("crash point {point}, triggered by {trigger:?}"));
    let result = crash_point_schedule(&mut net, cfg, point, trigger).await;
    net.keep_if_failed(&format!("crash-{point}-seed-{}", cfg.seed), result).await
}

async fn crash_point_schedule(
    net: &mut Net,
    cfg: &ChaosConfig,
    point: &str,
    trigger: CrashTrigger,
) -> Result<ScheduleReport, BoxError> {
    let mut report =
        ScheduleReport { seed: cfg.seed, nodes: cfg.nodes, secure: cfg.secure, ..ScheduleReport::default() };
    let workload = Workload::start(net, cfg).await?;
    workload.progress(100, Duration::from_secs(60)).await?;
    let leader = net.leader(&[]).await.ok_or("no leader")?;
    let target = (leader + 1) % net.nodes.len();
    let leader_addr = net.nodes[leader].grpc_addr.clone();
    let options = net.options(Who::Root, quick_options());
    let status = || {
        let (addr, options) = (leader_addr.clone(), options.clone());
        async move { Client::new([addr], options)?.status().await.map_err(BoxError::from) }
    };
    net.nodes[target].kill();
    if trigger == CrashTrigger::SnapshotTransfer {
        let behind = status().await?.last_log_index;
        wait_for("the leader to purge past the stopped follower", Duration::from_secs(120), || async {
            status().await.is_ok_and(|s| s.purged_index > behind)
        })
        .await?;
    }
    let mut env = cfg.node_env.clone();
    env.push(("RAFTKV_CRASH_AT".into(), point.into()));
    net.nodes[target].set_env(env);
    // A crash point of the apply path may be reached while the node re-applies its log on
    // start, before it listens: that is a crash at the point too.
    let crashed_on_start = net.nodes[target].restart(false).is_err();
    report.faults.push(format!("crash point {point} armed in {}", net.nodes[target].id));
    if trigger == CrashTrigger::Election && !crashed_on_start {
        net.nodes[leader].kill();
        report.faults.push(format!("KillLeader {}", net.nodes[leader].id));
    }
    let exit = if crashed_on_start { Some(false) } else { net.nodes[target].wait_exit(Duration::from_secs(90)) };
    let log = net.nodes[target].log();
    match exit {
        Some(false) if log.contains("crash point reached") => {
            report.faults.push(format!("{} aborted at {point}", net.nodes[target].id));
        }
        // An error point: the operation failed, openraft stopped, and the node must exit
        // with the error (fail-stop) instead of serving what it had; when the point is hit
        // while the node re-applies its log on start, the start itself fails.
        // A failed fsync is never retried: the point is reached once.
        Some(false) if point.contains("fsync") && log.matches("error point reached").count() > 1 => {
            report.violations.push(format!(
                "{} reached {point} {} times: a failed fsync was retried",
                net.nodes[target].id,
                log.matches("error point reached").count()
            ));
        }
        Some(false) if log.contains("error point reached") && log.contains("raftkv: error:") => {
            report.faults.push(format!("{} failed at {point} and stopped", net.nodes[target].id));
        }
        other => report.violations.push(format!(
            "{} did not abort at {point} (exit: {other:?}); log:\n{}",
            net.nodes[target].id,
            net.nodes[target].log_tail()
        )),
    }
    net.nodes[target].kill();
    net.nodes[target].set_env(cfg.node_env.clone());
    net.nodes[target].restart(false)?;
    if net.nodes[leader].pid().is_none() {
        net.nodes[leader].restart(false)?;
    }
    workload.progress(100, Duration::from_secs(60)).await?;
    finish(net, workload, report).await
}

/// Runs the plan: starts and ends faults at their times.
async fn run_faults(net: &mut Net, plan: &Plan, cfg: &ChaosConfig, report: &mut ScheduleReport) {
    #[derive(Debug)]
    enum Ending {
        Net(u64),
        Restart(usize),
        Resume(usize),
        Promote(usize),
        ClockRate(usize),
    }
    let start = tokio::time::Instant::now();
    let mut rng = Rng::new(cfg.seed ^ 0x7a29);
    let mut endings: Vec<(Duration, Ending)> = Vec::new();
    let mut paused: Vec<usize> = Vec::new();
    let mut next_id = 0u64;
    let mut faults = plan.faults.iter().peekable();
    let end = start + cfg.duration;
    loop {
        endings.sort_by_key(|(t, _)| *t);
        let next_start = faults.peek().map(|f| start + f.at);
        let next_end = endings.first().map(|(t, _)| start + *t);
        let Some(when) = [next_start, next_end].into_iter().flatten().min() else { break };
        tokio::time::sleep_until(when).await;
        if next_end == Some(when) {
            let (_, ending) = endings.remove(0);
            match ending {
                Ending::Net(id) => {
                    let fault = net.active.remove(&id);
                    net.apply_links();
                    net.journal.note(format_args!("end {fault:?}: links set again"));
                }
                Ending::Restart(i) => {
                    if net.nodes[i].pid().is_none() {
                        let restarted = net.nodes[i].restart(false);
                        net.journal.note(format_args!("restart {}: {restarted:?}", net.nodes[i].id));
                        if let Err(e) = restarted {
                            report.violations.push(format!("{} did not restart: {e}", net.nodes[i].id));
                        }
                    }
                }
                Ending::ClockRate(i) => {
                    let reset = net.clocks[i].set_rate(net.nodes[i].pid(), 1.0);
                    net.journal.note(format_args!("clock of {} at the normal rate: {reset:?}", net.nodes[i].id));
                }
                Ending::Resume(i) => {
                    net.nodes[i].resume();
                    paused.retain(|p| *p != i);
                    net.journal.note(format_args!("resume {}", net.nodes[i].id));
                }
                Ending::Promote(i) => {
                    let c = net.admin(net.endpoints(), quick_options()).await;
                    let promoted = match c {
                        Ok(c) => c.promote(&net.nodes[i].id, Duration::from_secs(5)).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    net.journal.note(format_args!(
                        "promote {} (end of Membership): {}",
                        net.nodes[i].id,
                        result_of(&promoted)
                    ));
                    if promoted.is_ok() {
                        net.demoted.retain(|d| *d != i);
                    }
                }
            }
            continue;
        }
        let Some(fault) = faults.next() else { continue };
        let t = start.elapsed();
        let n = net.nodes.len();
        let busy = |net: &Net, i: usize, paused: &[usize]| net.nodes[i].pid().is_none() || paused.contains(&i);
        let leader = net.leader(&paused).await;
        let follower = {
            let candidates: Vec<usize> = (0..n).filter(|i| Some(*i) != leader && !busy(net, *i, &paused)).collect();
            (!candidates.is_empty())
                .then(|| candidates[usize::try_from(rng.below(candidates.len() as u64)).unwrap_or(0)])
        };
        let down = (0..n).filter(|i| busy(net, *i, &paused)).count();
        let target = match fault.kind {
            FaultKind::IsolateLeader | FaultKind::KillLeader | FaultKind::PauseLeader | FaultKind::TransferLeader => {
                leader
            }
            FaultKind::IsolateFollower
            | FaultKind::KillFollower
            | FaultKind::PauseFollower
            | FaultKind::Membership
            | FaultKind::OneWay
            | FaultKind::Delay => follower.or(leader),
            FaultKind::ResetLinks | FaultKind::RestartAll => Some(0),
            FaultKind::ClientReset => Some(0).filter(|_| !net.client_links.is_empty()),
            FaultKind::ClientStall => {
                let pick = if rng.below(2) == 0 { leader.or(follower) } else { follower.or(leader) };
                pick.filter(|_| !net.client_links.is_empty())
            }
            // One node at a time, the leader or a follower.
            FaultKind::ClockFast | FaultKind::ClockSlow | FaultKind::ClockJump => {
                let skewed = endings.iter().any(|(_, e)| matches!(e, Ending::ClockRate(_)));
                let pick = if rng.below(2) == 0 { leader.or(follower) } else { follower.or(leader) };
                pick.filter(|_| !skewed && !net.clocks.is_empty())
            }
        };
        // Keep at most a minority of nodes down by process faults at once, so the schedule
        // also exercises a live cluster under faults and not only a dead one.
        let process_fault = matches!(
            fault.kind,
            FaultKind::KillLeader | FaultKind::KillFollower | FaultKind::PauseLeader | FaultKind::PauseFollower
        );
        let Some(target) = target else { continue };
        if process_fault && down + 1 > (n - 1) / 2 {
            continue;
        }
        let id = net.nodes[target].id.clone();
        let mut what = format!("{:?} {id}", fault.kind);
        match fault.kind {
            FaultKind::IsolateLeader | FaultKind::IsolateFollower => {
                next_id += 1;
                net.active.insert(next_id, NetFault::Isolate(target));
                net.apply_links();
                endings.push((t + fault.hold, Ending::Net(next_id)));
            }
            FaultKind::OneWay => {
                let other = (target + 1 + usize::try_from(rng.below(n as u64 - 1)).unwrap_or(0)) % n;
                let (from, to) = if rng.below(2) == 0 { (target, other) } else { (other, target) };
                what = format!("OneWay {} -> {} dropped", net.nodes[from].id, net.nodes[to].id);
                next_id += 1;
                net.active.insert(next_id, NetFault::OneWay { from, to });
                net.apply_links();
                endings.push((t + fault.hold, Ending::Net(next_id)));
            }
            FaultKind::Delay => {
                next_id += 1;
                net.active.insert(next_id, NetFault::Delay(target));
                net.apply_links();
                endings.push((t + fault.hold, Ending::Net(next_id)));
            }
            FaultKind::ResetLinks => {
                what = "ResetLinks all".into();
                for (_, _, link) in net.links() {
                    link.reset();
                }
            }
            FaultKind::ClientReset => {
                what = "ClientReset all".into();
                for link in &net.client_links {
                    link.reset();
                }
            }
            FaultKind::ClientStall => {
                next_id += 1;
                net.active.insert(next_id, NetFault::ClientStall(target));
                net.apply_links();
                endings.push((t + fault.hold, Ending::Net(next_id)));
            }
            FaultKind::KillLeader | FaultKind::KillFollower => {
                net.nodes[target].kill();
                endings.push((t + fault.hold, Ending::Restart(target)));
            }
            FaultKind::PauseLeader | FaultKind::PauseFollower => {
                net.nodes[target].pause();
                paused.push(target);
                endings.push((t + fault.hold, Ending::Resume(target)));
            }
            FaultKind::RestartAll => {
                what = "RestartAll (SIGKILL, start)".into();
                let running: Vec<usize> = (0..n).filter(|i| net.nodes[*i].pid().is_some()).collect();
                for &i in &running {
                    net.nodes[i].resume();
                    net.nodes[i].kill();
                }
                paused.clear();
                for &i in &running {
                    if let Err(e) = net.nodes[i].restart(false) {
                        report.violations.push(format!("{} did not restart: {e}", net.nodes[i].id));
                    }
                }
            }
            FaultKind::TransferLeader => {
                let to = (target + 1 + usize::try_from(rng.below(n as u64 - 1)).unwrap_or(0)) % n;
                what = format!("TransferLeader {id} -> {}", net.nodes[to].id);
                if let Ok(c) = net.admin(vec![net.nodes[target].grpc_addr.clone()], quick_options()).await {
                    let r = c.transfer_leader(Some(&net.nodes[to].id), Duration::from_secs(3)).await;
                    if let Err(e) = r {
                        what.push_str(&format!(" (refused: {e})"));
                    }
                }
            }
            FaultKind::Membership => {
                what = format!("Membership demote {id}");
                if let Ok(c) = net.admin(net.endpoints(), quick_options()).await {
                    match c.demote(&id, Duration::from_secs(3)).await {
                        Ok(_) => {
                            net.demoted.push(target);
                            endings.push((t + fault.hold, Ending::Promote(target)));
                        }
                        // Its outcome is unknown: promote it at the end either way.
                        Err(e) => {
                            what.push_str(&format!(" (failed: {e})"));
                            net.demoted.push(target);
                        }
                    }
                }
            }
            FaultKind::ClockFast | FaultKind::ClockSlow => {
                let rate = if fault.kind == FaultKind::ClockFast { crate::clock::FAST } else { crate::clock::SLOW };
                what = format!("{:?} {id} (x{rate})", fault.kind);
                if let Err(e) = net.clocks[target].set_rate(net.nodes[target].pid(), rate) {
                    what.push_str(&format!(" (failed: {e})"));
                }
                endings.push((t + fault.hold, Ending::ClockRate(target)));
            }
            // Forward only, and never stepped back: CLOCK_MONOTONIC never goes back on
            // Linux (see `crate::clock` for what a step back does).
            FaultKind::ClockJump => {
                what = format!("ClockJump {id} (+{}s)", crate::clock::MINUTE);
                if let Err(e) = net.clocks[target].jump(crate::clock::MINUTE) {
                    what.push_str(&format!(" (failed: {e})"));
                }
            }
        }
        if fault.hold > Duration::ZERO {
            what.push_str(&format!(" for {:.1}s", fault.hold.as_secs_f64()));
        }
        net.journal.note(format_args!("fault {what}"));
        report.faults.push(format!("t+{:5.1}s {what}", t.as_secs_f64()));
        report.kinds.push(fault.kind);
    }
    // Let the traffic phase run its full length even when the faults ended early.
    tokio::time::sleep_until(end).await;
}

/// A membership call's result as the journal records it.
fn result_of(r: &Result<proto::admin::v1::MembershipChangeResponse, String>) -> String {
    match r {
        Ok(m) => format!("ok (changed {}, membership@{})", m.changed, m.index),
        Err(e) => format!("failed: {e}"),
    }
}

/// Heals everything: links pass, paused nodes resume, killed nodes restart, demoted nodes
/// are promoted; then waits for one leader, every node a voter and caught up.
async fn heal(net: &mut Net, report: &mut ScheduleReport) -> Result<(), BoxError> {
    net.active.clear();
    net.apply_links();
    net.journal.note("heal: every link passes");
    for i in 0..net.nodes.len() {
        net.nodes[i].resume();
        if net.nodes[i].pid().is_none() {
            let restarted = net.nodes[i].restart(false);
            net.journal.note(format_args!("heal: restart {}: {restarted:?}", net.nodes[i].id));
            restarted?;
        }
    }
    let healing = tokio::time::Instant::now();
    promote_all(net).await.map_err(|e| format!("after healing: {e}"))?;
    report.promoted_after = Some(healing.elapsed());
    net.journal.note("heal: every node is a voter");
    net.demoted.clear();
    let settled = wait_settled(net).await;
    if let Err(e) = settled {
        report.violations.push(format!("no recovery after healing: {e}"));
        return Err(e);
    }
    Ok(())
}

/// How long [`promote_all`] waits without any progress before it calls promotion stuck.
const PROMOTE_STALL: Duration = Duration::from_secs(30);
/// The bound on [`promote_all`] even while it sees progress.
const PROMOTE_LIMIT: Duration = Duration::from_secs(120);

/// Promotes every member the leader does not count as a voter (a demotion whose outcome was
/// unknown too) until every node is a voter. It asks the leader itself (not whichever node
/// answers first, which may lag), and keeps waiting while something moves: the leader, its
/// term or log, the membership, a learner's matched index. With nothing moving for
/// [`PROMOTE_STALL`], or after [`PROMOTE_LIMIT`] in all, it fails with what it saw and the
/// last answer to a promote.
async fn promote_all(net: &Net) -> Result<(), BoxError> {
    let n = net.nodes.len();
    let started = tokio::time::Instant::now();
    let mut seen = String::new();
    let mut moved = started;
    let mut last_answer = String::from("none yet");
    loop {
        let view = net.leader_view().await;
        let now = match &view {
            Some(s) => progress_of(s),
            None => "no leader".to_string(),
        };
        if now != seen {
            net.journal.note(format_args!(
                "heal: {}",
                view.as_ref().map_or_else(|| "no node says it leads".to_string(), describe)
            ));
            seen = now;
            moved = tokio::time::Instant::now();
        }
        if let Some(s) = &view {
            let learners: Vec<&str> =
                s.members.iter().filter(|m| m.suffrage != Suffrage::Voter as i32).map(|m| m.id.as_str()).collect();
            if learners.is_empty() && s.members.len() == n {
                return Ok(());
            }
            // The leader first: a promote asked elsewhere is forwarded to it anyway.
            let mut endpoints = net.endpoints();
            if let Some(i) = net.nodes.iter().position(|node| node.id == s.node_id) {
                endpoints.rotate_left(i);
            }
            let c = net.admin(endpoints, quick_options()).await?;
            for id in learners {
                let promoted = c.promote(id, Duration::from_secs(10)).await.map_err(|e| e.to_string());
                let answer = format!("promote {id}: {}", result_of(&promoted));
                if answer != last_answer {
                    net.journal.note(format_args!("heal: {answer}"));
                    last_answer = answer;
                }
            }
        }
        let what = view.as_ref().map_or_else(|| "no node says it leads".to_string(), describe);
        if moved.elapsed() > PROMOTE_STALL {
            return Err(format!(
                "promotion is stuck: nothing moved for {PROMOTE_STALL:?} (the leader's view: {what}; last answer: {last_answer})"
            )
            .into());
        }
        if started.elapsed() > PROMOTE_LIMIT {
            return Err(format!(
                "not every node is a voter after {PROMOTE_LIMIT:?}, though it was still moving (the leader's view: {what}; last answer: {last_answer})"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What counts as progress towards every node being a voter, from the leader's status: who
/// leads in which term, its log, the membership, and how far each member is matched.
fn progress_of(s: &proto::admin::v1::StatusResponse) -> String {
    let members: Vec<(&str, i32, Option<u64>)> =
        s.members.iter().map(|m| (m.id.as_str(), m.suffrage, m.matched_index)).collect();
    format!("{} {} {} {} {members:?}", s.node_id, s.term, s.last_log_index, s.membership_index)
}

/// A client per node, each to that node only, as root in a secure schedule.
async fn root_clients(net: &Net) -> Result<Vec<Client>, BoxError> {
    net.refresh_root_token().await;
    let clients = net
        .nodes
        .iter()
        .map(|node| Client::new([node.grpc_addr.clone()], net.options(Who::Root, crate::test_options())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(clients)
}

async fn wait_settled(net: &Net) -> Result<(), BoxError> {
    let clients = root_clients(net).await?;
    crate::wait_clients_settled(&clients, Duration::from_secs(60)).await
}

/// Sends every write of unknown outcome again with its request id (as the sessions' user);
/// returns the records to replace (index in the history, the resolved operation).
async fn resolve_unknown(net: &Net, history: &History, report: &mut ScheduleReport) -> Vec<(usize, Operation)> {
    let options = net.options(Who::Session, crate::test_options());
    let Ok(client) = Client::new(net.endpoints(), options) else { return Vec::new() };
    let mut resolved = Vec::new();
    for (i, op) in history.operations().into_iter().enumerate() {
        if !matches!(op.outcome, Outcome::Unknown(_)) {
            continue;
        }
        let outcome = execute(&client, &op.key, op.input, &op.request_id).await;
        if matches!(outcome, Outcome::Ok { .. }) {
            report.resolved += 1;
            resolved.push((i, Operation { complete: history.now(), outcome, ..op }));
        }
    }
    resolved
}

/// A linearizable read of every key, after everything else, by a session of its own.
async fn final_reads(net: &Net, history: &History, keys: &[String]) -> Result<(), BoxError> {
    let client = net.admin(net.endpoints(), crate::test_options()).await?;
    for key in keys {
        let op = final_read(&client, history, key).await.map_err(|e| format!("{e} after healing"))?;
        history.record(op);
    }
    Ok(())
}

/// One linearizable read of `key` by `client`, timed on `history`'s clock, as the operation
/// the checker sees (client `usize::MAX`: no session of the workload); a failed read is an
/// error, since the cluster must answer once its faults are healed.
pub(crate) async fn final_read(client: &Client, history: &History, key: &str) -> Result<Operation, String> {
    let invoke = history.now();
    let outcome = execute(client, key, Input::Get, "").await;
    if let Outcome::Fail(e) = &outcome {
        return Err(format!("final read of {key} failed: {e}"));
    }
    let complete = history.now();
    Ok(Operation {
        client: usize::MAX,
        key: key.to_string(),
        input: Input::Get,
        request_id: String::new(),
        invoke,
        complete,
        outcome,
    })
}

/// Every replica's full scan of the schedule's keys, read `STALE` once all have applied the
/// same index, must be identical (values and every index).
async fn converged(net: &Net, keys: &[String]) -> Result<u64, BoxError> {
    let prefix = keys.first().map(|k| k.trim_end_matches(|c: char| c != '-').to_string()).unwrap_or_default();
    let mut last = String::new();
    let agreed = AtomicU64::new(0);
    let clients = root_clients(net).await?;
    let result = wait_for("every replica to hold the same data", Duration::from_secs(30), || async {
        let mut scans = Vec::new();
        let mut applied = Vec::new();
        for c in &clients {
            let Ok(s) = c.status().await else { return false };
            let req = RangeRequest {
                key: prefix.as_bytes().to_vec().into(),
                prefix: true,
                consistency: Consistency::Stale as i32,
                ..Default::default()
            };
            let Ok(kvs) = c.range_all(req).await else { return false };
            applied.push(s.applied_index);
            scans.push(
                kvs.into_iter()
                    .map(|kv| (kv.key, kv.value, kv.create_index, kv.modify_index, kv.version))
                    .collect::<Vec<_>>(),
            );
        }
        agreed.store(applied.first().copied().unwrap_or(0), Ordering::Relaxed);
        applied.windows(2).all(|w| w[0] == w[1]) && scans.windows(2).all(|w| w[0] == w[1])
    })
    .await;
    if result.is_err() {
        for (node, c) in net.nodes.iter().zip(&clients) {
            if let Ok(s) = c.status().await {
                last.push_str(&format!(" {}: applied {}", node.id, s.applied_index));
            }
        }
        return Err(format!("replicas diverge:{last}").into());
    }
    Ok(agreed.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failing_schedule_is_kept() {
        let passed = ScheduleReport { seed: 3, ..ScheduleReport::default() };
        assert_eq!(failure(&Ok(passed)), None);
        let violated =
            ScheduleReport { seed: 3, violations: vec!["replicas diverge".into()], ..ScheduleReport::default() };
        let why = failure(&Ok(violated)).unwrap_or_default();
        assert!(why.contains("VIOLATION: replicas diverge") && why.contains("--seed 3"), "{why}");
        let error: Result<ScheduleReport, BoxError> = Err("after healing: timed out".into());
        assert_eq!(failure(&error).as_deref(), Some("harness error: after healing: timed out"));
    }
}
