//! `cargo xtask bench [--runs N] [--scale F]`: raftkv against etcd on this machine, in one
//! run, with one load generator.
//!
//! 1. Build `raftkv` and `raftkvctl` in release.
//! 2. Start a three-member etcd (`etcd` from `PATH`; Debian: `apt-get install etcd-server`)
//!    on 127.0.0.1, and a three-node raftkv cluster as `cargo xtask cluster` does, both with
//!    their data under `target/xtask-bench/`. Ports come from the OS (bound to port 0 and
//!    released just before etcd starts; raftkv binds port 0 itself).
//! 3. For each run and each shape ([`SHAPES`]: puts with 1, 16, 64 and 256 clients;
//!    linearizable and serializable gets with 64), `raftkvctl bench` loads etcd
//!    (`--target etcd`) and raftkv in turn, the order alternating from run to run so that
//!    neither always goes first on a machine that warms up or slows down.
//! 4. Print, per shape, each store's requests per second and p99 (median of the runs, with
//!    the lowest and highest), and the ratio raftkv/etcd taken run by run (median, lowest,
//!    highest). The machine is shared and noisy: only figures from the same run compare.
//!    The whole result also goes to `target/xtask-bench/results.json`.
//! 5. Stop both clusters by PID, whatever happened.
//!
//! Both stores get the same load: each simulated client has its own connection to one
//! member (clients spread over the members), sends one request after another and waits for
//! each answer; puts write new keys with 64-byte values; gets read keys written beforehand.

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
}

/// What is measured: the shapes of the roadmap's etcd figures.
const SHAPES: [Shape; 6] = [
    Shape { name: "put, 1 client", op: "put", clients: 1, total: 2_000, serializable: false },
    Shape { name: "put, 16 clients", op: "put", clients: 16, total: 10_000, serializable: false },
    Shape { name: "put, 64 clients", op: "put", clients: 64, total: 20_000, serializable: false },
    Shape { name: "put, 256 clients", op: "put", clients: 256, total: 40_000, serializable: false },
    Shape { name: "get linearizable, 64 clients", op: "get", clients: 64, total: 40_000, serializable: false },
    Shape { name: "get serializable, 64 clients", op: "get", clients: 64, total: 40_000, serializable: true },
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
}

pub(crate) fn run(root: &Path, opts: &Options) -> Result<()> {
    if opts.runs == 0 || !opts.scale.is_finite() || opts.scale <= 0.0 {
        bail!("--runs must be at least 1 and --scale above 0");
    }
    let etcd = which("etcd")
        .context("etcd is not on PATH; raftkv is measured against etcd 3.4 (Debian: `apt-get install etcd-server`)")?;
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = Arc::clone(&interrupted);
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    }
    run_checked(cargo(root).args(["build", "--release", "--bin", "raftkv", "--bin", "raftkvctl"]))?;
    let bin_dir = target_dir(root).join("release");
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
    let raftkv_endpoints = raftkv.endpoints();
    let outcome = etcd
        .wait_ready(&ctl, &interrupted)
        .and_then(|()| measure(&ctl, &etcd.endpoints, &raftkv_endpoints, opts, &interrupted));
    etcd.stop();
    let problems = raftkv.stop();
    let results = outcome?;
    if !problems.is_empty() {
        eprintln!("bench: raftkv nodes did not stop cleanly:\n  {}", problems.join("\n  "));
    }
    let report = report(&results, opts);
    println!("\n{report}");
    let file = work.join("results.json");
    let doc = json!({ "runs": opts.runs, "scale": opts.scale, "results": results, "report": report });
    fs::write(&file, serde_json::to_vec_pretty(&doc)?).with_context(|| format!("writing {}", file.display()))?;
    println!("bench: results in {}", file.display());
    Ok(())
}

