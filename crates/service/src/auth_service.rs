//! The `raftkv.auth.v1.Auth` service: Authenticate (served by the node asked, after a
//! linearizable read barrier, so a user just added is known), and the changes to users,
//! roles and permissions, proposed through Raft (forwarded to the leader like KV writes,
//! with the caller's token). Who may call what is decided by [`crate::auth::AuthGuard`].

use std::time::Duration;

use linearizable::Consistency;
use proto::auth::v1::auth_client::AuthClient;
use proto::auth::v1::auth_server::{Auth, AuthServer};
use proto::auth::v1::{self as pb, AuthChangeResponse};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use types::auth::{Access, AuthCommand, AuthOutcome, AuthRefusal, MAX_NAME_BYTES, PasswordHash, Permission, ROOT_ROLE};
use types::{Command, CommandResult, KeyRange};

use crate::auth::{self as gate, MAX_PASSWORD_BYTES, TOKEN_TTL};
use crate::forward::{Effect, Forwarding, Routed, deadline, to_leader};
use crate::node::DEFAULT_REQUEST_TIMEOUT;
use crate::{NodeContext, ServiceError, convert, limits};

/// The Auth service of one node.
#[derive(Debug, Clone)]
pub struct AuthService {
    ctx: NodeContext,
    token_ttl: Duration,
}

impl AuthService {
    /// An Auth service over `ctx`.
    #[must_use]
    pub fn new(ctx: NodeContext) -> Self {
        Self { ctx, token_ttl: TOKEN_TTL }
    }

    /// The service issuing tokens valid for `ttl` (`--auth-token-ttl`; whole seconds).
    #[must_use]
    pub fn with_token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl;
        self
    }

    /// The tonic server for this service.
    #[must_use]
    pub fn into_server(self) -> AuthServer<Self> {
        AuthServer::new(self)
    }

    /// Proposes `cmd` (built by `build` only on the node that proposes it, so a password is
    /// hashed once, where the write is served) and answers the index it took effect at;
    /// forwards `req` to the leader through `call` when this node is not it.
    async fn change<Req, F, Fut>(
        &self,
        request: Request<Req>,
        build: impl FnOnce(&Req) -> Result<AuthCommand, ServiceError>,
        call: F,
    ) -> Result<Response<AuthChangeResponse>, Status>
    where
        F: FnOnce(AuthClient<Channel>, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<AuthChangeResponse>, Status>>,
    {
        let timeout = deadline(request.metadata(), DEFAULT_REQUEST_TIMEOUT);
        let route = Forwarding::of(request.metadata(), Effect::Change, Instant::now() + timeout);
        let req = request.into_inner();
        let cmd = build(&req)?;
        let what = cmd.to_string();
        match self.ctx.write(Command::Auth(cmd), timeout).await? {
            Routed::Done((_, CommandResult::Auth(AuthOutcome::Done(index)))) => {
                Ok(Response::new(AuthChangeResponse { index }))
            }
            Routed::Done((_, CommandResult::Auth(AuthOutcome::Refused(why)))) => Err(refusal(why).into()),
            Routed::Done((index, other)) => Err(ServiceError::Internal(
                format!("the auth change {what} at index {index} answered {other:?}").into(),
            )
            .into()),
            Routed::Leader(leader) => {
                to_leader(&self.ctx, leader, route, req, |ch, r| call(AuthClient::new(ch), r)).await
            }
        }
    }

    /// Hashes `password` off the runtime's worker threads.
    async fn hash(password: String) -> Result<PasswordHash, ServiceError> {
        tokio::task::spawn_blocking(move || gate::hash_password(&password))
            .await
            .map_err(|e| ServiceError::Internal(Box::new(e)))?
    }
}

/// The status of a refused change.
fn refusal(why: AuthRefusal) -> ServiceError {
    match why {
        AuthRefusal::NoUser(_) | AuthRefusal::NoRole(_) | AuthRefusal::NotGranted { .. } => {
            ServiceError::NotFound(why.to_string())
        }
        AuthRefusal::NoPermission { .. } => ServiceError::NotFound(why.to_string()),
        _ => ServiceError::FailedPrecondition(why.to_string()),
    }
}

/// A user or role name: 1 to [`MAX_NAME_BYTES`] bytes, no control characters.
fn check_name(what: &str, name: &str) -> Result<(), ServiceError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(ServiceError::InvalidArgument(format!(
            "{what} name must be 1 to {MAX_NAME_BYTES} bytes (MAX_NAME_BYTES) without control characters; got {} bytes",
            name.len()
        )));
    }
    Ok(())
}

/// A password: 1 to [`MAX_PASSWORD_BYTES`] bytes. The message never repeats it.
fn check_password(password: &str) -> Result<(), ServiceError> {
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(ServiceError::InvalidArgument(format!(
            "the password must be 1 to {MAX_PASSWORD_BYTES} bytes (MAX_PASSWORD_BYTES); got {} bytes",
            password.len()
        )));
    }
    Ok(())
}

