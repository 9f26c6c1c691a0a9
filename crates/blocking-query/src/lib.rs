//! Waiting for an index, driven by notification, never by polling.
//!
//! The state machine publishes its applied index through a tokio `watch` channel each time
//! it applies a batch. [`wait_for_index`] suspends until that index reaches a minimum, a
//! timeout ends, or the publisher goes away. A dropped future (the caller went away) simply
//! stops waiting.
//!
//! This is the primitive only. Its users come with later issues: follower reads (wait until
//! the node has applied the read index fetched from the leader), blocking Get (`min_index`
//! + `wait`, Consul style), Watch, and the "abandoned" wake-up on snapshot install.
//!
//! This crate must never depend on tonic, nor directly on openraft (it may reach openraft's
//! types only through `types`); `cargo xtask deps` checks both.

use std::time::Duration;

use tokio::sync::watch;

/// Why [`wait_for_index`] returned without reaching the index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The timeout passed first; `current` is the index reached by then.
    #[error("timed out at index {current} waiting for index {wanted}")]
    Timeout {
        /// The index waited for.
        wanted: u64,
        /// The index reached when the wait ended.
        current: u64,
    },
    /// The publisher is gone (the node is shutting down).
    #[error("the index publisher closed (the node is shutting down)")]
    Closed,
}

/// Waits until the index published on `rx` is at least `min_index`, or `timeout` passes.
/// Returns the index seen, which may be beyond `min_index`.
pub async fn wait_for_index(
    rx: &mut watch::Receiver<u64>,
    min_index: u64,
    timeout: Duration,
) -> Result<u64, WaitError> {
    let outcome = tokio::time::timeout(timeout, async { rx.wait_for(|i| *i >= min_index).await.map(|i| *i) }).await;
    match outcome {
        Ok(Ok(index)) => Ok(index),
        Ok(Err(_)) => Err(WaitError::Closed),
        Err(_) => Err(WaitError::Timeout { wanted: min_index, current: *rx.borrow() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_at_once_when_already_there() {
        let (_tx, mut rx) = watch::channel(10);
        assert_eq!(wait_for_index(&mut rx, 5, Duration::from_secs(1)).await, Ok(10));
    }

    #[tokio::test]
    async fn wakes_on_publish() {
        let (tx, mut rx) = watch::channel(1);
        let waiter = tokio::spawn(async move { wait_for_index(&mut rx, 3, Duration::from_secs(30)).await });
        tx.send_replace(2);
        tx.send_replace(4);
        assert_eq!(waiter.await.ok(), Some(Ok(4)));
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_with_the_current_index() {
        let (tx, mut rx) = watch::channel(1);
        tx.send_replace(2);
        assert_eq!(
            wait_for_index(&mut rx, 9, Duration::from_secs(5)).await,
            Err(WaitError::Timeout { wanted: 9, current: 2 })
        );
    }

    #[tokio::test]
    async fn reports_a_closed_publisher() {
        let (tx, mut rx) = watch::channel(1);
        drop(tx);
        assert_eq!(wait_for_index(&mut rx, 9, Duration::from_secs(5)).await, Err(WaitError::Closed));
    }
}
