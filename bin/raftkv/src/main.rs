//! `raftkv`: one node of a raftkv cluster.
//!
//! Parses its configuration (flags in the Go seed's spellings or kebab-case ones, then
//! `RAFTKV_*` environment variables, then a TOML file given with `--config`: [`config`]),
//! sets up logging (`RUST_LOG`, to stderr, as text or JSON lines), and runs the engine until
//! SIGINT or SIGTERM, then shuts down gracefully. `raftkv --print-config` prints the
//! effective configuration instead. `raftkv recover` and `raftkv restore` work on a stopped
//! node's data ([`offline`]).

mod config;
#[cfg(feature = "failpoints")]
mod crash;
mod offline;
mod progress;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use engine::NodeConfig;
use gossip::GossipConfig;
use tracing_subscriber::EnvFilter;
use types::NodeId;

/// The node's allocator. A put allocates a few dozen times on its way through gRPC, Raft and
/// the state machine, on several threads; under put load glibc's malloc and free were 16 %
/// of the leader's CPU (BENCHMARKS.md), mimalloc's thread-local free lists cost less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A node of raftkv, a replicated, strongly consistent key-value store.
///
/// Start the first node with --raft_bootstrap; start the others without it and add them
/// with `raftkvctl member add`. Data lives in <raft_data_dir>/<raft_id>/.
/// The environment variable that may hold the password of `--join-user` (instead of
/// `--join-password-file`).
const JOIN_PASSWORD_ENV: &str = "RAFTKV_JOIN_PASSWORD";

