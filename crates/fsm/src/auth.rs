//! The authentication state as the state machine keeps it: one encoded
//! [`AuthState`] under the key `auth` of `sm_meta`, written in the apply transaction of the
//! batch that changed it, carried in snapshots (record tag 4), and published to readers on
//! a tokio `watch` channel once that transaction has committed, before the batch's changes
//! reach any watcher: a watch stream that sees an event after a revocation has already been
//! able to see the revocation.

use std::sync::Arc;

use redb::{ReadableTable, WriteTransaction};
use tokio::sync::watch;
use types::auth::{AuthCommand, AuthOutcome, AuthState};
use types::codec;

use crate::Error;
use crate::store::META;

/// The key of the encoded [`AuthState`] in `sm_meta`.
pub(crate) const META_AUTH: &str = "auth";

/// Reads the stored state (the default, disabled and empty, when there is none).
pub(crate) fn read(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<AuthState, Error> {
    match meta.get(META_AUTH)? {
        Some(v) => Ok(codec::decode(v.value())?),
        None => Ok(AuthState::default()),
    }
}

/// Writes `state` in `txn`.
pub(crate) fn write(txn: &WriteTransaction, state: &AuthState) -> Result<(), Error> {
    let mut meta = txn.open_table(META)?;
    meta.insert(META_AUTH, codec::encode(state)?.as_slice())?;
    Ok(())
}

/// Checks an encoded state read from a snapshot.
pub(crate) fn check_encoded(body: &[u8]) -> Result<(), Error> {
    let _: AuthState = codec::decode(body).map_err(|e| Error::CorruptSnapshot(format!("auth state: {e}")))?;
    Ok(())
}

/// The auth changes of one apply batch: the state they start from is copied only when the
/// batch holds one.
pub(crate) struct BatchAuth<'a> {
    current: &'a watch::Sender<Arc<AuthState>>,
    changed: Option<AuthState>,
}

impl<'a> BatchAuth<'a> {
    pub(crate) fn new(current: &'a watch::Sender<Arc<AuthState>>) -> Self {
        Self { current, changed: None }
    }

    /// Applies one command at `index`.
    pub(crate) fn apply(&mut self, index: u64, cmd: &AuthCommand) -> AuthOutcome {
        let state = self.changed.get_or_insert_with(|| self.current.borrow().as_ref().clone());
        let outcome = state.apply(index, cmd);
        match &outcome {
            AuthOutcome::Done(_) => tracing::info!(index, change = %cmd, "auth change applied"),
            AuthOutcome::Refused(why) => tracing::info!(index, change = %cmd, reason = %why, "auth change refused"),
        }
        outcome
    }

    /// Writes the new state in the batch's transaction, if it changed.
    pub(crate) fn write(&self, txn: &WriteTransaction) -> Result<(), Error> {
        match &self.changed {
            Some(state) => write(txn, state),
            None => Ok(()),
        }
    }

    /// Publishes the new state, once the transaction has committed.
    pub(crate) fn publish(self) {
        if let Some(state) = self.changed {
            self.current.send_replace(Arc::new(state));
        }
    }
}
