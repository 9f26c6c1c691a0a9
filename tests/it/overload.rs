//! Overload: many concurrent clients with 64 KiB values, then a burst of 1 MiB values,
//! against one node whose limits (`--max-in-flight-requests`,
//! `--max-in-flight-request-bytes`) are set low enough to reach. Calls past a limit are shed
//! with `RESOURCE_EXHAUSTED` (retryable) at once, the node's memory stays under a bound,
//! Raft is not starved (same leader, same term), every acknowledged write reads back, and the
//! node serves normally afterwards. Connections past `--max-client-connections` are refused
//! at accept with an HTTP/2 GOAWAY, and served again once one closes.

#![allow(clippy::print_stderr)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use client::{Client, ClientError, ClientOptions};
use tests::{Cluster, NodeClient, TestResult, test_options};

/// One overload run: the node's limits, the writers, and the memory bound.
struct Figure {
    /// `--max-in-flight-requests`, `--max-in-flight-request-bytes` (`None`: the defaults).
    limits: Option<(usize, usize)>,
    /// Concurrent writers of 64 KiB values, each with its own connection.
    small_writers: usize,
    /// Puts each of them makes.
    small_puts: usize,
    /// Concurrent writers of 1 MiB values, in the burst after.
    big_writers: usize,
    /// The bound on the node's resident memory (docs/reference.md, Overload).
    rss_bound: u64,
}

/// The CI run: limits low enough for a few hundred writers to pass (32 calls, 8 MiB, so
/// eight 1 MiB values at once). The node's caches stay small at this size of data, so what
/// grows is request bodies, which the byte budget bounds.
const CI: Figure =
    Figure { limits: Some((32, 8 << 20)), small_writers: 300, small_puts: 3, big_writers: 64, rss_bound: 512 << 20 };

/// The issue's figure, run by hand: 5,000 writers of 64 KiB values, then 500 of 1 MiB, at
/// the default limits (1,024 connections, 1,024 calls, 64 MiB), with release binaries:
/// `cargo build --release --bins && RAFTKV_BIN_DIR=$PWD/target/release cargo nextest run
/// --release -p tests --test it --run-ignored only --no-capture -E
/// 'test(=overload::the_issue_figure_5000_clients)'`. Since the byte bound on one
/// AppendEntries (`--max_append_bytes`) the term holds in every run, debug or release, and
/// since the longer accept queue (`engine::LISTEN_BACKLOG`) no refused client sees a reset;
/// release runs pass (4 of 5 at load 7 to 8.5; the fifth had 2 shed answers past 5 s), and
/// debug runs time out admitted calls (docs/reference.md, Overload, has the figures). It prints the term and leader before and after the load
/// before it asserts anything.
const ISSUE: Figure = Figure { limits: None, small_writers: 5000, small_puts: 2, big_writers: 500, rss_bound: 1 << 30 };

/// The client's deadline per call; shed answers must come far sooner.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// What one writer saw.
#[derive(Default)]
struct Seen {
    acked: Vec<(String, usize)>,
    shed: Vec<Duration>,
    /// Calls whose connection the node refused (past `--max-client-connections`): the client
    /// reports them unreachable, never sent.
    refused: Vec<Duration>,
    other: Vec<String>,
}

/// `n` writers, each with its own connection and no retries, putting `puts` values of
/// `size` bytes under `prefix`.
async fn writers(endpoint: &str, prefix: &str, n: usize, puts: usize, size: usize) -> Result<Seen, tests::BoxError> {
    let mut tasks = Vec::new();
    for w in 0..n {
        let options = ClientOptions { max_retries: 0, request_timeout: CLIENT_TIMEOUT, ..ClientOptions::default() };
        let client = Client::new([endpoint.to_string()], options)?;
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            for p in 0..puts {
                let key = format!("{prefix}/{w:04}/{p}");
                let started = Instant::now();
                match client.put(key.clone(), value(&key, size)).await {
                    Ok(_) => seen.acked.push((key, size)),
                    Err(e) if e.status().is_some_and(|s| s.code() == tonic::Code::ResourceExhausted) => {
                        assert!(tests::is_retryable(&e), "a shed call is marked retryable: {e}");
                        let text = e.to_string();
                        assert!(text.contains("--max-in-flight-request") && text.contains("retry"), "{text}");
                        seen.shed.push(started.elapsed());
                    }
                    // Refused at accept (--max-client-connections): never sent.
                    Err(ClientError::Unreachable { .. }) => seen.refused.push(started.elapsed()),
                    Err(e) => seen.other.push(e.to_string()),
                }
            }
            seen
        }));
    }
    let mut all = Seen::default();
    for t in tasks {
        let s = t.await?;
        all.acked.extend(s.acked);
        all.shed.extend(s.shed);
        all.refused.extend(s.refused);
        all.other.extend(s.other);
    }
    Ok(all)
}

