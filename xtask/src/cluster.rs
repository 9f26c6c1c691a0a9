//! `cargo xtask cluster [--smoke] [--tls] [--release] [--data-dir DIR] [--ports-from-os]`: a
//! local three-node cluster, driven through the built `raftkv` and `raftkvctl` binaries as a
//! user would drive them.
//!
//! 1. `cargo build --bin raftkv --bin raftkvctl` (`--release` if asked).
//! 2. Wipe and create the data directory (default `<workspace>/target/xtask-cluster`); a
//!    directory that is not empty is wiped only if an earlier run of this command made it.
//!    With `--tls`, write `cargo xtask certs`'s files into `<data-dir>/certs`
//!    (`proc_harness::certs::generate`: a CA, a certificate per node, `client.crt`,
//!    `gossip.key`).
//! 3. Start nodeA (`--raft_bootstrap`), nodeB and nodeC on 127.0.0.1, each logging to
//!    `<data-dir>/<id>.log`, and wait for each `<data-dir>/<id>/listen.json` (the real ports,
//!    which matters with `--ports-from-os`, implied by `--smoke`). With `--tls`: TLS on both
//!    ports with `--client-cert-auth`, and sealed gossip (`--gossip-key-file`, nodeB and
//!    nodeC seeded with nodeA's gossip address); every `raftkvctl` below runs with
//!    `--cacert --cert --key`, and step 4 also waits for every node's gossip to be sealed
//!    and to see the three nodes.
//! 4. Wait until nodeA says it is the leader, `member add` nodeB and nodeC through nodeA,
//!    wait until `member list` through every node shows three voters and one leader. With
//!    `--tls`, then turn authentication on: a `root` user with a fresh random password,
//!    written to `<data-dir>/root.password` (mode 600), and `auth enable`; every later
//!    `raftkvctl` runs as root (`RAFTKV_USER`, so the password is not on a command line).
//! 5. Write `xtask/<id> = hello-from-<id>` through each node and read every key back through
//!    every node.
//! 6. Print the endpoints and commands to try; without `--smoke`, run until Ctrl-C.
//!
//! The node processes are `proc-harness` [`NodeProc`]s, the harness the cluster tests use.
//! Stopping sends SIGTERM to every node by PID, waits up to 10 s, then SIGKILLs what is left.
//! Every node started is stopped whatever happens: on success, on error (after printing the
//! tail of each log), on Ctrl-C or SIGTERM to xtask (a handler sets a flag that every wait
//! loop checks), and on panic (the cluster's `Drop`). Nodes share xtask's process group, so
//! a Ctrl-C in the terminal reaches them too; they are waited for and killed by PID all the
//! same.

use std::fs;
use std::io::{ErrorKind, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use proc_harness::certs::CertFiles;
use proc_harness::{NodeProc, Stopped};
use serde_json::Value;

use crate::{cargo, display_cmd, run_checked, target_dir};

/// The nodes, in start order; the first one bootstraps the cluster.
const NODE_IDS: [&str; 3] = ["nodeA", "nodeB", "nodeC"];
/// The seed's ports (without `--ports-from-os`).
const SEED_GRPC_PORTS: [u16; 3] = [40051, 40052, 40053];
const SEED_RAFT_PORTS: [u16; 3] = [50051, 50052, 50053];
const HOST: &str = "127.0.0.1";

/// How long a node may take to bind its ports and write listen.json.
const LISTEN_DEADLINE: Duration = Duration::from_secs(30);
/// How long nodeA may take to become leader.
const LEADER_DEADLINE: Duration = Duration::from_secs(30);
/// How long adding one member (retries included) may take.
const MEMBER_ADD_DEADLINE: Duration = Duration::from_secs(60);
/// How long every node may take to show the final membership.
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(30);
/// How long a write, or a read returning the expected value, may take.
const DATA_DEADLINE: Duration = Duration::from_secs(15);
/// One `raftkvctl` run (`member add` waits for the learner to catch up).
const CTL_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two attempts of a condition wait.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long a node may take to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// After Ctrl-C, how long the nodes (which got SIGINT too) may take to exit on their own
/// before they are sent SIGTERM.
const SELF_EXIT_GRACE: Duration = Duration::from_secs(3);
/// Lines of each node's log printed on failure.
const LOG_TAIL_LINES: usize = 40;
/// Marks a data directory made by this command, so that a later run may wipe it.
const MARKER_FILE: &str = ".xtask-cluster";

pub(crate) struct Options {
    pub(crate) smoke: bool,
    pub(crate) release: bool,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) ports_from_os: bool,
    /// TLS on both ports with client certificates, and sealed gossip.
    pub(crate) tls: bool,
}

