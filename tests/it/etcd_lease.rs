//! etcd's Lease service through Debian's `etcdctl` (API 3) and `python3-etcd3`, against a
//! three-node raftkv (`crates/etcd-api`'s `lease`), and, for the outputs, against a real
//! three-member etcd 3.4 started by the test (lease ids and remaining seconds excepted;
//! expiry and revoke are checked on each of its members too).
//!
//! What is proved: grant, put with a lease, time-to-live with keys, list, keep-alive through
//! a follower past the TTL, then expiry on every member (decided by the leader, applied
//! through the log); revoke deletes the keys at once on every member; a leader kill does not
//! expire a lease early (the new leader gives every lease its full TTL).
//!
//! Ignored by default, as `etcd.rs`: a fresh machine has no etcd. CI runs them with
//! `--run-ignored only -E 'test(/^etcd/)'`.

#![allow(clippy::print_stderr)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{BoxError, Cluster, FAST_TIMING, TestResult, wait_for};

use crate::etcd::{error_line, etcdctl, etcdctl_run, on_path, started_etcd};

/// `etcdctl lease grant TTL`: the lease id (hex, as etcdctl prints and takes it) and the
/// output with the id replaced by `ID`.
fn grant(endpoints: &str, ttl: &str) -> Result<(String, String), BoxError> {
    let out = etcdctl(endpoints, &["lease", "grant", ttl])?;
    // "lease 694d7c9a8f8e1d0b granted with TTL(3s)"
    let id = out.split_whitespace().nth(1).ok_or_else(|| format!("no lease id in {out:?}"))?.to_string();
    Ok((id.clone(), out.replace(&id, "ID")))
}

/// The output with the lease id replaced by `ID` and any `remaining(Ns)` by `remaining(?)`.
fn normal(out: &str, id: &str) -> String {
    let out = out.replace(id, "ID");
    match (out.find("remaining("), out.find("s), attached")) {
        (Some(a), Some(b)) if a < b => format!("{}remaining(?{}", &out[..a], &out[b..]),
        _ => out,
    }
}

/// The remaining seconds `etcdctl lease timetolive` prints.
fn remaining(out: &str) -> Option<i64> {
    let start = out.find("remaining(")? + "remaining(".len();
    let end = start + out[start..].find('s')?;
    out[start..end].parse().ok()
}

/// Whether `key` exists on the member at `endpoint`, read from its own state (serializable).
fn present_on(endpoint: &str, key: &str) -> Result<bool, BoxError> {
    Ok(!etcdctl(endpoint, &["get", key, "--consistency=s", "--print-value-only"])?.is_empty())
}

/// A running `etcdctl lease keep-alive ID`, stopped by PID when dropped.
struct KeepAlive(Option<Child>);

