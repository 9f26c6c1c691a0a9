//! Micro-benchmarks of the state machine: the apply of a batch of 64 puts (one redb write
//! transaction, not fsynced, as most applies are), with new keys and one client's request
//! ids, and with 64 clients' request ids over 10,000 keys (what `raftkvctl bench put
//! --clients 64` sends; past the first 65,536 entries the request-id window is full and
//! expired ids are swept), and building and installing a snapshot
//! of 1 MiB of keys and values (4,096 keys of 256 bytes), reported per byte. Run with
//! `cargo bench -p fsm --bench apply`.

// `criterion_group!` and `criterion_main!` generate undocumented functions.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fsm::StateMachine;
use openraft::RaftSnapshotBuilder;
use openraft::entry::RaftEntry;
use openraft::storage::RaftStateMachine;
use types::{Command, Entry, LogId, NodeId, PutOp, WriteCommand, WriteOp};

const BATCH: u64 = 64;
const SNAPSHOT_KEYS: u64 = 4_096;
const VALUE_BYTES: usize = 256;

fn put(index: u64, key: u64) -> Entry {
    let log_id = LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: NodeId::from(1) }, index);
    let op =
        PutOp { key: format!("key-{key:012}").into_bytes(), value: vec![7; VALUE_BYTES], expect: None, prev_kv: false };
    Entry::new_normal(
        log_id,
        Command::Write(WriteCommand { request_id: Some(format!("client-1-{index}")), op: WriteOp::Put(op) }),
    )
}

async fn apply(sm: &mut StateMachine, entries: Vec<Entry>) {
    let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
    sm.apply(stream).await.expect("the batch applies");
}

fn apply_bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut sm = StateMachine::open(dir.path()).expect("the state machine opens");
    let mut next = 1u64;
    let mut group = c.benchmark_group("fsm apply");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function(format!("batch of {BATCH} puts of {VALUE_BYTES} B, new keys"), |b| {
        b.iter(|| {
            let entries: Vec<Entry> = (next..next + BATCH).map(|i| put(i, i)).collect();
            next += BATCH;
            rt.block_on(apply(&mut sm, entries));
        });
    });
    group.finish();
}

/// Clients whose writes a batch of [`BATCH`] interleaves, each with its own request-id
/// prefix (as `client::Client` makes them: `c` and 16 hex digits).
const CLIENTS: u64 = 64;
/// The keys the many-client batches write to, chosen at random.
const KEYS: u64 = 10_000;

/// The `n`th put of `client`, at `index`, to a pseudo-random one of [`KEYS`] keys.
fn client_put(index: u64, client: u64, n: u64) -> Entry {
    let log_id = LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: NodeId::from(1) }, index);
    // splitmix64: a spread of client prefixes and keys that repeats from run to run.
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let key = mix(index) % KEYS;
    let op =
        PutOp { key: format!("key-{key:012}").into_bytes(), value: vec![7; VALUE_BYTES], expect: None, prev_kv: false };
    let request_id = format!("c{:016x}-{n}", mix(client + (1 << 40)));
    Entry::new_normal(log_id, Command::Write(WriteCommand { request_id: Some(request_id), op: WriteOp::Put(op) }))
}

fn many_clients_bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut sm = StateMachine::open(dir.path()).expect("the state machine opens");
    let mut next = 1u64;
    let batch = |sm: &mut StateMachine, next: &mut u64| {
        let entries: Vec<Entry> = (*next..*next + BATCH).map(|i| client_put(i, i % CLIENTS, i / CLIENTS)).collect();
        *next += BATCH;
        rt.block_on(apply(sm, entries));
    };
    // Fill the request-id window first, so every measured batch sees a full table and sweeps.
    while next <= fsm::MAX_REQUEST_IDS + BATCH {
        batch(&mut sm, &mut next);
    }
    let mut group = c.benchmark_group("fsm apply");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function(
        format!("batch of {BATCH} puts of {VALUE_BYTES} B, {CLIENTS} clients' request ids, {KEYS} keys"),
        |b| b.iter(|| batch(&mut sm, &mut next)),
    );
    group.finish();
}

fn snapshot_bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut source = StateMachine::open(&dir.path().join("source")).expect("the state machine opens");
    for first in (1..=SNAPSHOT_KEYS).step_by(1024) {
        rt.block_on(apply(&mut source, (first..first + 1024).map(|i| put(i, i)).collect()));
    }
    let mut group = c.benchmark_group("fsm snapshot");
    group.throughput(Throughput::Bytes(SNAPSHOT_KEYS * VALUE_BYTES as u64));
    group.sample_size(10);
    group.bench_function("build, 1 MiB of values", |b| {
        b.iter(|| rt.block_on(async { source.get_snapshot_builder().await.build_snapshot().await.expect("build") }));
    });
    let mut target = StateMachine::open(&dir.path().join("target")).expect("the state machine opens");
    group.bench_function("install, 1 MiB of values", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let snap =
                    rt.block_on(async { source.get_snapshot_builder().await.build_snapshot().await.expect("build") });
                let started = Instant::now();
                rt.block_on(target.install_snapshot(&snap.meta, snap.snapshot)).expect("install");
                spent += started.elapsed();
            }
            spent
        });
    });
    group.finish();
}

criterion_group!(benches, apply_bench, many_clients_bench, snapshot_bench);
criterion_main!(benches);
