//! Crash points and planted bugs, with the testing build of `raftkv` (features
//! `failpoints` and `planted-bugs`, see `tests::testing_bin_dir`).
//!
//! - Each crash point of raft-storage and fsm aborts one follower under load (append, vote
//!   save, apply, snapshot install, purge); it restarts without the crash point and every
//!   check of the fault harness runs.
//! - Each error point (an injected I/O error on a log write or an apply, as a failing disk)
//!   must make the node exit with the error instead of serving on with a stopped Raft core;
//!   it restarts without the point and every check runs.
//! - Each fsync error point (EIO where a durable commit's fsync runs, log and state machine)
//!   must make the node exit at once, reached once (never retried), and nothing acknowledged
//!   may be lost.
//! - Each planted bug, armed with `RAFTKV_PLANTED_BUG`, must make the fault harness report a
//!   violation: the suite proves it catches them. The bugs: a stale follower read, an
//!   acknowledgement before fsync, a dropped watch event.

#![allow(clippy::print_stderr)]

use std::time::Duration;

use tests::TestResult;
use tests::chaos::{ChaosConfig, CrashTrigger, FaultKind, SNAPSHOT_OFTEN, run_crash_point, run_schedule};

fn testing(seed: u64) -> ChaosConfig {
    let mut cfg = ChaosConfig::quick(seed);
    cfg.bin_dir = Some(tests::testing_bin_dir());
    cfg
}

async fn crash(point: &str, trigger: CrashTrigger, args: &[&str]) -> TestResult {
    let mut cfg = testing(100);
    cfg.node_args = args.iter().map(|s| (*s).to_string()).collect();
    let report = run_crash_point(&cfg, point, trigger).await?;
    eprintln!("{report}");
    assert!(report.passed(), "crash point {point}:\n{report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_append_before_writing() -> TestResult {
    crash("raft-storage::append", CrashTrigger::Load, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_append_after_writing_before_fsync() -> TestResult {
    crash("raft-storage::append-written", CrashTrigger::Load, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_vote_save_before_writing() -> TestResult {
    crash("raft-storage::save-vote", CrashTrigger::Election, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_vote_save_after_writing() -> TestResult {
    crash("raft-storage::save-vote-done", CrashTrigger::Election, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_apply_before_writing() -> TestResult {
    crash("fsm::apply", CrashTrigger::Load, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_apply_after_commit_before_answering() -> TestResult {
    crash("fsm::apply-committed", CrashTrigger::Load, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_purge() -> TestResult {
    crash("raft-storage::purge", CrashTrigger::Load, &SNAPSHOT_OFTEN).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_snapshot_install() -> TestResult {
    crash("fsm::install-snapshot", CrashTrigger::SnapshotTransfer, &SNAPSHOT_OFTEN).await
}

/// Runs a schedule with `bug` armed; the harness must report at least one violation (or be
/// unable to recover the cluster, which is a failure of the suite too).
/// A failing disk (an I/O error on a log write): openraft stops, and the node must exit
/// rather than go on answering with a state it can no longer keep up (a node in that state
/// stays a member forever behind: it is never promoted, never caught up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_write_error_stops_the_node_and_it_recovers_on_restart() -> TestResult {
    crash("raft-storage::commit-fails", CrashTrigger::Load, &[]).await
}

/// The same for an I/O error while applying committed entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_error_stops_the_node_and_it_recovers_on_restart() -> TestResult {
    crash("fsm::apply-fails", CrashTrigger::Load, &[]).await
}

/// A failing fsync of the log (EIO from the commit's fsync, the PostgreSQL "fsyncgate"
/// case): the node stops at once, never retries the fsync (the point is reached once) and
/// never acknowledges the write; restarted, it recovers, and every acknowledged write of the
/// concurrent load is there (the harness's checks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_log_fsync_stops_the_node_and_nothing_acknowledged_is_lost() -> TestResult {
    crash("raft-storage::fsync-fails", CrashTrigger::Load, &[]).await
}

/// The same for the state machine's durable apply commit (every 500 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_state_machine_fsync_stops_the_node_and_nothing_acknowledged_is_lost() -> TestResult {
    crash("fsm::fsync-fails", CrashTrigger::Load, &[]).await
}

async fn canary(bug: &str, kinds: &[FaultKind], seed: u64) -> TestResult {
    let mut cfg = testing(seed);
    cfg.node_env = vec![("RAFTKV_PLANTED_BUG".into(), bug.into())];
    cfg.kinds = kinds.to_vec();
    cfg.faults = 8;
    match run_schedule(&cfg).await {
        Ok(report) => {
            eprintln!("{report}");
            assert!(!report.passed(), "planted bug {bug} was not caught:\n{report}");
        }
        Err(e) => eprintln!("planted bug {bug}: the harness could not even recover the cluster: {e}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_stale_follower_read_is_caught() -> TestResult {
    canary("stale-read", &[FaultKind::IsolateFollower, FaultKind::Delay, FaultKind::PauseFollower], 200).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_ack_before_fsync_is_caught() -> TestResult {
    canary("ack-before-fsync", &[FaultKind::RestartAll], 300).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_dropped_watch_event_is_caught() -> TestResult {
    // A watch-only bug: the clients' history stays linearizable, so the watch checks must be
    // what catches it.
    let mut cfg = testing(400);
    cfg.node_env = vec![("RAFTKV_PLANTED_BUG".into(), "drop-watch-event".into())];
    cfg.kinds = vec![FaultKind::KillFollower, FaultKind::TransferLeader];
    cfg.faults = 5;
    let report = run_schedule(&cfg).await?;
    eprintln!("{report}");
    assert!(!report.watch.violations.is_empty(), "planted bug drop-watch-event was not caught:\n{report}");
    Ok(())
}

/// The testing binary without any bug armed passes the same kind of schedule: the canaries
/// fail because of the bugs, not because of the testing build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testing_build_unarmed_passes() -> TestResult {
    let mut cfg = testing(300);
    cfg.kinds = vec![FaultKind::RestartAll, FaultKind::IsolateFollower];
    cfg.faults = 8;
    cfg.duration = Duration::from_secs(20);
    let report = run_schedule(&cfg).await?;
    eprintln!("{report}");
    assert!(report.passed(), "{report}");
    Ok(())
}
