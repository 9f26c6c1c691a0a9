//! `cargo xtask soak --minutes N [--seconds S] [--out DIR] [--release] [--fault-every 30s]
//! [--sample-every 10s] [--warmup 5m]`: a long run of a three-node cluster of real `raftkv`
//! processes under mixed load and faults, watching for growth.
//!
//! 1. Builds `raftkv` and `raftkvctl` (debug, or `--release`), unless `--bin-dir` names a
//!    build; starts nodeA, nodeB and nodeC as `cargo xtask cluster` does (the process harness
//!    `proc-harness`, ports from the OS), in `DIR/data`, with a low snapshot threshold and
//!    trailing log ([`NODE_ARGS`]) so that the log is compacted many times even in a short soak.
//! 2. Load, through the `raftkvctl` binary as a user would run it: [`CLIENTS`] clients, each
//!    owning [`KEYS_PER_CLIENT`] keys `soak/cI/kJ` (a bounded key space, so the data size
//!    should plateau), doing puts (50 %, [`VALUE_SIZE`]-byte values, each unique), linearizable
//!    gets (35 %) and deletes (15 %), each `raftkvctl` run with the endpoints rotated so that a
//!    paused node does not hold every request up; and one `raftkvctl watch --prefix soak/`.
//!    Beside them, for volume, the bulk writer ([`Bulk`], `--bulk-clients`): `raftkvctl bench
//!    put` over [`BULK_KEYS`] keys, run after run, unchecked.
//!    Every get is checked against the client's model of its keys: the last acknowledged
//!    value, or any value of a write whose outcome was unknown (a failed `put`/`del`) in the
//!    last [`UNKNOWN_WINDOW`]. A value outside that set is a correctness error (an
//!    acknowledged write lost, or a wrong value); so is an acknowledged put the watch never
//!    delivered (checked while the watch ran without a restart), and a wrong value in the
//!    final read of every key after the faults.
//! 3. Every `--fault-every` (30 s), the next fault of [`FAULTS`] in turn: kill -9 a follower
//!    and restart it, SIGSTOP the leader for [`PAUSE`] then SIGCONT, transfer the leadership
//!    (`raftkvctl leader transfer`), kill -9 the leader and restart it, SIGSTOP a follower.
//!    A node that exits on its own is an error (and is restarted).
//! 4. Every `--sample-every` (10 s), per node: RSS (`VmRSS` of `/proc/PID/status`), open file
//!    descriptors (entries of `/proc/PID/fd`) and disk use of its data directory (blocks
//!    allocated); written to `DIR/soak.csv` (one row per node per sample) and plotted to
//!    `DIR/soak.png` (`soak_report::plot`: no text; the summary gives the scales).
//! 5. Prints a summary: per node first/last/max RSS, fds and disk, and the verdict of
//!    `soak_report::verdict` (growth after the warm-up, default 5 minutes or half the run,
//!    whichever is shorter, within [`soak_report::RSS_GROWTH_MAX_PCT`],
//!    [`soak_report::FD_GROWTH_MAX`], [`soak_report::DISK_GROWTH_MAX_PCT`]); written to
//!    `DIR/summary.txt` too. Fails if a bound is exceeded or the load saw a correctness error.
//!
//! Default `DIR`: `target/soak`. Nodes are stopped by PID whatever happens (the cluster's
//! `Drop`); Ctrl-C ends the run early, still writing the CSV, plot and summary.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use proc_harness::NodeProc;

use crate::cluster::{self, read_in_background};
use crate::soak_report::{self, Sample};
use crate::{cargo, run_checked, target_dir};

