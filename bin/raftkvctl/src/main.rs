//! `raftkvctl`: the command-line client of raftkv, in the manner of etcdctl.
//!
//! Exit status: 0 on success, 1 when a key is not found, 2 on any error (grep's
//! convention). Errors go to stderr whatever the output format.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod admin_cmd;
mod bench;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use client::{Client, ClientError, ClientOptions};
use serde_json::json;

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

    /// Deadline of each request (e.g. 5s, 500ms).
    #[arg(long = "command-timeout", default_value = "10s", value_parser = parse_duration, global = true)]
    command_timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
Examples:
  raftkvctl --endpoints 127.0.0.1:40051,127.0.0.1:40052 put greeting hello
  raftkvctl get greeting
  raftkvctl -o json get greeting
  raftkvctl del greeting
  raftkvctl member add nodeB --raft-addr 127.0.0.1:50052 --grpc-addr 127.0.0.1:40052
  raftkvctl member list
  raftkvctl member remove nodeC
  raftkvctl leader transfer --to nodeB
  raftkvctl status --cluster
  raftkvctl snapshot save backup.rkvs

Exit status: 0 success, 1 key not found, 2 error.";

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Output {
    /// Human-readable.
    Simple,
    /// One JSON object.
    Json,
    /// A table, where the answer has rows (`status`, `member list`); otherwise as simple.
    Table,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Set a key to a value.
    #[command(after_help = "Example:\n  raftkvctl put greeting hello")]
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Print the value of a key (exit status 1 if it does not exist).
    #[command(after_help = "Examples:\n  raftkvctl get greeting\n  raftkvctl -o json get greeting")]
    Get {
        /// The key.
        key: String,
    },
    /// Delete a key; prints how many keys were deleted (0 or 1).
    #[command(after_help = "Example:\n  raftkvctl del greeting")]
    Del {
        /// The key.
        key: String,
    },
    /// Measure throughput and latency: puts of new keys, or linearizable gets.
    #[command(
        after_help = "Examples:\n  raftkvctl bench put --total 2000 --clients 1\n  raftkvctl bench put --total 20000 --clients 64 --value-size 256\n  raftkvctl -o json bench get --total 5000 --clients 16"
    )]
    Bench(bench::BenchArgs),
    #[command(flatten)]
    Admin(admin_cmd::AdminCommand),
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration such as 500ms or 5s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(|| format!("{s:?} is too long")),
        _ => Err(format!("{s:?} has an unknown unit {unit:?}; use ms, s or m")),
    }
}

/// How a command ended, for the exit status.
enum Outcome {
    Ok,
    NotFound(String),
}

async fn execute(cli: &Cli) -> Result<Outcome> {
    let options = ClientOptions { request_timeout: cli.command_timeout, ..ClientOptions::default() };
    let client = Client::new(cli.endpoints.iter().cloned(), options.clone())?;
    let mut out = std::io::stdout().lock();
    let json = cli.output == Output::Json;
    match &cli.command {
        Command::Put { key, value } => {
            let resp = client.put(key.as_bytes(), value.as_bytes()).await?;
            let index = resp.header.map(|h| h.index).unwrap_or(0);
            if json {
                writeln!(out, "{}", json!({ "index": index }))?;
            } else {
                writeln!(out, "OK")?;
            }
        }
        Command::Get { key } => {
            let resp = client.get(key.as_bytes()).await?;
            let kv = match resp.kv {
                Some(kv) if resp.found => kv,
                _ => return Ok(Outcome::NotFound(format!("key {key:?} not found"))),
            };
            if json {
                writeln!(
                    out,
                    "{}",
                    json!({
                        "key": String::from_utf8_lossy(&kv.key),
                        "value": String::from_utf8_lossy(&kv.value),
                        "create_index": kv.create_index,
                        "modify_index": kv.modify_index,
                        "version": kv.version,
                        "index": resp.header.map(|h| h.index).unwrap_or(0),
                    })
                )?;
            } else {
                out.write_all(&kv.value)?;
                writeln!(out)?;
            }
        }
        Command::Del { key } => {
            let resp = client.delete(key.as_bytes()).await?;
            if json {
                writeln!(
                    out,
                    "{}",
                    json!({ "deleted": resp.deleted, "index": resp.header.map(|h| h.index).unwrap_or(0) })
                )?;
            } else {
                writeln!(out, "{}", resp.deleted)?;
            }
        }
        Command::Bench(args) => {
            let summary = bench::run(&cli.endpoints, &options, args).await?;
            if json {
                writeln!(out, "{}", summary.json())?;
            } else {
                writeln!(out, "{}", summary.text())?;
            }
        }
        Command::Admin(cmd) => admin_cmd::execute(cmd, &client, cli.output, &mut out).await?,
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
            match e.downcast_ref::<ClientError>() {
                Some(ce) => eprintln!("raftkvctl: {ce}"),
                None => eprintln!("raftkvctl: {e:#}"),
            }
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("999999999999999999m").is_err());
        assert!(parse_duration("5h").is_err());
    }
}
