//! etcd's authentication over raftkv's users, roles and permissions:
//! - [`guard_rule`], the rule `service::AuthGuard` applies to every etcd service: etcd's
//!   clients send the token Authenticate gave them in the `token` metadata (etcd also reads
//!   `authorization`); the rule hands it on as `authorization`, where every layer below
//!   (the per-key checks here, forwarding to the leader, the native Admin handlers) looks
//!   for credentials, and decides who may call which method as etcd 3.4 does ([`need`]).
//! - [`authorize`]: the per-key check of a KV or Watch call against the caller's roles
//!   (read for Range, Watch and a txn's compares and ranges, write for Put and DeleteRange),
//!   with etcd's refusals ("etcdserver: permission denied", "etcdserver: user name is
//!   empty", "etcdserver: invalid auth token"), which etcd's clients match.
//! - [`EtcdAuth`] (`etcdserverpb.Auth`): Authenticate and the user and role RPCs, mapped
//!   onto the same `types::auth::AuthCommand`s through the log as raftkv's own Auth service
//!   (raftkvctl's `user`, `role` and `auth` verbs), and raftkv's tokens.
//!
//! Why a refusal happened (the permission missing, the roles held, why a token is invalid)
//! is logged at debug level; etcd's answer carries etcd's message only.

use std::time::Duration;

use linearizable::Consistency;
use proto::etcd::authpb::{Permission as EtcdPermission, permission::Type as PermType};
use proto::etcd::etcdserverpb::auth_client::AuthClient;
use proto::etcd::etcdserverpb::auth_server::{Auth, AuthServer};
use proto::etcd::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse, AuthRoleAddRequest,
    AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse, AuthRoleGetRequest, AuthRoleGetResponse,
    AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest, AuthStatusResponse,
    AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest, AuthUserChangePasswordResponse,
    AuthUserDeleteRequest, AuthUserDeleteResponse, AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest,
    AuthUserGrantRoleResponse, AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse, ResponseHeader,
};
use service::auth::{self as raftkv_auth, Caller, MAX_PASSWORD_BYTES, TOKEN_TTL};
use service::forward::{Effect, Forwarding, deadline, to_leader};
use service::{DEFAULT_REQUEST_TIMEOUT, MAX_DECODE_BYTES, Routed, ServiceError};
use tokio::time::Instant;
use tonic::codegen::http::{HeaderMap, header::AUTHORIZATION};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use types::auth::{
    Access, AuthCommand, AuthOutcome, AuthRefusal, AuthState, MAX_NAME_BYTES, Permission, ROOT_ROLE, RangeDisplay,
};
use types::{Command, CommandResult, KeyRange};

use crate::range::key_range;
use crate::{EtcdError, Node};

/// The metadata key etcd's clients send their token in (etcd's `rpctypes.TokenFieldNameGRPC`).
pub const TOKEN_METADATA: &str = "token";

/// How long a failed Authenticate waits before it answers, on top of the hash, so guessing
/// passwords is slow (as raftkv's own Authenticate).
const FAILED_LOGIN_DELAY: Duration = Duration::from_millis(200);

/// What a method of the etcd API needs while authentication is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Nothing: etcd answers it without looking at credentials.
    Nothing,
    /// A valid token of any user; the handler checks the rest (key permissions, or "oneself
    /// or root" for UserGet and RoleGet).
    User,
    /// A valid token of a user with the root role (etcd's `IsAdminPermitted`).
    Root,
}

