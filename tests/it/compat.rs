//! The compatibility services on a real three-node cluster, called the way the Go seeds'
//! clients call them: the `Example` service through the client generated from the seed's
//! proto (package-less, so `/Example/Add`, ...), and gRPC health with the service name
//! `quis.RaftLeader`, which `raftadmin --leader` checks to find the leader. grpc-go's
//! `:authority` for a multi-address target (`multi:///a,b`) is sent as grpc-go sends it, by
//! a raw HTTP/2 client ([`raw_h2`]).

#![allow(clippy::print_stderr)] // tests report what they did on stderr

use std::time::{Duration, Instant};

use client::RaftState;
use proto::compat::example::example_client::ExampleClient;
use proto::compat::example::{
    AddRequest, AddWordRequest, GetRequest, GetResponse, GetWordsRequest, StatRequest, WatchRequest, WatchResponse,
};
use tests::{BoxError, Cluster, FAST_TIMING, NodeClient, NodeProc, TestResult, wait_for};
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

/// What Jille/raft-grpc-example's `hammer` does: 10 concurrent senders of `AddWord`, spread
/// over every node, then `GetWords`, here on every node. The three longest words come back
/// (of equal length, the one that sorts first), whichever node answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_add_word_and_get_words_as_hammer_does() -> TestResult {
    const WORDS: usize = 300;
    const SENDERS: usize = 10;
    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    let all: Vec<String> = (1..=WORDS).map(|i| format!("{}{i}", "ab".repeat(i % 17))).collect();
    let mut expected = all.clone();
    expected.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    expected.truncate(3);

    let queue = std::sync::Arc::new(std::sync::Mutex::new(all));
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let mut client = example(&cluster.nodes[s % 3])?;
        let queue = queue.clone();
        senders.push(tokio::spawn(async move {
            let mut indexes = Vec::new();
            loop {
                let next = queue.lock().map_err(|e| e.to_string())?.pop();
                let Some(word) = next else { return Ok::<_, String>(indexes) };
                let resp = client.add_word(request(AddWordRequest { word })).await.map_err(|e| e.to_string())?;
                indexes.push(resp.into_inner().commit_index);
            }
        }));
    }
    let mut indexes = Vec::new();
    for sender in senders {
        indexes.extend(sender.await??);
    }
    let last = indexes.iter().copied().max().unwrap_or(0);
    indexes.sort_unstable();
    indexes.dedup();
    assert_eq!(indexes.len(), WORDS, "every AddWord is its own write with its own index");

    for node in &cluster.nodes {
        let resp = example(node)?.get_words(request(GetWordsRequest {})).await?.into_inner();
        assert_eq!(resp.best_words, expected, "GetWords on {}", node.id);
        assert!(resp.read_at_index >= last, "GetWords on {} read at {} < {last}", node.id, resp.read_at_index);
    }
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
    // grpcurl and most GUI clients ask the older v1alpha protocol first; it lists the same.
    let v1alpha = reflection_services_v1alpha(&cluster.nodes[0].grpc_addr).await?;
    for service in ["Example", "raftkv.v1.KV", "raftkv.admin.v1.Admin", "grpc.health.v1.Health"] {
        assert!(v1alpha.iter().any(|s| s == service), "v1alpha reflection lacks {service}: {v1alpha:?}");
    }
    Ok(())
}

/// `ListServices` through reflection's v1alpha protocol (`grpc.reflection.v1alpha`).
async fn reflection_services_v1alpha(addr: &str) -> Result<Vec<String>, BoxError> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut client = ServerReflectionClient::new(channel(addr)?);
    let mut stream = client.server_reflection_info(self::request(futures::stream::iter([req]))).await?.into_inner();
    let resp = stream.message().await?.ok_or("no v1alpha reflection answer")?;
    match resp.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => Ok(list.service.into_iter().map(|s| s.name).collect()),
        other => Err(format!("unexpected v1alpha reflection answer {other:?}").into()),
    }
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

