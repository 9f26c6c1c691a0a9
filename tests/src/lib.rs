//! The cluster test harness: real `raftkv` processes on 127.0.0.1, for the test binary
//! `tests/it/`.
//!
//! - A node process is a [`NodeProc`] of `proc-harness` (shared with `cargo xtask cluster`),
//!   started by [`node`]`(id, dir)…start()`: ports from the OS (read back from the node's
//!   `listen.json`; a restart reuses them), stopped by its PID (SIGTERM with
//!   [`NodeProc::stop`], SIGKILL with [`NodeProc::kill`], always on drop).
//! - [`Cluster`] starts and watches several; [`NodeClient`] gives a node's client.
//! - Waits are on conditions (a node's status, a file appearing) with a deadline, never a
//!   fixed sleep standing in for a condition.
//! - The binaries are found in `RAFTKV_BIN_DIR` (set by `cargo xtask test`) or next to the
//!   test executable (`target/<profile>/`); `cargo xtask test` builds them first.
//! - [`cdp`]: headless Chromium driven through the DevTools protocol (the status page test).

#![allow(clippy::print_stderr, clippy::missing_panics_doc)]

pub mod cdp;
pub mod chaos;
pub mod checker;
pub mod clock;
pub mod netns;
pub mod nscluster;
pub mod proxy;
pub mod record;
pub mod tmpfs;
pub mod watch_check;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use client::{Client, ClientOptions, RaftState, Suffrage};

/// A test result.
pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;
/// A boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The directory holding the `raftkv` and `raftkvctl` binaries.
#[must_use]
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RAFTKV_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/tests-<hash> → target/<profile>
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default()
}

/// The path of one of our binaries; panics with a clear message when it was not built.
#[must_use]
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: run the tests with `cargo xtask test` (it builds the binaries), or `cargo build --bins` first",
        path.display()
    );
    path
}

/// The directory of the testing build of `raftkv` (features `failpoints` and
/// `planted-bugs`): `RAFTKV_TESTING_BIN_DIR`, or `raftkv-testing/` in [`bin_dir`], where
/// `cargo xtask test` puts it. Panics with a clear message when it was not built.
#[must_use]
pub fn testing_bin_dir() -> PathBuf {
    let dir =
        std::env::var_os("RAFTKV_TESTING_BIN_DIR").map_or_else(|| bin_dir().join("raftkv-testing"), PathBuf::from);
    assert!(
        dir.join("raftkv").exists(),
        "{} not found: run the tests with `cargo xtask test`, which builds raftkv with features failpoints and planted-bugs there",
        dir.join("raftkv").display()
    );
    dir
}

/// Timing flags that make elections quick on loopback.
pub const FAST_TIMING: [&str; 4] = ["--heartbeat_interval", "50ms", "--election_timeout", "500ms"];

pub use proc_harness::{NodeProc, NodeProcBuilder};

/// The nodes' log filter: `RUST_LOG` of the test run, or `info,openraft=warn`.
#[must_use]
pub fn log_filter() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into())
}

/// How to start node `id` in the tests: the `raftkv` of [`bin_dir`], its data and log
/// (`<id>.log`) in `data_dir`, ports from the OS, [`log_filter`]. Then, say,
/// `.bootstrap(true).args(FAST_TIMING).start()?`.
pub fn node(id: &str, data_dir: &Path) -> NodeProcBuilder {
    NodeProc::builder(binary("raftkv"), id, data_dir).rust_log(log_filter())
}

/// A client of one node of the tests ([`NodeProc`] is the harness's, which knows no client).
pub trait NodeClient {
    /// A client talking to this node only.
    fn client(&self) -> Result<Client, BoxError>;
}

impl NodeClient for NodeProc {
    fn client(&self) -> Result<Client, BoxError> {
        Ok(Client::new([self.grpc_addr.clone()], test_options())?)
    }
}

/// Client options for tests: patient retries across elections.
#[must_use]
pub fn test_options() -> ClientOptions {
    ClientOptions { max_retries: 40, request_timeout: Duration::from_secs(10), ..ClientOptions::default() }
}

/// Waits until `cond` holds, checking every 20 ms, for at most `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F) -> TestResult
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A cluster of nodes in one temporary directory.
pub struct Cluster {
    /// The nodes, in start order.
    pub nodes: Vec<NodeProc>,
    /// The base data directory (removed on drop).
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes named `n1..`: the first bootstraps, the others are added as voters.
    /// Returns once all are voters and a leader is known on every node.
    pub async fn start(n: usize, extra: &[&str]) -> Result<Self, BoxError> {
        Self::start_logging(n, extra, &log_filter()).await
    }

