//! `cargo xtask bench [--runs N] [--scale F]`: raftkv against etcd on this machine, in one
//! run, with one load generator.
//!
//! 1. Build `raftkv` and `raftkvctl` in release (or take them from `--bin-dir`, to measure
//!    another build).
//! 2. Start a three-member etcd (`etcd` from `PATH`; Debian: `apt-get install etcd-server`)
//!    on 127.0.0.1, and a three-node raftkv cluster as `cargo xtask cluster` does, both with
//!    their data under `target/xtask-bench/`. Ports come from the OS (bound to port 0 and
//!    released just before etcd starts; raftkv binds port 0 itself).
//! 3. For each run and each shape ([`SHAPES`], or those `--only` names: puts of 64-byte
//!    values with 1, 16, 64 and 256 clients; puts of 256-byte values spread over the members
//!    and to the leader; linearizable and serializable gets with 64), `raftkvctl bench`
//!    loads etcd (`--target etcd`) and raftkv in turn, the order alternating from run to run
//!    so that neither always goes first on a machine that warms up or slows down. The CPU
//!    time (user and system) of the store's server processes is read from `/proc` before
//!    and after: server CPU per operation.
//! 4. Print, per shape, each store's requests per second (median of the runs, with the
//!    lowest and highest), the ratio raftkv/etcd taken run by run (median, lowest,
//!    highest), and the medians of p50, p99 and CPU per operation. The machine is shared
//!    and noisy: only figures from the same run compare. The whole result also goes to
//!    `target/xtask-bench/results.json`.
//! 5. Stop both clusters by PID, whatever happened.
//!
//! With `--etcd-api`, a third store is loaded in the same turn: the same raftkv cluster
//! through its etcd v3 API (`raftkvctl bench --target etcd` against raftkv's client port),
//! and a second table gives raftkv-over-etcd-API against raftkv-native, run by run.
//!
//! Both stores get the same load: each simulated client has its own connection to one
//! member (clients spread over the members, or all to the leader: etcd's from `etcdctl
//! endpoint status`, raftkv's nodeA, which bootstraps the cluster), sends one request after
//! another and waits for each answer; puts write new keys; gets read keys written
//! beforehand.

use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{cargo, cluster, display_cmd, run_checked, target_dir};

/// One load shape.
struct Shape {
    name: &'static str,
    /// `raftkvctl bench` arguments after the operation's name.
    op: &'static str,
    clients: usize,
    /// Requests at scale 1.
    total: usize,
    serializable: bool,
    value_size: usize,
    route: Route,
}

/// Where a shape's clients connect.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Spread over the three members: followers forward writes (raftkv) or propose them
    /// through the leader (etcd).
    Spread,
    /// Every client to the leader.
    Leader,
}

const fn put(name: &'static str, clients: usize, total: usize, value_size: usize, route: Route) -> Shape {
    Shape { name, op: "put", clients, total, serializable: false, value_size, route }
}

const fn get(name: &'static str, serializable: bool) -> Shape {
    Shape { name, op: "get", clients: 64, total: 40_000, serializable, value_size: 64, route: Route::Spread }
}

/// What is measured: the shapes of the roadmap's etcd figures (64-byte values, clients
/// spread over the members), then etcd's published benchmark's 256-byte values, spread and
/// to the leader.
const SHAPES: [Shape; 13] = [
    put("put, 1 client", 1, 2_000, 64, Route::Spread),
    put("put, 16 clients", 16, 10_000, 64, Route::Spread),
    put("put, 64 clients", 64, 20_000, 64, Route::Spread),
    put("put, 256 clients", 256, 40_000, 64, Route::Spread),
    put("put 256 B, 16 clients", 16, 10_000, 256, Route::Spread),
    put("put 256 B, 64 clients", 64, 20_000, 256, Route::Spread),
    put("put 256 B, 256 clients", 256, 40_000, 256, Route::Spread),
    put("put 256 B, 1 client, leader", 1, 2_000, 256, Route::Leader),
    put("put 256 B, 16 clients, leader", 16, 10_000, 256, Route::Leader),
    put("put 256 B, 64 clients, leader", 64, 20_000, 256, Route::Leader),
    put("put 256 B, 256 clients, leader", 256, 40_000, 256, Route::Leader),
    get("get linearizable, 64 clients", false),
    get("get serializable, 64 clients", true),
];

