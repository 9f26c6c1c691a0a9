//! `raftkvctl`: the command-line client of raftkv, in the manner of etcdctl.
//!
//! Exit status: 0 on success, 1 when a key is not found, 2 on any error (grep's
//! convention). Errors go to stderr whatever the output format.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod admin_cmd;
mod auth_cmd;
mod bench;
mod etcd;
mod kv_cmd;
mod kv_print;
mod progress;
mod status_watch;
mod txn_syntax;
mod watch_cmd;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use client::{Client, ClientError, ClientOptions};

/// Command-line client of raftkv.
#[derive(Parser, Debug)]
#[command(name = "raftkvctl", version, about, after_help = EXAMPLES)]
struct Cli {
    /// Comma-separated node addresses (HOST:PORT); any nodes of the cluster.
    #[arg(long, env = "RAFTKV_ENDPOINTS", default_value = "127.0.0.1:40051", value_delimiter = ',', global = true)]
    endpoints: Vec<String>,

    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Simple, global = true)]
    output: Output,

    /// Deadline of each request: a number and a unit (500ms, 5s, 1m).
    #[arg(long = "command-timeout", default_value = "10s", value_parser = duration::parse, value_name = "DURATION", global = true)]
    command_timeout: Duration,

    /// Ask nodes not to forward to the leader: a follower answers with the leader's
    /// address instead, and raftkvctl goes there itself.
    #[arg(long = "no-forward", global = true)]
    no_forward: bool,

    /// Speak TLS, trusting the nodes' certificates signed by this CA (PEM). Each node's
    /// certificate must be valid for the host of its endpoint.
    #[arg(
        id = "tls_cacert",
        long = "cacert",
        env = "RAFTKV_CACERT",
        value_name = "PATH",
        global = true,
        help_heading = "TLS"
    )]
    cacert: Option<PathBuf>,

    /// The client certificate to present (PEM), for nodes started with --client-cert-auth;
    /// needs --key and --cacert.
    #[arg(id = "tls_cert", long = "cert", env = "RAFTKV_CERT", value_name = "PATH", global = true, requires_all = ["tls_key", "tls_cacert"], help_heading = "TLS")]
    cert: Option<PathBuf>,

    /// The private key of --cert (PEM).
    #[arg(
        id = "tls_key",
        long = "key",
        env = "RAFTKV_KEY",
        value_name = "PATH",
        global = true,
        requires = "tls_cert",
        help_heading = "TLS"
    )]
    key: Option<PathBuf>,

    /// Authenticate as this user before the command: NAME:PASSWORD, or NAME alone to be
    /// asked for the password on the terminal. Needed once the cluster has auth enabled.
    #[arg(
        long,
        env = "RAFTKV_USER",
        value_name = "NAME[:PASSWORD]",
        global = true,
        help_heading = "Authentication",
        hide_env_values = true
    )]
    user: Option<String>,

    /// Send this bearer token (from an earlier Authenticate) instead of --user.
    #[arg(
        long,
        env = "RAFTKV_TOKEN",
        value_name = "TOKEN",
        global = true,
        conflicts_with = "user",
        help_heading = "Authentication",
        hide_env_values = true
    )]
    token: Option<String>,

    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
Examples:
  raftkvctl --endpoints 127.0.0.1:40051,127.0.0.1:40052 put greeting hello
  raftkvctl get greeting
  raftkvctl -o json get greeting
  raftkvctl del greeting
  raftkvctl watch --prefix config/
  raftkvctl member add nodeB --raft-addr 127.0.0.1:50052 --grpc-addr 127.0.0.1:40052
  raftkvctl member list
  raftkvctl member remove nodeC
  raftkvctl leader transfer --to nodeB
  raftkvctl status --cluster
  raftkvctl status --cluster --watch
  raftkvctl snapshot save backup.rkvs
  raftkvctl --cacert certs/ca.crt --cert certs/client.crt --key certs/client.key get greeting
  raftkvctl user add root:secret && raftkvctl auth enable
  raftkvctl --user root:secret role grant-permission app readwrite app/ --prefix

