//! Authentication and the management of users, roles and permissions
//! (`raftkv.auth.v1.Auth`), in etcdctl's vocabulary.
//!
//! [`Client::authenticate`] trades a user name and password for a token, which every later
//! call of the client carries. A token lasts the server's `--auth-token-ttl` (300 s by
//! default); the client keeps the password and authenticates again when a call is refused
//! with an expired token. Changes are not retried after an unknown outcome (adding a user
//! twice is refused); lists are retried like reads.

use proto::auth::v1::auth_client::AuthClient;
use proto::auth::v1::{
    AuthChangeResponse, AuthDisableRequest, AuthEnableRequest, AuthStatusRequest, AuthStatusResponse,
    AuthenticateRequest, RoleAddRequest, RoleDeleteRequest, RoleGrantPermissionRequest, RoleListRequest,
    RoleRevokePermissionRequest, UserAddRequest, UserChangePasswordRequest, UserDeleteRequest, UserGrantRoleRequest,
    UserListRequest, UserRevokeRoleRequest,
};
use tonic::transport::Channel;

pub use proto::auth::v1::{Access, Permission, Role, User};

use crate::retry::Kind;
use crate::{Client, ClientError, Credentials, bearer};

fn auth(ch: Channel) -> AuthClient<Channel> {
    AuthClient::new(ch)
}

/// One Auth call `$method` with `$req`, retried as `$kind`, answering the inner message.
macro_rules! auth_call {
    ($self:ident, $kind:expr, $req:expr, $method:ident) => {{
        let req = $req;
        let nf = $self.meta();
        $self
            .run($kind, $self.options.request_timeout, |ch, t| {
                let req = req.clone();
                async move { auth(ch).$method(Self::request(req, t, nf)).await.map(tonic::Response::into_inner) }
            })
            .await
    }};
}

impl Client {
    /// Checks `name` and `password` with the cluster and keeps the token it answers for
    /// every later call of this client; returns the token too, for
    /// [`ClientOptions::token`](crate::ClientOptions::token) of other clients (keep it
    /// secret). Fails with `UNAUTHENTICATED` on a wrong password or an unknown user.
    ///
    /// The client keeps `name` and `password` and authenticates again by itself when a call
    /// is refused `UNAUTHENTICATED` with the token (it expired).
    pub async fn authenticate(&self, name: &str, password: &str) -> Result<String, ClientError> {
        if self.current_token().is_some() {
            return Err(ClientError::AlreadyAuthenticated);
        }
        let token = self.fetch_token(name, password).await?;
        self.set_token(bearer(&token)?);
        let creds = Credentials { name: name.into(), password: password.into() };
        *self.credentials.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(creds);
        Ok(token)
    }

    /// One Authenticate call (retried like a read, never refreshed): the token.
    pub(crate) async fn fetch_token(&self, name: &str, password: &str) -> Result<String, ClientError> {
        let req = AuthenticateRequest { name: name.into(), password: password.into() };
        let nf = self.meta();
        let resp = self
            .run_with(Kind::Read, self.options.request_timeout, false, |ch, t| {
                let req = req.clone();
                async move { auth(ch).authenticate(Self::request(req, t, nf)).await.map(tonic::Response::into_inner) }
            })
            .await?;
        Ok(resp.token)
    }

    /// Turns authentication on (a user `root` must exist).
    pub async fn auth_enable(&self) -> Result<AuthChangeResponse, ClientError> {
        auth_call!(self, Kind::Write, AuthEnableRequest {}, auth_enable)
    }

    /// Turns authentication off.
    pub async fn auth_disable(&self) -> Result<AuthChangeResponse, ClientError> {
        auth_call!(self, Kind::Write, AuthDisableRequest {}, auth_disable)
    }

    /// Whether authentication is on, and the index of the last auth change.
    pub async fn auth_status(&self) -> Result<AuthStatusResponse, ClientError> {
        auth_call!(self, Kind::Read, AuthStatusRequest {}, auth_status)
    }

    /// Adds a user.
    pub async fn user_add(&self, name: &str, password: &str) -> Result<AuthChangeResponse, ClientError> {
        auth_call!(self, Kind::Write, UserAddRequest { name: name.into(), password: password.into() }, user_add)
    }

    /// Deletes a user.
    pub async fn user_delete(&self, name: &str) -> Result<AuthChangeResponse, ClientError> {
        auth_call!(self, Kind::Write, UserDeleteRequest { name: name.into() }, user_delete)
    }

    /// Changes a user's password.
    pub async fn user_change_password(&self, name: &str, password: &str) -> Result<AuthChangeResponse, ClientError> {
        let req = UserChangePasswordRequest { name: name.into(), password: password.into() };
        auth_call!(self, Kind::Write, req, user_change_password)
    }

    /// Gives a user a role.
    pub async fn user_grant_role(&self, user: &str, role: &str) -> Result<AuthChangeResponse, ClientError> {
        auth_call!(self, Kind::Write, UserGrantRoleRequest { user: user.into(), role: role.into() }, user_grant_role)
    }

    /// Takes a role from a user.
    pub async fn user_revoke_role(&self, user: &str, role: &str) -> Result<AuthChangeResponse, ClientError> {
        auth_call!(self, Kind::Write, UserRevokeRoleRequest { user: user.into(), role: role.into() }, user_revoke_role)
    }

    /// Every user with its roles.
    pub async fn user_list(&self) -> Result<Vec<User>, ClientError> {
        Ok(auth_call!(self, Kind::Read, UserListRequest {}, user_list)?.users)
    }

    /// Adds a role.
    pub async fn role_add(&self, name: &str) -> Result<AuthChangeResponse, ClientError> {
        auth_call!(self, Kind::Write, RoleAddRequest { name: name.into() }, role_add)
    }

    /// Deletes a role.
    pub async fn role_delete(&self, name: &str) -> Result<AuthChangeResponse, ClientError> {
        auth_call!(self, Kind::Write, RoleDeleteRequest { name: name.into() }, role_delete)
    }

    /// Gives a role a permission.
    pub async fn role_grant_permission(
        &self,
        role: &str,
        permission: Permission,
    ) -> Result<AuthChangeResponse, ClientError> {
        let req = RoleGrantPermissionRequest { role: role.into(), permission: Some(permission) };
        auth_call!(self, Kind::Write, req, role_grant_permission)
    }

    /// Takes from a role its permissions on exactly this key, prefix or range.
    pub async fn role_revoke_permission(
        &self,
        role: &str,
        key: &[u8],
        range_end: &[u8],
        prefix: bool,
    ) -> Result<AuthChangeResponse, ClientError> {
        let req = RoleRevokePermissionRequest {
            role: role.into(),
            key: key.to_vec().into(),
            range_end: range_end.to_vec().into(),
            prefix,
        };
        auth_call!(self, Kind::Write, req, role_revoke_permission)
    }

    /// Every role with its permissions.
    pub async fn role_list(&self) -> Result<Vec<Role>, ClientError> {
        Ok(auth_call!(self, Kind::Read, RoleListRequest {}, role_list)?.roles)
    }
}
