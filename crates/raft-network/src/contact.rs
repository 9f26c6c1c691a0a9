//! [`LeaderContact`]: when this node last heard from a leader.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// When a node last heard from a leader: the Raft transport touches it on every
/// AppendEntries (heartbeats included), stale reads report how long ago that was.
#[derive(Debug)]
pub struct LeaderContact {
    epoch: Instant,
    /// Milliseconds since `epoch` plus one; 0 for never.
    last: AtomicU64,
}

impl Default for LeaderContact {
    fn default() -> Self {
        Self { epoch: Instant::now(), last: AtomicU64::new(0) }
    }
}

impl LeaderContact {
    /// Records contact from a leader now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last.store(ms + 1, Ordering::Relaxed);
    }

    /// Milliseconds since the last contact, or `None` if there was none.
    #[must_use]
    pub fn millis_since(&self) -> Option<u64> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            last => {
                let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                Some(now.saturating_sub(last - 1))
            }
        }
    }
}
