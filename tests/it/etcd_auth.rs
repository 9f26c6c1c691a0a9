//! etcd's Auth service and etcd's clients under raftkv's authentication
//! (`crates/etcd-api/src/auth.rs`): Debian's `etcdctl` (API 3) against a three-node raftkv,
//! through a follower (so every auth change and write is forwarded to the leader with the
//! caller's token), and the same commands against a real etcd 3.4 started by the test, the
//! outputs compared; then Debian's `python3-etcd3` authenticated as a user.
//!
//! Ignored by default, as `etcd.rs`: a fresh machine has no etcd. CI runs them with
//! `--run-ignored only -E 'test(/^etcd/)'`.

#![allow(clippy::print_stderr)]

use std::path::Path;
use std::process::{Command, Stdio};

use tests::{BoxError, Cluster, FAST_TIMING, TestResult, raftkvctl};

use crate::etcd::{Ctl, error_line, etcdctl, etcdctl_run, on_path, started_etcd};

const ROOT: &str = "root:rootpw";
const ALICE: &str = "alice:alicepw";

/// `etcdctl [--user USER] ARGS` against raftkv and against etcd: both succeed and print the
/// same.
fn same(raftkv: &str, etcd: &str, user: Option<&str>, args: &[&str]) -> Result<String, BoxError> {
    let (ours, theirs) = both(raftkv, etcd, user, args, "")?;
    assert!(ours.ok && theirs.ok, "etcdctl {user:?} {args:?} should succeed on both: raftkv {ours:?}, etcd {theirs:?}");
    assert_eq!(ours.stdout, theirs.stdout, "etcdctl {user:?} {args:?}: raftkv (left) and etcd (right) differ");
    Ok(ours.stdout)
}

/// The same failing command on both: the same `Error:` line.
fn same_error(raftkv: &str, etcd: &str, user: Option<&str>, args: &[&str]) -> Result<String, BoxError> {
    let (ours, theirs) = both(raftkv, etcd, user, args, "")?;
    assert!(!ours.ok && !theirs.ok, "etcdctl {user:?} {args:?} should fail on both: raftkv {ours:?}, etcd {theirs:?}");
    assert_eq!(error_line(&ours), error_line(&theirs), "etcdctl {user:?} {args:?}: raftkv (left) and etcd (right)");
    Ok(error_line(&ours))
}

fn both(raftkv: &str, etcd: &str, user: Option<&str>, args: &[&str], stdin: &str) -> Result<(Ctl, Ctl), BoxError> {
    let mut all: Vec<&str> = user.map(|u| vec!["--user", u]).unwrap_or_default();
    all.extend_from_slice(args);
    Ok((etcdctl_run(raftkv, &all, stdin)?, etcdctl_run(etcd, &all, stdin)?))
}

/// Python's etcd3 client as user alice: a put and a get inside her prefix; a put outside it
/// refused with etcd's error; a wrong password refused. python3-etcd3 0.12 sends the token
/// both in its `token` metadata and as gRPC call credentials, which grpcio refuses to send
/// over a plaintext channel ("Established channel does not have a sufficient security
/// level", against etcd as well): the script drops the call credentials, and the library
/// sends the token in the metadata, as etcd's Go client does.
const PYTHON_ETCD3_AUTH: &str = r#"
import os, sys, threading
threading.Timer(30, lambda: (print("timed out", flush=True), os._exit(2))).start()
import etcd3
host, port = sys.argv[1].rsplit(":", 1)
c = etcd3.client(host=host, port=int(port), timeout=10, user="alice", password="alicepw")
assert c.metadata[0][0] == "token", c.metadata
c.call_credentials = None
c.put("a/py", "1")
value, meta = c.get("a/py")
assert value == b"1" and meta.version == 1, (value, meta.version)
try:
    c.put("b/py", "1")
    raise SystemExit("a put outside alice's prefix was accepted")
except Exception as e:
    assert "etcdserver: permission denied" in str(e), repr(e)
try:
    etcd3.client(host=host, port=int(port), timeout=10, user="alice", password="nope")
    raise SystemExit("a wrong password was accepted")
