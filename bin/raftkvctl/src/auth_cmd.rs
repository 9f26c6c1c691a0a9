//! The authentication commands of `raftkvctl`, in etcdctl's words: `auth enable|disable|status`,
//! `user add|delete|passwd|grant-role|revoke-role|list`,
//! `role add|delete|grant-permission|revoke-permission|list`; and the global `--user
//! NAME[:PASSWORD]`, which authenticates before the command runs (asking for the password
//! on the terminal when it is not given). A password is never printed.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Result, bail};
use clap::{Subcommand, ValueEnum};
use client::Client;
use client::auth::{Access, Role, User};
use serde_json::json;

use crate::Output;

#[derive(Subcommand, Debug)]
pub(crate) enum AuthCommand {
    /// Authentication: enable (needs a user `root`), disable, status.
    #[command(
        after_help = "Examples:\n  raftkvctl user add root:secret\n  raftkvctl auth enable\n  raftkvctl --user root:secret auth status\n  raftkvctl --user root auth disable    # asks for the password"
    )]
    Auth {
        #[command(subcommand)]
        command: AuthSub,
    },
    /// Users: add, delete, passwd, grant-role, revoke-role, list.
    #[command(
        after_help = "Examples:\n  raftkvctl --user root:secret user add alice:alicepw\n  raftkvctl --user root:secret user grant-role alice app\n  raftkvctl --user root:secret user passwd alice    # asks for the new password\n  raftkvctl --user root:secret user list"
    )]
    User {
        #[command(subcommand)]
        command: UserSub,
    },
    /// Roles: add, delete, grant-permission, revoke-permission, list.
    #[command(
        after_help = "Examples:\n  raftkvctl --user root:secret role add app\n  raftkvctl --user root:secret role grant-permission app readwrite app/ --prefix\n  raftkvctl --user root:secret role grant-permission app read config\n  raftkvctl --user root:secret role revoke-permission app app/ --prefix\n  raftkvctl --user root:secret role list"
    )]
    Role {
        #[command(subcommand)]
        command: RoleSub,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum AuthSub {
    /// Turn authentication on; a user named `root` must exist (it gets the root role).
    Enable,
    /// Turn authentication off; every token stops being valid.
    Disable,
    /// Whether authentication is on.
    Status,
}

#[derive(Subcommand, Debug)]
pub(crate) enum UserSub {
    /// Add a user: NAME:PASSWORD, or NAME to be asked for the password on the terminal.
    Add {
        #[arg(value_name = "NAME[:PASSWORD]")]
        account: String,
    },
    /// Delete a user.
    Delete { name: String },
    /// Change a user's password: NAME:PASSWORD, or NAME to be asked for it.
    Passwd {
        #[arg(value_name = "NAME[:PASSWORD]")]
        account: String,
    },
    /// Give a user a role.
    GrantRole { name: String, role: String },
    /// Take a role from a user.
    RevokeRole { name: String, role: String },
    /// List the users and their roles.
    List,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum PermType {
    Read,
    Write,
    Readwrite,
}

#[derive(Subcommand, Debug)]
pub(crate) enum RoleSub {
    /// Add a role (with no permission).
    Add { name: String },
    /// Delete a role (and take it from every user).
    Delete { name: String },
    /// Give a role a permission on a key, a range [KEY, RANGE_END) or a prefix (--prefix).
    GrantPermission {
        name: String,
        #[arg(value_enum)]
        perm_type: PermType,
        key: String,
        range_end: Option<String>,
        /// KEY is a prefix: every key that starts with it.
        #[arg(long, conflicts_with = "range_end")]
        prefix: bool,
    },
    /// Take from a role its permissions on exactly this key, range or prefix.
    RevokePermission {
        name: String,
        key: String,
        range_end: Option<String>,
        /// KEY is a prefix.
        #[arg(long, conflicts_with = "range_end")]
        prefix: bool,
    },
    /// List the roles and their permissions.
    List,
}

/// Splits `NAME[:PASSWORD]`, asking for the password on the terminal when it is missing.
pub(crate) fn name_and_password(user: &str, what: &str) -> Result<(String, String)> {
    if let Some((name, password)) = user.split_once(':') {
        return Ok((name.to_string(), password.to_string()));
    }
    Ok((user.to_string(), prompt(&format!("{what} for {user}: "))?))
}

/// Reads a password from the terminal with echo off (`stty`). Refuses when stdin is not a
/// terminal: give NAME:PASSWORD then.
fn prompt(question: &str) -> Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("no password given and stdin is not a terminal: give NAME:PASSWORD");
    }
    eprint!("{question}");
    let stty = |arg: &str| std::process::Command::new("stty").arg(arg).stdin(std::process::Stdio::inherit()).status();
    let echo_off = stty("-echo").is_ok_and(|s| s.success());
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if echo_off {
        let _ = stty("echo");
    }
    eprintln!();
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Runs one auth command and prints its answer.
pub(crate) async fn execute(cmd: &AuthCommand, client: &Client, output: Output, out: &mut impl Write) -> Result<()> {
    match cmd {
        AuthCommand::Auth { command } => auth(command, client, output, out).await,
        AuthCommand::User { command } => user(command, client, output, out).await,
        AuthCommand::Role { command } => role(command, client, output, out).await,
    }
}

/// Prints a change's answer: etcdctl's sentence, or `{"index": N}`.
fn done(out: &mut impl Write, output: Output, index: u64, sentence: &str) -> Result<()> {
    if output == Output::Json {
        writeln!(out, "{}", json!({ "index": index }))?;
    } else {
        writeln!(out, "{sentence}")?;
    }
    Ok(())
}

async fn auth(cmd: &AuthSub, client: &Client, output: Output, out: &mut impl Write) -> Result<()> {
    match cmd {
        AuthSub::Enable => done(out, output, client.auth_enable().await?.index, "Authentication Enabled"),
        AuthSub::Disable => done(out, output, client.auth_disable().await?.index, "Authentication Disabled"),
        AuthSub::Status => {
            let s = client.auth_status().await?;
            if output == Output::Json {
                writeln!(out, "{}", json!({ "enabled": s.enabled, "revision": s.revision }))?;
            } else {
                writeln!(out, "Authentication Status: {}", s.enabled)?;
                writeln!(out, "AuthRevision: {}", s.revision)?;
            }
            Ok(())
        }
    }
}

async fn user(cmd: &UserSub, client: &Client, output: Output, out: &mut impl Write) -> Result<()> {
    match cmd {
        UserSub::Add { account } => {
            let (name, password) = name_and_password(account, "Password")?;
            let r = client.user_add(&name, &password).await?;
            done(out, output, r.index, &format!("User {name} created"))
        }
        UserSub::Delete { name } => {
            done(out, output, client.user_delete(name).await?.index, &format!("User {name} deleted"))
        }
        UserSub::Passwd { account } => {
            let (name, password) = name_and_password(account, "New password")?;
            let r = client.user_change_password(&name, &password).await?;
            done(out, output, r.index, "Password updated")
        }
        UserSub::GrantRole { name, role } => {
            let r = client.user_grant_role(name, role).await?;
            done(out, output, r.index, &format!("Role {role} is granted to user {name}"))
        }
        UserSub::RevokeRole { name, role } => {
            let r = client.user_revoke_role(name, role).await?;
            done(out, output, r.index, &format!("Role {role} is revoked from user {name}"))
        }
        UserSub::List => print_users(out, output, &client.user_list().await?),
    }
}

fn print_users(out: &mut impl Write, output: Output, users: &[User]) -> Result<()> {
    match output {
        Output::Json => {
            let list: Vec<_> = users.iter().map(|u| json!({ "name": u.name, "roles": u.roles })).collect();
            writeln!(out, "{}", json!({ "users": list }))?;
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = users.iter().map(|u| vec![u.name.clone(), u.roles.join(",")]).collect();
            crate::print_table(out, &["USER", "ROLES"], &rows)?;
        }
        Output::Simple => {
            for u in users {
                writeln!(out, "{}", u.name)?;
            }
        }
    }
    Ok(())
}

fn access(t: PermType) -> Access {
    match t {
        PermType::Read => Access::Read,
        PermType::Write => Access::Write,
        PermType::Readwrite => Access::Readwrite,
    }
}

async fn role(cmd: &RoleSub, client: &Client, output: Output, out: &mut impl Write) -> Result<()> {
    match cmd {
        RoleSub::Add { name } => done(out, output, client.role_add(name).await?.index, &format!("Role {name} created")),
        RoleSub::Delete { name } => {
            done(out, output, client.role_delete(name).await?.index, &format!("Role {name} deleted"))
        }
        RoleSub::GrantPermission { name, perm_type, key, range_end, prefix } => {
            let permission = client::auth::Permission {
                access: access(*perm_type) as i32,
                key: key.clone().into_bytes().into(),
                range_end: range_end.clone().unwrap_or_default().into_bytes().into(),
                prefix: *prefix,
            };
            let r = client.role_grant_permission(name, permission).await?;
            done(out, output, r.index, &format!("Role {name} updated"))
        }
        RoleSub::RevokePermission { name, key, range_end, prefix } => {
            let end = range_end.clone().unwrap_or_default();
            let r = client.role_revoke_permission(name, key.as_bytes(), end.as_bytes(), *prefix).await?;
            done(out, output, r.index, &format!("Permission of key {key} is revoked from role {name}"))
        }
        RoleSub::List => print_roles(out, output, &client.role_list().await?),
    }
}

/// A permission as a line: `readwrite prefix "app/"`.
fn permission_text(p: &client::auth::Permission) -> String {
    let access = Access::try_from(p.access).map_or("unknown", |a| match a {
        Access::Read => "read",
        Access::Write => "write",
        Access::Readwrite => "readwrite",
        Access::Unspecified => "unknown",
    });
    let key = String::from_utf8_lossy(&p.key);
    if p.prefix {
        format!("{access} prefix {key:?}")
    } else if p.range_end.is_empty() {
        format!("{access} key {key:?}")
    } else {
        format!("{access} range [{key:?}, {:?})", String::from_utf8_lossy(&p.range_end))
    }
}

fn print_roles(out: &mut impl Write, output: Output, roles: &[Role]) -> Result<()> {
    match output {
        Output::Json => {
            let list: Vec<_> = roles
                .iter()
                .map(|r| json!({ "name": r.name, "permissions": r.permissions.iter().map(permission_text).collect::<Vec<_>>() }))
                .collect();
            writeln!(out, "{}", json!({ "roles": list }))?;
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = roles
                .iter()
                .map(|r| vec![r.name.clone(), r.permissions.iter().map(permission_text).collect::<Vec<_>>().join("; ")])
                .collect();
            crate::print_table(out, &["ROLE", "PERMISSIONS"], &rows)?;
        }
        Output::Simple => {
            for r in roles {
                writeln!(out, "{}", r.name)?;
                for p in &r.permissions {
                    writeln!(out, "  {}", permission_text(p))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_with_a_password_splits_at_the_first_colon() -> Result<()> {
        assert_eq!(name_and_password("alice:pw:x", "Password")?, ("alice".into(), "pw:x".into()));
        Ok(())
    }

    #[test]
    fn the_user_subcommands_do_not_take_the_global_user_flag() {
        use clap::Parser;
        let cli = crate::Cli::try_parse_from(["raftkvctl", "user", "add", "bob:pw"]);
        assert!(cli.is_ok_and(|c| c.user.is_none()));
    }

    #[test]
    fn permissions_read_as_etcdctl_writes_them() {
        let p = client::auth::Permission {
            access: Access::Readwrite as i32,
            key: b"app/".to_vec().into(),
            range_end: Default::default(),
            prefix: true,
        };
        assert_eq!(permission_text(&p), "readwrite prefix \"app/\"");
    }
}
