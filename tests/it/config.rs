//! The node's configuration layers (flags > `RAFTKV_*` variables > `--config` file >
//! defaults, as `raftkv --print-config` reports them), a node configured by a file, JSON
//! logs and the slow-request log.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use tests::{FAST_TIMING, NodeClient, TestResult, binary, node, raftkvctl_stdin, wait_for};

/// `raftkv --print-config` with `args` and exactly the `RAFTKV_*` variables `env`: each
/// key's (value, source).
fn print_config(args: &[&str], env: &[(&str, &str)]) -> Result<BTreeMap<String, (String, String)>, tests::BoxError> {
    let mut cmd = Command::new(binary("raftkv"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("RAFTKV_")) {
        cmd.env_remove(k);
    }
    let out = cmd.args(args).arg("--print-config").envs(env.iter().copied()).stdin(Stdio::null()).output()?;
    let stdout = String::from_utf8(out.stdout)?;
    assert!(out.status.success(), "--print-config failed: {}", String::from_utf8_lossy(&out.stderr));
    // The output is itself a config file.
    let _: toml::Table = toml::from_str(&stdout).map_err(|e| format!("not TOML: {e}\n{stdout}"))?;
    Ok(stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, rest) = l.split_once(" = ")?;
            let (value, source) = rest.split_once("  # ")?;
            Some((key.to_string(), (value.to_string(), source.to_string())))
        })
        .collect())
}

#[test]
fn flags_beat_environment_beat_file_beat_defaults() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "# every key set here is also set elsewhere, but one\n\
         raft_id = \"from-file\"\n\
         heartbeat_interval = \"200ms\"\n\
         election_timeout = \"2s\"\n\
         snapshot_threshold = 111\n\
         trailing_logs = 222\n",
    )?;
    let path = file.to_string_lossy().into_owned();
    let got = print_config(
        &["--config", &path, "--heartbeat_interval", "400ms", "--snapshot_threshold=333", "--max_append_entries=44"],
        &[
            ("RAFTKV_HEARTBEAT_INTERVAL", "300ms"),
            ("RAFTKV_ELECTION_TIMEOUT", "3s"),
            ("RAFTKV_MAX_APPEND_ENTRIES", "55"),
        ],
    )?;
    let at = |line: u32| format!("file {path}:{line}");
    let expect = [
        // all three: the flag
        ("heartbeat_interval", "\"400ms\"", "flag --heartbeat_interval".to_string()),
        // environment over file
        ("election_timeout", "\"3s\"", "env RAFTKV_ELECTION_TIMEOUT".to_string()),
        // flag over file
        ("snapshot_threshold", "333", "flag --snapshot_threshold".to_string()),
        // flag over environment
        ("max_append_entries", "44", "flag --max_append_entries".to_string()),
        // file over default
        ("trailing_logs", "222", at(6)),
        ("raft_id", "\"from-file\"", at(2)),
        // default
        ("shutdown_grace", "\"5s\"", "default".to_string()),
    ];
    for (key, value, source) in expect {
        assert_eq!(got.get(key), Some(&(value.to_string(), source)), "{key}");
    }
    // The file's place taken by the environment alone, then by nothing.
    let got = print_config(&["--raft_id=n"], &[("RAFTKV_TRAILING_LOGS", "7")])?;
    assert_eq!(got.get("trailing_logs"), Some(&("7".into(), "env RAFTKV_TRAILING_LOGS".into())));
    assert_eq!(got.get("snapshot_threshold"), Some(&("100000".into(), "default".into())));
    Ok(())
}

#[test]
fn a_bad_file_is_refused_naming_the_line_and_the_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bad.toml");
    for (text, expected) in [
        ("raft_bootstrap = true\nheartbeat_intervall = \"1s\"\n", "bad.toml:2: unknown key `heartbeat_intervall`"),
        ("\n\nelection_timeout = \"5\"\n", "bad.toml:3: key `election_timeout`: invalid value \"5\""),
    ] {
        std::fs::write(&file, text)?;
        let stderr = tests::refused_start(&["--raft_id=n", "--config", &file.to_string_lossy()])?;
        assert!(stderr.starts_with("raftkv: error: ") && stderr.contains(expected), "{text:?}: {stderr}");
    }
    Ok(())
}

/// A node whose settings come from a file: JSON log lines, and a request slower than the
/// (tiny) threshold logged once with its method and key prefix, never its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_from_a_file_logs_json_and_slow_requests() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        format!(
            "raft_bootstrap = true\nheartbeat_interval = \"{}\"\nelection_timeout = \"{}\"\n\
             log_format = \"json\"\nslow_request_threshold = \"1ms\"\n",
            FAST_TIMING[1], FAST_TIMING[3]
        ),
    )?;
    let mut n1 = node("n1", dir.path()).args([std::ffi::OsStr::new("--config"), file.as_os_str()]).start()?;
    let c = n1.client()?;
    wait_for("n1 to lead, bootstrapped by its file", Duration::from_secs(30), || async {
        c.status().await.is_ok_and(|s| !s.leader_id.is_empty())
    })
    .await?;
    // Half a megabyte: well over a millisecond to encode, log, fsync and apply.
    let value = "the-secret-value".repeat(32 << 10);
    let out = raftkvctl_stdin(std::slice::from_ref(&n1.grpc_addr), &["put", "slow/key", "-"], value.as_bytes())?;
    assert!(out.status.success(), "put: {}", String::from_utf8_lossy(&out.stderr));
    let slow = |log: &str| -> Vec<serde_json::Value> {
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == "slow request" && v["fields"]["method"] == "KV/Put")
            .collect()
    };
    wait_for("the slow put in the log", Duration::from_secs(10), || async { !slow(&n1.log()).is_empty() }).await?;
    let log = n1.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.iter().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "every line is JSON:\n{log}");
    let entries = slow(&log);
    assert_eq!(entries.len(), 1, "logged once: {entries:?}");
    let v = &entries[0];
    assert_eq!(v["level"], "WARN");
    assert_eq!(v["fields"]["key_prefix"], "slow/key");
    assert_eq!(v["fields"]["node"], "n1");
    assert!(v["fields"]["elapsed_ms"].as_u64().is_some(), "{v}");
    assert!(!log.contains("the-secret-value"), "a value is never logged");
    assert!(n1.stop(), "n1 did not stop cleanly:\n{}", n1.log_tail());
    Ok(())
}