/// Concurrent load clients.
const CLIENTS: usize = 3;
/// Keys per client, by default: the key space is `CLIENTS × KEYS_PER_CLIENT` keys.
pub(crate) const KEYS_PER_CLIENT: usize = 64;
/// Bytes per value.
const VALUE_SIZE: usize = 1024;
/// A write whose outcome is unknown may still take effect for this long; until then a read
/// may see it.
const UNKNOWN_WINDOW: Duration = Duration::from_secs(60);
/// Each `raftkvctl` request's deadline (`--command-timeout`).
const REQUEST_TIMEOUT: &str = "5s";
/// A `raftkvctl` run is killed after this.
const CTL_KILL_AFTER: Duration = Duration::from_secs(30);
/// Attempts of the final read of each key (one a second).
const FINAL_READ_ATTEMPTS: u64 = 10;
/// How long a SIGSTOPped node stays stopped.
const PAUSE: Duration = Duration::from_secs(5);
/// How long a killed node stays down before its restart.
const DOWN: Duration = Duration::from_secs(1);
/// After the load stops: how long the watch may take to deliver the last puts.
const WATCH_CATCH_UP: Duration = Duration::from_secs(15);
/// Keys the bulk writer overwrites (`soak-bulk/…`, beside the checked clients' `soak/`).
const BULK_KEYS: usize = 256;
/// Puts per `raftkvctl bench put` run of the bulk writer (short, so that a run a fault
/// breaks loses little and the writer stops soon after the load does).
const BULK_RUN: usize = 400;
/// Given to every node: compaction (snapshot and log purge) cycles many times in a soak.
const NODE_ARGS: [&str; 2] = ["--snapshot_threshold=2000", "--trailing_logs=1000"];
/// The faults, in turn.
const FAULTS: [Fault; 5] =
    [Fault::KillFollower, Fault::PauseLeader, Fault::TransferLeader, Fault::KillLeader, Fault::PauseFollower];

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillFollower,
    PauseLeader,
    TransferLeader,
    KillLeader,
    PauseFollower,
}

/// What `cargo xtask soak` runs.
pub(crate) struct Options {
    pub(crate) duration: Duration,
    pub(crate) out: Option<PathBuf>,
    pub(crate) release: bool,
    pub(crate) bin_dir: Option<PathBuf>,
    pub(crate) fault_every: Duration,
    pub(crate) sample_every: Duration,
    pub(crate) warmup: Duration,
    /// Keys per client ([`KEYS_PER_CLIENT`]; fewer in the test, whose final reads are quicker).
    pub(crate) keys_per_client: usize,
    /// Clients of the bulk writer (0: none); see [`Bulk`].
    pub(crate) bulk_clients: usize,
}

/// What a run found.
pub(crate) struct Outcome {
    pub(crate) csv: PathBuf,
    pub(crate) png: PathBuf,
    pub(crate) verdict: soak_report::Verdict,
    /// Correctness errors of the load (empty: none).
    pub(crate) errors: Vec<String>,
    pub(crate) summary: String,
}

/// `cargo xtask soak`: [`soak`], then fails if a bound was exceeded or the load saw an error.
pub(crate) fn run(root: &Path, o: &Options) -> Result<()> {
    let outcome = soak(root, o)?;
    println!("{}", outcome.summary);
    // What was written reads back: a CSV of samples and a PNG.
    let csv = std::fs::read_to_string(&outcome.csv).with_context(|| format!("reading {}", outcome.csv.display()))?;
    let rows = soak_report::parse_csv(&csv)?.len();
    let png = std::fs::read(&outcome.png).with_context(|| format!("reading {}", outcome.png.display()))?;
    let (w, h) = soak_report::png_size(&png).with_context(|| format!("{} is not a PNG", outcome.png.display()))?;
    println!("soak: wrote {} ({rows} rows) and {} ({w}x{h})", outcome.csv.display(), outcome.png.display());
    let mut failures = outcome.verdict.exceeded.clone();
    failures.extend(outcome.errors.iter().cloned());
    if !failures.is_empty() {
        bail!("soak failed:\n  {}", failures.join("\n  "));
    }
    println!("soak: passed");
    Ok(())
}

/// Parses a duration: a number and a unit `ms`, `s`, `m` or `h` (`30s`, `1.5m`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().map_err(|_| format!("{text:?}: expected a number and a unit (500ms, 30s, 5m, 1h)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{text:?}: the unit must be ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{text:?}: {e}"))
}