#[derive(Parser, Debug)]
#[command(
    name = "raftkv",
    version,
    about,
    long_about = None,
    after_help = EXAMPLES,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Args {
    /// Offline operations on a stopped node's data (without one: run a node).
    #[command(subcommand)]
    command: Option<offline::Offline>,

    /// A TOML file of settings: `key = value`, the keys being the flags' names with
    /// underscores (docs/config.md). Flags and RAFTKV_* variables win over it.
    #[arg(long = "config", env = "RAFTKV_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print the effective configuration (as a config file, each key with where its value
    /// came from: flag, env, file or default) and exit.
    #[arg(long = "print-config", alias = "print_config")]
    print_config: bool,

    /// How log lines are written to stderr: text, or json (one object per line). What is
    /// logged is set by RUST_LOG (default: info,openraft=warn).
    #[arg(long = "log-format", alias = "log_format", env = "RAFTKV_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// This node's id; stays the same for the node's whole life.
    #[arg(
        long = "raft_id",
        alias = "raft-id",
        env = "RAFTKV_RAFT_ID",
        value_parser = parse_id,
        required_unless_present = "print_config"
    )]
    raft_id: Option<NodeId>,

    /// Address for Raft traffic between nodes (host:port; port 0 picks a free port).
    #[arg(long = "raft_addr", alias = "raft-addr", env = "RAFTKV_RAFT_ADDR", default_value = "localhost:50051")]
    raft_addr: String,

    /// Address clients and admin tools connect to (host:port; port 0 picks a free port).
    #[arg(long = "grpc_addr", alias = "grpc-addr", env = "RAFTKV_GRPC_ADDR", default_value = "localhost:40051")]
    grpc_addr: String,

    /// Base data directory; this node's files go to <raft_data_dir>/<raft_id>/.
    #[arg(long = "raft_data_dir", alias = "raft-data-dir", env = "RAFTKV_RAFT_DATA_DIR", default_value_os_t = std::env::temp_dir())]
    raft_data_dir: PathBuf,

    /// Start a new cluster with this node as its only voter, if it has no state yet.
    /// Restarting with this flag on existing state is fine: it just starts.
    #[arg(
        long = "raft_bootstrap",
        alias = "raft-bootstrap",
        env = "RAFTKV_RAFT_BOOTSTRAP",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value = "false",
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    raft_bootstrap: bool,

    /// How often the leader sends heartbeats (a number and a unit: 100ms, 1s).
    #[arg(long = "heartbeat_interval", alias = "heartbeat-interval", env = "RAFTKV_HEARTBEAT_INTERVAL", default_value = "100ms", value_parser = duration::parse, value_name = "DURATION")]
    heartbeat_interval: Duration,

    /// A follower that hears from no leader for this long (randomized up to twice as long)
    /// starts an election. At least 3 times the heartbeat interval.
    #[arg(long = "election_timeout", alias = "election-timeout", env = "RAFTKV_ELECTION_TIMEOUT", default_value = "1s", value_parser = duration::parse, value_name = "DURATION")]
    election_timeout: Duration,

    /// Take a snapshot after this many log entries since the last one.
    #[arg(
        long = "snapshot_threshold",
        alias = "snapshot-threshold",
        env = "RAFTKV_SNAPSHOT_THRESHOLD",
        default_value_t = engine::DEFAULT_SNAPSHOT_THRESHOLD
    )]
    snapshot_threshold: u64,

    /// Log entries kept behind a snapshot, for followers that lag a little.
    #[arg(long = "trailing_logs", alias = "trailing-logs", env = "RAFTKV_TRAILING_LOGS", default_value_t = 10240)]
    trailing_logs: u64,

    /// Also take a snapshot when this much time has passed and entries were applied since the
    /// last one; 0s turns the check off.
    #[arg(long = "snapshot_interval", alias = "snapshot-interval", env = "RAFTKV_SNAPSHOT_INTERVAL", default_value = "120s", value_parser = duration::parse, value_name = "DURATION")]
    snapshot_interval: Duration,

    /// The most log entries sent to a follower in one message (1 to 1024).
    #[arg(
        long = "max_append_entries",
        alias = "max-append-entries",
        env = "RAFTKV_MAX_APPEND_ENTRIES",
        default_value_t = 300
    )]
    max_append_entries: u64,

    /// The most bytes (encoded) of log entries sent to a follower in one message (1 KiB to
    /// 256 MiB); a single larger entry still goes, alone.
    #[arg(
        long = "max_append_bytes",
        alias = "max-append-bytes",
        env = "RAFTKV_MAX_APPEND_BYTES",
        default_value_t = engine::MAX_APPEND_BYTES
    )]
    max_append_bytes: usize,

    /// How long shutdown waits for in-flight requests (and, on the leader, for leadership
    /// to pass to another voter first).
    #[arg(long = "shutdown_grace", alias = "shutdown-grace", env = "RAFTKV_SHUTDOWN_GRACE", default_value = "5s", value_parser = duration::parse, value_name = "DURATION")]
    shutdown_grace: Duration,

    /// A client request (KV or Admin) slower than this is logged once, at warn, with its
    /// method, the start of its key (never the value), this node and the time it took.
    #[arg(long = "slow-request-threshold", alias = "slow_request_threshold", env = "RAFTKV_SLOW_REQUEST_THRESHOLD", default_value = "1s", value_parser = duration::parse, value_name = "DURATION")]
    slow_request_threshold: Duration,

    /// How long an authentication token this node issues stays valid (whole seconds, 1s
    /// to 24h; etcd's --auth-token-ttl). Clients given a password authenticate again when
    /// theirs expires.
    #[arg(long = "auth-token-ttl", alias = "auth_token_ttl", env = "RAFTKV_AUTH_TOKEN_TTL", default_value = "300s", value_parser = duration::parse, value_name = "DURATION")]
    auth_token_ttl: Duration,
    /// The most client calls (KV, Admin, Auth, the compat services) served at once; a call
    /// past it is answered RESOURCE_EXHAUSTED at once (retryable, never queued). Open watch
    /// streams and waiting blocking reads do not count. The Raft port is never limited.
    #[arg(long = "max-in-flight-requests", alias = "max_in_flight_requests", env = "RAFTKV_MAX_IN_FLIGHT_REQUESTS", default_value_t = engine::DEFAULT_MAX_IN_FLIGHT_REQUESTS)]
    max_in_flight_requests: usize,

    /// The most bytes of client request messages held at once (at least 2 MiB, the largest
    /// message); a call whose message does not fit is answered RESOURCE_EXHAUSTED at once
    /// (retryable).
    #[arg(long = "max-in-flight-request-bytes", alias = "max_in_flight_request_bytes", env = "RAFTKV_MAX_IN_FLIGHT_REQUEST_BYTES", default_value_t = engine::DEFAULT_MAX_IN_FLIGHT_REQUEST_BYTES)]
    max_in_flight_request_bytes: usize,

    /// The most client connections open at once; a connection past it is refused at accept
    /// (in plaintext with an HTTP/2 GOAWAY, REFUSED_STREAM: clients see UNAVAILABLE and may
    /// retry, nothing was done). The Raft port is never limited.
    #[arg(long = "max-client-connections", alias = "max_client_connections", env = "RAFTKV_MAX_CLIENT_CONNECTIONS", default_value_t = engine::DEFAULT_MAX_CLIENT_CONNECTIONS)]
    max_client_connections: usize,

    /// The longest a client call may run: a longer caller deadline is lowered to it, and a
    /// call still running 1 s past it is answered DEADLINE_EXCEEDED.
    #[arg(long = "request-timeout", alias = "request_timeout", env = "RAFTKV_REQUEST_TIMEOUT", default_value = "120s", value_parser = duration::parse, value_name = "DURATION")]
    request_timeout: Duration,

    /// On a node with no Raft state: ask these members (their --grpc_addr, comma-separated)
    /// to add this node as a voter, retrying until it is one. With gossip on, the members
    /// gossip finds are asked too, and a bare `--join` (no addresses) finds the cluster
    /// through --gossip_seeds alone. Does nothing on a node that has state. Not with
    /// --raft_bootstrap.
    #[arg(long = "join", env = "RAFTKV_JOIN", value_delimiter = ',', value_name = "HOST:PORT", num_args = 0..)]
    join: Option<Vec<String>>,

    /// The user --join authenticates as when the cluster has authentication on (it needs
    /// the root role); its password comes from --join-password-file, or the
    /// RAFTKV_JOIN_PASSWORD environment variable. Never logged.
    #[arg(long = "join-user", alias = "join_user", env = "RAFTKV_JOIN_USER", value_name = "NAME")]
    join_user: Option<String>,

    /// A file holding the password of --join-user (its final line break is ignored); it must
    /// be readable by its owner only (chmod 600).
    #[arg(
        long = "join-password-file",
        alias = "join_password_file",
        env = "RAFTKV_JOIN_PASSWORD_FILE",
        value_name = "PATH"
    )]
    join_password_file: Option<PathBuf>,

    /// UDP address to gossip on (host:port; port 0 picks a free port); empty turns gossip
    /// off. Gossip finds nodes and their addresses and watches their liveness; it never
    /// changes the Raft membership.
    #[arg(long = "gossip_addr", alias = "gossip-addr", env = "RAFTKV_GOSSIP_ADDR", default_value = "")]
    gossip_addr: String,

    /// Gossip addresses of nodes to contact first (comma-separated host:port).
    #[arg(
        long = "gossip_seeds",
        alias = "gossip-seeds",
        env = "RAFTKV_GOSSIP_SEEDS",
        value_delimiter = ',',
        value_name = "HOST:PORT"
    )]
    gossip_seeds: Vec<String>,

    /// The gossip address other nodes reach this one at (default: --gossip_addr with the
    /// bound port). Needed when --gossip_addr is 0.0.0.0 or behind NAT.
    #[arg(long = "gossip_advertise_addr", alias = "gossip-advertise-addr", env = "RAFTKV_GOSSIP_ADVERTISE_ADDR")]
    gossip_advertise_addr: Option<String>,

    /// Nodes gossip only with nodes of the same cluster id, so two clusters on one network
    /// never mix.
    #[arg(long = "cluster_id", alias = "cluster-id", env = "RAFTKV_CLUSTER_ID", default_value = gossip::DEFAULT_CLUSTER_ID)]
    cluster_id: String,

    /// How often a node gossips.
    #[arg(long = "gossip_interval", alias = "gossip-interval", env = "RAFTKV_GOSSIP_INTERVAL", default_value = "500ms", value_parser = duration::parse, value_name = "DURATION")]
    gossip_interval: Duration,

    /// The failure detector's phi threshold: a node is reported dead after about this many
    /// gossip intervals without a heartbeat (1 to 100).
    #[arg(
        long = "gossip_phi_threshold",
        alias = "gossip-phi-threshold",
        env = "RAFTKV_GOSSIP_PHI_THRESHOLD",
        default_value_t = 8.0
    )]
    gossip_phi_threshold: f64,

    /// The cluster's gossip key: a file holding 32 random bytes in base64, readable by its
    /// owner only (`head -c 32 /dev/urandom | base64 > gossip.key && chmod 600 gossip.key`).
    /// Every datagram is then encrypted and authenticated with it, the cluster id bound in;
    /// forged, replayed and foreign datagrams are dropped. Every node needs the same key.
    #[arg(
        long = "gossip-key-file",
        alias = "gossip_key_file",
        env = "RAFTKV_GOSSIP_KEY_FILE",
        value_name = "PATH",
        help_heading = "TLS (docs/security.md)"
    )]
    gossip_key_file: Option<PathBuf>,

    /// How long a dead node stays listed in gossip before it is forgotten.
    #[arg(long = "gossip_dead_grace", alias = "gossip-dead-grace", env = "RAFTKV_GOSSIP_DEAD_GRACE", default_value = "60m", value_parser = duration::parse, value_name = "DURATION")]
    gossip_dead_grace: Duration,

    /// Static peers: other nodes' addresses by id, ID=RAFT_ADDR@GRPC_ADDR, comma-separated.
    /// Asked after gossip and before the Raft membership when a node's address is needed.
    #[arg(long = "peers", env = "RAFTKV_PEERS", default_value = "", value_name = "ID=RAFT@GRPC,...")]
    peers: String,

    /// A file of static peers: ID=RAFT_ADDR@GRPC_ADDR entries separated by commas or
    /// newlines; `#` starts a comment.
    #[arg(long = "peers_file", alias = "peers-file", env = "RAFTKV_PEERS_FILE")]
    peers_file: Option<PathBuf>,

    /// The most recent changes kept in memory for watches that start from a past index
    /// (at least 1). A watch from an older index is refused as compacted.
    #[arg(
        long = "watch_history_events",
        alias = "watch-history-events",
        env = "RAFTKV_WATCH_HISTORY_EVENTS",
        default_value_t = engine::DEFAULT_HISTORY_EVENTS
    )]
    watch_history_events: usize,

    /// The most bytes of recent changes (keys and values) kept for watches (at least 1).
    #[arg(
        long = "watch_history_bytes",
        alias = "watch-history-bytes",
        env = "RAFTKV_WATCH_HISTORY_BYTES",
        default_value_t = engine::DEFAULT_HISTORY_BYTES
    )]
    watch_history_bytes: usize,

    /// redb's page cache for the state machine's database, in bytes. Pages outside it are
    /// read through the operating system's page cache.
    #[arg(
        long = "sm_db_cache_bytes",
        alias = "sm-db-cache-bytes",
        env = "RAFTKV_SM_DB_CACHE_BYTES",
        default_value_t = engine::DEFAULT_SM_DB_CACHE_BYTES
    )]
    sm_db_cache_bytes: usize,

    /// redb's page cache for the Raft log's database, in bytes.
    #[arg(
        long = "log_db_cache_bytes",
        alias = "log-db-cache-bytes",
        env = "RAFTKV_LOG_DB_CACHE_BYTES",
        default_value_t = engine::DEFAULT_LOG_DB_CACHE_BYTES
    )]
    log_db_cache_bytes: usize,

    /// The most durable entries the in-memory log cache keeps (entries not yet durable
    /// always stay); older ones are read from the log's database.
    #[arg(
        long = "log_cache_entries",
        alias = "log-cache-entries",
        env = "RAFTKV_LOG_CACHE_ENTRIES",
        default_value_t = engine::LOG_CACHE_ENTRIES
    )]
    log_cache_entries: usize,

    /// The most bytes (encoded) of durable entries the in-memory log cache keeps.
    #[arg(
        long = "log_cache_bytes",
        alias = "log-cache-bytes",
        env = "RAFTKV_LOG_CACHE_BYTES",
        default_value_t = engine::LOG_CACHE_BYTES
    )]
    log_cache_bytes: usize,

    /// The storage quota: when the state machine database (sm/state.redb) grows past this
    /// many bytes the node raises a NOSPACE alarm and the cluster refuses writes that add
    /// data until the alarm is cleared (`raftkvctl alarm disarm`); 0 turns it off.
    #[arg(
        long = "quota_backend_bytes",
        alias = "quota-backend-bytes",
        env = "RAFTKV_QUOTA_BACKEND_BYTES",
        default_value_t = engine::DEFAULT_QUOTA_BACKEND_BYTES
    )]
    quota_backend_bytes: u64,

    /// The free space, in bytes, kept on the filesystem of the data directory: below it the
    /// node raises a NOSPACE alarm, before the disk is actually full; 0 turns it off.
    #[arg(
        long = "disk_reserve_bytes",
        alias = "disk-reserve-bytes",
        env = "RAFTKV_DISK_RESERVE_BYTES",
        default_value_t = engine::DEFAULT_DISK_RESERVE_BYTES
    )]
    disk_reserve_bytes: u64,

    /// The client port's TLS certificate (PEM, leaf first). TLS is on both ports or neither:
    /// with it give --key-file, --peer-cert-file, --peer-key-file and --peer-trusted-ca-file.
    #[arg(long = "cert-file", env = "RAFTKV_CERT_FILE", value_name = "PATH", help_heading = "TLS (docs/security.md)")]
    cert_file: Option<PathBuf>,

    /// The private key of --cert-file (PEM).
    #[arg(long = "key-file", env = "RAFTKV_KEY_FILE", value_name = "PATH", help_heading = "TLS (docs/security.md)")]
    key_file: Option<PathBuf>,

    /// The CA that client certificates must chain to (PEM).
    #[arg(
        long = "trusted-ca-file",
        env = "RAFTKV_TRUSTED_CA_FILE",
        value_name = "PATH",
        help_heading = "TLS (docs/security.md)"
    )]
    trusted_ca_file: Option<PathBuf>,

    /// Refuse clients without a certificate from --trusted-ca-file.
    #[arg(long = "client-cert-auth", env = "RAFTKV_CLIENT_CERT_AUTH", help_heading = "TLS (docs/security.md)")]
    client_cert_auth: bool,

    /// The Raft port's certificate (PEM), also presented on every connection to another
    /// node; it must name this node's id (common name or DNS SAN).
    #[arg(
        long = "peer-cert-file",
        env = "RAFTKV_PEER_CERT_FILE",
        value_name = "PATH",
        help_heading = "TLS (docs/security.md)"
    )]
    peer_cert_file: Option<PathBuf>,

    /// The private key of --peer-cert-file (PEM).
    #[arg(
        long = "peer-key-file",
        env = "RAFTKV_PEER_KEY_FILE",
        value_name = "PATH",
        help_heading = "TLS (docs/security.md)"
    )]
    peer_key_file: Option<PathBuf>,

    /// The CA every node's certificate must chain to (PEM); the Raft port requires a client
    /// certificate from it (mutual TLS).
    #[arg(
        long = "peer-trusted-ca-file",
        env = "RAFTKV_PEER_TRUSTED_CA_FILE",
        value_name = "PATH",
        help_heading = "TLS (docs/security.md)"
    )]
    peer_trusted_ca_file: Option<PathBuf>,

    /// Names a peer's certificate must also carry, one of them (common name or DNS SAN);
    /// comma separated. Empty: any certificate of --peer-trusted-ca-file.
    #[arg(
        long = "peer-allowed-cn",
        env = "RAFTKV_PEER_ALLOWED_CN",
        value_delimiter = ',',
        value_name = "NAME,...",
        help_heading = "TLS (docs/security.md)"
    )]
    peer_allowed_cn: Vec<String>,

    /// Serve plaintext on a non-loopback address. Without TLS flags a node refuses to start
    /// on such an address unless this is given; anyone who can reach it can read and change
    /// every key.
    #[arg(long = "insecure", env = "RAFTKV_INSECURE", help_heading = "TLS (docs/security.md)")]
    insecure: bool,

    /// Serve Prometheus metrics (/metrics), health (/livez, /readyz) and the live status page
    /// (/ and /status.json) over plain HTTP on this address (docs/metrics.md); port 0 picks
    /// a free port, logged and written to listen.json. Unset: no metrics port.
    #[arg(long = "metrics-addr", alias = "metrics_addr", env = "RAFTKV_METRICS_ADDR", value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
}