/// How long etcd may take to answer its first put.
const ETCD_READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long one `raftkvctl bench` run may take.
const BENCH_TIMEOUT: Duration = Duration::from_secs(600);
/// How long etcd may take to exit after SIGTERM.
const ETCD_STOP_GRACE: Duration = Duration::from_secs(10);

pub(crate) struct Options {
    pub(crate) runs: usize,
    /// Multiplies every shape's request count (0.1 for a quick look).
    pub(crate) scale: f64,
    /// Only the shapes whose name contains one of these (all when empty).
    pub(crate) only: Vec<String>,
    /// Use the `raftkv` and `raftkvctl` in this directory (another build, to compare
    /// builds) rather than building them.
    pub(crate) bin_dir: Option<PathBuf>,
    /// Also load raftkv through its etcd v3 API ([`RAFTKV_ETCD_API`]).
    pub(crate) etcd_api: bool,
}

/// The results key of raftkv loaded through its etcd v3 API.
const RAFTKV_ETCD_API: &str = "raftkv-etcd-api";

impl Options {
    fn shapes(&self) -> impl Iterator<Item = &'static Shape> + '_ {
        SHAPES.iter().filter(|s| self.only.is_empty() || self.only.iter().any(|o| s.name.contains(o.as_str())))
    }
}

/// One store under load: where its clients connect and which processes serve it.
struct Store {
    /// The results key: `etcd`, `raftkv` or [`RAFTKV_ETCD_API`].
    name: &'static str,
    /// The protocol `raftkvctl bench --target` speaks to it.
    target: &'static str,
    /// Every member's client address, comma-separated.
    endpoints: String,
    /// The leader's client address.
    leader: String,
    pids: Vec<u32>,
}

pub(crate) fn run(root: &Path, opts: &Options) -> Result<()> {
    if opts.runs == 0 || !opts.scale.is_finite() || opts.scale <= 0.0 {
        bail!("--runs must be at least 1 and --scale above 0");
    }
    if opts.shapes().next().is_none() {
        bail!("--only {:?} matches no shape; the shapes: {:?}", opts.only, SHAPES.map(|s| s.name));
    }
    let etcd = which("etcd")
        .context("etcd is not on PATH; raftkv is measured against etcd 3.4 (Debian: `apt-get install etcd-server`)")?;
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = Arc::clone(&interrupted);
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    }
    let bin_dir = match &opts.bin_dir {
        Some(dir) => dir.clone(),
        None => {
            run_checked(cargo(root).args(["build", "--release", "--bin", "raftkv", "--bin", "raftkvctl"]))?;
            target_dir(root).join("release")
        }
    };
    let ctl = bin_dir.join("raftkvctl");
    let work = target_dir(root).join("xtask-bench");

    let etcd_dir = work.join("etcd");
    cluster::prepare_data_dir(&etcd_dir)?;
    let mut etcd = EtcdCluster::start(&etcd, &etcd_dir)?;
    let raftkv = match cluster::start(&bin_dir, &work.join("raftkv"), &interrupted) {
        Ok(r) => r,
        Err(e) => {
            etcd.stop();
            return Err(e);
        }
    };
    let outcome = etcd.wait_ready(&ctl, &interrupted).and_then(|()| {
        let mut stores = vec![etcd.store()?, raftkv_store(&raftkv, "raftkv", "raftkv")];
        if opts.etcd_api {
            stores.push(raftkv_store(&raftkv, RAFTKV_ETCD_API, "etcd"));
        }
        println!("bench: leaders: etcd {}, raftkv {}", stores[0].leader, stores[1].leader);
        measure(&ctl, &stores, opts, &interrupted)
    });
    etcd.stop();
    let problems = raftkv.stop();
    let results = outcome?;
    if !problems.is_empty() {
        eprintln!("bench: raftkv nodes did not stop cleanly:\n  {}", problems.join("\n  "));
    }
    let report = report(&results, opts);
    println!("\n{report}");
    let file = work.join("results.json");
    let doc = json!({ "runs": opts.runs, "scale": opts.scale, "date": date(), "results": results, "report": report });
    fs::write(&file, serde_json::to_vec_pretty(&doc)?).with_context(|| format!("writing {}", file.display()))?;
    println!("bench: results in {}", file.display());
    Ok(())
}