pub(crate) fn run(root: &Path, opts: &Options) -> Result<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = Arc::clone(&interrupted);
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    }

    let profile = if opts.release { "release" } else { "debug" };
    let mut build = cargo(root);
    build.args(["build", "--bin", "raftkv", "--bin", "raftkvctl"]);
    if opts.release {
        build.arg("--release");
    }
    let built = run_checked(&mut build);
    if interrupted.load(Ordering::SeqCst) {
        bail!("interrupted during the build");
    }
    built?;
    let bin_dir = target_dir(root).join(profile);
    let raftkv = bin_dir.join("raftkv");
    let mut ctl = Ctl {
        path: bin_dir.join("raftkvctl"),
        interrupted: Arc::clone(&interrupted),
        tls_args: Vec::new(),
        user: std::cell::OnceCell::new(),
    };
    for bin in [&raftkv, &ctl.path] {
        if !bin.is_file() {
            bail!("{} was not built", bin.display());
        }
    }

    let data_dir = absolute(&opts.data_dir.clone().unwrap_or_else(|| target_dir(root).join("xtask-cluster")))?;
    prepare_data_dir(&data_dir)?;
    let tls = if opts.tls { Some(make_certs(&data_dir)?) } else { None };
    if let Some(files) = &tls {
        ctl.tls_args = files.client_args();
    }

    let mut cluster = Cluster {
        raftkv,
        data_dir,
        nodes: Vec::new(),
        interrupted: Arc::clone(&interrupted),
        tls,
        extra_args: Vec::new(),
    };
    let outcome = bring_up(&mut cluster, &ctl, opts);
    match outcome {
        Ok(()) => {
            let waited = if opts.smoke {
                Ok(())
            } else {
                println!("\ncluster: running; press Ctrl-C to stop it");
                cluster.wait_for_interrupt()
            };
            println!("\ncluster: stopping the nodes");
            let problems = cluster.stop();
            waited?;
            if !problems.is_empty() {
                cluster.print_log_tails();
                bail!("the nodes did not stop cleanly:\n  {}", problems.join("\n  "));
            }
            println!("cluster: all nodes stopped cleanly");
            if opts.smoke {
                println!("cluster: smoke test passed");
            }
            Ok(())
        }
        Err(err) => {
            eprintln!("\ncluster: FAILED: {err:#}");
            if !interrupted.load(Ordering::SeqCst) {
                cluster.print_log_tails();
            }
            eprintln!("cluster: stopping the nodes");
            for problem in cluster.stop() {
                eprintln!("cluster: {problem}");
            }
            Err(err)
        }
    }
}

/// A cluster brought up for another command (`cargo xtask bench`) from binaries already
/// built in `bin_dir`, with ports from the OS. Its nodes are stopped when it is dropped.
pub(crate) struct Running {
    cluster: Cluster,
}

impl Running {
    /// The nodes' client addresses, comma-separated, in start order (nodeA, the leader,
    /// first).
    pub(crate) fn endpoints(&self) -> String {
        self.cluster.endpoints()
    }

    /// The nodes' process ids.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.cluster.nodes.iter().filter_map(|n| n.proc.pid()).collect()
    }

    /// Stops every node by PID; what did not stop cleanly.
    pub(crate) fn stop(mut self) -> Vec<String> {
        self.cluster.stop()
    }

    /// The nodes' ids and processes, in start order, for a command that injects faults
    /// (`cargo xtask soak`: kill, restart, pause by PID).
    pub(crate) fn nodes_mut(&mut self) -> impl Iterator<Item = (&'static str, &mut NodeProc)> {
        self.cluster.nodes.iter_mut().map(|n| (n.id, &mut n.proc))
    }
}

/// Steps 2 to 5 of the module docs for another command; see [`Running`].
pub(crate) fn start(bin_dir: &Path, data_dir: &Path, interrupted: &Arc<AtomicBool>) -> Result<Running> {
    start_with_args(bin_dir, data_dir, interrupted, &[])
}

