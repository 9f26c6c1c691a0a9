//! Users, roles and permissions: the authentication state every node keeps, changed only by
//! [`AuthCommand`]s applied from the Raft log, so every node reaches the same state at the
//! same index. Pure data and rules: password hashing and tokens are done above (the
//! service layer), and only the hash and the token key ever reach the log.
//!
//! Part of the stored format (log entries and snapshots): variants and fields are only ever
//! appended.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{CheckedWrite, KeyRange, TxnOp, WriteOp, WriteResult};

/// The role that may do everything (every key, every administrative call), as in etcd.
/// It always exists and holds no explicit permission.
pub const ROOT_ROLE: &str = "root";
/// The user that must exist before authentication can be enabled; enabling gives it
/// [`ROOT_ROLE`].
pub const ROOT_USER: &str = "root";
/// The longest user or role name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// The most permissions one role may hold.
pub const MAX_PERMISSIONS_PER_ROLE: usize = 256;

/// What a permission allows on its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Access {
    /// Get, Range, Watch, blocking reads.
    Read,
    /// Put, Delete, the writes of a Txn.
    Write,
    /// Both.
    ReadWrite,
}

impl Access {
    /// Whether a permission with this access allows `wanted` (`Read` or `Write`).
    #[must_use]
    pub fn allows(self, wanted: Access) -> bool {
        self == Access::ReadWrite || self == wanted
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "readwrite",
        })
    }
}

/// A permission: an access on a key or key range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// What it allows.
    pub access: Access,
    /// On which keys.
    pub range: KeyRange,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.access, RangeDisplay(&self.range))
    }
}

/// A key range as a user reads it: `key "a"`, `prefix "a/"`, `range ["a", "b")`.
#[derive(Debug, Clone, Copy)]
pub struct RangeDisplay<'a>(pub &'a KeyRange);

impl fmt::Display for RangeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match self.0 {
            KeyRange::Key(k) => write!(f, "key {:?}", s(k)),
            KeyRange::Range { start, end } if crate::kv::prefix_end(start) == *end => {
                write!(f, "prefix {:?}", s(start))
            }
            KeyRange::Range { start, end: Some(end) } => write!(f, "range [{:?}, {:?})", s(start), s(end)),
            KeyRange::Range { start, end: None } => write!(f, "every key from {:?} on", s(start)),
        }
    }
}

/// A PHC-format password hash (`$argon2id$...`). Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordHash(pub String);

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

/// The key that signs tokens, replicated so a token issued by one node is valid on every
/// other. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenKey(pub Vec<u8>);

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenKey(<{} bytes redacted>)", self.0.len())
    }
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The hash of its password.
    pub password: PasswordHash,
    /// Its roles.
    pub roles: BTreeSet<String>,
    /// The log index at which the user was created or its password last changed; a token
    /// names it, so a token issued before a password change (or for an earlier user of the
    /// same name) is no longer valid.
    pub generation: u64,
}

/// A role: a set of permissions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Its permissions.
    pub permissions: Vec<Permission>,
}

/// The whole authentication state of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    /// Whether requests must be authenticated.
    pub enabled: bool,
    /// The log index of the last applied change (0: none).
    pub revision: u64,
    /// Users by name.
    pub users: BTreeMap<String, User>,
    /// Roles by name ([`ROOT_ROLE`] is implicit and never stored).
    pub roles: BTreeMap<String, Role>,
    /// The token signing key of the current enablement (none while disabled).
    pub token_key: Option<TokenKey>,
}

/// A change to the authentication state, carried by the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    /// Turn authentication on with a fresh token key (the proposing node draws it).
    Enable {
        /// The key that will sign tokens.
        token_key: TokenKey,
    },
    /// Turn authentication off.
    Disable,
    /// Create a user.
    UserAdd {
        /// Its name.
        name: String,
        /// Its password's hash.
        password: PasswordHash,
    },
    /// Remove a user.
    UserDelete {
        /// Its name.
        name: String,
    },
    /// Change a user's password.
    UserChangePassword {
        /// Its name.
        name: String,
        /// The new password's hash.
        password: PasswordHash,
    },
    /// Give a user a role.
    UserGrantRole {
        /// The user.
        user: String,
        /// The role.
        role: String,
    },
    /// Take a role from a user.
    UserRevokeRole {
        /// The user.
        user: String,
        /// The role.
        role: String,
    },
    /// Create a role.
    RoleAdd {
        /// Its name.
        name: String,
    },
    /// Remove a role (and take it from every user).
    RoleDelete {
        /// Its name.
        name: String,
    },
    /// Give a role a permission.
    RoleGrantPermission {
        /// The role.
        role: String,
        /// The permission.
        permission: Permission,
    },
    /// Take from a role every permission on exactly this range.
    RoleRevokePermission {
        /// The role.
        role: String,
        /// The range.
        range: KeyRange,
    },
}