    /// [`Cluster::start`] with the nodes' log filter `rust_log` (`RUST_LOG` syntax).
    pub async fn start_logging(n: usize, extra: &[&str], rust_log: &str) -> Result<Self, BoxError> {
        Self::start_in_logging(tempfile::tempdir()?, n, extra, rust_log).await
    }

    /// [`Cluster::start`] in `dir` (whose `n1..` subdirectories may be prepared first, for
    /// example as mount points of small filesystems).
    pub async fn start_in(dir: tempfile::TempDir, n: usize, extra: &[&str]) -> Result<Self, BoxError> {
        Self::start_in_logging(dir, n, extra, &log_filter()).await
    }

    /// [`Cluster::start_in`] with the nodes' log filter `rust_log`.
    async fn start_in_logging(
        dir: tempfile::TempDir,
        n: usize,
        extra: &[&str],
        rust_log: &str,
    ) -> Result<Self, BoxError> {
        let node = |id: &str| node(id, dir.path()).rust_log(rust_log);
        let mut nodes = vec![node("n1").bootstrap(true).args(extra).start()?];
        let first = nodes[0].client()?;
        wait_for("n1 to lead", Duration::from_secs(30), || async {
            first.status().await.is_ok_and(|s| s.state == RaftState::Leader as i32)
        })
        .await?;
        for i in 2..=n {
            let node = node(&format!("n{i}")).args(extra).start()?;
            first.add_voter(&node.id, &node.raft_addr, &node.grpc_addr, Duration::from_secs(60)).await?;
            nodes.push(node);
        }
        let cluster = Cluster { nodes, dir };
        cluster.wait_converged(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Every endpoint, comma separated.
    #[must_use]
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.grpc_addr.clone()).collect()
    }

    /// A client over every node.
    pub fn client(&self) -> Result<Client, BoxError> {
        Ok(Client::new(self.endpoints(), test_options())?)
    }

    /// The running node that its peers call leader, by index.
    pub async fn leader(&self) -> Option<usize> {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.pid().is_none() {
                continue;
            }
            if let Ok(s) = node.client().ok()?.status().await
                && s.state == RaftState::Leader as i32
            {
                return Some(i);
            }
        }
        None
    }

    /// Waits until every running node knows the same leader, sees every node as a voter,
    /// and has applied as far as the leader has committed.
    pub async fn wait_converged(&self, timeout: Duration) -> TestResult {
        let total = self.nodes.len();
        wait_for("the cluster to converge", timeout, || async {
            let mut leaders = Vec::new();
            let mut applied = Vec::new();
            let mut committed = 0;
            for node in self.nodes.iter().filter(|n| n.pid().is_some()) {
                let Ok(c) = node.client() else { return false };
                let Ok(s) = c.status().await else { return false };
                let voters = s.members.iter().filter(|m| m.suffrage == Suffrage::Voter as i32).count();
                if voters != total || s.leader_id.is_empty() {
                    return false;
                }
                if s.state == RaftState::Leader as i32 {
                    committed = s.committed_index;
                }
                leaders.push(s.leader_id);
                applied.push(s.applied_index);
            }
            committed > 0 && leaders.windows(2).all(|w| w[0] == w[1]) && applied.iter().all(|a| *a >= committed)
        })
        .await
    }

    /// Stops every running node gracefully; panics if one fails to exit cleanly.
    pub fn stop_all(&mut self) {
        for node in &mut self.nodes {
            if node.pid().is_some() {
                assert!(node.stop(), "node {} did not stop cleanly; log:\n{}", node.id, node.log_tail());
            }
        }
    }

    /// Opens node `i`'s state machine from its directory (the node must be stopped).
    pub fn state_machine(&self, i: usize) -> Result<fsm::StateMachine, BoxError> {
        let node = &self.nodes[i];
        assert!(node.pid().is_none(), "open the state machine of a stopped node only");
        Ok(fsm::StateMachine::open(&node.data_dir.join(&node.id).join("sm"))?)
    }
}

/// Runs `raftkvctl` with `args` against `endpoints`; returns its output.
pub fn raftkvctl(endpoints: &[String], args: &[&str]) -> Result<Output, BoxError> {
    Ok(Command::new(binary("raftkvctl"))
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .args(args)
        .stdin(Stdio::null())
        .output()?)
}

/// Runs `raftkvctl` with `args` against `endpoints`, feeding `input` on stdin.
pub fn raftkvctl_stdin(endpoints: &[String], args: &[&str], input: &[u8]) -> Result<Output, BoxError> {
    use std::io::Write;
    let mut child = Command::new(binary("raftkvctl"))
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input)?;
    }
    Ok(child.wait_with_output()?)
}

