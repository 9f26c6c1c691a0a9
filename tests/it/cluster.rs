//! Cluster tests: real `raftkv` processes on 127.0.0.1, killed and restarted for real.

#![allow(clippy::print_stderr)] // tests report what they did on stderr

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::{Client, RaftState};
use tests::{BoxError, Cluster, FAST_TIMING, NodeClient, TestResult, node, raftkvctl, test_options, wait_for};

type Acked = Arc<Mutex<BTreeMap<String, String>>>;

/// Writes `keys` through `client`, retrying each key until it is acknowledged or `stop`
/// is set. Records every acknowledged write. Re-putting the same value after an error of
/// unknown outcome is harmless: the key ends with that value either way.
fn spawn_writer(
    client: Client,
    keys: Vec<String>,
    acked: Acked,
    stop: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut errors = 0;
        for key in keys {
            let value = format!("value-of-{key}");
            loop {
                if stop.load(Ordering::Relaxed) > 0 {
                    return errors;
                }
                match client.put(key.clone(), value.clone()).await {
                    Ok(_) => {
                        acked
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(key.clone(), value.clone());
                        break;
                    }
                    Err(_) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        errors
    })
}

fn acked_len(acked: &Acked) -> usize {
    acked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
}

/// A client whose first endpoint is node `first`, so its writes enter through that node.
fn client_via(cluster: &Cluster, first: usize) -> Result<Client, BoxError> {
    let mut endpoints = cluster.endpoints();
    endpoints.rotate_left(first);
    Ok(Client::new(endpoints, test_options())?)
}

async fn check_readable(client: &Client, acked: &BTreeMap<String, String>) -> TestResult {
    for (key, value) in acked {
        let resp = client.get(key.clone()).await?;
        let got = resp.kv.filter(|_| resp.found).map(|kv| kv.value);
        assert_eq!(got.as_deref(), Some(value.as_bytes()), "acknowledged key {key} lost or wrong");
    }
    Ok(())
}

fn check_state_machine(cluster: &Cluster, i: usize, acked: &BTreeMap<String, String>) -> TestResult {
    let sm = cluster.state_machine(i)?;
    for (key, value) in acked {
        let got = sm.get(key.as_bytes())?.map(|kv| kv.value);
        assert_eq!(got.as_deref(), Some(value.as_bytes()), "node {}'s state machine lacks {key}", cluster.nodes[i].id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_mid_writes_loses_no_acknowledged_write() -> TestResult {
    let mut cluster = Cluster::start(3, &FAST_TIMING).await?;
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicUsize::new(0));
    let keys: Vec<String> = (0..1000).map(|i| format!("key-{i:04}")).collect();
    let mut writers = Vec::new();
    for (w, chunk) in keys.chunks(250).enumerate() {
        let client = client_via(&cluster, w % 3)?;
        writers.push(spawn_writer(client, chunk.to_vec(), acked.clone(), stop.clone()));
    }

    wait_for("300 acknowledged writes", Duration::from_secs(120), || async { acked_len(&acked) >= 300 }).await?;
    let old = cluster.leader().await.ok_or("no leader")?;
    let old_id = cluster.nodes[old].id.clone();
    cluster.nodes[old].kill();
    let at_kill = acked_len(&acked);
    eprintln!("killed leader {old_id} with SIGKILL after {at_kill} acknowledged writes");

    let survivor = cluster.nodes[(old + 1) % 3].client()?;
    wait_for("a new leader", Duration::from_secs(30), || async {
        survivor.status().await.is_ok_and(|s| !s.leader_id.is_empty() && s.leader_id != old_id)
    })
    .await?;
    let mut errors = 0;
    for w in writers {
        errors += w.await?;
    }
    let acked = acked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    assert_eq!(acked.len(), 1000, "every write is eventually acknowledged");
    eprintln!("1000 writes acknowledged ({errors} failed attempts retried around the failover)");
    check_readable(&cluster.client()?, &acked).await?;

    cluster.nodes[old].restart(false)?;
    cluster.wait_converged(Duration::from_secs(60)).await?;
    cluster.stop_all();
    for i in 0..3 {
        check_state_machine(&cluster, i, &acked)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_nodes_killed_and_restarted_keep_acknowledged_writes() -> TestResult {
    let mut cluster = Cluster::start(3, &FAST_TIMING).await?;
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicUsize::new(0));
    let keys: Vec<String> = (0..10_000).map(|i| format!("crash-{i:05}")).collect();
    let mut writers = Vec::new();
    for (w, chunk) in keys.chunks(5000).enumerate() {
        writers.push(spawn_writer(client_via(&cluster, w)?, chunk.to_vec(), acked.clone(), stop.clone()));
    }
    wait_for("200 acknowledged writes", Duration::from_secs(120), || async { acked_len(&acked) >= 200 }).await?;
    // Kill every node while writes are in flight.
    for node in &mut cluster.nodes {
        node.kill();
    }
    stop.store(1, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }
    let acked = acked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    eprintln!("killed all nodes after {} acknowledged writes", acked.len());

    // n1 restarts with --raft_bootstrap still set: on existing state it must just start.
    for (i, node) in cluster.nodes.iter_mut().enumerate() {
        node.restart(i == 0)?;
    }
    cluster.wait_converged(Duration::from_secs(60)).await?;
    check_readable(&cluster.client()?, &acked).await?;
    assert!(
        cluster.nodes[0].log().contains("--raft_bootstrap has nothing to do"),
        "the restarted bootstrap node did not report its existing state"
    );
    // A kill leaves both files not shut down cleanly: redb's repair verifies every page of each
    // at the restart, and the node's own check (a second read of the whole file) is skipped.
    for node in &cluster.nodes {
        let log = node.log();
        for file in ["raft-log.redb", "state.redb"] {
            assert!(
                log.lines().any(|l| l.contains("verified by redb's repair on open") && l.contains(file)),
                "{}: {file} was not verified by redb's repair after the kill:\n{log}",
                node.id
            );
        }
    }
    cluster.stop_all();
    for i in 0..3 {
        check_state_machine(&cluster, i, &acked)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_behind_a_purged_log_catches_up_by_snapshot() -> TestResult {
    let mut extra = FAST_TIMING.to_vec();
    extra.extend(["--snapshot_threshold", "50", "--trailing_logs", "10"]);
    let mut cluster = Cluster::start(3, &extra).await?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    let follower = (leader + 1) % 3;
    let behind = cluster.nodes[follower].client()?.status().await?.applied_index;
    cluster.nodes[follower].kill();

    let client = cluster.nodes[leader].client()?;
    let mut acked = BTreeMap::new();
    for i in 0..300 {
        let (key, value) = (format!("snap-{i:03}"), format!("v{i}"));
        client.put(key.clone(), value.clone()).await?;
        acked.insert(key, value);
    }
    // Purging follows the snapshot asynchronously: wait for the purge itself, or the
    // follower may come back while the leader still has the entries it needs.
    wait_for("the leader to snapshot and purge past the follower", Duration::from_secs(60), || async {
        client.status().await.is_ok_and(|s| s.snapshot_index > behind + 100 && s.purged_index > behind)
    })
    .await?;

    cluster.nodes[follower].restart(false)?;
    cluster.wait_converged(Duration::from_secs(60)).await?;
    let log = cluster.nodes[follower].log();
    assert!(log.contains("snapshot received"), "the follower did not receive a snapshot:\n{log}");
    assert!(log.contains("snapshot installed"), "the follower did not install a snapshot:\n{log}");
    check_readable(&cluster.client()?, &acked).await?;
    cluster.stop_all();
    check_state_machine(&cluster, follower, &acked)?;
    Ok(())
}

/// A follower whose link is slower than the heartbeat interval still replicates: each
/// AppendEntries call gets `raft_network::APPEND_MIN_TIMEOUT`, not openraft's one
/// heartbeat interval, which such a link (or a slow fsync of large values) exceeds on every
/// attempt. Before that deadline, this follower never caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_link_slower_than_the_heartbeat_still_replicates() -> TestResult {
    use tests::proxy::{Link, Mode};
    let dir = tempfile::tempdir()?;
    // n1 reaches n2's Raft port through `raft_link`, its client port through `grpc_link`
    // (static peers come before the membership in the resolver); n3 directly.
    let (raft_link, grpc_link) = (Link::start(1).await?, Link::start(2).await?);
    let peers = format!("n2={}@{}", raft_link.addr(), grpc_link.addr());
    let mut args: Vec<String> = FAST_TIMING.iter().map(|s| (*s).to_string()).collect();
    let plain = args.clone();
    args.extend(["--peers".to_string(), peers]);
    let local = "127.0.0.1:0";
    let n1 = node("n1", dir.path()).addrs(local, local).bootstrap(true).args(&args).start()?;
    let leader = n1.client()?;
    wait_for("n1 to lead", Duration::from_secs(30), || async {
        leader.status().await.is_ok_and(|s| s.state == RaftState::Leader as i32)
    })
    .await?;
    let mut nodes = vec![n1];
    for id in ["n2", "n3"] {
        let node = node(id, dir.path()).addrs(local, local).args(&plain).start()?;
        if id == "n2" {
            raft_link.set_target(node.raft_addr.parse()?);
            grpc_link.set_target(node.grpc_addr.parse()?);
        }
        leader.add_voter(&node.id, &node.raft_addr, &node.grpc_addr, Duration::from_secs(60)).await?;
        nodes.push(node);
    }
    // 150 ms each way: every AppendEntries round trip to n2 takes at least 300 ms, six
    // heartbeat intervals. Writes commit on n1 and n3 meanwhile.
    let slow = Mode::Delay { base: Duration::from_millis(150), jitter: Duration::ZERO };
    raft_link.set(slow, slow);
    let mut acked = BTreeMap::new();
    for i in 0..200 {
        let (key, value) = (format!("slow-{i:03}"), format!("v{i}"));
        leader.put(key.clone(), value.clone()).await?;
        acked.insert(key, value);
    }
    // And a batch of large values, whose AppendEntries calls carry megabytes.
    for i in 0..4 {
        let (key, value) = (format!("slow-big-{i}"), "x".repeat(1 << 20));
        leader.put(key.clone(), value.clone()).await?;
        acked.insert(key, value);
    }
    let target = leader.status().await?.applied_index;
    let n2 = nodes[1].client()?;
    wait_for("n2 to apply every write through the slow link", Duration::from_secs(60), || async {
        n2.status().await.is_ok_and(|s| s.applied_index >= target)
    })
    .await?;
    check_readable(&n2, &acked).await?;
    eprintln!("n2 applied index {target} through a link of 150 ms each way (heartbeat interval 50 ms)");
    for node in &mut nodes {
        assert!(node.stop(), "{} did not stop cleanly", node.id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raftkvctl_put_get_del_and_members() -> TestResult {
    let mut cluster = Cluster::start(3, &FAST_TIMING).await?;
    let all = cluster.endpoints();
    // Writes and reads enter through every node; followers forward to the leader.
    for (i, endpoint) in all.iter().enumerate() {
        let one = [endpoint.clone()];
        let out = raftkvctl(&one, &["put", &format!("ctl-{i}"), &format!("hello {i}")])?;
        assert!(out.status.success(), "put via {endpoint}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
        for reader in &all {
            let out = raftkvctl(std::slice::from_ref(reader), &["get", &format!("ctl-{i}")])?;
            assert!(out.status.success(), "get via {reader}: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(String::from_utf8_lossy(&out.stdout), format!("hello {i}"), "the value, with no newline added");
        }
    }
    let out = raftkvctl(&all, &["-o", "json", "get", "ctl-1"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["value"], "hello 1");
    assert_eq!(v["version"], 1);
    assert!(v["modify_index"].as_u64().is_some_and(|i| i > 0));

    let out = raftkvctl(&all, &["del", "ctl-0"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
    let out = raftkvctl(&all, &["del", "ctl-0"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n", "deleting a missing key deletes 0, it is not an error");
    let out = raftkvctl(&all, &["get", "ctl-0"])?;
    assert_eq!(out.status.code(), Some(1), "a missing key exits with 1");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    assert!(out.stdout.is_empty());

    let out = raftkvctl(&all, &["-o", "json", "member", "list"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let members = v["members"].as_array().ok_or("no members")?;
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m["suffrage"] == "voter"));
    assert_eq!(members.iter().filter(|m| m["is_leader"] == true).count(), 1);

    // A fourth node joins through raftkvctl, through a follower.
    let n4 = node("n4", cluster.dir.path()).args(FAST_TIMING).start()?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    let follower = cluster.endpoints()[(leader + 1) % 3].clone();
    let out =
        raftkvctl(&[follower], &["member", "add", "n4", "--raft-addr", &n4.raft_addr, "--grpc-addr", &n4.grpc_addr])?;
    assert!(out.status.success(), "member add: {}", String::from_utf8_lossy(&out.stderr));
    cluster.nodes.push(n4);
    cluster.wait_converged(Duration::from_secs(30)).await?;
    let out = raftkvctl(&[cluster.nodes[3].grpc_addr.clone()], &["get", "ctl-2"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello 2");

    // Failures exit with 2 and say why on stderr.
    let out = raftkvctl(&["127.0.0.1:1".to_string()], &["get", "x"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no endpoint reachable"));
    cluster.stop_all();
    Ok(())
}

#[tokio::test]
async fn invalid_timing_fails_at_start_with_a_clear_message() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut child = std::process::Command::new(tests::binary("raftkv"))
        .args(["--raft_id", "bad", "--grpc_addr", "127.0.0.1:0", "--raft_addr", "127.0.0.1:0", "--raft_data_dir"])
        .arg(dir.path())
        .args(["--heartbeat_interval", "1s", "--election_timeout", "1500ms"])
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut status = None;
    wait_for("raftkv to refuse its settings", Duration::from_secs(20), || {
        status = status.or(child.try_wait().ok().flatten());
        std::future::ready(status.is_some())
    })
    .await
    .inspect_err(|_| {
        let _ = child.kill();
        let _ = child.wait();
    })?;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().ok_or("no stderr")?, &mut stderr)?;
    assert!(status.is_some_and(|s| !s.success()));
    assert!(
        stderr.contains("--election_timeout") && stderr.contains("3 times --heartbeat_interval"),
        "unclear message: {stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_writes_and_serves_linearizable_reads_itself() -> TestResult {
    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    let follower = &cluster.nodes[(leader + 1) % 3];
    let client = follower.client()?;
    let put = client.put("fwd", "x").await?;
    let header = put.header.ok_or("no header")?;
    assert_eq!(header.node_id, cluster.nodes[leader].id, "the leader served the forwarded write");
    let got = client.get("fwd").await?;
    assert!(got.found);
    let read = got.header.ok_or("no header")?;
    assert_eq!(read.node_id, follower.id, "the follower served the linearizable read itself");
    assert!(read.index >= header.index, "the read reflects the write acknowledged before it");
    let status = client.status().await?;
    assert_eq!(status.state, RaftState::Follower as i32);
    Ok(())
}

/// The established TCP connections process `pid` holds to `addr` (`ss`, from iproute2).
fn connections_to(pid: u32, addr: &str) -> Result<usize, BoxError> {
    let out = std::process::Command::new("ss").args(["-Htnp", "state", "established", "dst", addr]).output()?;
    if !out.status.success() {
        return Err(format!("ss: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let mine = format!("pid={pid},");
    Ok(String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(&mine)).count())
}

/// The leader reaches each follower's Raft port over two connections, one for the log and
/// one for heartbeats and votes (raft-network's `Lane`), so that a heartbeat never waits
/// behind a batch of entries on the same HTTP/2 connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_sends_heartbeats_on_a_connection_apart_from_the_log() -> TestResult {
    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    let client = cluster.client()?;
    client.put("k", b"v".to_vec()).await?;
    let pid = cluster.nodes[leader].pid().ok_or("the leader has no pid")?;
    for (i, follower) in cluster.nodes.iter().enumerate().filter(|(i, _)| *i != leader) {
        let addr = follower.raft_addr.clone();
        wait_for(&format!("two connections from the leader to node {i}'s Raft port"), Duration::from_secs(20), || {
            let addr = addr.clone();
            async move { connections_to(pid, &addr).is_ok_and(|n| n == 2) }
        })
        .await?;
    }
    Ok(())
}