/// raftkv's store, loaded through `target`'s protocol: nodeA bootstraps the cluster and is
/// its leader, first in the endpoints.
fn raftkv_store(raftkv: &cluster::Running, name: &'static str, target: &'static str) -> Store {
    let endpoints = raftkv.endpoints();
    let leader = endpoints.split(',').next().unwrap_or_default().to_string();
    Store { name, target, endpoints, leader, pids: raftkv.pids() }
}

/// Every measurement: `results[shape][store]` is one summary per run (`raftkvctl -o json
/// bench` output, with `server_cpu_us_per_op` added).
fn measure(ctl: &Path, stores: &[Store], opts: &Options, interrupted: &AtomicBool) -> Result<Vec<Value>> {
    let shapes: Vec<&Shape> = opts.shapes().collect();
    let mut results: Vec<Value> = shapes
        .iter()
        .map(|s| json!({ "shape": s.name, "value_size": s.value_size, "etcd": [], "raftkv": [], RAFTKV_ETCD_API: [] }))
        .collect();
    let ticks = clock_ticks_per_second();
    for run in 0..opts.runs {
        for (i, shape) in shapes.iter().enumerate() {
            for store in run_order(stores, run) {
                if interrupted.load(Ordering::SeqCst) {
                    bail!("interrupted");
                }
                let cpu_before = cpu_ticks(&store.pids);
                let mut summary = bench(ctl, store, shape, run, opts.scale)?;
                let cpu = cpu_ticks(&store.pids).saturating_sub(cpu_before) as f64 / ticks;
                let requests = summary["requests"].as_f64().unwrap_or(0.0).max(1.0);
                summary["server_cpu_us_per_op"] = json!(cpu * 1e6 / requests);
                println!(
                    "bench: run {}/{} {:<32} {:<15} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  cpu {:>6.0} us/op",
                    run + 1,
                    opts.runs,
                    shape.name,
                    store.name,
                    summary["requests_per_second"].as_f64().unwrap_or(0.0),
                    summary["p50_ms"].as_f64().unwrap_or(0.0),
                    summary["p99_ms"].as_f64().unwrap_or(0.0),
                    summary["server_cpu_us_per_op"].as_f64().unwrap_or(0.0),
                );
                if let Some(runs) = results[i][store.name].as_array_mut() {
                    runs.push(summary);
                }
            }
        }
    }
    Ok(results)
}

/// The order the stores are loaded in, run `run`: rotated by one each run, so that none
/// always goes first on a machine that warms up or slows down.
fn run_order(stores: &[Store], run: usize) -> impl Iterator<Item = &Store> {
    let n = stores.len().max(1);
    (0..stores.len()).map(move |i| &stores[(i + run) % n])
}