Durations (--command-timeout, --timeout, --wait, --interval, --progress-interval) are a whole
number and a unit: 500ms, 2s or 1m; a bare number is refused.

Exit status: 0 success, 1 key not found, 2 error.";

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum Output {
    /// Human-readable.
    Simple,
    /// One JSON object.
    Json,
    /// A table, where the answer has rows (keys, `status`, `member list`); otherwise as simple.
    Table,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Kv(kv_cmd::KvCommand),
    /// Measure throughput and latency: puts of new keys, linearizable gets, or the time from
    /// a write's acknowledgement to its event on a watcher of another node.
    #[command(
        after_help = "Examples:\n  raftkvctl bench put --total 2000 --clients 1\n  raftkvctl bench put --total 2000 --clients 64 --stages\n  raftkvctl bench put --total 20000 --clients 64 --value-size 256\n  raftkvctl -o json bench get --total 5000 --clients 16\n  raftkvctl --endpoints LEADER,FOLLOWER bench watch --total 1000 --interval 20ms"
    )]
    Bench(bench::BenchArgs),
    #[command(flatten)]
    Admin(admin_cmd::AdminCommand),
    #[command(flatten)]
    Auth(auth_cmd::AuthCommand),
    /// Print the changes to a key or a prefix as they come (until interrupted). After a
    /// disconnect it resumes on another endpoint without losing or repeating a change.
    #[command(after_help = "\
Prints one line per change: INDEX PUT KEY VALUE, or INDEX DELETE KEY. When the serving node
installs a snapshot: INDEX ABANDONED, then INDEX STATE KEY VALUE for each key as restored.
With -o json: one JSON object per line.

Examples:
  raftkvctl watch greeting
  raftkvctl watch --prefix config/ --from 120    # replay from index 120, then follow
  raftkvctl -o json watch --prefix jobs/ --keys-only
  raftkvctl --endpoints 127.0.0.1:40052,127.0.0.1:40053 watch greeting --max-events 1")]
    Watch(watch_cmd::WatchArgs),
}

/// Prints rows under a header, in columns padded to the widest cell.
pub(crate) fn print_table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// How a command ended, for the exit status.
pub(crate) enum Outcome {
    Ok,
    NotFound(String),
}

