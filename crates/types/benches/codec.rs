//! Micro-benchmarks of `types::codec`: encoding and decoding log entries that carry a put,
//! one at a time and as a group of 64 (what one `append` or `AppendEntries` holds under
//! load). Run with `cargo bench -p types --bench codec`.

// `criterion_group!` and `criterion_main!` generate undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use openraft::entry::RaftEntry;
use types::{Command, Entry, LogId, NodeId, PutOp, WriteCommand, WriteOp, codec};

fn entry(index: u64, value_bytes: usize) -> Entry {
    let log_id = LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: NodeId::from(1) }, index);
    let op = PutOp {
        key: format!("key-{index:012}").into_bytes(),
        value: vec![7; value_bytes],
        expect: None,
        prev_kv: false,
    };
    Entry::new_normal(
        log_id,
        Command::Write(WriteCommand { request_id: Some(format!("client-1-{index}")), op: WriteOp::Put(op) }),
    )
}

fn codec_bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for (name, count) in [("1 entry, 256 B", 1u64), ("64 entries, 256 B", 64)] {
        let entries: Vec<Entry> = (1..=count).map(|i| entry(i, 256)).collect();
        let encoded = codec::encode(&entries).expect("entries encode");
        group.throughput(Throughput::Elements(count));
        group.bench_function(format!("encode {name}"), |b| b.iter(|| codec::encode(black_box(&entries))));
        group.bench_function(format!("decode {name}"), |b| {
            b.iter(|| codec::decode::<Vec<Entry>>(black_box(&encoded)));
        });
    }
    group.finish();
}

criterion_group!(benches, codec_bench);
criterion_main!(benches);