/// Whether a client error says the request certainly had no effect: the server marked it
/// retryable, or no endpoint could be reached (nothing was sent).
#[must_use]
pub fn is_retryable(e: &client::ClientError) -> bool {
    match e {
        client::ClientError::Unreachable { .. } => true,
        client::ClientError::Status(s) => {
            s.metadata().get("x-raftkv-retryable").and_then(|v| v.to_str().ok()) == Some("true")
        }
        _ => false,
    }
}

/// What a [`Load`] saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Writes acknowledged.
    pub acked: usize,
    /// Failed attempts the server marked retryable (retried).
    pub retryable_errors: usize,
    /// Failed attempts of unknown outcome or otherwise not retryable, as messages. With
    /// `retry_all` they were retried too (a put of the same value is idempotent).
    pub other_errors: Vec<String>,
    /// Writes abandoned after an error that was not retryable (only without `retry_all`).
    pub abandoned: usize,
}

/// A write load: `clients.len()` writers, each putting its own keys (`<prefix>-<w>-<n>`, value
/// `value-of-<key>`) one after the other until stopped, retrying a failed put of the same key
/// until it is acknowledged. Every acknowledged write is recorded.
pub struct Load {
    acked: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<LoadReport>>,
}

impl Load {
    /// Starts the writers. Without `retry_all`, a put that fails with an error not marked
    /// retryable is abandoned (and reported); with it, it is retried too.
    #[must_use]
    pub fn start(clients: Vec<Client>, prefix: &str, retry_all: bool) -> Self {
        let acked = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers = clients
            .into_iter()
            .enumerate()
            .map(|(w, client)| {
                let (acked, stop, prefix) = (acked.clone(), stop.clone(), prefix.to_string());
                tokio::spawn(async move {
                    let mut report = LoadReport::default();
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let key = format!("{prefix}-{w}-{n:06}");
                        let value = format!("value-of-{key}");
                        loop {
                            match client.put(key.clone(), value.clone()).await {
                                Ok(_) => {
                                    acked
                                        .lock()
                                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                                        .insert(key.clone(), value.clone());
                                    report.acked += 1;
                                    break;
                                }
                                Err(e) if is_retryable(&e) => report.retryable_errors += 1,
                                Err(e) => {
                                    report.other_errors.push(format!("{key}: {e}"));
                                    if !retry_all {
                                        report.abandoned += 1;
                                        break;
                                    }
                                }
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        n += 1;
                    }
                    report
                })
            })
            .collect();
        Load { acked, stop, writers }
    }

    /// How many writes are acknowledged so far.
    #[must_use]
    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// Waits until at least `n` more writes than now are acknowledged.
    pub async fn progress(&self, n: usize, timeout: Duration) -> TestResult {
        let target = self.acked() + n;
        wait_for(&format!("{target} acknowledged writes"), timeout, || std::future::ready(self.acked() >= target)).await
    }

    /// Stops the writers after the write each has in flight completes (a writer never gives up
    /// on a started write with `retry_all`); returns every acknowledged write and the report.
    pub async fn stop(self) -> Result<(std::collections::BTreeMap<String, String>, LoadReport), BoxError> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = LoadReport::default();
        for w in self.writers {
            let r = tokio::time::timeout(Duration::from_secs(120), w).await.map_err(|_| "a writer did not stop")??;
            total.acked += r.acked;
            total.retryable_errors += r.retryable_errors;
            total.other_errors.extend(r.other_errors);
            total.abandoned += r.abandoned;
        }
        let acked = self.acked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        Ok((acked, total))
    }
}

/// Reads every key of `expected` through `client` and checks its value.
pub async fn check_readable(client: &Client, expected: &std::collections::BTreeMap<String, String>) -> TestResult {
    for (key, value) in expected {
        let resp = client.get(key.clone()).await?;
        let got = resp.kv.filter(|_| resp.found).map(|kv| kv.value);
        if got.as_deref() != Some(value.as_bytes()) {
            return Err(format!("acknowledged key {key} lost or wrong: {got:?}").into());
        }
    }
    Ok(())
}

impl Cluster {
    /// Indexes into `nodes` of the running nodes.
    #[must_use]
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].pid().is_some()).collect()
    }

    /// Waits until every running node knows the same leader and the same membership (by
    /// index), and has applied as far as the leader has committed. Unlike
    /// [`Cluster::wait_converged`], it does not expect every node to be a voter.
    pub async fn wait_settled(&self, timeout: Duration) -> TestResult {
        let running: Vec<&NodeProc> = self.running().into_iter().map(|i| &self.nodes[i]).collect();
        wait_nodes_settled(&running, timeout).await
    }
}

