//! Progress of a snapshot transfer in the log: a line at info at most every
//! [`SNAPSHOT_PROGRESS_INTERVAL`] while a snapshot is sent or received, so a long transfer
//! shows it moves (how far, of how much, to or from which node).

use std::time::{Duration, Instant};

/// How often a snapshot transfer in progress is logged.
pub const SNAPSHOT_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// Which way a snapshot goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Direction {
    /// This node sends it (the leader).
    Sending,
    /// This node receives it (a follower).
    Receiving,
}

/// The progress log of one transfer.
#[derive(Debug)]
pub(crate) struct TransferLog {
    direction: Direction,
    /// The other node.
    peer: String,
    size: u64,
    interval: Duration,
    last: Instant,
}

impl TransferLog {
    /// A transfer of `size` bytes with `peer`, logged every [`SNAPSHOT_PROGRESS_INTERVAL`].
    pub(crate) fn new(direction: Direction, peer: impl Into<String>, size: u64) -> Self {
        Self { direction, peer: peer.into(), size, interval: SNAPSHOT_PROGRESS_INTERVAL, last: Instant::now() }
    }

    /// Whether a line is due at `now` (and, if so, the next one an interval later).
    fn due(&mut self, now: Instant) -> bool {
        if now.duration_since(self.last) < self.interval {
            return false;
        }
        self.last = now;
        true
    }

    /// Notes that `done` bytes have gone; logs a line when one is due.
    pub(crate) fn at(&mut self, done: u64) {
        if !self.due(Instant::now()) {
            return;
        }
        let percent = done.saturating_mul(100).checked_div(self.size).unwrap_or(100);
        match self.direction {
            Direction::Sending => {
                tracing::info!(target_node = %self.peer, bytes = done, size = self.size, percent, "sending snapshot")
            }
            Direction::Receiving => {
                tracing::info!(leader = %self.peer, bytes = done, size = self.size, percent, "receiving snapshot")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_due_once_per_interval() {
        let mut log = TransferLog::new(Direction::Sending, "n2", 100);
        let start = log.last;
        assert!(!log.due(start + SNAPSHOT_PROGRESS_INTERVAL / 2));
        assert!(log.due(start + SNAPSHOT_PROGRESS_INTERVAL));
        assert!(!log.due(start + SNAPSHOT_PROGRESS_INTERVAL + Duration::from_secs(1)));
        assert!(log.due(start + SNAPSHOT_PROGRESS_INTERVAL * 2));
    }
}