/// [`start`], with `extra_args` for every node (e.g. `--snapshot_threshold=N`).
pub(crate) fn start_with_args(
    bin_dir: &Path,
    data_dir: &Path,
    interrupted: &Arc<AtomicBool>,
    extra_args: &[String],
) -> Result<Running> {
    let data_dir = absolute(data_dir)?;
    prepare_data_dir(&data_dir)?;
    let ctl = Ctl {
        path: bin_dir.join("raftkvctl"),
        interrupted: Arc::clone(interrupted),
        tls_args: Vec::new(),
        user: std::cell::OnceCell::new(),
    };
    let mut cluster = Cluster {
        raftkv: bin_dir.join("raftkv"),
        data_dir,
        nodes: Vec::new(),
        interrupted: Arc::clone(interrupted),
        tls: None,
        extra_args: extra_args.to_vec(),
    };
    let opts = Options { smoke: true, release: true, data_dir: None, ports_from_os: true, tls: false };
    if let Err(err) = bring_up(&mut cluster, &ctl, &opts) {
        cluster.print_log_tails();
        for problem in cluster.stop() {
            eprintln!("cluster: {problem}");
        }
        return Err(err);
    }
    Ok(Running { cluster })
}

/// Steps 3 to 6 of the module docs; the caller stops the nodes whatever this returns.
fn bring_up(cluster: &mut Cluster, ctl: &Ctl, opts: &Options) -> Result<()> {
    if !opts.ports_from_os {
        check_ports_free()?;
    }
    let started = Instant::now();
    let mut gossip_seed = None;
    for (i, id) in NODE_IDS.iter().enumerate() {
        let (grpc_port, raft_port) = if opts.ports_from_os { (0, 0) } else { (SEED_GRPC_PORTS[i], SEED_RAFT_PORTS[i]) };
        cluster.spawn(id, raft_port, grpc_port, i == 0, gossip_seed.as_deref())?;
        if i == 0 && cluster.tls.is_some() {
            // The others gossip to nodeA first: its gossip port comes from its listen.json.
            cluster.wait_for_listen(0)?;
            gossip_seed = cluster.nodes[0].proc.gossip_addr.clone();
        }
    }
    for i in 0..cluster.nodes.len() {
        cluster.wait_for_listen(i)?;
        let node = &cluster.nodes[i].proc;
        let pid = node.pid().unwrap_or_default();
        println!("cluster: {} is up: pid {pid}, grpc {}, raft {}", node.id, node.grpc_addr, node.raft_addr);
    }
    // Plain copies, so that the condition closures below do not borrow the cluster.
    let addrs: Vec<Addrs> = cluster
        .nodes
        .iter()
        .map(|n| Addrs { id: n.id, grpc: n.proc.grpc_addr.clone(), raft: n.proc.raft_addr.clone() })
        .collect();
    let first = &addrs[0];

    cluster.wait_until(&format!("{} to become leader", first.id), LEADER_DEADLINE, POLL_INTERVAL, || {
        let status = ctl.json(&first.grpc, &["status"])?;
        let state = status["state"].as_str().unwrap_or("?");
        if state == "leader" && status["node_id"].as_str() == Some(first.id) {
            Ok(())
        } else {
            Err(format!("state {state}, term {}, leader {}", status["term"], status["leader_id"]))
        }
    })?;
    println!("cluster: {} is leader after {:.1}s", first.id, started.elapsed().as_secs_f64());

    for node in &addrs[1..] {
        let added = cluster.wait_until(
            &format!("member add {}", node.id),
            MEMBER_ADD_DEADLINE,
            Duration::from_millis(500),
            || {
                let args = ["member", "add", node.id, "--raft-addr", &node.raft, "--grpc-addr", &node.grpc];
                ctl.ok(&first.grpc, &args)
            },
        )?;
        println!("cluster: added {} as a voter through {}: {}", node.id, first.id, added.trim());
    }

    let expected: Vec<&str> = addrs.iter().map(|a| a.id).collect();
    for via in &addrs {
        let leader = cluster.wait_until(
            &format!("3 voters and one leader in `member list` via {}", via.id),
            MEMBERSHIP_DEADLINE,
            POLL_INTERVAL,
            || check_members(&ctl.json(&via.grpc, &["member", "list"])?, &expected),
        )?;
        println!("cluster: member list via {}: 3 voters, leader {leader}", via.id);
    }
    let serving = started.elapsed();
    println!("cluster: serving with 3 voters {:.1}s after the first node started", serving.as_secs_f64());
    if cluster.tls.is_some() {
        for via in &addrs {
            cluster.wait_until(
                &format!("sealed gossip with 3 live nodes via {}", via.id),
                MEMBERSHIP_DEADLINE,
                POLL_INTERVAL,
                || check_sealed_gossip(&ctl.json(&via.grpc, &["status"])?["gossip"]),
            )?;
        }
        println!("cluster: every node's gossip is sealed and sees the 3 nodes");
    }
    if cluster.tls.is_some() {
        enable_auth(cluster, ctl, &first.grpc)?;
    }

    for node in &addrs {
        let key = format!("xtask/{}", node.id);
        let value = format!("hello-from-{}", node.id);
        cluster.wait_until(&format!("put {key} via {}", node.id), DATA_DEADLINE, POLL_INTERVAL, || {
            let out = ctl.ok(&node.grpc, &["put", &key, &value])?;
            if out.trim() == "OK" { Ok(()) } else { Err(format!("put printed {:?}, expected \"OK\"", out.trim())) }
        })?;
        println!("cluster: put {key} = {value} via {}", node.id);
    }
    for via in &addrs {
        for node in &addrs {
            let key = format!("xtask/{}", node.id);
            let value = format!("hello-from-{}", node.id);
            cluster.wait_until(
                &format!("get {key} via {} to return {value}", via.id),
                DATA_DEADLINE,
                POLL_INTERVAL,
                || {
                    let out = ctl.ok(&via.grpc, &["get", &key])?;
                    if out.trim_end() == value { Ok(()) } else { Err(format!("get printed {:?}", out.trim_end())) }
                },
            )?;
        }
        println!("cluster: read all 3 keys back via {}", via.id);
    }
    println!("cluster: writes and reads checked {:.1}s after the first node started", started.elapsed().as_secs_f64());

    for via in &addrs {
        if let Ok(status) = ctl.json(&via.grpc, &["status"]) {
            println!(
                "cluster: status of {}: {}, term {}, leader {}, last log {}, committed {}, applied {}",
                via.id,
                status["state"].as_str().unwrap_or("?"),
                status["term"],
                status["leader_id"].as_str().unwrap_or("?"),
                status["last_log_index"],
                status["committed_index"],
                status["applied_index"],
            );
        }
    }

    print_summary(cluster, &ctl.path, serving);
    Ok(())
}