/// The value of `key`: the key, then filler, `size` bytes in all.
fn value(key: &str, size: usize) -> Vec<u8> {
    let mut v = key.as_bytes().to_vec();
    v.resize(size, b'v');
    v
}

/// The resident memory of process `pid`, from `/proc/<pid>/status` (`VmRSS`), in bytes.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn median(mut d: Vec<Duration>) -> Duration {
    d.sort();
    d.get(d.len() / 2).copied().unwrap_or_default()
}

#[tokio::test]
async fn past_the_limits_calls_are_shed_at_once_and_raft_is_not_starved() -> TestResult {
    run(&CI).await
}

#[tokio::test]
#[ignore = "the issue's figure, by hand: 5,000 clients"]
async fn the_issue_figure_5000_clients() -> TestResult {
    run(&ISSUE).await
}

async fn run(f: &Figure) -> TestResult {
    let limits = f.limits.map(|(calls, bytes)| {
        vec![
            "--max-in-flight-requests".to_string(),
            calls.to_string(),
            "--max-in-flight-request-bytes".into(),
            bytes.to_string(),
        ]
    });
    let limits = limits.unwrap_or_default();
    let limits: Vec<&str> = limits.iter().map(String::as_str).collect();
    let cluster = Cluster::start(3, &limits).await?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    let node = &cluster.nodes[leader];
    let pid = node.pid().ok_or("the leader is not running")?;
    let before = node.client()?.status().await?;

    // Sample the leader's memory all along.
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Some(rss) = rss_bytes(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let small = writers(&node.grpc_addr, "small", f.small_writers, f.small_puts, 64 << 10).await?;
    let big = writers(&node.grpc_addr, "big", f.big_writers, 1, 1 << 20).await?;
    done.store(true, Ordering::Relaxed);
    sampler.await?;
    let peak = peak.load(Ordering::Relaxed);
    let after = node.client()?.status().await?;
    let other: Vec<&String> = small.other.iter().chain(&big.other).collect();
    let timeouts = other.iter().filter(|e| e.contains("Timeout expired")).count();
    eprintln!(
        "term {} -> {}, leader {} -> {}; other errors: {} client timeouts, {} else",
        before.term,
        after.term,
        before.leader_id,
        after.leader_id,
        timeouts,
        other.len() - timeouts
    );
    eprintln!(
        "term {}: 64 KiB: {} acked, {} shed (median {:?}), {} refused connections (median {:?}); 1 MiB: {} acked, {} shed (median {:?}), {} refused (median {:?}); other errors {}; peak RSS {} MiB",
        before.term,
        small.acked.len(),
        small.shed.len(),
        median(small.shed.clone()),
        small.refused.len(),
        median(small.refused.clone()),
        big.acked.len(),
        big.shed.len(),
        median(big.shed.clone()),
        big.refused.len(),
        median(big.refused.clone()),
        small.other.len() + big.other.len(),
        peak >> 20
    );

    assert!(other.is_empty(), "{} other errors, the first: {:?}", other.len(), other.get(..5.min(other.len())));
    if f.limits.is_some() {
        assert!(!small.shed.is_empty(), "{} writers never passed the concurrency limit", f.small_writers);
    } else {
        // At the defaults the connection limit (1,024) is what 64 KiB writers meet: each has
        // one call at a time on its own connection, so they cannot pass the 1,024 calls.
        assert!(!small.refused.is_empty(), "{} writers never passed the connection limit", f.small_writers);
    }
    assert!(!big.shed.is_empty(), "{} 1 MiB writers never passed the byte budget", f.big_writers);
    assert!(!small.acked.is_empty() && !big.acked.is_empty(), "nothing was accepted");
    // Shed answers come at once: far sooner than the deadline a queued call would wait for.
    for shed in [&small.shed, &big.shed, &small.refused, &big.refused] {
        let m = median(shed.clone());
        assert!(m < CLIENT_TIMEOUT / 4, "the median shed answer took {m:?}, a quarter of the deadline or more");
    }
    assert!(peak > 0 && peak < f.rss_bound, "peak RSS {} MiB, the bound is {} MiB", peak >> 20, f.rss_bound >> 20);

    // Raft was not starved: the same leader in the same term.
    assert_eq!((after.term, &after.leader_id), (before.term, &before.leader_id), "a leader change under load");

    // Every acknowledged write reads back, and the node serves normally again.
    let reader = Client::new([node.grpc_addr.clone()], test_options())?;
    for (key, size) in small.acked.iter().chain(&big.acked) {
        let got = reader.get(key.clone()).await?;
        let kv = got.kv.ok_or_else(|| format!("acknowledged {key} is missing"))?;
        assert!(kv.value == value(key, *size), "{key} reads back another value");
    }
    reader.put("after", "normal").await?;
    let got = reader.get("after").await?;
    assert_eq!(got.kv.map(|kv| kv.value.to_vec()), Some(b"normal".to_vec()));
    Ok(())
}

/// The connection limit end to end: with `--max-client-connections 3` and three clients
/// holding their connections, a fourth connection is answered at once with the HTTP/2
/// server preface and a GOAWAY (last stream 0, `REFUSED_STREAM`) naming the flag, a client
/// call on it fails as never sent, and once a holder goes away a new client is served.
#[tokio::test]
async fn connections_past_the_limit_are_refused_at_accept_and_served_again_once_one_closes() -> TestResult {
    const LIMIT: usize = 3;
    let cluster = Cluster::start(1, &["--max-client-connections", &LIMIT.to_string()]).await?;
    let addr = cluster.nodes[0].grpc_addr.clone();
    // Each holder keeps its connection (a client's channel is pooled); the harness's own
    // connections may still count for a moment, so each retries until it is in.
    let mut holders = Vec::new();
    for _ in 0..LIMIT {
        let c = Client::new([addr.clone()], test_options())?;
        c.status().await?;
        holders.push(c);
    }

    // A raw connection past the limit: the preface (an empty SETTINGS frame), then a GOAWAY
    // naming the limit, then the end of the stream, without a byte sent by us.
    let raw_addr = addr.clone();
    let started = Instant::now();
    let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let mut tcp = std::net::TcpStream::connect(&raw_addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut bytes = Vec::new();
        tcp.read_to_end(&mut bytes)?;
        Ok(bytes)
    })
    .await??;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the refusal took {took:?}");
    assert_eq!(bytes.get(..9), Some(&[0u8, 0, 0, 4, 0, 0, 0, 0, 0][..]), "an empty SETTINGS frame first: {bytes:?}");
    let goaway = bytes.get(9..).unwrap_or_default();
    assert_eq!(goaway.get(3), Some(&7u8), "then a GOAWAY frame: {bytes:?}");
    assert_eq!(goaway.get(9..13), Some(&[0u8, 0, 0, 0][..]), "last stream id 0: nothing was processed");
    assert_eq!(goaway.get(13..17), Some(&[0u8, 0, 0, 7][..]), "REFUSED_STREAM");
    let debug = String::from_utf8_lossy(goaway.get(17..).unwrap_or_default()).to_string();
    assert!(debug.contains("--max-client-connections") && debug.contains("retry"), "{debug}");

    // A client call past the limit fails at once, as never sent (so safe to retry).
    let options = ClientOptions { max_retries: 0, request_timeout: CLIENT_TIMEOUT, ..ClientOptions::default() };
    let refused = Client::new([addr.clone()], options)?;
    let started = Instant::now();
    match refused.put("refused", "x").await {
        // hyper dropped the request before sending it ("operation was canceled"), or sent
        // it and got the GOAWAY back, whose reason the client reports.
        Err(ClientError::Unreachable { last, .. }) => {
            assert!(last.contains("--max-client-connections") || last.contains("operation was canceled"), "{last}");
        }
        other => panic!("expected the connection to be refused, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "the refusal took {:?}", started.elapsed());

    // The holders are still served; once one goes, a new client gets in.
    holders[0].put("held", "yes").await?;
    drop(holders.pop());
    let newcomer = Client::new([addr], test_options())?;
    newcomer.put("after", "in").await?;
    let got = newcomer.get("after").await?;
    assert_eq!(got.kv.map(|kv| kv.value.to_vec()), Some(b"in".to_vec()));
    assert!(newcomer.get("refused").await?.kv.is_none(), "the refused put was never done");
    Ok(())
}
