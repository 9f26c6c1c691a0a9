//! etcd's Watch service and `KV.Compact` through Debian's `etcdctl` (API 3), against a
//! three-node raftkv (`crates/etcd-api`) and against a real three-member etcd 3.4 started by the
//! test, outputs compared field by field (revisions excepted: raftkv's revision is its Raft log
//! index, which counts entries etcd does not have).
//!
//! Ignored by default, as `etcd.rs`: a fresh machine has no etcd. CI runs them with
//! `--run-ignored only -E 'test(/^etcd/)'`.

#![allow(clippy::print_stderr)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tests::{BoxError, Cluster, FAST_TIMING, TestResult, wait_for};

use crate::etcd::{etcdctl, etcdctl_run, on_path, started_etcd};

/// The header revision of `etcdctl put KEY VALUE -w json`.
fn put_rev(endpoints: &str, key: &str, value: &str) -> Result<i64, BoxError> {
    let json: Value = serde_json::from_str(&etcdctl(endpoints, &["put", key, value, "-w", "json"])?)?;
    json["header"]["revision"].as_i64().ok_or_else(|| format!("no revision in {json}").into())
}

/// A running `etcdctl watch`: its stdout and stderr lines as they come, stopped by PID
/// when dropped.
struct Watching {
    child: Child,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
}