/// Runs the soak and writes its files; the verdict and errors are in the [`Outcome`].
pub(crate) fn soak(root: &Path, o: &Options) -> Result<Outcome> {
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = Arc::clone(&interrupted);
        // A second handler (a test calling twice) is refused: the first one's flag is kept.
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    let bin_dir = match &o.bin_dir {
        Some(dir) => dir.clone(),
        None => {
            let mut build = cargo(root);
            build.args(["build", "--bin", "raftkv", "--bin", "raftkvctl"]);
            if o.release {
                build.arg("--release");
            }
            run_checked(&mut build)?;
            target_dir(root).join(if o.release { "release" } else { "debug" })
        }
    };
    let ctl = bin_dir.join("raftkvctl");
    if !ctl.is_file() || !bin_dir.join("raftkv").is_file() {
        bail!("no raftkv and raftkvctl in {}", bin_dir.display());
    }
    let out = o.out.clone().unwrap_or_else(|| target_dir(root).join("soak"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize().with_context(|| format!("resolving {}", out.display()))?;
    let data_dir = out.join("data");
    let node_args: Vec<String> = NODE_ARGS.iter().map(|s| (*s).to_string()).collect();
    let mut running = cluster::start_with_args(&bin_dir, &data_dir, &interrupted, &node_args)?;
    let ids: Vec<String> = running.nodes_mut().map(|(id, _)| id.to_string()).collect();
    let addrs: Vec<String> = running.nodes_mut().map(|(_, p)| p.grpc_addr.clone()).collect();
    let warmup = o.warmup.min(o.duration / 2);
    println!(
        "soak: {}s of load ({} clients, {} keys of {VALUE_SIZE} B), a fault every {}s, samples every {}s, warm-up {}s; files in {}",
        o.duration.as_secs(),
        CLIENTS,
        CLIENTS * o.keys_per_client,
        o.fault_every.as_secs_f64(),
        o.sample_every.as_secs_f64(),
        warmup.as_secs(),
        out.display()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<(String, Instant)>::new()));
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let mut watch = Watch::start(&ctl, &addrs)?;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let client = Client {
                id: c,
                keys: o.keys_per_client.max(1),
                ctl: ctl.clone(),
                addrs: addrs.clone(),
                stop: Arc::clone(&stop),
                acked: Arc::clone(&acked),
                counters: Arc::clone(&counters),
            };
            thread::spawn(move || client.run())
        })
        .collect();
    let bulk = (o.bulk_clients > 0).then(|| {
        let bulk = Bulk { clients: o.bulk_clients, ctl: ctl.clone(), addrs: addrs.clone(), stop: Arc::clone(&stop) };
        thread::spawn(move || bulk.run())
    });

    let csv = out.join("soak.csv");
    let mut samples = Vec::new();
    let mut fault_times = Vec::new();
    let mut errors = Vec::new();
    let mut fault_log = String::new();
    let mut next_sample = start;
    let mut next_fault = start + o.fault_every;
    let mut fault_no = 0;
    while start.elapsed() < o.duration && !interrupted.load(Ordering::SeqCst) {
        for (id, node) in running.nodes_mut() {
            if let Ok(Some(status)) = node.try_wait() {
                errors.push(format!("{id} exited on its own ({status}) at {:.0}s", start.elapsed().as_secs_f64()));
                if let Err(e) = node.restart(false) {
                    errors.push(format!("restarting {id}: {e}"));
                }
            }
        }
        if watch.check_alive() {
            eprintln!("soak: the watch exited; restarted it");
        }
        if Instant::now() >= next_sample {
            let t = start.elapsed().as_secs_f64();
            for (id, node) in running.nodes_mut() {
                samples.extend(sample(id, node, t));
            }
            // Written as it goes, so that a run cut short still leaves its figures.
            if let Err(e) = std::fs::write(&csv, soak_report::csv(&samples)) {
                errors.push(format!("writing {}: {e}", csv.display()));
            }
            // A fault that held this loop up delays the sample; the missed slots are skipped.
            while next_sample <= Instant::now() {
                next_sample += o.sample_every;
            }
        }
        if Instant::now() >= next_fault {
            let fault = FAULTS[fault_no % FAULTS.len()];
            fault_no += 1;
            let t = start.elapsed().as_secs_f64();
            fault_times.push(t);
            match inject(&mut running, &ctl, &addrs, fault) {
                Ok(what) => {
                    let _ = writeln!(fault_log, "{t:.0}s {what}");
                    eprintln!("soak: {t:.0}s: {what}");
                }
                Err(e) => errors.push(format!("fault {fault:?} at {t:.0}s: {e:#}")),
            }
            next_fault += o.fault_every;
        }
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        match client.join() {
            Ok(mut client_errors) => errors.append(&mut client_errors),
            Err(_) => errors.push("a load client panicked".into()),
        }
    }
    let bulk_runs = bulk.map(|b| b.join().unwrap_or_default());
    // A last sample after the load.
    let t = start.elapsed().as_secs_f64();
    for (id, node) in running.nodes_mut() {
        samples.extend(sample(id, node, t));
    }
    errors.extend(watch.finish(&acked.lock().unwrap_or_else(std::sync::PoisonError::into_inner)));
    let stop_problems = running.stop();

    std::fs::write(&csv, soak_report::csv(&samples)).with_context(|| format!("writing {}", csv.display()))?;
    let png = out.join("soak.png");
    soak_report::plot(&png, &samples, &ids, &fault_times, warmup.as_secs_f64())?;
    let verdict = soak_report::verdict(&samples, &ids, warmup.as_secs_f64());

    let mut summary = String::new();
    let c = &counters;
    let _ = writeln!(
        summary,
        "soak: {:.0}s; puts {} acknowledged, {} unknown; gets {} checked, {} failed; deletes {} acknowledged, {} unknown; watch events {} ({} watch restarts); {} faults",
        start.elapsed().as_secs_f64(),
        c.puts.load(Ordering::Relaxed),
        c.puts_unknown.load(Ordering::Relaxed),
        c.gets.load(Ordering::Relaxed),
        c.gets_failed.load(Ordering::Relaxed),
        c.dels.load(Ordering::Relaxed),
        c.dels_unknown.load(Ordering::Relaxed),
        watch.events.load(Ordering::Relaxed),
        watch.restarts,
        fault_times.len(),
    );
    if let Some((ok, failed)) = bulk_runs {
        let _ = writeln!(
            summary,
            "bulk writer: {} puts acknowledged over {BULK_KEYS} keys in {ok} runs, {failed} runs broken by faults (not checked: it is there for volume)",
            ok * BULK_RUN as u64
        );
    }
    summary.push_str(&fault_log);
    summary.push_str(&soak_report::summary_table(&verdict));
    let colours: Vec<String> =
        ids.iter().zip(soak_report::NODE_COLOURS).map(|(id, (colour, _))| format!("{id} {colour}")).collect();
    let _ = writeln!(
        summary,
        "plot {}: panels RSS, fds, disk (top to bottom), y from 0 to 110 % of each panel's max; {}; grey lines: faults; dashed: end of the warm-up ({}s)",
        png.display(),
        colours.join(", "),
        warmup.as_secs()
    );
    let _ = writeln!(
        summary,
        "bounds after the warm-up: RSS +{} %, fds +{}, disk +{} % + {} MiB (highest after against highest during)",
        soak_report::RSS_GROWTH_MAX_PCT,
        soak_report::FD_GROWTH_MAX,
        soak_report::DISK_GROWTH_MAX_PCT,
        soak_report::DISK_GROWTH_SLACK >> 20
    );
    for p in &stop_problems {
        let _ = writeln!(summary, "stop: {p}");
    }
    let _ = writeln!(
        summary,
        "verdict: {}; correctness errors: {}",
        if verdict.exceeded.is_empty() { "within bounds".to_string() } else { verdict.exceeded.join("; ") },
        if errors.is_empty() { "none".to_string() } else { errors.join("; ") }
    );
    std::fs::write(out.join("summary.txt"), &summary).context("writing summary.txt")?;
    if interrupted.load(Ordering::SeqCst) {
        errors.push("interrupted".into());
    }
    Ok(Outcome { csv, png, verdict, errors, summary })
}

