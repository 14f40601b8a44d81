//! Property test: random sequences of put / delete / get / scan / read_at /
//! flush / compact / reopen / crash against a `BTreeMap` model of every
//! version, on the in-memory disk with small sizes so flushes, WAL rolls and
//! compactions happen within a few hundred operations.

use bytes::Bytes;
use proptest::prelude::*;
use std::collections::BTreeMap;
use tessera_engine::io::MemDisk;
use tessera_engine::{run_local, Engine, Options, SyncMode};

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u16),
    Delete(u8),
    Get(u8),
    Scan(u8, u8),
    ReadAt(u8, prop::sample::Index),
    Flush,
    Compact,
    Reopen,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (any::<u8>(), any::<u16>()).prop_map(|(k, v)| Op::Put(k % 64, v)),
        6 => any::<u8>().prop_map(|k| Op::Delete(k % 64)),
        12 => any::<u8>().prop_map(|k| Op::Get(k % 64)),
        4 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::Scan(a % 64, b % 64)),
        6 => (any::<u8>(), any::<prop::sample::Index>()).prop_map(|(k, i)| Op::ReadAt(k % 64, i)),
        2 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

/// Short keys and keys longer than the 16 bytes a memtable key keeps
/// inline, the long ones sharing those 16 bytes (so their order is decided
/// past them).
fn key(k: u8) -> Bytes {
    match k % 2 {
        0 => Bytes::from(format!("key-{k:03}")),
        _ => Bytes::from(format!("key-with-a-long-shared-head-{k:03}")),
    }
}

/// A value large enough that a few hundred writes fill a test memtable.
fn value(v: u16) -> Bytes {
    Bytes::from(format!("{v:05}-{}", "v".repeat(200 + (v % 300) as usize)))
}

/// Every committed version: key -> ts -> value (None = tombstone).
type Model = BTreeMap<Bytes, BTreeMap<u64, Option<Bytes>>>;

fn model_at(model: &Model, k: &Bytes, ts: u64) -> Option<Bytes> {
    model.get(k)?.range(..=ts).next_back()?.1.clone()
}

fn check(ops: Vec<Op>, wal_sync: SyncMode) -> Result<(), TestCaseError> {
    run_local(move || async move {
        let opts = move || match wal_sync {
            // Segments smaller than a memtable, so the WAL also rolls
            // between a record's queueing and its write, not only at a
            // memtable swap.
            SyncMode::None => Options {
                wal_sync,
                memtable_bytes_max: 256 << 10,
                wal_segment_bytes: 64 << 10,
                wal_group_bytes_max: 20 << 10,
                ..Options::for_tests()
            },
            _ => Options {
                wal_sync,
                ..Options::for_tests()
            },
        };
        let mut disk = MemDisk::new();
        let mut engine = Engine::open_on(disk.clone(), "/db", opts()).await.unwrap();
        let mut model = Model::new();
        let mut stamps: Vec<u64> = Vec::new();
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    let ts = engine.put(key(k), value(v)).await.unwrap();
                    model.entry(key(k)).or_default().insert(ts, Some(value(v)));
                    stamps.push(ts);
                }
                Op::Delete(k) => {
                    let ts = engine.delete(key(k)).await.unwrap();
                    model.entry(key(k)).or_default().insert(ts, None);
                    stamps.push(ts);
                }
                Op::Get(k) => {
                    let got = engine.get(&key(k)).await.unwrap();
                    prop_assert_eq!(got, model_at(&model, &key(k), u64::MAX), "get {}", k);
                }
                Op::ReadAt(k, i) => {
                    if stamps.is_empty() {
                        continue;
                    }
                    let ts = stamps[i.index(stamps.len())];
                    let got = engine.read_at(&key(k), ts).await.unwrap();
                    prop_assert_eq!(got, model_at(&model, &key(k), ts), "read_at {} {}", k, ts);
                }
                Op::Scan(a, b) => {
                    let (lo, hi) = (key(a).min(key(b)), key(a).max(key(b)));
                    let got = engine.scan(&lo, Some(&hi), 10, None).await.unwrap();
                    let want: Vec<(Bytes, Bytes)> = model
                        .range(lo.clone()..hi.clone())
                        .filter_map(|(k, _)| model_at(&model, k, u64::MAX).map(|v| (k.clone(), v)))
                        .take(10)
                        .collect();
                    prop_assert_eq!(got, want, "scan {}..{}", a, b);
                }
                Op::Flush => engine.flush().await.unwrap(),
                Op::Compact => engine.compact().await.unwrap(),
                Op::Reopen => {
                    engine.close().await.unwrap();
                    engine = Engine::open_on(disk.clone(), "/db", opts()).await.unwrap();
                }
                Op::Crash if wal_sync == SyncMode::None => {
                    // `none` promises nothing across a crash: a clean
                    // restart instead (the WAL still holds every write).
                    engine.close().await.unwrap();
                    engine = Engine::open_on(disk.clone(), "/db", opts()).await.unwrap();
                }
                Op::Crash => {
                    // `always` sync: every acknowledged write must survive.
                    disk = disk.crash();
                    engine = Engine::open_on(disk.clone(), "/db", opts()).await.unwrap();
                }
            }
        }
        // Full comparison at the end, at the newest and at every stamp.
        for k in 0..64 {
            let got = engine.get(&key(k)).await.unwrap();
            prop_assert_eq!(got, model_at(&model, &key(k), u64::MAX), "final get {}", k);
        }
        for &ts in stamps.iter().step_by(7) {
            let all = engine.scan(b"", None, 1000, Some(ts)).await.unwrap();
            let want: Vec<(Bytes, Bytes)> = model
                .keys()
                .filter_map(|k| model_at(&model, k, ts).map(|v| (k.clone(), v)))
                .collect();
            prop_assert_eq!(all, want, "final scan at {}", ts);
        }
        engine.close().await.unwrap();
        Ok(())
    })
}

/// `TESSERA_MODEL_CASES` (default 1000) cases, divided by `share`.
fn config(share: u32) -> ProptestConfig {
    let cases: u32 = std::env::var("TESSERA_MODEL_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1000);
    ProptestConfig {
        cases: cases.div_ceil(share),
        max_shrink_iters: 2000,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(1))]

    #[test]
    fn engine_matches_a_btreemap_model(ops in prop::collection::vec(op(), 1..400)) {
        check(ops, SyncMode::Always)?;
    }
}

proptest! {
    #![proptest_config(config(3))]

    /// `none` mode queues records already encoded (stamped for the segment
    /// active then) and re-stamps them when a roll intervenes; restarts
    /// replay them.
    #[test]
    fn engine_in_none_mode_matches_a_btreemap_model(ops in prop::collection::vec(op(), 1..400)) {
        check(ops, SyncMode::None)?;
    }
}