except Exception as e:
    assert "authentication failed" in str(e), repr(e)
print("ok", flush=True)
os._exit(0)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs etcd 3.4 (Debian etcd-server/etcd-client; CI installs it)"]
async fn etcdctl_users_roles_and_permissions_work_against_raftkv_as_against_etcd() -> TestResult {
    on_path("etcdctl")?;
    let etcd = started_etcd().await?;
    let cluster = Cluster::start(3, &FAST_TIMING).await?;
    let leader = cluster.leader().await.ok_or("no leader")?;
    let ours = cluster.nodes[(leader + 1) % 3].grpc_addr.clone();
    let theirs = etcd.endpoints();

    // Users and roles, then auth on (etcdctl adds the root role on etcd; raftkv's is built in).
    assert_eq!(same(&ours, &theirs, None, &["user", "add", ROOT])?, "User root created\n");
    assert_eq!(same(&ours, &theirs, None, &["auth", "enable"])?, "Authentication Enabled\n");
    let empty = same_error(&ours, &theirs, None, &["get", "a/1"])?;
    assert_eq!(empty, "Error: etcdserver: user name is empty");
    same_error(&ours, &theirs, None, &["user", "list"])?;
    assert_eq!(same(&ours, &theirs, Some(ROOT), &["role", "add", "r"])?, "Role r created\n");
    same_error(&ours, &theirs, Some(ROOT), &["role", "add", "r"])?;
    let granted = same(&ours, &theirs, Some(ROOT), &["role", "grant-permission", "r", "readwrite", "a/", "--prefix"])?;
    assert_eq!(granted, "Role r updated\n");
    same(&ours, &theirs, Some(ROOT), &["role", "grant-permission", "r", "read", "ro"])?;
    assert_eq!(same(&ours, &theirs, Some(ROOT), &["user", "add", ALICE])?, "User alice created\n");
    same_error(&ours, &theirs, Some(ROOT), &["user", "add", ALICE])?;
    let grant = same(&ours, &theirs, Some(ROOT), &["user", "grant-role", "alice", "r"])?;
    assert_eq!(grant, "Role r is granted to user alice\n");
    same_error(&ours, &theirs, Some(ROOT), &["user", "grant-role", "nobody", "r"])?;
    same_error(&ours, &theirs, Some(ROOT), &["user", "grant-role", "alice", "nope"])?;

    // alice within her range, and outside it.
    assert_eq!(same(&ours, &theirs, Some(ALICE), &["put", "a/1", "v"])?, "OK\n");
    assert_eq!(same(&ours, &theirs, Some(ALICE), &["get", "a/1"])?, "a/1\nv\n");
    same(&ours, &theirs, Some(ALICE), &["get", "a/", "--prefix", "--keys-only"])?;
    same(&ours, &theirs, Some(ALICE), &["del", "a/1", "--prev-kv"])?;
    same(&ours, &theirs, Some(ALICE), &["get", "ro"])?;
    let denied = "Error: etcdserver: permission denied";
    assert_eq!(same_error(&ours, &theirs, Some(ALICE), &["put", "b", "v"])?, denied);
    assert_eq!(same_error(&ours, &theirs, Some(ALICE), &["get", "b"])?, denied);
    assert_eq!(same_error(&ours, &theirs, Some(ALICE), &["put", "ro", "v"])?, denied);
    assert_eq!(same_error(&ours, &theirs, Some(ALICE), &["get", "a", "--prefix"])?, denied);
    // A lease as alice: granted with her token; a put with it inside her prefix applies (it
    // is checked again as hers when applied), outside it is refused. Lease ids differ.
    for eps in [&ours, &theirs] {
        let granted = etcdctl(eps, &["--user", ALICE, "lease", "grant", "60"])?;
        assert!(granted.ends_with(" granted with TTL(60s)\n"), "{granted}");
        let lease = format!("--lease={}", granted.split_whitespace().nth(1).ok_or("no lease id")?);
        assert_eq!(etcdctl(eps, &["--user", ALICE, "put", "a/leased", "v", &lease])?, "OK\n");
        assert_eq!(error_line(&etcdctl_run(eps, &["--user", ALICE, "put", "b", "v", &lease], "")?), denied);
    }
    assert_eq!(same(&ours, &theirs, Some(ALICE), &["get", "a/leased", "--print-value-only"])?, "v\n");
    // A txn: read on its compares, write on its puts (etcd's checkTxnAuth).
    let txn = |stdin: &str| -> Result<(Ctl, Ctl), BoxError> { both(&ours, &theirs, Some(ALICE), &["txn"], stdin) };
    let (o, t) = txn("version(\"a/1\") = \"0\"\n\nput a/2 x\n\n\n")?;
    assert!(o.ok && t.ok && o.stdout == t.stdout, "raftkv {o:?} etcd {t:?}");
    let (o, t) = txn("version(\"a/1\") = \"0\"\n\nput b x\n\n\n")?;
    assert!(!o.ok && !t.ok && error_line(&o) == error_line(&t) && error_line(&o) == denied, "raftkv {o:?} etcd {t:?}");
    // A watch outside her range, or without a user, is cancelled at once with etcd's reason.
    let watch_refused = |user: Option<&str>, reason: &str| -> TestResult {
        let (o, t) = both(&ours, &theirs, user, &["watch", "b"], "")?;
        let canceled = |c: &Ctl| c.stderr.lines().find(|l| l.starts_with("watch was canceled")).map(str::to_string);
        assert!(!o.ok && !t.ok && o.stdout == t.stdout, "raftkv {o:?} etcd {t:?}");
        assert_eq!(canceled(&o), canceled(&t), "raftkv {o:?} etcd {t:?}");
        assert_eq!(canceled(&o), Some(format!("watch was canceled ({reason})")));
        assert_eq!(error_line(&o), error_line(&t), "raftkv {o:?} etcd {t:?}");
        Ok(())
    };
    watch_refused(Some(ALICE), "rpc error: code = PermissionDenied desc = etcdserver: permission denied")?;
    watch_refused(None, "rpc error: code = InvalidArgument desc = etcdserver: user name is empty")?;
    // A wrong password, administration without root.
    let failed = same_error(&ours, &theirs, Some("alice:wrong"), &["get", "a/1"])?;
    assert_eq!(failed, "Error: etcdserver: authentication failed, invalid user ID or password");
    assert_eq!(same_error(&ours, &theirs, Some(ALICE), &["user", "list"])?, denied);
    assert_eq!(same_error(&ours, &theirs, Some(ALICE), &["role", "add", "mine"])?, denied);
    assert_eq!(same_error(&ours, &theirs, Some(ALICE), &["user", "grant-role", "alice", "root"])?, denied);
    same_error(&ours, &theirs, Some(ALICE), &["member", "add", "x", "--peer-urls=http://127.0.0.1:1"])?;
    // What etcd lets a user read of itself.
    assert_eq!(same(&ours, &theirs, Some(ALICE), &["user", "get", "alice"])?, "User: alice\nRoles: r\n");
    same(&ours, &theirs, Some(ALICE), &["role", "get", "r"])?;
    same_error(&ours, &theirs, Some(ALICE), &["user", "get", "root"])?;
    // What etcd lets anyone call: member list, endpoint status (ids and versions differ).
    for user in [None, Some(ALICE)] {
        let (o, t) = both(&ours, &theirs, user, &["member", "list"], "")?;
        assert!(o.ok && t.ok, "member list as {user:?}: raftkv {o:?} etcd {t:?}");
        let (o, t) = both(&ours, &theirs, user, &["endpoint", "status"], "")?;
        assert!(o.ok && t.ok, "endpoint status as {user:?}: raftkv {o:?} etcd {t:?}");
    }

    // An etcd user is a raftkv user: raftkv's own API and raftkvctl take the same password,
    // and check the same permissions.
    let native = |args: &[&str]| raftkvctl(std::slice::from_ref(&ours), args);
    let got = native(&["--user", ALICE, "get", "a/2"])?;
    assert!(got.status.success(), "raftkvctl get as alice: {}", String::from_utf8_lossy(&got.stderr));
    for args in [&["--user", ALICE, "put", "b", "v"][..], &["--user", ALICE, "user", "list"]] {
        let out = native(args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("permission denied"), "raftkvctl {args:?}: {stderr}");
    }

    // What root sees.
    assert_eq!(same(&ours, &theirs, Some(ROOT), &["user", "list"])?, "alice\nroot\n");
    assert_eq!(same(&ours, &theirs, Some(ROOT), &["role", "list"])?, "r\nroot\n");
    let role = same(&ours, &theirs, Some(ROOT), &["role", "get", "r"])?;
    assert_eq!(role, "Role r\nKV Read:\n\t[a/, a0) (prefix a/)\n\tro\nKV Write:\n\t[a/, a0) (prefix a/)\n");
    same(&ours, &theirs, Some(ROOT), &["user", "get", "root"])?;
    same(&ours, &theirs, Some(ROOT), &["get", "a/", "--prefix"])?;
    same_error(&ours, &theirs, Some(ROOT), &["user", "delete", "root"])?;
    same_error(&ours, &theirs, Some(ROOT), &["user", "revoke-role", "root", "root"])?;
    same_error(&ours, &theirs, Some(ROOT), &["user", "revoke-role", "alice", "nope"])?;
    same_error(&ours, &theirs, Some(ROOT), &["role", "revoke-permission", "r", "zz"])?;

    // Python's etcd3 client, authenticated as alice, while auth is on.
    let python = Path::new("/usr/bin/python3");
    let probe = Command::new(python).args(["-c", "import etcd3"]).output()?;
    if !probe.status.success() {
        return Err("python3-etcd3 is missing: apt-get install python3-etcd3 (.ci/run installs it)".into());
    }
    for endpoint in [&ours, &etcd.members[0].endpoint] {
        let out = Command::new(python).args(["-c", PYTHON_ETCD3_AUTH, endpoint]).stdin(Stdio::null()).output()?;
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && stdout.trim() == "ok", "python3-etcd3 at {endpoint}: {stdout}\n{stderr}");
    }

    // A password change: the old one fails, the new one works; a revocation takes effect.
    let (o, t) = both(&ours, &theirs, Some(ROOT), &["user", "passwd", "alice", "--interactive=false"], "newpw\n")?;
    assert!(o.ok && t.ok && o.stdout == t.stdout && o.stdout == "Password updated\n", "raftkv {o:?} etcd {t:?}");
    assert_eq!(same_error(&ours, &theirs, Some(ALICE), &["get", "a/2"])?, failed);
    let alice = Some("alice:newpw");
    assert_eq!(same(&ours, &theirs, alice, &["get", "a/2", "--print-value-only"])?, "x\n");
    let revoked = same(&ours, &theirs, Some(ROOT), &["role", "revoke-permission", "r", "a/", "--prefix"])?;
    assert_eq!(revoked, "Permission of range [a/, a0) is revoked from role r\n");
    assert_eq!(same_error(&ours, &theirs, alice, &["get", "a/2"])?, denied);
    assert_eq!(
        same(&ours, &theirs, Some(ROOT), &["user", "revoke-role", "alice", "r"])?,
        "Role r is revoked from user alice\n"
    );
    assert_eq!(same(&ours, &theirs, Some(ROOT), &["user", "delete", "alice"])?, "User alice deleted\n");
    assert_eq!(same(&ours, &theirs, Some(ROOT), &["role", "delete", "r"])?, "Role r deleted\n");
    assert_eq!(same(&ours, &theirs, Some(ROOT), &["auth", "disable"])?, "Authentication Disabled\n");
    // Off again: anyone, and Authenticate says so (etcdctl goes on without a token).
    same(&ours, &theirs, None, &["get", "a/", "--prefix", "--keys-only"])?;
    same(&ours, &theirs, Some(ROOT), &["put", "z", "1"])?;
    Ok(())
}
