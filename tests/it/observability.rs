//! The metrics port of real nodes (`--metrics-addr`, docs/metrics.md): `/metrics` scraped
//! and parsed with a Prometheus text-format parser (prometheus-parse), `/readyz` and gRPC
//! health before and after a node catches up, and the status page in headless Chromium.

#![allow(clippy::print_stderr)] // tests report what they did on stderr

use std::collections::BTreeSet;
use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use tests::cdp::{Browser, find_chromium, http_get_status};
use tests::{BoxError, Cluster, FAST_TIMING, NodeClient, NodeProc, TestResult, node, wait_for};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const METRICS: [&str; 2] = ["--metrics-addr", "127.0.0.1:0"];

/// The metric names of the reference, docs/metrics.md: every `raftkv_…` name in its tables.
fn reference_names() -> Result<BTreeSet<String>, BoxError> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    let text = std::fs::read_to_string(&path)?;
    let names: BTreeSet<String> = text
        .lines()
        .filter(|l| l.starts_with("| `raftkv_"))
        .filter_map(|l| l.split('`').nth(1).map(str::to_string))
        .collect();
    assert!(names.len() > 20, "too few metrics found in {}: {names:?}", path.display());
    Ok(names)
}

fn metrics_addr(n: &NodeProc) -> Result<String, BoxError> {
    n.metrics_addr.clone().ok_or_else(|| format!("{} wrote no metrics_addr to listen.json", n.id).into())
}

/// Scrapes `/metrics` of `n` and parses it.
async fn scrape(n: &NodeProc) -> Result<Scrape, BoxError> {
    let addr = metrics_addr(n)?;
    let (status, body) = tokio::task::spawn_blocking(move || http_get_status(&addr, "/metrics")).await??;
    if status != 200 {
        return Err(format!("/metrics of {}: HTTP {status}", n.id).into());
    }
    Ok(Scrape::parse(body.lines().map(|l| Ok(l.to_string())))?)
}

/// The value of the gauge or counter `name` whose labels include `labels`.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples.iter().find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))).and_then(
        |x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        },
    )
}

/// Scrapes `n` and reads one value; `None` when the scrape fails or the series is absent.
async fn read(n: &NodeProc, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    value(&scrape(n).await.ok()?, name, labels)
}