const EXAMPLES: &str = "\
Examples (the seed's three-node walkthrough):
  raftkv --raft_bootstrap --raft_id=nodeA --grpc_addr=localhost:40051 --raft_addr=localhost:50051 --raft_data_dir /tmp/raftkv
  raftkv --raft_id=nodeB --grpc_addr=localhost:40052 --raft_addr=localhost:50052 --raft_data_dir /tmp/raftkv
  raftkvctl --endpoints localhost:40051 member add nodeB --raft-addr localhost:50052 --grpc-addr localhost:40052
Or let a new node join by itself:
  raftkv --raft_id=nodeC --grpc_addr=localhost:40053 --raft_addr=localhost:50053 --raft_data_dir /tmp/raftkv --join localhost:40051
With gossip (every node gets --gossip_addr; a new node finds the cluster through the seeds):
  raftkv --raft_bootstrap --raft_id=nodeA ... --gossip_addr=localhost:7946
  raftkv --raft_id=nodeB ... --gossip_addr=localhost:7947 --gossip_seeds=localhost:7946 --join

Durations (--heartbeat_interval, --election_timeout, --snapshot_interval, --shutdown_grace,
--gossip_interval, --gossip_dead_grace) are a whole number and a unit: 500ms, 2s or 1m; a bare
number is refused.";

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event (timestamp, level, target, fields, spans).
    Json,
}