/// A client with no proto files: it learns `raftkv.v1.KV` through reflection alone, builds a
/// `PutRequest` dynamically, sends it as raw bytes and reads the `PutResponse` dynamically.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflection_client_puts_with_no_proto_files() -> TestResult {
    use prost::Message;
    use prost_reflect::{DynamicMessage, Value};
    let cluster = Cluster::start(1, &FAST_TIMING).await?;
    let addr = cluster.nodes[0].grpc_addr.clone();
    let services = reflection_services(&addr).await?;
    assert!(services.iter().any(|s| s == "raftkv.v1.KV"), "reflection lists {services:?}");

    let pool = reflection_pool(&addr, "raftkv.v1.KV").await?;
    let put = pool
        .get_service_by_name("raftkv.v1.KV")
        .ok_or("no raftkv.v1.KV in the descriptors")?
        .methods()
        .find(|m| m.name() == "Put")
        .ok_or("raftkv.v1.KV has no Put")?;
    let mut request = DynamicMessage::new(put.input());
    request.try_set_field_by_name("key", Value::Bytes(b"reflected".to_vec().into()))?;
    request.try_set_field_by_name("value", Value::Bytes(b"by descriptor".to_vec().into()))?;

    let mut grpc = tonic::client::Grpc::new(channel(&addr)?);
    grpc.ready().await?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/raftkv.v1.KV/Put");
    let answer = grpc.unary(Request::new(request.encode_to_vec()), path, RawCodec).await?.into_inner();
    let response = DynamicMessage::decode(put.output(), answer.as_slice())?;
    let header = response.get_field_by_name("header").ok_or("PutResponse has no header")?;
    let index = header.as_message().and_then(|h| h.get_field_by_name("index")).and_then(|i| i.as_u64());
    eprintln!("dynamic PutResponse: header.index {index:?}");
    assert!(index.is_some_and(|i| i > 0), "header.index of {response:?}");

    let got = cluster.nodes[0].client()?.get("reflected").await?;
    assert!(got.kv.is_some_and(|kv| kv.value.as_ref() == b"by descriptor"), "the normal client reads it back");
    Ok(())
}

/// The descriptors of `symbol`'s file and of every file it imports, from reflection only.
async fn reflection_pool(addr: &str, symbol: &str) -> Result<prost_reflect::DescriptorPool, BoxError> {
    use prost::Message;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut files: Vec<prost_types::FileDescriptorProto> = Vec::new();
    let mut wanted = Vec::new();
    let mut answer = reflection_file_containing(addr, symbol).await?;
    loop {
        for bytes in answer {
            let file = prost_types::FileDescriptorProto::decode(bytes.as_slice())?;
            if files.iter().all(|f| f.name != file.name) {
                wanted.extend(file.dependency.iter().cloned());
                files.push(file);
            }
        }
        wanted.retain(|name| files.iter().all(|f| f.name.as_deref() != Some(name)));
        let Some(name) = wanted.pop() else { break };
        answer = match reflection_call(addr, MessageRequest::FileByFilename(name)).await? {
            MessageResponse::FileDescriptorResponse(f) => f.file_descriptor_proto,
            other => return Err(format!("unexpected reflection answer {other:?}").into()),
        };
    }
    let set = prost_types::FileDescriptorSet { file: files };
    Ok(prost_reflect::DescriptorPool::from_file_descriptor_set(set)?)
}

