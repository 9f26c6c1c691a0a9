//! Full disks: the storage quota and the NOSPACE alarm, a filesystem filling before the
//! quota, and the fail-stop on a real `ENOSPC`. Each node's data directory is its own small
//! tmpfs, mounted by the test (root; CI runs as root, elsewhere the tmpfs tests are skipped
//! with a message), or the quota is small enough to reach on any disk.

#![allow(clippy::print_stderr)]

use std::time::Duration;

use client::kv::watch_response::Kind;
use client::{Client, WatchOptions};
use tests::tmpfs::Tmpfs;
use tests::{Cluster, FAST_TIMING, NodeClient, TestResult, code, message, node, raftkvctl, wait_for};

/// The value size of the fill: large, so the filesystems fill in a few dozen writes.
const VALUE_BYTES: usize = 256 << 10;
/// The most puts a fill tries before the test gives up: 100 MiB of values.
const MAX_PUTS: usize = 400;

/// The value of the `i`-th key: its number, then filler.
fn value(i: usize) -> Vec<u8> {
    let mut v = format!("{i:08}").into_bytes();
    v.resize(VALUE_BYTES, b'v');
    v
}

/// Puts `big/NNNN` keys until a put fails; returns the acknowledged keys' numbers and the
/// error.
async fn fill(client: &Client) -> Result<(Vec<usize>, client::ClientError), tests::BoxError> {
    let mut acked = Vec::new();
    for i in 0..MAX_PUTS {
        match client.put(format!("big/{i:04}"), value(i)).await {
            Ok(_) => acked.push(i),
            Err(e) => return Ok((acked, e)),
        }
    }
    Err(format!("{MAX_PUTS} puts of {VALUE_BYTES} bytes were all accepted; no NOSPACE refusal").into())
}

/// Every acknowledged key reads back with its value (linearizable reads).
async fn check_acked(client: &Client, acked: &[usize]) -> TestResult {
    for &i in acked {
        let got = client.get(format!("big/{i:04}")).await?;
        let kv = got.kv.ok_or_else(|| format!("acknowledged key big/{i:04} is missing"))?;
        assert!(kv.value == value(i), "big/{i:04} has a wrong value");
    }
    Ok(())
}

fn is_nospace(r: &Result<impl std::fmt::Debug, client::ClientError>) -> bool {
    code(r) == Some(tonic::Code::ResourceExhausted) && message(r).contains("no space left on n")
}

/// Writes succeed again within `timeout`, disarming the alarms each round (a node whose guard
/// had not yet seen the space freed may raise its alarm again once).
async fn disarm_until_writable(cluster: &Cluster, timeout: Duration) -> TestResult {
    let client = cluster.client()?;
    let endpoints = cluster.endpoints();
    wait_for("writes to resume after the alarm is disarmed", timeout, || async {
        let out = raftkvctl(&endpoints, &["alarm", "disarm"]);
        assert!(out.as_ref().is_ok_and(|o| o.status.success()), "alarm disarm failed: {out:?}");
        client.put("after", "ok").await.is_ok()
    })
    .await
}

