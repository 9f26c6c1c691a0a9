//! Authentication and permissions on the client port, in one place.
//!
//! - [`AuthGuard`] wraps every service of the client port (but health and reflection): when
//!   authentication is on, a call must carry a valid token in the `authorization` metadata
//!   (`Bearer <token>`), except `Auth.Authenticate`; every call outside `raftkv.v1.KV` (the
//!   Admin API, the Auth changes, the compat services `Example`, `RaftAdmin`, `RaftManager`)
//!   also needs the `root` role. Another protocol's services take their own
//!   [`GuardRule`] ([`AuthGuard::with_rule`]): etcd's API reads etcd's `token` metadata and
//!   answers etcd's refusals (`etcd_api::guard_rule`), over the same users and tokens.
//! - [`authorize`]: the KV service's per-request check of the key range against the
//!   caller's roles; [`WatchPermit`] repeats it on an open watch each time the auth state
//!   changes, and ends the stream with `PERMISSION_DENIED` once the permission is gone.
//! - Tokens ([`issue_token`], [`verify_token`]): HMAC-SHA256 over the user name, the expiry
//!   and the user's generation, keyed by the token key that `auth enable` drew and the Raft
//!   log replicated; so a token issued by one node is valid on every node that has applied
//!   that enablement, is compared in constant time, expires after the issuing node's
//!   `--auth-token-ttl` ([`TOKEN_TTL`] by default), and stops
//!   being valid when the user is deleted, its password changes, or auth is disabled.
//! - Passwords ([`hash_password`], [`verify_password`]): Argon2id (default parameters) with
//!   a random salt; only the hash is proposed to the log.
//!
//! Every check reads the state as applied on the node that serves the request; a forwarded
//! write carries the caller's token to the leader, which checks it again. No password,
//! token, hash or key is ever logged or put in an error message.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, PasswordHash as PhcHash};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fsm::StateMachine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::watch;
use tonic::codegen::http;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use types::KeyRange;
use types::auth::{Access, AuthState, PasswordHash, RangeDisplay, TokenKey};

use crate::ServiceError;

/// How long a token stays valid after it is issued, by default (etcd's `--auth-token-ttl`
/// default); a node's `--auth-token-ttl` sets it, from [`MIN_TOKEN_TTL`] to [`MAX_TOKEN_TTL`].
pub const TOKEN_TTL: Duration = Duration::from_secs(300);
/// The shortest `--auth-token-ttl` accepted (tokens carry whole seconds).
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(1);
/// The longest `--auth-token-ttl` accepted: a day (a stolen token should not last longer).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);
pub use rpc::metadata::AUTHORIZATION_HEADER;
/// The length of a token key, in bytes.
pub const TOKEN_KEY_BYTES: usize = 32;
/// The longest password accepted, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// The longest token accepted, in bytes (a real one is far shorter).
pub const MAX_TOKEN_BYTES: usize = 1024;
/// The only call allowed without a token when authentication is on.
const AUTHENTICATE_PATH: &str = "/raftkv.auth.v1.Auth/Authenticate";
/// Calls under this prefix need a token but no role: their key ranges are checked by the
/// KV service itself.
const KV_PREFIX: &str = "/raftkv.v1.KV/";
/// What a token's MAC covers first, so a MAC made for anything else never matches.
const TOKEN_DOMAIN: &[u8] = b"raftkv-token-v1\n";

type HmacSha256 = Hmac<Sha256>;

/// Whether a user was authenticated, as a request's check found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off: everything is allowed.
    Anyone,
    /// This user, with a valid token.
    User(String),
}

/// Draws a fresh token key.
pub fn new_token_key() -> Result<TokenKey, ServiceError> {
    let mut key = vec![0u8; TOKEN_KEY_BYTES];
    getrandom::fill(&mut key).map_err(|e| ServiceError::Internal(format!("drawing a token key: {e}").into()))?;
    Ok(TokenKey(key))
}