impl fmt::Display for AuthCommand {
    /// What the command does, without any secret (for logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthCommand::Enable { .. } => f.write_str("auth enable"),
            AuthCommand::Disable => f.write_str("auth disable"),
            AuthCommand::UserAdd { name, .. } => write!(f, "user add {name:?}"),
            AuthCommand::UserDelete { name } => write!(f, "user delete {name:?}"),
            AuthCommand::UserChangePassword { name, .. } => write!(f, "user passwd {name:?}"),
            AuthCommand::UserGrantRole { user, role } => write!(f, "user grant-role {user:?} {role:?}"),
            AuthCommand::UserRevokeRole { user, role } => write!(f, "user revoke-role {user:?} {role:?}"),
            AuthCommand::RoleAdd { name } => write!(f, "role add {name:?}"),
            AuthCommand::RoleDelete { name } => write!(f, "role delete {name:?}"),
            AuthCommand::RoleGrantPermission { role, permission } => {
                write!(f, "role grant-permission {role:?} {permission}")
            }
            AuthCommand::RoleRevokePermission { role, range } => {
                write!(f, "role revoke-permission {role:?} {}", RangeDisplay(range))
            }
        }
    }
}

/// What applying an [`AuthCommand`] answered: the index it took effect at, or why it
/// changed nothing (the same answer on every node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthOutcome {
    /// Applied at this log index.
    Done(u64),
    /// Refused: nothing changed.
    Refused(AuthRefusal),
}

/// Why an auth change was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AuthRefusal {
    /// The user exists already.
    #[error("user {0:?} already exists")]
    UserExists(String),
    /// No such user.
    #[error("user {0:?} does not exist")]
    NoUser(String),
    /// The role exists already.
    #[error("role {0:?} already exists")]
    RoleExists(String),
    /// No such role.
    #[error("role {0:?} does not exist")]
    NoRole(String),
    /// The user does not have the role.
    #[error("user {user:?} does not have role {role:?}")]
    NotGranted {
        /// The user.
        user: String,
        /// The role.
        role: String,
    },
    /// The role has no permission on that range.
    #[error("role {role:?} has no permission on {range}")]
    NoPermission {
        /// The role.
        role: String,
        /// The range, as displayed.
        range: String,
    },
    /// Enable without a root user.
    #[error("authentication cannot be enabled: user \"root\" does not exist; add it first (user add root)")]
    NoRootUser,
    /// The root user or role may not be removed while authentication is on.
    #[error("{0} cannot be removed or lose the root role while authentication is enabled; disable it first")]
    RootInUse(String),
    /// The built-in root role cannot be changed.
    #[error("the root role is built in: it cannot be added, deleted or given permissions")]
    RootRoleFixed,
    /// Too many permissions.
    #[error("role {0:?} already holds {MAX_PERMISSIONS_PER_ROLE} permissions (MAX_PERMISSIONS_PER_ROLE)")]
    TooManyPermissions(String),
}

impl AuthState {
    /// Applies `cmd` at log index `index`. Deterministic: every node gets the same answer.
    pub fn apply(&mut self, index: u64, cmd: &AuthCommand) -> AuthOutcome {
        match self.change(index, cmd) {
            Ok(()) => {
                self.revision = index;
                AuthOutcome::Done(index)
            }
            Err(r) => AuthOutcome::Refused(r),
        }
    }

