//! Unit tests: configuration, [`compare`], and gossip among in-process nodes on chitchat's
//! `ChannelTransport` (convergence, partition and healing, graceful leave, cluster ids).

#![allow(clippy::print_stderr)] // tests report what they measured on stderr

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;

const INTERVAL: Duration = Duration::from_millis(50);
/// Generous: detection takes about `detection_bound()` (0.45 s here) on an idle machine.
const WAIT: Duration = Duration::from_secs(15);

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap_or_else(|e| panic!("{e}"))
}

fn info(raft: &str, grpc: &str) -> NodeInfo {
    NodeInfo { raft_addr: raft.into(), grpc_addr: grpc.into() }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn config(port: u16, seeds: &[u16], cluster: &str) -> GossipConfig {
    let mut c = GossipConfig::new(addr(port).to_string());
    c.seeds = seeds.iter().map(|p| addr(*p).to_string()).collect();
    c.cluster_id = cluster.into();
    c.interval = INTERVAL;
    c
}

async fn start(t: &ChannelTransport, name: &str, port: u16, seeds: &[u16], cluster: &str) -> Gossip {
    let meta = NodeMeta::new(id(name), info(&format!("{name}:1"), &format!("{name}:2")), "test");
    Gossip::start(config(port, seeds, cluster), meta, t).await.unwrap_or_else(|e| panic!("{e}"))
}

fn live(view: &View) -> Vec<String> {
    view.values().filter(|p| p.liveness == Liveness::Live).map(|p| p.meta.id.to_string()).collect()
}

async fn wait_until<F, Fut>(what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < WAIT, "timed out after {WAIT:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

async fn three(t: &ChannelTransport, base: u16) -> Vec<Gossip> {
    let mut nodes = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let port = base + u16::try_from(i).unwrap_or_default();
        nodes.push(start(t, name, port, &[base], "test").await);
    }
    for n in &nodes {
        wait_until("three live nodes", || async { live(&n.view().await) == ["a", "b", "c"] }).await;
    }
    nodes
}

#[test]
fn keys_are_distinct() {
    for (i, a) in keys::ALL.iter().enumerate() {
        assert!(keys::ALL[i + 1..].iter().all(|b| a != b), "{a} twice");
    }
}

#[test]
fn config_errors_name_the_flag() {
    let ok = GossipConfig::new("127.0.0.1:0");
    assert!(ok.validate().is_ok());
    let check = |f: &dyn Fn(&mut GossipConfig), flag: &str| {
        let mut c = ok.clone();
        f(&mut c);
        let msg = c.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains(flag), "{flag}: {msg}");
    };
    check(&|c| c.listen_addr = "nohost".into(), "--gossip_addr");
    check(&|c| c.advertise_addr = Some("h:0".into()), "--gossip_advertise_addr");
    check(&|c| c.seeds = vec!["h".into()], "--gossip_seeds");
    check(&|c| c.cluster_id = String::new(), "--cluster_id");
    check(&|c| c.interval = Duration::from_millis(1), "--gossip_interval");
    check(&|c| c.phi_threshold = f64::NAN, "--gossip_phi_threshold");
    check(&|c| c.dead_grace = Duration::from_millis(1), "--gossip_dead_grace");
    assert_eq!(ok.detection_bound(), Duration::from_millis(4500));
}

#[tokio::test]
async fn every_interface_needs_an_advertise_address() {
    let meta = NodeMeta::new(id("a"), info("a:1", "a:2"), "test");
    let e = Gossip::start(GossipConfig::new("0.0.0.0:7946"), meta, &ChannelTransport::default()).await;
    let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("--gossip_advertise_addr"), "{msg}");
}

#[test]
fn compare_flags_each_disagreement() {
    let peer = |name: &str, liveness, grpc: &str| PeerState {
        meta: NodeMeta::new(id(name), info("r", grpc), "v"),
        liveness,
        gossip_addr: addr(1),
        generation: 1,
    };
    let view: View = [
        (id("a"), peer("a", Liveness::Live, "g")),
        (id("b"), peer("b", Liveness::Dead, "g")),
        (id("c"), peer("c", Liveness::Live, "new")),
        (id("x"), peer("x", Liveness::Live, "g")),
    ]
    .into();
    let members: BTreeMap<NodeId, NodeInfo> =
        [(id("a"), info("r", "g")), (id("b"), info("r", "g")), (id("c"), info("r", "old")), (id("d"), info("r", "g"))]
            .into();
    let d = compare(&view, &members);
    let text: Vec<String> = d.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "member b is dead in gossip",
            "member d is unknown to gossip",
            "x is live in gossip but not a member",
            "member c is at raft r / grpc new in gossip but raft r / grpc old in the membership",
        ]
    );
    assert!(
        compare(&[(id("a"), peer("a", Liveness::Live, "g"))].into(), &[(id("a"), info("r", "g"))].into()).is_empty()
    );
}