/// The file `--tls` writes root's password to, in the data directory.
const ROOT_PASSWORD_FILE: &str = "root.password";

/// `--tls`: adds the user `root` with a fresh random password (saved, mode 600, in
/// [`ROOT_PASSWORD_FILE`]), enables authentication through `via`, and makes every later
/// `raftkvctl` of `ctl` run as root.
fn enable_auth(cluster: &Cluster, ctl: &Ctl, via: &str) -> Result<()> {
    use std::hash::{BuildHasher, Hasher};
    use std::os::unix::fs::PermissionsExt;

    // RandomState is seeded by the OS: two 64-bit draws make a throwaway password.
    let draw = || std::collections::hash_map::RandomState::new().build_hasher().finish();
    let password = format!("{:016x}{:016x}", draw(), draw());
    let file = cluster.data_dir.join(ROOT_PASSWORD_FILE);
    fs::write(&file, format!("{password}\n")).with_context(|| format!("writing {}", file.display()))?;
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600))?;
    let user = format!("root:{password}");
    // Not `ok`: its error would repeat the arguments, password included.
    let added = ctl.run(via, &["user", "add", &user]).map_err(anyhow::Error::msg)?;
    if !added.status.success() {
        bail!("`raftkvctl user add root:<password>` via {via} failed ({}): {}", added.status, added.stderr.trim());
    }
    let enabled = ctl.ok(via, &["auth", "enable"]).map_err(anyhow::Error::msg)?;
    ctl.user.set(user).map_err(|_| anyhow::anyhow!("the raftkvctl user was already set"))?;
    // Root's token is needed from now on: a call without it is refused.
    let refused = ctl.run_as_anyone(via, &["get", "xtask/probe"]).map_err(anyhow::Error::msg)?;
    if refused.status.success() || !refused.stderr.contains("no credentials") {
        bail!("after `auth enable`, a get without --user was not refused: {}", refused.stderr.trim());
    }
    println!(
        "cluster: {}: user root, password in {} (a get without --user is refused)",
        enabled.trim(),
        relative_to_cwd(&file).display()
    );
    Ok(())
}

