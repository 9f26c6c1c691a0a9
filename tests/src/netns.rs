//! Hosts in network namespaces: every node on a host of its own, with its own address and
//! a real kernel network stack between them, and faults made by the kernel.
//!
//! A [`Fabric`] creates, for one test, namespaces of its own (names `rk<pid>x<n>-…`, so
//! parallel tests and test processes never collide): one per node (`…-n1`, `…-n2`, …), one
//! for the clients (`…-cl`) and one holding a bridge (`…-br`). Each host has a veth pair:
//! `eth0` in its namespace with address `198.18.0.X/24` (RFC 2544's benchmarking range:
//! nodes `.11`, `.12`, …, clients `.2`), the other end a port of the bridge. The host's own
//! interfaces, routes and firewall are never touched: every `ip`, `nft` and `iptables`
//! command names a namespace of the fabric. Dropping the fabric deletes its namespaces (and
//! with them the veths and rules), and a new fabric first deletes those left by test
//! processes that no longer exist.
//!
//! Nodes run under `nsenter --net=/run/netns/…` ([`Fabric::wrapper`]), which execs `raftkv`
//! in the node's namespace, so the PID the harness stops and pauses is the node's. The test's
//! clients run on threads moved into the clients' namespace ([`Fabric::block_on_clients`]).
//! Every node's ports are fixed (each host has its own port space): Raft traffic, client
//! traffic and gossip (UDP) all cross the bridge.
//!
//! Faults ([`Impairment`], set per host with [`Fabric::impair`]):
//! - **partition**: `ip link set eth0 down` in a node's namespace ([`Fabric::set_link`]):
//!   Raft, client and gossip traffic alike;
//! - **one-way cut**: packets from given hosts dropped at the host's ingress (nftables,
//!   netdev `ingress` hook);
//! - **loss**: a random share of packets dropped at the host's ingress (nftables `numgen
//!   random`), silently, as on a wire (a drop on the sender's `output` hook would be reported
//!   to the sending socket as `EPERM`);
//! - **duplication**: a random share of outgoing packets sent twice (nftables `dup to ip
//!   daddr`);
//! - **delay, jitter and reordering**: outgoing packets are queued by the kernel to an
//!   NFQUEUE (an `iptables` rule with `--queue-bypass`) and released by a thread of the
//!   harness after the delay ± a uniform jitter; packets released out of order are
//!   reordered. `tc netem` would do this in the kernel, but the kernel of the development
//!   machines has no `sch_netem` (nor `fq`, which eBPF delay needs): the kernel holds the
//!   packets, the harness only says when each may go.
//!
//! Creating a fabric needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and the tools `ip`, `nft`,
//! `iptables` and `nsenter`. Where they are missing, [`Fabric::create`] says why and returns
//! `None`, and the test skips; under `CI=true` it fails instead (CI runs as root).

use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::BoxError;
use crate::chaos::Rng;

/// The first three octets of every fabric's addresses (RFC 2544's benchmarking range).
pub const SUBNET: &str = "198.18.0";
/// The clients' address.
pub const CLIENT_IP: &str = "198.18.0.2";
/// Every node's Raft port (each node has a namespace, so a port space, of its own).
pub const RAFT_PORT: u16 = 7001;
/// Every node's client (gRPC) port.
pub const GRPC_PORT: u16 = 7002;
/// Every node's gossip (UDP) port.
pub const GOSSIP_PORT: u16 = 7003;
/// The NFQUEUE number of the delayer (per namespace, so the same in every host).
const QUEUE: u16 = 0;
/// How many packets the kernel holds for the delayer before it lets more pass undelayed.
const QUEUE_MAX_LEN: u32 = 16_384;
/// How long the delayer sleeps when nothing is due and nothing arrived.
const DELAYER_IDLE: Duration = Duration::from_micros(500);

/// The address of node `i` (0-based).
#[must_use]
pub fn node_ip(i: usize) -> String {
    format!("{SUBNET}.{}", 11 + i)
}

/// One host of a fabric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Host {
    /// Node `i` (0-based).
    Node(usize),
    /// The clients' namespace.
    Clients,
}