/// A gRPC codec of raw message bytes, for calls built from descriptors.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_health_is_serving_on_exactly_the_leader_and_moves_with_it() -> TestResult {
    let mut cluster = Cluster::start(3, &FAST_TIMING).await?;
    let leader = wait_health_leader(&cluster, Duration::from_secs(10)).await?;
    for node in &cluster.nodes {
        for service in ["raftkv.v1.KV", "Example"] {
            assert_eq!(health(node, service).await, Ok(ServingStatus::Serving), "{service:?} on {}", node.id);
        }
        // The whole server ("") is the node's readiness (caught up with the leader), which a
        // converged cluster reaches within a readiness check or two.
        wait_for(&format!("{} to be ready", node.id), Duration::from_secs(10), || async {
            health(node, "").await == Ok(ServingStatus::Serving)
        })
        .await?;
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

/// The `:authority` grpc-go sends when it dials `multi:///127.0.0.1:1,127.0.0.1:2` (the
/// target's endpoint, which is not a URI authority): how `raftadmin --leader multi:///...`
/// and Jille/raft-grpc-example's `hammer` reach every node.
const MULTI_ADDRESS_AUTHORITY: &str = "127.0.0.1:1,127.0.0.1:2";

/// A unary gRPC call written frame by frame, so that its headers can be what no generated
/// client would send (the `http` crate, under tonic and h2's client, refuses to build such an
/// authority). Request headers are HPACK literals without Huffman coding, which any HTTP/2
/// server must accept; the answer is read frame by frame without decoding its headers: a
/// gRPC server sends a DATA frame only for a successful unary call.
mod raw_h2 {
    use tests::BoxError;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const DATA: u8 = 0x0;
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    const ACK: u8 = 0x1;
    const STREAM: u32 = 1;

    /// How a call's stream ended.
    #[derive(Debug)]
    pub(crate) enum Answer {
        /// The server ended the stream normally; `message` is the gRPC message of its DATA
        /// frames (empty when it answered with trailers only, that is with an error status).
        Ended { message: Vec<u8> },
        /// The server reset the stream (RST_STREAM) with this HTTP/2 error code.
        Reset(u32),
    }

    impl Answer {
        /// The gRPC message of a call that ended normally; an error naming `what` when the
        /// server reset the stream.
        pub(crate) fn message(self, what: &str) -> Result<Vec<u8>, BoxError> {
            match self {
                Answer::Ended { message } => Ok(message),
                Answer::Reset(code) => Err(format!(
                    "{what}: the server reset the stream with HTTP/2 error code {code} (1 is PROTOCOL_ERROR)"
                )
                .into()),
            }
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// One HPACK "literal header field without indexing, new name" (RFC 7541 §6.2.2), no
    /// Huffman coding.
    fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
        out.push(0x00);
        for s in [name, value] {
            hpack_int(out, s.len());
            out.extend_from_slice(s.as_bytes());
        }
    }

    /// An HPACK integer with a 7-bit prefix and the Huffman bit clear (RFC 7541 §5.1).
    fn hpack_int(out: &mut Vec<u8>, mut n: usize) {
        if n < 127 {
            out.push(n as u8);
            return;
        }
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }

    /// Calls `path` on `addr` with `:authority` set to `authority` and `message` (an encoded
    /// protobuf) as the request; gives up after 10 s.
    pub(crate) async fn unary(addr: &str, authority: &str, path: &str, message: &[u8]) -> Result<Answer, BoxError> {
        let call = unary_inner(addr, authority, path, message);
        tokio::time::timeout(std::time::Duration::from_secs(10), call).await.map_err(|_| "no answer within 10 s")?
    }

    async fn unary_inner(addr: &str, authority: &str, path: &str, message: &[u8]) -> Result<Answer, BoxError> {
        let mut tcp = TcpStream::connect(addr).await?;
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            literal(&mut block, name, value);
        }
        let mut grpc = vec![0u8];
        grpc.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
        grpc.extend_from_slice(message);
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        out.extend(frame(HEADERS, END_HEADERS, STREAM, &block));
        out.extend(frame(DATA, END_STREAM, STREAM, &grpc));
        tcp.write_all(&out).await?;

        let mut data = Vec::new();
        loop {
            let mut head = [0u8; 9];
            tcp.read_exact(&mut head).await?;
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
            let mut payload = vec![0u8; len];
            tcp.read_exact(&mut payload).await?;
            match (kind, stream) {
                (SETTINGS, 0) if flags & ACK == 0 => tcp.write_all(&frame(SETTINGS, ACK, 0, &[])).await?,
                (GOAWAY, 0) => return Err(format!("GOAWAY from the server: {payload:?}").into()),
                (RST_STREAM, STREAM) => {
                    let code = payload.get(..4).ok_or("short RST_STREAM")?;
                    return Ok(Answer::Reset(u32::from_be_bytes([code[0], code[1], code[2], code[3]])));
                }
                (DATA, STREAM) => data.extend_from_slice(&payload),
                _ => {}
            }
            if stream == STREAM && flags & END_STREAM != 0 {
                // Strip the gRPC message prefix (compression flag and length).
                let message = data.get(5..).map(<[u8]>::to_vec).unwrap_or_default();
                return Ok(Answer::Ended { message });
            }
        }
    }
}

/// An HTTP/2 client that can send a multi-address `:authority`.
#[derive(Clone, Copy, Debug)]
enum RawClient {
    /// [`raw_h2`], frame by frame.
    Frames,
    /// Python's h2 (`tests/python/h2_unary.py`, Debian's `python3-h2`), which also decodes
    /// the answer's headers, so the gRPC status in the trailers is checked too.
    PythonH2,
}

impl RawClient {
    async fn unary(self, addr: &str, path: &str, message: &[u8]) -> Result<raw_h2::Answer, BoxError> {
        match self {
            RawClient::Frames => raw_h2::unary(addr, MULTI_ADDRESS_AUTHORITY, path, message).await,
            RawClient::PythonH2 => python_h2_unary(addr, path, message).await,
        }
    }
}

/// One call through `tests/python/h2_unary.py` with Debian's Python (`/usr/bin/python3`,
/// where `python3-h2` installs).
async fn python_h2_unary(addr: &str, path: &str, message: &[u8]) -> Result<raw_h2::Answer, BoxError> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/h2_unary.py");
    let hex: String = message.iter().map(|b| format!("{b:02x}")).collect();
    let args = [script.to_string(), addr.to_string(), MULTI_ADDRESS_AUTHORITY.to_string(), path.to_string(), hex];
    // The script gives up by itself after 10 s without an answer.
    let out = tokio::task::spawn_blocking(move || std::process::Command::new("/usr/bin/python3").args(&args).output())
        .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("h2_unary.py {path} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let answer: serde_json::Value = serde_json::from_str(stdout.trim())?;
    if let Some(code) = answer["reset"].as_u64() {
        return Ok(raw_h2::Answer::Reset(u32::try_from(code)?));
    }
    // A successful call: HTTP 200, then grpc-status 0 in the trailers.
    assert_eq!(answer["headers"][":status"], "200", "{path} on {addr}: {answer}");
    assert_eq!(answer["trailers"]["grpc-status"], "0", "{path} on {addr}: {answer}");
    let hex = answer["message"].as_str().ok_or("no message")?;
    let message =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16)).collect::<Result<_, _>>()?;
    Ok(raw_h2::Answer::Ended { message })
}

