//! Crash points for the fault-injection tests (feature `failpoints`, off in normal builds).
//!
//! `RAFTKV_CRASH_AT=NAME[@N]` arms the `fail` point `NAME` (one of [`POINTS`]) to abort the
//! process (`std::process::abort`: no destructor, no flush, as a power cut of the process)
//! on its `N`-th hit (default 1). The point names are the ones raft-storage and fsm declare.

/// Every crash point that can be armed.
pub(crate) const POINTS: [&str; 8] = [
    "raft-storage::append",
    "raft-storage::append-written",
    "raft-storage::save-vote",
    "raft-storage::save-vote-done",
    "raft-storage::purge",
    "fsm::apply",
    "fsm::apply-committed",
    "fsm::install-snapshot",
];

/// Arms the crash point named by `RAFTKV_CRASH_AT`, if set. An unknown name or a bad count
/// is an error, so a typo never runs a test without its crash.
pub(crate) fn arm_from_env() -> anyhow::Result<()> {
    let Ok(spec) = std::env::var("RAFTKV_CRASH_AT") else { return Ok(()) };
    let (name, nth) = match spec.split_once('@') {
        Some((name, n)) => {
            (name.to_string(), n.parse::<u64>().map_err(|e| anyhow::anyhow!("RAFTKV_CRASH_AT {spec:?}: {e}"))?)
        }
        None => (spec.clone(), 1),
    };
    anyhow::ensure!(
        POINTS.contains(&name.as_str()),
        "RAFTKV_CRASH_AT: unknown crash point {name:?}; known: {POINTS:?}"
    );
    anyhow::ensure!(nth >= 1, "RAFTKV_CRASH_AT {spec:?}: the hit count starts at 1");
    let hits = std::sync::atomic::AtomicU64::new(0);
    let point = name.clone();
    fail::cfg_callback(name, move || {
        if hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == nth {
            tracing::error!(point, "crash point reached: aborting");
            std::process::abort();
        }
    })
    .map_err(|e| anyhow::anyhow!("arming {spec:?}: {e}"))?;
    tracing::warn!(point = spec, "crash point armed");
    Ok(())
}