/// Who may call `path` (a method of the etcd API) while authentication is on, as etcd 3.4
/// decides it; a method not named here needs root (what is not listed is refused, never
/// opened by mistake).
fn need(path: &str) -> Need {
    match path {
        // etcd: no credentials needed (etcdctl endpoint status and member list run without
        // a user; clients authenticate through Authenticate). AuthStatus is 3.5's, as open.
        "/etcdserverpb.Auth/Authenticate"
        | "/etcdserverpb.Auth/AuthStatus"
        | "/etcdserverpb.Maintenance/Status"
        | "/etcdserverpb.Cluster/MemberList"
        // The stream opens for anyone; each watch it creates is checked (and refused in
        // the watch's cancel_reason, as etcd refuses it).
        | "/etcdserverpb.Watch/Watch" => Need::Nothing,
        // Per key (handlers); Compact, which etcd lets any caller run; UserGet and RoleGet,
        // which etcd lets a user run on itself and on its own roles.
        "/etcdserverpb.KV/Range"
        | "/etcdserverpb.KV/Put"
        | "/etcdserverpb.KV/DeleteRange"
        | "/etcdserverpb.KV/Txn"
        | "/etcdserverpb.KV/Compact"
        | "/etcdserverpb.Auth/UserGet"
        | "/etcdserverpb.Auth/RoleGet"
        // Leases: etcd 3.4 checks none of these (a lease holds no key until a put, which is
        // checked per key); raftkv asks for a valid token. LeaseRevoke deletes the lease's
        // keys, which etcd allows to a user with write on every one of them: raftkv asks for
        // root (not listed here).
        | "/etcdserverpb.Lease/LeaseGrant"
        | "/etcdserverpb.Lease/LeaseKeepAlive"
        | "/etcdserverpb.Lease/LeaseTimeToLive"
        | "/etcdserverpb.Lease/LeaseLeases" => Need::User,
        _ => Need::Root,
    }
}

/// The rule `service::AuthGuard` applies to the etcd services ([`service::auth::GuardRule`]):
/// hands etcd's `token` on as `authorization`, then checks what the method needs (`need`)
/// with etcd's refusals.
pub fn guard_rule(state: &AuthState, path: &str, headers: &mut HeaderMap) -> Result<(), Status> {
    if let Some(token) = headers.remove(TOKEN_METADATA) {
        headers.insert(AUTHORIZATION, token);
    }
    if !state.enabled {
        return Ok(());
    }
    let checked = match need(path) {
        Need::Nothing => Ok(()),
        Need::User => user_of(state, headers.get(AUTHORIZATION).map(|v| v.as_bytes())).map(|_| ()),
        Need::Root => user_of(state, headers.get(AUTHORIZATION).map(|v| v.as_bytes())).and_then(|user| {
            if state.is_root(&user) {
                Ok(())
            } else {
                tracing::debug!(path, user, "etcd call refused: it needs the root role");
                Err(EtcdError::PermissionDenied)
            }
        }),
    };
    checked.map_err(Status::from)
}

/// The user whose token `authorization` is (authentication on): none is etcd's "user name
/// is empty", a token raftkv refuses (expired, forged, of a deleted user or an earlier
/// password) etcd's "invalid auth token", on which etcd's clients authenticate again.
fn user_of(state: &AuthState, authorization: Option<&[u8]>) -> Result<String, EtcdError> {
    if authorization.is_none() {
        return Err(EtcdError::UserEmpty);
    }
    match raftkv_auth::identify(state, authorization) {
        Ok(Caller::User(user)) => Ok(user),
        // Only with authentication off, which the callers have ruled out.
        Ok(Caller::Anyone) => Err(EtcdError::UserEmpty),
        Err(e) => {
            tracing::debug!(reason = %e, "etcd call refused: invalid auth token");
            Err(EtcdError::InvalidAuthToken)
        }
    }
}

/// The caller of an etcd call, from its metadata as [`guard_rule`] left it: `None` while
/// authentication is off.
pub(crate) fn caller(state: &AuthState, md: &MetadataMap) -> Result<Option<String>, EtcdError> {
    if !state.enabled {
        return Ok(None);
    }
    user_of(state, md.as_ref().get(AUTHORIZATION).map(|v| v.as_bytes())).map(Some)
}

/// The caller (see [`caller`]) may access every range of `ranges` with its access, or the
/// call is refused with etcd's "permission denied". `None` while authentication is off.
pub(crate) fn authorize(
    state: &AuthState,
    md: &MetadataMap,
    ranges: &[(KeyRange, Access)],
) -> Result<Option<String>, EtcdError> {
    let Some(user) = caller(state, md)? else { return Ok(None) };
    for (range, access) in ranges {
        if let Err(granted) = state.check(&user, range, *access) {
            tracing::debug!(user, range = %RangeDisplay(range), %access, ?granted, "etcd call refused: permission denied");
            return Err(EtcdError::PermissionDenied);
        }
    }
    Ok(Some(user))
}