/// One `raftkvctl -o json bench` run.
fn bench(ctl: &Path, store: &Store, shape: &Shape, run: usize, scale: f64) -> Result<Value> {
    let total = ((shape.total as f64 * scale).round() as usize).max(shape.clients);
    let endpoints = if shape.route == Route::Leader { &store.leader } else { &store.endpoints };
    let mut cmd = Command::new(ctl);
    cmd.args(["--endpoints", endpoints, "-o", "json", "bench", shape.op, "--target", store.target])
        .args(["--total", &total.to_string(), "--clients", &shape.clients.to_string()])
        .args(["--value-size", &shape.value_size.to_string()])
        .args(["--prefix", &format!("bench-{run}-{}-{}-{}", shape.op, shape.clients, shape.value_size)]);
    if shape.serializable {
        cmd.arg("--serializable");
    }
    let line = display_cmd(&cmd);
    let out = output_within(&mut cmd, BENCH_TIMEOUT).with_context(|| format!("running `{line}`"))?;
    serde_json::from_slice(&out).with_context(|| format!("`{line}` printed {:?}", String::from_utf8_lossy(&out)))
}

/// The CPU time (user and system, in clock ticks) the processes `pids` have used so far,
/// from `/proc/<pid>/stat` (0 for a process that cannot be read).
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // Fields after the command name (which may hold spaces): state is field 3,
            // utime field 14 and stime field 15.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
            field(11) + field(12)
        })
        .sum()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100, Linux's usual value, if that fails).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// Today's date (UTC), from `date`, for the results file.
fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Runs `cmd` to its end (killed after `limit`); its stdout, or why not.
fn output_within(cmd: &mut Command, limit: Duration) -> Result<Vec<u8>> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let out = cluster::read_in_background(child.stdout.take());
    let err = cluster::read_in_background(child.stderr.take());
    let Some(status) = proc_harness::wait_with_deadline(&mut child, Instant::now() + limit)? else {
        // Not reaped yet: the PID is still this child's.
        let _ = child.kill();
        let _ = child.wait();
        bail!("did not finish within {}s", limit.as_secs());
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !status.success() {
        bail!("{status}: {}", String::from_utf8_lossy(&err).trim());
    }
    Ok(out)
}

/// The lowest, the median and the highest of `xs` (not empty).
fn spread(xs: &mut [f64]) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    let median = if n % 2 == 1 { xs[n / 2] } else { f64::midpoint(xs[n / 2 - 1], xs[n / 2]) };
    (xs[0], median, xs[n - 1])
}

/// The table of module docs step 4, and with `--etcd-api` the second one.
fn report(results: &[Value], opts: &Options) -> String {
    let mut out = format!(
        "raftkv against etcd, {} run(s) each, one load generator; median [lowest, highest] of the runs\n",
        opts.runs
    );
    out.push_str(&table(results, ("etcd", "etcd"), ("raftkv", "raftkv")));
    if opts.etcd_api {
        out.push_str(&format!(
            "\nraftkv through its etcd v3 API against raftkv's own API, same cluster, same {} run(s)\n",
            opts.runs
        ));
        out.push_str(&table(results, ("raftkv", "native"), (RAFTKV_ETCD_API, "etcd API")));
    }
    out
}

/// One table: per shape, each store's requests per second, the ratio `b`/`a` taken run by
/// run, and the medians of p50, p99 and CPU per operation. `(key, label)` name a store.
fn table(results: &[Value], (a, a_label): (&str, &str), (b, b_label): (&str, &str)) -> String {
    let field = |runs: &Value, name: &str| -> Vec<f64> {
        runs.as_array().map(|a| a.iter().filter_map(|r| r[name].as_f64()).collect()).unwrap_or_default()
    };
    let median = |runs: &Value, name: &str| {
        let mut xs = field(runs, name);
        if xs.is_empty() { f64::NAN } else { spread(&mut xs).1 }
    };
    let mut out = format!(
        "{:<32} {:>20} {:>20} {:>19} {:>11} {:>11} {:>13}\n",
        "shape",
        format!("{a_label} req/s"),
        format!("{b_label} req/s"),
        format!("{b_label}/{a_label}"),
        "p50 ms a/b",
        "p99 ms a/b",
        "cpu us/op a/b"
    );
    for r in results {
        let (mut x, mut y) = (field(&r[a], "requests_per_second"), field(&r[b], "requests_per_second"));
        let mut ratios: Vec<f64> = x.iter().zip(&y).map(|(x, y)| y / x).collect();
        if x.is_empty() || y.is_empty() {
            continue;
        }
        let fmt = |(lo, mid, hi): (f64, f64, f64)| format!("{mid:.0} [{lo:.0}, {hi:.0}]");
        let pair =
            |name: &str, digits: usize| format!("{:.digits$}/{:.digits$}", median(&r[a], name), median(&r[b], name));
        let (rlo, rmid, rhi) = spread(&mut ratios);
        out.push_str(&format!(
            "{:<32} {:>20} {:>20} {:>19} {:>11} {:>11} {:>13}\n",
            r["shape"].as_str().unwrap_or("?"),
            fmt(spread(&mut x)),
            fmt(spread(&mut y)),
            format!("{rmid:.2} [{rlo:.2}, {rhi:.2}]"),
            pair("p50_ms", 2),
            pair("p99_ms", 1),
            pair("server_cpu_us_per_op", 0),
        ));
    }
    out
}

