//! Gossip tests on real processes: loopback UDP on OS-chosen ports (`--gossip_addr
//! 127.0.0.1:0`; the bound port is read from `listen.json`), waits on conditions with stated
//! bounds.
//!
//! Gossip runs with a 100 ms interval and phi threshold 8, so the failure detector reports a
//! node dead about (8 + 1) × 100 ms = 0.9 s after its last heartbeat on an idle machine.

#![allow(clippy::print_stderr)] // tests report what they did on stderr

use std::time::{Duration, Instant};

use client::admin::{GossipLiveness, StatusResponse};
use tests::{BoxError, FAST_TIMING, NodeClient, NodeProc, TestResult, node, raftkvctl, refused_start, wait_for};

const GOSSIP_INTERVAL_MS: u64 = 100;
const PHI_THRESHOLD: f64 = 8.0;
/// Three nodes on loopback must all see each other live within this long after the last
/// one started (a few gossip rounds; generous for a loaded 2-core machine).
const CONVERGE_BOUND: Duration = Duration::from_secs(5);

/// The failure detector's bound: (phi + 1) gossip intervals after the last heartbeat
/// (`gossip::GossipConfig::detection_bound`).
fn detection_bound() -> Duration {
    Duration::from_millis(GOSSIP_INTERVAL_MS).mul_f64(PHI_THRESHOLD + 1.0)
}

/// The bound the dead-node test asserts: the detector's bound three times over (heartbeats
/// arrive late on a loaded machine, which raises the mean interval the detector learns),
/// plus a second for the Status round trips.
fn dead_bound() -> Duration {
    detection_bound() * 3 + Duration::from_secs(1)
}

fn gossip_args(cluster: &str, seeds: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = FAST_TIMING.iter().map(|s| (*s).to_string()).collect();
    a.extend(
        [
            "--gossip_addr",
            "127.0.0.1:0",
            "--gossip_interval",
            &format!("{GOSSIP_INTERVAL_MS}ms"),
            "--gossip_phi_threshold",
            &PHI_THRESHOLD.to_string(),
            "--cluster_id",
            cluster,
        ]
        .map(String::from),
    );
    if !seeds.is_empty() {
        a.push("--gossip_seeds".into());
        a.push(seeds.join(","));
    }
    a
}

fn gossip_addr(n: &NodeProc) -> Result<String, BoxError> {
    n.gossip_addr.clone().ok_or_else(|| format!("{} wrote no gossip_addr to listen.json", n.id).into())
}

async fn status(n: &NodeProc) -> Option<StatusResponse> {
    n.client().ok()?.status().await.ok()
}

/// The ids gossip on `n` reports with `liveness`, sorted.
async fn gossip_ids(n: &NodeProc, liveness: GossipLiveness) -> Option<Vec<String>> {
    let s = status(n).await?;
    Some(s.gossip_nodes.iter().filter(|g| g.liveness == liveness as i32).map(|g| g.id.clone()).collect())
}

