//! `raftkvctl bench`: a load generator in the manner of etcd's benchmark tool.
//!
//! Each simulated client has its own connection and sends its requests one after another;
//! latencies of every request are kept and summarized (p50, p90, p99, max) with the
//! throughput. Keys are `bench/<client>/<n>` under a prefix; values are fixed-size.
//!
//! `--target etcd` sends the same load to etcd's v3 KV service (`crate::etcd`), so that
//! raftkv and etcd are measured by one load generator (`cargo xtask bench` does both).
//!
//! `bench watch` measures how long a change takes to reach a watcher on another node: a
//! watcher on the last endpoint (a follower, typically) follows the prefix while one writer
//! puts keys one after the other through the first endpoint (the leader, typically); the
//! latency of each write is from its acknowledgement to the watcher receiving its event (0
//! when the event came first).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use client::{Client, ClientOptions};
use serde_json::json;

use crate::progress::{Progress, Unit};

/// What to measure.
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub(crate) enum Op {
    /// Put a new key each time.
    Put,
    /// Get keys written beforehand (linearizable).
    Get,
    /// Put through the first endpoint; time from each put's acknowledgement to its event on
    /// a watcher of the last endpoint.
    Watch,
}

/// Which store to load.
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub(crate) enum Target {
    /// raftkv's own KV service.
    Raftkv,
    /// etcd's v3 KV service (`etcdserverpb.KV`), with the same load, for comparisons.
    Etcd,
}

/// A bench run's settings.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// The operation to measure.
    #[arg(value_enum)]
    op: Op,
    /// Total number of requests.
    #[arg(long, default_value_t = 1000)]
    total: usize,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Value size in bytes.
    #[arg(long = "value-size", default_value_t = 64)]
    value_size: usize,
    /// Key prefix.
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// `bench put`: write over this many keys, again and again, rather than a new key each
    /// time (etcd's `benchmark put --key-space-size`); the keys are shared out among the
    /// clients, each overwriting its own. The data then stays the same size however long the
    /// run (`cargo xtask soak` relies on it). `bench get`: write this many keys first (outside
    /// the measurement), shared out the same way, and read them in a pseudo-random order, so
    /// that the reads reach well beyond any cache; without it each client reads the same 100
    /// keys over and over.
    #[arg(long = "key-space-size", value_name = "N")]
    key_space_size: Option<usize>,
    /// `bench watch` only: a pause between writes (e.g. 20ms), so that each write's commit
    /// reaches the follower on its own rather than with the next write.
    #[arg(long, value_parser = duration::parse, value_name = "DURATION", default_value = "0ms")]
    interval: Duration,
    /// The store the endpoints belong to.
    #[arg(long, value_enum, default_value_t = Target::Raftkv)]
    target: Target,
    /// `bench get` only: member-local reads (raftkv's `STALE`, etcd's serializable) rather
    /// than linearizable ones.
    #[arg(long)]
    serializable: bool,
    /// After the run, print where the time of the writes went on the leader, stage by stage
    /// (proposed → appended → durable → committed → applied → answered); the leader's figures
    /// are reset when the run starts. raftkv only; `bench put` or `bench watch`.
    #[arg(long)]
    pub(crate) stages: bool,
    /// `--target raftkv` only: send writes without request ids, as etcd's clients do, to
    /// measure what the ids cost. A write whose outcome is unknown is then not resent.
    #[arg(long)]
    no_request_ids: bool,
}

impl BenchArgs {
    /// Refuses `--stages` where it measures nothing.
    pub(crate) fn check_stages(&self) -> Result<()> {
        if self.stages && (self.target != Target::Raftkv || self.op == Op::Get) {
            bail!("--stages measures raftkv's writes: use it with bench put or bench watch and --target raftkv");
        }
        Ok(())
    }
}

/// One simulated client's connection.
enum Conn {
    Raftkv(Box<Client>),
    Etcd(crate::etcd::EtcdKv),
}

impl Conn {
    async fn put(&mut self, key: String, value: &[u8]) -> Result<()> {
        match self {
            Self::Raftkv(c) => c.put(key, value).await.map(|_| ())?,
            Self::Etcd(c) => c.put(key.into_bytes(), value.to_vec()).await.map(|_| ())?,
        }
        Ok(())
    }