async fn execute(cli: &Cli) -> Result<Outcome> {
    let tls =
        cli.cacert.clone().map(|ca| rpc::tls::ClientTlsFiles { ca, identity: cli.cert.clone().zip(cli.key.clone()) });
    let mut options = ClientOptions {
        request_timeout: cli.command_timeout,
        no_forward: cli.no_forward,
        tls,
        token: cli.token.clone(),
        ..ClientOptions::default()
    };
    let mut client = Client::new(cli.endpoints.iter().cloned(), options.clone())?;
    if let Some(user) = &cli.user {
        // Every client made below (watch, bench) carries the token, and authenticates
        // again with the password when it expires (a long watch or benchmark).
        let (name, password) = auth_cmd::name_and_password(user, "Password")?;
        options.token = Some(client.authenticate(&name, &password).await?);
        options.credentials = Some(client::Credentials { name, password });
        client = Client::new(cli.endpoints.iter().cloned(), options.clone())?;
    }
    let mut out = std::io::stdout().lock();
    let json = cli.output == Output::Json;
    match &cli.command {
        Command::Kv(cmd) => return kv_cmd::run(cmd, &client, cli.output, &mut out).await,
        Command::Bench(args) => {
            args.check_stages()?;
            // The leader proposes every write: its figures are reset now and read after the run.
            let leader = if args.stages {
                let addr = admin_cmd::leader_grpc_addr(&client).await?;
                client.write_stages_of(&addr, true).await?;
                Some(addr)
            } else {
                None
            };
            let summary = bench::run(&cli.endpoints, &options, args).await?;
            let stages = match &leader {
                Some(addr) => Some(client.write_stages_of(addr, false).await?),
                None => None,
            };
            if json {
                let mut v = summary.json();
                if let Some(s) = &stages {
                    v["stages"] = admin_cmd::stages_json(s);
                }
                writeln!(out, "{v}")?;
            } else {
                writeln!(out, "{}", summary.text())?;
                if let Some(s) = &stages {
                    writeln!(out)?;
                    admin_cmd::print_stages(&mut out, s)?;
                }
            }
        }
        Command::Admin(cmd) => admin_cmd::execute(cmd, &client, cli.output, &mut out).await?,
        Command::Auth(cmd) => auth_cmd::execute(cmd, &client, cli.output, &mut out).await?,
        Command::Watch(args) => {
            // A watch outlives any one request: keep trying endpoints for a while.
            let options = ClientOptions { max_retries: options.max_retries.max(30), ..options };
            let client = Client::new(cli.endpoints.iter().cloned(), options)?;
            watch_cmd::run(args, &client, cli.output, &mut out).await?;
        }
    }
    Ok(Outcome::Ok)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("RAFTKVCTL_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    // Benchmarks drive many connections at once; every other command is one request.
    let runtime = if matches!(cli.command, Command::Bench(_)) {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raftkvctl: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(execute(&cli)) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::NotFound(msg)) => {
            eprintln!("raftkvctl: {msg}");
            ExitCode::from(1)
        }
        // The reader of our output went away (`raftkvctl status | head -1`): not a failure.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            let text = error_text(&e);
            let text = format!("{text}{}", tls_hint(cli.cacert.is_some(), cli.cert.is_some(), &text));
            if cli.output == Output::Json {
                eprintln!("{}", error_json(&e, &text));
            } else {
                eprintln!("raftkvctl: {text}");
            }
            ExitCode::from(2)
        }
    }
}

/// An error's chain of causes, `: `-separated, where a server's answer is its message alone
/// (not prefixed by the gRPC code's description, as tonic displays it).
fn error_text(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        if let Some(ce) = cause.downcast_ref::<ClientError>() {
            // Its message already says what its sources say.
            parts.push(ce.message());
            break;
        }
        parts.push(cause.to_string());
    }
    parts.join(": ")
}

/// The error as `-o json` prints it (on stderr): `{"error": {"code": "INVALID_ARGUMENT",
/// "message": "..."}}`, with the gRPC code's canonical name when a server answered
/// (`UNAVAILABLE` when no endpoint could be reached).
fn error_json(e: &anyhow::Error, text: &str) -> serde_json::Value {
    let code = match e.chain().find_map(|c| c.downcast_ref::<ClientError>()) {
        Some(ClientError::Status(s)) => Some(code_name(s.code())),
        // Nothing answered: what a gRPC client reports as UNAVAILABLE.
        Some(ClientError::Unreachable { .. }) => Some(code_name(tonic::Code::Unavailable)),
        _ => None,
    };
    match code {
        Some(code) => serde_json::json!({ "error": { "code": code, "message": text } }),
        None => serde_json::json!({ "error": { "message": text } }),
    }
}