/// The keys a permission message names: one key, a prefix, or `[key, range_end)`.
fn perm_range(key: &[u8], range_end: &[u8], prefix: bool) -> Result<KeyRange, ServiceError> {
    if prefix || !range_end.is_empty() {
        convert::key_range(key, range_end, prefix)
    } else {
        limits::check_key(key)?;
        Ok(KeyRange::Key(key.to_vec()))
    }
}

fn access(value: i32) -> Result<Access, ServiceError> {
    match pb::Access::try_from(value) {
        Ok(pb::Access::Read) => Ok(Access::Read),
        Ok(pb::Access::Write) => Ok(Access::Write),
        Ok(pb::Access::Readwrite) => Ok(Access::ReadWrite),
        _ => Err(ServiceError::InvalidArgument(format!("access {value} is not READ (1), WRITE (2) or READWRITE (3)"))),
    }
}

fn wire_permission(p: &Permission) -> pb::Permission {
    let access = match p.access {
        Access::Read => pb::Access::Read,
        Access::Write => pb::Access::Write,
        Access::ReadWrite => pb::Access::Readwrite,
    };
    let (key, range_end, prefix) = match &p.range {
        KeyRange::Key(k) => (k.clone(), Vec::new(), false),
        KeyRange::Range { start, end } if types::kv::prefix_end(start) == *end => (start.clone(), Vec::new(), true),
        KeyRange::Range { start, end } => (start.clone(), end.clone().unwrap_or_else(|| vec![0]), false),
    };
    pb::Permission { access: access as i32, key: key.into(), range_end: range_end.into(), prefix }
}

/// How long a failed Authenticate waits before it answers, on top of the hash, so guessing
/// passwords is slow.
const FAILED_LOGIN_DELAY: Duration = Duration::from_millis(200);