    /// Reads `key`, which must exist (a read that finds nothing measures nothing).
    async fn get(&mut self, key: String, serializable: bool) -> Result<()> {
        let found = match self {
            Self::Raftkv(c) => {
                let consistency =
                    if serializable { client::kv::Consistency::Stale } else { client::kv::Consistency::Linearizable };
                let req = client::kv::GetRequest {
                    key: key.clone().into(),
                    consistency: consistency as i32,
                    ..Default::default()
                };
                c.get_request(req).await?.found
            }
            Self::Etcd(c) => !c.get(key.clone().into_bytes(), serializable).await?.kvs.is_empty(),
        };
        if !found {
            bail!("bench get: key {key} was written before the run but is not found");
        }
        Ok(())
    }
}

/// The summary of a run.
pub(crate) struct Summary {
    total: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Summary {
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * (self.latencies.len() as f64)).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        json!({
            "requests": self.total,
            "seconds": self.elapsed.as_secs_f64(),
            "requests_per_second": self.total as f64 / self.elapsed.as_secs_f64(),
            "p50_ms": ms(self.percentile(50.0)),
            "p90_ms": ms(self.percentile(90.0)),
            "p99_ms": ms(self.percentile(99.0)),
            "max_ms": ms(self.latencies.last().copied().unwrap_or_default()),
        })
    }

    pub(crate) fn text(&self) -> String {
        let ms = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1000.0);
        format!(
            "requests:  {}\nseconds:   {:.3}\nreq/s:     {:.1}\np50:       {}\np90:       {}\np99:       {}\nmax:       {}",
            self.total,
            self.elapsed.as_secs_f64(),
            self.total as f64 / self.elapsed.as_secs_f64(),
            ms(self.percentile(50.0)),
            ms(self.percentile(90.0)),
            ms(self.percentile(99.0)),
            ms(self.latencies.last().copied().unwrap_or_default()),
        )
    }
}

