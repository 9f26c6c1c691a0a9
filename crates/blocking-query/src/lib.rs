//! Waiting for something to happen, driven by notification, never by polling.
//!
//! Two primitives:
//! - [`wait_for_index`]: suspends until an applied index published on a tokio `watch`
//!   channel reaches a minimum, a timeout ends, or the publisher goes away. Follower reads
//!   use it to wait until the node has applied the read index fetched from the leader.
//! - [`Mailbox`]: one waiter's bounded queue of notifications. A publisher pushes items
//!   (and wakes the waiter through a tokio `Notify`), tells it the state it waits on was
//!   **abandoned** (a snapshot replaced it), or **closes** it (shutdown). A waiter that does
//!   not keep up is not allowed to grow the queue: past its count or byte bound the queue is
//!   dropped and the waiter is told it **overflowed**. Blocking reads and watches wait on a
//!   mailbox; the state machine (`fsm`) publishes into it after each apply.
//!
//! Race freedom: a mailbox keeps what happened (items, the abandon marker, overflow, close)
//! until the waiter takes it, and `Notify::notify_one` stores a permit when nobody is waiting
//! yet. So nothing published between a waiter's check and its wait is missed: it is in the
//! queue, and the wait returns at once. A dropped future (the caller went away) simply
//! stops waiting.
//!
//! This crate must never depend on tonic, nor directly on openraft (it may reach openraft's
//! types only through `types`); `cargo xtask deps` checks both.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Notify, watch};

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

/// The bounds of one [`Mailbox`]: past either, it overflows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxLimits {
    /// The most items queued.
    pub max_items: usize,
    /// The most bytes queued, as the publisher weighs its items.
    pub max_bytes: usize,
}

/// What a waiter takes from its [`Mailbox`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal<T> {
    /// The next item, in publishing order.
    Item(T),
    /// The state waited on was replaced at this index (a snapshot was installed): items
    /// queued before were dropped; items after this come after the new state.
    Abandoned(u64),
    /// The waiter fell behind past its bounds; what was queued was dropped and nothing more
    /// is delivered.
    Overflowed,
    /// The publisher closed the mailbox (shutdown); nothing more is delivered.
    Closed,
}

#[derive(Debug)]
enum Entry<T> {
    Item(T, usize),
    Abandoned(u64),
}

#[derive(Debug)]
struct MailboxState<T> {
    queue: VecDeque<Entry<T>>,
    items: usize,
    bytes: usize,
    overflowed: bool,
    closed: bool,
}

/// One waiter's bounded queue of notifications; see the crate documentation. One consumer
/// takes from it ([`Mailbox::recv`]); any number of publishers push.
#[derive(Debug)]
pub struct Mailbox<T> {
    state: Mutex<MailboxState<T>>,
    notify: Notify,
    limits: MailboxLimits,
}

impl<T> Mailbox<T> {
    /// An empty mailbox with these bounds.
    #[must_use]
    pub fn new(limits: MailboxLimits) -> Self {
        Self {
            state: Mutex::new(MailboxState {
                queue: VecDeque::new(),
                items: 0,
                bytes: 0,
                overflowed: false,
                closed: false,
            }),
            notify: Notify::new(),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MailboxState<T>> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `item` (weighing `bytes`) and wakes the waiter. Returns `false` when the item
    /// was not queued: the mailbox is closed, or overflowed now or before (then the waiter
    /// is woken to learn it).
    pub fn push(&self, item: T, bytes: usize) -> bool {
        let mut s = self.lock();
        if s.overflowed || s.closed {
            return false;
        }
        if s.items + 1 > self.limits.max_items || s.bytes.saturating_add(bytes) > self.limits.max_bytes {
            s.queue.clear();
            s.items = 0;
            s.bytes = 0;
            s.overflowed = true;
            drop(s);
            self.notify.notify_one();
            return false;
        }
        s.queue.push_back(Entry::Item(item, bytes));
        s.items += 1;
        s.bytes += bytes;
        drop(s);
        self.notify.notify_one();
        true
    }

    /// Tells the waiter the state it waits on was replaced at `index`: drops what is queued
    /// and queues the abandon marker. Does nothing to an overflowed or closed mailbox.
    pub fn abandon(&self, index: u64) {
        let mut s = self.lock();
        if s.overflowed || s.closed {
            return;
        }
        s.queue.clear();
        s.items = 0;
        s.bytes = 0;
        s.queue.push_back(Entry::Abandoned(index));
        drop(s);
        self.notify.notify_one();
    }

    /// Closes the mailbox: the waiter's next [`Mailbox::recv`] answers [`Signal::Closed`].
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.queue.clear();
        s.items = 0;
        s.bytes = 0;
        drop(s);
        self.notify.notify_one();
    }

    /// Whether nothing is queued (an overflowed or closed mailbox is not empty: it has that
    /// to say).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        let s = self.lock();
        s.queue.is_empty() && !s.overflowed && !s.closed
    }

