//! The hashicorp/raft admin adapters on real clusters, called through clients generated
//! from the Go tools' own protos (`proto/compat/raftadmin.proto` is Jille/raftadmin's,
//! `proto/compat/raftmanager.proto` is xkeyideal/raft-manager's, field for field): the Go
//! CLIs cannot be built here, so each test makes the calls they make (the RPC, then `Await`,
//! then `Forget`).

#![allow(clippy::print_stderr)] // tests report what they did on stderr

use std::time::Duration;

use base64::Engine as _;
use proto::compat::raftadmin as ra;
use proto::compat::raftadmin::raft_admin_client::RaftAdminClient;
use proto::compat::raftmanager as rm;
use proto::compat::raftmanager::raft_manager_client::RaftManagerClient;
use tests::{BoxError, FAST_TIMING, NodeProc, TestResult, node, wait_for};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// How long one call in these tests may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn channel(addr: &str) -> Result<Channel, BoxError> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?.connect_timeout(Duration::from_secs(2)).connect_lazy())
}

fn admin(node: &NodeProc) -> Result<RaftAdminClient<Channel>, BoxError> {
    Ok(RaftAdminClient::new(channel(&node.grpc_addr)?))
}

fn manager(node: &NodeProc) -> Result<RaftManagerClient<Channel>, BoxError> {
    Ok(RaftManagerClient::new(channel(&node.grpc_addr)?))
}

fn req<T>(message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.set_timeout(CALL_TIMEOUT);
    r
}

/// What the raftadmin CLI does after an RPC that returns a Future: Await, then Forget.
async fn await_admin(c: &mut RaftAdminClient<Channel>, future: ra::Future) -> Result<u64, Status> {
    let outcome = c.r#await(req(future.clone())).await.map(|r| r.into_inner());
    c.forget(req(future)).await?;
    let outcome = outcome?;
    assert!(outcome.error.is_empty(), "a failure travels as a status, not in `error`: {outcome:?}");
    Ok(outcome.index)
}

async fn await_manager(c: &mut RaftManagerClient<Channel>, future: rm::Future) -> Result<u64, Status> {
    let outcome = c.r#await(req(future.clone())).await.map(|r| r.into_inner());
    c.forget(req(future)).await?;
    let outcome = outcome?;
    assert!(outcome.error.is_empty(), "{outcome:?}");
    Ok(outcome.index)
}

fn expect_code<T: std::fmt::Debug>(r: Result<T, Status>, code: Code, text: &str) -> Result<Status, BoxError> {
    match r {
        Ok(v) => Err(format!("expected {code:?} ({text}), got {v:?}").into()),
        Err(s) if s.code() == code && s.message().contains(text) => Ok(s),
        Err(s) => Err(format!("expected {code:?} containing {text:?}, got {:?}: {}", s.code(), s.message()).into()),
    }
}

async fn configuration(c: &mut RaftAdminClient<Channel>) -> Result<Vec<(String, i32, String)>, BoxError> {
    let servers = c.get_configuration(req(ra::GetConfigurationRequest {})).await?.into_inner().servers;
    Ok(servers.into_iter().map(|s| (s.id, s.suffrage, s.address)).collect())
}

async fn stat(c: &mut RaftAdminClient<Channel>, key: &str) -> Result<String, BoxError> {
    let stats = c.stats(req(ra::StatsRequest {})).await?.into_inner().stats;
    stats.get(key).cloned().ok_or_else(|| format!("Stats lacks {key}: {stats:?}").into())
}

async fn latest_configuration_index(c: &mut RaftAdminClient<Channel>) -> Result<u64, BoxError> {
    Ok(stat(c, "latest_configuration_index").await?.parse()?)
}