    fn change(&mut self, index: u64, cmd: &AuthCommand) -> Result<(), AuthRefusal> {
        match cmd {
            AuthCommand::Enable { token_key } => {
                let root = self.users.get_mut(ROOT_USER).ok_or(AuthRefusal::NoRootUser)?;
                root.roles.insert(ROOT_ROLE.to_string());
                self.enabled = true;
                self.token_key = Some(token_key.clone());
            }
            AuthCommand::Disable => {
                self.enabled = false;
                self.token_key = None;
            }
            AuthCommand::UserAdd { name, password } => {
                if self.users.contains_key(name) {
                    return Err(AuthRefusal::UserExists(name.clone()));
                }
                let user = User { password: password.clone(), roles: BTreeSet::new(), generation: index };
                self.users.insert(name.clone(), user);
            }
            AuthCommand::UserDelete { name } => {
                if self.enabled && name == ROOT_USER {
                    return Err(AuthRefusal::RootInUse("user \"root\"".into()));
                }
                self.users.remove(name).ok_or_else(|| AuthRefusal::NoUser(name.clone()))?;
            }
            AuthCommand::UserChangePassword { name, password } => {
                let user = self.users.get_mut(name).ok_or_else(|| AuthRefusal::NoUser(name.clone()))?;
                user.password = password.clone();
                user.generation = index;
            }
            AuthCommand::UserGrantRole { user, role } => {
                if role != ROOT_ROLE && !self.roles.contains_key(role) {
                    return Err(AuthRefusal::NoRole(role.clone()));
                }
                let u = self.users.get_mut(user).ok_or_else(|| AuthRefusal::NoUser(user.clone()))?;
                u.roles.insert(role.clone());
            }
            AuthCommand::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT_USER && role == ROOT_ROLE {
                    return Err(AuthRefusal::RootInUse("user \"root\"".into()));
                }
                let u = self.users.get_mut(user).ok_or_else(|| AuthRefusal::NoUser(user.clone()))?;
                if !u.roles.remove(role) {
                    return Err(AuthRefusal::NotGranted { user: user.clone(), role: role.clone() });
                }
            }
            AuthCommand::RoleAdd { name } => {
                if name == ROOT_ROLE {
                    return Err(AuthRefusal::RootRoleFixed);
                }
                if self.roles.contains_key(name) {
                    return Err(AuthRefusal::RoleExists(name.clone()));
                }
                self.roles.insert(name.clone(), Role::default());
            }
            AuthCommand::RoleDelete { name } => {
                if name == ROOT_ROLE {
                    return Err(AuthRefusal::RootRoleFixed);
                }
                self.roles.remove(name).ok_or_else(|| AuthRefusal::NoRole(name.clone()))?;
                for user in self.users.values_mut() {
                    user.roles.remove(name);
                }
            }
            AuthCommand::RoleGrantPermission { role, permission } => {
                if role == ROOT_ROLE {
                    return Err(AuthRefusal::RootRoleFixed);
                }
                let r = self.roles.get_mut(role).ok_or_else(|| AuthRefusal::NoRole(role.clone()))?;
                if !r.permissions.contains(permission) {
                    if r.permissions.len() >= MAX_PERMISSIONS_PER_ROLE {
                        return Err(AuthRefusal::TooManyPermissions(role.clone()));
                    }
                    r.permissions.push(permission.clone());
                }
            }
            AuthCommand::RoleRevokePermission { role, range } => {
                let r = self.roles.get_mut(role).ok_or_else(|| AuthRefusal::NoRole(role.clone()))?;
                let before = r.permissions.len();
                r.permissions.retain(|p| p.range != *range);
                if r.permissions.len() == before {
                    let range = RangeDisplay(range).to_string();
                    return Err(AuthRefusal::NoPermission { role: role.clone(), range });
                }
            }
        }
        Ok(())
    }

    /// Whether `user` holds the root role.
    #[must_use]
    pub fn is_root(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(ROOT_ROLE))
    }

    /// Whether `user` may access every key of `range` with `wanted` (`Read` or `Write`):
    /// the root role may; otherwise one permission of one of its roles must cover the whole
    /// range. `Err` carries what the user's roles do grant, for the refusal's message.
    pub fn check(&self, user: &str, range: &KeyRange, wanted: Access) -> Result<(), Vec<String>> {
        let Some(u) = self.users.get(user) else { return Err(Vec::new()) };
        if u.roles.contains(ROOT_ROLE) {
            return Ok(());
        }
        let perms = u.roles.iter().filter_map(|r| self.roles.get(r).map(|role| (r, role)));
        let mut granted = Vec::new();
        for (name, role) in perms {
            for p in &role.permissions {
                if p.access.allows(wanted) && covers(&p.range, range) {
                    return Ok(());
                }
                granted.push(format!("{p} (role {name:?})"));
            }
        }
        Err(granted)
    }
}

/// The key ranges a write touches and the access each needs: a put's key and a delete's
/// range (write); a transaction's compares and reads (read) and its puts and deletes
/// (write), in both branches. The leader checks these before it proposes the write, and the
/// state machine again when it applies it ([`AuthState::check_write`]).
#[must_use]
pub fn write_ranges(op: &WriteOp) -> Vec<(KeyRange, Access)> {
    match op {
        WriteOp::Put(p) => vec![(KeyRange::Key(p.key.clone()), Access::Write)],
        WriteOp::Delete(d) => vec![(d.range.clone(), Access::Write)],
        WriteOp::Txn(txn) => {
            let compares = txn.compares.iter().map(|c| (KeyRange::Key(c.key.clone()), Access::Read));
            let ops = txn.success.iter().chain(&txn.failure).map(|op| match op {
                TxnOp::Put(p) => (KeyRange::Key(p.key.clone()), Access::Write),
                TxnOp::Delete(d) => (d.range.clone(), Access::Write),
                TxnOp::Range(r) => (r.range.clone(), Access::Read),
            });
            compares.chain(ops).collect()
        }
    }
}