/// Checks the `gossip` part of a `status -o json` answer: sealed, and the three nodes live.
fn check_sealed_gossip(gossip: &Value) -> Result<(), String> {
    let live = gossip["nodes"].as_array().map_or(0, |n| n.iter().filter(|n| n["liveness"] == "live").count());
    if gossip["sealed"] == true && live == NODE_IDS.len() { Ok(()) } else { Err(format!("gossip {gossip}")) }
}

/// `--tls`: the files of `cargo xtask certs` for the three nodes, in `<data-dir>/certs`.
fn make_certs(data_dir: &Path) -> Result<CertFiles> {
    let dir = data_dir.join("certs");
    let (_, files) = proc_harness::certs::generate(&dir, &NODE_IDS, "client")?;
    println!(
        "cluster: TLS: a throwaway CA, node and client certificates and a gossip key in {} (as `cargo xtask certs`)",
        relative_to_cwd(&dir).display()
    );
    Ok(files)
}

/// Checks a `member list -o json` answer: exactly the expected ids, all voters, one leader.
/// Returns the leader's id.
fn check_members(list: &Value, expected: &[&str]) -> Result<String, String> {
    let members = list["members"].as_array().ok_or_else(|| format!("no members array in {list}"))?;
    let mut ids: Vec<&str> = members.iter().filter_map(|m| m["id"].as_str()).collect();
    ids.sort_unstable();
    let mut want = expected.to_vec();
    want.sort_unstable();
    let voters = members.iter().filter(|m| m["suffrage"].as_str() == Some("voter")).count();
    let leaders: Vec<&str> =
        members.iter().filter(|m| m["is_leader"].as_bool() == Some(true)).filter_map(|m| m["id"].as_str()).collect();
    match leaders.as_slice() {
        [leader] if ids == want && voters == expected.len() => Ok((*leader).to_owned()),
        _ => Err(format!("members {ids:?}, {voters} voters, leaders {leaders:?}")),
    }
}

fn print_summary(cluster: &Cluster, ctl: &Path, serving: Duration) {
    let endpoints = cluster.endpoints();
    let ctl = relative_to_cwd(ctl);
    println!();
    println!("cluster: 3-node cluster serving in {:.1}s (from starting the nodes to 3 voters)", serving.as_secs_f64());
    for node in cluster.nodes.iter().map(|n| &n.proc) {
        println!(
            "  {}  grpc {}  raft {}  pid {}  log {}",
            node.id,
            node.grpc_addr,
            node.raft_addr,
            node.pid().unwrap_or_default(),
            relative_to_cwd(node.log_path()).display()
        );
    }
    println!("  data: {}", relative_to_cwd(&cluster.data_dir).display());
    let tls = match &cluster.tls {
        Some(files) => {
            println!("  TLS on both ports (client certificates required), gossip sealed; certificates and key:");
            println!("    CA {}", relative_to_cwd(&files.ca).display());
            println!(
                "    client {} / {}",
                relative_to_cwd(&files.client.0).display(),
                relative_to_cwd(&files.client.1).display()
            );
            println!("    gossip key {}", relative_to_cwd(&files.gossip_key).display());
            let password = relative_to_cwd(&cluster.data_dir.join(ROOT_PASSWORD_FILE));
            println!("  authentication on: user root, password in {}", password.display());
            format!(
                " --cacert {} --cert {} --key {} --user \"root:$(cat {})\"",
                relative_to_cwd(&files.ca).display(),
                relative_to_cwd(&files.client.0).display(),
                relative_to_cwd(&files.client.1).display(),
                password.display()
            )
        }
        None => String::new(),
    };
    println!("\ntry:");
    let ctl = ctl.display();
    println!("  {ctl} --endpoints {endpoints}{tls} put hello world");
    println!("  {ctl} --endpoints {endpoints}{tls} get hello");
    println!("  {ctl} --endpoints {endpoints}{tls} member list");
    println!("  {ctl} --endpoints {endpoints}{tls} status --cluster");
    println!("  {ctl} --endpoints {endpoints}{tls} leader transfer");
    println!("  {ctl} --endpoints {endpoints}{tls} snapshot save backup.rkvs");
    println!("  {ctl} --endpoints {endpoints}{tls} -o json status");
    if cluster.tls.is_some() {
        println!("  {ctl} --endpoints {endpoints} get hello     # refused: no --cacert, the nodes speak TLS only");
    }
    match &cluster.tls {
        Some(files) => println!(
            "or: export RAFTKV_ENDPOINTS={endpoints} RAFTKV_CACERT={} RAFTKV_CERT={} RAFTKV_KEY={} RAFTKV_USER=\"root:$(cat {})\"; {ctl} get hello",
            relative_to_cwd(&files.ca).display(),
            relative_to_cwd(&files.client.0).display(),
            relative_to_cwd(&files.client.1).display(),
            relative_to_cwd(&cluster.data_dir.join(ROOT_PASSWORD_FILE)).display()
        ),
        None => println!("or: export RAFTKV_ENDPOINTS={endpoints}; {ctl} get hello"),
    }
}

