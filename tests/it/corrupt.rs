//! Corruption at rest: bytes flipped in, or files truncated from, a stopped node's snapshot
//! files and Raft log (`raft-log.redb`). (The state machine database, `sm/state.redb`, is in
//! `disk.rs`.) A snapshot is derived data: the node sets the damaged file aside, says so
//! naming it, and goes on from its state machine, never serving a wrong value. The Raft log is
//! not derived data (its vote and entries are promises): the node refuses to start with one
//! message naming the file and the remedy, and the remedy it names works.

#![allow(clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use client::Client;
use tests::{Cluster, FAST_TIMING, NodeClient, TestResult, node, wait_for};

/// Keys written before the damage.
const KEYS: usize = 100;

/// The value of the `i`-th key: a pattern that can be found in the files (4 KiB).
fn value(i: usize) -> Vec<u8> {
    format!("corrupt-test-value-{i:04}-").repeat(160).into_bytes()
}

async fn write_keys(client: &Client) -> TestResult {
    for i in 0..KEYS {
        client.put(format!("c/{i:04}"), value(i)).await?;
    }
    Ok(())
}

/// Every key reads back with its value from the node's own state (`STALE`: what the node
/// itself holds, no leader involved), then through a linearizable read.
async fn check_keys(client: &Client) -> TestResult {
    for i in 0..KEYS {
        let key = format!("c/{i:04}");
        let stale = client
            .get_request(client::kv::GetRequest {
                key: key.clone().into_bytes().into(),
                consistency: client::Consistency::Stale as i32,
                ..Default::default()
            })
            .await?;
        let kv = stale.kv.ok_or_else(|| format!("{key} is missing from the node's own state"))?;
        assert!(kv.value == value(i), "{key} has a wrong value in the node's own state");
        let kv = client.get(key.clone()).await?.kv.ok_or_else(|| format!("{key} is missing"))?;
        assert!(kv.value == value(i), "{key} has a wrong value");
    }
    Ok(())
}

/// Flips 64 bytes in the middle of `file`, or truncates it to a third.
fn damage(file: &Path, how: &str) -> TestResult {
    let mut bytes = std::fs::read(file)?;
    let len = bytes.len();
    if how == "flip" {
        for b in &mut bytes[len / 2..len / 2 + 64] {
            *b ^= 0xff;
        }
    } else {
        bytes.truncate(len / 3);
    }
    std::fs::write(file, &bytes)?;
    Ok(())
}

/// The snapshot files (`*.rkvs`) and the damaged copies set aside in a node's snapshot
/// directory.
fn snapshot_files(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), tests::BoxError> {
    let (mut live, mut aside) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if name.contains(".damaged-") {
            aside.push(path);
        } else if name.ends_with(".rkvs") {
            live.push(path);
        }
    }
    Ok((live, aside))
}