/// Runs the benchmark against `endpoints`.
pub(crate) async fn run(endpoints: &[String], options: &ClientOptions, args: &BenchArgs) -> Result<Summary> {
    if args.clients == 0 || args.total == 0 {
        bail!("--clients and --total must be at least 1");
    }
    if args.op == Op::Watch {
        if args.target != Target::Raftkv {
            bail!("bench watch measures raftkv only (--target raftkv)");
        }
        return watch(endpoints, options, args).await;
    }
    if endpoints.is_empty() {
        bail!("no endpoints to load");
    }
    if args.no_request_ids && args.target != Target::Raftkv {
        bail!("--no-request-ids is for --target raftkv (etcd's API has no request ids)");
    }
    let mut options = options.clone();
    options.auto_request_ids &= !args.no_request_ids;
    let keys_per_client = keys_per_client(args)?;
    let value = Arc::new(vec![b'x'; args.value_size]);
    let per_client = args.total.div_ceil(args.clients);
    let mut clients = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        // Spread the clients over the endpoints, as etcd's benchmark does.
        let mut eps = endpoints.to_vec();
        let shift = i % eps.len();
        eps.rotate_left(shift);
        clients.push(match args.target {
            Target::Raftkv => Conn::Raftkv(Box::new(Client::new(eps, options.clone())?)),
            Target::Etcd => Conn::Etcd(
                crate::etcd::EtcdKv::connect(&eps[0])
                    .await
                    .map_err(|e| anyhow::anyhow!("connecting to etcd at {}: {e}", eps[0]))?,
            ),
        });
    }
    // `bench get` reads keys written first, outside the measurement: each client's own.
    let keys_read = match (args.op, args.key_space_size) {
        (Op::Get, Some(_)) => keys_per_client,
        _ => per_client.min(HOT_KEYS),
    };
    if args.op == Op::Get {
        clients = preload(clients, &args.prefix, keys_read, &value).await?;
    }
    let progress = Progress::new(&format!("bench {:?}", args.op).to_lowercase(), args.total as u64, Unit::Requests);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for (c, mut client) in clients.into_iter().enumerate() {
        let count = per_client.min(args.total.saturating_sub(c * per_client));
        let value = value.clone();
        let prefix = args.prefix.clone();
        let (op, serializable) = (args.op, args.serializable);
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(count);
            let mut order = KeyOrder::new(c, keys_read);
            for n in 0..count {
                let t = Instant::now();
                match op {
                    Op::Put => client.put(key(&prefix, c, n % keys_per_client), value.as_slice()).await?,
                    // Measured apart, by `watch` above.
                    Op::Get | Op::Watch => client.get(key(&prefix, c, order.next(n)), serializable).await?,
                }
                lat.push(t.elapsed());
                progress.inc(1);
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut latencies = Vec::with_capacity(args.total);
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = start.elapsed();
    progress.finish();
    latencies.sort_unstable();
    Ok(Summary { total: latencies.len(), elapsed, latencies })
}

/// `bench watch`; see the module docs.
async fn watch(endpoints: &[String], options: &ClientOptions, args: &BenchArgs) -> Result<Summary> {
    use std::collections::HashMap;

    use client::WatchOptions;
    use client::kv::watch_response::Kind;

    let (Some(writer_ep), Some(watcher_ep)) = (endpoints.first(), endpoints.last()) else {
        bail!("bench watch needs --endpoints (the writer's first, the watcher's last)");
    };
    let writer = Client::new([writer_ep.clone()], options.clone())?;
    let watcher = Client::new([watcher_ep.clone()], options.clone())?;
    let prefix = format!("{}-watch/", args.prefix);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let watch_prefix = prefix.clone();
    let reader = tokio::spawn(async move {
        let mut stream = watcher.watch(watch_prefix, WatchOptions { prefix: true, ..WatchOptions::default() });
        let mut ready = Some(ready_tx);
        loop {
            let msg = stream.next().await?;
            let now = Instant::now();
            match Kind::try_from(msg.kind) {
                Ok(Kind::Created) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Kind::Events) if tx.send((msg.index, now)).is_err() => {
                    return Ok::<_, client::ClientError>(());
                }
                _ => {}
            }
        }
    });
    ready_rx.await.map_err(|_| anyhow::anyhow!("the watch did not start"))?;
    let value = vec![b'x'; args.value_size];
    let mut acks = Vec::with_capacity(args.total);
    let start = Instant::now();
    for n in 0..args.total {
        let resp = writer.put(format!("{prefix}{n}"), value.as_slice()).await?;
        acks.push((resp.header.map_or(0, |h| h.index), Instant::now()));
        if !args.interval.is_zero() {
            tokio::time::sleep(args.interval).await;
        }
    }
    let mut seen: HashMap<u64, Instant> = HashMap::with_capacity(args.total);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acks.iter().any(|(i, _)| !seen.contains_key(i)) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((index, at))) => {
                seen.entry(index).or_insert(at);
            }
            Ok(None) => bail!("the watch stream ended early: {:?}", reader.await),
            Err(_) => bail!("the watcher did not see every write within 60s"),
        }
    }
    reader.abort();
    let elapsed = start.elapsed();
    let mut latencies: Vec<Duration> =
        acks.iter().filter_map(|(i, ack)| seen.get(i).map(|at| at.saturating_duration_since(*ack))).collect();
    latencies.sort_unstable();
    Ok(Summary { total: latencies.len(), elapsed, latencies })
}

/// How many keys each client of `bench put` writes over, or of `bench get` reads: `--key-space-size`
/// shared out among the clients (at least one each), or without it a new key every time
/// (`usize::MAX`; `bench get` then reads [`HOT_KEYS`]).
fn keys_per_client(args: &BenchArgs) -> Result<usize> {
    match args.key_space_size {
        None => Ok(usize::MAX),
        Some(_) if args.op == Op::Watch => bail!("--key-space-size applies to bench put and bench get only"),
        Some(n) if n < args.clients => {
            bail!("--key-space-size {n} is smaller than --clients {}: give each client at least one key", args.clients)
        }
        Some(n) => Ok(n / args.clients),
    }
}

/// How many keys each client of `bench get` reads without `--key-space-size`: few enough that
/// they stay in every cache, which is what that shape measures.
const HOT_KEYS: usize = 100;