/// With the seed's fixed ports, fails early and clearly if one is taken (say, by another
/// cluster still running).
fn check_ports_free() -> Result<()> {
    for port in SEED_GRPC_PORTS.into_iter().chain(SEED_RAFT_PORTS) {
        if let Err(err) = TcpListener::bind((HOST, port)) {
            bail!(
                "port {HOST}:{port} is not free ({err}); is another cluster running? \
                 use --ports-from-os to let the OS pick the ports"
            );
        }
    }
    Ok(())
}

/// Wipes and creates the data directory, refusing to wipe a non-empty directory that
/// this command did not make.
pub(crate) fn prepare_data_dir(dir: &Path) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            let empty = entries.next().is_none();
            if !empty && !dir.join(MARKER_FILE).exists() {
                bail!(
                    "{} is not empty and was not made by `cargo xtask cluster`; \
                     refusing to wipe it (remove it yourself or pick another --data-dir)",
                    dir.display()
                );
            }
            fs::remove_dir_all(dir).with_context(|| format!("wiping {}", dir.display()))?;
        }
        Err(err) if err.kind() == ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(dir.join(MARKER_FILE), "made by `cargo xtask cluster`, which wipes this directory on its next run\n")?;
    println!("cluster: data directory {}", dir.display());
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() { Ok(path.to_path_buf()) } else { Ok(std::env::current_dir()?.join(path)) }
}

/// `path` relative to the current directory when it is inside it, else `path` unchanged.
fn relative_to_cwd(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
}

/// A node's addresses, copied out of the cluster.
struct Addrs {
    id: &'static str,
    grpc: String,
    raft: String,
}

struct Node {
    id: &'static str,
    proc: NodeProc,
    /// Its exit has been reported already (it exited on its own while the cluster ran).
    reported: bool,
}

struct Cluster {
    raftkv: PathBuf,
    data_dir: PathBuf,
    nodes: Vec<Node>,
    interrupted: Arc<AtomicBool>,
    /// With `--tls`: the certificates and the gossip key.
    tls: Option<CertFiles>,
    /// Given to every node, after the others.
    extra_args: Vec<String>,
}

impl Cluster {
    /// The nodes' client addresses, comma-separated, in start order.
    fn endpoints(&self) -> String {
        self.nodes.iter().map(|n| n.proc.grpc_addr.as_str()).collect::<Vec<_>>().join(",")
    }

    /// Starts one node (through the process harness, which SIGKILLs it if it is dropped);
    /// with `--tls`, with its certificate and sealed gossip seeded at `gossip_seed`.
    fn spawn(
        &mut self,
        id: &'static str,
        raft_port: u16,
        grpc_port: u16,
        bootstrap: bool,
        gossip_seed: Option<&str>,
    ) -> Result<()> {
        let mut args = Vec::new();
        if let Some(files) = &self.tls {
            args.extend(files.node_args(id));
            args.push("--client-cert-auth".into());
            args.extend([
                format!("--gossip_addr={HOST}:0"),
                format!("--gossip-key-file={}", files.gossip_key.display()),
            ]);
            args.extend(gossip_seed.map(|s| format!("--gossip_seeds={s}")));
        }
        args.extend(self.extra_args.iter().cloned());
        let proc = NodeProc::builder(&self.raftkv, id, &self.data_dir)
            .addrs(format!("{HOST}:{grpc_port}"), format!("{HOST}:{raft_port}"))
            .args(args)
            .bootstrap(bootstrap)
            .listen_timeout(LISTEN_DEADLINE)
            .abort_on(Arc::clone(&self.interrupted))
            .spawn()?;
        println!("cluster: started {id} (pid {}): {}", proc.pid().unwrap_or_default(), proc.command_line());
        self.nodes.push(Node { id, proc, reported: false });
        Ok(())
    }

