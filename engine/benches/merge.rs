//! The merge at the heart of a compaction, alone: `MergeIter::next_ref`
//! over tables on the in-memory disk (no I/O waits, so CPU-bound), as a
//! level-0 compaction reads them (each table its own source, read ahead).
//! The same 320k versions of 100-byte values over 100k keys, spread over
//! 4 tables (a compaction at the default trigger) or 32 (one of level 0
//! near its stop, 36 tables, under sustained writes).
//!
//! `cargo bench -p tessera-engine --bench merge`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tessera_engine::cache::BlockCache;
use tessera_engine::io::{Disk, MemDisk};
use tessera_engine::iter::{MergeIter, Source};
use tessera_engine::key::Kind;
use tessera_engine::run_local;
use tessera_engine::sst::{Table, TableBuilder};

const VERSIONS: u64 = 320_000;
const KEYS: u64 = 100_000;

/// Writes `VERSIONS` versions in `tables` tables (each sorted, timestamps
/// unique across them) and merges them `iters` times; returns the time
/// the merges took.
async fn merge(tables: usize, iters: u64) -> Duration {
    let disk = MemDisk::new();
    disk.create_dir_all(Path::new("/t")).await.unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let value = [b'v'; 100];
    let per_table = VERSIONS / tables as u64;
    let mut runs = Vec::new();
    for t in 0..tables as u64 {
        let mut versions: Vec<(String, u64)> = (0..per_table)
            .map(|i| {
                let key = format!("k{:015}", rng.gen_range(0..KEYS));
                (key, t * per_table + i + 1)
            })
            .collect();
        versions.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let file = disk
            .create(&Path::new("/t").join(t.to_string()))
            .await
            .unwrap();
        let mut builder = TableBuilder::new(file, t, 4096, None);
        for (key, ts) in &versions {
            builder
                .add(key.as_bytes(), *ts, Kind::Put, &value)
                .await
                .unwrap();
        }
        let (meta, file) = builder.finish().await.unwrap();
        runs.push(Rc::new(Table::open(file, meta).await.unwrap()));
    }
    let cache = Rc::new(BlockCache::new(1 << 20));
    let start = Instant::now();
    for _ in 0..iters {
        let sources = runs
            .iter()
            .map(|t| Source::run_read_ahead(vec![t.clone()], 256 << 10))
            .collect();
        let mut merge = MergeIter::new(sources, cache.clone());
        let mut n = 0u64;
        while let Some(v) = merge.next_ref().await.unwrap() {
            n += v.value.len() as u64 / 100;
        }
        assert_eq!(n, per_table * tables as u64);
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("merge");
    group.sample_size(10);
    group.throughput(Throughput::Elements(VERSIONS));
    for tables in [4, 32] {
        group.bench_with_input(BenchmarkId::new("tables", tables), &tables, |b, &tables| {
            b.iter_custom(|iters| run_local(move || merge(tables, iters)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
