//! etcd's Maintenance and Cluster changes through Debian's `etcdctl` (API 3): against a
//! three-node raftkv (through `crates/etcd-api`), and the same commands against a real
//! three-member etcd 3.4 started by the test; the outputs are compared with ids, addresses
//! and hashes masked (they differ by design: docs/etcd-api.md).
//!
//! Ignored by default, like `etcd::`: a fresh machine has no etcd. CI installs etcd 3.4 and
//! runs them with `--run-ignored only -E 'test(/^etcd/)'`.

#![allow(clippy::print_stderr)]

use std::ffi::OsStr;
use std::time::Duration;

use proto::etcd::etcdserverpb::alarm_request::AlarmAction;
use proto::etcd::etcdserverpb::maintenance_client::MaintenanceClient;
use proto::etcd::etcdserverpb::{AlarmRequest, AlarmType, HashRequest, MoveLeaderRequest};
use serde_json::Value;
use tests::{BoxError, Cluster, FAST_TIMING, TestResult, node, wait_for};

use crate::etcd::{Ctl, Etcd, EtcdCluster, error_line, etcdctl, etcdctl_run, on_path};

/// `text` with what differs by design between raftkv and etcd replaced: `127.0.0.1:PORT` by
/// `ADDR`, and runs of 10 or more hex digits (member and cluster ids in hex or decimal) by
/// `ID` (padding before it dropped).
fn mask(text: &str) -> String {
    let text = text.replace("127.0.0.1:", "ADDR:");
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 10 {
            // etcdctl pads ids to 16 characters (`%16x`).
            while out.ends_with("  ") {
                out.pop();
            }
            out.push_str("ID");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    let mut after_addr = false;
    for c in text.chars() {
        if c.is_ascii_hexdigit() && !(after_addr && c.is_ascii_digit()) {
            run.push(c);
            continue;
        }
        if after_addr && c.is_ascii_digit() {
            continue;
        }
        flush(&mut run, &mut out);
        out.push(c);
        after_addr = out.ends_with("ADDR:");
        if after_addr {
            out.push_str("PORT");
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Both succeed and print the same, once masked ([`mask`]); raftkv's output.
fn alike(ours: &str, theirs: &str, args: &[&str]) -> Result<String, BoxError> {
    let (o, t) = (etcdctl(ours, args)?, etcdctl(theirs, args)?);
    assert_eq!(mask(&o), mask(&t), "etcdctl {args:?}: raftkv (left) and etcd (right) differ\n{o}\n{t}");
    Ok(o)
}

/// Both fail with the same error line; that line.
fn alike_error(ours: &str, theirs: &str, args: &[&str]) -> Result<String, BoxError> {
    let (o, t) = (etcdctl_run(ours, args, "")?, etcdctl_run(theirs, args, "")?);
    assert!(!o.ok && !t.ok, "etcdctl {args:?} should fail on both: raftkv {o:?}, etcd {t:?}");
    assert_eq!(mask(&error_line(&o)), mask(&error_line(&t)), "etcdctl {args:?}: raftkv (left), etcd (right)");
    Ok(error_line(&o))
}

/// `etcdctl ARGS` against etcd, retried while etcd refuses a membership change because a
/// member has not been connected for 5 s yet ("unhealthy cluster", its
/// --strict-reconfig-check, after a member joined); raftkv has no such wait.
async fn etcd_change(endpoints: &str, args: &[&str]) -> Result<String, BoxError> {
    let out = etcd_change_run(endpoints, args).await?;
    if !out.ok {
        return Err(format!("etcdctl {args:?} against etcd: {}", out.stderr).into());
    }
    Ok(out.stdout)
}

/// [`etcd_change`], which may fail: what etcdctl answered.
async fn etcd_change_run(endpoints: &str, args: &[&str]) -> Result<Ctl, BoxError> {
    let mut answer = etcdctl_run(endpoints, args, "")?;
    wait_for(&format!("etcd to take {args:?}"), Duration::from_secs(30), || {
        let retry = error_line(&answer) == "Error: etcdserver: unhealthy cluster";
        if retry && let Ok(again) = etcdctl_run(endpoints, args, "") {
            answer = again;
        }
        std::future::ready(error_line(&answer) != "Error: etcdserver: unhealthy cluster")
    })
    .await?;
    Ok(answer)
}

fn json(endpoints: &str, args: &[&str]) -> Result<Value, BoxError> {
    Ok(serde_json::from_str(&etcdctl(endpoints, args)?)?)
}

/// Each endpoint's (member id, leader's member id), from `endpoint status -w json`.
fn statuses(endpoints: &str) -> Result<Vec<(String, u64, u64)>, BoxError> {
    let all = json(endpoints, &["endpoint", "status", "-w", "json"])?;
    let all = all.as_array().ok_or("no status")?;
    Ok(all
        .iter()
        .map(|s| {
            let ep = s["Endpoint"].as_str().unwrap_or_default().to_string();
            (ep, s["Status"]["header"]["member_id"].as_u64().unwrap_or(0), s["Status"]["leader"].as_u64().unwrap_or(0))
        })
        .collect())
}

/// (the leader's endpoint, a follower's endpoint, the follower's member id).
fn leader_and_follower(endpoints: &str) -> Result<(String, String, u64), BoxError> {
    let all = statuses(endpoints)?;
    let leader = all.iter().find(|(_, id, l)| id == l).ok_or(format!("no leader: {all:?}"))?;
    let follower = all.iter().find(|(_, id, l)| id != l).ok_or(format!("no follower: {all:?}"))?;
    Ok((leader.0.clone(), follower.0.clone(), follower.1))
}

async fn maintenance(endpoint: &str) -> Result<MaintenanceClient<tonic::transport::Channel>, BoxError> {
    Ok(MaintenanceClient::connect(format!("http://{endpoint}")).await?)
}

/// A raftkv cluster of three and an etcd cluster of three, both ready; their endpoints.
async fn both() -> Result<(Cluster, EtcdCluster, String, String), BoxError> {
    on_path("etcdctl")?;
    let etcd = EtcdCluster::start(3)?;
    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    etcd.wait_ready().await?;
    let ours = cluster.endpoints().join(",");
    let o = ours.clone();
    wait_for("raftkv to take a put", Duration::from_secs(30), || {
        let o = o.clone();
        async move { etcdctl(&o, &["put", "ready", "1"]).is_ok() }
    })
    .await?;
    let theirs = etcd.endpoints();
    Ok((cluster, etcd, ours, theirs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs etcd 3.4 (Debian etcd-server/etcd-client; CI installs it)"]
async fn maintenance_through_etcdctl_as_against_etcd() -> TestResult {
    let (cluster, _etcd, ours, theirs) = both().await?;
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        etcdctl(&ours, &["put", k, v])?;
        etcdctl(&theirs, &["put", k, v])?;
    }

    // endpoint hashkv --cluster: every member, equal hashes on equal replicas.
    let first = cluster.endpoints()[0].clone();
    for (who, endpoint) in [("raftkv", first.as_str()), ("etcd", theirs.split(',').next().unwrap_or_default())] {
        let ep = endpoint.to_string();
        wait_for(&format!("{who}'s replicas to hash alike"), Duration::from_secs(20), || {
            let ep = ep.clone();
            async move {
                let Ok(all) = json(&ep, &["endpoint", "hashkv", "--cluster", "-w", "json"]) else { return false };
                let hashes: Vec<u64> = all
                    .as_array()
                    .map(|a| a.iter().filter_map(|h| h["HashKV"]["hash"].as_u64()).collect())
                    .unwrap_or_default();
                hashes.len() == 3 && hashes.iter().all(|h| *h == hashes[0] && *h != 0)
            }
        })
        .await?;
    }
    let table = etcdctl(&first, &["endpoint", "hashkv", "--cluster"])?;
    let etcd_table = etcdctl(theirs.split(',').next().unwrap_or_default(), &["endpoint", "hashkv", "--cluster"])?;
    assert_eq!(table.lines().count(), 3, "{table}");
    assert_eq!(mask(&table).lines().count(), mask(&etcd_table).lines().count());
    eprintln!("endpoint hashkv --cluster: raftkv\n{table}etcd\n{etcd_table}");
    // Hash (no etcdctl command): the same state hash on every node.
    let mut hashes = Vec::new();
    for ep in cluster.endpoints() {
        hashes.push(maintenance(&ep).await?.hash(HashRequest {}).await?.into_inner().hash);
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");

    // snapshot save: the file `raftkvctl snapshot save` writes, which `raftkv restore` takes.
    let dir = tempfile::tempdir()?;
    let (file, etcd_file) = (dir.path().join("raftkv.snap"), dir.path().join("etcd.snap"));
    let (file_s, etcd_file_s) = (file.display().to_string(), etcd_file.display().to_string());
    let saved = etcdctl(&first, &["snapshot", "save", &file_s])?;
    assert_eq!(saved, format!("Snapshot saved at {file_s}\n"));
    let etcd_saved = etcdctl(theirs.split(',').next().unwrap_or_default(), &["snapshot", "save", &etcd_file_s])?;
    assert_eq!(etcd_saved, format!("Snapshot saved at {etcd_file_s}\n"));
    // raftkv's file, then etcd's trailer: zeros, the file's size (u64 LE) 40 bytes from the
    // end, and a SHA-256 of all before it (docs/etcd-api.md).
    let bytes = std::fs::read(&file)?;
    assert_eq!(bytes.len() % 512, 32, "etcd's form");
    let at = bytes.len() - 40;
    let size = usize::try_from(u64::from_le_bytes(bytes[at..at + 8].try_into()?))?;
    assert!(bytes.starts_with(b"RKVSNAP\0") && size <= at, "{size}");
    let backup = dir.path().join("raftkv.rkvs");
    std::fs::write(&backup, &bytes[..size])?;
    let backup_s = backup.display().to_string();
    let (grpc, raft) = (format!("127.0.0.1:{}", tests::free_port()?), format!("127.0.0.1:{}", tests::free_port()?));
    let target = dir.path().join("restored");
    let args = ["restore", &backup_s, "--raft_id", "r1", "--raft_addr", &raft, "--grpc_addr", &grpc, "--raft_data_dir"];
    let mut args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    args.push(target.as_os_str());
    let restored = tests::raftkv(&args)?;
    assert!(restored.status.success(), "raftkv restore: {}", String::from_utf8_lossy(&restored.stderr));
    let status = etcdctl_run(&first, &["snapshot", "status", &file_s, "-w", "table"], "")?;
    let etcd_status = etcdctl_run(&first, &["snapshot", "status", &etcd_file_s, "-w", "table"], "")?;
    assert!(!status.ok && etcd_status.ok, "raftkv {status:?} etcd {etcd_status:?}");
    eprintln!("snapshot status of raftkv's file: {}\nof etcd's:\n{}", status.stderr.trim(), etcd_status.stdout);

    // move-leader: to a follower; a target that is not a member; a call on a follower.
    for endpoints in [&ours, &theirs] {
        let (_, _, follower_id) = leader_and_follower(endpoints)?;
        let out = etcdctl(endpoints, &["move-leader", &format!("{follower_id:x}")])?;
        assert!(
            out.starts_with("Leadership transferred from ") && out.ends_with(&format!(" to {follower_id:x}\n")),
            "{out}"
        );
        wait_for("the new leader to be known everywhere", Duration::from_secs(10), || {
            let e = endpoints.to_string();
            async move { statuses(&e).is_ok_and(|all| all.iter().all(|(_, _, l)| *l == follower_id) && all.len() == 3) }
        })
        .await?;
    }
    let bad = alike_error(&ours, &theirs, &["move-leader", "1234"])?;
    assert_eq!(bad, "Error: etcdserver: bad leader transferee");
    for endpoints in [&ours, &theirs] {
        let (_, follower, id) = leader_and_follower(endpoints)?;
        let follower = follower.trim_start_matches("http://").to_string();
        let refused = maintenance(&follower).await?.move_leader(MoveLeaderRequest { target_id: id }).await;
        let s = refused.err().ok_or("a follower moved leadership")?;
        assert_eq!((s.code(), s.message()), (tonic::Code::FailedPrecondition, "etcdserver: not leader"));
    }

    // alarm: none; NOSPACE raised (Maintenance.Alarm ACTIVATE) is listed, refuses puts, and is
    // disarmed.
    assert_eq!(alike(&ours, &theirs, &["alarm", "list"])?, "");
    for endpoints in [&ours, &theirs] {
        let (leader, _, _) = leader_and_follower(endpoints)?;
        let member = statuses(endpoints)?[0].1;
        let raise =
            AlarmRequest { action: AlarmAction::Activate as i32, member_id: member, alarm: AlarmType::Nospace as i32 };
        let leader = leader.trim_start_matches("http://").to_string();
        let raised = maintenance(&leader).await?.alarm(raise).await?.into_inner();
        assert_eq!(raised.alarms.len(), 1, "{raised:?}");
    }
    let listed = alike(&ours, &theirs, &["alarm", "list"])?;
    assert!(listed.trim_end().ends_with(" alarm:NOSPACE") && listed.lines().count() == 1, "{listed}");
    let (refused, etcd_refused) =
        (etcdctl_run(&ours, &["put", "k", "v"], "")?, etcdctl_run(&theirs, &["put", "k", "v"], "")?);
    assert!(!refused.ok && !etcd_refused.ok);
    eprintln!("put under NOSPACE: raftkv {:?}, etcd {:?}", error_line(&refused), error_line(&etcd_refused));
    assert_eq!(alike(&ours, &theirs, &["alarm", "disarm"])?, listed);
    assert_eq!(alike(&ours, &theirs, &["alarm", "list"])?, "");
    etcdctl(&ours, &["put", "k", "v"])?;
    etcdctl(&theirs, &["put", "k", "v"])?;

    // defrag: answered by every member (raftkv: a no-op).
    let defrag = alike(&ours, &theirs, &["defrag"])?;
    assert_eq!(defrag.lines().count(), 3, "{defrag}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs etcd 3.4 (Debian etcd-server/etcd-client; CI installs it)"]
async fn membership_changes_through_etcdctl_as_against_etcd() -> TestResult {
    let (mut cluster, _etcd, ours, theirs) = both().await?;
    let mut extra: Vec<Etcd> = Vec::new();

    // member add --learner: the answer names the new member; the node is started as
    // docs/etcd-api.md says (node id: the member id in hex; both ports: the peer address).
    let (port, etcd_client_port) = crate::etcd::two_ports()?;
    let (_, etcd_peer_port) = crate::etcd::two_ports()?;
    let (peer, etcd_peer) = (format!("http://127.0.0.1:{port}"), format!("http://127.0.0.1:{etcd_peer_port}"));
    let etcd_added =
        etcd_change(&theirs, &["member", "add", "new", "--learner", &format!("--peer-urls={etcd_peer}")]).await?;
    let added = etcdctl(&ours, &["member", "add", "new", "--learner", &format!("--peer-urls={peer}")])?;
    eprintln!("member add --learner: raftkv\n{added}etcd\n{etcd_added}");
    let first = |s: &str| s.lines().next().map(mask).unwrap_or_default();
    assert_eq!(first(&added), first(&etcd_added));
    let hex = |s: &str| -> Result<String, BoxError> {
        Ok(s.split_whitespace().nth(1).ok_or(format!("no member id in {s:?}"))?.to_string())
    };
    let (id, etcd_id) = (hex(&added)?, hex(&etcd_added)?);
    for line in [
        "ETCD_NAME=\"new\"",
        &format!("ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{peer}\""),
        "ETCD_INITIAL_CLUSTER_STATE=\"existing\"",
    ] {
        assert!(added.lines().any(|l| l == line), "{line} in {added}");
    }
    // A peer URL a member has (each system's first member's), while etcd's cluster is
    // healthy.
    let peer_of_first = |endpoints: &str| -> Result<String, BoxError> {
        let list = json(endpoints, &["member", "list", "-w", "json"])?;
        Ok(format!("--peer-urls={}", list["members"][0]["peerURLs"][0].as_str().ok_or("no peer URL")?))
    };
    let dup = etcdctl_run(&ours, &["member", "add", "x", "--learner", &peer_of_first(&ours)?], "")?;
    let etcd_dup = etcd_change_run(&theirs, &["member", "add", "x", "--learner", &peer_of_first(&theirs)?]).await?;
    assert_eq!(error_line(&dup), "Error: etcdserver: Peer URLs already exists");
    // etcd 3.4 derives a new member's id from its peer URLs and the second it is added, and
    // checks the id before the URLs: within the second of another add it says "member ID
    // already exist" instead.
    let etcd_line = error_line(&etcd_dup);
    assert!(
        [error_line(&dup).as_str(), "Error: etcdserver: member ID already exist"].contains(&etcd_line.as_str()),
        "raftkv {dup:?} etcd {etcd_dup:?}"
    );
    let listed = json(&ours, &["member", "list", "-w", "json"])?;
    let new = listed["members"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["name"] == id.as_str()))
        .ok_or(format!("{id} not listed: {listed}"))?;
    assert_eq!(new["isLearner"], true, "{new}");
    assert_eq!(format!("{:x}", new["ID"].as_u64().unwrap_or(0)), id);
    let addr = format!("127.0.0.1:{port}");
    cluster.nodes.push(node(&id, cluster.dir.path()).addrs(&addr, &addr).args(FAST_TIMING).start()?);
    let initial = etcd_added
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
        .map(|l| l.trim_end_matches('"').to_string())
        .ok_or("no ETCD_INITIAL_CLUSTER")?;
    extra.push(Etcd::member("new", etcd_client_port, etcd_peer_port, &initial, "existing")?);

    // member promote: once the learner has caught up (raftkv waits for it; etcd refuses a
    // learner not in sync yet, so both are retried until they succeed).
    let mut promoted = Vec::new();
    for (endpoints, id) in [(&ours, &id), (&theirs, &etcd_id)] {
        wait_for("the learner to be promoted", Duration::from_secs(30), || {
            let out = etcdctl(endpoints, &["member", "promote", id]);
            let ok = out.as_ref().is_ok_and(|o| o.contains("promoted"));
            if let Ok(o) = out {
                promoted.push(o);
            }
            std::future::ready(ok)
        })
        .await?;
    }
    eprintln!("member promote: {promoted:?}");
    assert_eq!(promoted.len(), 2, "{promoted:?}");
    assert_eq!(mask(&promoted[0]), mask(&promoted[1]));
    let again = etcdctl_run(&ours, &["member", "promote", &id], "")?;
    let etcd_again = etcdctl_run(&theirs, &["member", "promote", &etcd_id], "")?;
    assert_eq!(error_line(&again), error_line(&etcd_again));
    assert_eq!(error_line(&again), "Error: etcdserver: can only promote a learner member");
    // The promoted node serves etcd's API like the others.
    assert_eq!(etcdctl(&addr, &["get", "ready", "--print-value-only"])?, "1\n");

    // member update: a new peer URL for a member (here a learner that never starts).
    let (spare, spare2) = crate::etcd::two_ports()?;
    let (etcd_spare, etcd_spare2) = crate::etcd::two_ports()?;
    let add = |p: u16| format!("--peer-urls=http://127.0.0.1:{p}");
    let (a, ea) = (add(spare), add(etcd_spare));
    let s = hex(&etcdctl(&ours, &["member", "add", "spare", "--learner", &a])?)?;
    let es = hex(&etcd_change(&theirs, &["member", "add", "spare", "--learner", &ea]).await?)?;
    let updated = etcdctl(&ours, &["member", "update", &s, &add(spare2)])?;
    let etcd_updated = etcd_change(&theirs, &["member", "update", &es, &add(etcd_spare2)]).await?;
    assert_eq!(mask(&updated), mask(&etcd_updated));
    let listed = etcdctl(&ours, &["member", "list"])?;
    assert!(listed.contains(&format!("http://127.0.0.1:{spare2}")), "{listed}");

    // member add without --learner: raftkv adds voters learner-first and promotes them once
    // caught up within the deadline; a node that is not running cannot catch up, so the
    // answer says how to start and promote it, and the member stays a learner (etcd adds a
    // voter at once; not compared: it would leave etcd a voter short).
    let (voter, _) = crate::etcd::two_ports()?;
    let args = ["member", "add", "v", &add(voter), "--command-timeout=2s"];
    let refused = etcdctl_run(&ours, &args, "")?;
    let line = error_line(&refused);
    assert!(
        !refused.ok && line.contains("did not catch up in time") && line.contains("stays a learner"),
        "{refused:?}"
    );
    let v = line.split("member ").nth(1).and_then(|t| t.split_whitespace().next()).ok_or(line.clone())?.to_string();
    assert!(
        line.contains(&format!("--raft_id {v} --raft_addr 127.0.0.1:{voter} --grpc_addr 127.0.0.1:{voter}")),
        "{line}"
    );
    eprintln!("member add (a voter, not running): {line}");
    let listed = json(&ours, &["member", "list", "-w", "json"])?;
    let learner = listed["members"].as_array().and_then(|a| a.iter().find(|m| m["name"] == v.as_str()).cloned());
    assert_eq!(learner.map(|m| m["isLearner"].clone()), Some(Value::Bool(true)), "{listed}");
    etcdctl(&ours, &["member", "remove", &v])?;

    // member remove: the promoted member and the spare; a second remove is not found.
    for (endpoints, ids) in [(&ours, [&id, &s]), (&theirs, [&etcd_id, &es])] {
        for id in ids {
            let out = etcd_change(endpoints, &["member", "remove", id]).await?;
            // etcdctl prints ids with `%16x`: space-padded when shorter than 16 digits.
            let words: Vec<&str> = out.split_whitespace().take(5).collect();
            assert_eq!(words, ["Member", id.as_str(), "removed", "from", "cluster"], "{out}");
        }
    }
    let gone = etcdctl_run(&ours, &["member", "remove", &id], "")?;
    let etcd_gone = etcdctl_run(&theirs, &["member", "remove", &etcd_id], "")?;
    assert_eq!(error_line(&gone), error_line(&etcd_gone));
    assert_eq!(error_line(&gone), "Error: etcdserver: member not found");
    assert_eq!(json(&ours, &["member", "list", "-w", "json"])?["members"].as_array().map(Vec::len), Some(3));
    assert_eq!(json(&theirs, &["member", "list", "-w", "json"])?["members"].as_array().map(Vec::len), Some(3));
    etcdctl(&ours, &["put", "after", "1"])?;
    drop(extra);
    Ok(())
}

/// The least share of etcd's `check perf` throughput, measured at the same time on the same
/// machine, that raftkv must reach. The check's own bar (135 writes/s, 90 % of its 150/s) is
/// not asserted: a debug build on a shared 2-core machine lands close to it, and so does etcd.
const CHECK_PERF_SHARE_OF_ETCD: f64 = 0.75;

/// `check perf`'s three check lines (throughput, slowest request, stddev), in order, with
/// PASS/FAIL and the figures; its progress bar and the verdict dropped.
fn check_lines(out: &Ctl) -> Vec<String> {
    let all = format!("{}\n{}", out.stdout, out.stderr);
    all.split(['\r', '\n'])
        .filter(|l| ["Throughput", "Slowest request", "Stddev"].iter().any(|k| l.contains(k)))
        .map(str::to_string)
        .collect()
}

/// A check line without its verdict and figures: what both stores must print alike.
fn check_kind(line: &str) -> String {
    let kind = ["Throughput", "Slowest request", "Stddev"].into_iter().find(|k| line.contains(k));
    kind.unwrap_or_default().to_string()
}

/// `etcdctl check perf` (etcd's 60-second write check) against raftkv and against etcd at
/// the same time: both run it to the end, print the same three checks, and leave no key
/// behind; raftkv's throughput is within [`CHECK_PERF_SHARE_OF_ETCD`] of etcd's. The slowest-request and stddev
/// checks measure the machine as much as the store (CI's is shared: etcd fails them too
/// when it is busy), so they are printed beside etcd's, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs etcd 3.4 (Debian etcd-server/etcd-client; CI installs it)"]
async fn check_perf_through_etcdctl_as_against_etcd() -> TestResult {
    let (_cluster, _etcd, ours, theirs) = both().await?;
    let run = |eps: String| tokio::task::spawn_blocking(move || etcdctl_run(&eps, &["check", "perf", "--load=s"], ""));
    let (o, t) = (run(ours.clone()), run(theirs.clone()));
    let (o, t) = (o.await??, t.await??);
    let (ours_checks, etcd_checks) = (check_lines(&o), check_lines(&t));
    eprintln!("check perf against raftkv: {ours_checks:?}\nagainst etcd: {etcd_checks:?}");
    let kinds = |lines: &[String]| lines.iter().map(|l| check_kind(l)).collect::<Vec<_>>();
    assert_eq!(kinds(&ours_checks), ["Throughput", "Slowest request", "Stddev"], "{o:?}");
    assert_eq!(kinds(&ours_checks), kinds(&etcd_checks), "{o:?}\n{t:?}");
    // "PASS: Throughput is 148 writes/s" (or "FAIL: Throughput too low: 98 writes/s").
    let figure = |lines: &[String]| {
        lines[0]
            .split_whitespace()
            .find_map(|w| w.parse::<f64>().ok())
            .ok_or_else(|| format!("no figure in {:?}", lines[0]))
    };
    let (ours_rate, etcd_rate) = (figure(&ours_checks)?, figure(&etcd_checks)?);
    assert!(ours_rate >= CHECK_PERF_SHARE_OF_ETCD * etcd_rate, "raftkv {ours_rate}/s, etcd {etcd_rate}/s");
    // It deletes its keys (a DeleteRange of its prefix) when it ends.
    for eps in [&ours, &theirs] {
        let left = etcdctl(eps, &["get", "/etcdctl-check-perf/", "--prefix", "--keys-only"])?;
        assert_eq!(left.trim(), "", "keys left behind on {eps}");
    }
    Ok(())
}
