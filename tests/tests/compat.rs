//! The compatibility services on a real three-node cluster, called the way the Go seeds'
//! clients call them: the `Example` service through the client generated from the seed's
//! proto (package-less, so `/Example/Add`, ...), and gRPC health with the service name
//! `quis.RaftLeader`, which `raftadmin --leader` checks to find the leader.

#![allow(clippy::print_stderr)] // tests report what they did on stderr

use std::time::{Duration, Instant};

use client::RaftState;
use proto::compat::example::example_client::ExampleClient;
use proto::compat::example::{AddRequest, GetRequest, GetResponse, StatRequest, WatchRequest, WatchResponse};
use tests::{BoxError, Cluster, FAST_TIMING, NodeProc, TestResult};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The health service name that is SERVING only on the leader.
const RAFT_LEADER: &str = "quis.RaftLeader";
/// How long one call in these tests may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A channel to `addr`, connected on first use (so a dead node fails the call, not this).
fn channel(addr: &str) -> Result<Channel, BoxError> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?.connect_timeout(Duration::from_secs(2)).connect_lazy())
}

fn example(node: &NodeProc) -> Result<ExampleClient<Channel>, BoxError> {
    Ok(ExampleClient::new(channel(&node.grpc_addr)?))
}

fn request<T>(message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.set_timeout(CALL_TIMEOUT);
    req
}

async fn add(node: &NodeProc, key: &str, val: &str) -> Result<u64, BoxError> {
    let req = AddRequest { key: key.into(), val: val.into() };
    Ok(example(node)?.add(request(req)).await?.into_inner().commit_index)
}

async fn get(node: &NodeProc, key: &str, linearizable: bool) -> Result<GetResponse, BoxError> {
    Ok(example(node)?.get(request(GetRequest { key: key.into(), linearizable })).await?.into_inner())
}

async fn stat(node: &NodeProc) -> Result<serde_json::Value, BoxError> {
    let text = example(node)?.stat(request(StatRequest {})).await?.into_inner().stats;
    assert!(text.contains("\n  \""), "Stat is pretty-printed JSON: {text}");
    Ok(serde_json::from_str(&text)?)
}

/// `Check(service)` on `node`: the status, or the error code when the call fails.
async fn health(node: &NodeProc, service: &str) -> Result<ServingStatus, Code> {
    let ch = channel(&node.grpc_addr).map_err(|_| Code::Internal)?;
    let mut req = Request::new(HealthCheckRequest { service: service.into() });
    req.set_timeout(Duration::from_secs(2));
    HealthClient::new(ch).check(req).await.map(|r| HealthCheckResponse::status(r.get_ref())).map_err(|s| s.code())
}

/// The indexes of the running nodes whose `quis.RaftLeader` health is SERVING, and whether
/// every other running node answered NOT_SERVING.
async fn health_leaders(cluster: &Cluster) -> (Vec<usize>, bool) {
    let mut serving = Vec::new();
    let mut others_not_serving = true;
    for (i, node) in cluster.nodes.iter().enumerate().filter(|(_, n)| n.pid().is_some()) {
        match health(node, RAFT_LEADER).await {
            Ok(ServingStatus::Serving) => serving.push(i),
            Ok(ServingStatus::NotServing) => {}
            _ => others_not_serving = false,
        }
    }
    (serving, others_not_serving)
}