#[tonic::async_trait]
impl Auth for AuthService {
    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let timeout = deadline(request.metadata(), DEFAULT_REQUEST_TIMEOUT);
        let req = request.into_inner();
        check_name("the user", &req.name)?;
        check_password(&req.password)?;
        self.ctx.read_index(Consistency::Linearizable, timeout).await?;
        let state = self.ctx.sm.auth_state();
        if !state.enabled {
            return Err(ServiceError::FailedPrecondition(
                "authentication is not enabled on this cluster; no token is needed (raftkvctl auth enable turns it on)"
                    .into(),
            )
            .into());
        }
        let hash = state.users.get(&req.name).map(|u| u.password.clone());
        let password = req.password;
        let ok = tokio::task::spawn_blocking(move || hash.is_some_and(|h| gate::verify_password(&password, &h)))
            .await
            .map_err(|e| ServiceError::Internal(Box::new(e)))?;
        if !ok {
            tracing::info!(user = %req.name, "authentication failed");
            tokio::time::sleep(FAILED_LOGIN_DELAY).await;
            return Err(
                ServiceError::Unauthenticated("authentication failed: unknown user or wrong password".into()).into()
            );
        }
        let token = gate::issue_token(&state, &req.name, self.token_ttl)?;
        tracing::debug!(user = %req.name, "token issued");
        Ok(Response::new(pb::AuthenticateResponse { token, ttl_seconds: self.token_ttl.as_secs() }))
    }

    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<AuthChangeResponse>, Status> {
        let token_key = gate::new_token_key()?;
        self.change(
            request,
            |_| Ok(AuthCommand::Enable { token_key }),
            |mut c, r| async move { c.auth_enable(r).await },
        )
        .await
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<AuthChangeResponse>, Status> {
        self.change(request, |_| Ok(AuthCommand::Disable), |mut c, r| async move { c.auth_disable(r).await }).await
    }

    async fn auth_status(
        &self,
        request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        let timeout = deadline(request.metadata(), DEFAULT_REQUEST_TIMEOUT);
        self.ctx.read_index(Consistency::Linearizable, timeout).await?;
        let state = self.ctx.sm.auth_state();
        Ok(Response::new(pb::AuthStatusResponse { enabled: state.enabled, revision: state.revision }))
    }

    async fn user_add(&self, request: Request<pb::UserAddRequest>) -> Result<Response<AuthChangeResponse>, Status> {
        check_name("the user", &request.get_ref().name)?;
        check_password(&request.get_ref().password)?;
        let password = Self::hash(request.get_ref().password.clone()).await?;
        self.change(
            request,
            |r| Ok(AuthCommand::UserAdd { name: r.name.clone(), password }),
            |mut c, r| async move { c.user_add(r).await },
        )
        .await
    }

    async fn user_delete(
        &self,
        request: Request<pb::UserDeleteRequest>,
    ) -> Result<Response<AuthChangeResponse>, Status> {
        check_name("the user", &request.get_ref().name)?;
        self.change(
            request,
            |r| Ok(AuthCommand::UserDelete { name: r.name.clone() }),
            |mut c, r| async move { c.user_delete(r).await },
        )
        .await
    }

    async fn user_change_password(
        &self,
        request: Request<pb::UserChangePasswordRequest>,
    ) -> Result<Response<AuthChangeResponse>, Status> {
        check_name("the user", &request.get_ref().name)?;
        check_password(&request.get_ref().password)?;
        let password = Self::hash(request.get_ref().password.clone()).await?;
        let build =
            |r: &pb::UserChangePasswordRequest| Ok(AuthCommand::UserChangePassword { name: r.name.clone(), password });
        self.change(request, build, |mut c, r| async move { c.user_change_password(r).await }).await
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::UserGrantRoleRequest>,
    ) -> Result<Response<AuthChangeResponse>, Status> {
        check_name("the user", &request.get_ref().user)?;
        check_name("the role", &request.get_ref().role)?;
        let build = |r: &pb::UserGrantRoleRequest| {
            Ok(AuthCommand::UserGrantRole { user: r.user.clone(), role: r.role.clone() })
        };
        self.change(request, build, |mut c, r| async move { c.user_grant_role(r).await }).await
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::UserRevokeRoleRequest>,
    ) -> Result<Response<AuthChangeResponse>, Status> {
        check_name("the user", &request.get_ref().user)?;
        check_name("the role", &request.get_ref().role)?;
        let build = |r: &pb::UserRevokeRoleRequest| {
            Ok(AuthCommand::UserRevokeRole { user: r.user.clone(), role: r.role.clone() })
        };
        self.change(request, build, |mut c, r| async move { c.user_revoke_role(r).await }).await
    }

    async fn user_list(&self, request: Request<pb::UserListRequest>) -> Result<Response<pb::UserListResponse>, Status> {
        let timeout = deadline(request.metadata(), DEFAULT_REQUEST_TIMEOUT);
        self.ctx.read_index(Consistency::Linearizable, timeout).await?;
        let state = self.ctx.sm.auth_state();
        let users = state
            .users
            .iter()
            .map(|(name, u)| pb::User { name: name.clone(), roles: u.roles.iter().cloned().collect() })
            .collect();
        Ok(Response::new(pb::UserListResponse { users }))
    }

    async fn role_add(&self, request: Request<pb::RoleAddRequest>) -> Result<Response<AuthChangeResponse>, Status> {
        check_name("the role", &request.get_ref().name)?;
        self.change(
            request,
            |r| Ok(AuthCommand::RoleAdd { name: r.name.clone() }),
            |mut c, r| async move { c.role_add(r).await },
        )
        .await
    }

    async fn role_delete(
        &self,
        request: Request<pb::RoleDeleteRequest>,
    ) -> Result<Response<AuthChangeResponse>, Status> {
        check_name("the role", &request.get_ref().name)?;
        self.change(
            request,
            |r| Ok(AuthCommand::RoleDelete { name: r.name.clone() }),
            |mut c, r| async move { c.role_delete(r).await },
        )
        .await
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::RoleGrantPermissionRequest>,
    ) -> Result<Response<AuthChangeResponse>, Status> {
        let build = |r: &pb::RoleGrantPermissionRequest| {
            check_name("the role", &r.role)?;
            let p = r.permission.as_ref().ok_or_else(|| {
                ServiceError::InvalidArgument("the permission is missing; give an access and a key".into())
            })?;
            let permission =
                Permission { access: access(p.access)?, range: perm_range(&p.key, &p.range_end, p.prefix)? };
            Ok(AuthCommand::RoleGrantPermission { role: r.role.clone(), permission })
        };
        self.change(request, build, |mut c, r| async move { c.role_grant_permission(r).await }).await
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::RoleRevokePermissionRequest>,
    ) -> Result<Response<AuthChangeResponse>, Status> {
        let build = |r: &pb::RoleRevokePermissionRequest| {
            check_name("the role", &r.role)?;
            let range = perm_range(&r.key, &r.range_end, r.prefix)?;
            Ok(AuthCommand::RoleRevokePermission { role: r.role.clone(), range })
        };
        self.change(request, build, |mut c, r| async move { c.role_revoke_permission(r).await }).await
    }

    async fn role_list(&self, request: Request<pb::RoleListRequest>) -> Result<Response<pb::RoleListResponse>, Status> {
        let timeout = deadline(request.metadata(), DEFAULT_REQUEST_TIMEOUT);
        self.ctx.read_index(Consistency::Linearizable, timeout).await?;
        let state = self.ctx.sm.auth_state();
        let mut roles: Vec<pb::Role> = state
            .roles
            .iter()
            .map(|(name, r)| pb::Role {
                name: name.clone(),
                permissions: r.permissions.iter().map(wire_permission).collect(),
            })
            .collect();
        roles.push(pb::Role { name: ROOT_ROLE.to_string(), permissions: Vec::new() });
        roles.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::RoleListResponse { roles }))
    }
}
