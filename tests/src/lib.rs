//! The cluster test harness: real `raftkv` processes on 127.0.0.1.
//!
//! - Ports come from the OS: a node first starts with port 0 and writes the ports it bound
//!   to `listen.json`; a restart reuses them, as a real restart keeps its addresses.
//! - Every process started is stopped by its PID: gracefully with SIGTERM
//!   ([`NodeProc::stop`]), abruptly with SIGKILL ([`NodeProc::kill`]), and always on drop.
//! - Waits are on conditions (a node's status, a file appearing) with a deadline, never a
//!   fixed sleep standing in for a condition.
//! - The binaries are found in `RAFTKV_BIN_DIR` (set by `cargo xtask test`) or next to the
//!   test executable (`target/<profile>/`); `cargo xtask test` builds them first.

#![allow(clippy::print_stderr, clippy::missing_panics_doc)]

pub mod chaos;
pub mod checker;
pub mod proxy;
pub mod record;
pub mod watch_check;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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

/// One `raftkv` process and what is needed to restart it.
pub struct NodeProc {
    /// The node id.
    pub id: String,
    /// The base data directory.
    pub data_dir: PathBuf,
    /// The client address, once known.
    pub grpc_addr: String,
    /// The Raft address, once known.
    pub raft_addr: String,
    /// The gossip (UDP) address from `listen.json`, when the node runs gossip.
    pub gossip_addr: Option<String>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    bin_dir: Option<PathBuf>,
    child: Option<Child>,
    log: PathBuf,
}

impl NodeProc {
    /// Starts a node on OS-chosen ports and waits until it has bound them.
    pub fn start(id: &str, data_dir: &Path, bootstrap: bool, extra: &[&str]) -> Result<Self, BoxError> {
        let mut node = NodeProc {
            id: id.to_string(),
            data_dir: data_dir.to_path_buf(),
            grpc_addr: "127.0.0.1:0".into(),
            raft_addr: "127.0.0.1:0".into(),
            gossip_addr: None,
            extra: extra.iter().map(|s| (*s).to_string()).collect(),
            env: Vec::new(),
            bin_dir: None,
            child: None,
            log: data_dir.join(format!("{id}.log")),
        };
        node.spawn(bootstrap)?;
        Ok(node)
    }

    fn listen_file(&self) -> PathBuf {
        self.data_dir.join(&self.id).join("listen.json")
    }

    fn spawn(&mut self, bootstrap: bool) -> Result<(), BoxError> {
        let _ = std::fs::remove_file(self.listen_file());
        let log = File::options().create(true).append(true).open(&self.log)?;
        let program = match &self.bin_dir {
            Some(dir) => dir.join("raftkv"),
            None => binary("raftkv"),
        };
        let mut cmd = Command::new(program);
        cmd.arg("--raft_id")
            .arg(&self.id)
            .arg("--grpc_addr")
            .arg(&self.grpc_addr)
            .arg("--raft_addr")
            .arg(&self.raft_addr)
            .arg("--raft_data_dir")
            .arg(&self.data_dir)
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if bootstrap {
            cmd.arg("--raft_bootstrap");
        }
        let child = cmd.spawn()?;
        let pid = child.id();
        self.child = Some(child);
        // Wait for listen.json of this very process.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(self.listen_file())
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && v["pid"].as_u64() == Some(u64::from(pid))
            {
                self.grpc_addr = v["grpc_addr"].as_str().unwrap_or_default().to_string();
                self.raft_addr = v["raft_addr"].as_str().unwrap_or_default().to_string();
                self.gossip_addr = v["gossip_addr"].as_str().map(str::to_string);
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!(
                    "node {} exited with {status} before listening; log:\n{}",
                    self.id,
                    self.log_tail()
                )
                .into());
            }
            if Instant::now() > deadline {
                return Err(format!("node {} did not start within 30s; log:\n{}", self.id, self.log_tail()).into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id, while running.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP by PID: the process stops answering (as if cut off) until [`NodeProc::resume`].
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg("-STOP").arg(pid.to_string()).status();
        }
    }

