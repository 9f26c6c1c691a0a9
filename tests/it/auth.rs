//! Authentication and permissions on a real three-node cluster, driven through `raftkvctl`
//! (and the client library where a token must move between nodes or a watch stay open):
//! enabling needs a root user; no credentials, a bad token and a wrong password are
//! `UNAUTHENTICATED`; a user outside its prefix and a non-root user on the admin API are
//! `PERMISSION_DENIED` saying what is missing, and change nothing; a token issued by one
//! node works on the others; a revoked permission takes effect on every node and closes an
//! open watch; and no password, token or hash appears in any log line or output. Bad-input
//! cases 19 and 20 of reliability-anchors §7.3 are here (21 is in `tls.rs`).

#![allow(clippy::print_stderr)] // tests report what they measured on stderr

use std::process::Output;
use std::time::Duration;

use client::kv::watch_response::Kind;
use client::{Client, ClientOptions, RaftState, WatchOptions};
use tests::{BoxError, Cluster, FAST_TIMING, TestResult, code, message, raftkvctl, test_options, wait_for};
use tonic::Code;

const ROOT_PASSWORD: &str = "r00t-Pw-7f3a";
const ALICE_PASSWORD: &str = "alice-Pw-91c2";

/// Every output of the test, scanned for secrets at the end.
#[derive(Default)]
struct Transcript(Vec<String>);

impl Transcript {
    /// Runs `raftkvctl ARGS` against `endpoints`; keeps its output.
    fn ctl(&mut self, endpoints: &[String], args: &[&str]) -> Result<Output, BoxError> {
        let out = raftkvctl(endpoints, args)?;
        self.0.push(String::from_utf8_lossy(&out.stdout).into_owned());
        self.0.push(String::from_utf8_lossy(&out.stderr).into_owned());
        Ok(out)
    }

    /// Runs it and requires success; returns stdout.
    fn ok(&mut self, endpoints: &[String], args: &[&str]) -> Result<String, BoxError> {
        let out = self.ctl(endpoints, args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "raftkvctl {args:?} failed: {stderr}");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs it with `-o json` and requires a refusal (exit 2) with the status code that
    /// gRPC describes as `words[0]`, and a message holding every other one of `words`.
    fn refused(&mut self, endpoints: &[String], args: &[&str], words: &[&str]) -> Result<String, BoxError> {
        let json_args: Vec<&str> = ["-o", "json"].iter().chain(args).copied().collect();
        let out = self.ctl(endpoints, &json_args)?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "raftkvctl {args:?} should be refused: {stderr}");
        let error: serde_json::Value = serde_json::from_str(stderr.trim())?;
        let (code, message) = (error["error"]["code"].as_str(), error["error"]["message"].as_str().unwrap_or(""));
        let expected = match words.first().copied() {
            Some("not in a state required") => "FAILED_PRECONDITION",
            Some("valid authentication credentials") => "UNAUTHENTICATED",
            Some("does not have permission") => "PERMISSION_DENIED",
            other => panic!("no code for {other:?}"),
        };
        assert_eq!(code, Some(expected), "raftkvctl {args:?}: {stderr}");
        for w in &words[1..] {
            assert!(message.contains(w), "raftkvctl {args:?}: the refusal should say {w:?}: {stderr}");
        }
        eprintln!("refused as expected: {}", stderr.trim());
        Ok(stderr)
    }
}

fn client_with_token(endpoint: &str, token: &str) -> Result<Client, BoxError> {
    Ok(Client::new([endpoint.to_string()], ClientOptions { token: Some(token.into()), ..test_options() })?)
}