/// A three-node cluster with the metrics port, gossip seeded through the first node, and
/// fast elections.
async fn cluster() -> Result<Cluster, BoxError> {
    let dir = tempfile::tempdir()?;
    let mut args: Vec<String> = FAST_TIMING.iter().chain(&METRICS).map(|s| (*s).to_string()).collect();
    args.extend(["--gossip_addr", "127.0.0.1:0", "--gossip_interval", "200ms"].map(String::from));
    let first = node("n1", dir.path()).bootstrap(true).args(&args).start()?;
    let seed = first.gossip_addr.clone().ok_or("n1 wrote no gossip_addr")?;
    args.extend(["--gossip_seeds".to_string(), seed]);
    let client = first.client()?;
    wait_for("n1 to lead", Duration::from_secs(30), || async {
        client.status().await.is_ok_and(|s| s.leader_id == "n1")
    })
    .await?;
    let mut nodes = vec![first];
    for i in 2..=3 {
        let n = node(&format!("n{i}"), dir.path()).args(&args).start()?;
        client.add_voter(&n.id, &n.raft_addr, &n.grpc_addr, Duration::from_secs(60)).await?;
        nodes.push(n);
    }
    let cluster = Cluster { nodes, dir };
    cluster.wait_converged(Duration::from_secs(30)).await?;
    Ok(cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_all_present_and_move_with_writes_pauses_and_leader_kills() -> TestResult {
    let mut cluster = cluster().await?;
    let client = cluster.client()?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();

    // A write raises the applied index everywhere.
    let before: Vec<f64> = {
        let mut v = Vec::new();
        for n in &cluster.nodes {
            v.push(read(n, "raftkv_raft_applied_index", &[]).await.ok_or("no applied index")?);
        }
        v
    };
    let index = client.put("obs/a", "1").await?.header.ok_or("no header")?.index as f64;
    for (n, was) in cluster.nodes.iter().zip(&before) {
        assert!(index > *was, "the write's index {index} is above {}'s applied index before it, {was}", n.id);
        wait_for(&format!("{} to apply the write", n.id), Duration::from_secs(10), || async {
            read(n, "raftkv_raft_applied_index", &[]).await.is_some_and(|a| a >= index)
        })
        .await?;
    }

    // Every metric of the reference: a help text on every node, a sample on the leader
    // (replication is the leader's alone).
    let names = reference_names()?;
    for (i, n) in cluster.nodes.iter().enumerate() {
        let s = scrape(n).await?;
        for name in &names {
            assert!(s.docs.contains_key(name), "{}: no HELP for {name}", n.id);
            if i == leader {
                assert!(s.samples.iter().any(|x| &x.metric == name), "{} (leader): no sample of {name}", n.id);
            }
        }
        let puts = value(&s, "raftkv_grpc_requests_total", &[("method", "Put"), ("code", "OK")]);
        if i == leader {
            assert!(puts.is_some_and(|p| p >= 1.0), "the leader counted the Put: {puts:?}");
        }
    }

    // A paused follower's lag, on the leader, grows and then shrinks.
    let paused = &cluster.nodes[followers[0]];
    let lead = &cluster.nodes[leader];
    let lag = |s: &Scrape| value(s, "raftkv_replication_lag_entries", &[("follower", &paused.id)]);
    paused.pause();
    for i in 0..30 {
        client.put(format!("obs/lag/{i}"), "x").await?;
    }
    let grown = lag(&scrape(lead).await?).ok_or("no lag series for the paused follower")?;
    assert!(grown >= 30.0, "the paused follower is at least 30 entries behind: {grown}");
    paused.resume();
    // On the leader then (the resumed node may call an election; whoever leads reports it).
    wait_for("the paused follower's lag to shrink to 0", Duration::from_secs(20), || async {
        for n in &cluster.nodes {
            if let Ok(s) = scrape(n).await
                && value(&s, "raftkv_raft_is_leader", &[]) == Some(1.0)
            {
                return n.id == paused.id || lag(&s) == Some(0.0);
            }
        }
        false
    })
    .await?;

    // A leader kill raises the leader changes on the survivors.
    let leader = cluster.leader().await.ok_or("no leader")?;
    let survivor = (0..3).find(|i| *i != leader).ok_or("no follower")?;
    let changes = read(&cluster.nodes[survivor], "raftkv_raft_leader_changes_total", &[]).await.ok_or("no counter")?;
    cluster.nodes[leader].kill();
    let s = &cluster.nodes[survivor];
    wait_for("the survivor to count a leader change", Duration::from_secs(20), || async {
        read(s, "raftkv_raft_leader_changes_total", &[]).await.is_some_and(|c| c > changes)
    })
    .await?;
    wait_for("a new leader", Duration::from_secs(20), || async {
        read(s, "raftkv_raft_has_leader", &[]).await == Some(1.0)
    })
    .await?;
    Ok(())
}

/// The status of the whole server (`""`) over gRPC health, or the error.
/// The bucket counts (upper bound, cumulative count) of the histogram `name` of `s`.
fn buckets(s: &Scrape, name: &str) -> Option<Vec<(f64, f64)>> {
    s.samples.iter().find(|x| x.metric == name).and_then(|x| match &x.value {
        Value::Histogram(h) => Some(h.iter().map(|b| (b.less_than, b.count)).collect()),
        _ => None,
    })
}

/// A follower that comes back after missing 48 writes of 64 KiB catches up in messages no
/// larger than the leader's `--max_append_bytes` (256 KiB here: three such entries, not
/// four), not in one message of all 48 (3 MiB), as openraft's 300-entry bound alone would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_catches_up_in_messages_within_the_byte_bound() -> TestResult {
    const BOUND: f64 = 262_144.0;
    let mut extra: Vec<&str> = FAST_TIMING.iter().chain(&METRICS).copied().collect();
    extra.extend(["--max_append_bytes", "262144"]);
    let mut cluster = Cluster::start(3, &extra).await?;
    let client = cluster.client()?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    let f = (leader + 1) % 3;
    assert!(cluster.nodes[f].stop(), "{} did not stop cleanly", cluster.nodes[f].id);
    let value = vec![b'v'; 64 << 10];
    let mut last = 0;
    for i in 0..48 {
        last = client.put(format!("bound/{i}"), value.clone()).await?.header.ok_or("no header")?.index;
    }
    cluster.nodes[f].restart(false)?;
    let follower = &cluster.nodes[f];
    let fc = follower.client()?;
    wait_for(&format!("{} to apply index {last}", follower.id), Duration::from_secs(30), || async {
        fc.status().await.is_ok_and(|s| s.applied_index >= last)
    })
    .await?;
    let s = scrape(follower).await?;
    let b = buckets(&s, "raftkv_raft_append_message_bytes").ok_or("no append message histogram")?;
    let total = b.iter().map(|(_, c)| *c).fold(0.0, f64::max);
    let within = b.iter().find(|(le, _)| *le == BOUND).map(|(_, c)| *c).ok_or("no 256 KiB bucket")?;
    let small = b.iter().find(|(le, _)| *le == 65_536.0).map(|(_, c)| *c).ok_or("no 64 KiB bucket")?;
    eprintln!("{}: {total} append messages, {within} within 256 KiB, {small} within 64 KiB: {b:?}", follower.id);
    assert_eq!(within, total, "every message the follower received is within the bound: {b:?}");
    assert!(within - small >= 16.0, "the 48 values came in at least 16 messages of 1 to 3 of them: {b:?}");
    cluster.stop_all();
    Ok(())
}

async fn whole_server_health(n: &NodeProc) -> Result<i32, BoxError> {
    let mut health = HealthClient::new(tests::channel(&n.grpc_addr)?);
    let resp = health.check(HealthCheckRequest { service: String::new() }).await?;
    Ok(resp.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_not_ready_until_the_node_has_caught_up() -> TestResult {
    let cluster = cluster().await?;
    let client = cluster.client()?;
    for i in 0..50 {
        client.put(format!("ready/{i}"), "x").await?;
    }
    let last = client.put("ready/last", "x").await?.header.ok_or("no header")?.index as f64;

    // A new node that is not a member yet knows no leader and has applied nothing.
    let args: Vec<&str> = FAST_TIMING.iter().chain(&METRICS).copied().collect();
    let n4 = node("n4", cluster.dir.path()).args(&args).start()?;
    let addr = metrics_addr(&n4)?;
    let readyz = || {
        let addr = addr.clone();
        async move { tokio::task::spawn_blocking(move || http_get_status(&addr, "/readyz")).await.ok()?.ok() }
    };
    let (code, body) = readyz().await.ok_or("/readyz did not answer")?;
    assert_eq!(code, 503, "not ready before joining: {body}");
    assert!(body.contains("[-]"), "{body}");
    assert_eq!(whole_server_health(&n4).await?, ServingStatus::NotServing as i32);
    let (livez, _) = http_get_status(&addr, "/livez")?;
    assert_eq!(livez, 200, "live all the same");

    client.add_learner(&n4.id, &n4.raft_addr, &n4.grpc_addr, Duration::from_secs(60)).await?;
    wait_for("n4 to be ready", Duration::from_secs(30), || async { readyz().await.is_some_and(|(c, _)| c == 200) })
        .await?;
    // Ready means caught up: it has applied at least what was committed before it joined.
    let applied = read(&n4, "raftkv_raft_applied_index", &[]).await.ok_or("no applied index")?;
    assert!(applied >= last, "ready at applied index {applied}, before the last write {last}");
    assert_eq!(read(&n4, "raftkv_ready", &[]).await, Some(1.0));
    assert_eq!(whole_server_health(&n4).await?, ServingStatus::Serving as i32);
    Ok(())
}

/// What the page shows, read from its DOM: the leader and the members' ids and roles.
const READ_PAGE: &str = r##"JSON.stringify({
    leader: document.getElementById("leader").textContent,
    members: [...document.querySelectorAll("#members tr[data-member]")].map(r => [r.dataset.member, r.dataset.role]),
})"##;

fn page_state(browser: &mut Browser) -> Result<(String, Vec<(String, String)>), BoxError> {
    // Before the page has loaded the expression throws, and there is no value: nothing shown.
    let Some(text) = browser.eval(READ_PAGE)?.as_str().map(str::to_string) else {
        return Ok((String::new(), Vec::new()));
    };
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let leader = v["leader"].as_str().unwrap_or_default().to_string();
    let members = v["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| (m[0].as_str().unwrap_or_default().to_string(), m[1].as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    Ok((leader, members))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_chromium_shows_the_members_and_follows_the_leader() -> TestResult {
    let Some(chromium) = find_chromium() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            return Err("chromium is not installed; CI installs it (.ci/run)".into());
        }
        eprintln!("SKIPPED: chromium is not installed (apt-get install chromium); the status page was not tested");
        return Ok(());
    };
    let mut cluster = cluster().await?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    let watcher = (0..3).find(|i| *i != leader).ok_or("no follower")?;
    let url = format!("http://{}/", metrics_addr(&cluster.nodes[watcher])?);
    let mut browser = tokio::task::block_in_place(|| Browser::open(&chromium, &url))?;

    let old = cluster.nodes[leader].id.clone();
    let ids: Vec<String> = cluster.nodes.iter().map(|n| n.id.clone()).collect();
    let mut shown = (String::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(shown.0 == old && shown.1.len() == 3) {
        assert!(tokio::time::Instant::now() < deadline, "the page never showed 3 members and {old}: {shown:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        shown = tokio::task::block_in_place(|| page_state(&mut browser))?;
    }
    let mut members: Vec<&str> = shown.1.iter().map(|(id, _)| id.as_str()).collect();
    members.sort_unstable();
    assert_eq!(members, ids, "every member");
    assert!(shown.1.contains(&(old.clone(), "leader".into())), "{old} marked leader: {shown:?}");

    // The page, never reloaded, follows the election that a leader kill starts.
    cluster.nodes[leader].kill();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the page never showed a new leader: {shown:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        shown = tokio::task::block_in_place(|| page_state(&mut browser))?;
        if !shown.0.is_empty() && shown.0 != old && shown.0 != "–" && ids.contains(&shown.0) {
            break;
        }
    }
    let status = cluster.nodes[watcher].client()?.status().await?;
    assert_eq!(shown.0, status.leader_id, "the page shows the leader the node knows");
    eprintln!("the page showed {old}, then {} after the kill", shown.0);
    Ok(())
}