/// What the kernel does to a host's traffic. The default is nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Impairment {
    /// Each outgoing packet is held this long ...
    pub delay: Duration,
    /// ... ± up to this much, drawn uniformly per packet (so packets get reordered).
    pub jitter: Duration,
    /// Incoming packets lost, per thousand.
    pub loss_permille: u32,
    /// Outgoing packets sent twice, per thousand.
    pub duplicate_permille: u32,
    /// Every packet from these hosts is dropped on arrival (a one-way cut).
    pub drop_from: Vec<Host>,
}

impl Impairment {
    /// The WAN profile: 20 ms ± 5 ms each way and 1 % loss.
    #[must_use]
    pub fn wan() -> Self {
        Self {
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(5),
            loss_permille: 10,
            ..Self::default()
        }
    }
}

/// Node flags for links like [`Impairment::wan`], as docs/reference.md ("Timing flags")
/// recommends: heartbeats every 100 ms; a follower waits 2 s (up to 4 s) before it calls
/// an election, longer than three back-to-back TCP retransmissions of one lost segment
/// (200 + 400 + 800 ms at Linux's minimum RTO).
pub const WAN_TIMING: [&str; 4] = ["--heartbeat_interval", "100ms", "--election_timeout", "2s"];

static FABRICS: AtomicU32 = AtomicU32::new(0);

/// A test's namespaces, bridge and veths; deleted on drop.
pub struct Fabric {
    tag: String,
    nodes: usize,
    delayers: Mutex<BTreeMap<Host, Delayer>>,
}

impl std::fmt::Debug for Fabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fabric").field("tag", &self.tag).field("nodes", &self.nodes).finish_non_exhaustive()
    }
}