    /// SIGCONT by PID.
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg("-CONT").arg(pid.to_string()).status();
        }
    }

    /// SIGTERM by PID, wait up to 15 s for a clean exit (then SIGKILL). Returns whether the
    /// node exited successfully on its own.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return true };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }

    /// Waits up to `timeout` for the process to exit on its own (it was asked to stop by
    /// other means than a signal from here), and reaps it. Returns whether it exited
    /// successfully; `None` if it is still running (it keeps running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Some(status.success());
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => return None,
            }
        }
    }

    /// Replaces the extra environment variables, for the next start.
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.env = env;
    }

    /// Starts the node again on the same ports and directory.
    pub fn restart(&mut self, bootstrap: bool) -> Result<(), BoxError> {
        assert!(self.child.is_none(), "restart of a running node");
        self.spawn(bootstrap)
    }

    /// Starts the node again on the same directory but on new OS-chosen client and Raft
    /// ports (as a node moved to another port would), with `extra` as its extra arguments.
    pub fn restart_on_new_ports(&mut self, extra: &[String]) -> Result<(), BoxError> {
        assert!(self.child.is_none(), "restart of a running node");
        self.grpc_addr = "127.0.0.1:0".into();
        self.raft_addr = "127.0.0.1:0".into();
        self.extra = extra.to_vec();
        self.spawn(false)
    }

    /// The last lines of the node's log.
    #[must_use]
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The file the node's output goes to (appended to across restarts).
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The node's whole log.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client talking to this node only.
    pub fn client(&self) -> Result<Client, BoxError> {
        Ok(Client::new([self.grpc_addr.clone()], test_options())?)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        // A paused process dies from SIGKILL too; resume first anyway so nothing lingers.
        self.resume();
        self.kill();
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
        let dir = tempfile::tempdir()?;
        let mut nodes = vec![NodeProc::start("n1", dir.path(), true, extra)?];
        let first = nodes[0].client()?;
        wait_for("n1 to lead", Duration::from_secs(30), || async {
            first.status().await.is_ok_and(|s| s.state == RaftState::Leader as i32)
        })
        .await?;
        for i in 2..=n {
            let node = NodeProc::start(&format!("n{i}"), dir.path(), false, extra)?;
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
        let mut seen = Vec::new();
        let mut committed = 0;
        let mut applied = Vec::new();
        for node in nodes {
            let Ok(c) = node.client() else { return false };
            let Ok(s) = c.status().await else { return false };
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
    })
    .await
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

impl NodeProc {
    /// Starts a node on OS-chosen ports with extra arguments given as owned strings.
    pub fn start_with(id: &str, data_dir: &Path, bootstrap: bool, extra: &[String]) -> Result<Self, BoxError> {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        Self::start(id, data_dir, bootstrap, &extra)
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bound, then released), for a node whose
/// address must be known before it starts.
pub fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl NodeProc {
    /// Starts a node on the given addresses (rather than OS-chosen ports).
    pub fn start_on(
        id: &str,
        data_dir: &Path,
        grpc_addr: &str,
        raft_addr: &str,
        bootstrap: bool,
        extra: &[String],
    ) -> Result<Self, BoxError> {
        Self::start_full(id, data_dir, grpc_addr, raft_addr, bootstrap, extra, &[], None)
    }

    /// Starts a node on the given addresses (port 0: from the OS) with extra arguments, extra
    /// environment variables, and the `raftkv` binary of `bin_dir` (default [`bin_dir`]).
    /// Restarts keep all of them.
    #[allow(clippy::too_many_arguments)]
    pub fn start_full(
        id: &str,
        data_dir: &Path,
        grpc_addr: &str,
        raft_addr: &str,
        bootstrap: bool,
        extra: &[String],
        env: &[(String, String)],
        bin_dir: Option<&Path>,
    ) -> Result<Self, BoxError> {
        let mut node = NodeProc {
            id: id.to_string(),
            data_dir: data_dir.to_path_buf(),
            grpc_addr: grpc_addr.to_string(),
            raft_addr: raft_addr.to_string(),
            gossip_addr: None,
            extra: extra.to_vec(),
            env: env.to_vec(),
            bin_dir: bin_dir.map(Path::to_path_buf),
            child: None,
            log: data_dir.join(format!("{id}.log")),
        };
        node.spawn(bootstrap)?;
        Ok(node)
    }
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