    /// Waits for node `i`'s listen.json (written by that very process), which records its
    /// addresses.
    fn wait_for_listen(&mut self, i: usize) -> Result<()> {
        self.check_running()?;
        self.nodes[i].proc.wait_listening()?;
        Ok(())
    }

    /// Calls `attempt` until it returns `Ok`, pausing `interval` between attempts, for at most
    /// `deadline`. `Err` from `attempt` says why the condition does not hold yet. Fails at
    /// once if xtask is interrupted or a node exits.
    fn wait_until<T>(
        &mut self,
        what: &str,
        deadline: Duration,
        interval: Duration,
        mut attempt: impl FnMut() -> Result<T, String>,
    ) -> Result<T> {
        let start = Instant::now();
        loop {
            self.check_running()?;
            let why = match attempt() {
                Ok(value) => return Ok(value),
                Err(why) => why,
            };
            self.check_running()?;
            if start.elapsed() >= deadline {
                bail!("timed out after {}s waiting for {what}; last: {why}", deadline.as_secs());
            }
            thread::sleep(interval);
        }
    }

    /// Fails if xtask was interrupted or any node has exited.
    fn check_running(&mut self) -> Result<()> {
        if self.interrupted.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        for node in &mut self.nodes {
            if let Some(status) = node.proc.try_wait()? {
                bail!("{} exited unexpectedly ({status})", node.id);
            }
        }
        Ok(())
    }

    /// Runs until Ctrl-C (or SIGTERM to xtask). A node that exits meanwhile is reported (it
    /// may have been stopped on purpose); if all of them exit, this returns an error.
    fn wait_for_interrupt(&mut self) -> Result<()> {
        while !self.interrupted.load(Ordering::SeqCst) {
            for node in &mut self.nodes {
                if let Some(status) = node.proc.try_wait()? {
                    node.reported = true;
                    eprintln!(
                        "cluster: {} exited ({status}); last lines of {}:\n{}",
                        node.id,
                        node.proc.log_path().display(),
                        node.proc.log_tail_lines(LOG_TAIL_LINES)
                    );
                }
            }
            if self.nodes.iter().all(|n| n.proc.pid().is_none()) {
                bail!("every node has exited");
            }
            thread::sleep(POLL_INTERVAL);
        }
        println!("\ncluster: interrupted");
        Ok(())
    }

    fn print_log_tails(&self) {
        for node in &self.nodes {
            eprintln!(
                "\n----- last {LOG_TAIL_LINES} lines of {} ({}) -----\n{}",
                node.proc.log_path().display(),
                node.id,
                node.proc.log_tail_lines(LOG_TAIL_LINES)
            );
        }
    }

    /// Stops every node: SIGTERM by PID to all (after Ctrl-C, only to those still running
    /// after [`SELF_EXIT_GRACE`]), up to [`STOP_GRACE`] for each to exit, then SIGKILL for
    /// what is left. Returns what went wrong: a node that needed SIGKILL or did
    /// not exit with status 0. Safe to call more than once.
    fn stop(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.interrupted.load(Ordering::SeqCst) {
            // A Ctrl-C in the terminal reached the nodes too, and they are shutting down:
            // give them a moment before a second signal, which could cut that short.
            let deadline = Instant::now() + SELF_EXIT_GRACE;
            while Instant::now() < deadline
                && self.nodes.iter_mut().any(|n| n.proc.pid().is_some() && matches!(n.proc.try_wait(), Ok(None)))
            {
                thread::sleep(Duration::from_millis(20));
            }
        }
        // SIGTERM to all first, so that they shut down in parallel under one deadline.
        for node in &mut self.nodes {
            node.proc.terminate();
        }
        let deadline = Instant::now() + STOP_GRACE;
        for node in &mut self.nodes {
            let pid = node.proc.pid().unwrap_or_default();
            match node.proc.stop_by(deadline) {
                Stopped::NotRunning => {}
                Stopped::Exited(status) => {
                    if !status.success() && !node.reported {
                        problems.push(format!("{} exited with {status}", node.id));
                    }
                    println!("cluster: {} stopped ({status})", node.id);
                }
                Stopped::Killed => {
                    problems.push(format!(
                        "{} (pid {pid}) did not exit within {}s of SIGTERM; killed it",
                        node.id,
                        STOP_GRACE.as_secs()
                    ));
                    println!("cluster: {} killed", node.id);
                }
            }
        }
        problems
    }
}