impl Fabric {
    /// Creates the namespaces of `nodes` nodes, the clients and the bridge. `Ok(None)` (with
    /// the reason printed) where namespaces cannot be made here, unless `CI=true`.
    pub fn create(nodes: usize) -> Result<Option<Fabric>, BoxError> {
        if let Some(why) = unavailable() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                return Err(format!("network namespaces are required under CI=true: {why}").into());
            }
            eprintln!(
                "SKIPPED: network namespaces cannot be made here ({why}); run as root with ip, nft, iptables and nsenter"
            );
            return Ok(None);
        }
        remove_stale();
        let tag = format!("rk{}x{}", std::process::id(), FABRICS.fetch_add(1, Ordering::Relaxed));
        let fabric = Fabric { tag, nodes, delayers: Mutex::new(BTreeMap::new()) };
        fabric.build()?;
        Ok(Some(fabric))
    }

    fn build(&self) -> Result<(), BoxError> {
        let br = self.bridge_ns();
        ip(&["netns", "add", &br])?;
        ip(&["-n", &br, "link", "set", "lo", "up"])?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for host in self.hosts() {
            let ns = self.ns(host);
            let port = match host {
                Host::Clients => "p0".to_string(),
                Host::Node(i) => format!("p{}", i + 1),
            };
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &br, "link", "set", &port, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.addr(host)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            self.write_rules(host, &Impairment::default())?;
        }
        Ok(())
    }

    /// Every host: the nodes, then the clients.
    pub fn hosts(&self) -> impl Iterator<Item = Host> + use<> {
        (0..self.nodes).map(Host::Node).chain([Host::Clients])
    }

    /// The namespace of `host`.
    #[must_use]
    pub fn ns(&self, host: Host) -> String {
        match host {
            Host::Node(i) => format!("{}-n{}", self.tag, i + 1),
            Host::Clients => format!("{}-cl", self.tag),
        }
    }

    fn bridge_ns(&self) -> String {
        format!("{}-br", self.tag)
    }

    /// The address of `host`.
    #[must_use]
    pub fn addr(&self, host: Host) -> String {
        match host {
            Host::Node(i) => node_ip(i),
            Host::Clients => CLIENT_IP.to_string(),
        }
    }

    /// The command line that runs a program in node `i`'s namespace (see
    /// `NodeProcBuilder::wrapper`).
    #[must_use]
    pub fn wrapper(&self, i: usize) -> Vec<String> {
        vec!["nsenter".into(), format!("--net=/run/netns/{}", self.ns(Host::Node(i)))]
    }

    /// Node `i`'s link up or down (`ip link set eth0 up|down` in its namespace).
    pub fn set_link(&self, i: usize, up: bool) -> Result<(), BoxError> {
        let ns = self.ns(Host::Node(i));
        ip(&["-n", &ns, "link", "set", "eth0", if up { "up" } else { "down" }])
    }

    /// Sets what the kernel does to `host`'s traffic, replacing what was set before.
    pub fn impair(&self, host: Host, how: &Impairment) -> Result<(), BoxError> {
        self.write_rules(host, how)?;
        let ns = self.ns(host);
        let mut delayers = self.delayers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let delayed = how.delay > Duration::ZERO || how.jitter > Duration::ZERO;
        if delayed && !delayers.contains_key(&host) {
            let seed = u64::from(std::process::id()) ^ ((delayers.len() as u64) << 20);
            delayers.insert(host, Delayer::start(&ns, seed)?);
        }
        if let Some(delayer) = delayers.get_mut(&host) {
            delayer.set(how.delay, how.jitter);
            delayer.route(&ns, delayed)?;
        }
        Ok(())
    }

    /// The nftables rules of `host` for `how` (one `nft -f` transaction: the old tables go).
    fn write_rules(&self, host: Host, how: &Impairment) -> Result<(), BoxError> {
        let mut script = String::from(
            "table ip raftkv_out\ndelete table ip raftkv_out\ntable netdev raftkv_in\ndelete table netdev raftkv_in\n",
        );
        script
            .push_str("table ip raftkv_out {\n  chain out {\n    type filter hook output priority 0; policy accept;\n");
        if how.duplicate_permille > 0 {
            let _ = writeln!(
                script,
                "    oifname \"eth0\" numgen random mod 1000 < {} dup to ip daddr device \"eth0\"",
                how.duplicate_permille
            );
        }
        script.push_str("  }\n}\n");
        script.push_str(
            "table netdev raftkv_in {\n  chain in {\n    type filter hook ingress device \"eth0\" priority 0; policy accept;\n",
        );
        for from in &how.drop_from {
            let _ = writeln!(script, "    ip saddr {} drop", self.addr(*from));
        }
        if how.loss_permille > 0 {
            let _ = writeln!(script, "    numgen random mod 1000 < {} drop", how.loss_permille);
        }
        script.push_str("  }\n}\n");
        run_stdin(Command::new("ip").args(["netns", "exec", &self.ns(host), "nft", "-f", "-"]), &script)
    }

    /// Runs `f` to completion on a runtime whose threads live in the clients' namespace:
    /// every socket it opens is the clients' host.
    pub fn block_on_clients<F, T>(&self, f: F) -> Result<T, BoxError>
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let ns = self.ns(Host::Clients);
        let thread = std::thread::spawn(move || -> Result<T, BoxError> {
            enter(&ns)?;
            let on_start = ns.clone();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                // Threads inherit the namespace of the thread that makes them, but say it
                // anyway: the blocking pool's threads are made from whichever thread needs one.
                .on_thread_start(move || {
                    if let Err(e) = enter(&on_start) {
                        eprintln!("could not enter {on_start}: {e}");
                    }
                })
                .build()?;
            Ok(runtime.block_on(f))
        });
        thread.join().map_err(|_| "the clients' thread panicked")?
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        let delayers = std::mem::take(self.delayers.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner));
        drop(delayers);
        for host in self.hosts().collect::<Vec<_>>() {
            let _ = ip(&["netns", "del", &self.ns(host)]);
        }
        let _ = ip(&["netns", "del", &self.bridge_ns()]);
    }
}

/// Moves the calling thread into namespace `ns`.
pub fn enter(ns: &str) -> Result<(), BoxError> {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).map_err(|e| format!("namespace {ns}: {e}"))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns into {ns}: {e}"))?;
    Ok(())
}

/// Why namespaces cannot be made here, if they cannot.
fn unavailable() -> Option<String> {
    for tool in ["ip", "nft", "iptables", "nsenter"] {
        let found = Command::new(tool)
            .arg(if tool == "ip" { "-V" } else { "--version" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if found.is_err() {
            return Some(format!("`{tool}` not found"));
        }
    }
    let probe = format!("rk{}probe", std::process::id());
    match ip(&["netns", "add", &probe]) {
        Ok(()) => {
            let _ = ip(&["netns", "del", &probe]);
            None
        }
        Err(e) => Some(format!("`ip netns add` failed (not root?): {e}")),
    }
}

/// Deletes the namespaces of fabrics whose test process is gone (a test killed before its
/// drop ran).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(pid) = name.strip_prefix("rk").and_then(|rest| rest.split(['x', 'p']).next()) else { continue };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

fn ip(args: &[&str]) -> Result<(), BoxError> {
    run(Command::new("ip").args(args))
}

fn run(cmd: &mut Command) -> Result<(), BoxError> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()).into())
}