fn parse_id(s: &str) -> Result<NodeId, String> {
    NodeId::new(s).map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => tracing::info!(signal = "SIGINT", "shutdown requested"),
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the node");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn main() -> std::process::ExitCode {
    let parsed = match config::parse(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(config::ParseError::Clap(e)) => e.exit(),
        Err(config::ParseError::File(e)) => return fatal(&e),
    };
    if parsed.args.print_config {
        #[allow(clippy::print_stdout)] // what --print-config is for
        {
            print!("{}", config::render(&parsed));
        }
        return std::process::ExitCode::SUCCESS;
    }
    init_logging(parsed.args.log_format);
    match run(parsed.args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => fatal(&e),
    }
}

/// Sends log lines to stderr in `format`, filtered by `RUST_LOG`; colours only when stderr
/// is a terminal (a log file or a supervisor's journal gets plain text).
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Reports a fatal error: one line that says what to fix; no backtrace for a configuration
/// mistake.
fn fatal(e: &anyhow::Error) -> std::process::ExitCode {
    #[allow(clippy::print_stderr)] // the one place the node reports a fatal error outside the log
    {
        eprintln!("raftkv: error: {}", describe(e));
    }
    std::process::ExitCode::FAILURE
}

/// The error and its causes, joined by ": ", leaving out a cause that the text before it
/// already says: many errors put their source in their own message too, and printing the
/// chain as it is said the same thing twice ("Address already in use (os error 98): Address
/// already in use (os error 98)").
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn run(args: Args) -> Result<()> {
    if let Some(cmd) = args.command {
        return offline::run(cmd);
    }
    #[cfg(feature = "failpoints")]
    crash::arm_from_env()?;
    let id = args.raft_id.context("--raft_id is required")?;
    let mut config = NodeConfig::new(id);
    config.raft_addr = args.raft_addr;
    config.grpc_addr = args.grpc_addr;
    config.data_dir = args.raft_data_dir;
    config.bootstrap = args.raft_bootstrap;
    config.heartbeat_interval = args.heartbeat_interval;
    config.election_timeout = args.election_timeout;
    config.snapshot_threshold = args.snapshot_threshold;
    config.trailing_logs = args.trailing_logs;
    config.shutdown_grace = args.shutdown_grace;
    config.slow_request_threshold = args.slow_request_threshold;
    config.auth_token_ttl = args.auth_token_ttl;
    config.overload = engine::OverloadLimits {
        max_in_flight_requests: args.max_in_flight_requests,
        max_in_flight_request_bytes: args.max_in_flight_request_bytes,
        request_timeout: args.request_timeout,
        max_client_connections: args.max_client_connections,
    };
    config.snapshot_interval = args.snapshot_interval;
    config.max_append_entries = args.max_append_entries;
    config.join_via_gossip = args.join.as_ref().is_some_and(Vec::is_empty);
    config.join = args.join.unwrap_or_default();
    config.join_credentials = match (args.join_user, args.join_password_file) {
        (None, None) => None,
        (None, Some(_)) => anyhow::bail!("--join-password-file is the password of --join-user; give --join-user too"),
        (Some(user), Some(path)) => Some(engine::JoinCredentials::from_file(user, &path)?),
        (Some(user), None) => match std::env::var(JOIN_PASSWORD_ENV) {
            Ok(password) if !password.is_empty() => Some(engine::JoinCredentials { user, password }),
            _ => anyhow::bail!(
                "--join-user {user} needs its password: --join-password-file PATH (chmod 600), or {JOIN_PASSWORD_ENV}"
            ),
        },
    };
    if !args.gossip_addr.is_empty() {
        let mut g = GossipConfig::new(args.gossip_addr);
        g.seeds = args.gossip_seeds;
        g.advertise_addr = args.gossip_advertise_addr;
        g.cluster_id = args.cluster_id;
        g.interval = args.gossip_interval;
        g.phi_threshold = args.gossip_phi_threshold;
        g.dead_grace = args.gossip_dead_grace;
        g.key_file = args.gossip_key_file;
        config.gossip = Some(g);
    } else if !args.gossip_seeds.is_empty() || args.gossip_advertise_addr.is_some() || args.gossip_key_file.is_some() {
        anyhow::bail!(
            "--gossip_seeds, --gossip_advertise_addr and --gossip-key-file need --gossip_addr (empty: gossip is off)"
        );
    }
    config.peers = args.peers;
    config.peers_file = args.peers_file;
    config.watch_history =
        engine::HistoryLimits { max_events: args.watch_history_events, max_bytes: args.watch_history_bytes };
    config.sm_db_cache_bytes = args.sm_db_cache_bytes;
    config.log_caches = engine::LogOptions {
        db_cache_bytes: args.log_db_cache_bytes,
        cache_entries: args.log_cache_entries,
        cache_bytes: args.log_cache_bytes,
        append_bytes: args.max_append_bytes,
    };
    config.disk =
        engine::DiskLimits { quota_backend_bytes: args.quota_backend_bytes, reserve_bytes: args.disk_reserve_bytes };
    config.tls = engine::TlsFlags {
        cert_file: args.cert_file,
        key_file: args.key_file,
        trusted_ca_file: args.trusted_ca_file,
        client_cert_auth: args.client_cert_auth,
        peer_cert_file: args.peer_cert_file,
        peer_key_file: args.peer_key_file,
        peer_trusted_ca_file: args.peer_trusted_ca_file,
        peer_allowed_cn: args.peer_allowed_cn,
    };
    config.insecure = args.insecure;
    config.metrics_addr = args.metrics_addr;
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(engine::run(config, shutdown_signal()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fatal_error_says_each_cause_once() {
        let bind = engine::EngineError::Bind {
            addr: "127.0.0.1:1".into(),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        let once = std::io::Error::from(std::io::ErrorKind::AddrInUse).to_string();
        let text = describe(&anyhow::Error::new(bind).context("starting the node"));
        assert_eq!(text, format!("starting the node: cannot listen on 127.0.0.1:1: {once}"));
        // A cause that adds something is kept.
        let chained = anyhow::anyhow!("the disk is full").context("opening the log").context("starting the node");
        assert_eq!(describe(&chained), "starting the node: opening the log: the disk is full");
    }

    #[test]
    fn a_fatal_line_names_each_cause_once_through_layers() {
        // Each prints its source in its own message, as `#[error("...: {0}")]` with `#[from]`.
        #[derive(Debug)]
        struct Low(std::io::Error);
        impl std::fmt::Display for Low {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "disk: {}", self.0)
            }
        }
        impl std::error::Error for Low {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        #[derive(Debug)]
        struct High(Low);
        impl std::fmt::Display for High {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "opening the store: {}", self.0)
            }
        }
        impl std::error::Error for High {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = anyhow::Error::new(High(Low(std::io::Error::other("bad page"))));
        let e = e.context("starting");
        assert_eq!(describe(&e), "starting: opening the store: disk: bad page");
        let plain = anyhow::anyhow!("no cause").context("top");
        assert_eq!(describe(&plain), "top: no cause");
    }

    #[test]
    fn durations() {
        assert_eq!(duration::parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration::parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(duration::parse("1m"), Ok(Duration::from_secs(60)));
        // A bare number once meant milliseconds here; now it is refused, as by `raftkvctl`.
        assert!(duration::parse("40").is_err());
        assert!(duration::parse("2h").is_err());
        assert!(duration::parse("999999999999999999m").is_err());
        assert!(duration::parse("fast").is_err());
    }

    #[test]
    fn every_duration_flag_refuses_a_bare_number() {
        let flags = [
            "--heartbeat_interval",
            "--election_timeout",
            "--snapshot_interval",
            "--shutdown_grace",
            "--gossip_interval",
            "--gossip_dead_grace",
        ];
        for flag in flags {
            let args = Args::try_parse_from(["raftkv", "--raft_id=n", flag, "40ms"]);
            assert!(args.is_ok(), "{flag} 40ms: {:?}", args.err());
            let message = Args::try_parse_from(["raftkv", "--raft_id=n", flag, "40"]).err().map(|e| e.to_string());
            let message = message.unwrap_or_default();
            assert!(message.contains("\"40\" needs a unit: 40ms, 40s or 40m"), "{flag}: {message}");
        }
        let args = Args::try_parse_from(["raftkv", "--raft_id=n", "--snapshot_interval=0s"]);
        assert_eq!(args.map(|a| a.snapshot_interval).ok(), Some(Duration::ZERO), "0s turns the snapshot timer off");
    }

    #[test]
    fn seed_flags_parse() {
        let args = Args::try_parse_from([
            "raftkv",
            "--raft_bootstrap",
            "--raft_id=nodeA",
            "--grpc_addr=localhost:40051",
            "--raft-addr",
            "localhost:50051",
            "--raft_data_dir",
            "/tmp/test",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(args.raft_bootstrap);
        assert_eq!(args.raft_id.as_ref().map(NodeId::as_str), Some("nodeA"));
        assert_eq!(args.raft_addr, "localhost:50051");
        let args = Args::try_parse_from(["raftkv", "--raft_id", "b", "--raft_bootstrap=false"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!args.raft_bootstrap);
        assert!(Args::try_parse_from(["raftkv", "--raft_id", "a/b"]).is_err());
        assert!(Args::try_parse_from(["raftkv"]).is_err(), "--raft_id is required to run a node");
    }

    #[test]
    fn offline_subcommands_parse() {
        let args = Args::try_parse_from(["raftkv", "recover", "--raft_id", "a", "--raft_data_dir", "/d"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(args.command, Some(offline::Offline::Recover(_))));
        let args = Args::try_parse_from([
            "raftkv",
            "restore",
            "f.rkvs",
            "--raft_id",
            "b",
            "--raft_addr",
            "h:1",
            "--grpc_addr",
            "h:2",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(args.command, Some(offline::Offline::Restore(_))));
        assert!(Args::try_parse_from(["raftkv", "--raft_id", "a", "recover", "--raft_id", "a"]).is_err());
    }

    #[test]
    fn log_and_snapshot_policy_flags_parse() {
        let args = Args::try_parse_from([
            "raftkv",
            "--raft_id=n",
            "--snapshot_interval=30s",
            "--max_append_entries",
            "64",
            "--max-append-bytes=65536",
            "--join",
            "a:1,b:2",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.snapshot_interval, Duration::from_secs(30));
        assert_eq!(args.max_append_entries, 64);
        assert_eq!(args.max_append_bytes, 65536);
        assert_eq!(args.join, Some(vec!["a:1".to_string(), "b:2".to_string()]));
        let args = Args::try_parse_from(["raftkv", "--raft_id=n"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.snapshot_interval, Duration::from_secs(120));
        assert_eq!(args.max_append_bytes, engine::MAX_APPEND_BYTES);
        assert!(args.join.is_none());
        let args = Args::try_parse_from(["raftkv", "--raft_id=n", "--join"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.join, Some(vec![]));
        assert_eq!(args.watch_history_events, engine::DEFAULT_HISTORY_EVENTS);
        let args = Args::try_parse_from([
            "raftkv",
            "--raft_id=n",
            "--watch_history_events=10",
            "--watch-history-bytes",
            "4096",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((args.watch_history_events, args.watch_history_bytes), (10, 4096));
        let args =
            Args::try_parse_from(["raftkv", "--raft_id=n", "--sm_db_cache_bytes=1024", "--log-cache-entries", "7"])
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (args.sm_db_cache_bytes, args.log_cache_entries, args.log_db_cache_bytes, args.log_cache_bytes),
            (1024, 7, engine::DEFAULT_LOG_DB_CACHE_BYTES, engine::LOG_CACHE_BYTES)
        );
    }

    #[test]
    fn gossip_flags_parse() {
        let args = Args::try_parse_from([
            "raftkv",
            "--raft_id=n",
            "--gossip_addr=127.0.0.1:0",
            "--gossip-seeds",
            "127.0.0.1:7946,127.0.0.1:7947",
            "--cluster_id=blue",
            "--gossip_interval=100ms",
            "--gossip_phi_threshold=6",
            "--peers=a=h:1@h:2",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.gossip_addr, "127.0.0.1:0");
        assert_eq!(args.gossip_seeds.len(), 2);
        assert_eq!(args.cluster_id, "blue");
        assert_eq!(args.gossip_interval, Duration::from_millis(100));
        assert!((args.gossip_phi_threshold - 6.0).abs() < f64::EPSILON);
        assert_eq!(args.peers, "a=h:1@h:2");
        // The seed's spelling with an empty value: gossip off.
        let args = Args::try_parse_from(["raftkv", "--raft_id=n", "--gossip_addr="]).unwrap_or_else(|e| panic!("{e}"));
        assert!(args.gossip_addr.is_empty());
        assert_eq!(args.cluster_id, "raftkv");
    }
}
