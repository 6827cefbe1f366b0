//! Micro-benchmark of the pure pipeline per event (redact → decode → enrich → validate →
//! envelope), no I/O: `cargo bench --bench pipeline`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use itrelay::validate::Validators;

#[path = "common/sample.rs"]
mod sample;

fn pipeline(c: &mut Criterion) {
    let validators = Validators::for_catalog().expect("the shipped schemas compile");
    let references = sample::references().expect("the sample ids are UUIDs");
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(1));
    group.bench_function("it_ticket_created", |b| {
        b.iter_batched(
            || sample::ticket_row(1, "INC-000001"),
            |row| {
                let message = sample::pipeline(row, &references, &validators)
                    .expect("the sample event is valid");
                black_box(message)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
