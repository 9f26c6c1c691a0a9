//! The client API on real clusters: consistency levels, compare-and-set, transactions,
//! ranges, binary keys, limits, at-most-once writes, forwarding.

#![allow(clippy::print_stderr)] // tests report what they did on stderr

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use client::kv::{
    Compare, Consistency, DeleteRequest, GetRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, compare,
    request_op,
};
use client::{Client, ClientError, ClientOptions};
use tests::{
    Cluster, FAST_TIMING, NodeClient, TestResult, code, message, one_shot, raftkvctl, raftkvctl_stdin, test_options,
    wait_for,
};
use tonic::Code;

fn get(key: &[u8], consistency: Consistency) -> GetRequest {
    GetRequest { key: key.to_vec().into(), consistency: consistency as i32, ..Default::default() }
}

fn put_op(key: &[u8], value: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::Put(PutRequest {
            key: key.to_vec().into(),
            value: value.to_vec().into(),
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn linearizable_reads_on_every_node_see_the_latest_acknowledged_write() -> TestResult {
    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    let stop = Arc::new(AtomicBool::new(false));
    // Background writers keep the log moving on other keys.
    let mut writers = Vec::new();
    for w in 0..2 {
        let client = cluster.client()?;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = client.put(format!("noise-{w}-{}", n % 50), n.to_string()).await;
                n += 1;
            }
        }));
    }
    let writer = cluster.nodes[cluster.leader().await.ok_or("no leader")?].client()?;
    let readers: Vec<Client> = cluster.nodes.iter().map(|n| n.client()).collect::<Result<_, _>>()?;
    for round in 0..60u64 {
        let value = format!("v{round}");
        writer.put("register", value.clone()).await?;
        for (i, reader) in readers.iter().enumerate() {
            let r = reader.get_request(get(b"register", Consistency::Linearizable)).await?;
            let got = r.kv.map(|kv| kv.value.to_vec()).unwrap_or_default();
            assert_eq!(got, value.as_bytes(), "node {} returned a stale value in round {round}", cluster.nodes[i].id);
            assert_eq!(r.header.map(|h| h.node_id), Some(cluster.nodes[i].id.clone()), "served by the node asked");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_majority_never_serves_linearizable_or_lease_reads() -> TestResult {
    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    cluster.client()?.put("k", "before").await?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    // First a follower cut off (the other two paused), then the leader.
    for cut in [(leader + 1) % 3, leader] {
        cluster.client()?.put("k", format!("while {} is up", cluster.nodes[cut].id)).await?;
        cluster.wait_converged(Duration::from_secs(30)).await?;
        let others: Vec<usize> = (0..3).filter(|i| *i != cut).collect();
        for &o in &others {
            cluster.nodes[o].pause();
        }
        let node = &cluster.nodes[cut];
        let client = Client::new(
            [node.grpc_addr.clone()],
            ClientOptions { max_retries: 0, request_timeout: Duration::from_secs(3), ..test_options() },
        )?;
        // Past the election timeout (500 ms to 1 s) any leader lease has run out.
        let started = Instant::now();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        for level in [Consistency::Linearizable, Consistency::Lease] {
            let t = Instant::now();
            let r = client.get_request(get(b"k", level)).await;
            assert_eq!(code(&r), Some(Code::Unavailable), "{level:?} read on cut-off {}: {r:?}", node.id);
            assert!(t.elapsed() < Duration::from_secs(3), "answered within the 3 s deadline: {:?}", t.elapsed());
        }
        let stale = client.get_request(get(b"k", Consistency::Stale)).await?;
        let header = stale.header.ok_or("no header")?;
        assert!(header.stale, "a stale read says so");
        assert!(stale.found, "a stale read returns the local data");
        if cut != leader {
            assert!(
                u128::from(header.millis_since_leader_contact) + 200 >= started.elapsed().as_millis().min(1200),
                "the stale header says how long since the leader was heard: {header:?}"
            );
        }
        eprintln!("cut off {}: linearizable and lease reads UNAVAILABLE, stale read {header:?}", node.id);
        for &o in &others {
            cluster.nodes[o].resume();
        }
        wait_for("the cluster to heal", Duration::from_secs(30), || async {
            cluster.client().is_ok_and(|_| true) && cluster.leader().await.is_some()
        })
        .await?;
        cluster.wait_converged(Duration::from_secs(30)).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compare_and_set_has_exactly_one_winner() -> TestResult {
    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    let created = cluster.client()?.put("cas", "0").await?;
    let base = created.header.ok_or("no header")?.index;
    let mut tasks = Vec::new();
    for w in 0..2 {
        let client = cluster.nodes[w].client()?;
        tasks.push(tokio::spawn(async move {
            client
                .put_request(PutRequest {
                    key: b"cas".to_vec().into(),
                    value: format!("writer-{w}").into_bytes().into(),
                    expected_modify_index: Some(base),
                    ..Default::default()
                })
                .await
        }));
    }
    let mut wins = 0;
    let mut winner_index = 0;
    let mut loser_current = None;
    for t in tasks {
        match t.await? {
            Ok(r) => {
                wins += 1;
                winner_index = r.header.map(|h| h.index).unwrap_or(0);
            }
            Err(e) => {
                let status = e.status().ok_or("no status")?;
                assert_eq!(status.code(), Code::FailedPrecondition, "{e}");
                assert!(status.message().contains("compare failed"), "{e}");
                loser_current = status
                    .metadata()
                    .get("x-raftkv-current-index")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
            }
        }
    }
    assert_eq!(wins, 1, "exactly one compare-and-set wins");
    assert_eq!(loser_current, Some(winner_index), "the loser is told the current index");
    let kv = cluster.client()?.get("cas").await?.kv.ok_or("cas missing")?;
    assert_eq!((kv.modify_index, kv.version), (winner_index, 2), "nothing else changed");
    // if_absent on an existing key fails the same way, and changes nothing.
    let r = cluster
        .client()?
        .put_request(PutRequest { key: b"cas".to_vec().into(), if_absent: true, ..Default::default() })
        .await;
    assert_eq!(code(&r), Some(Code::FailedPrecondition));
    assert_eq!(cluster.client()?.get("cas").await?.kv.map(|kv| kv.version), Some(2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_are_atomic_under_concurrent_writers() -> TestResult {
    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    let setup = cluster.client()?;
    setup.put("acct/a", "100").await?;
    setup.put("acct/b", "100").await?;
    let done = Arc::new(AtomicBool::new(false));
    let transfers = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..3 {
        let client = cluster.nodes[w].client()?;
        let (done, transfers) = (done.clone(), transfers.clone());
        writers.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                // Read both, then move 1 from one to the other if neither changed meanwhile.
                let page = client
                    .range(RangeRequest { key: b"acct/".to_vec().into(), prefix: true, ..Default::default() })
                    .await?;
                let [a, b] = [&page.kvs[0], &page.kvs[1]];
                let parse = |v: &[u8]| String::from_utf8_lossy(v).parse::<i64>().unwrap_or(0);
                let (va, vb) = (parse(&a.value), parse(&b.value));
                let (from, to) = if w % 2 == 0 { (va - 1, vb + 1) } else { (va + 1, vb - 1) };
                let r = client
                    .txn(TxnRequest {
                        compare: vec![
                            Compare {
                                key: a.key.clone(),
                                result: compare::Result::Equal as i32,
                                target: Some(compare::Target::ModifyIndex(a.modify_index)),
                            },
                            Compare {
                                key: b.key.clone(),
                                result: compare::Result::Equal as i32,
                                target: Some(compare::Target::ModifyIndex(b.modify_index)),
                            },
                        ],
                        success: vec![
                            put_op(b"acct/a", from.to_string().as_bytes()),
                            put_op(b"acct/b", to.to_string().as_bytes()),
                        ],
                        failure: vec![],
                        request_id: String::new(),
                    })
                    .await?;
                if r.succeeded {
                    transfers.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, ClientError>(())
        }));
    }
    // Readers check the invariant all along: the sum never moves.
    let reader = cluster.client()?;
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut checks = 0;
    while Instant::now() < deadline || transfers.load(Ordering::Relaxed) < 20 {
        let page =
            reader.range(RangeRequest { key: b"acct/".to_vec().into(), prefix: true, ..Default::default() }).await?;
        let sum: i64 = page.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.value).parse::<i64>().unwrap_or(0)).sum();
        assert_eq!(sum, 200, "a reader saw half a transaction");
        checks += 1;
        assert!(Instant::now() < deadline + Duration::from_secs(60), "no transfer went through");
    }
    done.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    eprintln!("{} transfers committed, {checks} reads saw the sum intact", transfers.load(Ordering::Relaxed));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_pages_over_ten_thousand_keys_and_binary_keys_round_trip() -> TestResult {
    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    let client = cluster.client()?;
    // 10,000 keys, written 100 per transaction.
    for batch in 0..100 {
        let success = (0..100).map(|i| put_op(format!("page/{:05}", batch * 100 + i).as_bytes(), b"v")).collect();
        client.txn(TxnRequest { success, ..Default::default() }).await?;
    }
    let mut seen = Vec::new();
    let mut req = RangeRequest { key: b"page/".to_vec().into(), prefix: true, limit: 777, ..Default::default() };
    let mut pages = 0;
    loop {
        let page = client.range(req.clone()).await?;
        assert_eq!(page.count, 10_000 - seen.len() as u64, "count covers the rest of the range");
        seen.extend(page.kvs.iter().map(|kv| kv.key.to_vec()));
        pages += 1;
        if !page.more {
            break;
        }
        req = RangeRequest { key: page.next_key, range_end: page.range_end, limit: 777, ..Default::default() };
    }
    let expected: Vec<Vec<u8>> = (0..10_000).map(|i| format!("page/{i:05}").into_bytes()).collect();
    assert_eq!(seen, expected, "each key exactly once, in order ({pages} pages)");
    let count = client
        .range(RangeRequest { key: b"page/".to_vec().into(), prefix: true, count_only: true, ..Default::default() })
        .await?;
    assert_eq!((count.count, count.kvs.len()), (10_000, 0));

    let keys: [&[u8]; 4] = [b"nul\0in\0it", b"\xff\xff\xff", b"\xc3\x28 invalid utf-8", b"\x00"];
    for (i, key) in keys.iter().enumerate() {
        let value = [key, &[0u8, 0xff, 0xfe, i as u8][..]].concat();
        client.put(key.to_vec(), value.clone()).await?;
        let got = client.get(key.to_vec()).await?.kv.ok_or("binary key missing")?;
        assert_eq!((got.key.as_ref(), got.value.as_ref()), (*key, value.as_slice()), "byte for byte");
    }
    let all =
        client.range_all(RangeRequest { key: vec![0].into(), range_end: vec![0].into(), ..Default::default() }).await?;
    for key in keys {
        assert!(all.iter().any(|kv| kv.key.as_ref() == key), "range finds {key:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_is_enforced_at_and_past_it() -> TestResult {
    // The product's own timing (1 s elections), not FAST_TIMING: one connection to the leader
    // with no retries must see no leader change, and on a busy machine a 500 ms election
    // timeout can expire while a 1.5 MiB entry is replicated.
    let cluster = Cluster::start(3, &[]).await?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    // One client, one connection, no retries: the same connection must keep serving.
    let client = one_shot(&cluster.nodes[leader].grpc_addr)?;
    async fn applied(c: &Client) -> Result<Option<u64>, ClientError> {
        c.get_request(get(b"probe", Consistency::Linearizable)).await.map(|r| r.header.map(|h| h.index))
    }
    client.put("probe", "x").await?;
    let mut refused = 0;
    let mut check_refused = |r: Result<(), ClientError>, limit: &str| {
        assert_eq!(code(&r), Some(Code::InvalidArgument), "{limit}: {r:?}");
        assert!(message(&r).contains(limit), "the message names {limit}: {}", message(&r));
        refused += 1;
    };

    // Key: 4 KiB accepted, 4 KiB + 1 refused.
    client.put(vec![b'k'; 4096], "v").await?;
    let before = applied(&client).await?;
    check_refused(client.put(vec![b'k'; 4097], "v").await.map(drop), "MAX_KEY_BYTES");
    // Value: 1 MiB accepted, 1 MiB + 1 refused.
    client.put("big", vec![0u8; 1 << 20]).await?;
    let before_value = applied(&client).await?;
    assert!(before_value > before);
    check_refused(client.put("big2", vec![0u8; (1 << 20) + 1]).await.map(drop), "MAX_VALUE_BYTES");
    // Transaction: 128 operations accepted, 129 refused.
    let ops = |n: usize| (0..n).map(|i| put_op(format!("t{i}").as_bytes(), b"v")).collect::<Vec<_>>();
    client.txn(TxnRequest { success: ops(128), ..Default::default() }).await?;
    let after_txn = applied(&client).await?;
    check_refused(client.txn(TxnRequest { success: ops(129), ..Default::default() }).await.map(drop), "MAX_TXN_OPS");
    // Request: 1.5 MiB accepted, 1.5 MiB + 1 refused (two puts of about 750 KiB each).
    let sized = |total: usize| {
        let mut req = TxnRequest { success: vec![put_op(b"r1", &[]), put_op(b"r2", &[])], ..Default::default() };
        let mut half = (total - prost::Message::encoded_len(&req)) / 2;
        loop {
            req.success = vec![put_op(b"r1", &vec![1u8; half]), put_op(b"r2", &vec![2u8; half])];
            let len = prost::Message::encoded_len(&req);
            if len >= total {
                break;
            }
            half += (total - len).div_ceil(2).max(1);
        }
        // Trim the second value byte by byte to land exactly on `total`.
        let mut second = half;
        while prost::Message::encoded_len(&req) > total {
            second -= 1;
            req.success[1] = put_op(b"r2", &vec![2u8; second]);
        }
        req
    };
    let at = sized(3 << 19);
    assert_eq!(prost::Message::encoded_len(&at), 3 << 19);
    client.txn(at).await?;
    let after_request = applied(&client).await?;
    let past = sized((3 << 19) + 1);
    assert_eq!(prost::Message::encoded_len(&past), (3 << 19) + 1);
    check_refused(client.txn(past).await.map(drop), "MAX_REQUEST_BYTES");
    // gRPC message: past 2 MiB the server refuses it before any handler runs.
    let huge = sized((2 << 20) + 1);
    check_refused(client.txn(huge).await.map(drop), "MAX_DECODE_BYTES");
    // Request id: 128 bytes accepted, 129 refused.
    let with_id = |n: usize| PutRequest {
        key: b"id".to_vec().into(),
        value: b"v".to_vec().into(),
        request_id: "i".repeat(n),
        ..Default::default()
    };
    client.put_request(with_id(128)).await?;
    let after_id = applied(&client).await?;
    check_refused(client.put_request(with_id(129)).await.map(drop), "MAX_REQUEST_ID_BYTES");

    // Nothing refused was written, and the connection still serves.
    let now = applied(&client).await?;
    assert_eq!(now, after_id, "no refused request reached the log");
    assert!(before < before_value && after_txn < after_request && after_request < after_id);
    for key in [b"big2".to_vec(), b"t128".to_vec()] {
        assert!(!client.get(key).await?.found, "a refused write left a key behind");
    }
    eprintln!("{refused} over-limit requests refused with INVALID_ARGUMENT on one connection");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_retried_with_its_request_id_after_a_leader_kill_is_applied_once() -> TestResult {
    let mut cluster = Cluster::start(3, &FAST_TIMING).await?;
    let client = cluster.client()?;
    let req = PutRequest {
        key: b"once".to_vec().into(),
        value: b"v".to_vec().into(),
        request_id: "client-7/write-1".into(),
        ..Default::default()
    };
    let first = client.put_request(req.clone()).await?;
    let first_index = first.header.ok_or("no header")?.index;
    let leader = cluster.leader().await.ok_or("no leader")?;
    let old = cluster.nodes[leader].id.clone();
    cluster.nodes[leader].kill();
    let survivor = cluster.nodes[(leader + 1) % 3].client()?;
    wait_for("a new leader", Duration::from_secs(30), || async {
        survivor.status().await.is_ok_and(|s| !s.leader_id.is_empty() && s.leader_id != old)
    })
    .await?;
    let retried = survivor.put_request(req.clone()).await?;
    assert_eq!(retried.header.ok_or("no header")?.index, first_index, "the retry answers the first write's index");
    let kv = survivor.get("once").await?.kv.ok_or("once missing")?;
    assert_eq!((kv.version, kv.modify_index), (1, first_index), "applied once");
    // A new id is a new write.
    survivor.put_request(PutRequest { request_id: "client-7/write-2".into(), ..req }).await?;
    assert_eq!(survivor.get("once").await?.kv.map(|kv| kv.version), Some(2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_forward_and_without_forwarding_name_the_leader() -> TestResult {
    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    for i in (0..3).filter(|i| *i != leader) {
        let follower = &cluster.nodes[i];
        let c = follower.client()?;
        c.put(format!("fwd-{i}"), "x").await?;
        c.delete(format!("fwd-{i}")).await?;
        c.txn(TxnRequest { success: vec![put_op(format!("fwd-{i}").as_bytes(), b"y")], ..Default::default() }).await?;
        c.delete_request(DeleteRequest { key: b"fwd-".to_vec().into(), prefix: true, ..Default::default() }).await?;
        // Without forwarding: UNAVAILABLE with the leader's id and address.
        let nf = Client::new(
            [follower.grpc_addr.clone()],
            ClientOptions { no_forward: true, max_retries: 0, ..test_options() },
        )?;
        let r = nf.put("nf", "x").await;
        let status = r.as_ref().err().and_then(ClientError::status).ok_or("expected a status")?;
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let hint = |k: &str| status.metadata().get(k).and_then(|v| v.to_str().ok()).map(String::from);
        assert_eq!(hint("x-raftkv-leader-id"), Some(cluster.nodes[leader].id.clone()));
        assert_eq!(hint("x-raftkv-leader-addr"), Some(cluster.nodes[leader].grpc_addr.clone()));
        assert_eq!(hint("x-raftkv-retryable").as_deref(), Some("true"));
        // raftkvctl follows the hint.
        let out = raftkvctl(std::slice::from_ref(&follower.grpc_addr), &["--no-forward", "put", "nf", "followed"])?;
        assert!(out.status.success(), "raftkvctl --no-forward: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(cluster.client()?.get("nf").await?.kv.map(|kv| kv.value.to_vec()), Some(b"followed".to_vec()));
    Ok(())
}

/// The writes a follower forwards go to the leader over one stream
/// (`raftkv.forward.v1.Forward/Writes`): answers are matched to writes by id, whatever their
/// order; each write is served as its unary call (a refused one gets its own status, the
/// others are unaffected); a precondition failure comes back through the follower as it is;
/// after a leader change the follower's writes reach the new leader; an open stream ends
/// with UNAVAILABLE when the node stops, and does not hold up the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_writes_stream_to_the_leader_and_follow_a_leader_change() -> TestResult {
    use proto::kv::forward::v1::forward_client::ForwardClient;
    use proto::kv::forward::v1::forwarded_answer::Answer;
    use proto::kv::forward::v1::{ForwardedWrite, forwarded_write};

    let mut extra = FAST_TIMING.to_vec();
    extra.extend(["--shutdown_grace", "60s"]);
    let mut cluster = Cluster::start(3, &extra).await?;
    let leader = cluster.leader().await.ok_or("no leader")?;

    // The stream as a follower opens it: ids out of order, two refused writes among them.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let put = |id: u64, key: &str| ForwardedWrite {
        id,
        timeout_micros: 10_000_000,
        authorization: String::new(),
        write: Some(forwarded_write::Write::Put(PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: format!("v{id}").into_bytes().into(),
            ..Default::default()
        })),
    };
    for write in [put(7, "s-7"), put(3, "s-3"), put(5, ""), put(9, "s-9")] {
        tx.send(write)?;
    }
    tx.send(ForwardedWrite { id: 11, timeout_micros: 10_000_000, ..Default::default() })?;
    let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|w| (w, rx)) });
    let mut answers =
        ForwardClient::new(tests::channel(&cluster.nodes[leader].grpc_addr)?).writes(outbound).await?.into_inner();
    let mut got = std::collections::BTreeMap::new();
    while got.len() < 5 {
        let answer = answers.message().await?.ok_or("the stream ended with writes unanswered")?;
        got.insert(answer.id, answer.answer.ok_or("an answer with nothing in it")?);
    }
    for id in [7, 3, 9] {
        assert!(matches!(got.get(&id), Some(Answer::Put(r)) if r.header.is_some()), "write {id}: {got:?}");
    }
    let refused = |id| match got.get(&id) {
        Some(Answer::Status(s)) => Some((s.code, s.message.clone())),
        _ => None,
    };
    let (code5, message5) = refused(5).ok_or("the empty key was not refused")?;
    assert_eq!(code5, Code::InvalidArgument as i32);
    assert!(message5.contains("key is empty"), "{message5}");
    assert_eq!(refused(11).map(|r| r.0), Some(Code::InvalidArgument as i32), "a message without a write");
    let client = cluster.client()?;
    for id in [7, 3, 9] {
        let kv = client.get(format!("s-{id}")).await?.kv.ok_or("a streamed write is missing")?;
        assert_eq!(kv.value.to_vec(), format!("v{id}").into_bytes());
    }

    // Through a follower: concurrent writes, each answered with its own outcome.
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let via = Arc::new(cluster.nodes[follower].client()?);
    let writes: Vec<_> = (0..32)
        .map(|i| {
            let via = via.clone();
            tokio::spawn(async move { via.put(format!("f-{i}"), format!("w{i}")).await })
        })
        .collect();
    let mut indexes = std::collections::BTreeSet::new();
    for w in writes {
        indexes.insert(w.await??.header.ok_or("no header")?.index);
    }
    assert_eq!(indexes.len(), 32, "every forwarded write got its own answer");
    let cas = via
        .put_request(PutRequest {
            key: b"f-0".to_vec().into(),
            value: b"x".to_vec().into(),
            if_absent: true,
            ..Default::default()
        })
        .await;
    let status = cas.as_ref().err().and_then(ClientError::status).ok_or("the compare did not fail")?;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.metadata().get("x-raftkv-current-index").is_some(), "{status:?}");

    // Leadership moves to the other follower: the follower's writes follow it.
    let new_leader = cluster.nodes[other].id.clone();
    client.transfer_leader(Some(&new_leader), Duration::from_secs(20)).await?;
    wait_for("the follower to know the new leader", Duration::from_secs(20), || async {
        via.status().await.is_ok_and(|s| s.leader_id == new_leader)
    })
    .await?;
    let after = via.put("f-after", "moved").await?;
    assert_eq!(after.header.ok_or("no header")?.node_id, new_leader, "served by the new leader");

    // The old leader stops: our open stream ends with UNAVAILABLE, and does not hold it up.
    let started = Instant::now();
    let node = &mut cluster.nodes[leader];
    assert!(node.stop(), "the node did not stop cleanly; log:\n{}", node.log_tail());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "stopping took {took:?}: the drain waited for the stream");
    let end = match answers.message().await {
        Ok(Some(a)) => return Err(format!("an answer nobody asked for: {a:?}").into()),
        Ok(None) => None,
        Err(status) => Some(status.code()),
    };
    assert!(matches!(end, Some(Code::Unavailable) | None), "the stream ended with {end:?}");
    drop(tx);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raftkvctl_kv_commands_end_to_end() -> TestResult {
    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    let eps = cluster.endpoints();
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let ok = |o: &std::process::Output, what: &str| {
        assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
    };
    // A random binary value of the largest size allowed, byte for byte: `put blob - < in`,
    // then `get blob > out` (no newline added when stdout is not a terminal).
    let mut rng = tests::chaos::Rng::new(u64::from(std::process::id()));
    let blob: Vec<u8> = (0..1 << 20).map(|_| rng.next_u64().to_le_bytes()[3]).collect();
    let files = tempfile::tempdir()?;
    let (input, output) = (files.path().join("in"), files.path().join("out"));
    std::fs::write(&input, &blob)?;
    let ctl = || {
        let mut cmd = std::process::Command::new(tests::binary("raftkvctl"));
        cmd.arg("--endpoints").arg(eps.join(","));
        cmd
    };
    let out = ctl().args(["put", "blob", "-"]).stdin(std::fs::File::open(&input)?).output()?;
    ok(&out, "put blob - < in");
    let out = ctl().args(["get", "blob"]).stdout(std::fs::File::create(&output)?).output()?;
    ok(&out, "get blob > out");
    let back = std::fs::read(&output)?;
    assert!(back == blob, "the value came back byte for byte: {} bytes in, {} out", blob.len(), back.len());

    // An error is the server's message alone; with -o json, an object with the code's name.
    let long_key = "k".repeat(5000);
    let out = raftkvctl(&eps, &["put", &long_key, "v"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("raftkvctl: key") && stderr.contains("4096"), "{stderr}");
    assert!(!stderr.contains("Client specified"), "no code description: {stderr}");
    let out = raftkvctl(&eps, &["-o", "json", "put", &long_key, "v"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stderr)?;
    assert_eq!(v["error"]["code"], "INVALID_ARGUMENT", "{v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.starts_with("key")), "{v}");

    for (k, v) in [("cfg/a", "1"), ("cfg/b", "2"), ("cfg/c", "3"), ("other", "x")] {
        ok(&raftkvctl(&eps, &["put", k, v])?, "put");
    }
    let out = raftkvctl(&eps, &["get", "--prefix", "cfg/"])?;
    assert_eq!(text(&out), "cfg/a\n1\ncfg/b\n2\ncfg/c\n3\n");
    let out = raftkvctl(&eps, &["-o", "table", "get", "--prefix", "cfg/"])?;
    assert!(text(&out).starts_with("KEY    VALUE  CREATE INDEX  MODIFY INDEX  VERSION\ncfg/a  1"), "{}", text(&out));
    let out = raftkvctl(&eps, &["get", "--consistency", "stale", "cfg/b"])?;
    assert_eq!(text(&out), "2", "the value alone: stdout is not a terminal");
    let out = raftkvctl(&eps, &["-o", "json", "get", "--consistency", "stale", "cfg/b"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["header"]["stale"], true);
    let out = raftkvctl(&eps, &["range", "cfg/b", "other"])?;
    assert_eq!(text(&out), "cfg/b\n2\ncfg/c\n3\n");
    let out = raftkvctl(&eps, &["range", "--count-only", "--prefix", "cfg/"])?;
    assert_eq!(text(&out), "3\n");

    // Compare-and-set through the CLI: a wrong index fails with status 2 and says why.
    let out = raftkvctl(&eps, &["put", "--expect-index", "1", "cfg/a", "nope"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("compare failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = raftkvctl(&eps, &["put", "--if-absent", "fresh", "1"])?;
    ok(&out, "put --if-absent");

    // A transaction in the readable syntax, then in JSON.
    let txn = "value(\"cfg/a\") = \"1\"\n\nput cfg/a 10\ndel --prefix cfg/c\nget cfg/b\n\nput failed yes\n";
    let out = raftkvctl_stdin(&eps, &["txn"], txn.as_bytes())?;
    ok(&out, "txn");
    assert_eq!(text(&out), "SUCCESS\n\nOK\n\n1\n\ncfg/b\n2\n");
    let out = raftkvctl_stdin(&eps, &["txn"], txn.as_bytes())?;
    assert_eq!(text(&out), "FAILURE\n\nOK\n", "the compare no longer holds");
    let json_txn = r#"{"compare":[{"key":"cfg/a","target":"version","op":"=","value":2}],"success":[{"del":{"key":"cfg/","prefix":true}}]}"#;
    let out = raftkvctl_stdin(&eps, &["-o", "json", "txn"], json_txn.as_bytes())?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["succeeded"], true);
    assert_eq!(v["responses"][0]["del"]["deleted"], 2);
    let out = raftkvctl_stdin(&eps, &["txn"], b"bogus(k) = 1\n")?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"), "{}", String::from_utf8_lossy(&out.stderr));

    let out = raftkvctl(&eps, &["del", "--prefix", "--prev-kv", "f"])?;
    assert_eq!(text(&out), "2\nfailed\nyes\nfresh\n1\n");
    let out = raftkvctl(&eps, &["-o", "json", "range", "--prefix", ""])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["count"], 2, "blob and other remain: {v}");
    Ok(())
}
