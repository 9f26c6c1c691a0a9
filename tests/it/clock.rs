//! Clock faults with libfaketime (see `tests::clock`): one node's clock, wall and monotonic,
//! 10 % fast or slow, or a minute ahead or behind, one node at a time.
//!
//! - `skewed_clocks_keep_reads_linearizable`: a chaos schedule of clock faults only, every
//!   read linearizable (ReadIndex); every check of the chaos tier passes.
//! - `lease_read_is_stale_under_a_slow_leader_clock`: the documented failure of `LEASE` reads (see
//!   `tests::chaos::lease`): a leader cut off while its clock jumps back keeps serving lease
//!   reads, and returns a value older than an acknowledged write; a linearizable read on the
//!   same node refuses instead.
//!
//! Skipped with a message where libfaketime is not installed, except under `CI=true`
//! (`.ci/run` installs Debian's `faketime`).

#![allow(clippy::print_stderr)]

use tests::TestResult;
use tests::chaos::{ChaosConfig, FaultKind, run_schedule};

/// Whether libfaketime is here; says why not (and fails under `CI=true`).
fn faketime_available() -> bool {
    if tests::clock::library().is_some() {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "libfaketime is required under CI=true (Debian's `faketime` package)"
    );
    eprintln!("SKIPPED: libfaketime not found; install Debian's `faketime` package");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_clocks_keep_reads_linearizable() -> TestResult {
    if !faketime_available() {
        return Ok(());
    }
    let cfg = ChaosConfig { clock: true, kinds: FaultKind::CLOCK.to_vec(), faults: 8, ..ChaosConfig::quick(31) };
    let report = run_schedule(&cfg).await?;
    eprintln!("{report}");
    for kind in FaultKind::CLOCK {
        assert!(report.kinds.contains(&kind), "{kind:?} was never injected:\n{report}");
    }
    assert!(report.passed(), "clock faults broke a property:\n{report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_read_is_stale_under_a_slow_leader_clock() -> TestResult {
    if !faketime_available() {
        return Ok(());
    }
    let finding = tests::chaos::lease::lease_under_slow_clock(7).await?;
    eprintln!("{finding:?}");
    assert_eq!(
        finding.lease_read,
        Ok(Some(finding.before.clone())),
        "the old leader's lease read was expected to be stale (the documented failure)"
    );
    assert!(
        finding.linearizable_read.is_err(),
        "a linearizable read on the cut-off leader answered {:?}",
        finding.linearizable_read
    );
    Ok(())
}