/// Starts n1 (bootstrap) and n2, n3 that find the cluster through n1's gossip address alone
/// (a bare `--join`, no member addresses, no static peers). Returns the nodes and how long
/// after n3 started every node saw all three live.
async fn three_node_gossip_cluster(
    dir: &std::path::Path,
    cluster: &str,
) -> Result<(Vec<NodeProc>, Duration), BoxError> {
    let n1 = node("n1", dir).bootstrap(true).args(gossip_args(cluster, &[])).start()?;
    let seed = gossip_addr(&n1)?;
    let mut join = gossip_args(cluster, &[&seed]);
    join.push("--join".into());
    let n2 = node("n2", dir).args(&join).start()?;
    let n3 = node("n3", dir).args(&join).start()?;
    let started = Instant::now();
    let nodes = vec![n1, n2, n3];
    let all = vec!["n1".to_string(), "n2".into(), "n3".into()];
    wait_for("every node to see three live nodes over gossip", CONVERGE_BOUND, || async {
        for n in &nodes {
            if gossip_ids(n, GossipLiveness::Live).await.as_ref() != Some(&all) {
                return false;
            }
        }
        true
    })
    .await?;
    let converged = started.elapsed();
    eprintln!("gossip: three nodes converged {converged:?} after the last one started (bound {CONVERGE_BOUND:?})");
    // Raft: both joined as voters through the addresses gossip found.
    wait_for("n2 and n3 to join as voters through gossip", Duration::from_secs(60), || async {
        status(&nodes[0])
            .await
            .is_some_and(|s| s.members.iter().filter(|m| m.suffrage == client::Suffrage::Voter as i32).count() == 3)
    })
    .await?;
    Ok((nodes, converged))
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_converge_join_through_gossip_and_a_killed_node_is_reported_dead() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (mut nodes, _) = three_node_gossip_cluster(dir.path(), "conv").await?;
    // Once the metadata settles, gossip and the membership agree.
    wait_for("gossip to agree with the membership", Duration::from_secs(10), || async {
        status(&nodes[0]).await.is_some_and(|s| s.gossip_enabled && s.disagreements.is_empty())
    })
    .await?;
    let s = status(&nodes[1]).await.ok_or("no status from n2")?;
    let leader = s.leader_id.clone();
    let n1 = s.gossip_nodes.iter().find(|g| g.id == "n1").ok_or("n2's gossip does not list n1")?;
    assert_eq!(n1.grpc_addr, nodes[0].grpc_addr);
    assert_eq!(n1.raft_addr, nodes[0].raft_addr);
    assert_eq!(n1.gossip_addr, gossip_addr(&nodes[0])?);
    assert!(!n1.version.is_empty());
    wait_for("n2's gossip to show the leader's role and every node's leader", Duration::from_secs(10), || async {
        status(&nodes[1]).await.is_some_and(|s| {
            s.gossip_nodes.iter().all(|g| g.leader_id == leader)
                && s.gossip_nodes.iter().any(|g| g.id == leader && g.role == "leader")
        })
    })
    .await?;

    nodes[2].kill();
    let killed = Instant::now();
    let bound = dead_bound();
    wait_for("n1 and n2 to report n3 dead", bound, || async {
        let mut ok = true;
        for n in &nodes[..2] {
            ok &= gossip_ids(n, GossipLiveness::Dead).await == Some(vec!["n3".to_string()]);
        }
        ok
    })
    .await?;
    eprintln!(
        "gossip: killed n3 reported dead after {:?} (detector bound {:?}, asserted {bound:?})",
        killed.elapsed(),
        detection_bound()
    );
    let s = status(&nodes[0]).await.ok_or("no status from n1")?;
    assert!(s.disagreements.iter().any(|d| d == "member n3 is dead in gossip"), "{:?}", s.disagreements);
    let out = raftkvctl(&[nodes[0].grpc_addr.clone()], &["member", "list"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Gossip, as") && text.contains("! member n3 is dead in gossip"), "{text}");
    let row = text.lines().find(|l| l.starts_with("n3 ") && l.contains("dead")).unwrap_or_default();
    assert!(row.contains("yes"), "n3 is a member reported dead:\n{text}");

    // A graceful stop is reported as a leave, not a death.
    assert!(nodes[1].stop(), "n2 did not stop cleanly; log:\n{}", nodes[1].log_tail());
    wait_for("n1 to report n2 left", Duration::from_secs(5), || async {
        gossip_ids(&nodes[0], GossipLiveness::Left).await == Some(vec!["n2".to_string()])
    })
    .await?;
    let log = nodes[1].log();
    let (drain, leave, raft) = (log.find("draining gRPC"), log.find("leaving gossip"), log.find("stopping raft"));
    assert!(drain < leave && leave < raft && drain.is_some(), "shutdown order: drain, gossip leave, raft\n{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_restarted_on_new_ports_is_reached_through_gossip() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (mut nodes, _) = three_node_gossip_cluster(dir.path(), "moves").await?;
    let seed = gossip_addr(&nodes[0])?;
    let cluster = nodes[0].client()?;
    cluster.put("before", "1").await?;

    // n2 moves: new client and Raft ports. The membership still records the old ones; only
    // gossip knows the new ones (no static peers anywhere).
    let (old_grpc, old_raft) = (nodes[1].grpc_addr.clone(), nodes[1].raft_addr.clone());
    assert!(nodes[1].stop(), "n2 did not stop cleanly");
    nodes[1].restart_on_new_ports(&gossip_args("moves", &[&seed]))?;
    assert_ne!(nodes[1].grpc_addr, old_grpc);
    let n2 = &nodes[1];
    eprintln!("n2 moved from {old_grpc} / {old_raft} to {} / {}", n2.grpc_addr, n2.raft_addr);

    // The leader replicates to n2 at its new Raft address.
    cluster.put("after", "2").await?;
    let n2_client = n2.client()?;
    wait_for("n2 to apply a write made after it moved", Duration::from_secs(20), || async {
        n2_client
            .get_request(client::kv::GetRequest {
                key: "after".into(),
                consistency: client::Consistency::Stale as i32,
                ..Default::default()
            })
            .await
            .is_ok_and(|r| r.found)
    })
    .await?;
    let s = status(&nodes[0]).await.ok_or("no status from n1")?;
    let moved = format!("member n2 is at raft {} / grpc {} in gossip", n2.raft_addr, n2.grpc_addr);
    assert!(s.disagreements.iter().any(|d| d.starts_with(&moved)), "{:?}", s.disagreements);

    // n2 leads; n3 forwards a write to n2's new client address, which only gossip has.
    let transferred = cluster.transfer_leader(Some("n2"), Duration::from_secs(30)).await?;
    assert_eq!(transferred.leader_id, "n2");
    // A bare gRPC client (no leader hints followed, no retries): only n3's own forwarding
    // can make this succeed.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", nodes[2].grpc_addr))?.connect().await?;
    let mut req = tonic::Request::new(client::kv::PutRequest {
        key: "forwarded".into(),
        value: "3".into(),
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(20));
    let put = client::kv::kv_client::KvClient::new(channel).put(req).await?.into_inner();
    assert_eq!(put.header.map(|h| h.node_id).as_deref(), Some("n2"), "served by the leader n2 after forwarding");
    let got = n2_client.get("forwarded").await?;
    assert!(got.found);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn clusters_with_other_cluster_ids_never_see_each_other() -> TestResult {
    let dir = tempfile::tempdir()?;
    let a1 = node("a1", dir.path()).bootstrap(true).args(gossip_args("blue", &[])).start()?;
    let a1_gossip = gossip_addr(&a1)?;
    // b1 seeds itself with blue's address on purpose.
    let b1 = node("b1", dir.path()).bootstrap(true).args(gossip_args("green", &[&a1_gossip])).start()?;
    let b1_gossip = gossip_addr(&b1)?;
    let seeds = [a1_gossip.as_str(), b1_gossip.as_str()];
    let a2 = node("a2", dir.path()).args(gossip_args("blue", &seeds)).start()?;
    let b2 = node("b2", dir.path()).args(gossip_args("green", &seeds)).start()?;
    let blue = vec!["a1".to_string(), "a2".into()];
    let green = vec!["b1".to_string(), "b2".into()];
    wait_for("each cluster to form", CONVERGE_BOUND, || async {
        gossip_ids(&a1, GossipLiveness::Live).await.as_ref() == Some(&blue)
            && gossip_ids(&b1, GossipLiveness::Live).await.as_ref() == Some(&green)
    })
    .await?;
    // Twenty more gossip rounds: still apart, on every node, in every state.
    tokio::time::sleep(Duration::from_millis(GOSSIP_INTERVAL_MS * 20)).await;
    for (n, want) in [(&a1, &blue), (&a2, &blue), (&b1, &green), (&b2, &green)] {
        let s = status(n).await.ok_or("no status")?;
        let ids: Vec<String> = s.gossip_nodes.iter().map(|g| g.id.clone()).collect();
        assert_eq!(&ids, want, "{} sees {ids:?}", n.id);
    }
    Ok(())
}

/// `gossip_args` with the gossip key `key`.
fn sealed_args(cluster: &str, seeds: &[&str], key: &std::path::Path) -> Vec<String> {
    let mut a = gossip_args(cluster, seeds);
    a.extend(["--gossip-key-file".to_string(), key.display().to_string()]);
    a
}

/// What n's Status says it dropped (sealed gossip), `None` when it cannot say.
async fn drops(n: &NodeProc) -> Option<client::admin::GossipDrops> {
    status(n).await.filter(|s| s.gossip_sealed).and_then(|s| s.gossip_drops)
}

async fn all_gossip_ids(n: &NodeProc) -> Option<Vec<String>> {
    Some(status(n).await?.gossip_nodes.iter().map(|g| g.id.clone()).collect())
}

/// Sealed gossip (`--gossip-key-file`) on real processes: two nodes with the key see each
/// other; datagrams forged, replayed or of junk, sent from the test's own UDP socket, and
/// the datagrams of a node with another key and of a node of another cluster id with the
/// same key, are all dropped, counted in Status, and change nothing in the view.
#[tokio::test(flavor = "multi_thread")]
async fn sealed_gossip_admits_only_key_holders_and_counts_forged_replayed_and_foreign_datagrams() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (key, other_key) = (dir.path().join("gossip.key"), dir.path().join("other.key"));
    proc_harness::certs::write_gossip_key(&key)?;
    proc_harness::certs::write_gossip_key(&other_key)?;
    // The test's own socket: a seed of n2, so it receives n2's real (sealed) datagrams.
    let spy = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let spy_addr = spy.local_addr()?.to_string();
    let n1 = node("n1", dir.path()).bootstrap(true).args(sealed_args("sealed", &[], &key)).start()?;
    let n1_gossip = gossip_addr(&n1)?;
    let n2 = node("n2", dir.path()).args(sealed_args("sealed", &[&n1_gossip, &spy_addr], &key)).start()?;
    let both = vec!["n1".to_string(), "n2".into()];
    wait_for("n1 and n2 to see each other over sealed gossip", CONVERGE_BOUND, || async {
        gossip_ids(&n1, GossipLiveness::Live).await.as_ref() == Some(&both)
            && gossip_ids(&n2, GossipLiveness::Live).await.as_ref() == Some(&both)
    })
    .await?;

    let n2_gossip: std::net::SocketAddr = gossip_addr(&n2)?.parse()?;
    let mut buf = vec![0u8; 65_536];
    let captured = loop {
        let (len, from) = tokio::time::timeout(CONVERGE_BOUND, spy.recv_from(&mut buf)).await??;
        if from == n2_gossip {
            break buf[..len].to_vec();
        }
    };
    assert!(!String::from_utf8_lossy(&captured).contains("raft_addr"), "gossip travels in the clear");
    let before = drops(&n1).await.ok_or("n1 does not report sealed gossip")?;
    let mut forged = captured.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    spy.send_to(&forged, &n1_gossip).await?;
    spy.send_to(b"junk", &n1_gossip).await?;
    spy.send_to(&captured, &n1_gossip).await?;
    spy.send_to(&captured, &n1_gossip).await?;
    wait_for("n1 to count the forged, junk and replayed datagrams", CONVERGE_BOUND, || async {
        drops(&n1).await.is_some_and(|d| {
            d.unauthenticated > before.unauthenticated && d.malformed > before.malformed && d.replayed > before.replayed
        })
    })
    .await?;
    assert_eq!(all_gossip_ids(&n1).await, Some(both.clone()), "dropped datagrams changed n1's view");

    // Another key, and another cluster id with the right key: never admitted.
    let before = drops(&n1).await.ok_or("no drops")?;
    let stranger = node("stranger", dir.path()).args(sealed_args("sealed", &[&n1_gossip], &other_key)).start()?;
    let foreign = node("foreign", dir.path()).args(sealed_args("elsewhere", &[&n1_gossip], &key)).start()?;
    wait_for("n1 to drop twenty of their datagrams", Duration::from_secs(20), || async {
        drops(&n1).await.is_some_and(|d| d.unauthenticated >= before.unauthenticated + 20)
    })
    .await?;
    assert_eq!(
        all_gossip_ids(&n1).await,
        Some(both.clone()),
        "n1 admitted a node without the key or of another cluster"
    );
    assert_eq!(all_gossip_ids(&stranger).await, Some(vec!["stranger".to_string()]));
    assert_eq!(all_gossip_ids(&foreign).await, Some(vec!["foreign".to_string()]));

    let out = raftkvctl(std::slice::from_ref(&n1.grpc_addr), &["status"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Gossip is sealed; datagrams dropped:"), "{text}");
    let key_text = std::fs::read_to_string(&key)?;
    for n in [&n1, &n2, &stranger, &foreign] {
        assert!(!n.log().contains(key_text.trim()), "{}'s log shows the gossip key", n.id);
    }
    eprintln!("sealed gossip: n1 dropped {:?}", drops(&n1).await);
    Ok(())
}

#[test]
fn a_gossip_key_file_others_can_read_or_not_a_key_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("gossip.key");
    proc_harness::certs::write_gossip_key(&key)?;
    let key_arg = key.display().to_string();
    let args = ["--raft_id", "x", "--gossip_addr", "127.0.0.1:0", "--gossip-key-file", &key_arg];
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
        let e = refused_start(&args)?;
        assert!(e.contains(&format!("chmod 600 {key_arg}")), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::write(&key, "c2hvcnQ=\n")?;
    let e = refused_start(&args)?;
    assert!(e.contains("not a gossip key") && e.contains(&key_arg), "{e}");
    let e =
        refused_start(&["--raft_id", "x", "--gossip_addr", "0.0.0.0:0", "--gossip_advertise_addr", "10.0.0.1:7946"])?;
    assert!(e.contains("gossip is not sealed") && e.contains("--gossip-key-file"), "{e}");
    Ok(())
}

#[test]
fn bad_gossip_flags_are_refused_naming_the_flag() -> TestResult {
    let e = refused_start(&["--raft_id", "x", "--gossip_addr", "127.0.0.1"])?;
    assert!(e.contains("--gossip_addr \"127.0.0.1\" is not HOST:PORT"), "{e}");
    let e = refused_start(&["--raft_id", "x", "--gossip_seeds", "127.0.0.1:7946"])?;
    assert!(e.contains("--gossip_seeds, --gossip_advertise_addr and --gossip-key-file need --gossip_addr"), "{e}");
    let e = refused_start(&["--raft_id", "x", "--join"])?;
    assert!(e.contains("--join without addresses finds the cluster through gossip"), "{e}");
    let e = refused_start(&["--raft_id", "x", "--gossip_addr", "0.0.0.0:0", "--insecure"])?;
    assert!(e.contains("--gossip_advertise_addr"), "{e}");
    let e = refused_start(&["--raft_id", "x", "--peers", "n1=127.0.0.1:1"])?;
    assert!(e.contains("--peers: \"n1=127.0.0.1:1\" is not ID=RAFT_ADDR@GRPC_ADDR"), "{e}");
    Ok(())
}
