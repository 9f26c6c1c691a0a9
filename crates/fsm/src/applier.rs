//! The apply thread: one dedicated thread runs every apply batch.
//!
//! An apply batch is one redb write transaction, which blocks. It used to run on tokio's
//! blocking pool (`spawn_blocking`), where it shares threads with log reads and snapshot
//! work and pays the pool's hand-off each time. Applies are strictly one after another
//! (openraft awaits each batch before the next), so one thread of our own serves them all:
//! the hand-off is one channel send and one wake-up.
//!
//! The thread lives as long as the state machine: it ends when the last handle is dropped
//! (the channel closes). A batch that panics ends the thread; that batch and every later one
//! fail with [`Error::ApplyThread`], and openraft stops on the error.

use std::sync::mpsc;
use std::thread;

use crate::Error;

type Job = Box<dyn FnOnce() + Send>;

/// The handle on the apply thread.
#[derive(Debug)]
pub(crate) struct Applier {
    jobs: mpsc::Sender<Job>,
}

impl Applier {
    /// Starts the thread (named `fsm-apply`).
    pub(crate) fn start() -> Result<Self, Error> {
        let (jobs, queue) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("fsm-apply".into())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    job();
                }
            })
            .map_err(|e| Error::io("starting the apply thread", e))?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the apply thread and waits for its result without blocking the runtime.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (answer, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // The caller may have given up waiting; nothing to tell then.
            let _ = answer.send(f());
        });
        self.jobs.send(job).map_err(|_| Error::ApplyThread)?;
        result.await.map_err(|_| Error::ApplyThread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_in_order_and_reports_a_dead_thread() -> Result<(), Error> {
        let applier = Applier::start()?;
        let name = applier.run(|| thread::current().name().map(str::to_owned)).await?;
        assert_eq!(name.as_deref(), Some("fsm-apply"));
        let mut order = Vec::new();
        for i in 0..3 {
            order.push(applier.run(move || i).await?);
        }
        assert_eq!(order, [0, 1, 2]);
        let panicked = applier.run(|| -> u32 { panic!("planted panic in a test job") }).await;
        assert!(matches!(panicked, Err(Error::ApplyThread)), "{panicked:?}");
        assert!(matches!(applier.run(|| 1).await, Err(Error::ApplyThread)), "the thread is gone");
        Ok(())
    }
}