/// A 3-node cluster, each node on its own 64 MiB filesystem with a 24 MiB reserve: the fill
/// is refused with NOSPACE before any filesystem is full; no node stops; reads, a watch and a
/// leadership transfer work during the alarm; once the filesystems grow and the alarm is
/// disarmed, writes resume, and every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filling_disk_raises_nospace_before_it_is_full_and_writes_resume_after() -> TestResult {
    if !Tmpfs::available("disk::a_filling_disk_raises_nospace_before_it_is_full_and_writes_resume_after")? {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mounts = (1..=3).map(|i| Tmpfs::mount(&dir.path().join(format!("n{i}")), 64)).collect::<Result<Vec<_>, _>>()?;
    let mut args = FAST_TIMING.to_vec();
    args.extend(["--disk_reserve_bytes", "25165824", "--snapshot_interval", "0s"]);
    let mut cluster = Cluster::start_in(dir, 3, &args).await?;
    let client = cluster.client()?;
    let endpoints = cluster.endpoints();

    let (mut acked, refused) = fill(&client).await?;
    let refused: Result<(), _> = Err(refused);
    eprintln!("{} puts acknowledged, then: {}", acked.len(), message(&refused));
    assert!(is_nospace(&refused), "{refused:?}");
    for n in &mut cluster.nodes {
        assert!(n.try_wait()?.is_none(), "{} stopped:\n{}", n.id, n.log_tail());
    }

    // The alarm, on every node, in Status and through raftkvctl.
    for n in &cluster.nodes {
        let c = n.client()?;
        wait_for(&format!("{} to apply the alarm", n.id), Duration::from_secs(10), || async {
            c.status().await.is_ok_and(|s| !s.alarms.is_empty())
        })
        .await?;
    }
    let status = raftkvctl(&endpoints, &["status"])?;
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("alarm:       NOSPACE on n") && text.contains("--disk_reserve_bytes"), "{text}");
    let list = raftkvctl(&endpoints, &["alarm", "list"])?;
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success() && text.contains("memberID:n") && text.contains("alarm:NOSPACE"), "{text}");

    // A watch follows a delete (deletes are allowed: they are how space is freed).
    let mut watch = client.watch("big/", WatchOptions { prefix: true, ..WatchOptions::default() });
    assert_eq!(watch.next().await?.kind, Kind::Created as i32);
    let gone = acked.remove(0);
    client.delete(format!("big/{gone:04}")).await?;
    let deleted = format!("big/{gone:04}").into_bytes();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let m = watch.next().await?;
            if m.events.iter().any(|e| e.kv.as_ref().is_some_and(|kv| kv.key == deleted)) {
                return Ok::<_, client::ClientError>(());
            }
        }
    })
    .await;
    assert!(matches!(seen, Ok(Ok(()))), "the watch did not see the delete: {seen:?}");
    drop(watch);

    // Reads, and leadership: it moves, and the new leader refuses too.
    check_acked(&client, &acked).await?;
    client.transfer_leader(None, Duration::from_secs(30)).await?;
    let again = client.put("more", value(0)).await;
    assert!(is_nospace(&again), "{again:?}");

    // Space is added; the alarm is disarmed; writes resume.
    for m in &mounts {
        m.resize(256)?;
    }
    disarm_until_writable(&cluster, Duration::from_secs(30)).await?;
    check_acked(&client, &acked).await?;
    for n in &mut cluster.nodes {
        assert!(n.try_wait()?.is_none(), "{} stopped:\n{}", n.id, n.log_tail());
    }
    cluster.stop_all();
    drop(mounts);
    Ok(())
}

/// The quota (`--quota_backend_bytes`) on any disk: past it writes are refused with NOSPACE;
/// deleting keys frees the space (the guard compacts the database), and after a disarm writes
/// resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_quota_writes_are_refused_until_keys_are_deleted_and_the_alarm_disarmed() -> TestResult {
    let mut args = FAST_TIMING.to_vec();
    args.extend(["--quota_backend_bytes", "8388608", "--snapshot_interval", "0s"]);
    let mut cluster = Cluster::start(1, &args).await?;
    let client = cluster.client()?;
    let (acked, refused) = fill(&client).await?;
    let refused: Result<(), _> = Err(refused);
    assert!(is_nospace(&refused), "{refused:?}");
    assert!(message(&refused).contains("--quota_backend_bytes"), "{}", message(&refused));
    check_acked(&client, &acked).await?;

    // Disarming while still over the quota: the node raises the alarm again.
    let out = raftkvctl(&cluster.endpoints(), &["alarm", "disarm"])?;
    assert!(out.status.success(), "{out:?}");
    wait_for("the alarm to be raised again", Duration::from_secs(10), || async {
        client.alarm_list().await.is_ok_and(|a| !a.alarms.is_empty())
    })
    .await?;

    for &i in &acked {
        client.delete(format!("big/{i:04}")).await?;
    }
    disarm_until_writable(&cluster, Duration::from_secs(30)).await?;
    cluster.stop_all();
    Ok(())
}