/// One sample of `node`, or none if it is not running.
fn sample(id: &str, node: &NodeProc, t_secs: f64) -> Option<Sample> {
    let pid = node.pid()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Sample { t_secs, node: id.to_string(), pid, rss_kib, fds, disk_bytes: disk_use(&node.data_dir.join(id)) })
}

/// Bytes allocated to the files under `dir` (`st_blocks` × 512); files that vanish while it
/// is walked count as nothing.
fn disk_use(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_use(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// The index of the node that says it is the leader, asking each at its own address.
fn leader(ctl: &Path, addrs: &[String]) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (i, addr) in addrs.iter().enumerate() {
            if let Ok((0, out, _)) = raftkvctl(ctl, std::slice::from_ref(addr), &["-o", "json", "status"]) {
                let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
                if v["state"] == "leader" {
                    return Ok(i);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no node said it was the leader within 30s");
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// Injects `fault`; what it did.
fn inject(running: &mut cluster::Running, ctl: &Path, addrs: &[String], fault: Fault) -> Result<String> {
    let leader = leader(ctl, addrs)?;
    let follower = (leader + 1 + usize::from(rand_u64().is_multiple_of(2))) % addrs.len();
    let target = match fault {
        Fault::KillLeader | Fault::PauseLeader => leader,
        Fault::KillFollower | Fault::PauseFollower => follower,
        Fault::TransferLeader => {
            let (code, out, err) = raftkvctl(ctl, addrs, &["leader", "transfer"])?;
            if code != 0 {
                bail!("`raftkvctl leader transfer` failed: {}", err.trim());
            }
            return Ok(format!("leader transfer: {}", out.trim()));
        }
    };
    let (id, node) = running.nodes_mut().nth(target).context("no such node")?;
    match fault {
        Fault::KillLeader | Fault::KillFollower => {
            let pid = node.pid().unwrap_or_default();
            node.kill();
            thread::sleep(DOWN);
            node.restart(false).with_context(|| format!("restarting {id}"))?;
            Ok(format!("kill -9 {id} (pid {pid}, {fault:?}), restarted as pid {}", node.pid().unwrap_or_default()))
        }
        _ => {
            node.pause();
            thread::sleep(PAUSE);
            node.resume();
            Ok(format!("SIGSTOP {id} for {}s ({fault:?}), SIGCONT", PAUSE.as_secs()))
        }
    }
}

/// Runs `raftkvctl --endpoints ADDRS --command-timeout ARGS`: exit code (-1 if killed),
/// stdout, stderr.
fn raftkvctl(ctl: &Path, addrs: &[String], args: &[&str]) -> Result<(i32, String, String)> {
    let mut child = Command::new(ctl)
        .arg("--endpoints")
        .arg(addrs.join(","))
        .args(["--command-timeout", REQUEST_TIMEOUT])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", ctl.display()))?;
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    let status = proc_harness::wait_with_deadline(&mut child, Instant::now() + CTL_KILL_AFTER)?;
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = |h: thread::JoinHandle<Vec<u8>>| String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned();
    Ok((status.and_then(|s| s.code()).unwrap_or(-1), text(stdout), text(stderr)))
}

/// A pseudo-random number (the load's choices need no reproducibility).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

#[derive(Default)]
struct Counters {
    puts: AtomicU64,
    puts_unknown: AtomicU64,
    gets: AtomicU64,
    gets_failed: AtomicU64,
    dels: AtomicU64,
    dels_unknown: AtomicU64,
}

/// What a key may hold: the last acknowledged value (`None`: absent), and the values of
/// writes whose outcome is unknown, with when they were sent.
#[derive(Default)]
struct KeyModel {
    known: Option<String>,
    unknown: Vec<(Option<String>, Instant)>,
}

impl KeyModel {
    /// Whether `seen` is allowed; if it is an unknown write's value, it becomes the known one.
    fn observe(&mut self, seen: Option<String>) -> bool {
        self.unknown.retain(|(_, at)| at.elapsed() < UNKNOWN_WINDOW);
        if seen == self.known {
            return true;
        }
        if let Some(i) = self.unknown.iter().position(|(v, _)| *v == seen) {
            self.unknown.remove(i);
            self.known = seen;
            return true;
        }
        false
    }

    fn allowed(&self) -> String {
        let show = |v: &Option<String>| v.as_deref().map_or("(absent)".to_string(), token);
        let mut all = vec![show(&self.known)];
        all.extend(self.unknown.iter().map(|(v, _)| format!("{}?", show(v))));
        all.join(", ")
    }
}

/// A value's unique part (`cI-SEQ`), without the padding.
fn token(value: &str) -> String {
    value.split('.').next().unwrap_or(value).to_string()
}

/// The bulk writer: `raftkvctl bench put` over [`BULK_KEYS`] keys, run after run until the
/// load stops. The checked clients start a process per request, a few dozen writes a
/// second; this adds hundreds, so that what is bounded by a count of writes rather than by
/// the data (the request ids the state machine remembers, `fsm::MAX_REQUEST_IDS` entries;
/// the log between two snapshots; the snapshots themselves) reaches its ceiling within the
/// warm-up, and growth after it means a leak. Its values are not checked.
struct Bulk {
    clients: usize,
    ctl: PathBuf,
    addrs: Vec<String>,
    stop: Arc<AtomicBool>,
}

impl Bulk {
    /// Runs until `stop`: the runs that ended well and those that did not.
    fn run(self) -> (u64, u64) {
        let (mut ok, mut failed) = (0, 0);
        let (clients, total, value_size, keys) =
            (self.clients.to_string(), BULK_RUN.to_string(), VALUE_SIZE.to_string(), BULK_KEYS.to_string());
        let mut addrs = self.addrs.clone();
        while !self.stop.load(Ordering::SeqCst) {
            addrs.rotate_left(1);
            let args = [
                "bench",
                "put",
                "--clients",
                &clients,
                "--total",
                &total,
                "--value-size",
                &value_size,
                "--key-space-size",
                &keys,
                "--prefix",
                "soak-bulk",
            ];
            match raftkvctl(&self.ctl, &addrs, &args) {
                Ok((0, _, _)) => ok += 1,
                _ => {
                    failed += 1;
                    // A fault: leave the cluster a moment rather than hammer it with new runs.
                    thread::sleep(Duration::from_millis(500));
                }
            }
        }
        (ok, failed)
    }
}

/// One load client: its own keys, one `raftkvctl` run per request.
struct Client {
    id: usize,
    keys: usize,
    ctl: PathBuf,
    addrs: Vec<String>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, Instant)>>>,
    counters: Arc<Counters>,
}

impl Client {
    /// Runs until `stop`, then reads every key once more; the correctness errors.
    fn run(self) -> Vec<String> {
        let mut keys: Vec<KeyModel> = (0..self.keys).map(|_| KeyModel::default()).collect();
        let mut errors = Vec::new();
        let mut seq = 0_u64;
        while !self.stop.load(Ordering::SeqCst) {
            seq += 1;
            let r = rand_u64();
            let k = (r % self.keys as u64) as usize;
            let key = format!("soak/c{}/k{k}", self.id);
            let addrs = self.rotated(seq);
            match (r >> 32) % 100 {
                0..50 => {
                    let token = format!("c{}-{seq}", self.id);
                    let value = format!("{token}.{}", "x".repeat(VALUE_SIZE.saturating_sub(token.len() + 1)));
                    match raftkvctl(&self.ctl, &addrs, &["put", &key, &value]) {
                        Ok((0, _, _)) => {
                            keys[k].known = Some(value);
                            self.counters.puts.fetch_add(1, Ordering::Relaxed);
                            self.acked
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push((token, Instant::now()));
                        }
                        _ => {
                            keys[k].unknown.push((Some(value), Instant::now()));
                            self.counters.puts_unknown.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                50..85 => {
                    if let Ok(Some(e)) = self.check(&addrs, &key, &mut keys[k]) {
                        errors.push(e);
                    }
                }
                _ => match raftkvctl(&self.ctl, &addrs, &["del", &key]) {
                    Ok((0, _, _)) => {
                        keys[k].known = None;
                        self.counters.dels.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        keys[k].unknown.push((None, Instant::now()));
                        self.counters.dels_unknown.fetch_add(1, Ordering::Relaxed);
                    }
                },
            }
        }
        // The final read of every key, after the faults: retried while the cluster settles.
        for (k, model) in keys.iter_mut().enumerate() {
            let key = format!("soak/c{}/k{k}", self.id);
            let answered = (0..FINAL_READ_ATTEMPTS).find_map(|attempt| {
                let answer = self.check(&self.rotated(attempt), &key, model).ok();
                if answer.is_none() {
                    thread::sleep(Duration::from_secs(1));
                }
                answer
            });
            match answered {
                Some(error) => errors.extend(error),
                None => errors.push(format!("final read of {key}: no answer in {FINAL_READ_ATTEMPTS} attempts")),
            }
        }
        errors
    }

    fn rotated(&self, n: u64) -> Vec<String> {
        let mut addrs = self.addrs.clone();
        let by = (n as usize + self.id) % addrs.len();
        addrs.rotate_left(by);
        addrs
    }

    /// A linearizable get of `key`, checked against `model`: the correctness error, if any;
    /// `Err` if the get had no answer.
    fn check(&self, addrs: &[String], key: &str, model: &mut KeyModel) -> Result<Option<String>, ()> {
        let seen = match raftkvctl(&self.ctl, addrs, &["get", key]) {
            Ok((0, out, _)) => Some(out),
            Ok((1, _, _)) => None,
            _ => {
                self.counters.gets_failed.fetch_add(1, Ordering::Relaxed);
                return Err(());
            }
        };
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        let shown = seen.as_deref().map_or("(absent)".to_string(), token);
        let allowed = model.allowed();
        Ok((!model.observe(seen)).then(|| format!("get {key} returned {shown}; allowed: {allowed}")))
    }
}

/// `raftkvctl watch --prefix soak/`, its events read by a thread.
struct Watch {
    ctl: PathBuf,
    addrs: Vec<String>,
    child: Child,
    reader: Option<thread::JoinHandle<()>>,
    seen: Arc<Mutex<HashSet<String>>>,
    events: Arc<AtomicU64>,
    /// When the current watch process started.
    since: Instant,
    restarts: u64,
}

impl Watch {
    fn start(ctl: &Path, addrs: &[String]) -> Result<Self> {
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let events = Arc::new(AtomicU64::new(0));
        let (child, reader) = Self::spawn(ctl, addrs, &seen, &events)?;
        Ok(Watch {
            ctl: ctl.to_path_buf(),
            addrs: addrs.to_vec(),
            child,
            reader: Some(reader),
            seen,
            events,
            since: Instant::now(),
            restarts: 0,
        })
    }

    fn spawn(
        ctl: &Path,
        addrs: &[String],
        seen: &Arc<Mutex<HashSet<String>>>,
        events: &Arc<AtomicU64>,
    ) -> Result<(Child, thread::JoinHandle<()>)> {
        let mut child = Command::new(ctl)
            .arg("--endpoints")
            .arg(addrs.join(","))
            .args(["watch", "--prefix", "soak/"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting raftkvctl watch")?;
        let stdout = child.stdout.take().context("no stdout of raftkvctl watch")?;
        let (seen, events) = (Arc::clone(seen), Arc::clone(events));
        let reader = thread::spawn(move || {
            // Lines `INDEX PUT KEY VALUE` (or `INDEX DELETE KEY`).
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                events.fetch_add(1, Ordering::Relaxed);
                if let Some(value) = line.split(' ').nth(3) {
                    seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(token(value));
                }
            }
        });
        Ok((child, reader))
    }

    /// Restarts the watch if it exited; whether it did.
    fn check_alive(&mut self) -> bool {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            return false;
        }
        if let Ok((child, reader)) = Self::spawn(&self.ctl, &self.addrs, &self.seen, &self.events) {
            self.child = child;
            self.reader = Some(reader);
            self.since = Instant::now();
            self.restarts += 1;
        }
        true
    }

    /// Waits until every put acknowledged while this watch process ran (from 2 s after its
    /// start) has been delivered, up to [`WATCH_CATCH_UP`]; stops the watch; the errors.
    fn finish(&mut self, acked: &[(String, Instant)]) -> Vec<String> {
        let from = self.since + Duration::from_secs(2);
        let expected: Vec<&String> = acked.iter().filter(|(_, at)| *at > from).map(|(t, _)| t).collect();
        let deadline = Instant::now() + WATCH_CATCH_UP;
        let missing = loop {
            let seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let missing: Vec<&String> = expected.iter().copied().filter(|t| !seen.contains(*t)).collect();
            drop(seen);
            if missing.is_empty() || Instant::now() > deadline {
                break missing;
            }
            thread::sleep(Duration::from_millis(200));
        };
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let mut errors = Vec::new();
        if expected.is_empty() {
            errors.push("the watch had no acknowledged put to check".to_string());
        }
        if !missing.is_empty() {
            let some: Vec<&str> = missing.iter().take(5).map(|s| s.as_str()).collect();
            errors.push(format!(
                "the watch missed {} of {} acknowledged puts (e.g. {})",
                missing.len(),
                expected.len(),
                some.join(", ")
            ));
        }
        errors
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn durations_parse_with_their_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("30").expect_err("should fail").contains("unit"));
        assert!(parse_duration("s").expect_err("should fail").contains("expected a number"));
    }

    #[test]
    fn a_key_model_allows_the_acknowledged_value_and_unknown_writes_only() {
        let mut m = KeyModel::default();
        assert!(m.observe(None));
        m.known = Some("c0-1.x".into());
        assert!(!m.observe(None), "an acknowledged put lost");
        m.unknown.push((Some("c0-2.x".into()), Instant::now()));
        assert!(m.observe(Some("c0-1.x".into())));
        assert!(m.observe(Some("c0-2.x".into())), "an unknown write took effect");
        assert_eq!(m.known.as_deref(), Some("c0-2.x"));
        assert!(!m.observe(Some("c0-1.x".into())), "back to an overwritten value");
        assert_eq!(m.allowed(), "c0-2");
    }

    /// A real run, short: three nodes, load on 24 keys, faults every 5 s, samples every 2 s; the CSV has
    /// rows for every node, the plot is a PNG, and the load saw no correctness error.
    #[test]
    fn a_short_soak_writes_rows_for_every_node_and_a_png() {
        let root = crate::workspace_root().expect("should succeed");
        let bin_dir = std::env::var_os("RAFTKV_BIN_DIR").map_or_else(|| target_dir(&root).join("debug"), PathBuf::from);
        let out = tempfile_dir("xtask-soak-test");
        let o = Options {
            duration: Duration::from_secs(16),
            out: Some(out.clone()),
            release: false,
            bin_dir: Some(bin_dir),
            fault_every: Duration::from_secs(5),
            sample_every: Duration::from_secs(2),
            warmup: Duration::from_secs(8),
            keys_per_client: 8,
            bulk_clients: 1,
        };
        let outcome = soak(&root, &o).expect("should succeed");
        assert!(outcome.errors.is_empty(), "{:?}\n{}", outcome.errors, outcome.summary);
        let samples = soak_report::parse_csv(&std::fs::read_to_string(&outcome.csv).expect("should succeed"))
            .expect("should succeed");
        let mut rows: HashMap<&str, usize> = HashMap::new();
        for s in &samples {
            *rows.entry(s.node.as_str()).or_default() += 1;
            assert!(s.rss_kib > 0 && s.fds > 0 && s.disk_bytes > 0, "{s:?}");
        }
        // One row per node per sample round: at the start, at least two while the load runs
        // (faults hold the sampling loop up for seconds on a busy machine), one at the end.
        let rounds = rows.get("nodeA").copied().unwrap_or(0);
        assert!(rounds >= 4, "{rows:?}");
        for node in ["nodeB", "nodeC"] {
            assert_eq!(rows.get(node).copied(), Some(rounds), "{rows:?}");
        }
        assert_eq!(soak_report::png_size(&std::fs::read(&outcome.png).expect("should succeed")), Some((1200, 900)));
        assert_eq!(outcome.verdict.nodes.len(), 3, "{}", outcome.summary);
        assert!(outcome.summary.contains("kill -9"), "{}", outcome.summary);
        assert!(outcome.summary.contains("bulk writer: "), "{}", outcome.summary);
        std::fs::remove_dir_all(&out).expect("should succeed");
    }

    fn tempfile_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("should succeed");
        dir
    }
}