/// On every node of a three-node cluster, through `client`: `raftkv.v1.KV/Get` and the
/// `quis.RaftLeader` health check on the client port, `Raft/Identify` on the Raft port, each
/// with the `:authority` of a multi-address target.
async fn multi_address_authority_is_served(client: RawClient) -> TestResult {
    use prost::Message;

    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    let leader = wait_health_leader(&cluster, Duration::from_secs(10)).await?;
    let written = cluster.client()?.put("multi-authority", "hello").await?;
    eprintln!("{client:?}: wrote multi-authority at index {}", written.header.map_or(0, |h| h.index));

    for (i, node) in cluster.nodes.iter().enumerate() {
        // raftkv.v1.KV/Get, linearizable (a follower asks the leader for a read index).
        let req = proto::kv::v1::GetRequest { key: b"multi-authority".to_vec().into(), ..Default::default() };
        let answer = client.unary(&node.grpc_addr, "/raftkv.v1.KV/Get", &req.encode_to_vec()).await?;
        let message = answer.message(&format!("KV/Get on {}", node.id))?;
        let got = proto::kv::v1::GetResponse::decode(message.as_slice())?;
        assert!(got.found, "KV/Get on {}: {got:?}", node.id);
        assert_eq!(got.kv.map(|kv| kv.value).as_deref(), Some(&b"hello"[..]), "KV/Get on {}", node.id);

        // The health check raftadmin --leader and hammer run on every address of the list.
        let req = HealthCheckRequest { service: RAFT_LEADER.into() };
        let answer = client.unary(&node.grpc_addr, "/grpc.health.v1.Health/Check", &req.encode_to_vec()).await?;
        let message = answer.message(&format!("Health/Check on {}", node.id))?;
        let status = HealthCheckResponse::decode(message.as_slice())?.status();
        let expected = if i == leader { ServingStatus::Serving } else { ServingStatus::NotServing };
        assert_eq!(status, expected, "quis.RaftLeader on {}", node.id);

        // The Raft port runs the same HTTP/2 server.
        let req = proto::raft::v1::IdentifyRequest {};
        let answer = client.unary(&node.raft_addr, "/raftkv.raft.v1.Raft/Identify", &req.encode_to_vec()).await?;
        let message = answer.message(&format!("Raft/Identify on {}", node.id))?;
        assert_eq!(proto::raft::v1::IdentifyResponse::decode(message.as_slice())?.node_id, node.id);
    }
    Ok(())
}

/// What grpc-go clients dialing `multi:///a,b,c` send: an `:authority` that is a list of
/// addresses. Upstream h2 resets such a stream with PROTOCOL_ERROR (hyperium/h2#525);
/// raftkv's patched copy (crates/vendor/README.md) serves it by its path, on both ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_go_multi_address_authority_is_served_on_both_ports() -> TestResult {
    multi_address_authority_is_served(RawClient::Frames).await
}

/// The same through a third-party HTTP/2 client, Python's h2 with header validation off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Debian's python3-h2 for /usr/bin/python3; .ci/run installs it and runs this"]
async fn python_h2_with_a_multi_address_authority_is_served_on_both_ports() -> TestResult {
    multi_address_authority_is_served(RawClient::PythonH2).await
}
