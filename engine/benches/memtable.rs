//! The memtable's two hot paths at the size a 64 MiB memtable reaches
//! (~320k versions of 100-byte values): inserting a version, and a flush
//! streaming every version into table blocks.
//!
//! `cargo bench -p tessera-engine --bench memtable`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::hint::black_box;
use tessera_engine::key::{Entry, Kind};
use tessera_engine::memtable::Memtable;
use tessera_engine::sst::block::BlockBuilder;

const VERSIONS: usize = 320_000;
const KEYS: u64 = 100_000;
const BLOCK_BYTES: usize = 4096;

/// The load generator's key shape: `k`, then the number zero-padded to 16 bytes.
fn key(i: u64) -> Bytes {
    Bytes::from(format!("k{i:015}"))
}

fn versions(n: usize, seed: u64) -> Vec<Entry> {
    let mut rng = StdRng::seed_from_u64(seed);
    let value = Bytes::from(vec![b'v'; 100]);
    (0..n)
        .map(|ts| Entry {
            key: key(rng.gen_range(0..KEYS)),
            ts: ts as u64 + 1,
            kind: Kind::Put,
            value: value.clone(),
        })
        .collect()
}

fn filled(n: usize) -> Memtable {
    let mem = Memtable::new();
    for e in versions(n, 1) {
        mem.insert(e);
    }
    mem
}

fn insert(c: &mut Criterion) {
    let mut group = c.benchmark_group("memtable");
    group.sample_size(10);
    // Inserts into a memtable that already holds most of its versions.
    const BATCH: usize = 20_000;
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("insert into 300k versions", |b| {
        b.iter_batched(
            || (filled(VERSIONS - BATCH), versions(BATCH, 2)),
            |(mem, batch)| {
                for e in batch {
                    mem.insert(e);
                }
                mem
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn flush(c: &mut Criterion) {
    let mut group = c.benchmark_group("memtable");
    group.sample_size(10);
    let mem = filled(VERSIONS);
    group.throughput(Throughput::Elements(mem.len() as u64));
    // What a flush does with each version: append it to a block, which is
    // cut every 4 KiB.
    group.bench_function("stream 320k versions into blocks", |b| {
        let mut block = BlockBuilder::default();
        let mut out = Vec::with_capacity(2 * BLOCK_BYTES);
        b.iter(|| {
            let mut blocks = 0usize;
            mem.visit_from(None, |k, kind, value| {
                block.add(k.user(), k.ts(), kind, value);
                if block.estimated_len() >= BLOCK_BYTES {
                    out.clear();
                    block.finish_into(&mut out);
                    blocks += 1;
                }
                true
            });
            black_box(blocks)
        })
    });
    group.finish();
}

fn get(c: &mut Criterion) {
    let mut group = c.benchmark_group("memtable");
    group.sample_size(10);
    let mem = filled(VERSIONS);
    // Point reads of the newest versions; keys from twice the range, so
    // about half are absent.
    const READS: usize = 20_000;
    let mut rng = StdRng::seed_from_u64(3);
    let keys: Vec<Bytes> = (0..READS)
        .map(|_| key(rng.gen_range(0..2 * KEYS)))
        .collect();
    group.throughput(Throughput::Elements(READS as u64));
    group.bench_function("get from 320k versions", |b| {
        b.iter(|| {
            let found = keys
                .iter()
                .filter(|k| mem.get(k, u64::MAX).is_some())
                .count();
            black_box(found)
        })
    });
    group.finish();
}

criterion_group!(benches, insert, flush, get);
criterion_main!(benches);
