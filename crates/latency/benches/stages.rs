//! What the per-stage clock costs a write: the four stamps (appended, durable, committed,
//! applied) and the record at the answer (ten histograms), for one write and for a batch of
//! 64, on one thread. Run with `cargo bench -p latency --bench stages`.

// `criterion_group!` and `criterion_main!` generate undocumented functions.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use latency::WriteStages;

fn stages_bench(c: &mut Criterion) {
    let clock = WriteStages::new();
    let mut next = 1u64;
    let mut group = c.benchmark_group("write stages");
    for count in [1u64, 64] {
        group.throughput(Throughput::Elements(count));
        group.bench_function(format!("{count} writes, every stage"), |b| {
            b.iter(|| {
                let (first, last) = (next, next + count - 1);
                next += count;
                let proposed = clock.now();
                clock.appended(first..=last);
                clock.durable(first..=last);
                clock.committed(last);
                clock.applied(first..=last);
                for index in first..=last {
                    clock.answered(index, proposed);
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, stages_bench);
criterion_main!(benches);