/// No reserve and no quota: a follower's filesystem fills for real (`ENOSPC`). It must not
/// linger half-dead: it stops with a non-zero status and a message naming the file and the
/// cause; the others go on; once its filesystem is grown it restarts and catches up, with
/// every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_enospc_stops_the_node_naming_the_file_and_it_recovers_after() -> TestResult {
    if !Tmpfs::available("disk::a_real_enospc_stops_the_node_naming_the_file_and_it_recovers_after")? {
        return Ok(());
    }
    let mut args = FAST_TIMING.to_vec();
    args.extend(["--disk_reserve_bytes", "0", "--quota_backend_bytes", "0", "--snapshot_interval", "0s"]);
    let mut cluster = Cluster::start(2, &args).await?;
    let small = Tmpfs::mount(&cluster.dir.path().join("n3"), 24)?;
    let n3 = node("n3", cluster.dir.path()).args(&args).start()?;
    let client = cluster.client()?;
    client.add_voter("n3", &n3.raft_addr, &n3.grpc_addr, Duration::from_secs(60)).await?;
    cluster.nodes.push(n3);

    let mut acked = Vec::new();
    let mut exit = None;
    for i in 0..MAX_PUTS {
        client.put(format!("big/{i:04}"), value(i)).await?;
        acked.push(i);
        if let Some(status) = cluster.nodes[2].try_wait()? {
            exit = Some(status);
            break;
        }
    }
    let exit = exit.ok_or("n3 never stopped although its 24 MiB filesystem must be full")?;
    assert!(!exit.success(), "n3 exited with {exit}");
    let log = cluster.nodes[2].log_tail_lines(400);
    let last = log.lines().rev().find(|l| l.contains("raftkv: error")).unwrap_or_default();
    eprintln!("n3 stopped with {exit}: {last}");
    assert!(last.contains("No space left on device"), "the cause is not named:\n{log}");
    assert!(last.contains("/n3/") && last.contains(".redb"), "the file is not named:\n{log}");

    small.resize(256)?;
    cluster.nodes[2].restart(false)?;
    cluster.wait_converged(Duration::from_secs(60)).await?;
    check_acked(&cluster.nodes[2].client()?, &acked).await?;
    cluster.stop_all();
    drop(small);
    Ok(())
}

/// Bytes flipped in a stopped follower's state machine database (`sm/state.redb`), then the
/// file truncated: on each restart the node sets the damaged file aside, says so, rebuilds
/// the state from its snapshot and the Raft log, and serves every key with its right value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_state_machine_file_is_set_aside_and_rebuilt() -> TestResult {
    let mut cluster = Cluster::start(3, &FAST_TIMING).await?;
    let client = cluster.client()?;
    let keys: Vec<usize> = (0..10).collect();
    for &i in &keys {
        client.put(format!("big/{i:04}"), value(i)).await?;
    }
    let follower = (cluster.leader().await.ok_or("no leader")? + 1) % 3;
    for damage in ["flip", "truncate"] {
        let node = &mut cluster.nodes[follower];
        assert!(node.stop(), "{} did not stop cleanly", node.id);
        let file = node.data_dir.join(&node.id).join("sm").join("state.redb");
        let mut bytes = std::fs::read(&file)?;
        let len = bytes.len();
        if damage == "flip" {
            for b in &mut bytes[len / 2..len / 2 + 64] {
                *b ^= 0xff;
            }
        } else {
            bytes.truncate(len / 3);
        }
        std::fs::write(&file, &bytes)?;
        node.restart(false)?;
        let log = node.log_tail_lines(200);
        assert!(log.contains("the state machine database is damaged: set aside"), "{damage}: not set aside:\n{log}");
        check_acked(&node.client()?, &keys).await?;
        eprintln!("{damage}: set aside and rebuilt; {} keys read back from {}", keys.len(), node.id);
    }
    cluster.stop_all();
    Ok(())
}