/// Hashes `password` with Argon2id and a random salt. CPU-heavy: call it off the runtime's
/// worker threads.
pub fn hash_password(password: &str) -> Result<PasswordHash, ServiceError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| ServiceError::Internal(format!("drawing a salt: {e}").into()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| ServiceError::Internal(format!("salt: {e}").into()))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| ServiceError::Internal(format!("hashing a password: {e}").into()))?;
    Ok(PasswordHash(hash.to_string()))
}

/// Whether `password` matches `hash` (Argon2's own comparison is constant-time).
#[must_use]
pub fn verify_password(password: &str, hash: &PasswordHash) -> bool {
    PhcHash::new(&hash.0).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

fn now_millis() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

fn mac(key: &TokenKey, payload: &[u8]) -> Result<HmacSha256, ServiceError> {
    let mut mac = HmacSha256::new_from_slice(&key.0)
        .map_err(|e| ServiceError::Internal(format!("the token key is unusable: {e}").into()))?;
    mac.update(TOKEN_DOMAIN);
    mac.update(payload);
    Ok(mac)
}

/// Issues a token for `user` (who exists in `state`, with auth on), valid for `ttl` (whole
/// seconds; the node's `--auth-token-ttl`, [`TOKEN_TTL`] by default).
pub fn issue_token(state: &AuthState, user: &str, ttl: Duration) -> Result<String, ServiceError> {
    let (Some(key), Some(u)) = (state.token_key.as_ref(), state.users.get(user)) else {
        return Err(ServiceError::FailedPrecondition("authentication is not enabled".into()));
    };
    // Whole seconds, rounded up: a token lasts at least `ttl` (and less than a second more).
    let expiry = (now_millis() + ttl.as_millis()).div_ceil(1000);
    let payload = format!("{user}\n{expiry}\n{}", u.generation);
    let tag = mac(key, payload.as_bytes())?.finalize().into_bytes();
    Ok(format!("{}.{}", URL_SAFE_NO_PAD.encode(payload), URL_SAFE_NO_PAD.encode(tag)))
}

/// Why a token was refused (never the token itself).
fn invalid(why: &str) -> ServiceError {
    ServiceError::Unauthenticated(format!(
        "invalid auth token: {why}; authenticate again (raftkvctl --user NAME, or Auth.Authenticate) and send the new token as `authorization: Bearer <token>`"
    ))
}

/// Checks `token` against `state`: signed with the current key (compared in constant time),
/// not expired, and naming an existing user at its current generation. Returns the user.
pub fn verify_token(state: &AuthState, token: &str) -> Result<String, ServiceError> {
    let key = state.token_key.as_ref().ok_or_else(|| invalid("authentication is not enabled"))?;
    if token.len() > MAX_TOKEN_BYTES {
        return Err(invalid(&format!("it is longer than {MAX_TOKEN_BYTES} bytes (MAX_TOKEN_BYTES)")));
    }
    let (payload, tag) = token.split_once('.').ok_or_else(|| invalid("it is malformed"))?;
    let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| invalid("it is malformed"))?;
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| invalid("it is malformed"))?;
    mac(key, &payload)?
        .verify_slice(&tag)
        .map_err(|_| invalid("it was not issued by this cluster since authentication was last enabled"))?;
    let payload = String::from_utf8(payload).map_err(|_| invalid("it is malformed"))?;
    let mut parts = payload.split('\n');
    let (Some(user), Some(expiry), Some(generation), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("it is malformed"));
    };
    let expiry: u128 = expiry.parse().map_err(|_| invalid("it is malformed"))?;
    if expiry.saturating_mul(1000) <= now_millis() {
        return Err(invalid("it has expired (tokens last the issuing node's --auth-token-ttl, 300 s by default)"));
    }
    match state.users.get(user) {
        Some(u) if generation.parse() == Ok(u.generation) => Ok(user.to_string()),
        Some(_) => Err(invalid(&format!("the password of user {user:?} has changed since it was issued"))),
        None => Err(invalid(&format!("user {user:?} no longer exists"))),
    }
}