#[tokio::test]
async fn three_nodes_converge_and_share_state() {
    let t = ChannelTransport::default();
    let nodes = three(&t, 11000).await;
    let v = nodes[0].view().await;
    assert_eq!(v.get(&id("b")).map(|p| p.meta.addrs.clone()), Some(info("b:1", "b:2")));
    assert_eq!(nodes[0].resolver().resolve(&id("c")), Some(info("c:1", "c:2")));
    nodes[1].publish_state("leader", Some(&id("b")), 42).await;
    wait_until("c to see b's new state", || async {
        nodes[2].view().await.get(&id("b")).is_some_and(|p| p.meta.role == "leader" && p.meta.applied_index == 42)
    })
    .await;
    let b = nodes[2].view().await.get(&id("b")).map(|p| p.meta.leader.clone());
    assert_eq!(b, Some(Some(id("b"))));
}

#[tokio::test]
async fn a_partition_is_seen_as_dead_and_heals() {
    let t = ChannelTransport::default();
    let nodes = three(&t, 12000).await;
    let mut events = nodes[0].subscribe();
    // Cut c off from a and b.
    t.remove_link(addr(12002), addr(12000)).await;
    t.remove_link(addr(12002), addr(12001)).await;
    let bound = nodes[0].config().detection_bound();
    let took = wait_until("a and b to see c dead, c to see a and b dead", || async {
        live(&nodes[0].view().await) == ["a", "b"]
            && live(&nodes[1].view().await) == ["a", "b"]
            && live(&nodes[2].view().await) == ["c"]
    })
    .await;
    eprintln!("partition detected in {took:?} (bound {bound:?} after the last heartbeat)");
    assert_eq!(nodes[0].view().await.get(&id("c")).map(|p| p.liveness), Some(Liveness::Dead));
    assert_eq!(nodes[0].resolver().resolve(&id("c")), None, "a dead node is not resolved through gossip");
    let ev = tokio::time::timeout(WAIT, events.recv()).await;
    assert!(matches!(ev, Ok(Ok(GossipEvent::Left { ref id, graceful: false })) if id.as_str() == "c"), "{ev:?}");
    // Heal.
    t.add_link(addr(12002), addr(12000)).await;
    t.add_link(addr(12002), addr(12001)).await;
    let took = wait_until("everyone live again", || async {
        let mut ok = true;
        for n in &nodes {
            ok &= live(&n.view().await) == ["a", "b", "c"];
        }
        ok
    })
    .await;
    eprintln!("partition healed in {took:?}");
    assert_eq!(nodes[0].resolver().resolve(&id("c")), Some(info("c:1", "c:2")));
    let ev = tokio::time::timeout(WAIT, events.recv()).await;
    assert!(matches!(ev, Ok(Ok(GossipEvent::Joined { ref id, .. })) if id.as_str() == "c"), "{ev:?}");
}

#[tokio::test]
async fn a_graceful_leave_is_seen_as_left() {
    let t = ChannelTransport::default();
    let nodes = three(&t, 13000).await;
    let mut events = nodes[0].subscribe();
    nodes[2].leave(INTERVAL * 4).await;
    nodes[2].leave(INTERVAL).await; // idempotent
    wait_until("a to see c left", || async {
        nodes[0].view().await.get(&id("c")).is_some_and(|p| p.liveness == Liveness::Left)
    })
    .await;
    let ev = tokio::time::timeout(WAIT, events.recv()).await;
    assert!(matches!(ev, Ok(Ok(GossipEvent::Left { ref id, graceful: true })) if id.as_str() == "c"), "{ev:?}");
    assert_eq!(nodes[0].resolver().resolve(&id("c")), None);
}

#[tokio::test]
async fn clusters_with_other_ids_never_mix() {
    let t = ChannelTransport::default();
    let a = start(&t, "a", 14000, &[14000, 14002], "one").await;
    let b = start(&t, "b", 14001, &[14000], "one").await;
    // x seeds itself with a's address: chitchat drops messages of another cluster id.
    let x = start(&t, "x", 14002, &[14000, 14003], "two").await;
    let y = start(&t, "y", 14003, &[14002], "two").await;
    wait_until("both clusters formed", || async {
        live(&a.view().await) == ["a", "b"] && live(&x.view().await) == ["x", "y"]
    })
    .await;
    // A few more rounds: still apart.
    tokio::time::sleep(INTERVAL * 10).await;
    for (g, want) in [(&a, ["a", "b"]), (&b, ["a", "b"]), (&x, ["x", "y"]), (&y, ["x", "y"])] {
        let view = g.view().await;
        assert_eq!(view.keys().map(ToString::to_string).collect::<Vec<_>>(), want);
    }
}

