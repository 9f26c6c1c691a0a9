//! Crash points for the fault-injection tests (feature `failpoints`, off in normal builds).
//!
//! `RAFTKV_CRASH_AT=NAME[@N]` arms the `fail` point `NAME` (one of [`POINTS`]) to abort the
//! process (`std::process::abort`: no destructor, no flush, as a power cut of the process)
//! on its `N`-th hit (default 1). The point names are the ones raft-storage and fsm declare.
//!
//! The same variable arms an error point (one of [`ERROR_POINTS`]): from its `N`-th hit on,
//! the operation fails with an injected I/O error, as a failing disk would. openraft stops
//! on a storage error, and the node then exits (see `engine::Node::raft_stopped`).

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

/// Every error point that can be armed.
pub(crate) const ERROR_POINTS: [&str; 4] =
    ["raft-storage::commit-fails", "fsm::apply-fails", "raft-storage::fsync-fails", "fsm::fsync-fails"];

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
    anyhow::ensure!(nth >= 1, "RAFTKV_CRASH_AT {spec:?}: the hit count starts at 1");
    if ERROR_POINTS.contains(&name.as_str()) {
        // `fail`'s task list: pass N-1 times, then return (the point's injected error).
        let actions = if nth == 1 { "return".to_string() } else { format!("{}*off->return", nth - 1) };
        fail::cfg(&name, &actions).map_err(|e| anyhow::anyhow!("arming {spec:?}: {e}"))?;
        tracing::warn!(point = spec, "error point armed");
        return Ok(());
    }
    anyhow::ensure!(
        POINTS.contains(&name.as_str()),
        "RAFTKV_CRASH_AT: unknown crash point {name:?}; known: {POINTS:?} and {ERROR_POINTS:?}"
    );
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