/// etcd's refusal of an auth change raftkv's state refused.
fn refused(why: AuthRefusal) -> EtcdError {
    match why {
        AuthRefusal::UserExists(_) => EtcdError::UserAlreadyExist,
        AuthRefusal::NoUser(_) => EtcdError::UserNotFound,
        AuthRefusal::RoleExists(_) => EtcdError::RoleAlreadyExist,
        AuthRefusal::NoRole(_) => EtcdError::RoleNotFound,
        AuthRefusal::NotGranted { .. } => EtcdError::RoleNotGranted,
        AuthRefusal::NoPermission { .. } => EtcdError::PermissionNotGranted,
        AuthRefusal::NoRootUser => EtcdError::RootUserNotExist,
        // etcd: deleting root, or taking the root role from it, while auth is on; raftkv's
        // root role is built in, so deleting it or changing its permissions is refused so too.
        AuthRefusal::RootInUse(_) | AuthRefusal::RootRoleFixed => EtcdError::InvalidAuthMgmt,
        why @ AuthRefusal::TooManyPermissions(_) => ServiceError::FailedPrecondition(why.to_string()).into(),
    }
}

/// Whether `name` could name a user or role raftkv holds (1 to [`MAX_NAME_BYTES`] bytes):
/// a name that cannot is answered as not found without going through the log.
fn storable(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_BYTES
}

/// A new user's or role's name, checked as raftkv's Auth service checks it.
fn new_name(what: &str, name: &str) -> Result<(), EtcdError> {
    if name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(ServiceError::InvalidArgument(format!(
            "{what} name must be 1 to {MAX_NAME_BYTES} bytes (MAX_NAME_BYTES) without control characters; got {} bytes",
            name.len()
        ))
        .into());
    }
    Ok(())
}

/// A new password: 1 to [`MAX_PASSWORD_BYTES`] bytes. The message never repeats it.
fn new_password(password: &str) -> Result<(), EtcdError> {
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(ServiceError::InvalidArgument(format!(
            "the password must be 1 to {MAX_PASSWORD_BYTES} bytes (MAX_PASSWORD_BYTES); got {} bytes",
            password.len()
        ))
        .into());
    }
    Ok(())
}

/// The keys of an etcd permission: `range_end` empty for one key, `"\0"` for every key from
/// `key` on, where `key` `"\0"` (what etcdctl sends for an empty prefix) is every key.
fn permission_range(key: &[u8], range_end: &[u8]) -> Result<KeyRange, EtcdError> {
    if key == [0] && range_end == [0] {
        return Ok(KeyRange::Range { start: Vec::new(), end: None });
    }
    key_range(key, range_end)
}

/// A raftkv permission as etcd shows it.
fn etcd_permission(p: &Permission) -> EtcdPermission {
    let perm_type = match p.access {
        Access::Read => PermType::Read,
        Access::Write => PermType::Write,
        Access::ReadWrite => PermType::Readwrite,
    };
    let (key, range_end) = match &p.range {
        KeyRange::Key(k) => (k.clone(), Vec::new()),
        KeyRange::Range { start, end: None } if start.is_empty() => (vec![0], vec![0]),
        KeyRange::Range { start, end: None } => (start.clone(), vec![0]),
        KeyRange::Range { start, end: Some(end) } => (start.clone(), end.clone()),
    };
    EtcdPermission { perm_type: perm_type as i32, key: key.into(), range_end: range_end.into() }
}

/// Hashes `password` off the runtime's worker threads.
async fn hash(password: String) -> Result<types::auth::PasswordHash, EtcdError> {
    tokio::task::spawn_blocking(move || raftkv_auth::hash_password(&password))
        .await
        .map_err(|e| ServiceError::Internal(Box::new(e)))?
        .map_err(EtcdError::from)
}

/// The `etcdserverpb.Auth` service of one node.
#[derive(Debug, Clone)]
pub struct EtcdAuth {
    node: Node,
    token_ttl: Duration,
}

impl EtcdAuth {
    pub(crate) fn new(node: Node) -> Self {
        Self { node, token_ttl: TOKEN_TTL }
    }