/// Every measurement: `results[shape][store]` is one summary per run (`raftkvctl -o json
/// bench` output).
fn measure(ctl: &Path, etcd: &str, raftkv: &str, opts: &Options, interrupted: &AtomicBool) -> Result<Vec<Value>> {
    let mut results: Vec<Value> = SHAPES.iter().map(|s| json!({ "shape": s.name, "etcd": [], "raftkv": [] })).collect();
    for run in 0..opts.runs {
        for (i, shape) in SHAPES.iter().enumerate() {
            let order: [(&str, &str); 2] =
                if run % 2 == 0 { [("etcd", etcd), ("raftkv", raftkv)] } else { [("raftkv", raftkv), ("etcd", etcd)] };
            for (store, endpoints) in order {
                if interrupted.load(Ordering::SeqCst) {
                    bail!("interrupted");
                }
                let summary = bench(ctl, store, endpoints, shape, run, opts.scale)?;
                println!(
                    "bench: run {}/{} {:<30} {:<6} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
                    run + 1,
                    opts.runs,
                    shape.name,
                    store,
                    summary["requests_per_second"].as_f64().unwrap_or(0.0),
                    summary["p50_ms"].as_f64().unwrap_or(0.0),
                    summary["p99_ms"].as_f64().unwrap_or(0.0),
                );
                if let Some(runs) = results[i][store].as_array_mut() {
                    runs.push(summary);
                }
            }
        }
    }
    Ok(results)
}

/// One `raftkvctl -o json bench` run.
fn bench(ctl: &Path, store: &str, endpoints: &str, shape: &Shape, run: usize, scale: f64) -> Result<Value> {
    let total = ((shape.total as f64 * scale).round() as usize).max(shape.clients);
    let mut cmd = Command::new(ctl);
    cmd.args(["--endpoints", endpoints, "-o", "json", "bench", shape.op, "--target", store])
        .args(["--total", &total.to_string(), "--clients", &shape.clients.to_string()])
        .args(["--prefix", &format!("bench-{run}-{}-{}", shape.op, shape.clients)]);
    if shape.serializable {
        cmd.arg("--serializable");
    }
    let line = display_cmd(&cmd);
    let out = output_within(&mut cmd, BENCH_TIMEOUT).with_context(|| format!("running `{line}`"))?;
    serde_json::from_slice(&out).with_context(|| format!("`{line}` printed {:?}", String::from_utf8_lossy(&out)))
}

/// Runs `cmd` to its end (killed after `limit`); its stdout, or why not.
fn output_within(cmd: &mut Command, limit: Duration) -> Result<Vec<u8>> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let out = cluster::read_in_background(child.stdout.take());
    let err = cluster::read_in_background(child.stderr.take());
    let Some(status) = cluster::wait_with_deadline(&mut child, Instant::now() + limit)? else {
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

/// The table of module docs step 4.
fn report(results: &[Value], opts: &Options) -> String {
    let field = |runs: &Value, name: &str| -> Vec<f64> {
        runs.as_array().map(|a| a.iter().filter_map(|r| r[name].as_f64()).collect()).unwrap_or_default()
    };
    let mut out = format!(
        "raftkv against etcd, {} run(s) each, one load generator; median [lowest, highest] of the runs\n\
         {:<30} {:>22} {:>22} {:>22} {:>17}\n",
        opts.runs, "shape", "etcd req/s", "raftkv req/s", "raftkv/etcd", "p99 ms etcd/rkv"
    );
    for r in results {
        let (mut e, mut k) = (field(&r["etcd"], "requests_per_second"), field(&r["raftkv"], "requests_per_second"));
        let mut ratios: Vec<f64> = e.iter().zip(&k).map(|(e, k)| k / e).collect();
        let (mut ep99, mut kp99) = (field(&r["etcd"], "p99_ms"), field(&r["raftkv"], "p99_ms"));
        if e.is_empty() || k.is_empty() {
            continue;
        }
        let fmt = |(lo, mid, hi): (f64, f64, f64)| format!("{mid:.0} [{lo:.0}, {hi:.0}]");
        let (rlo, rmid, rhi) = spread(&mut ratios);
        out.push_str(&format!(
            "{:<30} {:>22} {:>22} {:>22} {:>17}\n",
            r["shape"].as_str().unwrap_or("?"),
            fmt(spread(&mut e)),
            fmt(spread(&mut k)),
            format!("{rmid:.2} [{rlo:.2}, {rhi:.2}]"),
            format!("{:.1}/{:.1}", spread(&mut ep99).1, spread(&mut kp99).1),
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
            if !matches!(cluster::wait_with_deadline(c, deadline), Ok(Some(_))) {
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
        })];
        let text = report(&results, &Options { runs: 2, scale: 1.0 });
        // Ratios 3.0 and 1.0: median 2.00, not 250/150.
        assert!(text.contains("2.00 [1.00, 3.00]"), "{text}");
        assert!(text.contains("150 [100, 200]"), "{text}");
    }
}