/// A root token, issued by the node at `addr`.
async fn issuer_root_token(addr: &str) -> Result<String, BoxError> {
    Ok(Client::new([addr.to_string()], test_options())?.authenticate("root", ROOT_PASSWORD).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_roles_tokens_and_revocation_on_every_node() -> TestResult {
    // Debug logging on our crates, so the secret scan covers the most log lines.
    let log = "debug,openraft=warn,h2=info,hyper=info,tower=info,chitchat=info";
    let mut cluster = Cluster::start_logging(3, &FAST_TIMING, log).await?;
    let all = cluster.endpoints();
    let one = |i: usize| vec![all[i].clone()];
    let root = format!("root:{ROOT_PASSWORD}");
    let alice = format!("alice:{ALICE_PASSWORD}");
    let mut t = Transcript::default();

    // Enabling refuses until a root user exists; users and roles can be set up before.
    t.refused(&all, &["auth", "enable"], &["not in a state required", "user \"root\" does not exist"])?;
    t.ok(&all, &["user", "add", &root])?;
    t.ok(&all, &["user", "add", &alice])?;
    t.ok(&all, &["role", "add", "app"])?;
    t.ok(&all, &["role", "grant-permission", "app", "readwrite", "app/", "--prefix"])?;
    t.ok(&all, &["user", "grant-role", "alice", "app"])?;
    t.ok(&all, &["put", "other/k", "before"])?;
    assert_eq!(t.ok(&all, &["auth", "enable"])?.trim(), "Authentication Enabled");

    // Case 19: no credentials, a bad token, a wrong password.
    t.refused(&all, &["get", "app/x"], &["valid authentication credentials", "no credentials"])?;
    t.refused(
        &all,
        &["--token", "bm90LWEtdG9rZW4.AAAA", "put", "app/x", "1"],
        &["valid authentication credentials", "invalid auth token"],
    )?;
    t.refused(
        &all,
        &["--user", "alice:wrong", "get", "app/x"],
        &["valid authentication credentials", "unknown user or wrong password"],
    )?;
    t.refused(
        &all,
        &["--user", "nobody:pw", "get", "app/x"],
        &["valid authentication credentials", "unknown user or wrong password"],
    )?;

    // Inside its prefix alice reads and writes, on a follower too (forwarded with her token).
    for i in 0..3 {
        t.ok(&one(i), &["--user", &alice, "put", "app/x", &format!("v{i}")])?;
        let got = t.ok(&one(i), &["--user", &alice, "get", "app/x"])?;
        assert_eq!(got.lines().last(), Some(format!("v{i}").as_str()), "{got}");
    }
    // Case 20: outside it, refused with what is missing; nothing changes; still served.
    let before = t.ok(&all, &["--user", &root, "-o", "json", "get", "other/k"])?;
    for i in 0..3 {
        t.refused(
            &one(i),
            &["--user", &alice, "put", "other/k", "after"],
            &["does not have permission", "no write permission on key \"other/k\"", "readwrite on prefix \"app/\""],
        )?;
        t.refused(&one(i), &["--user", &alice, "get", "other/k"], &["does not have permission", "no read permission"])?;
        t.refused(
            &one(i),
            &["--user", &alice, "get", "--prefix", "app"],
            &["does not have permission", "prefix \"app\""],
        )?;
    }
    assert_eq!(
        t.ok(&all, &["--user", &root, "-o", "json", "get", "other/k"])?,
        before,
        "a refused write changed nothing"
    );
    t.ok(&all, &["--user", &alice, "get", "app/x"])?;

    // The admin API and the auth changes need the root role.
    t.refused(&all, &["--user", &alice, "status"], &["does not have permission", "root role", "alice"])?;
    t.refused(&all, &["--user", &alice, "user", "list"], &["does not have permission", "root role"])?;
    t.ok(&all, &["--user", &root, "status"])?;
    assert!(t.ok(&all, &["--user", &root, "user", "list"])?.contains("alice"));

    // A token issued by one node is accepted by every other.
    let issuer = Client::new([all[0].clone()], test_options())?;
    let token = issuer.authenticate("alice", ALICE_PASSWORD).await?;
    for addr in &all[1..] {
        let c = client_with_token(addr, &token)?;
        c.put("app/token", addr.as_str()).await?;
        assert!(c.get("app/token").await?.found, "{addr}");
    }

    // An open watch of alice's on a follower, then the permission is revoked.
    let root_token = issuer_root_token(&all[0]).await?;
    let mut leader = None;
    for (i, addr) in all.iter().enumerate() {
        if client_with_token(addr, &root_token)?.status().await?.state == RaftState::Leader as i32 {
            leader = Some(i);
        }
    }
    let leader = leader.ok_or("no leader")?;
    let follower = (leader + 1) % 3;
    let watcher = client_with_token(&all[follower], &token)?;
    let mut watch = watcher.watch("app/", WatchOptions { prefix: true, ..WatchOptions::default() });
    assert_eq!(watch.next().await?.kind, Kind::Created as i32);
    t.ok(&one(leader), &["--user", &alice, "put", "app/w", "1"])?;
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next()).await??;
    assert_eq!(event.kind, Kind::Events as i32);
    t.ok(&all, &["--user", &root, "role", "revoke-permission", "app", "app/", "--prefix"])?;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.next().await {
                Ok(m) if m.kind == Kind::Progress as i32 => {}
                other => return other,
            }
        }
    })
    .await?;
    assert_eq!(code(&closed), Some(Code::PermissionDenied), "{closed:?}");
    assert!(message(&closed).contains("no read permission on prefix \"app/\""), "{}", message(&closed));
    // Reads are checked after the read barrier: the revocation holds on every node at once.
    for addr in &all {
        let r = client_with_token(addr, &token)?.get("app/x").await;
        assert_eq!(code(&r), Some(Code::PermissionDenied), "{addr}: {r:?}");
        let r = client_with_token(addr, &token)?.put("app/x", "no").await;
        assert_eq!(code(&r), Some(Code::PermissionDenied), "{addr}: {r:?}");
    }

    // A new password ends the old tokens.
    t.ok(&all, &["--user", &root, "user", "passwd", "alice:alice-new-Pw-5e"])?;
    let old = client_with_token(&all[2], &token)?.get("app/x").await;
    assert_eq!(code(&old), Some(Code::Unauthenticated), "{old:?}");

    // Disabling lets anyone in again.
    t.ok(&all, &["--user", &root, "auth", "disable"])?;
    for addr in &all {
        let anyone = Client::new([addr.clone()], test_options())?;
        wait_for("the node to apply auth disable", Duration::from_secs(10), || async {
            anyone.put("app/open", "1").await.is_ok()
        })
        .await?;
    }

    // No secret in any log line or output of the test.
    cluster.stop_all();
    let mut texts = t.0;
    for node in &cluster.nodes {
        texts.push(node.log());
    }
    let lines: usize = texts.iter().map(|t| t.lines().count()).sum();
    for secret in [ROOT_PASSWORD, ALICE_PASSWORD, "alice-new-Pw-5e", token.as_str(), root_token.as_str(), "$argon2"] {
        for text in &texts {
            assert!(!text.contains(secret), "a secret ({} bytes) appears in the output or a log", secret.len());
        }
    }
    // The signature part of the token alone (a log could print that without the rest).
    let signature = token.rsplit('.').next().unwrap_or_default();
    assert!(signature.len() > 20 && texts.iter().all(|t| !t.contains(signature)));
    eprintln!("secret scan: {lines} lines of logs and output, none holds a password, token or hash");
    assert!(lines > 100, "the scan must cover the nodes' logs ({lines} lines)");
    Ok(())
}

