//! The process harness: one `raftkv` node process on 127.0.0.1, started, watched and stopped
//! by its PID. Shared by the cluster tests (`tests/`) and `cargo xtask cluster`/`bench`.
//!
//! - [`NodeProc::builder`] says how to start a node (program, id, data directory, addresses,
//!   `--raft_bootstrap`, extra arguments and environment); [`NodeProcBuilder::start`] starts it
//!   and waits until it has bound its ports, [`NodeProcBuilder::spawn`] only starts it.
//! - Ports may come from the OS (address `127.0.0.1:0`, the default): the node writes the
//!   ports it bound to `<data_dir>/<id>/listen.json` with its PID, and the harness reads them
//!   from there ([`NodeProc::wait_listening`]). A restart reuses them, as a real restart keeps
//!   its addresses.
//! - Every wait is on a condition with a deadline, polling every 20 ms; an optional abort flag
//!   ([`NodeProcBuilder::abort_on`], xtask's Ctrl-C) ends it early.
//! - Stopping is by PID: SIGTERM with a grace period then SIGKILL ([`NodeProc::stop`], [`NodeProc::stop_by`]), SIGKILL
//!   ([`NodeProc::kill`]), SIGSTOP/SIGCONT ([`NodeProc::pause`], [`NodeProc::resume`]), and
//!   always SIGKILL on drop, so no node outlives its owner.
//! - The node's stdout and stderr are appended to one log file (default `<data_dir>/<id>.log`).
//!
//! This crate is synchronous and depends on no crate of ours, nor on tokio or tonic: xtask,
//! which builds the workspace, depends on it (`cargo xtask deps` checks both).

pub mod certs;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often the waits check their condition.
const POLL: Duration = Duration::from_millis(20);
/// How long a node may take to bind its ports and write `listen.json`, by default.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to exit after SIGTERM before it gets SIGKILL, by default.
pub const STOP_GRACE: Duration = Duration::from_secs(15);
/// Lines of the log quoted in errors and by [`NodeProc::log_tail`].
const TAIL_LINES: usize = 30;