/// Who is calling, from the `authorization` value (`Bearer <token>`, or the bare token).
pub fn identify(state: &AuthState, authorization: Option<&[u8]>) -> Result<Caller, ServiceError> {
    if !state.enabled {
        return Ok(Caller::Anyone);
    }
    let Some(value) = authorization else {
        return Err(ServiceError::Unauthenticated(
            "no credentials: authentication is enabled on this cluster; authenticate (raftkvctl --user NAME, or Auth.Authenticate) and send the token as `authorization: Bearer <token>`".into(),
        ));
    };
    let value = std::str::from_utf8(value).map_err(|_| invalid("it is not text"))?;
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).unwrap_or(value).trim();
    verify_token(state, token).map(Caller::User)
}

/// The refusal of `user`, who may not `wanted` `range`.
fn denied(state: &AuthState, user: &str, range: &KeyRange, wanted: Access) -> Result<(), ServiceError> {
    match state.check(user, range, wanted) {
        Ok(()) => Ok(()),
        Err(granted) => {
            let granted = if granted.is_empty() { "nothing".to_string() } else { granted.join(", ") };
            Err(ServiceError::PermissionDenied(format!(
                "permission denied: user {user:?} has no {wanted} permission on {}; its roles grant {granted}; a root user can grant one (raftkvctl role grant-permission)",
                RangeDisplay(range)
            )))
        }
    }
}

/// The refusal of a write whose permission was gone when it was applied at `index` (it
/// was checked before it was proposed; [`AuthState::check_write`]): nothing changed.
pub(crate) fn denied_at_apply(index: u64, user: Option<&str>, range: &KeyRange, wanted: Access) -> ServiceError {
    let who = match user {
        Some(user) => format!("user {user:?} no longer has {wanted} permission on {}", RangeDisplay(range)),
        None => "authentication was enabled after the write was accepted without credentials".to_string(),
    };
    ServiceError::PermissionDenied(format!(
        "permission denied when the write was applied at index {index}: {who}; nothing was written; authenticate as a user with that permission (a root user can grant one: raftkvctl role grant-permission)"
    ))
}

/// The KV service's check: the caller (from `md`) may access every key of `range` with
/// `wanted`, or the call is refused with `UNAUTHENTICATED` or `PERMISSION_DENIED`.
pub fn authorize(sm: &StateMachine, md: &MetadataMap, ranges: &[(KeyRange, Access)]) -> Result<Caller, ServiceError> {
    let state = sm.auth_state();
    let caller = identify(&state, md.get(AUTHORIZATION_HEADER).map(|v| v.as_bytes()))?;
    if let Caller::User(user) = &caller {
        for (range, wanted) in ranges {
            denied(&state, user, range, *wanted)?;
        }
    }
    Ok(caller)
}

/// The check of a whole call at the edge ([`AuthGuard`]): Authenticate is open; KV needs a
/// valid token; everything else also the root role.
fn gate(state: &AuthState, path: &str, authorization: Option<&[u8]>) -> Result<(), ServiceError> {
    if !state.enabled || path == AUTHENTICATE_PATH {
        return Ok(());
    }
    let Caller::User(user) = identify(state, authorization)? else { return Ok(()) };
    if path.starts_with(KV_PREFIX) || state.is_root(&user) {
        return Ok(());
    }
    let method = path.trim_start_matches('/');
    Err(ServiceError::PermissionDenied(format!(
        "permission denied: {method} needs the root role, which user {user:?} does not have; a root user can grant it (raftkvctl user grant-role {user} root)"
    )))
}

/// The check [`AuthGuard`] makes of a call, before the service sees it: whether a call to
/// the method `path` with the request `headers` may go on under the auth state, else the
/// status to answer. It may rewrite the headers (etcd's rule hands etcd's `token` on as
/// `authorization`, where every layer below looks for the credentials).
pub type GuardRule = fn(&AuthState, &str, &mut http::HeaderMap) -> Result<(), tonic::Status>;

