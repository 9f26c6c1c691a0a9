//! `raftkvctl bench --target etcd` against a real etcd: the hand-written etcd v3 messages
//! (`bin/raftkvctl/src/etcd.rs`) must be what etcd understands, or `cargo xtask bench`
//! compares raftkv with nothing.
//!
//! Ignored by default, because a fresh machine has no etcd and `cargo xtask test` must work
//! there; CI installs etcd 3.4 (`etcd-server`, `etcd-client`) and runs it with
//! `cargo nextest run -p tests --test it --run-ignored only -E 'test(/^etcd::/)'`. It fails,
//! with what to install, when etcd is missing.

#![allow(clippy::print_stderr)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tests::{BoxError, TestResult, raftkvctl, wait_for};

fn on_path(name: &str) -> Result<PathBuf, BoxError> {
    std::env::var("PATH")?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file()).ok_or_else(|| {
        format!("`{name}` is not on PATH: install etcd 3.4 (Debian: apt-get install etcd-server etcd-client)").into()
    })
}

/// One etcd member on 127.0.0.1, stopped by PID when dropped.
struct Etcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    fn start() -> Result<Self, BoxError> {
        let etcd = on_path("etcd")?;
        let dir = tempfile::tempdir()?;
        // etcd takes its ports on the command line: two the OS picked, released just before.
        let (client, peer) = {
            let a = TcpListener::bind("127.0.0.1:0")?;
            let b = TcpListener::bind("127.0.0.1:0")?;
            (a.local_addr()?.port(), b.local_addr()?.port())
        };
        let log = std::fs::File::create(dir.path().join("etcd.log"))?;
        let child = Command::new(etcd)
            .args(["--name", "e0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{client}"))
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{client}"))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{peer}"))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{peer}"))
            .arg("--initial-cluster")
            .arg(format!("e0=http://127.0.0.1:{peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(Self { child, endpoint: format!("127.0.0.1:{client}"), _dir: dir })
    }

    fn etcdctl(&self, args: &[&str]) -> Result<String, BoxError> {
        let out = Command::new(on_path("etcdctl")?)
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&self.endpoint)
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(format!("etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `raftkvctl -o json bench ... --target etcd`; its summary.
fn bench(endpoint: &str, args: &[&str]) -> Result<serde_json::Value, BoxError> {
    let mut all = vec!["-o", "json", "bench"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--target", "etcd"]);
    let out = raftkvctl(&[endpoint.to_owned()], &all)?;
    if !out.status.success() {
        return Err(format!("raftkvctl {all:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::test]
#[ignore = "needs etcd 3.4 on PATH; CI installs it and runs this with --run-ignored only"]
async fn bench_puts_and_reads_through_etcds_own_api() -> TestResult {
    let etcd = Etcd::start()?;
    let ep = etcd.endpoint.clone();
    wait_for("etcd to take a put", Duration::from_secs(30), || {
        let ep = ep.clone();
        async move { bench(&ep, &["put", "--total", "1", "--prefix", "ready"]).is_ok() }
    })
    .await?;

    let puts = bench(&ep, &["put", "--total", "50", "--clients", "4", "--value-size", "16", "--prefix", "t"])?;
    assert_eq!(puts["requests"], 50, "{puts}");
    // What the bench wrote is in etcd, as etcd's own client reads it.
    let value = etcd.etcdctl(&["get", "--print-value-only", "t/3/10"])?;
    assert_eq!(value.trim_end(), "x".repeat(16));
    let keys = etcd.etcdctl(&["get", "t/", "--prefix", "--keys-only"])?;
    assert_eq!(keys.lines().filter(|l| l.starts_with("t/")).count(), 50, "{keys}");

    for extra in [&[][..], &["--serializable"][..]] {
        let mut args = vec!["get", "--total", "40", "--clients", "4", "--prefix", "g"];
        args.extend_from_slice(extra);
        let gets = bench(&ep, &args)?;
        assert_eq!(gets["requests"], 40, "{gets}");
        eprintln!("bench get {extra:?} against etcd: {gets}");
    }

    Ok(())
}