impl AuthState {
    /// The check of a [`CheckedWrite`] when it is applied: with authentication off,
    /// anything goes; with it on, the write's user must still exist and hold every
    /// permission the write needs ([`write_ranges`]), else the answer is the
    /// [`WriteResult::PermissionDenied`] to apply instead of the write (nothing changes).
    /// Deterministic: every node gets the same answer at the same index.
    #[must_use]
    pub fn check_write(&self, cmd: &CheckedWrite) -> Option<WriteResult> {
        if !self.enabled {
            return None;
        }
        let ranges = write_ranges(&cmd.write.op);
        let refused = match &cmd.user {
            None => ranges.into_iter().next(),
            Some(user) => ranges.into_iter().find(|(range, access)| self.check(user, range, *access).is_err()),
        };
        refused.map(|(range, access)| WriteResult::PermissionDenied { user: cmd.user.clone(), range, access })
    }
}

/// Whether every key of `inner` is in `outer`.
#[must_use]
pub fn covers(outer: &KeyRange, inner: &KeyRange) -> bool {
    match inner {
        KeyRange::Key(k) => outer.contains(k),
        KeyRange::Range { start, end } => match outer {
            // A range holds exactly one key when its end is that key followed by a zero byte.
            KeyRange::Key(k) => start == k && end.as_deref() == Some([k.as_slice(), &[0]].concat().as_slice()),
            KeyRange::Range { start: os, end: oe } => {
                start >= os
                    && match (oe, end) {
                        (None, _) => true,
                        (Some(_), None) => false,
                        (Some(oe), Some(e)) => e <= oe,
                    }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash() -> PasswordHash {
        PasswordHash("$argon2id$fake".into())
    }

    fn state_with(user: &str, perm: Permission) -> AuthState {
        let mut s = AuthState::default();
        assert_eq!(s.apply(1, &AuthCommand::UserAdd { name: user.into(), password: hash() }), AuthOutcome::Done(1));
        assert_eq!(s.apply(2, &AuthCommand::RoleAdd { name: "r".into() }), AuthOutcome::Done(2));
        let grant = AuthCommand::RoleGrantPermission { role: "r".into(), permission: perm };
        assert_eq!(s.apply(3, &grant), AuthOutcome::Done(3));
        let cmd = AuthCommand::UserGrantRole { user: user.into(), role: "r".into() };
        assert_eq!(s.apply(4, &cmd), AuthOutcome::Done(4));
        s
    }

    #[test]
    fn a_prefix_permission_covers_its_keys_and_subprefixes_only() {
        let s = state_with("alice", Permission { access: Access::Read, range: KeyRange::prefix(b"a/") });
        assert!(s.check("alice", &KeyRange::Key(b"a/x".to_vec()), Access::Read).is_ok());
        assert!(s.check("alice", &KeyRange::prefix(b"a/b"), Access::Read).is_ok());
        assert!(s.check("alice", &KeyRange::prefix(b"a/"), Access::Read).is_ok());
        assert!(s.check("alice", &KeyRange::prefix(b"a"), Access::Read).is_err());
        assert!(s.check("alice", &KeyRange::Key(b"b".to_vec()), Access::Read).is_err());
        let denied = s.check("alice", &KeyRange::Key(b"a/x".to_vec()), Access::Write);
        assert_eq!(denied, Err(vec!["read on prefix \"a/\" (role \"r\")".to_string()]));
        assert!(s.check("bob", &KeyRange::Key(b"a/x".to_vec()), Access::Read).is_err());
    }

    #[test]
    fn readwrite_allows_both_and_a_key_permission_covers_its_one_key_range() {
        let s = state_with("u", Permission { access: Access::ReadWrite, range: KeyRange::Key(b"k".to_vec()) });
        assert!(s.check("u", &KeyRange::Key(b"k".to_vec()), Access::Write).is_ok());
        let one = KeyRange::Range { start: b"k".to_vec(), end: Some(b"k\0".to_vec()) };
        assert!(s.check("u", &one, Access::Read).is_ok());
        assert!(s.check("u", &KeyRange::prefix(b"k"), Access::Read).is_err());
    }

    #[test]
    fn enable_needs_root_and_gives_it_the_root_role() {
        let mut s = AuthState::default();
        let enable = AuthCommand::Enable { token_key: TokenKey(vec![7; 32]) };
        assert_eq!(s.apply(1, &enable), AuthOutcome::Refused(AuthRefusal::NoRootUser));
        assert!(!s.enabled);
        s.apply(2, &AuthCommand::UserAdd { name: ROOT_USER.into(), password: hash() });
        assert_eq!(s.apply(3, &enable), AuthOutcome::Done(3));
        assert!(s.enabled && s.is_root(ROOT_USER) && s.revision == 3);
        let del = AuthCommand::UserDelete { name: ROOT_USER.into() };
        assert!(matches!(s.apply(4, &del), AuthOutcome::Refused(AuthRefusal::RootInUse(_))));
        assert!(s.check(ROOT_USER, &KeyRange::prefix(b""), Access::Write).is_ok());
    }

    #[test]
    fn revoking_and_deleting_roles_take_the_permission_away() {
        let perm = Permission { access: Access::Read, range: KeyRange::prefix(b"a/") };
        let mut s = state_with("u", perm.clone());
        let revoke = AuthCommand::RoleRevokePermission { role: "r".into(), range: perm.range.clone() };
        assert_eq!(s.apply(5, &revoke), AuthOutcome::Done(5));
        assert!(s.check("u", &KeyRange::Key(b"a/x".to_vec()), Access::Read).is_err());
        assert!(matches!(s.apply(6, &revoke), AuthOutcome::Refused(AuthRefusal::NoPermission { .. })));
        assert_eq!(s.apply(7, &AuthCommand::RoleDelete { name: "r".into() }), AuthOutcome::Done(7));
        assert!(s.users["u"].roles.is_empty());
    }

    #[test]
    fn a_checked_write_is_refused_once_its_permission_is_gone_or_auth_came_on_without_a_user() {
        let perm = Permission { access: Access::ReadWrite, range: KeyRange::prefix(b"a/") };
        let mut s = state_with("u", perm.clone());
        let put = |user: Option<&str>, key: &[u8]| CheckedWrite {
            user: user.map(String::from),
            write: crate::WriteCommand {
                request_id: None,
                op: WriteOp::Put(crate::PutOp { key: key.to_vec(), value: vec![], expect: None, prev_kv: false }),
            },
        };
        // Off: anything goes, with or without a user.
        assert_eq!(s.check_write(&put(None, b"b")), None);
        s.apply(5, &AuthCommand::UserAdd { name: ROOT_USER.into(), password: hash() });
        s.apply(6, &AuthCommand::Enable { token_key: TokenKey(vec![1; 32]) });
        assert_eq!(s.check_write(&put(Some("u"), b"a/1")), None);
        assert_eq!(s.check_write(&put(Some(ROOT_USER), b"z")), None);
        let denied = |user: Option<&str>, key: &[u8]| {
            Some(WriteResult::PermissionDenied {
                user: user.map(String::from),
                range: KeyRange::Key(key.to_vec()),
                access: Access::Write,
            })
        };
        assert_eq!(s.check_write(&put(Some("u"), b"b")), denied(Some("u"), b"b"));
        assert_eq!(s.check_write(&put(None, b"a/1")), denied(None, b"a/1"), "accepted while auth was off");
        s.apply(7, &AuthCommand::RoleRevokePermission { role: "r".into(), range: perm.range });
        assert_eq!(s.check_write(&put(Some("u"), b"a/1")), denied(Some("u"), b"a/1"));
        s.apply(8, &AuthCommand::UserDelete { name: "u".into() });
        assert_eq!(s.check_write(&put(Some("u"), b"a/1")), denied(Some("u"), b"a/1"));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let mut s = AuthState::default();
        s.apply(1, &AuthCommand::UserAdd { name: "u".into(), password: PasswordHash("$argon2id$SECRET".into()) });
        s.apply(2, &AuthCommand::UserAdd { name: ROOT_USER.into(), password: hash() });
        s.apply(3, &AuthCommand::Enable { token_key: TokenKey(b"KEYMATERIAL".to_vec()) });
        let shown = format!("{s:?}");
        assert!(!shown.contains("SECRET") && !shown.contains("KEYMATERIAL"), "{shown}");
        let cmd = AuthCommand::Enable { token_key: TokenKey(b"KEYMATERIAL".to_vec()) };
        assert!(!format!("{cmd:?} {cmd}").contains("KEYMATERIAL"));
    }
}