    /// The service issuing tokens valid for `ttl` (the node's `--auth-token-ttl`).
    #[must_use]
    pub fn with_token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl;
        self
    }

    /// The tonic server for this service, with the decode limit applied.
    #[must_use]
    pub fn into_server(self) -> AuthServer<Self> {
        AuthServer::new(self).max_decoding_message_size(MAX_DECODE_BYTES)
    }

    /// A linearizable read of the auth state (a ReadIndex round, on any node), as etcd's
    /// reads of users and roles; the header at the index the node had applied.
    async fn read(&self, md: &MetadataMap) -> Result<(std::sync::Arc<AuthState>, ResponseHeader), EtcdError> {
        let timeout = deadline(md, DEFAULT_REQUEST_TIMEOUT);
        self.node.ctx.read_index(Consistency::Linearizable, timeout).await?;
        let sm = &self.node.ctx.sm;
        Ok((sm.auth_state(), self.node.header(sm.applied_index())))
    }

    /// Proposes the change `build` makes of the request (built only on the node that
    /// proposes it) and answers `answer` with the header at the index it took effect at;
    /// forwards the request to the leader's etcd Auth service through `call` when this node
    /// is not it (with the caller's token: the leader checks it again).
    async fn change<Req, Resp, F, Fut>(
        &self,
        request: Request<Req>,
        build: impl FnOnce(&Req) -> Result<AuthCommand, EtcdError>,
        answer: impl FnOnce(ResponseHeader) -> Resp,
        call: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(AuthClient<Channel>, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        let timeout = deadline(request.metadata(), DEFAULT_REQUEST_TIMEOUT);
        let route = Forwarding::of(request.metadata(), Effect::Change, Instant::now() + timeout);
        let req = request.into_inner();
        let cmd = build(&req)?;
        let what = cmd.to_string();
        match self.node.ctx.write(Command::Auth(cmd), timeout).await.map_err(EtcdError::from)? {
            Routed::Done((_, CommandResult::Auth(AuthOutcome::Done(index)))) => {
                tracing::info!(change = %what, index, "etcd auth change applied");
                Ok(Response::new(answer(self.node.header(index))))
            }
            Routed::Done((_, CommandResult::Auth(AuthOutcome::Refused(why)))) => {
                tracing::debug!(change = %what, reason = %why, "etcd auth change refused");
                Err(refused(why).into())
            }
            Routed::Done((index, other)) => Err(EtcdError::from(ServiceError::Internal(
                format!("the auth change {what} at index {index} answered {other:?}").into(),
            ))
            .into()),
            Routed::Leader(leader) => {
                let client = |ch| AuthClient::new(ch).max_decoding_message_size(MAX_DECODE_BYTES);
                to_leader(&self.node.ctx, leader, route, req, |ch, r| call(client(ch), r)).await
            }
        }
    }
}

#[tonic::async_trait]
impl Auth for EtcdAuth {
    /// etcd: already on is no change (raftkv's enable would draw a new token key and end
    /// every session); off, it needs the root user, which it gives the root role.
    async fn auth_enable(&self, request: Request<AuthEnableRequest>) -> Result<Response<AuthEnableResponse>, Status> {
        let (state, header) = self.read(request.metadata()).await?;
        if state.enabled {
            return Ok(Response::new(AuthEnableResponse { header: Some(header) }));
        }
        let token_key = raftkv_auth::new_token_key().map_err(EtcdError::from)?;
        self.change(
            request,
            |_| Ok(AuthCommand::Enable { token_key }),
            |header| AuthEnableResponse { header: Some(header) },
            |mut c, r| async move { c.auth_enable(r).await },
        )
        .await
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        self.change(
            request,
            |_| Ok(AuthCommand::Disable),
            |header| AuthDisableResponse { header: Some(header) },
            |mut c, r| async move { c.auth_disable(r).await },
        )
        .await
    }

    async fn auth_status(&self, request: Request<AuthStatusRequest>) -> Result<Response<AuthStatusResponse>, Status> {
        let (state, header) = self.read(request.metadata()).await?;
        Ok(Response::new(AuthStatusResponse {
            header: Some(header),
            enabled: state.enabled,
            auth_revision: state.revision,
        }))
    }