    /// Whether the mailbox overflowed or was closed: nothing more will be delivered.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        let s = self.lock();
        s.overflowed || s.closed
    }

    /// Takes the next signal, if there is one. Close and overflow come before anything
    /// queued (which they dropped), and stay: every later call answers them again.
    pub fn try_recv(&self) -> Option<Signal<T>> {
        let mut s = self.lock();
        if s.closed {
            return Some(Signal::Closed);
        }
        if s.overflowed {
            return Some(Signal::Overflowed);
        }
        match s.queue.pop_front()? {
            Entry::Item(item, bytes) => {
                s.items -= 1;
                s.bytes -= bytes;
                Some(Signal::Item(item))
            }
            Entry::Abandoned(index) => Some(Signal::Abandoned(index)),
        }
    }

    /// Waits for the next signal. Never polls: the publisher's push wakes it.
    pub async fn recv(&self) -> Signal<T> {
        loop {
            if let Some(signal) = self.try_recv() {
                return signal;
            }
            // A push between the check above and this wait stored a permit: no lost wake-up.
            self.notify.notified().await;
        }
    }

    /// Waits for the next signal for at most `timeout`; `None` when it passed first.
    pub async fn recv_timeout(&self, timeout: Duration) -> Option<Signal<T>> {
        tokio::time::timeout(timeout, self.recv()).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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

    fn limits(max_items: usize, max_bytes: usize) -> MailboxLimits {
        MailboxLimits { max_items, max_bytes }
    }

    #[tokio::test]
    async fn items_come_in_order_and_wake_the_waiter() {
        let mb = Arc::new(Mailbox::new(limits(10, 100)));
        let waiter = {
            let mb = mb.clone();
            tokio::spawn(async move { (mb.recv().await, mb.recv().await) })
        };
        tokio::task::yield_now().await;
        assert!(mb.push(1, 1));
        assert!(mb.push(2, 1));
        assert_eq!(waiter.await.ok(), Some((Signal::Item(1), Signal::Item(2))));
        assert!(mb.is_empty());
    }

    #[tokio::test]
    async fn a_push_before_the_wait_is_not_lost() {
        let mb = Mailbox::new(limits(10, 100));
        assert!(mb.try_recv().is_none());
        // Published between the check and the wait: the stored permit wakes the wait.
        assert!(mb.push(7, 1));
        assert_eq!(mb.recv_timeout(Duration::from_secs(5)).await, Some(Signal::Item(7)));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_published_means_no_wake_up() {
        let mb: Mailbox<u32> = Mailbox::new(limits(10, 100));
        assert_eq!(mb.recv_timeout(Duration::from_secs(60)).await, None);
    }

    #[test]
    fn bounded_by_count_at_and_past_the_limit() {
        let mb = Mailbox::new(limits(2, 100));
        assert!(mb.push(1, 1));
        assert!(mb.push(2, 1), "at the limit");
        assert!(!mb.push(3, 1), "past the limit");
        assert_eq!(mb.try_recv(), Some(Signal::Overflowed));
        assert_eq!(mb.try_recv(), Some(Signal::Overflowed), "overflow stays");
        assert!(!mb.push(4, 1));
        assert!(mb.is_finished());
    }

    #[test]
    fn bounded_by_bytes_at_and_past_the_limit() {
        let mb = Mailbox::new(limits(100, 10));
        assert!(mb.push(1, 6));
        assert!(mb.push(2, 4), "at the limit");
        assert_eq!(mb.try_recv(), Some(Signal::Item(1)));
        assert!(mb.push(3, 6), "room again after a take");
        assert!(!mb.push(4, 1), "past the limit");
        assert_eq!(mb.try_recv(), Some(Signal::Overflowed));
    }

    #[test]
    fn abandon_drops_what_was_queued_and_comes_before_later_items() {
        let mb = Mailbox::new(limits(10, 100));
        assert!(mb.push(1, 1));
        mb.abandon(50);
        assert!(mb.push(51, 1));
        assert_eq!(mb.try_recv(), Some(Signal::Abandoned(50)));
        assert_eq!(mb.try_recv(), Some(Signal::Item(51)));
        assert_eq!(mb.try_recv(), None);
    }

    #[tokio::test]
    async fn close_wakes_the_waiter_and_stays() {
        let mb: Arc<Mailbox<u32>> = Arc::new(Mailbox::new(limits(10, 100)));
        let waiter = {
            let mb = mb.clone();
            tokio::spawn(async move { mb.recv().await })
        };
        tokio::task::yield_now().await;
        mb.close();
        assert_eq!(waiter.await.ok(), Some(Signal::Closed));
        assert!(!mb.push(1, 1));
        assert_eq!(mb.try_recv(), Some(Signal::Closed));
    }
}
