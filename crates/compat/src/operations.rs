//! Operation tokens for the hashicorp-style admin adapters (`RaftAdmin`, `RaftManager`).
//!
//! In those APIs a call that changes something (AddVoter, Barrier, Snapshot, ...) starts the
//! operation and returns at once with a token; `Await(token)` waits for the outcome and
//! `Forget(token)` frees it. The Go tools keep every token until it is forgotten, so a client
//! that never calls `Forget` leaks memory. Here:
//!
//! - an operation runs in its own task from the moment it is started, whether or not anyone
//!   awaits it (as a hashicorp/raft future does);
//! - a finished operation's token expires [`TOKEN_TTL`] after it finished, forgotten or not;
//! - at most [`MAX_OPERATIONS`] tokens exist at once: starting one more, when none has
//!   expired, fails with `RESOURCE_EXHAUSTED` and starts nothing;
//! - `Await` waits until the outcome is known or the caller's deadline passes, and can be
//!   called again (also after the deadline passed): the token stays until forgotten or
//!   expired.
//!
//! Tokens are 128 random bits in hex, so one client cannot guess another's.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;

use service::ServiceError;

/// How long a finished operation's outcome is kept when nobody forgets its token.
pub const TOKEN_TTL: Duration = Duration::from_secs(10 * 60);

/// The most operation tokens that may exist at once on one node (running, or finished and
/// not yet forgotten or expired).
pub const MAX_OPERATIONS: usize = 1024;

/// What an operation ends with: the log index it reports (0 when it has none), or a status.
pub type OperationResult = Result<u64, Status>;

/// An operation's outcome once known, with when it became known.
type Finished = Option<(Instant, OperationResult)>;

/// The operations of one node, by token. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Operations {
    inner: Arc<Mutex<HashMap<String, watch::Receiver<Finished>>>>,
    ttl: Duration,
    max: usize,
}

impl Default for Operations {
    fn default() -> Self {
        Self::new(TOKEN_TTL, MAX_OPERATIONS)
    }
}

impl Operations {
    /// A table whose finished tokens expire `ttl` after their operation ends, holding at
    /// most `max` tokens.
    #[must_use]
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self { inner: Arc::default(), ttl, max }
    }

    fn table(&self) -> MutexGuard<'_, HashMap<String, watch::Receiver<Finished>>> {
        // A panic while the lock was held left a consistent map (every change is one call).
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts `operation` in its own task and returns its token.
    ///
    /// # Errors
    /// `RESOURCE_EXHAUSTED` when [`MAX_OPERATIONS`] tokens exist; nothing is started then.
    pub fn start<F>(&self, operation: F) -> Result<String, ServiceError>
    where
        F: Future<Output = OperationResult> + Send + 'static,
    {
        let token = new_token()?;
        let (tx, rx) = watch::channel(None);
        {
            let mut table = self.table();
            let now = Instant::now();
            table.retain(|_, rx| !expired(&rx.borrow(), now, self.ttl));
            if table.len() >= self.max {
                return Err(ServiceError::ResourceExhausted(format!(
                    "{} operations are running or waiting to be awaited on this node, the most allowed; \
                     call Forget on the tokens you no longer need, or wait for them to expire ({} s after they finish)",
                    table.len(),
                    self.ttl.as_secs()
                )));
            }
            table.insert(token.clone(), rx);
        }
        tokio::spawn(async move {
            let outcome = operation.await;
            let _ = tx.send(Some((Instant::now(), outcome)));
        });
        Ok(token)
    }

    /// Waits until the operation of `token` ends, or `deadline`, and returns its outcome.
    ///
    /// # Errors
    /// The operation's own failure; `NOT_FOUND` for a token that is unknown, forgotten or
    /// expired; `DEADLINE_EXCEEDED` when the operation is still running at `deadline`.
    pub async fn wait(&self, token: &str, deadline: Instant) -> OperationResult {
        let rx = {
            let table = self.table();
            table.get(token).filter(|rx| !expired(&rx.borrow(), Instant::now(), self.ttl)).cloned()
        };
        let Some(mut rx) = rx else {
            return Err(ServiceError::NotFound(format!(
                "operation token {token:?} is unknown here: it was never issued by this node, was forgotten, \
                 or expired {} s after its operation finished",
                self.ttl.as_secs()
            ))
            .into());
        };
        match tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some)).await {
            Ok(Ok(finished)) => match &*finished {
                Some((_, outcome)) => outcome.clone(),
                None => Err(ServiceError::Internal("an operation ended without an outcome".into()).into()),
            },
            // The task ended without sending: it panicked.
            Ok(Err(_)) => Err(ServiceError::Internal("the operation failed unexpectedly".into()).into()),
            Err(_) => Err(ServiceError::DeadlineExceeded(format!(
                "operation {token:?} is still running; Await it again to keep waiting"
            ))
            .into()),
        }
    }

    /// Frees `token`. An unknown token is not an error (the call is idempotent).
    pub fn forget(&self, token: &str) {
        self.table().remove(token);
    }

    /// How many tokens exist (expired ones included until the next start).
    #[must_use]
    pub fn len(&self) -> usize {
        self.table().len()
    }

    /// Whether no token exists.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn expired(finished: &Finished, now: Instant, ttl: Duration) -> bool {
    finished.as_ref().is_some_and(|(at, _)| now.saturating_duration_since(*at) >= ttl)
}

