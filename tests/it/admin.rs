//! Admin tests: membership changes, leadership transfer, rolling restarts, snapshots, backup
//! and restore, disaster recovery and auto-join, on real `raftkv` processes on 127.0.0.1.

#![allow(clippy::print_stderr)] // tests report what they did on stderr

use std::time::Duration;

use client::{Client, RaftState, Suffrage};
use tests::{
    Cluster, FAST_TIMING, Load, NodeClient, TestResult, check_readable, node, raftkvctl, test_options, wait_for,
};

const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);

fn json(out: &std::process::Output) -> Result<serde_json::Value, tests::BoxError> {
    if !out.status.success() {
        return Err(format!("raftkvctl failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn suffrage_of(members: &[client::Member], id: &str) -> Option<Suffrage> {
    members.iter().find(|m| m.id == id).and_then(|m| Suffrage::try_from(m.suffrage).ok())
}

/// Clients for a load: each over every endpoint, starting at a different node.
fn load_clients(cluster: &Cluster, n: usize) -> Result<Vec<Client>, tests::BoxError> {
    (0..n)
        .map(|w| {
            let mut endpoints = cluster.endpoints();
            let len = endpoints.len();
            endpoints.rotate_left(w % len);
            Ok(Client::new(endpoints, test_options())?)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_changes_under_load_lose_no_acknowledged_write() -> TestResult {
    let mut cluster = Cluster::start(3, &FAST_TIMING).await?;
    let load = Load::start(load_clients(&cluster, 2)?, "member", false);
    load.progress(50, Duration::from_secs(60)).await?;
    let admin = cluster.client()?;

    // A voter joins (learner first, promoted once caught up).
    let n4 = node("n4", cluster.dir.path()).args(FAST_TIMING).start()?;
    let resp = admin.add_voter("n4", &n4.raft_addr, &n4.grpc_addr, MEMBERSHIP_TIMEOUT).await?;
    assert_eq!(suffrage_of(&resp.members, "n4"), Some(Suffrage::Voter));
    cluster.nodes.push(n4);
    load.progress(30, Duration::from_secs(60)).await?;

    // A learner joins through raftkvctl, through a follower.
    let n5 = node("n5", cluster.dir.path()).args(FAST_TIMING).start()?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    let follower = vec![cluster.nodes[(leader + 1) % 3].grpc_addr.clone()];
    let v = json(&raftkvctl(
        &follower,
        &["-o", "json", "member", "add", "n5", "--raft-addr", &n5.raft_addr, "--grpc-addr", &n5.grpc_addr, "--learner"],
    )?)?;
    assert_eq!(v["changed"], true);
    let members = v["members"].as_array().ok_or("no members")?;
    assert!(members.iter().any(|m| m["id"] == "n5" && m["suffrage"] == "learner"), "{v}");
    cluster.nodes.push(n5);
    // Adding it again is a no-op.
    let again = admin.add_learner("n5", &cluster.nodes[4].raft_addr, &cluster.nodes[4].grpc_addr, MEMBERSHIP_TIMEOUT);
    assert!(!again.await?.changed);

    // The leader reports every member's progress.
    let endpoints = cluster.endpoints();
    wait_for("the learner to catch up", Duration::from_secs(30), || async {
        let Ok(out) = raftkvctl(&endpoints, &["-o", "json", "member", "list"]) else { return false };
        let Ok(v) = json(&out) else { return false };
        let Some(members) = v["members"].as_array() else { return false };
        members.len() == 5
            && members.iter().all(|m| m["matched_index"].as_u64().is_some())
            && members.iter().any(|m| m["id"] == "n5" && m["lag"].as_u64().is_some_and(|l| l < 100))
    })
    .await?;
    let out = raftkvctl(&endpoints, &["member", "list"])?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("ID") && table.contains("MATCHED") && table.contains("LAG"), "{table}");

    // Promote the learner, demote a voter that is not the leader, then remove it.
    let out = raftkvctl(&endpoints, &["member", "promote", "n5"])?;
    assert!(out.status.success(), "promote: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Member n5 promoted to voter"));
    load.progress(30, Duration::from_secs(60)).await?;
    let leader_id = cluster.nodes[cluster.leader().await.ok_or("no leader")?].id.clone();
    let victim = ["n2", "n3", "n4"].into_iter().find(|id| *id != leader_id).ok_or("no follower")?;
    let resp = admin.demote(victim, MEMBERSHIP_TIMEOUT).await?;
    assert!(resp.changed);
    assert_eq!(suffrage_of(&resp.members, victim), Some(Suffrage::Learner));
    assert!(!admin.demote(victim, MEMBERSHIP_TIMEOUT).await?.changed, "demoting a learner changes nothing");
    load.progress(30, Duration::from_secs(60)).await?;
    let out = raftkvctl(&endpoints, &["member", "remove", victim])?;
    assert!(out.status.success(), "remove: {}", String::from_utf8_lossy(&out.stderr));
    let resp = admin.remove(victim, MEMBERSHIP_TIMEOUT).await?;
    assert!(!resp.changed, "removing a non-member changes nothing");
    assert!(resp.members.iter().all(|m| m.id != victim));
    let gone = cluster.nodes.iter().position(|n| n.id == victim).ok_or("victim")?;
    assert!(cluster.nodes[gone].stop(), "the removed node did not stop cleanly");

    // Errors say what is wrong.
    let err = admin.promote("nobody", MEMBERSHIP_TIMEOUT).await.err().ok_or("promoting a stranger worked")?;
    assert_eq!(err.status().map(tonic::Status::code), Some(tonic::Code::NotFound), "{err}");
    let out = raftkvctl(&endpoints, &["member", "add", "bad/id", "--raft-addr", "h:1", "--grpc-addr", "h:2"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has the character '/'"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    load.progress(30, Duration::from_secs(60)).await?;
    let (acked, report) = load.stop().await?;
    eprintln!("load: {report:?}");
    assert!(
        report.other_errors.is_empty(),
        "the writers saw errors that were not retryable: {:?}",
        report.other_errors
    );
    cluster.wait_settled(Duration::from_secs(60)).await?;
    check_readable(&cluster.client()?, &acked).await?;
    let status = cluster.client()?.status().await?;
    let voters: Vec<&str> =
        status.members.iter().filter(|m| m.suffrage == Suffrage::Voter as i32).map(|m| m.id.as_str()).collect();
    assert_eq!(voters.len(), 4, "{voters:?}");
    cluster.stop_all();
    for i in 0..cluster.nodes.len() {
        if i == gone {
            continue;
        }
        let sm = cluster.state_machine(i)?;
        for (key, value) in &acked {
            let got = sm.get(key.as_bytes())?.map(|kv| kv.value);
            assert_eq!(got.as_deref(), Some(value.as_bytes()), "{} lacks {key}", cluster.nodes[i].id);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_last_voter_cannot_be_removed_or_demoted() -> TestResult {
    let mut cluster = Cluster::start(1, &FAST_TIMING).await?;
    let n2 = node("n2", cluster.dir.path()).args(FAST_TIMING).start()?;
    let admin = cluster.client()?;
    admin.add_learner("n2", &n2.raft_addr, &n2.grpc_addr, MEMBERSHIP_TIMEOUT).await?;
    cluster.nodes.push(n2);
    for args in [["member", "remove", "n1"], ["member", "demote", "n1"]] {
        let out = raftkvctl(&cluster.endpoints(), &args)?;
        assert_eq!(out.status.code(), Some(2), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("cannot") && stderr.contains("only voter"), "{args:?}: unclear message: {stderr}");
    }
    let out = raftkvctl(&cluster.endpoints(), &["leader", "transfer"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no other voter"));
    let out = raftkvctl(&cluster.endpoints(), &["leader", "transfer", "--to", "n2"])?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("learner"), "{}", String::from_utf8_lossy(&out.stderr));
    // The cluster is unchanged and still serves.
    let s = admin.status().await?;
    assert_eq!(suffrage_of(&s.members, "n1"), Some(Suffrage::Voter));
    assert_eq!(suffrage_of(&s.members, "n2"), Some(Suffrage::Learner));
    admin.put("still", "here").await?;
    // The learner can be removed.
    let resp = admin.remove("n2", MEMBERSHIP_TIMEOUT).await?;
    assert!(resp.changed && resp.members.len() == 1);
    cluster.stop_all();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_transfer_under_load_fails_no_write() -> TestResult {
    let mut cluster = Cluster::start(3, &FAST_TIMING).await?;
    let load = Load::start(load_clients(&cluster, 3)?, "transfer", true);
    load.progress(50, Duration::from_secs(60)).await?;
    let endpoints = cluster.endpoints();
    for round in 0..4 {
        let before = cluster.leader().await.ok_or("no leader")?;
        let target = cluster.nodes[(before + 1 + round % 2) % 3].id.clone();
        let out = if round % 2 == 0 {
            raftkvctl(&endpoints, &["-o", "json", "leader", "transfer", "--to", &target])?
        } else {
            raftkvctl(&endpoints, &["-o", "json", "leader", "transfer"])?
        };
        let v = json(&out)?;
        assert_eq!(v["previous_leader_id"], cluster.nodes[before].id.as_str(), "{v}");
        assert_ne!(v["leader_id"], v["previous_leader_id"], "{v}");
        if round % 2 == 0 {
            assert_eq!(v["leader_id"], target.as_str(), "{v}");
        }
        eprintln!("round {round}: leadership moved from {} to {}", v["previous_leader_id"], v["leader_id"]);
        load.progress(30, Duration::from_secs(60)).await?;
    }
    // Demoting the leader hands leadership over first; then it is promoted back.
    let old = cluster.leader().await.ok_or("no leader")?;
    let old_id = cluster.nodes[old].id.clone();
    let out = raftkvctl(&endpoints, &["member", "demote", &old_id])?;
    assert!(out.status.success(), "demote the leader: {}", String::from_utf8_lossy(&out.stderr));
    let s = cluster.client()?.status().await?;
    assert_ne!(s.leader_id, old_id, "the demoted node still leads");
    assert_eq!(suffrage_of(&s.members, &old_id), Some(Suffrage::Learner));
    load.progress(30, Duration::from_secs(60)).await?;
    let out = raftkvctl(&endpoints, &["member", "promote", &old_id])?;
    assert!(out.status.success(), "promote: {}", String::from_utf8_lossy(&out.stderr));
    load.progress(30, Duration::from_secs(60)).await?;
    // Verified by a quorum, the leader is the one the last transfer named.
    let verified = cluster.client()?.verify_leader().await?;
    let s = cluster.client()?.status().await?;
    assert_eq!(verified.leader_id, s.leader_id);
    let (acked, report) = load.stop().await?;
    eprintln!(
        "load: {} acknowledged, {} retryable errors, other: {:?}",
        acked.len(),
        report.retryable_errors,
        report.other_errors
    );
    assert_eq!(report.abandoned, 0);
    assert!(report.other_errors.is_empty(), "writes failed in a way that was not retryable: {:?}", report.other_errors);
    check_readable(&cluster.client()?, &acked).await?;
    cluster.stop_all();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_barrier_and_status_of_every_member() -> TestResult {
    let mut cluster = Cluster::start(3, &FAST_TIMING).await?;
    let client = cluster.client()?;
    for i in 0..20 {
        client.put(format!("s-{i}"), "v").await?;
    }
    let endpoints = cluster.endpoints();
    // Snapshot on a follower: it covers everything it applied.
    let leader = cluster.leader().await.ok_or("no leader")?;
    let follower = vec![cluster.nodes[(leader + 1) % 3].grpc_addr.clone()];
    let barrier = Client::new(follower.clone(), test_options())?.barrier(Duration::from_secs(10)).await?;
    let out = raftkvctl(&follower, &["snapshot"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let index: u64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    assert!(index >= barrier.index && barrier.index >= 20, "snapshot {index}, barrier {}", barrier.index);
    let s = Client::new(follower.clone(), test_options())?.status().await?;
    assert_eq!(s.snapshot_index, index);

    let v = json(&raftkvctl(&endpoints, &["-o", "json", "status", "--cluster"])?)?;
    let rows = v["members"].as_array().ok_or("no rows")?;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["status"]["applied_index"].as_u64().is_some_and(|a| a >= 20)), "{v}");
    let out = raftkvctl(&endpoints, &["-o", "table", "status", "--cluster"])?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(table.lines().count(), 4, "{table}");
    let states: Vec<&str> = table.lines().skip(1).filter_map(|l| l.split_whitespace().nth(2)).collect();
    assert_eq!(states.iter().filter(|s| **s == "leader").count(), 1, "{table}");
    assert_eq!(states.iter().filter(|s| **s == "follower").count(), 2, "{table}");

    // A member that is down is reported, and the command fails.
    let down = (leader + 2) % 3;
    cluster.nodes[down].stop();
    let out = raftkvctl(&endpoints, &["status", "--cluster"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unreachable"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 3 members could not be reached"));

    // VerifyLeader on a follower answers with the leader hint; the client follows it.
    let verified = Client::new(follower, test_options())?.verify_leader().await?;
    assert_eq!(verified.leader_id, cluster.nodes[leader].id);
    let s = cluster.nodes[leader].client()?.status().await?;
    assert_eq!(s.state, RaftState::Leader as i32);
    cluster.stop_all();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_under_load_fails_no_write_and_leaders_hand_over() -> TestResult {
    let mut cluster = Cluster::start(3, &FAST_TIMING).await?;
    let load = Load::start(load_clients(&cluster, 3)?, "rolling", true);
    load.progress(50, Duration::from_secs(60)).await?;
    // Stop the followers first, then the leader, so the last restart is a leader's.
    let leader = cluster.leader().await.ok_or("no leader")?;
    let order = [(leader + 1) % 3, (leader + 2) % 3, leader];
    for i in order {
        let was_leader = cluster.leader().await == Some(i);
        assert!(
            cluster.nodes[i].stop(),
            "{} did not stop cleanly:\n{}",
            cluster.nodes[i].id,
            cluster.nodes[i].log_tail()
        );
        if was_leader {
            let log = cluster.nodes[i].log();
            assert!(
                log.contains("leadership handed over before stopping"),
                "the stopping leader {} did not hand leadership over:\n{}",
                cluster.nodes[i].id,
                cluster.nodes[i].log_tail()
            );
        }
        load.progress(20, Duration::from_secs(60)).await?;
        cluster.nodes[i].restart(i == 0)?;
        cluster.wait_converged(Duration::from_secs(60)).await?;
        load.progress(20, Duration::from_secs(60)).await?;
        eprintln!("restarted {} (was leader: {was_leader}); {} writes acknowledged", cluster.nodes[i].id, load.acked());
    }
    let (acked, report) = load.stop().await?;
    eprintln!(
        "load: {} acknowledged, {} retryable errors, other: {:?}",
        acked.len(),
        report.retryable_errors,
        report.other_errors
    );
    assert_eq!(report.abandoned, 0, "every write was eventually acknowledged");
    check_readable(&cluster.client()?, &acked).await?;
    cluster.stop_all();
    for i in 0..3 {
        let sm = cluster.state_machine(i)?;
        for (key, value) in &acked {
            let got = sm.get(key.as_bytes())?.map(|kv| kv.value);
            assert_eq!(got.as_deref(), Some(value.as_bytes()), "{} lacks {key}", cluster.nodes[i].id);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_nodes_join_by_themselves_and_a_restart_does_not_rejoin() -> TestResult {
    let mut cluster = Cluster::start(1, &FAST_TIMING).await?;
    let seed = cluster.nodes[0].grpc_addr.clone();
    let mut extra: Vec<String> = FAST_TIMING.iter().map(ToString::to_string).collect();
    // The first address is dead: joining moves on to the next one.
    extra.extend(["--join".to_string(), format!("127.0.0.1:1,{seed}")]);
    for id in ["n2", "n3"] {
        let node = node(id, cluster.dir.path()).args(&extra).start()?;
        cluster.nodes.push(node);
    }
    cluster.wait_converged(Duration::from_secs(60)).await?;
    let client = cluster.client()?;
    client.put("joined", "yes").await?;
    for i in 1..3 {
        let node = &cluster.nodes[i];
        // The AddVoter answer may arrive a moment after the cluster sees the new voter.
        wait_for("the joiner to report it joined", Duration::from_secs(30), || {
            std::future::ready(node.log().contains("joined the cluster as a voter"))
        })
        .await?;
    }
    // Restarted with --join on existing state: it just starts.
    assert!(cluster.nodes[2].stop());
    cluster.nodes[2].restart(false)?;
    cluster.wait_converged(Duration::from_secs(60)).await?;
    assert!(cluster.nodes[2].log().contains("--join has nothing to do"), "{}", cluster.nodes[2].log_tail());
    let got = cluster.nodes[2].client()?.get("joined").await?;
    assert!(got.found);
    cluster.stop_all();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_interval_takes_snapshots_without_reaching_the_threshold() -> TestResult {
    let mut extra = FAST_TIMING.to_vec();
    extra.extend(["--snapshot_threshold", "100000", "--snapshot_interval", "200ms", "--max_append_entries", "64"]);
    let mut cluster = Cluster::start(1, &extra).await?;
    let client = cluster.client()?;
    let first = client.status().await?.snapshot_index;
    client.put("k", "v").await?;
    let written = client.put("k2", "v").await?.header.map(|h| h.index).unwrap_or(0);
    wait_for("a timed snapshot", Duration::from_secs(30), || async {
        client.status().await.is_ok_and(|s| s.snapshot_index >= written && s.snapshot_index > first)
    })
    .await?;
    assert!(cluster.nodes[0].log().contains("entries applied since the last snapshot; taking one"));
    cluster.stop_all();
    Ok(())
}

#[test]
fn invalid_policy_flags_fail_at_start_with_clear_messages() -> TestResult {
    let cases: [(&[&str], &str); 5] = [
        (
            &["--raft_id", "a", "--snapshot_interval", "5ms"],
            "--snapshot_interval is 5ms; it must be 0s (off) or at least 100ms",
        ),
        (&["--raft_id", "a", "--max_append_entries", "0"], "--max_append_entries is 0; it must be from 1 to 1024"),
        (&["--raft_id", "a", "--max_append_entries", "5000"], "--max_append_entries is 5000"),
        (
            &["--raft_id", "a", "--raft_bootstrap", "--join", "127.0.0.1:40051"],
            "--join and --raft_bootstrap cannot be used together",
        ),
        (&["--raft_id", "a", "--join", "nohost"], "--join \"nohost\" is not HOST:PORT"),
    ];
    for (args, expected) in cases {
        let stderr = tests::refused_start(args)?;
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in:\n{stderr}");
        assert!(stderr.starts_with("raftkv: error: invalid configuration"), "{args:?}: {stderr}");
    }
    Ok(())
}

fn os(args: &[&str]) -> Vec<std::ffi::OsString> {
    args.iter().map(std::ffi::OsString::from).collect()
}

fn run_raftkv(args: &[std::ffi::OsString]) -> Result<std::process::Output, tests::BoxError> {
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsString::as_os_str).collect();
    tests::raftkv(&refs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_loss_is_recovered_on_the_survivor_and_new_nodes_join() -> TestResult {
    let mut cluster = Cluster::start(3, &FAST_TIMING).await?;
    let client = cluster.client()?;
    let mut acked = std::collections::BTreeMap::new();
    for i in 0..200 {
        let (key, value) = (format!("dr-{i:03}"), format!("v{i}"));
        client.put(key.clone(), value.clone()).await?;
        acked.insert(key, value);
    }
    cluster.wait_converged(Duration::from_secs(60)).await?;

    // Two of three nodes are destroyed: the leader and one follower.
    let leader = cluster.leader().await.ok_or("no leader")?;
    let survivor = (leader + 1) % 3;
    for i in [leader, (leader + 2) % 3] {
        cluster.nodes[i].kill();
        std::fs::remove_dir_all(cluster.nodes[i].data_dir.join(&cluster.nodes[i].id))?;
    }
    let mut survivor = cluster.nodes.remove(survivor);
    cluster.nodes.clear();
    let lonely = Client::new(
        [survivor.grpc_addr.clone()],
        client::ClientOptions { request_timeout: Duration::from_secs(2), max_retries: 0, ..test_options() },
    )?;
    assert!(lonely.put("no-quorum", "x").await.is_err(), "a write succeeded without a quorum");

    // Recover: stop it, force the membership, start it again (with --raft_bootstrap: on
    // existing state that flag does nothing). While it runs, recover refuses.
    let mut args = os(&["recover", "--raft_id", &survivor.id, "--raft_data_dir"]);
    args.push(survivor.data_dir.clone().into_os_string());
    let out = run_raftkv(&args)?;
    assert!(!out.status.success(), "recover ran on a running node");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Stop it first"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(survivor.stop());
    let out = run_raftkv(&args)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "recover failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("Recovered {}", survivor.id)) && stdout.contains("voter"), "{stdout}");
    survivor.restart(true)?;
    let survivor_client = survivor.client()?;
    wait_for("the survivor to lead", Duration::from_secs(30), || async {
        survivor_client.status().await.is_ok_and(|s| s.state == RaftState::Leader as i32 && s.members.len() == 1)
    })
    .await?;
    assert!(survivor.log().contains("--raft_bootstrap has nothing to do"));
    check_readable(&survivor_client, &acked).await?;
    survivor_client.put("after-recovery", "yes").await?;
    acked.insert("after-recovery".into(), "yes".into());

    // New, empty nodes join the recovered cluster.
    let seed = survivor.grpc_addr.clone();
    cluster.nodes.push(survivor);
    let mut extra: Vec<String> = FAST_TIMING.iter().map(ToString::to_string).collect();
    extra.extend(["--join".to_string(), seed]);
    for id in ["n4", "n5"] {
        cluster.nodes.push(node(id, cluster.dir.path()).args(&extra).start()?);
    }
    cluster.wait_converged(Duration::from_secs(60)).await?;
    for node in &cluster.nodes {
        check_readable(&node.client()?, &acked).await?;
    }
    cluster.stop_all();
    for i in 0..3 {
        let sm = cluster.state_machine(i)?;
        for (key, value) in &acked {
            assert_eq!(sm.get(key.as_bytes())?.map(|kv| kv.value).as_deref(), Some(value.as_bytes()));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_restores_into_a_fresh_cluster_key_by_key() -> TestResult {
    let mut extra = FAST_TIMING.to_vec();
    // Small snapshots thresholds: the source has older snapshots and purged logs too.
    extra.extend(["--snapshot_threshold", "100", "--trailing_logs", "20"]);
    let mut source = Cluster::start(3, &extra).await?;
    let client = source.client()?;
    let mut keys = Vec::new();
    for i in 0..300 {
        let key = format!("b-{i:03}");
        client.put(key.clone(), format!("first-{i}")).await?;
        keys.push(key);
    }
    for i in (0..300).step_by(3) {
        client.put(format!("b-{i:03}"), format!("second-{i}")).await?;
    }
    for i in (0..300).step_by(7) {
        client.delete(format!("b-{i:03}")).await?;
    }
    client.put("binary", vec![0u8, 255, 10]).await?;
    keys.push("binary".into());

    let backup = source.dir.path().join("backup.rkvs");
    let endpoints = source.endpoints();
    let out = raftkvctl(&endpoints, &["snapshot", "save", &backup.display().to_string()])?;
    assert!(out.status.success(), "snapshot save: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("Snapshot saved at {}\n", backup.display()));
    // Written after the backup: must not be in the restored cluster.
    for i in 0..10 {
        client.put(format!("later-{i}"), "x").await?;
    }

    // A damaged copy is refused before anything is written.
    let damaged = source.dir.path().join("damaged.rkvs");
    let mut bytes = std::fs::read(&backup)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&damaged, &bytes)?;
    let target = tempfile::tempdir()?;
    let (grpc, raft) = (format!("127.0.0.1:{}", tests::free_port()?), format!("127.0.0.1:{}", tests::free_port()?));
    let restore_args = |file: &std::path::Path| {
        let mut a = os(&["restore"]);
        a.push(file.as_os_str().to_owned());
        a.extend(os(&["--raft_id", "r1", "--raft_addr", &raft, "--grpc_addr", &grpc, "--raft_data_dir"]));
        a.push(target.path().as_os_str().to_owned());
        a
    };
    let out = run_raftkv(&restore_args(&damaged))?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not an intact raftkv backup"), "{stderr}");
    assert!(!target.path().join("r1").exists(), "a refused restore left data behind");

    let out = run_raftkv(&restore_args(&backup))?;
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("as a new one-node cluster of r1"));
    // Off a terminal, progress is logged (here only the last line: a small backup is quick).
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().find(|l| l.contains("restore progress")).ok_or("no progress line")?;
    eprintln!("restore logged: {line}");
    assert!(line.contains("percent") && line.trim_end().ends_with("100"), "{line}");
    // Restoring again into the same place is refused.
    let out = run_raftkv(&restore_args(&backup))?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("already has data"));

    let extra_owned: Vec<String> = FAST_TIMING.iter().map(ToString::to_string).collect();
    let r1 = node("r1", target.path()).addrs(&grpc, &raft).args(&extra_owned).start()?;
    let mut join = extra_owned.clone();
    join.extend(["--join".to_string(), grpc.clone()]);
    let mut restored = Cluster { nodes: vec![r1], dir: target };
    for id in ["r2", "r3"] {
        restored.nodes.push(node(id, restored.dir.path()).args(&join).start()?);
    }
    restored.wait_converged(Duration::from_secs(60)).await?;
    restored.client()?.put("new-cluster", "works").await?;

    source.stop_all();
    restored.stop_all();
    let src = source.state_machine(0)?;
    for i in 0..3 {
        let dst = restored.state_machine(i)?;
        for key in &keys {
            let (a, b) = (src.get(key.as_bytes())?, dst.get(key.as_bytes())?);
            assert_eq!(a, b, "{key} differs on {}", restored.nodes[i].id);
        }
        for i in 0..10 {
            assert!(dst.get(format!("later-{i}").as_bytes())?.is_none(), "a write after the backup was restored");
        }
        assert_eq!(dst.len()?, src.len()? - 10 + 1, "the restored cluster has other keys");
    }
    Ok(())
}

/// A demoted node that was down while the leader snapshotted and purged past it comes back
/// by a snapshot and is promoted while writes never stop (issue 15: the suspicion that
/// snapshots moving ahead keep a learner from ever counting as caught up). Before it can
/// catch up, a promote says why: `DEADLINE_EXCEEDED` naming the learner's index and the
/// leader's, and it stays a learner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_learner_behind_a_purged_log_is_promoted_under_continuous_writes() -> TestResult {
    let mut extra = FAST_TIMING.to_vec();
    extra.extend(tests::chaos::SNAPSHOT_OFTEN);
    let started = std::time::Instant::now();
    let mut cluster = Cluster::start(3, &extra).await?;
    let load = Load::start(load_clients(&cluster, 4)?, "promote", true);
    load.progress(50, Duration::from_secs(60)).await?;
    eprintln!("{:?}: cluster up, 50 writes", started.elapsed());
    let admin = cluster.client()?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    let learner = (leader + 1) % 3;
    let id = cluster.nodes[learner].id.clone();
    assert!(admin.demote(&id, MEMBERSHIP_TIMEOUT).await?.changed);
    let behind = cluster.nodes[learner].client()?.status().await?.last_log_index;
    cluster.nodes[learner].kill();
    let status = cluster.nodes[leader].client()?;
    wait_for("the leader to snapshot and purge past the stopped learner", Duration::from_secs(120), || async {
        status.status().await.is_ok_and(|s| s.purged_index > behind + 100)
    })
    .await?;
    eprintln!("{:?}: {id} demoted and stopped at index {behind}; the leader purged past it", started.elapsed());

    // Down, it cannot catch up: the promote says so and changes nothing.
    let refused = admin.promote(&id, Duration::from_secs(10)).await;
    assert_eq!(tests::code(&refused), Some(tonic::Code::DeadlineExceeded), "{refused:?}");
    let why = tests::message(&refused);
    assert!(why.contains(&format!("learner {id} did not catch up")) && why.contains("still a learner"), "{why}");
    let members = admin.status().await?.members;
    assert_eq!(suffrage_of(&members, &id), Some(Suffrage::Learner));

    // Back, under the same writes, it installs a snapshot, then the entries after it, and is
    // promoted (each promote waits for the log as it was when the call arrived).
    cluster.nodes[learner].restart(false)?;
    let restarted = std::time::Instant::now();
    let resp = admin.promote(&id, MEMBERSHIP_TIMEOUT).await?;
    eprintln!("{:?}: {id} promoted {:?} after its restart", started.elapsed(), restarted.elapsed());
    assert!(resp.changed, "{resp:?}");
    assert_eq!(suffrage_of(&resp.members, &id), Some(Suffrage::Voter));
    let log = cluster.nodes[learner].log();
    assert!(log.contains("snapshot installed"), "the learner did not install a snapshot:\n{log}");
    load.progress(50, Duration::from_secs(60)).await?;
    let (acked, report) = load.stop().await?;
    eprintln!("load: {} writes acknowledged while the learner came back, {report:?}", acked.len());
    cluster.wait_converged(Duration::from_secs(60)).await?;
    check_readable(&cluster.client()?, &acked).await?;
    cluster.stop_all();
    Ok(())
}
