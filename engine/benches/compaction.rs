//! A level-0 compaction on the real disk (O_DIRECT through glommio): four
//! flushed tables of ~100k versions of 100-byte values each, over 100k
//! keys, merged into level 1 with nothing else running. The time is
//! opening the engine on a copy of the same tables and compacting them:
//! reading, checking, merging and writing. `wall` is elapsed time, `cpu`
//! the CPU time of the shard's thread over the same span (I/O waits are
//! in the first, not in the second).
//!
//! `cargo bench -p tessera-engine --bench compaction`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::path::Path;
use std::time::{Duration, Instant};
use tessera_engine::{run_local, thread_cpu_time, Engine, Options};

const TABLES: usize = 4;
const VERSIONS_PER_TABLE: u64 = 100_000;
const KEYS: u64 = 100_000;

fn opts(l0_compaction_trigger: usize) -> Options {
    Options {
        memtable_bytes_max: 256 << 20,
        l0_compaction_trigger,
        l0_slowdown_trigger: l0_compaction_trigger.max(20),
        l0_stop_trigger: l0_compaction_trigger.max(36),
        level_base_bytes: 1 << 40,
        compaction_bytes_per_sec: 1 << 40,
        ..Options::default()
    }
}

/// Writes the level-0 tables the runs compact (no compaction: the trigger
/// is above their count).
fn make_tables(dir: &Path) -> u64 {
    let dir = dir.to_path_buf();
    run_local(move || async move {
        let engine = Engine::open(&dir, opts(TABLES + 1)).await.unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let value = Bytes::from(vec![b'v'; 100]);
        for _ in 0..TABLES {
            for _ in 0..VERSIONS_PER_TABLE {
                let key = Bytes::from(format!("k{:015}", rng.gen_range(0..KEYS)));
                engine.put(key, value.clone()).await.unwrap();
            }
            engine.flush().await.unwrap();
        }
        let bytes = engine.stats().level_bytes[0];
        assert_eq!(engine.stats().level_tables[0], TABLES);
        engine.close().await.unwrap();
        bytes
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        match entry.file_type().unwrap().is_dir() {
            true => copy_dir(&entry.path(), &target),
            false => {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
}

/// Opens a copy of the tables with a trigger they meet and compacts them;
/// returns (elapsed, thread CPU time).
fn compact_copy(template: &Path, scratch: &Path) -> (Duration, Duration) {
    let _ = std::fs::remove_dir_all(scratch);
    copy_dir(template, scratch);
    let dir = scratch.to_path_buf();
    run_local(move || async move {
        let (start, cpu) = (Instant::now(), thread_cpu_time());
        let engine = Engine::open(&dir, opts(TABLES)).await.unwrap();
        engine.compact().await.unwrap();
        let took = (start.elapsed(), thread_cpu_time() - cpu);
        let stats = engine.stats();
        assert_eq!(stats.level_tables[0], 0);
        assert!(stats.compactions >= 1);
        engine.close().await.unwrap();
        took
    })
}

fn bench(c: &mut Criterion) {
    let root = tempfile::tempdir_in("/var/tmp").unwrap();
    let template = root.path().join("template");
    let scratch = root.path().join("scratch");
    let input_bytes = make_tables(&template);
    let mut group = c.benchmark_group("compaction");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(input_bytes));
    group.bench_function("level0_4x100k_wall", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| compact_copy(&template, &scratch).0)
                .sum()
        })
    });
    group.bench_function("level0_4x100k_cpu", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| compact_copy(&template, &scratch).1)
                .sum()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
