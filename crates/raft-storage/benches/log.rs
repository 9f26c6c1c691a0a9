//! Micro-benchmarks of the log store: one `append` of 1 entry and of a group of 64 entries
//! (each a 256-byte put), timed until openraft would hear it flushed, that is until the
//! log writer's durable commit (one fsync). Run with `cargo bench -p raft-storage --bench
//! log`; the figure is bound by the disk's fsync.

// `criterion_group!` and `criterion_main!` generate undocumented functions.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use raft_storage::LogStore;
use types::{Command, Entry, LogId, NodeId, PutOp, TypeConfig, WriteCommand, WriteOp};

fn entry(index: u64) -> Entry {
    let log_id = LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: NodeId::from(1) }, index);
    let op = PutOp { key: format!("key-{index:012}").into_bytes(), value: vec![7; 256], expect: None, prev_kv: false };
    Entry::new_normal(log_id, Command::Write(WriteCommand { request_id: None, op: WriteOp::Put(op) }))
}

fn append_bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = LogStore::open(&dir.path().join("raft-log.redb")).expect("the log opens");
    let mut next = 1u64;
    let mut group = c.benchmark_group("log append, durable");
    for count in [1u64, 64] {
        group.throughput(Throughput::Elements(count));
        group.bench_function(format!("{count} entries"), |b| {
            b.iter(|| {
                let entries: Vec<Entry> = (next..next + count).map(entry).collect();
                next += count;
                rt.block_on(async {
                    let (tx, rx) = TypeConfig::oneshot();
                    store.append(entries, IOFlushed::signal(tx)).await.expect("append");
                    rx.await.expect("the writer answers").expect("the commit succeeds");
                });
            });
        });
    }
    group.finish();
}

criterion_group!(benches, append_bench);
criterion_main!(benches);