/// Waits until `probe` gives a value, checking every 20 ms, for at most `timeout`.
async fn wait_for_value<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T, BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until exactly one running node is SERVING for `quis.RaftLeader`, every other one
/// NOT_SERVING, and that node is the one Raft calls leader. Returns its index.
async fn wait_health_leader(cluster: &Cluster, timeout: Duration) -> Result<usize, BoxError> {
    wait_for_value("quis.RaftLeader SERVING on exactly the leader", timeout, || async {
        let (serving, others_not_serving) = health_leaders(cluster).await;
        let leader = cluster.leader().await;
        (others_not_serving && serving.len() == 1 && leader == Some(serving[0])).then(|| serving[0])
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_service_add_and_get_through_every_node() -> TestResult {
    let mut cluster = Cluster::start(3, &FAST_TIMING).await?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    let (f1, f2) = ((leader + 1) % 3, (leader + 2) % 3);

    // Add through a follower: forwarded to the leader, answered with the write's log index.
    let first = add(&cluster.nodes[f1], "compat-key", "hello").await?;
    let second = add(&cluster.nodes[f2], "compat-other", "world").await?;
    assert!(first > 0 && second > first, "commit indexes grow: {first} then {second}");

    for node in &cluster.nodes {
        // Linearizable: through the leader; reflects every acknowledged write.
        let got = get(node, "compat-key", true).await?;
        assert_eq!(got.value, "hello", "linearizable read via {}", node.id);
        assert!(got.read_at_index >= second, "read_at_index {} < {second} via {}", got.read_at_index, node.id);
        // Stale: this node's own state, which may lag; it catches up.
        let stale = wait_for_value(&format!("{} to apply the write", node.id), Duration::from_secs(10), || async {
            get(node, "compat-other", false).await.ok().filter(|g| g.value == "world")
        })
        .await?;
        assert!(stale.read_at_index >= second, "stale read_at_index {} < {second}", stale.read_at_index);
        // A missing key reads as "" (the seed's behaviour), both ways.
        assert_eq!(get(node, "compat-missing", true).await?.value, "");
        assert_eq!(get(node, "compat-missing", false).await?.value, "");
    }
    // Overwrite, then read it back from another node.
    let third = add(&cluster.nodes[leader], "compat-key", "again").await?;
    assert!(third > second);
    assert_eq!(get(&cluster.nodes[f1], "compat-key", true).await?.value, "again");

    // The stale read answers with no leader check: a follower cut off from its peers still
    // answers from its own state, where a linearizable read cannot.
    let survivor_follower = f1;
    for i in [leader, f2] {
        cluster.nodes[i].kill();
    }
    let lonely = &cluster.nodes[survivor_follower];
    let stale = get(lonely, "compat-key", false).await?;
    assert_eq!(stale.value, "again", "the stale read is served by the isolated node");
    let mut lin = example(lonely)?;
    let mut req = Request::new(GetRequest { key: "compat-key".into(), linearizable: true });
    req.set_timeout(Duration::from_secs(2));
    let err = lin.get(req).await.err().ok_or("a linearizable read without a quorum succeeded")?;
    assert!(
        matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded),
        "linearizable read without a quorum: {err:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_service_refuses_bad_input_with_clear_statuses() -> TestResult {
    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    let node = &cluster.nodes[1];

    let err = add(node, "", "v").await.err().ok_or("an empty key was accepted")?;
    let status = err.downcast_ref::<tonic::Status>().ok_or("not a gRPC status")?;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("key is empty"), "{status:?}");

    let big = "x".repeat(5000);
    let err = get(node, &big, false).await.err().ok_or("an oversized key was accepted")?;
    let status = err.downcast_ref::<tonic::Status>().ok_or("not a gRPC status")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("MAX_KEY_BYTES"), "{status:?}");

    // A value written through the native bytes API that is not UTF-8 cannot be a proto3
    // string: refused, not altered.
    cluster.client()?.put("compat-binary", vec![0xff, 0xfe, 0x00]).await?;
    for linearizable in [true, false] {
        let status = wait_for_value("the binary value to be refused", Duration::from_secs(10), || async {
            let err = get(node, "compat-binary", linearizable).await.err()?;
            err.downcast_ref::<tonic::Status>().filter(|s| s.code() == Code::FailedPrecondition).cloned()
        })
        .await?;
        assert!(status.message().contains("not valid UTF-8"), "{status:?}");
    }

    // Watch: the current value at once (min_index 0), then each change to the key, and the
    // current value again after timeout_seconds without one (the seed's heartbeat).
    let first = add(node, "compat-watch", "one").await?;
    // The write was acknowledged by the leader; this node (a follower) answers from its own
    // state, so let it apply the write first.
    wait_for_value("the follower to apply the write", Duration::from_secs(10), || async {
        get(node, "compat-watch", false).await.ok().filter(|g| g.value == "one")
    })
    .await?;
    let req = WatchRequest { key: "compat-watch".into(), min_index: 0, timeout_seconds: 1 };
    let mut watch = example(node)?.watch(Request::new(req)).await?.into_inner();
    let m = next(&mut watch).await??.ok_or("the watch ended")?;
    assert!(m.value == "one" && m.current_index >= first && !m.abandoned, "{m:?}");
    let second = add(node, "compat-watch", "two").await?;
    let m = next(&mut watch).await??.ok_or("the watch ended")?;
    assert!(m.value == "two" && m.current_index >= second, "{m:?}");
    let started = Instant::now();
    let m = next(&mut watch).await??.ok_or("the watch ended")?;
    assert!(m.value == "two" && started.elapsed() >= Duration::from_millis(500), "heartbeat {m:?}");
    // Resuming after the last index seen waits for the next change only.
    let req = WatchRequest { key: "compat-watch".into(), min_index: m.current_index + 1, timeout_seconds: 60 };
    let mut resumed = example(node)?.watch(Request::new(req)).await?.into_inner();
    let third = add(node, "compat-watch", "three").await?;
    let m = next(&mut resumed).await??.ok_or("the watch ended")?;
    assert!(m.value == "three" && m.current_index >= third, "{m:?}");
    Ok(())
}

async fn next(
    w: &mut tonic::Streaming<WatchResponse>,
) -> Result<Result<Option<WatchResponse>, tonic::Status>, BoxError> {
    Ok(tokio::time::timeout(CALL_TIMEOUT, w.message()).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_stat_has_the_seed_keys_on_every_node() -> TestResult {
    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    add(&cluster.nodes[0], "compat-stat", "v").await?;
    cluster.wait_converged(Duration::from_secs(30)).await?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    let mut ids: Vec<&str> = cluster.nodes.iter().map(|n| n.id.as_str()).collect();
    ids.sort_unstable();
    let mut leaders = 0;
    for node in &cluster.nodes {
        let s = stat(node).await?;
        for key in ["node_id", "addr", "last_applied_index", "leader", "nodes", "raft", "fsm"] {
            assert!(s.get(key).is_some(), "Stat of {} lacks {key}: {s:#}", node.id);
        }
        assert_eq!(s["node_id"], node.id.as_str());
        assert_eq!(s["addr"], node.raft_addr.as_str());
        assert_eq!(s["leader"]["node_id"], cluster.nodes[leader].id.as_str());
        assert_eq!(s["leader"]["addr"], cluster.nodes[leader].raft_addr.as_str());
        let nodes = s["nodes"].as_array().ok_or("nodes is not an array")?;
        let listed: Vec<&str> = nodes.iter().filter_map(|n| n["id"].as_str()).collect();
        assert_eq!(listed, ids, "nodes sorted by id");
        assert!(nodes.iter().all(|n| n["suffrage"] == "Voter" && n["addr"].as_str().is_some_and(|a| !a.is_empty())));
        let raft = &s["raft"];
        for key in
            ["state", "term", "commit_index", "applied_index", "last_log_index", "last_snapshot_index", "num_peers"]
        {
            assert!(raft.get(key).is_some(), "raft lacks {key}: {raft:#}");
        }
        if raft["state"] == "Leader" {
            leaders += 1;
        } else {
            assert_eq!(raft["state"], "Follower");
        }
        assert_eq!(raft["num_peers"], 2);
        assert_eq!(raft["voter"], true);
        let applied = s["last_applied_index"].as_u64().ok_or("last_applied_index is not a number")?;
        assert!(applied > 0 && raft["applied_index"].as_u64() == Some(applied));
        assert!(raft["commit_index"].as_u64().is_some_and(|c| c >= applied));
        assert!(s["fsm"]["fsm_index"].as_u64().is_some_and(|i| i >= applied));
        assert_eq!(s["fsm"]["key_count"], 1);
    }
    assert_eq!(leaders, 1, "exactly one node reports Leader");

    // gRPC reflection describes the package-less service, so grpc_cli can call it by name.
    let files = reflection_file_containing(&cluster.nodes[0].grpc_addr, "Example").await?;
    assert!(files.iter().any(|f| contains(f, b"compat/example.proto")), "no descriptor of compat/example.proto");
    assert!(reflection_services(&cluster.nodes[0].grpc_addr).await?.iter().any(|s| s == "Example"));
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn reflection_call(
    addr: &str,
    request: tonic_reflection::pb::v1::server_reflection_request::MessageRequest,
) -> Result<tonic_reflection::pb::v1::server_reflection_response::MessageResponse, BoxError> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    let req = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
    let mut client = ServerReflectionClient::new(channel(addr)?);
    let mut stream = client.server_reflection_info(self::request(futures::stream::iter([req]))).await?.into_inner();
    let resp = stream.message().await?.ok_or("no reflection answer")?;
    resp.message_response.ok_or_else(|| "empty reflection answer".into())
}

async fn reflection_services(addr: &str) -> Result<Vec<String>, BoxError> {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    match reflection_call(addr, MessageRequest::ListServices(String::new())).await? {
        MessageResponse::ListServicesResponse(list) => Ok(list.service.into_iter().map(|s| s.name).collect()),
        other => Err(format!("unexpected reflection answer {other:?}").into()),
    }
}

async fn reflection_file_containing(addr: &str, symbol: &str) -> Result<Vec<Vec<u8>>, BoxError> {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    match reflection_call(addr, MessageRequest::FileContainingSymbol(symbol.into())).await? {
        MessageResponse::FileDescriptorResponse(files) => Ok(files.file_descriptor_proto),
        other => Err(format!("unexpected reflection answer {other:?}").into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_health_is_serving_on_exactly_the_leader_and_moves_with_it() -> TestResult {
    let mut cluster = Cluster::start(3, &FAST_TIMING).await?;
    let leader = wait_health_leader(&cluster, Duration::from_secs(10)).await?;
    for node in &cluster.nodes {
        for service in ["", "raftkv.v1.KV", "Example"] {
            assert_eq!(health(node, service).await, Ok(ServingStatus::Serving), "{service:?} on {}", node.id);
        }
    }

    // SIGKILL the leader: a survivor is elected and only it turns SERVING.
    let old_id = cluster.nodes[leader].id.clone();
    cluster.nodes[leader].kill();
    eprintln!("killed leader {old_id} with SIGKILL");
    let new_leader = wait_health_leader(&cluster, Duration::from_secs(30)).await?;
    assert_ne!(new_leader, leader);

    // The old leader comes back as a follower: NOT_SERVING.
    cluster.nodes[leader].restart(false)?;
    cluster.wait_converged(Duration::from_secs(30)).await?;
    let now = wait_health_leader(&cluster, Duration::from_secs(10)).await?;
    let status = cluster.nodes[leader].client()?.status().await?;
    if status.state != RaftState::Leader as i32 {
        assert_ne!(now, leader);
        assert_eq!(health(&cluster.nodes[leader], RAFT_LEADER).await, Ok(ServingStatus::NotServing));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_health_watch_does_not_hold_up_a_graceful_stop() -> TestResult {
    let mut extra = FAST_TIMING.to_vec();
    extra.extend(["--shutdown_grace", "60s"]);
    let mut cluster = Cluster::start(3, &extra).await?;
    let leader = wait_health_leader(&cluster, Duration::from_secs(10)).await?;
    let follower = (leader + 1) % 3;

    // What grpc-go's client-side health checking (raftadmin --leader) holds open on each node.
    let ch = channel(&cluster.nodes[follower].grpc_addr)?;
    let mut watch = HealthClient::new(ch)
        .watch(Request::new(HealthCheckRequest { service: RAFT_LEADER.into() }))
        .await?
        .into_inner();
    let first = watch.message().await?.ok_or("the watch ended at once")?;
    assert_eq!(first.status(), ServingStatus::NotServing, "a follower is NOT_SERVING");

    let started = Instant::now();
    let node = &mut cluster.nodes[follower];
    assert!(node.stop(), "the node did not stop cleanly; log:\n{}", node.log_tail());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "stopping took {took:?}: the drain waited for the watch stream");
    // The stream saw the node withdraw, then ended (or broke with the connection).
    let mut last = None;
    while let Ok(Some(msg)) = watch.message().await {
        last = Some(msg.status());
    }
    assert!(last.is_none_or(|s| s == ServingStatus::NotServing), "last status {last:?}");
    Ok(())
}