/// `name` found on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// Three etcd members on 127.0.0.1.
struct EtcdCluster {
    children: Vec<Child>,
    /// Client endpoints, comma-separated.
    endpoints: String,
    logs: Vec<PathBuf>,
}

impl EtcdCluster {
    fn start(etcd: &Path, dir: &Path) -> Result<Self> {
        // Six free ports, held together so that no two are the same, then released.
        let listeners: Vec<TcpListener> =
            (0..6).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<_>>()?;
        let ports: Vec<u16> =
            listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<std::io::Result<_>>()?;
        drop(listeners);
        let (client, peer) = ports.split_at(3);
        let initial: Vec<String> = (0..3).map(|i| format!("e{i}=http://127.0.0.1:{}", peer[i])).collect();
        let mut cluster = Self { children: Vec::new(), endpoints: String::new(), logs: Vec::new() };
        for i in 0..3 {
            let log = dir.join(format!("e{i}.log"));
            let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
            let mut cmd = Command::new(etcd);
            cmd.arg("--name")
                .arg(format!("e{i}"))
                .arg("--data-dir")
                .arg(dir.join(format!("e{i}")))
                .arg("--listen-client-urls")
                .arg(format!("http://127.0.0.1:{}", client[i]))
                .arg("--advertise-client-urls")
                .arg(format!("http://127.0.0.1:{}", client[i]))
                .arg("--listen-peer-urls")
                .arg(format!("http://127.0.0.1:{}", peer[i]))
                .arg("--initial-advertise-peer-urls")
                .arg(format!("http://127.0.0.1:{}", peer[i]))
                .arg("--initial-cluster")
                .arg(initial.join(","))
                .args(["--initial-cluster-token", "xtask-bench", "--initial-cluster-state", "new"])
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file);
            let line = display_cmd(&cmd);
            let child = cmd.spawn().with_context(|| format!("cannot start `{line}`"))?;
            println!("bench: started etcd e{i} (pid {}): {line}", child.id());
            cluster.children.push(child);
            cluster.logs.push(log);
        }
        cluster.endpoints = client.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        Ok(cluster)
    }

    /// The store as measured: its leader from `etcdctl endpoint status` (the member whose
    /// own id is the leader id it reports).
    fn store(&self) -> Result<Store> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoints, "endpoint", "status", "-w", "json"])
            .stdin(Stdio::null())
            .output()
            .context("running etcdctl (Debian: `apt-get install etcd-client`)")?;
        let status: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("etcdctl endpoint status printed {:?}", String::from_utf8_lossy(&out.stdout)))?;
        let leader = status
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["Status"]["header"]["member_id"] == m["Status"]["leader"])
            .and_then(|m| m["Endpoint"].as_str())
            .context("etcdctl endpoint status names no leader")?;
        let pids = self.children.iter().map(Child::id).collect();
        Ok(Store { name: "etcd", target: "etcd", endpoints: self.endpoints.clone(), leader: leader.to_string(), pids })
    }

    /// Waits until a put through every member succeeds.
    fn wait_ready(&mut self, ctl: &Path, interrupted: &AtomicBool) -> Result<()> {
        let deadline = Instant::now() + ETCD_READY_DEADLINE;
        let mut last = String::new();
        while Instant::now() < deadline && !interrupted.load(Ordering::SeqCst) {
            for (i, c) in self.children.iter_mut().enumerate() {
                if let Some(status) = c.try_wait()? {
                    bail!("etcd e{i} exited ({status}); see {}", self.logs[i].display());
                }
            }
            let mut cmd = Command::new(ctl);
            cmd.args(["--endpoints", &self.endpoints, "-o", "json", "bench", "put", "--target", "etcd"]).args([
                "--total",
                "3",
                "--clients",
                "3",
                "--prefix",
                "ready",
            ]);
            match output_within(&mut cmd, Duration::from_secs(10)) {
                Ok(_) => {
                    println!("bench: etcd is serving at {}", self.endpoints);
                    return Ok(());
                }
                Err(e) => last = format!("{e:#}"),
            }
            thread::sleep(Duration::from_millis(300));
        }
        bail!("etcd did not serve within {}s: {last}", ETCD_READY_DEADLINE.as_secs())
    }

    /// SIGTERM to each member by PID, then SIGKILL to what is left after the grace period.
    fn stop(&mut self) {
        for c in &mut self.children {
            // Not reaped yet, so the PID is still this child's.
            if matches!(c.try_wait(), Ok(None)) {
                let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).stderr(Stdio::null()).status();
            }
        }
        let deadline = Instant::now() + ETCD_STOP_GRACE;
        for c in &mut self.children {
            if !matches!(proc_harness::wait_with_deadline(c, deadline), Ok(Some(_))) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.children.clear();
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_lowest_median_highest() {
        assert_eq!(spread(&mut [3.0, 1.0, 2.0]), (1.0, 2.0, 3.0));
        assert_eq!(spread(&mut [4.0, 1.0, 2.0, 3.0]), (1.0, 2.5, 4.0));
        assert_eq!(spread(&mut [5.0]), (5.0, 5.0, 5.0));
    }

    #[test]
    fn the_report_gives_ratios_run_by_run() {
        let results = vec![json!({
            "shape": "put, 1 client",
            "etcd": [{"requests_per_second": 100.0, "p99_ms": 2.0}, {"requests_per_second": 200.0, "p99_ms": 4.0}],
            "raftkv": [{"requests_per_second": 300.0, "p99_ms": 1.0}, {"requests_per_second": 200.0, "p99_ms": 1.0}],
            "raftkv-etcd-api": [{"requests_per_second": 150.0}, {"requests_per_second": 160.0}],
        })];
        let opts = |etcd_api| Options { runs: 2, scale: 1.0, only: Vec::new(), bin_dir: None, etcd_api };
        let text = report(&results, &opts(false));
        // Ratios 3.0 and 1.0: median 2.00, not 250/150.
        assert!(text.contains("2.00 [1.00, 3.00]"), "{text}");
        assert!(text.contains("150 [100, 200]"), "{text}");
        assert!(!text.contains("etcd API"), "{text}");
        // The second table: etcd API over native, run by run (0.5 and 0.8).
        let text = report(&results, &opts(true));
        assert!(text.contains("etcd API/native"), "{text}");
        assert!(text.contains("0.65 [0.50, 0.80]"), "{text}");
    }

    #[test]
    fn every_store_goes_first_in_turn() {
        let store = |name| Store { name, target: name, endpoints: String::new(), leader: String::new(), pids: vec![] };
        let stores = [store("a"), store("b"), store("c")];
        let names = |run| run_order(&stores, run).map(|s| s.name).collect::<Vec<_>>();
        assert_eq!(names(0), ["a", "b", "c"]);
        assert_eq!(names(1), ["b", "c", "a"]);
        assert_eq!(names(3), ["a", "b", "c"]);
    }
}
