//! Project automation for raftkv, run as `cargo xtask <command>`.
//!
//! - `proto [--check]`: generate (or check) the Rust code of the `.proto` files.
//! - `cluster [--smoke] [--tls] [--release] [--data-dir DIR] [--ports-from-os]`: build the
//!   binaries and run a local three-node cluster (with `--smoke`: start it, check it, stop
//!   it; with `--tls`: TLS with client certificates and sealed gossip).
//! - `test [-- ARGS]`: the project's one test command (binaries, nextest or cargo test,
//!   doc tests).
//! - `deps`: check the crate dependency rules of ARCHITECTURE.md with `cargo tree`.
//! - `chaos --schedules N`: the long fault-injection tier.
//! - `certs [--dir D] [--nodes IDS] [--client NAME]`: a throwaway CA, node and client
//!   certificates for a TLS cluster (rcgen; no `openssl`).
//! - `soak --minutes N [--out DIR] [--release] [--fault-every 30s] [--sample-every 10s]`: a
//!   three-node cluster under mixed load with a fault every 30 s; RSS, open fds and disk use
//!   per node to CSV and a PNG plot, and a growth verdict.
//! - `bench [--runs N] [--scale F]`: raftkv against etcd, both on this machine, one load
//!   generator, figures as ratios with their spread.
//!
//! xtask keeps its dependencies few and never depends on the raftkv crates: it drives them
//! through cargo and the built binaries, as a user would.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;
mod chaos;
mod cluster;
mod deps;
mod proto;
mod soak;
mod soak_report;
mod test;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "raftkv project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate the Rust code of proto/**/*.proto into crates/proto/src/generated.
    Proto {
        /// Fail if the committed generated code differs from fresh output; write nothing.
        #[arg(long)]
        check: bool,
    },
    /// Build raftkv and raftkvctl, start a local three-node cluster and check it.
    ///
    /// Without --smoke the cluster runs until Ctrl-C.
    Cluster {
        /// Start the cluster, check it, stop it; the exit status says whether it all worked.
        /// Implies --ports-from-os.
        #[arg(long)]
        smoke: bool,
        /// Build and run the release binaries.
        #[arg(long)]
        release: bool,
        /// Where the nodes keep their data and logs (wiped first).
        /// Default: xtask-cluster in cargo's target directory (target/xtask-cluster).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Let the OS pick every port instead of grpc 40051-40053 / raft 50051-50053.
        #[arg(long)]
        ports_from_os: bool,
        /// TLS on both ports with client certificates, and sealed gossip: makes the files of
        /// `cargo xtask certs` in DATA_DIR/certs and prints the raftkvctl commands with
        /// --cacert, --cert and --key.
        #[arg(long)]
        tls: bool,
    },
    /// Build the binaries, then run every test: nextest (or cargo test), then doc tests.
    Test {
        /// Extra arguments for `cargo nextest run` (or `cargo test` without nextest).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
        args: Vec<OsString>,
    },
    /// Check the crate dependency rules of ARCHITECTURE.md with `cargo tree`.
    Deps,
    /// Make a throwaway CA, a certificate per node and a client certificate for a TLS
    /// cluster (docs/security.md), and print the flags that use them. Not for production:
    /// the CA's key is not kept.
    Certs {
        /// Where the files go (created if missing; existing files of the same names are
        /// replaced). Default: certs in cargo's target directory (target/certs).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The node ids to make certificates for (each names its id, localhost, 127.0.0.1
        /// and ::1).
        #[arg(long, value_delimiter = ',', default_value = "nodeA,nodeB,nodeC", value_name = "ID,...")]
        nodes: Vec<String>,
        /// The client certificate's common name.
        #[arg(long, default_value = "client", value_name = "NAME")]
        client: String,
    },
    /// raftkv against etcd (from PATH) on this machine: both as three-node clusters on
    /// 127.0.0.1, loaded in turn by `raftkvctl bench`; prints throughput, the ratio
    /// raftkv/etcd, p50, p99 and server CPU per operation per shape, median and spread over
    /// the runs.
    Bench {
        /// How many times each shape runs against each store.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Multiplies every shape's request count (e.g. 0.1 for a quick look).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Only the shapes whose name contains this (repeatable), e.g. `--only "put, 1 client"`.
        #[arg(long)]
        only: Vec<String>,
        /// Take `raftkv` and `raftkvctl` from this directory (another build) instead of
        /// building them.
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Also load raftkv through its etcd v3 API (`raftkvctl bench --target etcd` against
        /// raftkv's client port) and print raftkv-over-etcd-API against raftkv-native.
        #[arg(long)]
        etcd_api: bool,
    },
    /// The long fault-injection tier: N seeded schedules against a release build, each
    /// checked (linearizability, lost writes, duplicates, convergence); prints a summary and
    /// every failing seed.
    Chaos {
        /// How many schedules.
        #[arg(long, default_value_t = 20)]
        schedules: u64,
        /// The first seed (the others follow); default from the clock, printed. Replays a
        /// failing schedule with `--schedules 1 --seed S`.
        #[arg(long)]
        seed: Option<u64>,
        /// Seconds of traffic (and faults) per schedule.
        #[arg(long, default_value_t = 20)]
        secs: u64,
        /// Use the debug build instead of release.
        #[arg(long)]
        debug: bool,
        /// Run every node under libfaketime and mix the clock faults (10 % fast or slow, a
        /// minute's jump) into the schedules (needs Debian's `faketime`).
        #[arg(long)]
        clock: bool,
        /// The sessions reach the nodes through proxy links, and client-link resets and
        /// stalls are mixed into the schedules.
        #[arg(long)]
        client_links: bool,
        /// Then run the WAN profile (nodes in network namespaces, 20 ms ± 5 ms and 1 % loss)
        /// for this many seconds, asserting no leader change (needs root); `--schedules 0
        /// --wan-secs 300` runs it alone.
        #[arg(long)]
        wan_secs: Option<u64>,
    },
    /// A soak: a three-node cluster of real `raftkv` processes under mixed load (puts, gets,
    /// deletes, a watch; a bounded key space) with a fault every --fault-every; RSS, open
    /// file descriptors and disk use per node sampled every --sample-every into
    /// DIR/soak.csv and DIR/soak.png; prints a summary and fails if growth after the warm-up
    /// passes the stated bounds or the load saw a wrong value or a lost write.
    Soak {
        /// How long the load runs, in minutes (a fraction is fine).
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// How long the load runs, in seconds (instead of --minutes).
        #[arg(long, conflicts_with = "minutes")]
        seconds: Option<u64>,
        /// Where the CSV, the plot, the summary and the nodes' data and logs go.
        /// Default: soak in cargo's target directory (target/soak).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Build and run the release binaries.
        #[arg(long)]
        release: bool,
        /// Take `raftkv` and `raftkvctl` from this directory instead of building them.
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<PathBuf>,
        /// Time between two faults.
        #[arg(long, default_value = "30s", value_parser = soak::parse_duration)]
        fault_every: std::time::Duration,
        /// Time between two samples.
        #[arg(long, default_value = "10s", value_parser = soak::parse_duration)]
        sample_every: std::time::Duration,
        /// The warm-up the growth is measured after (at most half the run).
        #[arg(long, default_value = "5m", value_parser = soak::parse_duration)]
        warmup: std::time::Duration,
        /// Clients of the bulk writer (`raftkvctl bench put` over a fixed key set, for
        /// volume; 0: none).
        #[arg(long, default_value_t = 4)]
        bulk_clients: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}`: the whole context chain, without the backtrace that `RUST_BACKTRACE`
            // would add to anyhow's `Debug` output.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root()?;
    match cli.command {
        Cmd::Proto { check } => proto::run(&root, check),
        Cmd::Cluster { smoke, release, data_dir, ports_from_os, tls } => cluster::run(
            &root,
            &cluster::Options { smoke, release, data_dir, ports_from_os: ports_from_os || smoke, tls },
        ),
        Cmd::Test { args } => test::run(&root, &args),
        Cmd::Deps => deps::run(&root),
        Cmd::Certs { dir, nodes, client } => {
            certs(&dir.unwrap_or_else(|| target_dir(&root).join("certs")), &nodes, &client)
        }
        Cmd::Bench { runs, scale, only, bin_dir, etcd_api } => {
            bench::run(&root, &bench::Options { runs, scale, only, bin_dir, etcd_api })
        }
        Cmd::Chaos { schedules, seed, secs, debug, clock, client_links, wan_secs } => {
            let options = chaos::Options { schedules, seed, secs, release: !debug, clock, client_links, wan_secs };
            chaos::run(&root, &options)
        }
        Cmd::Soak { minutes, seconds, out, release, bin_dir, fault_every, sample_every, warmup, bulk_clients } => {
            let duration = match seconds {
                Some(secs) => std::time::Duration::from_secs(secs),
                None => std::time::Duration::try_from_secs_f64(minutes * 60.0)
                    .map_err(|e| anyhow::anyhow!("--minutes {minutes}: {e}"))?,
            };
            if duration.is_zero() || fault_every.is_zero() || sample_every.is_zero() {
                bail!("--minutes (or --seconds), --fault-every and --sample-every must be more than 0");
            }
            soak::run(
                &root,
                &soak::Options {
                    duration,
                    out,
                    release,
                    bin_dir,
                    fault_every,
                    sample_every,
                    warmup,
                    keys_per_client: soak::KEYS_PER_CLIENT,
                    bulk_clients,
                },
            )
        }
    }
}

/// `cargo xtask certs`: writes the files with [`proc_harness::certs::generate`] and prints
/// how to use them.
fn certs(dir: &Path, nodes: &[String], client: &str) -> Result<()> {
    let ids: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let (_, files) = proc_harness::certs::generate(dir, &ids, client)?;
    println!(
        "wrote a throwaway CA ({}), {} node certificates and a client certificate to {}",
        files.ca.display(),
        files.nodes.len(),
        dir.display()
    );
    for id in &ids {
        println!("  raftkv --raft_id {id} {} ...", files.node_args(id).join(" "));
    }
    println!("  raftkvctl {} get KEY", files.client_args().join(" "));
    println!("add --client-cert-auth to the nodes to require the client certificate; see docs/security.md");
    println!(
        "and --gossip-key-file {} to every node (with --gossip_addr) to seal gossip with the key written there",
        files.gossip_key.display()
    );
    Ok(())
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).context("xtask has no parent directory")
}

/// A `cargo` command run from the workspace root, using the cargo that runs xtask.
fn cargo(root: &Path) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root);
    cmd
}

/// Cargo's target directory: `CARGO_TARGET_DIR` if set, else `<workspace>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() { dir } else { std::env::current_dir().map(|cwd| cwd.join(&dir)).unwrap_or(dir) }
        }
        _ => root.join("target"),
    }
}

/// A command line as the user would type it, for logs and error messages.
fn display_cmd(cmd: &Command) -> String {
    let line = proc_harness::command_line(cmd);
    let program = Path::new(cmd.get_program());
    if program.file_name().is_some_and(|name| name == "cargo") {
        // The cargo that runs xtask, by whatever path: shown as the user typed it.
        let args = line.get(program.to_string_lossy().len()..).unwrap_or_default();
        format!("cargo{args}")
    } else {
        line
    }
}

/// Runs `cmd` with inherited stdio, echoing it first; fails unless it exits 0.
fn run_checked(cmd: &mut Command) -> Result<()> {
    let line = display_cmd(cmd);
    eprintln!("$ {line}");
    let status = cmd.status().with_context(|| format!("cannot run `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}