/// A follower's snapshot file is damaged while it is stopped (bytes flipped, then, on a fresh
/// snapshot, truncated). The log behind the snapshot is purged (`--trailing_logs 0`), so the
/// snapshot is the only copy of those entries in the node's log directory. On restart the
/// node sets the file aside (renamed, kept), names it in its log, builds a fresh snapshot from
/// its state machine, and serves every key with its right value. Last, with the state machine
/// damaged too, it refuses to start, naming the gap and the remedy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_file_is_set_aside_and_built_again() -> TestResult {
    let mut args = FAST_TIMING.to_vec();
    args.extend(["--trailing_logs", "0", "--snapshot_interval", "0s"]);
    let mut cluster = Cluster::start(3, &args).await?;
    write_keys(&cluster.client()?).await?;
    let follower = (cluster.leader().await.ok_or("no leader")? + 1) % 3;
    for how in ["flip", "truncate"] {
        let node = &mut cluster.nodes[follower];
        let client = node.client()?;
        client.barrier(Duration::from_secs(10)).await?;
        let snap = client.snapshot(Duration::from_secs(30)).await?;
        let snap_dir = node.data_dir.join(&node.id).join("sm").join("snapshots");
        assert!(node.stop(), "{} did not stop cleanly", node.id);
        let (live, aside_before) = snapshot_files(&snap_dir)?;
        let [file] = live.as_slice() else { return Err(format!("expected one snapshot file, found {live:?}").into()) };
        damage(file, how)?;
        let before = node.log().len();
        node.restart(false)?;
        let whole = node.log();
        let log = whole.get(before..).unwrap_or(&whole);
        let line = log
            .lines()
            .find(|l| l.contains("a snapshot file is damaged: set aside"))
            .ok_or_else(|| format!("{how}: the damage was not reported:\n{log}"))?;
        assert!(line.contains(&file.display().to_string()), "{how}: the file is not named: {line}");
        let (live, aside) = snapshot_files(&snap_dir)?;
        assert_eq!(aside.len(), aside_before.len() + 1, "{how}: the damaged file was not kept aside");
        assert!(!live.is_empty(), "{how}: no fresh snapshot was built");
        for f in &live {
            let (meta, _) = fsm::snapshot::verify_file(f)?;
            assert!(meta.last_log_id.is_some_and(|l| l.index >= snap.index), "{how}: {} is older", f.display());
        }
        check_keys(&node.client()?).await?;
        eprintln!("{how}: snapshot at index {} set aside and built again: {line}", snap.index);
    }

    // Both the snapshot and the state machine damaged, the log purged behind the snapshot:
    // nothing on this node holds the purged entries. It must refuse to start, saying so.
    let node = &mut cluster.nodes[follower];
    let snap_dir = node.data_dir.join(&node.id).join("sm").join("snapshots");
    assert!(node.stop(), "{} did not stop cleanly", node.id);
    let (live, _) = snapshot_files(&snap_dir)?;
    for f in &live {
        damage(f, "flip")?;
    }
    damage(&node.data_dir.join(&node.id).join("sm").join("state.redb"), "truncate")?;
    let before = node.log().len();
    match node.restart(false) {
        Err(proc_harness::Error::ExitedEarly { status, .. }) => assert!(!status.success(), "exited with {status}"),
        Err(e) => return Err(format!("both: the node did not exit by itself: {e}").into()),
        Ok(()) => return Err("both: the node started with no copy of its purged entries".into()),
    }
    let whole = node.log();
    let log = whole.get(before..).unwrap_or(&whole);
    let line = log.lines().find(|l| l.contains("raftkv: error:")).ok_or_else(|| format!("both: no error:\n{log}"))?;
    assert!(line.contains("cannot rebuild its state from its own files"), "both: {line}");
    assert!(line.contains("member remove"), "both: no remedy: {line}");
    assert!(!log.contains("panicked"), "both: a panic:\n{log}");
    eprintln!("both: {line}");
    cluster.stop_all();
    Ok(())
}

/// Flips 64 bytes in every copy of a value's bytes found in `file` (redb keeps a log entry's
/// bytes in a page whose checksum then fails; older copies of the page may be free).
fn flip_values(file: &Path) -> TestResult {
    let mut bytes = std::fs::read(file)?;
    let needle = &value(KEYS / 2)[..64];
    let mut found = 0;
    let mut at = 0;
    while let Some(pos) = bytes[at..].windows(needle.len()).position(|w| w == needle) {
        let start = at + pos;
        for b in &mut bytes[start..start + 64] {
            *b ^= 0xff;
        }
        found += 1;
        at = start + 64;
    }
    assert!(found > 0, "the value's bytes are not in {}", file.display());
    std::fs::write(file, &bytes)?;
    Ok(())
}