impl KeepAlive {
    fn start(endpoints: &str, id: &str) -> Result<Self, BoxError> {
        let child = Command::new(on_path("etcdctl")?)
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoints, "lease", "keep-alive", id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self(Some(child)))
    }

    /// Stops it (by PID) and returns its first stdout line.
    fn stop(mut self) -> Result<String, BoxError> {
        let mut child = self.0.take().ok_or("already stopped")?;
        child.kill()?;
        let out = child.wait_with_output()?;
        Ok(String::from_utf8(out.stdout)?.lines().next().unwrap_or_default().to_string())
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs etcd 3.4 (Debian etcd-server/etcd-client; CI installs it)"]
async fn etcdctl_leases_match_etcd_and_expire_on_every_member() -> TestResult {
    let etcd = started_etcd().await?;
    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    // Through a follower: grants, revokes and keep-alives go to the leader.
    let ours = cluster.nodes[(leader + 1) % 3].grpc_addr.clone();
    let theirs = etcd.endpoints();
    let members: Vec<String> = cluster.endpoints();
    let etcd_members: Vec<String> = etcd.members.iter().map(|m| m.endpoint.clone()).collect();

    // grant, put --lease, timetolive --keys, list, get -w json: as etcd answers.
    let (our_id, our_grant) = grant(&ours, "3")?;
    let (their_id, their_grant) = grant(&theirs, "3")?;
    assert_eq!(our_grant, their_grant);
    assert_eq!(our_grant, "lease ID granted with TTL(3s)\n");
    for (e, id) in [(&ours, &our_id), (&theirs, &their_id)] {
        assert_eq!(etcdctl(e, &["put", "--lease", id, "l/k", "v"])?, "OK\n");
    }
    let ttl = |e: &str, id: &str| etcdctl(e, &["lease", "timetolive", id, "--keys"]);
    let (o, t) = (ttl(&ours, &our_id)?, ttl(&theirs, &their_id)?);
    assert_eq!(normal(&o, &our_id), normal(&t, &their_id), "raftkv {o} etcd {t}");
    assert_eq!(normal(&o, &our_id), "lease ID granted with TTL(3s), remaining(?s), attached keys([l/k])\n");
    assert!(remaining(&o).is_some_and(|r| (0..=3).contains(&r)), "{o}");
    let list =
        |e: &str, id: &str| -> Result<String, BoxError> { Ok(etcdctl(e, &["lease", "list"])?.replace(id, "ID")) };
    assert_eq!(list(&ours, &our_id)?, list(&theirs, &their_id)?);
    assert_eq!(list(&ours, &our_id)?, "found 1 leases\nID\n");
    let lease_of = |e: &str| -> Result<i64, BoxError> {
        let json: Value = serde_json::from_str(&etcdctl(e, &["get", "l/k", "-w", "json"])?)?;
        json["kvs"][0]["lease"].as_i64().ok_or_else(|| format!("no lease in {json}").into())
    };
    assert_eq!(format!("{:016x}", lease_of(&ours)?), our_id);
    assert_eq!(format!("{:016x}", lease_of(&theirs)?), their_id);
    // A put with --ignore-lease keeps the key's lease; a plain put would detach it.
    for e in [&ours, &theirs] {
        assert_eq!(etcdctl(e, &["put", "--ignore-lease", "l/k", "v2"])?, "OK\n");
    }
    assert_eq!(format!("{:016x}", lease_of(&ours)?), our_id);
    assert_eq!(format!("{:016x}", lease_of(&theirs)?), their_id);

    // keep-alive (through a follower) keeps the key past its TTL.
    let keep = [KeepAlive::start(&ours, &our_id)?, KeepAlive::start(&theirs, &their_id)?];
    let kept_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < kept_until {
        for m in &members {
            assert!(present_on(m, "l/k")?, "{m} lost l/k while it was kept alive");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let [k_ours, k_theirs] = keep;
    let (line_ours, line_theirs) = (k_ours.stop()?, k_theirs.stop()?);
    assert_eq!(line_ours.replace(&our_id, "ID"), line_theirs.replace(&their_id, "ID"));
    assert_eq!(line_ours.replace(&our_id, "ID"), "lease ID keepalived with TTL(3)");

    // Then it expires: the key disappears on every member (a delete through the log).
    let stopped = Instant::now();
    for m in &members {
        wait_for("the expired lease's key to go", Duration::from_secs(15), || {
            let m = m.clone();
            async move { present_on(&m, "l/k").is_ok_and(|p| !p) }
        })
        .await?;
    }
    eprintln!("the lease expired on every member {:?} after its last keep-alive", stopped.elapsed());
    for m in &etcd_members {
        wait_for("etcd's lease to expire on each member", Duration::from_secs(15), || {
            let m = m.clone();
            async move { present_on(&m, "l/k").is_ok_and(|p| !p) }
        })
        .await?;
    }
    let (o, t) = (ttl(&ours, &our_id)?, ttl(&theirs, &their_id)?);
    assert_eq!(o.replace(&our_id, "ID"), t.replace(&their_id, "ID"));
    assert_eq!(o.replace(&our_id, "ID"), "lease ID already expired\n");
    assert_eq!(list(&ours, &our_id)?, "found 0 leases\n");

    // revoke deletes the attached keys at once (a linearizable read on every member).
    let (id, _) = grant(&ours, "60")?;
    let (their_id, _) = grant(&theirs, "60")?;
    for (e, id) in [(&ours, &id), (&theirs, &their_id)] {
        for k in ["r/1", "r/2"] {
            etcdctl(e, &["put", "--lease", id, k, "v"])?;
        }
        etcdctl(e, &["put", "r/3", "unleased"])?;
    }
    let (o, t) = (etcdctl(&ours, &["lease", "revoke", &id])?, etcdctl(&theirs, &["lease", "revoke", &their_id])?);
    assert_eq!(o.replace(&id, "ID"), t.replace(&their_id, "ID"));
    assert_eq!(o.replace(&id, "ID"), "lease ID revoked\n");
    for m in members.iter().chain(&etcd_members) {
        assert_eq!(etcdctl(m, &["get", "r/", "--prefix", "--keys-only"])?, "r/3\n\n", "on {m}");
    }

    // etcd's errors, word for word.
    for args in [
        vec!["put", "--ignore-lease", "r/missing", "v"],
        vec!["lease", "revoke", id.as_str()],
        vec!["put", "--lease", id.as_str(), "r/4", "v"],
        vec!["lease", "grant", "9000000001"],
    ] {
        let (o, t) = (etcdctl_run(&ours, &args, "")?, etcdctl_run(&theirs, &args, "")?);
        assert!(!o.ok && !t.ok, "{args:?}: raftkv {o:?} etcd {t:?}");
        // etcd's answer names its own lease id only in messages that do not carry one.
        assert_eq!(error_line(&o), error_line(&t), "{args:?}");
    }
    let o = etcdctl(&ours, &["lease", "timetolive", "123"])?;
    let t = etcdctl(&theirs, &["lease", "timetolive", "123"])?;
    assert_eq!(o, t);
    assert!(o.ends_with(" already expired\n"), "{o}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs etcd 3.4 (Debian etcd-server/etcd-client; CI installs it)"]
async fn etcd_leases_outlive_a_leader_kill() -> TestResult {
    on_path("etcdctl")?;
    let mut cluster = Cluster::start(3, &FAST_TIMING).await?;
    let all = cluster.endpoints().join(",");
    let ttl = 4;
    let (id, _) = grant(&all, &ttl.to_string())?;
    etcdctl(&all, &["put", "--lease", &id, "lk", "v"])?;
    let granted = Instant::now();
    let leader = cluster.leader().await.ok_or("no leader")?;
    // Most of the TTL passes, then the leader dies (-9, by PID).
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.nodes[leader].kill();
    let killed = Instant::now();
    wait_for("a new leader", Duration::from_secs(30), || async { cluster.leader().await.is_some_and(|l| l != leader) })
        .await?;
    let survivors: Vec<String> =
        cluster.nodes.iter().filter(|n| n.pid().is_some()).map(|n| n.grpc_addr.clone()).collect();
    let until = killed + Duration::from_secs(ttl);
    // Past the original deadline (granted + TTL), until the kill + TTL: the new leader gave
    // the lease its full TTL when it took over, so the key is still there.
    assert!(granted + Duration::from_secs(ttl) < until);
    while Instant::now() + Duration::from_millis(300) < until {
        for m in &survivors {
            assert!(
                present_on(m, "lk")?,
                "{m} lost lk {:?} after the kill ({:?} after the grant): expired early",
                killed.elapsed(),
                granted.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // And it does expire, with no keep-alive, on every survivor.
    for m in &survivors {
        wait_for("the lease to expire after the leader change", Duration::from_secs(15), || {
            let m = m.clone();
            async move { present_on(&m, "lk").is_ok_and(|p| !p) }
        })
        .await?;
    }
    eprintln!("expired {:?} after the leader kill (TTL {ttl}s)", killed.elapsed());
    Ok(())
}

/// What Debian's `python3-etcd3` (0.12, grpcio) does with a lease against raftkv, unchanged:
/// grant, put with it, refresh (a keep-alive), remaining and granted TTL, keys, a second
/// grant of the same id (refused), revoke. The same script runs against etcd first, so what
/// it expects is etcd's behaviour.
const PYTHON_LEASE: &str = r#"
import os, sys, threading
threading.Timer(30, lambda: (print("timed out", flush=True), os._exit(2))).start()
import etcd3
host, port = sys.argv[1].rsplit(":", 1)
c = etcd3.client(host=host, port=int(port), timeout=10)
lease = c.lease(5)
assert lease.id > 0, lease.id
c.put("pyl/a", "1", lease=lease)
c.put("pyl/b", "2", lease=lease)
value, meta = c.get("pyl/a")
assert value == b"1" and meta.lease_id == lease.id, (value, meta.lease_id)
refreshed = lease.refresh()
assert refreshed[0].ID == lease.id and refreshed[0].TTL == 5, refreshed
assert 0 <= lease.remaining_ttl <= 5, lease.remaining_ttl
assert lease.granted_ttl == 5, lease.granted_ttl
assert sorted(lease.keys) == [b"pyl/a", b"pyl/b"], lease.keys
try:
    c.lease(5, lease_id=lease.id)
    raise SystemExit("a second grant of the same id was accepted")
except etcd3.exceptions.PreconditionFailedError:
    pass  # FAILED_PRECONDITION "etcdserver: lease already exists"
lease.revoke()
assert c.get("pyl/a") == (None, None)
assert lease.remaining_ttl == -1, lease.remaining_ttl
print("ok", flush=True)
os._exit(0)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs etcd 3.4 (Debian etcd-server/etcd-client; CI installs it)"]
async fn pythons_etcd3_client_uses_a_lease_against_raftkv() -> TestResult {
    let etcd = started_etcd().await?;
    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    let follower = &cluster.nodes[(leader + 1) % 3];
    let python = Path::new("/usr/bin/python3");
    let probe = Command::new(python).args(["-c", "import etcd3"]).output()?;
    if !probe.status.success() {
        return Err("python3-etcd3 is missing: apt-get install python3-etcd3 (.ci/run installs it)".into());
    }
    for (who, endpoint) in [("etcd", &etcd.members[0].endpoint), ("raftkv", &follower.grpc_addr)] {
        let out = Command::new(python).args(["-c", PYTHON_LEASE, endpoint]).stdin(Stdio::null()).output()?;
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && stdout.trim() == "ok", "python3-etcd3 against {who}: {stdout}\n{stderr}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs etcd 3.4 (Debian etcd-server/etcd-client; CI installs it)"]
async fn an_open_keep_alive_stream_does_not_hold_up_a_graceful_stop() -> TestResult {
    let mut extra = FAST_TIMING.to_vec();
    extra.extend(["--shutdown_grace", "60s"]);
    let mut cluster = Cluster::start(1, &extra).await?;
    let ep = cluster.nodes[0].grpc_addr.clone();
    let (id, _) = grant(&ep, "2")?;
    etcdctl(&ep, &["put", "--lease", &id, "s", "1"])?;
    let _keep = KeepAlive::start(&ep, &id)?;
    // The stream is open and answering: the lease outlives its TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(present_on(&ep, "s")?, "the kept-alive lease expired");
    let started = Instant::now();
    let node = &mut cluster.nodes[0];
    assert!(node.stop(), "the node did not stop cleanly; log:\n{}", node.log_tail());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "stopping took {took:?}: the drain waited for the keep-alive stream");
    eprintln!("stopped with an open etcd keep-alive stream in {took:?}");
    Ok(())
}