/// Writes keys `0..count` of each client, all clients at once, before a `bench get`; hands the
/// connections back in their order.
async fn preload(clients: Vec<Conn>, prefix: &str, count: usize, value: &Arc<Vec<u8>>) -> Result<Vec<Conn>> {
    let total = (count * clients.len()) as u64;
    let progress = Progress::new("bench get: writing the keys it reads", total, Unit::Requests);
    let mut tasks = Vec::with_capacity(clients.len());
    for (c, mut client) in clients.into_iter().enumerate() {
        let (prefix, value, progress) = (prefix.to_owned(), value.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..count {
                client.put(key(&prefix, c, n), value.as_slice()).await?;
                progress.inc(1);
            }
            Ok::<_, anyhow::Error>(client)
        }));
    }
    let mut clients = Vec::with_capacity(tasks.len());
    for t in tasks {
        clients.push(t.await??);
    }
    progress.finish();
    Ok(clients)
}

/// The order in which one client of `bench get` reads its keys: in turn when they are the few
/// [`HOT_KEYS`], otherwise a pseudo-random walk (xorshift64, seeded by the client's number) so
/// that consecutive reads land far apart.
struct KeyOrder {
    keys: usize,
    state: u64,
}

impl KeyOrder {
    fn new(client: usize, keys: usize) -> Self {
        // Any non-zero seed will do; distinct per client so the clients do not read in step.
        Self { keys: keys.max(1), state: 0x9E37_79B9_7F4A_7C15 ^ (client as u64 + 1) }
    }

    fn next(&mut self, n: usize) -> usize {
        if self.keys <= HOT_KEYS {
            return n % self.keys;
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state % self.keys as u64) as usize
    }
}

fn key(prefix: &str, client: usize, n: usize) -> String {
    format!("{prefix}/{client}/{n}")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{BenchArgs, KeyOrder, keys_per_client};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(line: &[&str]) -> BenchArgs {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(line);
        Cli::parse_from(argv).bench
    }

    #[test]
    fn the_key_space_is_shared_out_among_the_clients() {
        assert_eq!(keys_per_client(&args(&["put", "--clients", "4"])).ok(), Some(usize::MAX));
        assert_eq!(keys_per_client(&args(&["put", "--clients", "4", "--key-space-size", "256"])).ok(), Some(64));
        // At the limit: one key each.
        assert_eq!(keys_per_client(&args(&["put", "--clients", "4", "--key-space-size", "4"])).ok(), Some(1));
    }

    #[test]
    fn a_key_space_smaller_than_the_clients_or_on_watch_is_refused() {
        let err =
            keys_per_client(&args(&["put", "--clients", "4", "--key-space-size", "3"])).expect_err("should be refused");
        assert!(err.to_string().contains("smaller than --clients 4"), "{err}");
        let err = keys_per_client(&args(&["watch", "--key-space-size", "8"])).expect_err("should be refused");
        assert!(err.to_string().contains("bench put and bench get only"), "{err}");
    }

    #[test]
    fn gets_share_out_the_key_space_and_read_it_all_in_a_scattered_order() {
        assert_eq!(keys_per_client(&args(&["get", "--clients", "4", "--key-space-size", "4000"])).ok(), Some(1000));
        let mut order = KeyOrder::new(0, 1000);
        let reads: Vec<usize> = (0..20_000).map(|n| order.next(n)).collect();
        assert!(reads.iter().all(|&k| k < 1000), "a read past the client's keys");
        let distinct: std::collections::HashSet<_> = reads.iter().collect();
        assert!(distinct.len() > 990, "only {} of 1000 keys read in 20,000 reads", distinct.len());
        let far = reads.windows(2).filter(|w| w[0].abs_diff(w[1]) > 10).count();
        assert!(far > 19_000, "consecutive reads close together: only {far} far apart");
        // The hot shape reads its keys in turn, as before.
        let mut hot = KeyOrder::new(3, 100);
        assert_eq!((0..201).map(|n| hot.next(n)).collect::<Vec<_>>()[198..], [98, 99, 0]);
        // Two clients do not walk in step.
        let mut other = KeyOrder::new(1, 1000);
        assert_ne!((0..10).map(|n| other.next(n)).collect::<Vec<_>>(), reads[..10]);
    }
}
