//! The per-stage timing of writes on a real cluster: `raftkvctl bench --stages` and
//! `raftkvctl status --stages` (the Admin API's `WriteStages`).

#![allow(clippy::print_stderr)] // tests report what they did on stderr

use serde_json::Value;
use tests::{Cluster, TestResult, raftkvctl};

/// The stages, in the order a write passes them after it is proposed.
const STAGES: [&str; 5] = ["appended", "durable", "committed", "applied", "answered"];

/// Runs `raftkvctl` and parses its JSON output; fails with its stderr when it fails.
fn json(endpoints: &[String], args: &[&str]) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
    let out = raftkvctl(endpoints, args)?;
    if !out.status.success() {
        return Err(format!("raftkvctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn f(v: &Value, key: &str) -> Result<f64, String> {
    v[key].as_f64().ok_or_else(|| format!("{key} missing in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_stages_report_every_write_through_every_stage_in_order() -> TestResult {
    // The default timing: an election during the run would split its writes between two
    // leaders' figures.
    let cluster = Cluster::start(3, &[]).await?;
    let endpoints = cluster.endpoints();
    // Writes before the run: the reset at its start must leave them out.
    let client = cluster.client()?;
    for i in 0..5 {
        client.put(format!("before/{i}"), "x").await?;
    }
    const WRITES: u64 = 150;
    let total = WRITES.to_string();
    // Clients spread over the three nodes: the followers forward to the leader, which
    // proposes every write and reports them all.
    let args = ["-o", "json", "bench", "put", "--total", &total, "--clients", "6", "--stages", "--prefix", "st"];
    // A run counts only if the leadership stayed put (a starved machine can still see an
    // election); three tries at most.
    let mut summary = None;
    for _ in 0..3 {
        let term = client.status().await?.term;
        let run = json(&endpoints, &args)?;
        if client.status().await?.term == term {
            summary = Some(run);
            break;
        }
        eprintln!("the leadership changed during the run; running it again");
    }
    let summary = summary.ok_or("the leadership changed during each of three runs")?;
    let stages = &summary["stages"];
    assert_eq!(stages["writes"], WRITES, "{stages}");
    assert_eq!(stages["unmatched"], 0, "{stages}");
    let list = stages["stages"].as_array().ok_or("no stages")?;
    let names: Vec<&str> = list.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, STAGES, "every stage, in order");
    let (mut p50, mut p99, mut max) = (0.0, 0.0, 0.0);
    for s in list {
        let name = &s["name"];
        assert_eq!(s["count"], WRITES, "{name}: every write reaches every stage");
        // Each stage's own moment comes before the next one's, except now and then on the
        // leader (a quorum of followers fsynced before it did): a stage that is never
        // stamped, or stamped out of order, is overtaken by most writes.
        let overtaken = s["overtaken"].as_u64().ok_or("no overtaken")?;
        assert!(overtaken * 2 < WRITES, "{name}: overtaken in {overtaken} of {WRITES} writes: {list:?}");
        // The time since proposed never goes back from one stage to the next.
        let (t50, t99, tmax) = (f(s, "total_p50_ms")?, f(s, "total_p99_ms")?, f(s, "total_max_ms")?);
        assert!(t50 >= p50 && t99 >= p99 && tmax >= max, "{name} is earlier than the stage before: {list:?}");
        assert!(f(s, "step_p50_ms")? <= f(s, "step_p99_ms")? && f(s, "step_p99_ms")? <= f(s, "step_max_ms")? * 1.04);
        (p50, p99, max) = (t50, t99, tmax);
    }
    // The log's fsync takes time: a durable step of zero would mean the stamps are not the
    // writer's.
    assert!(f(&list[1], "step_p50_ms")? > 0.0, "durable step: {}", list[1]);
    // The server's time to answer is within what the clients measured (plus the histogram's
    // few percent).
    assert!(p50 <= f(&summary, "max_ms")? * 1.04, "answered p50 {p50} ms past the clients' max: {summary}");

    // `status --stages` on the leader reports the same node's figures since the last reset,
    // the one at the bench's start; a write after the run is counted too.
    client.put("after", "x").await?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    let leader_ep = [cluster.nodes[leader].grpc_addr.clone()];
    let since_reset = json(&leader_ep, &["-o", "json", "status", "--stages"])?;
    assert_eq!(since_reset["node_id"], stages["node_id"]);
    assert_eq!(since_reset["writes"], WRITES + 1, "since the bench's reset: {since_reset}");
    let out = raftkvctl(&leader_ep, &["status", "--stages"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("STEP P50"), "{text}");
    for name in STAGES {
        assert!(text.lines().any(|l| l.starts_with(name)), "no row for {name}:\n{text}");
    }

    // Where it measures nothing, it refuses.
    let out = raftkvctl(&endpoints, &["bench", "get", "--total", "1", "--stages"])?;
    assert!(!out.status.success(), "bench get --stages must be refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--stages measures raftkv's writes"));
    Ok(())
}