fn run_stdin(cmd: &mut Command, input: &str) -> Result<(), BoxError> {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!("{cmd:?} failed ({}): {}\n{input}", out.status, String::from_utf8_lossy(&out.stderr).trim()).into())
}

/// The harness's half of a host's delay: a thread in the host's namespace bound to its
/// NFQUEUE, releasing each queued packet after the delay ± jitter.
struct Delayer {
    delay_us: Arc<AtomicU64>,
    jitter_us: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    routed: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One packet held by the delayer, ordered by release time.
struct Held {
    at: Instant,
    seq: u64,
    msg: nfq::Message,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    // Reversed: the heap's top is the packet due first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The NFQUEUE rule of a host: its outgoing packets on `eth0` to the delayer, or straight
/// through when nothing listens.
const QUEUE_RULE: [&str; 10] =
    ["OUTPUT", "-o", "eth0", "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass", "-m", "comment"];

impl Delayer {
    fn start(ns: &str, seed: u64) -> Result<Self, BoxError> {
        let delay_us = Arc::new(AtomicU64::new(0));
        let jitter_us = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (d, j, s, ns_owned) = (delay_us.clone(), jitter_us.clone(), stop.clone(), ns.to_string());
        let thread = std::thread::Builder::new().name(format!("delayer-{ns}")).spawn(move || {
            let queue =
                enter(&ns_owned).map_err(|e| e.to_string()).and_then(|()| open_queue().map_err(|e| e.to_string()));
            match queue {
                Ok(queue) => {
                    let _ = ready_tx.send(Ok(()));
                    delay_loop(queue, &d, &j, &s, seed);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
        ready_rx.recv().map_err(|_| "the delayer thread ended before it was ready")??;
        Ok(Self { delay_us, jitter_us, stop, routed: false, thread: Some(thread) })
    }

    fn set(&self, delay: Duration, jitter: Duration) {
        self.delay_us.store(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.jitter_us.store(u64::try_from(jitter.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Adds or removes the host's NFQUEUE rule.
    fn route(&mut self, ns: &str, on: bool) -> Result<(), BoxError> {
        if on == self.routed {
            return Ok(());
        }
        let op = if on { "-A" } else { "-D" };
        let mut args = vec!["netns", "exec", ns, "iptables", op];
        args.extend(QUEUE_RULE);
        args.push("--comment");
        args.push("raftkv-delay");
        run(Command::new("ip").args(&args))?;
        self.routed = on;
        Ok(())
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_queue() -> std::io::Result<nfq::Queue> {
    let mut queue = nfq::Queue::open()?;
    queue.bind(QUEUE)?;
    queue.set_fail_open(QUEUE, true)?;
    queue.set_queue_max_len(QUEUE, QUEUE_MAX_LEN)?;
    // The verdict needs only the packet's id: copy no payload.
    queue.set_copy_range(QUEUE, 0)?;
    queue.set_nonblocking(true);
    Ok(queue)
}

/// Until `stop`: takes every queued packet, releases each when due; on stop releases all.
fn delay_loop(mut queue: nfq::Queue, delay_us: &AtomicU64, jitter_us: &AtomicU64, stop: &AtomicBool, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut held = BinaryHeap::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut busy = false;
        while let Ok(mut msg) = queue.recv() {
            busy = true;
            msg.set_verdict(nfq::Verdict::Accept);
            let (delay, jitter) = (delay_us.load(Ordering::Relaxed), jitter_us.load(Ordering::Relaxed));
            let spread = rng.below(2 * jitter + 1);
            let us = (delay + spread).saturating_sub(jitter);
            seq += 1;
            held.push(Held { at: Instant::now() + Duration::from_micros(us), seq, msg });
        }
        let now = Instant::now();
        while held.peek().is_some_and(|h: &Held| h.at <= now) {
            if let Some(h) = held.pop() {
                let _ = queue.verdict(h.msg);
                busy = true;
            }
        }
        if !busy {
            std::thread::sleep(DELAYER_IDLE);
        }
    }
    for h in held.into_vec() {
        let _ = queue.verdict(h.msg);
    }
}
