//! The storage guard: etcd's `--quota-backend-bytes` and NOSPACE alarm, plus a free-space
//! reserve on the data directory's filesystem.
//!
//! Every [`DISK_CHECK_INTERVAL`] the node measures the size of its state machine database
//! (`sm/state.redb`) and the free space of the filesystem holding its directory (statvfs).
//! When the database passes the quota or the free space falls under the reserve, it first
//! compacts the database (space freed by deletes goes back to the filesystem) and, if that
//! is not enough, raises a NOSPACE alarm **through the Raft log** (`Admin.Alarm` ACTIVATE,
//! forwarded to the leader): every node applies it at the same index, and from then on
//! every node refuses writes that add data with `RESOURCE_EXHAUSTED` "no space left on
//! `<node>`: …", while deletes, reads, watches and elections go on. Raising it before the
//! disk is actually full keeps the reserve for what cannot be refused: the writes already
//! in flight, deletes, the log's compaction and snapshots.
//!
//! The alarm stays until an operator clears it (`raftkvctl alarm disarm`, as etcd); while
//! it is active the guard compacts the database every [`COMPACT_EVERY`], so deleting keys
//! frees space, and a node still short of space after a disarm raises the alarm again at
//! its next check.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proto::admin::v1::admin_server::Admin;
use proto::admin::v1::alarm_request::AlarmAction;
use proto::admin::v1::{AlarmRequest, AlarmType};
use service::{AdminService, NodeContext};
use tokio::sync::watch;
use types::AlarmKind;

/// How often the guard measures (a statvfs and a file size: cheap). Short, because a fast
/// writer fills the reserve quickly.
pub const DISK_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// The default storage quota of the state machine database (etcd's default): 2 GiB.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 << 30;
/// The default free space kept on the data directory's filesystem: 64 MiB.
pub const DEFAULT_DISK_RESERVE_BYTES: u64 = 64 << 20;
/// While short of space, the database is compacted at most this often.
pub const COMPACT_EVERY: Duration = Duration::from_secs(5);
/// How long a compaction waits for the reads and the apply in progress to end.
const COMPACT_WAIT: Duration = Duration::from_secs(2);

/// The guard's limits (`--quota_backend_bytes`, `--disk_reserve_bytes`); 0 turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLimits {
    /// The largest the state machine database may grow, in bytes.
    pub quota_backend_bytes: u64,
    /// The free space to keep on the data directory's filesystem, in bytes.
    pub reserve_bytes: u64,
}

impl Default for DiskLimits {
    fn default() -> Self {
        Self { quota_backend_bytes: DEFAULT_QUOTA_BACKEND_BYTES, reserve_bytes: DEFAULT_DISK_RESERVE_BYTES }
    }
}

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Measure {
    /// The state machine database's size.
    backend: u64,
    /// Free space (for unprivileged users) on the data directory's filesystem.
    free: u64,
}

/// What is short, one sentence, or `None`.
fn shortage(limits: DiskLimits, m: Measure, dir: &Path) -> Option<String> {
    if limits.quota_backend_bytes > 0 && m.backend > limits.quota_backend_bytes {
        return Some(format!(
            "the state machine database is {} bytes, over the quota of {} bytes (--quota_backend_bytes)",
            m.backend, limits.quota_backend_bytes
        ));
    }
    if limits.reserve_bytes > 0 && m.free < limits.reserve_bytes {
        return Some(format!(
            "{} bytes free on the filesystem of {}, under the reserve of {} bytes (--disk_reserve_bytes)",
            m.free,
            dir.display(),
            limits.reserve_bytes
        ));
    }
    None
}

fn measure(ctx: &NodeContext, dir: &Path) -> Result<Measure, String> {
    let backend = ctx.sm.db_file_bytes().map_err(|e| e.to_string())?;
    let vfs = rustix::fs::statvfs(dir).map_err(|e| format!("statvfs {}: {e}", dir.display()))?;
    Ok(Measure { backend, free: vfs.f_bavail.saturating_mul(vfs.f_frsize) })
}

/// Measures, compacting first when short, on the blocking pool.
async fn check(ctx: &NodeContext, dir: &Path, limits: DiskLimits, compact: bool) -> Result<Option<String>, String> {
    let (ctx, dir) = (ctx.clone(), dir.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let m = measure(&ctx, &dir)?;
        if shortage(limits, m, &dir).is_none() || !compact {
            return Ok(shortage(limits, m, &dir));
        }
        if let Err(e) = ctx.sm.compact(COMPACT_WAIT) {
            tracing::warn!(error = %e, "compacting the state machine database failed");
        }
        Ok(shortage(limits, measure(&ctx, &dir)?, &dir))
    })
    .await
    .map_err(|e| e.to_string())?
}

fn has_alarm(ctx: &NodeContext) -> bool {
    ctx.sm.alarms().iter().any(|a| a.member == ctx.id && a.kind == AlarmKind::NoSpace)
}

/// Raises this node's NOSPACE alarm through the log (forwarded to the leader).
async fn raise(ctx: &NodeContext, detail: String) {
    let req = AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id: ctx.id.to_string(),
        alarm: AlarmType::Nospace as i32,
        detail: detail.clone(),
    };
    match AdminService::new(ctx.clone()).alarm(tonic::Request::new(req)).await {
        Ok(_) => {
            tracing::error!(node = %ctx.id, detail, "NOSPACE alarm raised: writes that add data are refused until space is freed and the alarm is cleared (raftkvctl alarm disarm)")
        }
        Err(e) => {
            tracing::warn!(node = %ctx.id, detail, error = %e, "raising the NOSPACE alarm failed; retrying at the next check")
        }
    }
}

/// The guard's loop; ends when `stop` is set.
pub(crate) async fn guard(ctx: NodeContext, dir: PathBuf, limits: DiskLimits, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(DISK_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_compaction: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let compact = last_compaction.is_none_or(|t| t.elapsed() >= COMPACT_EVERY);
        match check(&ctx, &dir, limits, compact).await {
            Ok(None) => {}
            Ok(Some(detail)) => {
                if compact {
                    last_compaction = Some(Instant::now());
                }
                if !has_alarm(&ctx) {
                    raise(&ctx, detail).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "measuring the storage failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_past_the_quota_or_under_the_reserve() {
        let limits = DiskLimits { quota_backend_bytes: 100, reserve_bytes: 50 };
        let dir = Path::new("/d");
        assert_eq!(shortage(limits, Measure { backend: 100, free: 50 }, dir), None, "at both limits is not past them");
        let over = shortage(limits, Measure { backend: 101, free: 1000 }, dir).unwrap_or_default();
        assert!(over.contains("over the quota of 100 bytes (--quota_backend_bytes)"), "{over}");
        let under = shortage(limits, Measure { backend: 1, free: 49 }, dir).unwrap_or_default();
        assert!(
            under.contains("49 bytes free on the filesystem of /d") && under.contains("--disk_reserve_bytes"),
            "{under}"
        );
        let off = DiskLimits { quota_backend_bytes: 0, reserve_bytes: 0 };
        assert_eq!(shortage(off, Measure { backend: u64::MAX, free: 0 }, dir), None, "0 turns both off");
    }

    #[test]
    fn free_space_is_measured() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let vfs = rustix::fs::statvfs(dir.path()).map_err(|e| e.to_string())?;
        assert!(vfs.f_frsize > 0 && vfs.f_blocks > 0);
        Ok(())
    }
}