impl Drop for Cluster {
    /// The last line of defence (a panic, an early return): no node outlives xtask.
    fn drop(&mut self) {
        if self.nodes.iter().any(|n| n.proc.pid().is_some()) {
            for problem in self.stop() {
                eprintln!("cluster: {problem}");
            }
        }
    }
}

/// Runs `raftkvctl`, always against the endpoints given, with a timeout.
struct Ctl {
    path: PathBuf,
    interrupted: Arc<AtomicBool>,
    /// `--cacert --cert --key` with `--tls`; empty otherwise.
    tls_args: Vec<String>,
    /// `NAME:PASSWORD` once authentication is on (`--tls`), passed as `RAFTKV_USER`.
    user: std::cell::OnceCell<String>,
}

struct CtlOutput {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ctl {
    /// Runs `raftkvctl --endpoints ENDPOINTS ARGS`; the process is killed after
    /// [`CTL_TIMEOUT`] or on Ctrl-C.
    fn run(&self, endpoints: &str, args: &[&str]) -> Result<CtlOutput, String> {
        self.run_with_user(endpoints, args, self.user.get().map(String::as_str))
    }

    /// [`Ctl::run`] without a user, even once authentication is on.
    fn run_as_anyone(&self, endpoints: &str, args: &[&str]) -> Result<CtlOutput, String> {
        self.run_with_user(endpoints, args, None)
    }

    fn run_with_user(&self, endpoints: &str, args: &[&str], user: Option<&str>) -> Result<CtlOutput, String> {
        let mut cmd = Command::new(&self.path);
        cmd.env_remove("RAFTKV_USER").env_remove("RAFTKV_TOKEN");
        if let Some(user) = user {
            cmd.env("RAFTKV_USER", user);
        }
        cmd.arg("--endpoints")
            .arg(endpoints)
            .args(&self.tls_args)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // `user add NAME:PASSWORD`: the password never reaches a message.
        let mut line = display_cmd(&cmd);
        if args.first() == Some(&"user") {
            for arg in args.iter().filter(|a| a.contains(':')) {
                line = line.replace(arg, "<NAME:PASSWORD>");
            }
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot start `{line}`: {e}"))?;
        let stdout = read_in_background(child.stdout.take());
        let stderr = read_in_background(child.stderr.take());
        let deadline = Instant::now() + CTL_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if Instant::now() >= deadline => {
                    break Err(format!("`{line}` did not finish within {}s", CTL_TIMEOUT.as_secs()));
                }
                Ok(None) if self.interrupted.load(Ordering::SeqCst) => {
                    break Err(String::from("interrupted"));
                }
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                Err(err) => break Err(format!("waiting for `{line}`: {err}")),
            }
        };
        if status.is_err() {
            // Not reaped yet: the PID is still this child's.
            let _ = child.kill();
            let _ = child.wait();
        }
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        Ok(CtlOutput {
            status: status?,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }

    /// Runs a command that must succeed; returns its stdout, or why not.
    fn ok(&self, endpoints: &str, args: &[&str]) -> Result<String, String> {
        let out = self.run(endpoints, args)?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(format!(
                "`raftkvctl {}` via {endpoints} failed ({}): {}",
                args.join(" "),
                out.status,
                out.stderr.trim()
            ))
        }
    }

    /// Runs `raftkvctl -o json ARGS`; returns the parsed output, or why not.
    fn json(&self, endpoints: &str, args: &[&str]) -> Result<Value, String> {
        let mut full = vec!["-o", "json"];
        full.extend_from_slice(args);
        let out = self.ok(endpoints, &full)?;
        serde_json::from_str(&out).map_err(|e| format!("{e} in output {out:?}"))
    }
}

pub(crate) fn read_in_background<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}