#[tokio::test]
async fn a_restarted_node_is_resolved_at_its_new_addresses() {
    let t = ChannelTransport::default();
    let a = start(&t, "a", 15000, &[15000], "test").await;
    let b = start(&t, "b", 15001, &[15000], "test").await;
    wait_until("a sees b", || async { a.resolver().resolve(&id("b")).is_some() }).await;
    b.leave(INTERVAL).await;
    drop(b);
    // b comes back with new ports, a new gossip address and a new generation.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let meta = NodeMeta::new(id("b"), info("b:11", "b:12"), "test");
    let _b2 = Gossip::start(config(15002, &[15000], "test"), meta, &t).await.unwrap_or_else(|e| panic!("{e}"));
    wait_until("a resolves b at its new address", || async {
        a.resolver().resolve(&id("b")) == Some(info("b:11", "b:12"))
    })
    .await;
    assert_eq!(a.view().await.get(&id("b")).map(|p| p.liveness), Some(Liveness::Live));
}

/// A key file of 32 bytes `b`, mode 0600.
fn key_file(dir: &std::path::Path, name: &str, b: u8) -> std::path::PathBuf {
    use base64::Engine as _;
    let path = dir.join(name);
    std::fs::write(&path, base64::engine::general_purpose::STANDARD.encode([b; seal::KEY_LEN]))
        .unwrap_or_else(|e| panic!("{e}"));
    #[cfg(unix)]
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .unwrap_or_else(|e| panic!("{e}"));
    path
}

async fn start_sealed(name: &str, seeds: &[SocketAddr], cluster: &str, key: &std::path::Path) -> Gossip {
    let mut c = config(0, &[], cluster);
    c.seeds = seeds.iter().map(ToString::to_string).collect();
    c.key_file = Some(key.to_path_buf());
    let meta = NodeMeta::new(id(name), info(&format!("{name}:1"), &format!("{name}:2")), "test");
    Gossip::start_udp(c, meta).await.unwrap_or_else(|e| panic!("{e}"))
}

fn drops(g: &Gossip) -> DropCounts {
    g.drops().unwrap_or_else(|| panic!("gossip is not sealed"))
}

async fn all_ids(g: &Gossip) -> Vec<String> {
    g.view().await.keys().map(ToString::to_string).collect()
}

#[tokio::test]
async fn sealed_gossip_admits_key_holders_and_drops_forged_replayed_and_foreign_datagrams() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (key, other_key) = (key_file(dir.path(), "k", 7), key_file(dir.path(), "other", 8));
    // The test's own socket on 127.0.0.1: a seed of b, so it receives b's real datagrams.
    let spy = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let spy_addr = spy.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let a = start_sealed("a", &[], "c", &key).await;
    let b = start_sealed("b", &[a.advertise_addr(), spy_addr], "c", &key).await;
    wait_until("a and b to see each other over sealed gossip", || async {
        live(&a.view().await) == ["a", "b"] && live(&b.view().await) == ["a", "b"]
    })
    .await;
    let mut buf = vec![0u8; 65_536];
    let captured = loop {
        let (n, from) = tokio::time::timeout(WAIT, spy.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("b sent nothing to its seed"))
            .unwrap_or_else(|e| panic!("{e}"));
        if from == b.advertise_addr() {
            break buf[..n].to_vec();
        }
    };
    let before = drops(&a);
    let view_before = all_ids(&a).await;

    // Forged: b's datagram with one ciphertext byte changed; and junk.
    let mut forged = captured.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    spy.send_to(&forged, a.advertise_addr()).await.unwrap_or_else(|e| panic!("{e}"));
    spy.send_to(b"not a gossip datagram", a.advertise_addr()).await.unwrap_or_else(|e| panic!("{e}"));
    // Replayed: the same genuine datagram twice (the first is a relay of b's own message).
    for _ in 0..2 {
        spy.send_to(&captured, a.advertise_addr()).await.unwrap_or_else(|e| panic!("{e}"));
    }
    wait_until("a to count the forged, junk and replayed datagrams", || async {
        let d = drops(&a);
        d.unauthenticated > before.unauthenticated && d.malformed > before.malformed && d.replayed > before.replayed
    })
    .await;
    assert_eq!(all_ids(&a).await, view_before, "dropped datagrams changed a's view");

    // A node with another key and one of another cluster id with the same key, both seeded
    // at a: a drops their datagrams and never admits them.
    let before = drops(&a);
    let stranger = start_sealed("stranger", &[a.advertise_addr()], "c", &other_key).await;
    let foreign = start_sealed("foreign", &[a.advertise_addr()], "other-cluster", &key).await;
    wait_until("a to drop a few rounds of the stranger's and the foreign node's datagrams", || async {
        drops(&a).unauthenticated >= before.unauthenticated + 10
    })
    .await;
    assert_eq!(all_ids(&a).await, view_before, "a admitted a node without the key or of another cluster");
    assert_eq!(all_ids(&stranger).await, ["stranger"], "the stranger learnt of a");
    assert_eq!(all_ids(&foreign).await, ["foreign"], "the foreign node learnt of a");
    assert_eq!(drops(&a).stale, 0);
    eprintln!("sealed gossip: a dropped {:?}", drops(&a));
}