fn new_token() -> Result<String, ServiceError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| ServiceError::Internal(format!("no randomness for an operation token: {e}").into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[tokio::test]
    async fn await_returns_the_outcome_until_forgotten() {
        let ops = Operations::default();
        let ok = ops.start(async { Ok(7) }).expect("start");
        let failed = ops.start(async { Err(Status::failed_precondition("no")) }).expect("start");
        assert_ne!(ok, failed);
        assert_eq!(ok.len(), 32);
        assert_eq!(ops.wait(&ok, far()).await.expect("ok"), 7);
        // Awaiting again gives the same answer.
        assert_eq!(ops.wait(&ok, far()).await.expect("ok"), 7);
        let err = ops.wait(&failed, far()).await.expect_err("failed");
        assert_eq!((err.code(), err.message()), (tonic::Code::FailedPrecondition, "no"));
        ops.forget(&ok);
        ops.forget(&ok);
        let err = ops.wait(&ok, far()).await.expect_err("forgotten");
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(err.message().contains("forgotten"), "{}", err.message());
    }

    #[tokio::test(start_paused = true)]
    async fn await_honours_its_deadline_and_can_be_repeated() {
        let ops = Operations::default();
        let token = ops
            .start(async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(1)
            })
            .expect("start");
        let err = ops.wait(&token, Instant::now() + Duration::from_secs(1)).await.expect_err("still running");
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(ops.wait(&token, far()).await.expect("done"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn finished_tokens_expire_without_forget() {
        let ops = Operations::new(Duration::from_secs(60), 4);
        let token = ops.start(async { Ok(3) }).expect("start");
        assert_eq!(ops.wait(&token, far()).await.expect("done"), 3);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(ops.wait(&token, far()).await.expect("not yet expired"), 3);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(ops.wait(&token, far()).await.expect_err("expired").code(), tonic::Code::NotFound);
        // The next start sweeps it out.
        let _ = ops.start(async { Ok(0) }).expect("start");
        assert_eq!(ops.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_is_bounded() {
        let ops = Operations::new(Duration::from_secs(60), 2);
        let slow = || async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(0)
        };
        let a = ops.start(slow()).expect("first");
        let _b = ops.start(slow()).expect("second");
        let err = ops.start(async { Ok(0) }).expect_err("third");
        assert!(matches!(err, ServiceError::ResourceExhausted(_)), "{err}");
        assert!(err.to_string().contains("Forget"), "{err}");
        ops.forget(&a);
        ops.start(async { Ok(0) }).expect("room again");
    }
}