    /// Served by the node asked, after a linearizable read (a user just added is known).
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let (state, header) = self.read(request.metadata()).await?;
        if !state.enabled {
            return Err(EtcdError::AuthNotEnabled.into());
        }
        let req = request.into_inner();
        let hash = (req.password.len() <= MAX_PASSWORD_BYTES)
            .then(|| state.users.get(&req.name).map(|u| u.password.clone()))
            .flatten();
        let password = req.password;
        let ok = tokio::task::spawn_blocking(move || hash.is_some_and(|h| raftkv_auth::verify_password(&password, &h)))
            .await
            .map_err(|e| EtcdError::from(ServiceError::Internal(Box::new(e))))?;
        if !ok {
            tracing::info!(user = %req.name, "etcd authentication failed");
            tokio::time::sleep(FAILED_LOGIN_DELAY).await;
            return Err(EtcdError::AuthFailed.into());
        }
        let token = raftkv_auth::issue_token(&state, &req.name, self.token_ttl).map_err(EtcdError::from)?;
        tracing::debug!(user = %req.name, "etcd token issued");
        Ok(Response::new(AuthenticateResponse { header: Some(header), token }))
    }

    async fn user_add(&self, request: Request<AuthUserAddRequest>) -> Result<Response<AuthUserAddResponse>, Status> {
        let req = request.get_ref();
        if req.name.is_empty() {
            return Err(EtcdError::UserEmpty.into());
        }
        if req.options.as_ref().is_some_and(|o| o.no_password) {
            return Err(EtcdError::Unsupported(
                "raftkv users always have a password: a user without one (no_password, etcdctl --no-password) is not supported; give a password".into(),
            )
            .into());
        }
        new_name("the user", &req.name)?;
        new_password(&req.password)?;
        let password = hash(req.password.clone()).await?;
        self.change(
            request,
            |r| Ok(AuthCommand::UserAdd { name: r.name.clone(), password }),
            |header| AuthUserAddResponse { header: Some(header) },
            |mut c, r| async move { c.user_add(r).await },
        )
        .await
    }

    /// etcd: root, or the user itself.
    async fn user_get(&self, request: Request<AuthUserGetRequest>) -> Result<Response<AuthUserGetResponse>, Status> {
        let (state, header) = self.read(request.metadata()).await?;
        let name = &request.get_ref().name;
        if let Some(user) = caller(&state, request.metadata())?
            && !state.is_root(&user)
            && user != *name
        {
            tracing::debug!(user, of = %name, "etcd UserGet refused: not root and not the user itself");
            return Err(EtcdError::PermissionDenied.into());
        }
        let user = state.users.get(name).ok_or(EtcdError::UserNotFound)?;
        Ok(Response::new(AuthUserGetResponse { header: Some(header), roles: user.roles.iter().cloned().collect() }))
    }

    async fn user_list(&self, request: Request<AuthUserListRequest>) -> Result<Response<AuthUserListResponse>, Status> {
        let (state, header) = self.read(request.metadata()).await?;
        Ok(Response::new(AuthUserListResponse { header: Some(header), users: state.users.keys().cloned().collect() }))
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let name = &request.get_ref().name;
        if !storable(name) {
            return Err(EtcdError::UserNotFound.into());
        }
        self.change(
            request,
            |r| Ok(AuthCommand::UserDelete { name: r.name.clone() }),
            |header| AuthUserDeleteResponse { header: Some(header) },
            |mut c, r| async move { c.user_delete(r).await },
        )
        .await
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let req = request.get_ref();
        if !storable(&req.name) {
            return Err(EtcdError::UserNotFound.into());
        }
        new_password(&req.password)?;
        let password = hash(req.password.clone()).await?;
        self.change(
            request,
            |r| Ok(AuthCommand::UserChangePassword { name: r.name.clone(), password }),
            |header| AuthUserChangePasswordResponse { header: Some(header) },
            |mut c, r| async move { c.user_change_password(r).await },
        )
        .await
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let req = request.get_ref();
        if !storable(&req.user) {
            return Err(EtcdError::UserNotFound.into());
        }
        if !storable(&req.role) {
            return Err(EtcdError::RoleNotFound.into());
        }
        self.change(
            request,
            |r| Ok(AuthCommand::UserGrantRole { user: r.user.clone(), role: r.role.clone() }),
            |header| AuthUserGrantRoleResponse { header: Some(header) },
            |mut c, r| async move { c.user_grant_role(r).await },
        )
        .await
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let req = request.get_ref();
        if !storable(&req.name) {
            return Err(EtcdError::UserNotFound.into());
        }
        if !storable(&req.role) {
            return Err(EtcdError::RoleNotGranted.into());
        }
        self.change(
            request,
            |r| Ok(AuthCommand::UserRevokeRole { user: r.name.clone(), role: r.role.clone() }),
            |header| AuthUserRevokeRoleResponse { header: Some(header) },
            |mut c, r| async move { c.user_revoke_role(r).await },
        )
        .await
    }

    /// raftkv's root role is built in: adding it answers etcd's "role name already exists".
    async fn role_add(&self, request: Request<AuthRoleAddRequest>) -> Result<Response<AuthRoleAddResponse>, Status> {
        let name = &request.get_ref().name;
        if name.is_empty() {
            return Err(EtcdError::RoleEmpty.into());
        }
        if name == ROOT_ROLE {
            return Err(EtcdError::RoleAlreadyExist.into());
        }
        new_name("the role", name)?;
        self.change(
            request,
            |r| Ok(AuthCommand::RoleAdd { name: r.name.clone() }),
            |header| AuthRoleAddResponse { header: Some(header) },
            |mut c, r| async move { c.role_add(r).await },
        )
        .await
    }

    /// etcd: root, or a user holding the role. The built-in root role holds no explicit
    /// permission.
    async fn role_get(&self, request: Request<AuthRoleGetRequest>) -> Result<Response<AuthRoleGetResponse>, Status> {
        let (state, header) = self.read(request.metadata()).await?;
        let role = &request.get_ref().role;
        if let Some(user) = caller(&state, request.metadata())?
            && !state.is_root(&user)
            && !state.users.get(&user).is_some_and(|u| u.roles.contains(role))
        {
            tracing::debug!(user, role = %role, "etcd RoleGet refused: not root and the user lacks the role");
            return Err(EtcdError::PermissionDenied.into());
        }
        let mut perm: Vec<EtcdPermission> = if role == ROOT_ROLE {
            Vec::new()
        } else {
            state.roles.get(role).ok_or(EtcdError::RoleNotFound)?.permissions.iter().map(etcd_permission).collect()
        };
        // etcd keeps a role's permissions sorted by key.
        perm.sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
        Ok(Response::new(AuthRoleGetResponse { header: Some(header), perm }))
    }

    /// The roles, and `root` once a user holds it (as in etcd, where `etcdctl auth enable`
    /// creates it and grants it to root).
    async fn role_list(&self, request: Request<AuthRoleListRequest>) -> Result<Response<AuthRoleListResponse>, Status> {
        let (state, header) = self.read(request.metadata()).await?;
        let mut roles: Vec<String> = state.roles.keys().cloned().collect();
        if state.users.values().any(|u| u.roles.contains(ROOT_ROLE)) {
            roles.push(ROOT_ROLE.to_string());
            roles.sort();
        }
        Ok(Response::new(AuthRoleListResponse { header: Some(header), roles }))
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let role = &request.get_ref().role;
        if role == ROOT_ROLE {
            return Err(EtcdError::InvalidAuthMgmt.into());
        }
        if !storable(role) {
            return Err(EtcdError::RoleNotFound.into());
        }
        self.change(
            request,
            |r| Ok(AuthCommand::RoleDelete { name: r.role.clone() }),
            |header| AuthRoleDeleteResponse { header: Some(header) },
            |mut c, r| async move { c.role_delete(r).await },
        )
        .await
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        if !storable(&request.get_ref().name) {
            return Err(EtcdError::RoleNotFound.into());
        }
        let build = |r: &AuthRoleGrantPermissionRequest| {
            let p = r.perm.as_ref().ok_or_else(|| {
                EtcdError::from(ServiceError::InvalidArgument(
                    "the permission (perm) is missing; give a permType, a key and a range_end".into(),
                ))
            })?;
            let access = match PermType::try_from(p.perm_type) {
                Ok(PermType::Read) => Access::Read,
                Ok(PermType::Write) => Access::Write,
                Ok(PermType::Readwrite) => Access::ReadWrite,
                Err(_) => {
                    return Err(EtcdError::Unsupported(format!(
                        "permType {} is not READ (0), WRITE (1) or READWRITE (2)",
                        p.perm_type
                    )));
                }
            };
            let range = permission_range(&p.key, &p.range_end)?;
            Ok(AuthCommand::RoleGrantPermission { role: r.name.clone(), permission: Permission { access, range } })
        };
        self.change(
            request,
            build,
            |header| AuthRoleGrantPermissionResponse { header: Some(header) },
            |mut c, r| async move { c.role_grant_permission(r).await },
        )
        .await
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        if !storable(&request.get_ref().role) {
            return Err(EtcdError::RoleNotFound.into());
        }
        self.change(
            request,
            |r| {
                Ok(AuthCommand::RoleRevokePermission {
                    role: r.role.clone(),
                    range: permission_range(&r.key, &r.range_end)?,
                })
            },
            |header| AuthRoleRevokePermissionResponse { header: Some(header) },
            |mut c, r| async move { c.role_revoke_permission(r).await },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;
    use types::auth::{PasswordHash, ROOT_USER, TokenKey};

    fn state() -> AuthState {
        let mut s = AuthState::default();
        let hash = PasswordHash("$argon2id$x".into());
        s.apply(1, &AuthCommand::UserAdd { name: ROOT_USER.into(), password: hash.clone() });
        s.apply(2, &AuthCommand::UserAdd { name: "alice".into(), password: hash });
        s.apply(3, &AuthCommand::RoleAdd { name: "a".into() });
        let permission = Permission { access: Access::ReadWrite, range: KeyRange::prefix(b"a/") };
        s.apply(4, &AuthCommand::RoleGrantPermission { role: "a".into(), permission });
        s.apply(5, &AuthCommand::UserGrantRole { user: "alice".into(), role: "a".into() });
        s.apply(6, &AuthCommand::Enable { token_key: TokenKey(vec![9; raftkv_auth::TOKEN_KEY_BYTES]) });
        s
    }

    fn headers(token: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = token {
            h.insert(TOKEN_METADATA, t.parse().unwrap_or_else(|_| http_value()));
        }
        h
    }

    fn http_value() -> tonic::codegen::http::HeaderValue {
        tonic::codegen::http::HeaderValue::from_static("x")
    }

    fn refusal(r: Result<(), Status>) -> (Code, String) {
        r.err().map(|s| (s.code(), s.message().to_string())).unwrap_or((Code::Ok, String::new()))
    }

    #[test]
    fn the_rule_takes_etcds_token_and_answers_etcds_refusals() -> Result<(), ServiceError> {
        let s = state();
        let alice = raftkv_auth::issue_token(&s, "alice", TOKEN_TTL)?;
        let root = raftkv_auth::issue_token(&s, ROOT_USER, TOKEN_TTL)?;
        // The token is handed on as `authorization`.
        let mut h = headers(Some(&alice));
        assert_eq!(refusal(guard_rule(&s, "/etcdserverpb.KV/Put", &mut h)), (Code::Ok, String::new()));
        assert!(h.get(TOKEN_METADATA).is_none());
        assert_eq!(h.get(AUTHORIZATION).map(|v| v.as_bytes()), Some(alice.as_bytes()));
        // No token, a bad one, a user without root on an admin method.
        let none = refusal(guard_rule(&s, "/etcdserverpb.KV/Range", &mut headers(None)));
        assert_eq!(none, (Code::InvalidArgument, "etcdserver: user name is empty".into()));
        let bad = refusal(guard_rule(&s, "/etcdserverpb.KV/Txn", &mut headers(Some("forged.token"))));
        assert_eq!(bad, (Code::Unauthenticated, "etcdserver: invalid auth token".into()));
        let admin = refusal(guard_rule(&s, "/etcdserverpb.Auth/UserList", &mut headers(Some(&alice))));
        assert_eq!(admin, (Code::PermissionDenied, "etcdserver: permission denied".into()));
        // What etcd lets anyone call; root may call everything, and unknown methods need root.
        for open in
            ["/etcdserverpb.Auth/Authenticate", "/etcdserverpb.Maintenance/Status", "/etcdserverpb.Cluster/MemberList"]
        {
            assert_eq!(refusal(guard_rule(&s, open, &mut headers(None))).0, Code::Ok, "{open}");
        }
        for admin in [
            "/etcdserverpb.Auth/UserAdd",
            "/etcdserverpb.Maintenance/Snapshot",
            "/etcdserverpb.Cluster/MemberAdd",
            "/etcdserverpb.Lease/LeaseRevoke",
            "/etcdserverpb.Unknown/Method",
        ] {
            assert_eq!(refusal(guard_rule(&s, admin, &mut headers(Some(&alice)))).0, Code::PermissionDenied, "{admin}");
            assert_eq!(refusal(guard_rule(&s, admin, &mut headers(Some(&root)))).0, Code::Ok, "{admin}");
        }
        // Leases but revoke: any user with a valid token, no one without.
        for lease in ["LeaseGrant", "LeaseKeepAlive", "LeaseTimeToLive", "LeaseLeases"] {
            let path = format!("/etcdserverpb.Lease/{lease}");
            assert_eq!(refusal(guard_rule(&s, &path, &mut headers(Some(&alice)))).0, Code::Ok, "{path}");
            assert_eq!(refusal(guard_rule(&s, &path, &mut headers(None))).0, Code::InvalidArgument, "{path}");
        }
        // Off: everything goes.
        let off = AuthState::default();
        assert_eq!(refusal(guard_rule(&off, "/etcdserverpb.Auth/UserAdd", &mut headers(None))).0, Code::Ok);
        Ok(())
    }

    #[test]
    fn keys_are_checked_against_the_callers_roles() -> Result<(), ServiceError> {
        let s = state();
        let alice = raftkv_auth::issue_token(&s, "alice", TOKEN_TTL)?;
        let mut md = MetadataMap::new();
        md.insert("authorization", alice.parse().map_err(|_| ServiceError::InvalidArgument("token".into()))?);
        let inside = [(KeyRange::Key(b"a/1".to_vec()), Access::Write), (KeyRange::prefix(b"a/"), Access::Read)];
        assert_eq!(authorize(&s, &md, &inside).ok().flatten().as_deref(), Some("alice"));
        let outside = [(KeyRange::Key(b"b".to_vec()), Access::Read)];
        assert!(matches!(authorize(&s, &md, &outside), Err(EtcdError::PermissionDenied)));
        assert!(matches!(authorize(&s, &MetadataMap::new(), &inside), Err(EtcdError::UserEmpty)));
        assert!(matches!(authorize(&AuthState::default(), &MetadataMap::new(), &outside), Ok(None)));
        Ok(())
    }

    #[test]
    fn permissions_keep_etcds_key_and_range_end() -> Result<(), EtcdError> {
        for (key, end) in [(&b"k"[..], &b""[..]), (b"a/", b"a0"), (b"a", b"\0"), (b"\0", b"\0"), (b"a", b"c")] {
            let range = permission_range(key, end)?;
            let shown = etcd_permission(&Permission { access: Access::Read, range });
            assert_eq!((&shown.key[..], &shown.range_end[..]), (key, end));
            assert_eq!(shown.perm_type, PermType::Read as i32);
        }
        assert_eq!(permission_range(b"\0", b"\0")?, KeyRange::Range { start: Vec::new(), end: None });
        assert_eq!(permission_range(b"a/", b"a0")?, KeyRange::prefix(b"a/"));
        Ok(())
    }

    #[test]
    fn refusals_are_etcds() {
        let s = Status::from(refused(AuthRefusal::NoUser("x".into())));
        assert_eq!((s.code(), s.message()), (Code::FailedPrecondition, "etcdserver: user name not found"));
        let s = Status::from(refused(AuthRefusal::NoRootUser));
        assert_eq!((s.code(), s.message()), (Code::FailedPrecondition, "etcdserver: root user does not exist"));
        let s = Status::from(refused(AuthRefusal::RootInUse("user \"root\"".into())));
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, "etcdserver: invalid auth management"));
        let s = Status::from(refused(AuthRefusal::UserExists("x".into())));
        assert_eq!(s.message(), "etcdserver: user name already exists");
    }
}