/// Sets up `root` and `alice` (readwrite on `app/`) and enables authentication.
fn enable_with_alice(t: &mut Transcript, all: &[String]) -> Result<(), BoxError> {
    t.ok(all, &["user", "add", &format!("root:{ROOT_PASSWORD}")])?;
    t.ok(all, &["user", "add", &format!("alice:{ALICE_PASSWORD}")])?;
    t.ok(all, &["role", "add", "app"])?;
    t.ok(all, &["role", "grant-permission", "app", "readwrite", "app/", "--prefix"])?;
    t.ok(all, &["user", "grant-role", "alice", "app"])?;
    t.ok(all, &["auth", "enable"])?;
    Ok(())
}

/// The permission of a write is checked again when it is applied (as etcd does): while
/// alice writes as fast as she can from every node, her permission is revoked; no write of
/// hers is acknowledged at or after the revocation's index, none is stored there, and the
/// writes that were checked before it but reached the log after it are refused with
/// `PERMISSION_DENIED` saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_checked_before_a_revocation_does_not_apply_after_it() -> TestResult {
    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    let all = cluster.endpoints();
    let mut t = Transcript::default();
    enable_with_alice(&mut t, &all)?;
    let writers = 12;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let client = Client::new([all[w % 3].clone()], test_options())?;
        client.authenticate("alice", ALICE_PASSWORD).await?;
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0.. {
                match client.put(format!("app/{w}/{n}"), "v").await {
                    Ok(r) => acked.push(r.header.map_or(0, |h| h.index)),
                    Err(e) if e.status().map(tonic::Status::code) == Some(Code::PermissionDenied) => {
                        return Ok::<_, client::ClientError>((acked, e.message()));
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok((acked, String::new()))
        }));
    }
    let root = Client::new(all.clone(), test_options())?;
    root.authenticate("root", ROOT_PASSWORD).await?;
    wait_for("alice's writers to be under way", Duration::from_secs(20), || async {
        root.range(client::kv::RangeRequest {
            key: "app/".into(),
            prefix: true,
            count_only: true,
            ..Default::default()
        })
        .await
        .is_ok_and(|r| r.count >= 60)
    })
    .await?;
    let revoked = root.role_revoke_permission("app", b"app/", b"", true).await?.index;
    let mut at_apply = 0;
    let mut acked = 0;
    for task in tasks {
        let (indexes, refusal) = task.await??;
        acked += indexes.len();
        assert!(
            indexes.iter().all(|i| *i > 0 && *i < revoked),
            "an acknowledged write at or after {revoked}: {indexes:?}"
        );
        if refusal.contains("when the write was applied") {
            assert!(refusal.contains("user \"alice\" no longer has write permission on key \"app/"), "{refusal}");
            at_apply += 1;
        } else {
            assert!(refusal.contains("no write permission on key"), "{refusal}");
        }
    }
    // What is stored agrees on every node: nothing of alice's from the revocation on.
    let stored =
        root.range_all(client::kv::RangeRequest { key: "app/".into(), prefix: true, ..Default::default() }).await?;
    assert!(stored.iter().all(|kv| kv.modify_index < revoked), "a write stored at or after {revoked}");
    assert_eq!(stored.len(), acked, "every acknowledged write, and only those, is stored");
    eprintln!(
        "revoked at index {revoked}: {acked} writes acknowledged before it; {at_apply} of {writers} writers refused at apply, the others before proposing"
    );
    Ok(())
}

