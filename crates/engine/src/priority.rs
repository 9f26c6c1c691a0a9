//! The client port's own runtime, whose threads run at a lower CPU priority than Raft's.
//!
//! Under more client load than the CPUs can take, the work that must not wait is Raft's:
//! the leader's heartbeats (openraft gives each heartbeat RPC `--heartbeat_interval` to
//! answer, then drops it) and a follower's handling of them (it resets its election timer
//! on receipt). A separate tokio runtime alone does not protect that work: its threads and
//! the client port's compete for the same cores at the same priority, and the kernel
//! shares the CPU between them. So the client port (its accept loop, the connections, the
//! KV, etcd, Admin and forwarding handlers) runs on a runtime of its own
//! ([`client_runtime`]) whose worker and blocking threads lower their own priority at
//! start: `nice` plus [`DEFAULT_CLIENT_THREAD_NICE`] (`--client-thread-nice`), capped at
//! [`MAX_NICE`]. Raft's threads (the openraft core, replication and heartbeats, the Raft
//! port's server, the log writer and the state machine's applier) stay on the main runtime
//! at the process's own priority, so the kernel runs them first when both are ready. A
//! follower gains as much as the leader: its Raft port wins over its client port, and, on
//! a shared host, over other nodes' client ports.
//!
//! Raising a thread's nice value needs no privilege (lowering it back would), so this works
//! for any user. It orders CPU time only; it does not change what is safe: Raft's timing
//! decides when elections happen, never what is committed.

use std::io;

use tokio::runtime::Runtime;

/// How much lower the client port's threads run than the process (`--client-thread-nice`):
/// +10 gives Raft's threads about 10 times the CPU weight of the client port's when both
/// are ready (the kernel's weight falls about 1.25 times per nice step).
pub const DEFAULT_CLIENT_THREAD_NICE: i32 = 10;

/// The highest nice value (the lowest priority) a thread can have on Linux.
pub const MAX_NICE: i32 = 19;

/// The name of the client runtime's threads (`/proc/<pid>/task/<tid>/comm`).
pub const CLIENT_THREAD_NAME: &str = "raftkv-client";

/// The name of the main runtime's worker threads, which run Raft.
pub const RAFT_THREAD_NAME: &str = "raftkv-raft";

/// The nice value a client thread gets: the process's `base` plus `delta`, at most
/// [`MAX_NICE`]; `delta` 0 (or less) leaves it at `base`.
pub fn client_nice(base: i32, delta: i32) -> i32 {
    base.saturating_add(delta.max(0)).min(MAX_NICE)
}

/// Builds the client port's multi-threaded runtime: threads named [`CLIENT_THREAD_NAME`],
/// each lowering its own priority by `delta` nice steps when it starts (see the module's
/// documentation). A thread whose priority cannot be changed says so in the log and runs
/// at the process's priority.
pub fn client_runtime(delta: i32) -> io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(CLIENT_THREAD_NAME)
        .on_thread_start(move || lower_this_thread(delta))
        .enable_all()
        .build()
}

/// Lowers the calling thread's priority by `delta` nice steps (Linux: `setpriority` on
/// the thread id changes that thread only).
fn lower_this_thread(delta: i32) {
    if delta <= 0 {
        return;
    }
    let tid = rustix::thread::gettid();
    let result = rustix::process::getpriority_process(Some(tid))
        .and_then(|base| rustix::process::setpriority_process(Some(tid), client_nice(base, delta)));
    if let Err(error) = result {
        tracing::warn!(tid = tid.as_raw_nonzero().get(), %error, delta, "could not lower a client thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nice_value_is_raised_and_capped() {
        assert_eq!(client_nice(0, DEFAULT_CLIENT_THREAD_NICE), 10);
        assert_eq!(client_nice(10, DEFAULT_CLIENT_THREAD_NICE), MAX_NICE);
        assert_eq!(client_nice(5, 0), 5);
        assert_eq!(client_nice(5, -3), 5, "never raised above the process");
        assert_eq!(client_nice(-5, 3), -2);
        assert_eq!(client_nice(0, i32::MAX), MAX_NICE);
    }

    #[test]
    fn the_runtime_threads_run_lower_than_the_caller() -> io::Result<()> {
        let base = rustix::process::getpriority_process(None)?;
        let runtime = client_runtime(3)?;
        let (on_worker, on_blocking) = runtime.block_on(async {
            let worker = tokio::spawn(async { rustix::process::getpriority_process(Some(rustix::thread::gettid())) });
            let blocking =
                tokio::task::spawn_blocking(|| rustix::process::getpriority_process(Some(rustix::thread::gettid())));
            (worker.await, blocking.await)
        });
        let expected = client_nice(base, 3);
        assert_eq!(on_worker.map_err(io::Error::other)??, expected);
        assert_eq!(on_blocking.map_err(io::Error::other)??, expected);
        assert_eq!(rustix::process::getpriority_process(None)?, base, "the calling thread is unchanged");
        Ok(())
    }
}
