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

#[cfg(test)]
mod tests {
    use openraft::RaftSnapshotBuilder;
    use openraft::entry::RaftEntry;
    use openraft::storage::RaftStateMachine;
    use types::auth::{AuthCommand, AuthOutcome, AuthRefusal, PasswordHash, ROOT_USER, TokenKey};
    use types::{Command, Entry, LogId, NodeId};

    use crate::StateMachine;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn entry(index: u64, cmd: AuthCommand) -> Entry {
        let leader = openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: NodeId::from(1) };
        Entry::new_normal(LogId::new(leader, index), Command::Auth(cmd))
    }

    async fn apply(sm: &mut StateMachine, entries: Vec<Entry>) -> Result<(), std::io::Error> {
        sm.apply(futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))))).await
    }

    fn user(name: &str) -> AuthCommand {
        AuthCommand::UserAdd { name: name.into(), password: PasswordHash("$argon2id$h".into()) }
    }

    #[tokio::test]
    async fn the_auth_state_is_applied_published_persisted_and_snapshotted() -> TestResult {
        let dir = tempfile::tempdir()?;
        let mut sm = StateMachine::open(&dir.path().join("a"))?;
        let mut seen = sm.subscribe_auth();
        let enable = AuthCommand::Enable { token_key: TokenKey(vec![3; 32]) };
        let db = sm.db();
        let results = sm.apply_batch(&db, &[entry(1, enable.clone()), entry(2, user(ROOT_USER)), entry(3, enable)])?;
        let refused = types::CommandResult::Auth(AuthOutcome::Refused(AuthRefusal::NoRootUser));
        assert_eq!(results[0], refused, "enable without root changes nothing");
        assert_eq!(results[2], types::CommandResult::Auth(AuthOutcome::Done(3)));
        assert!(seen.has_changed()? && seen.borrow_and_update().enabled);
        drop(db);
        apply(&mut sm, vec![entry(4, user("alice"))]).await?;
        let snap = sm.get_snapshot_builder().await.build_snapshot().await?;
        let expected = sm.auth_state();
        drop(sm);
        // Reopened from its database, and installed from the snapshot on another node.
        assert_eq!(StateMachine::open(&dir.path().join("a"))?.auth_state(), expected);
        let mut other = StateMachine::open(&dir.path().join("b"))?;
        other.install_snapshot(&snap.meta, snap.snapshot).await?;
        assert_eq!(other.auth_state(), expected);
        assert!(other.auth_state().users.contains_key("alice") && other.auth_state().revision == 4);
        Ok(())
    }
}