/// raftkv's own rule ([`gate`]): Authenticate is open; KV needs a valid token; everything
/// else also the root role.
fn raftkv_rule(state: &AuthState, path: &str, headers: &mut http::HeaderMap) -> Result<(), tonic::Status> {
    let authorization = headers.get(AUTHORIZATION_HEADER).map(http::HeaderValue::as_bytes);
    gate(state, path, authorization).map_err(tonic::Status::from)
}

/// A service of the client port behind the authentication check (see the module docs).
#[derive(Debug, Clone)]
pub struct AuthGuard<S> {
    inner: S,
    auth: watch::Receiver<Arc<AuthState>>,
    rule: GuardRule,
}

impl<S> AuthGuard<S> {
    /// `inner`, checked against the auth state of `sm` by raftkv's rule (see the module docs).
    pub fn new(sm: &StateMachine, inner: S) -> Self {
        Self::with_rule(sm, inner, raftkv_rule)
    }

    /// `inner`, checked against the auth state of `sm` by `rule` (another protocol's, as the
    /// etcd API's, whose clients send their credentials and expect their refusals otherwise).
    pub fn with_rule(sm: &StateMachine, inner: S, rule: GuardRule) -> Self {
        Self { inner, auth: sm.subscribe_auth(), rule }
    }
}