/// A follower's Raft log is damaged while it is stopped (entry bytes flipped; then, on the
/// node rebuilt by the remedy, the file truncated). The node must not start: it exits
/// non-zero promptly, without a panic, with one line naming the file, the cause once and the
/// remedy. The remedy it names (remove the member, move its directory away, add it back
/// empty) brings it back with every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_raft_log_stops_the_node_with_one_message_and_the_remedy_works() -> TestResult {
    let mut cluster = Cluster::start(3, &FAST_TIMING).await?;
    let cluster_client = cluster.client()?;
    write_keys(&cluster_client).await?;
    let follower = (cluster.leader().await.ok_or("no leader")? + 1) % 3;
    for how in ["flip", "truncate"] {
        let n = &mut cluster.nodes[follower];
        n.client()?.barrier(Duration::from_secs(10)).await?;
        assert!(n.stop(), "{} did not stop cleanly", n.id);
        let node_dir = n.data_dir.join(&n.id);
        let file = node_dir.join("raft-log.redb");
        if how == "flip" {
            flip_values(&file)?
        } else {
            damage(&file, how)?
        }
        let before = n.log().len();
        let started = Instant::now();
        let status = match n.restart(false) {
            Err(proc_harness::Error::ExitedEarly { status, .. }) => status,
            Err(e) => return Err(format!("{how}: the node did not exit by itself: {e}").into()),
            Ok(()) => return Err(format!("{how}: the node started on a damaged Raft log").into()),
        };
        let took = started.elapsed();
        assert!(!status.success(), "{how}: exited with {status}");
        assert!(took < Duration::from_secs(30), "{how}: took {took:?} to refuse");
        let whole = n.log();
        let log = whole.get(before..).unwrap_or(&whole);
        assert!(!log.contains("panicked"), "{how}: a panic:\n{log}");
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("raftkv: error:")).collect();
        let [line] = errors.as_slice() else { return Err(format!("{how}: not one error line:\n{log}").into()) };
        assert!(line.contains(&format!("raft log {} is damaged (", file.display())), "{how}: {line}");
        assert!(line.contains("member remove") && line.contains("member add"), "{how}: no remedy: {line}");
        let cause = line
            .split_once("is damaged (")
            .and_then(|(_, rest)| rest.split_once("): this node"))
            .map(|(cause, _)| cause)
            .ok_or_else(|| format!("{how}: no cause: {line}"))?;
        assert_eq!(line.matches(cause).count(), 1, "{how}: the cause is repeated: {line}");
        eprintln!("{how}: refused in {took:?} with {status}: {line}");

        // The remedy, as the message says.
        cluster_client.remove(&n.id, Duration::from_secs(30)).await?;
        std::fs::rename(&node_dir, n.data_dir.join(format!("{}.damaged-{how}", n.id)))?;
        let fresh = node(&n.id, &n.data_dir).args(FAST_TIMING).start()?;
        cluster_client.add_voter(&fresh.id, &fresh.raft_addr, &fresh.grpc_addr, Duration::from_secs(60)).await?;
        cluster.nodes[follower] = fresh;
        let fresh_client = cluster.nodes[follower].client()?;
        wait_for("the re-added node to apply everything", Duration::from_secs(30), || async {
            fresh_client.barrier(Duration::from_secs(5)).await.is_ok()
        })
        .await?;
        check_keys(&fresh_client).await?;
    }
    cluster.stop_all();
    Ok(())
}

/// Changes one byte of the value of `key` in a stopped node's state machine database, through
/// redb: a valid write that passes every checksum, as a bug or bad memory would make it.
fn change_value_silently(sm_file: &Path, key: &str) -> TestResult {
    use redb::ReadableTable;
    const KV: redb::TableDefinition<'_, &[u8], &[u8]> = redb::TableDefinition::new("kv");
    let db = redb::Database::open(sm_file)?;
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(KV)?;
        let mut record = table
            .get(key.as_bytes())?
            .ok_or_else(|| format!("{key} is not in {}", sm_file.display()))?
            .value()
            .to_vec();
        let last = record.len() - 1;
        record[last] ^= 0x01;
        table.insert(key.as_bytes(), record.as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

/// `raftkvctl check` (etcd's `endpoint hashkv --cluster`): on a healthy three-node cluster
/// every member answers at one index with one hash, and the check succeeds. Then one value in
/// a stopped follower's state machine is changed where no checksum can see it; the node
/// starts and would serve it, and the check names that member as mismatched and exits 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_compares_the_members_state_and_names_the_one_that_differs() -> TestResult {
    let mut cluster = Cluster::start(3, &FAST_TIMING).await?;
    write_keys(&cluster.client()?).await?;
    let endpoints = cluster.endpoints();
    let out = tests::raftkvctl(&endpoints, &["check"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("healthy:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "check failed on a healthy cluster: {out:?}");
    assert_eq!(stdout.lines().filter(|l| l.trim_end().ends_with("match")).count(), 3, "{stdout}");

    let follower = (cluster.leader().await.ok_or("no leader")? + 1) % 3;
    let n = &mut cluster.nodes[follower];
    n.client()?.barrier(Duration::from_secs(10)).await?;
    assert!(n.stop(), "{} did not stop cleanly", n.id);
    change_value_silently(&n.data_dir.join(&n.id).join("sm").join("state.redb"), "c/0007")?;
    n.restart(false)?;
    let id = n.id.clone();
    let out = tests::raftkvctl(&endpoints, &["check"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("after the change:\n{stdout}{stderr}");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let row = stdout.lines().find(|l| l.starts_with(&id)).ok_or_else(|| format!("no row for {id}: {stdout}"))?;
    assert!(row.ends_with("MISMATCH"), "{row}");
    assert_eq!(stdout.lines().filter(|l| l.trim_end().ends_with("match")).count(), 2, "{stdout}");
    assert!(stderr.contains(&format!("{id} (MISMATCH)")), "{stderr}");
    cluster.stop_all();
    Ok(())
}
