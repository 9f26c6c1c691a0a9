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

    /// The re-check of a write's permission at its index ([`AuthState::check_write`]),
    /// against the state as the batch's earlier entries left it: the refusal to answer
    /// instead of applying it, if any.
    pub(crate) fn check_write(&self, index: u64, cmd: &types::CheckedWrite) -> Option<types::WriteResult> {
        let refused = match &self.changed {
            Some(state) => state.check_write(cmd),
            None => self.current.borrow().check_write(cmd),
        };
        if refused.is_some() {
            tracing::info!(index, user = ?cmd.user, write = %types::Command::CheckedWrite(cmd.clone()), "write refused at apply: its permission was revoked after it was checked");
        }
        refused
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
    use types::auth::{Access, AuthCommand, AuthOutcome, AuthRefusal, PasswordHash, Permission, ROOT_USER, TokenKey};
    use types::{
        CheckedWrite, Command, CommandResult, Entry, KeyRange, LogId, NodeId, PutOp, WriteCommand, WriteOp,
        WriteOutcome, WriteResult,
    };

    use crate::StateMachine;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn entry(index: u64, cmd: AuthCommand) -> Entry {
        normal(index, Command::Auth(cmd))
    }

    fn normal(index: u64, cmd: Command) -> Entry {
        let leader = openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: NodeId::from(1) };
        Entry::new_normal(LogId::new(leader, index), cmd)
    }

    fn checked_put(index: u64, user: Option<&str>, key: &[u8], request_id: &str) -> Entry {
        let op = WriteOp::Put(PutOp { key: key.to_vec(), value: b"v".to_vec(), expect: None, prev_kv: false });
        let write = WriteCommand { request_id: Some(request_id.into()), op };
        normal(index, Command::CheckedWrite(CheckedWrite { user: user.map(String::from), write }))
    }

    async fn apply(sm: &mut StateMachine, entries: Vec<Entry>) -> Result<(), std::io::Error> {
        sm.apply(futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))))).await
    }

    fn user(name: &str) -> AuthCommand {
        AuthCommand::UserAdd { name: name.into(), password: PasswordHash("$argon2id$h".into()) }
    }

    #[tokio::test]
    async fn a_write_whose_permission_was_revoked_before_its_index_is_refused_and_changes_nothing() -> TestResult {
        let dir = tempfile::tempdir()?;
        let sm = StateMachine::open(dir.path())?;
        let perm = Permission { access: Access::ReadWrite, range: KeyRange::prefix(b"a/") };
        let setup = vec![
            entry(1, user(ROOT_USER)),
            entry(2, user("alice")),
            entry(3, AuthCommand::RoleAdd { name: "rw".into() }),
            entry(4, AuthCommand::RoleGrantPermission { role: "rw".into(), permission: perm.clone() }),
            entry(5, AuthCommand::UserGrantRole { user: "alice".into(), role: "rw".into() }),
            entry(6, AuthCommand::Enable { token_key: TokenKey(vec![3; 32]) }),
        ];
        let db = sm.db();
        sm.apply_batch(&db, &setup)?;
        // Checked by the leader, then the revocation commits first, in the same batch:
        // the write after it is refused, the one before it applies.
        let revoke = AuthCommand::RoleRevokePermission { role: "rw".into(), range: perm.range.clone() };
        let batch = [
            checked_put(7, Some("alice"), b"a/1", "r7"),
            entry(8, revoke),
            checked_put(9, Some("alice"), b"a/2", "r9"),
        ];
        let results = sm.apply_batch(&db, &batch)?;
        assert!(matches!(&results[0], CommandResult::Write(WriteOutcome { result: WriteResult::Put { .. }, .. })));
        let denied = WriteResult::PermissionDenied {
            user: Some("alice".into()),
            range: KeyRange::Key(b"a/2".to_vec()),
            access: Access::Write,
        };
        assert_eq!(results[2], CommandResult::Write(WriteOutcome { index: 9, duplicate: false, result: denied }));
        assert!(sm.get(b"a/1")?.is_some());
        assert_eq!(sm.get(b"a/2")?, None, "the refused write changed nothing");
        // In a later batch too; a write accepted while auth was off is refused now; root
        // and the unchecked entries of older logs still apply.
        let results = sm
            .apply_batch(&db, &[checked_put(10, Some("alice"), b"a/3", "r10"), checked_put(11, None, b"a/4", "r11")])?;
        assert!(
            results.iter().all(|r| matches!(
                r,
                CommandResult::Write(WriteOutcome { result: WriteResult::PermissionDenied { .. }, .. })
            )),
            "{results:?}"
        );
        let old = WriteCommand {
            request_id: None,
            op: WriteOp::Put(PutOp { key: b"a/5".to_vec(), value: vec![], expect: None, prev_kv: false }),
        };
        sm.apply_batch(&db, &[checked_put(12, Some(ROOT_USER), b"a/6", "r12"), normal(13, Command::Write(old))])?;
        assert!(sm.get(b"a/3")?.is_none() && sm.get(b"a/4")?.is_none());
        assert!(sm.get(b"a/5")?.is_some() && sm.get(b"a/6")?.is_some());
        // The refused request id was not remembered: once permitted again, a retry applies.
        sm.apply_batch(&db, &[entry(14, AuthCommand::RoleGrantPermission { role: "rw".into(), permission: perm })])?;
        let results = sm.apply_batch(&db, &[checked_put(15, Some("alice"), b"a/2", "r9")])?;
        assert!(
            matches!(
                &results[0],
                CommandResult::Write(WriteOutcome { index: 15, duplicate: false, result: WriteResult::Put { .. } })
            ),
            "{results:?}"
        );
        assert_eq!(sm.get(b"a/2")?.map(|kv| kv.modify_index), Some(15));
        Ok(())
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