impl Watching {
    fn start(endpoints: &str, args: &[&str]) -> Result<Self, BoxError> {
        let mut child = Command::new(on_path("etcdctl")?)
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(endpoints)
            .arg("watch")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let collect = |pipe: Box<dyn std::io::Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(line);
                }
            });
            lines
        };
        let out = collect(Box::new(child.stdout.take().ok_or("no stdout")?));
        let err = collect(Box::new(child.stderr.take().ok_or("no stderr")?));
        Ok(Self { child, out, err })
    }

    fn lines(&self) -> Vec<String> {
        self.out.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn errors(&self) -> Vec<String> {
        self.err.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Waits until stdout has at least `n` lines; returns them.
    async fn until(&self, n: usize) -> Result<Vec<String>, BoxError> {
        let waited = wait_for(&format!("{n} lines of etcdctl watch"), Duration::from_secs(30), || async {
            self.lines().len() >= n
        })
        .await;
        if let Err(e) = waited {
            return Err(format!("{e}: stdout {:?}, stderr {:?}", self.lines(), self.errors()).into());
        }
        Ok(self.lines())
    }

    /// Waits for etcdctl to exit by itself; its stderr.
    async fn exited(&mut self) -> Result<Vec<String>, BoxError> {
        let mut done = false;
        wait_for("etcdctl watch to exit", Duration::from_secs(30), || {
            done = done || self.child.try_wait().ok().flatten().is_some();
            let d = done;
            async move { d }
        })
        .await?;
        // The reader threads may still hold the last lines for a moment.
        let err = self.err.clone();
        wait_for("etcdctl's stderr", Duration::from_secs(5), || {
            let n = err.lock().map(|e| e.len()).unwrap_or(0);
            async move { n > 0 }
        })
        .await?;
        Ok(self.errors())
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same writes on raftkv and on etcd; the revision of each.
fn writes(endpoints: &str) -> Result<Vec<i64>, BoxError> {
    let mut revs = Vec::new();
    for args in [
        &["put", "w/a", "1"][..],
        &["put", "w/b", "2"],
        &["put", "w/a", "3"],
        &["put", "x/out", "9"],
        &["del", "w/b"],
        &["put", "w/c", "4"],
        &["del", "w/", "--prefix"],
    ] {
        let mut all = args.to_vec();
        all.extend(["-w", "json"]);
        let json: Value = serde_json::from_str(&etcdctl(endpoints, &all)?)?;
        revs.push(json["header"]["revision"].as_i64().ok_or_else(|| format!("no revision in {json}"))?);
    }
    Ok(revs)
}

/// The events of `watch -w json` lines: type, key, value, version, create == mod (a
/// creation), and the prev_kv's value and version (revisions differ by design).
fn json_events(lines: &[String]) -> Result<Vec<Value>, BoxError> {
    let mut out = Vec::new();
    for line in lines {
        let resp: Value = serde_json::from_str(line)?;
        for e in resp["Events"].as_array().into_iter().flatten() {
            let kv = &e["kv"];
            out.push(serde_json::json!({
                "type": e["type"],
                "key": kv["key"],
                "value": kv["value"],
                "version": kv["version"],
                "created": kv["create_revision"] == kv["mod_revision"],
                "prev_value": e["prev_kv"]["value"],
                "prev_version": e["prev_kv"]["version"],
            }));
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs etcd 3.4 (Debian etcd-server/etcd-client; CI installs it)"]
async fn etcdctl_watch_and_compact_match_etcd() -> TestResult {
    let etcd = started_etcd().await?;
    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    // Through a follower: the watch is served from its own history, writes are forwarded.
    let ours = cluster.nodes[(leader + 1) % 3].grpc_addr.clone();
    let theirs = etcd.endpoints();
    let (wo, wt) = (writes(&ours)?, writes(&theirs)?);
    let revs = [wo[0], wt[0]];

    // watch --rev --prefix --prev-kv: the same events, in the same order, on both. Seven
    // events of three lines each (type, key, value), plus the prev_kv's two when there is one.
    let simple = |endpoint: &str, rev: i64| -> Result<Watching, BoxError> {
        Watching::start(endpoint, &["--rev", &rev.to_string(), "--prefix", "w/", "--prev-kv"])
    };
    let (o, t) = (simple(&ours, revs[0])?, simple(&theirs, revs[1])?);
    let expected = 7 * 3 + 4 * 2;
    let (o, t) = (o.until(expected).await?, t.until(expected).await?);
    assert_eq!(o, t, "watch --prefix --prev-kv: raftkv (left) and etcd (right) differ");
    assert_eq!(o[..5], ["PUT", "w/a", "1", "PUT", "w/b"], "{o:?}");
    eprintln!("etcdctl watch --rev --prefix --prev-kv, raftkv and etcd alike:\n{}", o.join("\n"));

    // -w json, field by field: versions, creations and prev_kv as etcd reports them.
    let json = |endpoint: &str, rev: i64| -> Result<Watching, BoxError> {
        Watching::start(endpoint, &["--rev", &rev.to_string(), "--prefix", "w/", "--prev-kv", "-w", "json"])
    };
    let (o, t) = (json(&ours, revs[0])?, json(&theirs, revs[1])?);
    let count = |w: &Watching| json_events(&w.lines()).map(|e| e.len()).unwrap_or(0);
    wait_for("json watch events", Duration::from_secs(30), || async { count(&o) >= 7 && count(&t) >= 7 }).await?;
    let (oe, te) = (json_events(&o.lines())?, json_events(&t.lines())?);
    assert_eq!(oe, te, "watch -w json: raftkv (left) and etcd (right) differ");
    // Revisions: ascending, the first the one asked for, headers filled in.
    let first: Value = serde_json::from_str(o.lines().first().ok_or("no json line")?)?;
    assert_eq!(first["Events"][0]["kv"]["mod_revision"].as_i64(), Some(revs[0]), "{first}");
    assert!(first["Header"]["member_id"].as_u64().is_some_and(|m| m != 0), "{first}");
    assert!(first["Header"]["raft_term"].as_u64().is_some_and(|t| t >= 1), "{first}");

    // One key, and a range [w/a, w/c), without prev_kv.
    for args in [&["w/a"][..], &["w/a", "w/c"][..]] {
        let run = |endpoint: &str, rev: i64| -> Result<Watching, BoxError> {
            let mut all = vec!["--rev".to_string(), rev.to_string()];
            all.extend(args.iter().map(|s| (*s).to_string()));
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            Watching::start(endpoint, &all)
        };
        let lines = if args.len() == 1 { 3 * 3 } else { 5 * 3 };
        let (o, t) = (run(&ours, revs[0])?, run(&theirs, revs[1])?);
        assert_eq!(o.until(lines).await?, t.until(lines).await?, "watch {args:?}");
    }

    // Compaction: `compact` answers alike; a watch from before it is cancelled with etcd's
    // compacted error; one from the compaction point on still replays; a read from before
    // it is refused.
    // At the third write (the second put of w/a).
    let at = [wo[2], wt[2]];
    let (co, ct) =
        (etcdctl(&ours, &["compact", &at[0].to_string()])?, etcdctl(&theirs, &["compact", &at[1].to_string()])?);
    assert_eq!(co, format!("compacted revision {}\n", at[0]));
    assert_eq!(ct, format!("compacted revision {}\n", at[1]));
    let mut old_o = Watching::start(&ours, &["--rev", &revs[0].to_string(), "--prefix", "w/"])?;
    let mut old_t = Watching::start(&theirs, &["--rev", &revs[1].to_string(), "--prefix", "w/"])?;
    let (eo, et) = (old_o.exited().await?, old_t.exited().await?);
    let canceled = |e: &[String]| e.iter().find(|l| l.starts_with("watch was canceled")).cloned();
    assert_eq!(canceled(&eo), canceled(&et), "raftkv {eo:?}, etcd {et:?}");
    assert_eq!(
        canceled(&eo).as_deref(),
        Some("watch was canceled (etcdserver: mvcc: required revision has been compacted)"),
        "{eo:?}"
    );
    eprintln!("etcdctl watch from before a compaction: raftkv {eo:?}, etcd {et:?}");
    let from = |endpoint: &str, rev: i64| Watching::start(endpoint, &["--rev", &rev.to_string(), "--prefix", "w/"]);
    let (o, t) = (from(&ours, at[0])?, from(&theirs, at[1])?);
    assert_eq!(o.until(5 * 3).await?, t.until(5 * 3).await?, "watch from the compaction point");
    let refused = |endpoint: &str, args: &[&str]| -> Result<String, BoxError> {
        let out = etcdctl_run(endpoint, args, "")?;
        assert!(!out.ok, "etcdctl {args:?} should fail: {out:?}");
        Ok(out.stderr.lines().find(|l| l.starts_with("Error:")).unwrap_or_default().to_string())
    };
    let (ro, rt) = (
        refused(&ours, &["get", "x/out", "--rev", &(at[0] - 1).to_string()])?,
        refused(&theirs, &["get", "x/out", "--rev", &(at[1] - 1).to_string()])?,
    );
    assert_eq!(
        (ro.as_str(), rt.as_str()),
        ("Error: etcdserver: mvcc: required revision has been compacted", ro.as_str())
    );
    for (o, t) in [(at[0].to_string(), at[1].to_string()), ("1000000".to_string(), "1000000".to_string())] {
        let (ro, rt) = (refused(&ours, &["compact", &o])?, refused(&theirs, &["compact", &t])?);
        assert_eq!(ro, rt, "compact {o}/{t}");
        eprintln!("compact {o}: {ro}");
    }
    // Every node compacted at the same point of the log.
    for node in &cluster.nodes {
        let e = refused(&node.grpc_addr, &["get", "x/out", "--rev", &(at[0] - 1).to_string()])?;
        assert_eq!(e, "Error: etcdserver: mvcc: required revision has been compacted", "node {}", node.id);
    }
    Ok(())
}

/// The node whose `raftkv_watchers` gauge is at least one.
fn watching_node(cluster: &Cluster) -> Result<Option<usize>, BoxError> {
    for (i, node) in cluster.nodes.iter().enumerate() {
        let Some(addr) = &node.metrics_addr else { return Err(format!("{} has no metrics address", node.id).into()) };
        let Ok((200, body)) = tests::cdp::http_get_status(addr, "/metrics") else { continue };
        let watchers = body
            .lines()
            .find_map(|l| l.strip_prefix("raftkv_watchers "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if watchers >= 1.0 {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs etcd 3.4 (Debian etcd-server/etcd-client; CI installs it)"]
async fn an_etcdctl_watch_survives_a_leader_kill() -> TestResult {
    let mut args = FAST_TIMING.to_vec();
    args.extend(["--metrics-addr", "127.0.0.1:0"]);
    let mut cluster = Cluster::start(3, &args).await?;
    let all = cluster.endpoints().join(",");
    let first = put_rev(&all, "k/00", "v0")?;
    let watch = Watching::start(&all, &["--rev", &first.to_string(), "--prefix", "k/"])?;
    for i in 1..=5 {
        etcdctl(&all, &["put", &format!("k/{i:02}"), &format!("v{i}")])?;
    }
    watch.until(6 * 3).await?;

    // The node serving the watch leads, then is killed (-9, by PID).
    let mut serving = None;
    wait_for("the node serving the watch", Duration::from_secs(10), || {
        serving = watching_node(&cluster).ok().flatten();
        let found = serving.is_some();
        async move { found }
    })
    .await?;
    let serving = serving.ok_or("no node serves the watch")?;
    let id = cluster.nodes[serving].id.clone();
    if cluster.leader().await != Some(serving) {
        cluster.client()?.transfer_leader(Some(&id), Duration::from_secs(30)).await?;
    }
    wait_for("the watch's node to lead", Duration::from_secs(30), || async { cluster.leader().await == Some(serving) })
        .await?;
    cluster.nodes[serving].kill();
    eprintln!("killed leader {id}, which served the etcdctl watch");

    let survivors: Vec<String> =
        cluster.nodes.iter().filter(|n| n.pid().is_some()).map(|n| n.grpc_addr.clone()).collect();
    let survivors = survivors.join(",");
    wait_for("a new leader", Duration::from_secs(30), || async {
        cluster.leader().await.is_some_and(|l| l != serving)
    })
    .await?;
    for i in 6..=10 {
        etcdctl(&survivors, &["put", &format!("k/{i:02}"), &format!("v{i}")])?;
    }
    let lines = watch.until(11 * 3).await?;
    // No lost and no repeated event: exactly k/00..k/10, once each, in order.
    let expected: Vec<String> =
        (0..=10).flat_map(|i| ["PUT".to_string(), format!("k/{i:02}"), format!("v{i}")]).collect();
    // Anything more would be a repeat: give it a moment to show.
    etcdctl(&survivors, &["put", "k/zz", "end"])?;
    let lines_end = watch.until(12 * 3).await?;
    assert_eq!(lines_end[..lines.len()], lines[..], "the watch output changed under us");
    assert_eq!(lines_end[..33], expected[..], "events lost or repeated across the leader kill");
    assert_eq!(lines_end[33..], ["PUT", "k/zz", "end"], "{lines_end:?}");
    assert_eq!(lines_end.len(), 36, "{lines_end:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs etcd 3.4 (Debian etcd-server/etcd-client; CI installs it)"]
async fn an_open_etcd_watch_does_not_hold_up_a_graceful_stop() -> TestResult {
    let mut extra = FAST_TIMING.to_vec();
    extra.extend(["--shutdown_grace", "60s"]);
    let mut cluster = Cluster::start(1, &extra).await?;
    let ep = cluster.nodes[0].grpc_addr.clone();
    let rev = put_rev(&ep, "s", "1")?;
    let watch = Watching::start(&ep, &["--rev", &rev.to_string(), "s"])?;
    watch.until(3).await?;
    let started = std::time::Instant::now();
    let node = &mut cluster.nodes[0];
    assert!(node.stop(), "the node did not stop cleanly; log:\n{}", node.log_tail());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "stopping took {took:?}: the drain waited for the etcd watch stream");
    eprintln!("stopped with an open etcd watch stream in {took:?}");
    Ok(())
}

/// What Debian's `python3-etcd3` (0.12, grpcio) does against raftkv, unchanged: put, get,
/// a transaction, a prefix watch (created, then three events), get_prefix. Its leases are in
/// `etcd_lease.rs`.
const PYTHON_ETCD3: &str = r#"
import os, sys, threading
threading.Timer(30, lambda: (print("timed out", flush=True), os._exit(2))).start()
import etcd3
host, port = sys.argv[1].rsplit(":", 1)
c = etcd3.client(host=host, port=int(port), timeout=10)
c.put("py/a", "1")
value, meta = c.get("py/a")
assert value == b"1" and meta.version == 1, (value, meta.version)
events, cancel = c.watch_prefix("py/")
ok, _ = c.transaction(
    compare=[c.transactions.value("py/a") == "1"],
    success=[c.transactions.put("py/b", "2")],
    failure=[c.transactions.put("py/b", "x")],
)
assert ok, "the compare holds"
c.put("py/c", "3")
c.delete("py/a")
got = []
for ev in events:
    got.append((type(ev).__name__, ev.key.decode(), ev.value.decode()))
    if len(got) == 3:
        break
cancel()
assert got == [("PutEvent", "py/b", "2"), ("PutEvent", "py/c", "3"), ("DeleteEvent", "py/a", "")], got
keys = sorted((m.key.decode(), v.decode()) for v, m in c.get_prefix("py/"))
assert keys == [("py/b", "2"), ("py/c", "3")], keys
print("ok", flush=True)
os._exit(0)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs etcd 3.4 (Debian etcd-server/etcd-client; CI installs it)"]
async fn pythons_etcd3_client_puts_gets_txns_and_watches_against_raftkv() -> TestResult {
    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    let follower = &cluster.nodes[(leader + 1) % 3];
    let python = Path::new("/usr/bin/python3");
    let probe = Command::new(python).args(["-c", "import etcd3"]).output()?;
    if !probe.status.success() {
        return Err("python3-etcd3 is missing: apt-get install python3-etcd3 (.ci/run installs it)".into());
    }
    let out = Command::new(python).args(["-c", PYTHON_ETCD3, &follower.grpc_addr]).stdin(Stdio::null()).output()?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.trim() == "ok", "python3-etcd3: {stdout}\n{stderr}");
    Ok(())
}