/// A gRPC code's canonical name, as the gRPC specification spells it (`INVALID_ARGUMENT`).
fn code_name(code: tonic::Code) -> String {
    let camel = format!("{code:?}");
    let mut name = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// A hint on what to change when an error looks like a TLS mismatch between raftkvctl's
/// flags and the node's (the transport's own words are terse); empty otherwise.
fn tls_hint(tls: bool, cert: bool, error: &str) -> &'static str {
    // Nothing answered at all (no node there, or unreachable): TLS is not the question.
    let no_connection = ["tcp connect error", "Connection refused", "dns error", "timed out"];
    if no_connection.iter().any(|e| error.contains(e)) {
        ""
    } else if !tls
        && (error.contains("h2 protocol error")
            || error.contains("transport error")
            || error.contains("connection reset"))
    {
        " (is the node serving TLS? then give --cacert with its CA)"
    } else if tls && error.contains("invalid peer certificate") {
        " (the node's certificate is not signed by the --cacert CA, has expired, or does not name the endpoint's host)"
    } else if tls && !cert && (error.contains("CertificateRequired") || error.contains("broken pipe")) {
        " (the node closed the connection after the handshake: it may require a client certificate; give --cert and --key)"
    } else if tls && cert && (error.contains("broken pipe") || error.contains("fatal alert")) {
        " (the node closed the connection after the handshake: is --cert signed by a CA the node trusts?)"
    } else if tls && (error.contains("InvalidContentType") || error.contains("corrupt message")) {
        " (the node does not speak TLS: drop --cacert)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_tls_hint_when_nothing_answered() {
        let refused = "no endpoint reachable (127.0.0.1:1): 127.0.0.1:1: transport error: tcp connect error: Connection refused (os error 111)";
        assert_eq!(tls_hint(false, false, refused), "");
        assert_eq!(tls_hint(true, true, refused), "");
        // A plaintext client whose connection a TLS node closed still gets the hint.
        assert!(tls_hint(false, false, "transport error: h2 protocol error: connection reset").contains("--cacert"));
    }

    #[test]
    fn code_names_are_the_canonical_ones() {
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(tonic::Code::Unauthenticated), "UNAUTHENTICATED");
    }

    #[test]
    fn errors_print_the_message_without_the_code_description() {
        let status = tonic::Status::invalid_argument("key is empty; give a key of 1 to 4096 bytes");
        let e = anyhow::Error::new(ClientError::Status(status));
        assert_eq!(error_text(&e), "key is empty; give a key of 1 to 4096 bytes");
        let e = e.context("reading greeting");
        assert_eq!(error_text(&e), "reading greeting: key is empty; give a key of 1 to 4096 bytes");
        let v = error_json(&e, &error_text(&e));
        assert_eq!(v["error"]["code"], "INVALID_ARGUMENT");
        assert_eq!(v["error"]["message"], "reading greeting: key is empty; give a key of 1 to 4096 bytes");
        let unreachable =
            anyhow::Error::new(ClientError::Unreachable { endpoints: "h:1".into(), last: "refused".into() });
        assert_eq!(error_json(&unreachable, "x")["error"]["code"], "UNAVAILABLE");
        let plain = anyhow::anyhow!("no such file");
        assert_eq!(error_json(&plain, "no such file"), serde_json::json!({ "error": { "message": "no such file" } }));
    }

    #[test]
    fn durations() {
        assert_eq!(duration::parse("500ms"), Ok(Duration::from_millis(500)));
        // A bare number once meant seconds here; now it is refused, as by `raftkv`.
        assert!(duration::parse("5").is_err());
        assert_eq!(duration::parse("2m"), Ok(Duration::from_secs(120)));
        assert!(duration::parse("999999999999999999m").is_err());
        assert!(duration::parse("5h").is_err());
    }

    #[test]
    fn every_duration_flag_refuses_a_bare_number() {
        let cases: [&[&str]; 7] = [
            &["raftkvctl", "--command-timeout", "5", "get", "k"],
            &["raftkvctl", "get", "k", "--min-index", "3", "--wait", "5"],
            &["raftkvctl", "member", "add", "n", "--raft-addr", "h:1", "--grpc-addr", "h:2", "--timeout", "5"],
            &["raftkvctl", "leader", "transfer", "--to", "n", "--timeout", "5"],
            &["raftkvctl", "snapshot", "save", "f", "--timeout", "5"],
            &["raftkvctl", "bench", "watch", "--interval", "5"],
            &["raftkvctl", "watch", "k", "--progress-interval", "5"],
        ];
        for args in cases {
            let mut with_unit: Vec<&str> = args.to_vec();
            if let Some(last) = with_unit.iter_mut().rev().find(|a| **a == "5") {
                *last = "5s";
            }
            assert!(Cli::try_parse_from(&with_unit).is_ok(), "{with_unit:?} should parse");
            let message = Cli::try_parse_from(args).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains("\"5\" needs a unit: 5ms, 5s or 5m"), "{args:?}: {message}");
        }
    }
}