/// Tokens expire after `--auth-token-ttl`; a client that knows the password (the client
/// crate after `authenticate`, `raftkvctl --user`) authenticates again by itself, once,
/// and its calls (and watches) go on; one with only the token gets `UNAUTHENTICATED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_token_is_refused_and_a_client_with_the_password_authenticates_again() -> TestResult {
    let mut flags = FAST_TIMING.to_vec();
    flags.extend(["--auth-token-ttl", "1s"]);
    let cluster = Cluster::start(3, &flags).await?;
    let all = cluster.endpoints();
    let mut t = Transcript::default();
    enable_with_alice(&mut t, &all)?;
    let alice = Client::new(all.clone(), test_options())?;
    let token = alice.authenticate("alice", ALICE_PASSWORD).await?;
    alice.put("app/a", "1").await?;
    // Only the token: refused once it expires, saying so.
    let only_token = client_with_token(&all[1], &token)?;
    wait_for("the token to expire", Duration::from_secs(10), || async {
        let r = only_token.get("app/a").await;
        code(&r) == Some(Code::Unauthenticated) && message(&r).contains("it has expired")
    })
    .await?;
    // With the password: the same expired token is replaced, on every call kind.
    alice.put("app/a", "2").await?;
    assert_eq!(alice.get("app/a").await?.kv.map(|kv| kv.value.to_vec()), Some(b"2".to_vec()));
    let options = ClientOptions {
        token: Some(token.clone()),
        credentials: Some(client::Credentials { name: "alice".into(), password: ALICE_PASSWORD.into() }),
        ..test_options()
    };
    let watcher = Client::new([all[2].clone()], options)?;
    let mut watch = watcher.watch("app/a", WatchOptions::default());
    assert_eq!(watch.next().await?.kind, Kind::Created as i32, "the watch opened with a refreshed token");
    // raftkvctl --user: a run longer than several token lifetimes, writing all along.
    let started = std::time::Instant::now();
    let alice_arg = format!("alice:{ALICE_PASSWORD}");
    let args: [&str; 10] =
        ["--user", &alice_arg, "bench", "watch", "--total", "60", "--interval", "60ms", "--prefix", "app/b"];
    let out = tokio::task::spawn_blocking({
        let all = all.clone();
        let args: Vec<String> = args.iter().map(|s| (*s).to_string()).collect();
        move || raftkvctl(&all, &args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "raftkvctl bench with expiring tokens failed: {stderr}");
    assert!(started.elapsed() > Duration::from_secs(3), "the run must outlast a few tokens");
    eprintln!("raftkvctl wrote for {:?} with 1 s tokens", started.elapsed());
    // A wrong password is not retried forever: refused once, clearly.
    let wrong = ClientOptions {
        token: Some(token),
        credentials: Some(client::Credentials { name: "alice".into(), password: "wrong".into() }),
        ..test_options()
    };
    let r = Client::new([all[0].clone()], wrong)?.get("app/a").await;
    assert_eq!(code(&r), Some(Code::Unauthenticated), "{r:?}");
    assert!(message(&r).contains("unknown user or wrong password"), "{}", message(&r));
    Ok(())
}

/// `--join` on a cluster with authentication on: a node without credentials is refused
/// (`UNAUTHENTICATED`) and says which flags to give; one whose `--join-user` lacks the root
/// role (password from `RAFTKV_JOIN_PASSWORD`) is refused `PERMISSION_DENIED`; neither is
/// added. A node with `--join-user root` and a private `--join-password-file` joins as a
/// voter. No password reaches a log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joins_an_auth_cluster_with_join_credentials_and_is_refused_clearly_without() -> TestResult {
    use std::os::unix::fs::PermissionsExt;

    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    let all = cluster.endpoints();
    let mut t = Transcript::default();
    enable_with_alice(&mut t, &all)?;
    let root = Client::new(all.clone(), test_options())?;
    root.authenticate("root", ROOT_PASSWORD).await?;
    let mut join: Vec<String> = FAST_TIMING.iter().map(ToString::to_string).collect();
    join.extend(["--join".to_string(), all[1].clone()]);
    let dir = cluster.dir.path();

    let bare = tests::node("n4", dir).args(&join).start()?;
    let alice = tests::node("n5", dir)
        .args(&join)
        .args(["--join-user", "alice"])
        .env("RAFTKV_JOIN_PASSWORD", ALICE_PASSWORD)
        .start()?;
    let password_file = dir.join("root-password");
    std::fs::write(&password_file, format!("{ROOT_PASSWORD}\n"))?;
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600))?;
    let file_arg = password_file.display().to_string();
    let joiner =
        tests::node("n6", dir).args(&join).args(["--join-user", "root", "--join-password-file", &file_arg]).start()?;

    wait_for("n4 and n5 to log why they are refused", Duration::from_secs(30), || async {
        bare.log().contains("give --join-user") && alice.log().contains("check --join-user")
    })
    .await?;
    assert!(bare.log().contains("Unauthenticated") && bare.log().contains("no credentials"), "{}", bare.log());
    assert!(alice.log().contains("PermissionDenied") && alice.log().contains("root role"), "{}", alice.log());
    wait_for("n6 to join as a voter", Duration::from_secs(60), || async {
        root.status()
            .await
            .is_ok_and(|s| s.members.iter().any(|m| m.id == "n6" && m.suffrage == client::Suffrage::Voter as i32))
    })
    .await?;
    let members = root.status().await?.members;
    assert!(members.iter().all(|m| m.id != "n4" && m.id != "n5"), "a refused node was added: {members:?}");
    for n in [&bare, &alice, &joiner] {
        let log = n.log();
        assert!(!log.contains(ROOT_PASSWORD) && !log.contains(ALICE_PASSWORD), "a password in {}'s log", n.id);
    }
    // A password file others may read is refused at start, naming the chmod.
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o644))?;
    let refused = tests::refused_start(&[
        "--raft_id",
        "n7",
        "--join",
        &all[0],
        "--join-user",
        "root",
        "--join-password-file",
        &file_arg,
    ])?;
    assert!(refused.contains("chmod 600"), "{refused}");
    Ok(())
}