/// Waits until every node of `nodes` knows the same leader and the same membership (by
/// index), and has applied as far as the leader has committed.
pub async fn wait_nodes_settled(nodes: &[&NodeProc], timeout: Duration) -> TestResult {
    wait_for("the cluster to settle", timeout, || async {
        let mut statuses = Vec::new();
        for node in nodes {
            let Ok(c) = node.client() else { return false };
            let Ok(s) = c.status().await else { return false };
            statuses.push(s);
        }
        settled(statuses)
    })
    .await
}

/// [`wait_nodes_settled`], asking each node through its own client of `clients` (one
/// node each, reused between checks): for clients that need TLS or credentials.
pub async fn wait_clients_settled(clients: &[Client], timeout: Duration) -> TestResult {
    wait_for("the cluster to settle", timeout, || async {
        let mut statuses = Vec::new();
        for c in clients {
            let Ok(s) = c.status().await else { return false };
            statuses.push(s);
        }
        settled(statuses)
    })
    .await
}

/// Whether every node's status names the same leader and membership (by index), and every
/// node has applied as far as the leader has committed.
fn settled(statuses: Vec<proto::admin::v1::StatusResponse>) -> bool {
    let mut seen = Vec::new();
    let mut committed = 0;
    let mut applied = Vec::new();
    for s in statuses {
        if s.leader_id.is_empty() {
            return false;
        }
        if s.state == RaftState::Leader as i32 {
            committed = s.committed_index;
        }
        seen.push((s.leader_id, s.membership_index));
        applied.push(s.applied_index);
    }
    committed > 0 && seen.windows(2).all(|w| w[0] == w[1]) && applied.iter().all(|a| *a >= committed)
}

/// Runs `raftkv` with `args` (plus a fresh data directory and port-0 addresses), expecting it
/// to refuse to start; returns its stderr. Fails if it is still running after 20 s or exits 0.
pub fn refused_start(args: &[&str]) -> Result<String, BoxError> {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(binary("raftkv"))
        .args(["--grpc_addr", "127.0.0.1:0", "--raft_addr", "127.0.0.1:0", "--raft_data_dir"])
        .arg(dir.path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("raftkv {args:?} did not exit within 20s").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut stderr)?;
    }
    if status.success() {
        return Err(format!("raftkv {args:?} started; stderr: {stderr}").into());
    }
    Ok(stderr)
}

/// A port on 127.0.0.1 that was free a moment ago (bound, then released), for a node whose
/// address must be known before it starts.
pub fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs `raftkv` with `args` (an offline subcommand) to completion; returns its output.
pub fn raftkv(args: &[&std::ffi::OsStr]) -> Result<Output, BoxError> {
    Ok(Command::new(binary("raftkv")).args(args).stdin(Stdio::null()).output()?)
}

/// A client of one node that does not retry: what it sees is what the node answered. Its
/// deadline is generous: megabyte-sized writes on a loaded 2-core machine with a debug
/// build can take seconds, and this client is for checking answers, not timing them.
pub fn one_shot(endpoint: &str) -> Result<Client, client::ClientError> {
    Client::new(
        [endpoint.to_string()],
        ClientOptions {
            max_retries: 0,
            auto_request_ids: false,
            request_timeout: Duration::from_secs(60),
            ..test_options()
        },
    )
}

/// The gRPC code of a failed call; `None` when it succeeded or failed without a status.
pub fn code(r: &Result<impl std::fmt::Debug, client::ClientError>) -> Option<tonic::Code> {
    r.as_ref().err().and_then(|e| e.status()).map(tonic::Status::code)
}

/// The error text of a failed call; empty when it succeeded.
pub fn message(r: &Result<impl std::fmt::Debug, client::ClientError>) -> String {
    r.as_ref().err().map(ToString::to_string).unwrap_or_default()
}

/// A process's resident memory (kB) and CPU time so far (clock ticks), from /proc.
pub fn proc_usage(pid: u32) -> Result<(u64, u64), BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or("no VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("bad stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; here 12 and 13 (0-based after the name).
    let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).ok_or("no utime")?;
    let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).ok_or("no stime")?;
    Ok((rss, utime + stime))
}

/// A lazily connected gRPC channel to `addr` (`HOST:PORT`), with a 2 s connect timeout.
pub fn channel(addr: &str) -> Result<tonic::transport::Channel, BoxError> {
    Ok(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy())
}

/// The `watch` part of a node's `Example/Stat` JSON (watchers, notifications, history).
pub async fn watch_stats(node: &NodeProc) -> Result<serde_json::Value, BoxError> {
    let mut example = proto::compat::example::example_client::ExampleClient::new(channel(&node.grpc_addr)?);
    let text = example.stat(tonic::Request::new(proto::compat::example::StatRequest {})).await?.into_inner().stats;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    Ok(v["watch"].clone())
}