/// The seed xkeyideal/raft-example's log command for `Add(key, val)`.
fn seed_insert(key: &str, val: &str) -> Vec<u8> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let payload = format!(r#"{{"key":"{}","val":"{}"}}"#, b64(key), b64(val));
    format!(r#"{{"type":1,"payload":"{}"}}"#, b64(&payload)).into_bytes()
}

/// Waits until the node behind `c` says it is the leader.
async fn wait_leading(c: &RaftAdminClient<Channel>, what: &str, timeout: Duration) -> TestResult {
    wait_for(what, timeout, || {
        let mut c = c.clone();
        async move {
            c.state(req(ra::StateRequest {}))
                .await
                .is_ok_and(|s| s.get_ref().state == ra::state_response::State::Leader as i32)
        }
    })
    .await
}

const VOTER: i32 = ra::get_configuration_response::server::Suffrage::Voter as i32;
const NONVOTER: i32 = ra::get_configuration_response::server::Suffrage::Nonvoter as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raftadmin_manages_a_cluster_the_way_its_cli_does() -> TestResult {
    let dir = tempfile::tempdir()?;
    let n1 = node("n1", dir.path()).bootstrap(true).args(FAST_TIMING).start()?;
    let n2 = node("n2", dir.path()).args(FAST_TIMING).start()?;
    let n3 = node("n3", dir.path()).args(FAST_TIMING).start()?;
    let mut a1 = admin(&n1)?;
    wait_leading(&a1, "n1 to lead", Duration::from_secs(30)).await?;

    // The seed README's first step: `raftadmin localhost:50051 add_voter nodeB localhost:50052 0`,
    // with the new node's Raft address.
    let f = a1
        .add_voter(req(ra::AddVoterRequest { id: "n2".into(), address: n2.raft_addr.clone(), previous_index: 0 }))
        .await?;
    let token = f.get_ref().clone();
    let index = await_admin(&mut a1, f.into_inner()).await?;
    assert!(index > 0, "AddVoter reports the index of the membership change");
    // Forgotten: the token is gone.
    expect_code(a1.r#await(req(token)).await, Code::NotFound, "forgotten")?;
    assert_eq!(
        configuration(&mut a1).await?,
        vec![("n1".into(), VOTER, n1.raft_addr.clone()), ("n2".into(), VOTER, n2.raft_addr.clone())]
    );

    // A previous index that is not the latest configuration's: the operation fails, Await
    // says which index is expected, and nothing changed.
    let latest = latest_configuration_index(&mut a1).await?;
    assert_eq!(latest, index);
    let stale = latest + 7;
    let f = a1
        .add_voter(req(ra::AddVoterRequest { id: "n3".into(), address: n3.raft_addr.clone(), previous_index: stale }))
        .await?;
    let s =
        expect_code(await_admin(&mut a1, f.into_inner()).await, Code::FailedPrecondition, &format!("index {stale}"))?;
    assert!(s.message().contains(&format!("retry with index {latest}")), "{}", s.message());
    assert_eq!(configuration(&mut a1).await?.len(), 2, "a refused AddVoter changed the configuration");

    // The right previous index, sent to a follower: forwarded to the leader.
    let mut a2 = admin(&n2)?;
    let f = a2
        .add_voter(req(ra::AddVoterRequest { id: "n3".into(), address: n3.raft_addr.clone(), previous_index: latest }))
        .await?;
    let index = await_admin(&mut a2, f.into_inner()).await?;
    assert!(index > latest);
    let config = configuration(&mut a1).await?;
    assert_eq!(config.iter().filter(|s| s.1 == VOTER).count(), 3, "{config:?}");

    // An address whose node has another id, and an address nobody answers at: refused.
    let f = a1
        .add_voter(req(ra::AddVoterRequest { id: "n9".into(), address: n3.raft_addr.clone(), previous_index: 0 }))
        .await?;
    expect_code(await_admin(&mut a1, f.into_inner()).await, Code::FailedPrecondition, "is \"n3\", not \"n9\"")?;
    let f = a1
        .add_nonvoter(req(ra::AddNonvoterRequest { id: "n4".into(), address: "127.0.0.1:1".into(), previous_index: 0 }))
        .await?;
    expect_code(await_admin(&mut a1, f.into_inner()).await, Code::FailedPrecondition, "cannot reach node n4")?;
    // Bad input: refused at once, no token.
    expect_code(
        a1.add_voter(req(ra::AddVoterRequest { id: String::new(), address: n3.raft_addr.clone(), previous_index: 0 }))
            .await,
        Code::InvalidArgument,
        "id",
    )?;
    expect_code(
        a1.add_voter(req(ra::AddVoterRequest { id: "n5".into(), address: "nowhere".into(), previous_index: 0 })).await,
        Code::InvalidArgument,
        "HOST:PORT",
    )?;
    expect_code(a1.r#await(req(ra::Future { operation_token: "feed".into() })).await, Code::NotFound, "unknown")?;
    assert_eq!(configuration(&mut a1).await?.len(), 3);

    // Leader and State agree; the leader's address is its Raft address.
    let leader_addr = a1.leader(req(ra::LeaderRequest {})).await?.into_inner().address;
    assert_eq!(leader_addr, n1.raft_addr);
    let mut a3 = admin(&n3)?;
    for (c, want) in [(&mut a2, ra::state_response::State::Follower), (&mut a3, ra::state_response::State::Follower)] {
        wait_for("a follower to know the leader", Duration::from_secs(10), || {
            let mut c = c.clone();
            let n1_raft = n1.raft_addr.clone();
            async move { c.leader(req(ra::LeaderRequest {})).await.is_ok_and(|l| l.get_ref().address == n1_raft) }
        })
        .await?;
        assert_eq!(c.state(req(ra::StateRequest {})).await?.get_ref().state, want as i32);
        assert!(c.last_contact(req(ra::LastContactRequest {})).await?.get_ref().unix_nano > 0);
    }

    // ApplyLog with the seed's log command writes through Raft; bad data is refused at once.
    let f = a3
        .apply_log(req(ra::ApplyLogRequest {
            data: seed_insert("applied", "by raftadmin").into(),
            extensions: Default::default(),
        }))
        .await?;
    let write_index = await_admin(&mut a3, f.into_inner()).await?;
    let client = client::Client::new(vec![n1.grpc_addr.clone()], tests::test_options())?;
    let got = client.get("applied").await?.kv.ok_or("ApplyLog's key is missing")?;
    assert_eq!(got.value, b"by raftadmin".to_vec());
    assert_eq!(got.modify_index, write_index);
    expect_code(
        a3.apply_log(req(ra::ApplyLogRequest { data: b"set x 1".to_vec().into(), extensions: Default::default() }))
            .await,
        Code::InvalidArgument,
        "not the seed's log command",
    )?;
    expect_code(
        a3.apply_log(req(ra::ApplyLogRequest { data: seed_insert("x", "y").into(), extensions: b"e".to_vec().into() }))
            .await,
        Code::InvalidArgument,
        "extensions",
    )?;

    // Barrier from a follower, VerifyLeader on the leader and (failing) on a follower.
    let f = a3.barrier(req(ra::BarrierRequest {})).await?;
    assert!(await_admin(&mut a3, f.into_inner()).await? >= write_index);
    let f = a1.verify_leader(req(ra::VerifyLeaderRequest {})).await?;
    assert!(await_admin(&mut a1, f.into_inner()).await? >= write_index);
    let f = a2.verify_leader(req(ra::VerifyLeaderRequest {})).await?;
    expect_code(await_admin(&mut a2, f.into_inner()).await, Code::Unavailable, "not the leader")?;
    let f = a2.snapshot(req(ra::SnapshotRequest {})).await?;
    assert!(await_admin(&mut a2, f.into_inner()).await? >= write_index);

    // Demote, then remove with a stale and then a good previous index.
    let f = a1.demote_voter(req(ra::DemoteVoterRequest { id: "n3".into(), previous_index: 0 })).await?;
    await_admin(&mut a1, f.into_inner()).await?;
    let config = configuration(&mut a1).await?;
    assert!(config.contains(&("n3".into(), NONVOTER, n3.raft_addr.clone())), "{config:?}");
    let latest = latest_configuration_index(&mut a1).await?;
    let f = a1.remove_server(req(ra::RemoveServerRequest { id: "n3".into(), previous_index: latest - 1 })).await?;
    expect_code(
        await_admin(&mut a1, f.into_inner()).await,
        Code::FailedPrecondition,
        &format!("retry with index {latest}"),
    )?;
    let f = a1.remove_server(req(ra::RemoveServerRequest { id: "n3".into(), previous_index: latest })).await?;
    await_admin(&mut a1, f.into_inner()).await?;
    assert_eq!(configuration(&mut a1).await?.len(), 2);

    // Leadership transfer: to a named server (its address must match), then to any.
    let f = a2
        .leadership_transfer_to_server(req(ra::LeadershipTransferToServerRequest {
            id: "n2".into(),
            address: "127.0.0.1:1".into(),
        }))
        .await?;
    expect_code(await_admin(&mut a2, f.into_inner()).await, Code::FailedPrecondition, "not 127.0.0.1:1")?;
    let f = a2
        .leadership_transfer_to_server(req(ra::LeadershipTransferToServerRequest {
            id: "n2".into(),
            address: n2.raft_addr.clone(),
        }))
        .await?;
    await_admin(&mut a2, f.into_inner()).await?;
    wait_leading(&a2, "n2 to lead", Duration::from_secs(10)).await?;
    let f = a1.leadership_transfer(req(ra::LeadershipTransferRequest {})).await?;
    await_admin(&mut a1, f.into_inner()).await?;
    wait_leading(&a1, "n1 to lead again", Duration::from_secs(10)).await?;

    // Stats carries hashicorp's keys.
    for key in [
        "state",
        "term",
        "last_log_index",
        "commit_index",
        "applied_index",
        "last_snapshot_index",
        "num_peers",
        "latest_configuration",
    ] {
        stat(&mut a1, key).await?;
    }
    assert_eq!(stat(&mut a1, "num_peers").await?, "1");
    assert!(a1.applied_index(req(ra::AppliedIndexRequest {})).await?.get_ref().index >= write_index);
    assert!(a1.last_index(req(ra::LastIndexRequest {})).await?.get_ref().index >= write_index);

    // n3 was removed but still runs: Shutdown stops it even when its token is never
    // forgotten (after SHUTDOWN_UNFORGOTTEN, 10 s).
    let mut n3 = n3;
    let f = a3.shutdown(req(ra::ShutdownRequest {})).await?;
    assert_eq!(a3.r#await(req(f.into_inner())).await?.into_inner().index, 0);
    let exited = n3.wait_exit(Duration::from_secs(30));
    assert_eq!(exited, Some(true), "n3 did not exit after an unforgotten Shutdown; log:\n{}", n3.log_tail());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raftmanager_runs_the_seed_readme_flow_and_shutdown() -> TestResult {
    // raft-example's README: three nodes, nodeA bootstrapped, then
    // `manager localhost:40051 applied_index` and `manager localhost:40051 add_voter nodeB localhost:50052 <index>`.
    let dir = tempfile::tempdir()?;
    let a = node("nodeA", dir.path()).bootstrap(true).args(FAST_TIMING).start()?;
    let mut b = node("nodeB", dir.path()).args(FAST_TIMING).start()?;
    let c = node("nodeC", dir.path()).args(FAST_TIMING).start()?;
    let mut m = manager(&a)?;
    wait_for("nodeA to lead", Duration::from_secs(30), || {
        let mut m = m.clone();
        async move { m.state(req(rm::StateRequest {})).await.is_ok_and(|s| s.get_ref().state == "Leader") }
    })
    .await?;

    let applied = m.applied_index(req(rm::AppliedIndexRequest {})).await?.into_inner().index;
    let config = m.get_configuration(req(rm::GetConfigurationRequest {})).await?.into_inner();
    eprintln!("applied_index {applied}, configuration index {}", config.index);
    assert_eq!(config.servers.len(), 1);
    let s = &config.servers[0];
    assert_eq!(
        (s.suffrage.as_str(), s.id.as_str(), s.address.as_str(), s.leader),
        ("Voter", "nodeA", a.raft_addr.as_str(), true)
    );

    // The applied index is not a configuration index: refused, naming the one expected.
    if applied != config.index {
        let f = m
            .add_voter(req(rm::AddVoterRequest {
                id: "nodeB".into(),
                address: b.raft_addr.clone(),
                previous_index: applied,
            }))
            .await?;
        expect_code(
            await_manager(&mut m, f.into_inner()).await,
            Code::FailedPrecondition,
            &format!("retry with index {}", config.index),
        )?;
    }
    // The configuration's index (or 0) is accepted.
    let f = m
        .add_voter(req(rm::AddVoterRequest {
            id: "nodeB".into(),
            address: b.raft_addr.clone(),
            previous_index: config.index,
        }))
        .await?;
    let index = await_manager(&mut m, f.into_inner()).await?;
    let config = m.get_configuration(req(rm::GetConfigurationRequest {})).await?.into_inner();
    assert_eq!(config.index, index);
    let f = m
        .add_voter(req(rm::AddVoterRequest {
            id: "nodeC".into(),
            address: c.raft_addr.clone(),
            previous_index: config.index,
        }))
        .await?;
    await_manager(&mut m, f.into_inner()).await?;
    let config = m.get_configuration(req(rm::GetConfigurationRequest {})).await?.into_inner();
    let ids: Vec<(&str, &str, bool)> =
        config.servers.iter().map(|s| (s.id.as_str(), s.suffrage.as_str(), s.leader)).collect();
    assert_eq!(ids, vec![("nodeA", "Voter", true), ("nodeB", "Voter", false), ("nodeC", "Voter", false)]);

    // Leader carries the id; a follower's LastContact is recent and printable.
    let mut mb = manager(&b)?;
    wait_for("nodeB to know the leader", Duration::from_secs(10), || {
        let mut mb = mb.clone();
        async move { mb.leader(req(rm::LeaderRequest {})).await.is_ok_and(|l| l.get_ref().server_id == "nodeA") }
    })
    .await?;
    let leader = mb.leader(req(rm::LeaderRequest {})).await?.into_inner();
    assert_eq!(leader.address, a.raft_addr);
    assert_eq!(mb.state(req(rm::StateRequest {})).await?.into_inner().state, "Follower");
    let contact = mb.last_contact(req(rm::LastContactRequest {})).await?.into_inner();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let age = now.saturating_sub(u128::try_from(contact.unix_nano)?);
    assert!(age < Duration::from_secs(5).as_nanos(), "last contact {age} ns ago");
    assert!(contact.time_format.ends_with(" +0000 UTC"), "{}", contact.time_format);

    // Shutdown through the API, then Await and Forget as the CLI does: the node stops
    // gracefully once the token is forgotten, and the process exits with success.
    let f = mb.shutdown(req(rm::ShutdownRequest {})).await?;
    assert_eq!(await_manager(&mut mb, f.into_inner()).await?, 0);
    let exited = b.wait_exit(Duration::from_secs(30));
    assert_eq!(exited, Some(true), "nodeB did not exit cleanly after Shutdown; log:\n{}", b.log_tail());
    assert!(b.log().contains("asked through the admin API"), "{}", b.log_tail());
    Ok(())
}