/// What went wrong starting or watching a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log file could not be opened.
    #[error("cannot open the log {path} of node {id}: {source}")]
    Log {
        /// The node id.
        id: String,
        /// The log file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The process could not be started.
    #[error("cannot start node {id} (`{command}`): {source}")]
    Spawn {
        /// The node id.
        id: String,
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The process exited before it wrote its `listen.json`.
    #[error("node {id} exited with {status} before listening; log:\n{log_tail}")]
    ExitedEarly {
        /// The node id.
        id: String,
        /// How it exited.
        status: ExitStatus,
        /// The last lines of its log.
        log_tail: String,
    },
    /// The process did not write its `listen.json` in time.
    #[error("node {id} did not start within {}s (no {listen_file} from pid {pid}); log:\n{log_tail}", timeout.as_secs())]
    ListenTimeout {
        /// The node id.
        id: String,
        /// Its process id.
        pid: u32,
        /// The file waited for.
        listen_file: PathBuf,
        /// How long it was waited for.
        timeout: Duration,
        /// The last lines of its log.
        log_tail: String,
    },
    /// The abort flag was raised during a wait.
    #[error("interrupted while waiting for node {id}")]
    Interrupted {
        /// The node id.
        id: String,
    },
    /// The node is not running (for a call that needs it).
    #[error("node {id} is not running")]
    NotRunning {
        /// The node id.
        id: String,
    },
    /// Waiting for or signalling the process failed.
    #[error("process of node {id}: {source}")]
    Process {
        /// The node id.
        id: String,
        /// Why.
        source: std::io::Error,
    },
}

/// How to start a node; made by [`NodeProc::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `start` or `spawn`"]
pub struct NodeProcBuilder {
    program: PathBuf,
    wrapper: Vec<OsString>,
    id: String,
    data_dir: PathBuf,
    grpc_addr: String,
    raft_addr: String,
    bootstrap: bool,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    log: Option<PathBuf>,
    rust_log: Option<String>,
    listen_timeout: Duration,
    stop_grace: Duration,
    abort: Option<Arc<AtomicBool>>,
}

impl NodeProcBuilder {
    /// The client (gRPC) and Raft addresses to bind; default `127.0.0.1:0` for both (ports
    /// from the OS).
    pub fn addrs(mut self, grpc_addr: impl Into<String>, raft_addr: impl Into<String>) -> Self {
        self.grpc_addr = grpc_addr.into();
        self.raft_addr = raft_addr.into();
        self
    }

    /// Whether the node bootstraps a new cluster (`--raft_bootstrap`) on this start; default
    /// no. A restart says it again ([`NodeProc::restart`]).
    pub fn bootstrap(mut self, bootstrap: bool) -> Self {
        self.bootstrap = bootstrap;
        self
    }

    /// Extra arguments, after the id, addresses and data directory; kept across restarts.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// One extra environment variable; kept across restarts.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Extra environment variables; kept across restarts.
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.env.extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// The file the node's output is appended to; default `<data_dir>/<id>.log`.
    pub fn log(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// The node's `RUST_LOG` (its log filter), kept across restarts and by
    /// [`NodeProc::set_env`]; default: inherited.
    pub fn rust_log(mut self, filter: impl Into<String>) -> Self {
        self.rust_log = Some(filter.into());
        self
    }

    /// The `raftkv` binary to run (instead of the one given to [`NodeProc::builder`]).
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    /// A command line to run the program under, e.g. `nsenter --net=/run/netns/NAME` to
    /// start the node in a network namespace: it is run with the program and the node's
    /// arguments after it, and must replace itself with the program (`exec`), so that its
    /// PID is the node's (stop, kill, pause and `listen.json` all go by PID).
    pub fn wrapper<I, S>(mut self, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.wrapper = command.into_iter().map(Into::into).collect();
        self
    }

    /// How long [`NodeProcBuilder::start`] and restarts wait for `listen.json`; default
    /// [`LISTEN_TIMEOUT`].
    pub fn listen_timeout(mut self, timeout: Duration) -> Self {
        self.listen_timeout = timeout;
        self
    }

    /// How long [`NodeProc::stop`] waits after SIGTERM before SIGKILL; default [`STOP_GRACE`].
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// A flag that ends every wait of this node early with [`Error::Interrupted`] once set
    /// (xtask's Ctrl-C handler sets it).
    pub fn abort_on(mut self, flag: Arc<AtomicBool>) -> Self {
        self.abort = Some(flag);
        self
    }

    /// Starts the node without waiting for it to listen (see [`NodeProc::wait_listening`]).
    /// Several nodes started this way come up in parallel.
    pub fn spawn(self) -> Result<NodeProc, Error> {
        let log = self.log.clone().unwrap_or_else(|| self.data_dir.join(format!("{}.log", self.id)));
        let mut node = NodeProc {
            id: self.id.clone(),
            data_dir: self.data_dir.clone(),
            grpc_addr: self.grpc_addr.clone(),
            raft_addr: self.raft_addr.clone(),
            gossip_addr: None,
            metrics_addr: None,
            spec: self,
            child: None,
            terminated: false,
            log,
            command_line: String::new(),
        };
        node.spawn()?;
        Ok(node)
    }

    /// Starts the node and waits until it has bound its ports.
    pub fn start(self) -> Result<NodeProc, Error> {
        let mut node = self.spawn()?;
        node.wait_listening()?;
        Ok(node)
    }
}

/// How a node ended when [`NodeProc::stop`] stopped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It was not running (never started, or already stopped, killed or reaped).
    NotRunning,
    /// It exited within the grace period, with this status.
    Exited(ExitStatus),
    /// It was still running after the grace period and got SIGKILL.
    Killed,
}

impl Stopped {
    /// Whether the node is down without trouble: it exited with status 0, or was not running.
    #[must_use]
    pub fn is_clean(self) -> bool {
        match self {
            Stopped::NotRunning => true,
            Stopped::Exited(status) => status.success(),
            Stopped::Killed => false,
        }
    }
}

/// One `raftkv` process and what is needed to restart it. SIGKILLed on drop.
#[derive(Debug)]
pub struct NodeProc {
    /// The node id (`--raft_id`).
    pub id: String,
    /// The base data directory (`--raft_data_dir`); the node keeps its files in `<id>/` below.
    pub data_dir: PathBuf,
    /// The client address: as given before the node listens, then as bound.
    pub grpc_addr: String,
    /// The Raft address: as given before the node listens, then as bound.
    pub raft_addr: String,
    /// The gossip (UDP) address from `listen.json`, when the node runs gossip.
    pub gossip_addr: Option<String>,
    /// The metrics port (HTTP) from `listen.json`, when the node has `--metrics-addr`.
    pub metrics_addr: Option<String>,
    spec: NodeProcBuilder,
    child: Option<Child>,
    /// SIGTERM was sent to the current process.
    terminated: bool,
    log: PathBuf,
    command_line: String,
}

impl NodeProc {
    /// How to start node `id` from the `raftkv` binary `program`, keeping its data in
    /// `data_dir`; ports from the OS unless [`NodeProcBuilder::addrs`] says otherwise.
    pub fn builder(
        program: impl Into<PathBuf>,
        id: impl Into<String>,
        data_dir: impl Into<PathBuf>,
    ) -> NodeProcBuilder {
        NodeProcBuilder {
            program: program.into(),
            wrapper: Vec::new(),
            id: id.into(),
            data_dir: data_dir.into(),
            grpc_addr: "127.0.0.1:0".into(),
            raft_addr: "127.0.0.1:0".into(),
            bootstrap: false,
            args: Vec::new(),
            env: Vec::new(),
            log: None,
            rust_log: None,
            listen_timeout: LISTEN_TIMEOUT,
            stop_grace: STOP_GRACE,
            abort: None,
        }
    }

    /// `<data_dir>/<id>/listen.json`, where the node writes the addresses it bound.
    #[must_use]
    pub fn listen_file(&self) -> PathBuf {
        self.data_dir.join(&self.id).join("listen.json")
    }

    fn spawn(&mut self) -> Result<(), Error> {
        let _ = std::fs::remove_file(self.listen_file());
        let log_err = |source| Error::Log { id: self.id.clone(), path: self.log.clone(), source };
        if let Some(dir) = self.log.parent() {
            std::fs::create_dir_all(dir).map_err(log_err)?;
        }
        let log = File::options().create(true).append(true).open(&self.log).map_err(log_err)?;
        let log_out = log.try_clone().map_err(log_err)?;
        let mut cmd = match self.spec.wrapper.split_first() {
            Some((first, rest)) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg(&self.spec.program);
                cmd
            }
            None => Command::new(&self.spec.program),
        };
        cmd.arg("--raft_id")
            .arg(&self.id)
            .arg("--grpc_addr")
            .arg(&self.grpc_addr)
            .arg("--raft_addr")
            .arg(&self.raft_addr)
            .arg("--raft_data_dir")
            .arg(&self.data_dir)
            .args(&self.spec.args)
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_out)
            .stderr(log);
        if let Some(filter) = &self.spec.rust_log {
            cmd.env("RUST_LOG", filter);
        }
        if self.spec.bootstrap {
            cmd.arg("--raft_bootstrap");
        }
        self.command_line = command_line(&cmd);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            id: self.id.clone(),
            command: self.command_line.clone(),
            source,
        })?;
        self.child = Some(child);
        self.terminated = false;
        Ok(())
    }

    /// Waits until this very process (by PID) has written its `listen.json`, and records the
    /// addresses it bound. Fails if it exits first, if the listen timeout passes, or on abort.
    pub fn wait_listening(&mut self) -> Result<(), Error> {
        let pid = self.pid().ok_or_else(|| Error::NotRunning { id: self.id.clone() })?;
        let deadline = Instant::now() + self.spec.listen_timeout;
        loop {
            if let Some(v) = self.read_listen_file(pid) {
                self.grpc_addr = v["grpc_addr"].as_str().unwrap_or_default().to_string();
                self.raft_addr = v["raft_addr"].as_str().unwrap_or_default().to_string();
                self.gossip_addr = v["gossip_addr"].as_str().map(str::to_string);
                self.metrics_addr = v["metrics_addr"].as_str().map(str::to_string);
                return Ok(());
            }
            if let Some(status) = self.try_wait().map_err(|source| Error::Process { id: self.id.clone(), source })? {
                return Err(Error::ExitedEarly { id: self.id.clone(), status, log_tail: self.log_tail() });
            }
            if Instant::now() > deadline {
                return Err(Error::ListenTimeout {
                    id: self.id.clone(),
                    pid,
                    listen_file: self.listen_file(),
                    timeout: self.spec.listen_timeout,
                    log_tail: self.log_tail(),
                });
            }
            self.pause_or_abort()?;
        }
    }

    /// `listen.json` when it is complete and written by process `pid`.
    fn read_listen_file(&self, pid: u32) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.listen_file()).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        (v["pid"].as_u64() == Some(u64::from(pid))).then_some(v)
    }

    /// One poll interval, or [`Error::Interrupted`] if the abort flag is set.
    fn pause_or_abort(&self) -> Result<(), Error> {
        if self.spec.abort.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
            return Err(Error::Interrupted { id: self.id.clone() });
        }
        std::thread::sleep(POLL);
        Ok(())
    }

    /// The process id, while running (until it is stopped, killed or reaped).
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The command line of the last start, for logs.
    #[must_use]
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// Whether the process has exited, reaping it if so (then [`NodeProc::pid`] is `None`).
    /// `Ok(None)` while it runs or when it is not running at all.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else { return Ok(None) };
        let status = child.try_wait()?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
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
        self.signal("-STOP");
    }

    /// SIGCONT by PID.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGTERM by PID, without waiting: the node shuts down gracefully. Several nodes asked
    /// at once stop in parallel; then [`NodeProc::stop`] each.
    pub fn terminate(&mut self) {
        if self.pid().is_some() {
            self.signal("-TERM");
            self.terminated = true;
        }
    }

    /// Sends `signal` (a `kill` option) to the process while it is ours (not reaped, so its
    /// PID cannot have been reused).
    fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg(signal).arg(pid.to_string()).stderr(Stdio::null()).status();
        }
    }

    /// SIGTERM by PID, then waits up to the stop grace ([`NodeProcBuilder::stop_grace`]) for
    /// the process to exit, then SIGKILL. Returns whether the node is down cleanly
    /// ([`Stopped::is_clean`]: it exited successfully on its own, or was not running).
    pub fn stop(&mut self) -> bool {
        self.stop_by(Instant::now() + self.spec.stop_grace).is_clean()
    }

    /// SIGTERM by PID (unless [`NodeProc::terminate`] sent it already: a second one could
    /// cut the shutdown short), then waits until `deadline` (one for several nodes) for the
    /// process to exit, then SIGKILL.
    pub fn stop_by(&mut self, deadline: Instant) -> Stopped {
        if self.child.is_none() {
            return Stopped::NotRunning;
        }
        if !self.terminated {
            self.terminate();
        }
        match self.wait_exit_by(deadline) {
            Some(status) => Stopped::Exited(status),
            None => {
                self.kill();
                Stopped::Killed
            }
        }
    }

    /// Waits up to `timeout` for the process to exit on its own (it was asked to stop by
    /// other means than a signal from here), and reaps it. Returns whether it exited
    /// successfully; `None` if it is still running (it keeps running) or was not running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<bool> {
        self.wait_exit_by(Instant::now() + timeout).map(|status| status.success())
    }

    fn wait_exit_by(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            self.child.as_ref()?;
            match self.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                _ => return None,
            }
        }
    }

    /// Replaces the extra environment variables, for the next start.
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.spec.env = env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
    }

    /// Starts the node again on the same addresses and directory (with `--raft_bootstrap` if
    /// `bootstrap`), and waits until it listens.
    ///
    /// # Panics
    /// If the node is running.
    pub fn restart(&mut self, bootstrap: bool) -> Result<(), Error> {
        assert!(self.child.is_none(), "restart of a running node");
        self.spec.bootstrap = bootstrap;
        self.spawn()?;
        self.wait_listening()
    }

    /// Starts the node again on the same directory but on new OS-chosen client and Raft
    /// ports (as a node moved to another port would), with `args` as its extra arguments.
    ///
    /// # Panics
    /// If the node is running.
    pub fn restart_on_new_ports(&mut self, args: &[String]) -> Result<(), Error> {
        self.grpc_addr = "127.0.0.1:0".into();
        self.raft_addr = "127.0.0.1:0".into();
        self.spec.args = args.iter().map(Into::into).collect();
        self.restart(false)
    }

    /// The last 30 lines of the node's log.
    #[must_use]
    pub fn log_tail(&self) -> String {
        self.log_tail_lines(TAIL_LINES)
    }

    /// The last `n` lines of the node's log, or why it could not be read.
    #[must_use]
    pub fn log_tail_lines(&self, n: usize) -> String {
        match std::fs::read(&self.log) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(n)..].join("\n")
            }
            Err(err) => format!("(cannot read {}: {err})", self.log.display()),
        }
    }

    /// The file the node's output goes to (appended to across restarts).
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The node's whole log (empty if it cannot be read).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        // A paused process dies from SIGKILL too; resume first anyway so nothing lingers.
        self.resume();
        self.kill();
    }
}

/// A command line as one would type it, for logs and error messages.
#[must_use]
pub fn command_line(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Waits for `child` to exit until `deadline`; `Ok(None)` if it is still running then.
pub fn wait_with_deadline(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}