impl<S: NamedService> NamedService for AuthGuard<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for AuthGuard<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let checked = {
            let state = self.auth.borrow();
            (self.rule)(&state, parts.uri.path(), &mut parts.headers)
        };
        match checked {
            Ok(()) => Box::pin(self.inner.call(http::Request::from_parts(parts, body))),
            Err(status) => {
                tracing::debug!(path = parts.uri.path(), reason = status.message(), "call refused by authentication");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// The permission an open watch holds: re-checked each time the auth state changes.
#[derive(Debug)]
pub struct WatchPermit {
    auth: watch::Receiver<Arc<AuthState>>,
    user: String,
    range: KeyRange,
    /// [`WatchPermit::changed`] saw a change not checked yet.
    stale: bool,
}

impl WatchPermit {
    /// The permit of a watch of `range` opened by `caller`; none when auth is off (a watch
    /// opened then is not ended by a later `auth enable`, as etcd's).
    #[must_use]
    pub fn new(sm: &StateMachine, caller: Caller, range: &KeyRange) -> Option<Self> {
        match caller {
            Caller::Anyone => None,
            Caller::User(user) => {
                let mut auth = sm.subscribe_auth();
                auth.mark_unchanged();
                Some(Self { auth, user, range: range.clone(), stale: false })
            }
        }
    }

    /// The refusal, if the auth state changed since the last look and no longer allows the
    /// watch.
    pub fn recheck(&mut self) -> Result<(), ServiceError> {
        if !self.stale && !self.auth.has_changed().unwrap_or(false) {
            return Ok(());
        }
        self.stale = false;
        let state = self.auth.borrow_and_update().clone();
        self.allowed(&state)
    }

    fn allowed(&self, state: &AuthState) -> Result<(), ServiceError> {
        if !state.enabled {
            return Ok(());
        }
        if !state.users.contains_key(&self.user) {
            return Err(ServiceError::PermissionDenied(format!(
                "permission denied: user {:?} was deleted; the watch is closed",
                self.user
            )));
        }
        denied(state, &self.user, &self.range, Access::Read)
    }

    /// Waits until the auth state changes (never, once its publisher is gone).
    pub async fn changed(&mut self) {
        if self.auth.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.stale = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use types::auth::{AuthCommand, Permission, ROOT_USER};

    fn enabled(password_hash: PasswordHash) -> AuthState {
        let mut s = AuthState::default();
        s.apply(1, &AuthCommand::UserAdd { name: ROOT_USER.into(), password: password_hash.clone() });
        s.apply(2, &AuthCommand::UserAdd { name: "alice".into(), password: password_hash });
        s.apply(3, &AuthCommand::RoleAdd { name: "a".into() });
        let permission = Permission { access: Access::ReadWrite, range: KeyRange::prefix(b"a/") };
        s.apply(4, &AuthCommand::RoleGrantPermission { role: "a".into(), permission });
        s.apply(5, &AuthCommand::UserGrantRole { user: "alice".into(), role: "a".into() });
        s.apply(6, &AuthCommand::Enable { token_key: TokenKey(vec![9; TOKEN_KEY_BYTES]) });
        s
    }

    #[test]
    fn passwords_hash_and_verify() -> Result<(), ServiceError> {
        let h = hash_password("s3cret")?;
        assert!(h.0.starts_with("$argon2id$") && !h.0.contains("s3cret"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("s3cres", &h));
        assert!(!verify_password("s3cret", &PasswordHash("garbage".into())));
        Ok(())
    }

    #[test]
    fn a_token_is_valid_until_the_user_or_key_changes() -> Result<(), ServiceError> {
        let mut s = enabled(PasswordHash("$argon2id$x".into()));
        let token = issue_token(&s, "alice", TOKEN_TTL)?;
        assert_eq!(verify_token(&s, &token)?, "alice");
        // A one-second token is valid at once (its expiry is rounded up, never down).
        assert_eq!(verify_token(&s, &issue_token(&s, "alice", MIN_TOKEN_TTL)?)?, "alice");
        assert_eq!(identify(&s, Some(format!("Bearer {token}").as_bytes()))?, Caller::User("alice".into()));
        // Tampered: another user name under the same MAC.
        let (payload, tag) = token.split_once('.').unwrap_or_default();
        let forged_payload = URL_SAFE_NO_PAD.encode(
            String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap_or_default())
                .unwrap_or_default()
                .replace("alice", "root"),
        );
        let forged = format!("{forged_payload}.{tag}");
        assert!(matches!(verify_token(&s, &forged), Err(ServiceError::Unauthenticated(m)) if m.contains("not issued")));
        s.apply(7, &AuthCommand::UserChangePassword { name: "alice".into(), password: PasswordHash("y".into()) });
        assert!(matches!(verify_token(&s, &token), Err(ServiceError::Unauthenticated(m)) if m.contains("changed")));
        let token = issue_token(&s, "alice", TOKEN_TTL)?;
        s.apply(8, &AuthCommand::Disable);
        s.apply(9, &AuthCommand::Enable { token_key: TokenKey(vec![1; TOKEN_KEY_BYTES]) });
        assert!(verify_token(&s, &token).is_err());
        Ok(())
    }

    #[test]
    fn the_gate_needs_a_token_and_root_outside_kv() -> Result<(), ServiceError> {
        let s = enabled(PasswordHash("h".into()));
        let none = gate(&s, "/raftkv.v1.KV/Put", None);
        assert!(matches!(none, Err(ServiceError::Unauthenticated(m)) if m.contains("no credentials")));
        assert!(matches!(gate(&s, "/raftkv.v1.KV/Put", Some(b"Bearer nope")), Err(ServiceError::Unauthenticated(_))));
        gate(&s, AUTHENTICATE_PATH, None)?;
        let alice = format!("Bearer {}", issue_token(&s, "alice", TOKEN_TTL)?);
        gate(&s, "/raftkv.v1.KV/Put", Some(alice.as_bytes()))?;
        let admin = gate(&s, "/raftkv.admin.v1.Admin/Status", Some(alice.as_bytes()));
        assert!(matches!(admin, Err(ServiceError::PermissionDenied(m)) if m.contains("root role")));
        let root = format!("Bearer {}", issue_token(&s, ROOT_USER, TOKEN_TTL)?);
        gate(&s, "/RaftAdmin/Leader", Some(root.as_bytes()))?;
        Ok(())
    }

    #[test]
    fn a_denial_says_what_is_missing_and_what_is_granted() {
        let s = enabled(PasswordHash("h".into()));
        let e = denied(&s, "alice", &KeyRange::Key(b"b/1".to_vec()), Access::Write);
        let Err(ServiceError::PermissionDenied(m)) = e else { panic!("{e:?}") };
        assert!(m.contains("no write permission on key \"b/1\""), "{m}");
        assert!(m.contains("readwrite on prefix \"a/\""), "{m}");
    }
}
