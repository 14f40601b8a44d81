//! Flushes and compactions share the shard's thread with the requests it
//! serves. They give way every ~100 µs of work (`Slices` in engine.rs):
//! a flush that built its table in one go held every request on the shard
//! until it was done (unpipelined SETs had a p99 of ~2.1 ms from that alone).

use bytes::Bytes;
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;
use tessera_engine::io::MemDisk;
use tessera_engine::{run_local, thread_cpu_time, Engine, Options, SyncMode, WriteBatch};

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key-{i:08}"))
}

#[test]
fn a_flush_lets_other_tasks_run_while_it_builds_its_table() {
    run_local(|| async {
        let opts = Options {
            memtable_bytes_max: 32 << 20,
            wal_segment_bytes: 8 << 20,
            wal_sync: SyncMode::None,
            ..Options::for_tests()
        };
        let engine = Engine::open_on(MemDisk::new(), "/db", opts).await.unwrap();
        let (batches, per_batch) = (400, 100);
        for b in 0..batches {
            let mut batch = WriteBatch::with_capacity(per_batch);
            for i in 0..per_batch {
                batch.put(key(b * per_batch + i), vec![7u8; 100]);
            }
            engine.write(batch).await.unwrap();
        }
        assert_eq!(engine.stats().level_tables[0], 0, "nothing flushed yet");

        // Stands for the requests: a task that wants to run every 100 µs.
        let ticks = Rc::new(Cell::new(0u32));
        let stop = Rc::new(Cell::new(false));
        let ticker = glommio::spawn_local({
            let (ticks, stop) = (ticks.clone(), stop.clone());
            async move {
                while !stop.get() {
                    glommio::timer::sleep(Duration::from_micros(100)).await;
                    ticks.set(ticks.get() + 1);
                }
            }
        });
        let started = thread_cpu_time();
        engine.flush().await.unwrap();
        let took = thread_cpu_time() - started;
        let during = ticks.get();
        stop.set(true);
        ticker.await;
        assert_eq!(engine.stats().level_tables[0], 1, "one flushed table");
        // The flush writes to memory and never waits for a disk: the
        // ticker runs where the flush gives way, and where it awaits its
        // writes (one per MiB of table). Giving way every 100 µs, it ran
        // ~3.5 times per millisecond of the thread's CPU; building in one
        // go, ~0.6.
        let per_ms = during as f64 / took.as_secs_f64() / 1000.0;
        assert!(
            per_ms >= 1.5,
            "the ticker ran {during} times ({per_ms:.2} per CPU ms) during a flush of {} versions that took {took:?} of CPU",
            batches * per_batch
        );
        for i in [0, 12_345, batches * per_batch - 1] {
            assert_eq!(
                engine.get(&key(i)).await.unwrap().as_deref(),
                Some(&[7u8; 100][..])
            );
        }
        engine.close().await.unwrap();
    });
}

/// Compacted tables' files are removed after the compaction, once no
/// reader holds the tables (`Inner::retire`): none is left behind.
#[test]
fn compacted_tables_files_are_removed_once_unread() {
    run_local(|| async {
        let disk = MemDisk::new();
        let opts = Options {
            l0_compaction_trigger: 3,
            ..Options::for_tests()
        };
        let engine = Engine::open_on(disk.clone(), "/db", opts).await.unwrap();
        let tables_on_disk = || {
            disk.paths()
                .iter()
                .filter(|p| p.to_string_lossy().ends_with(".sst"))
                .count()
        };
        for round in 0..4 {
            for i in 0..200 {
                engine.put(key(i), format!("v{round}-{i}")).await.unwrap();
            }
            engine.flush().await.unwrap();
        }
        engine.compact().await.unwrap();
        let live: usize = engine.stats().level_tables.iter().sum();
        assert!(engine.stats().compactions > 0, "nothing was compacted");
        // Removal waits until the replaced tables are dropped and their
        // files closed (two passes of the reaper, 20 ms apart).
        let mut waited = Duration::ZERO;
        while tables_on_disk() > live && waited < Duration::from_secs(5) {
            glommio::timer::sleep(Duration::from_millis(10)).await;
            waited += Duration::from_millis(10);
        }
        assert_eq!(tables_on_disk(), live, "files of compacted tables remain");
        for i in [0, 123, 199] {
            let got = engine.get(&key(i)).await.unwrap();
            assert_eq!(got.as_deref(), Some(format!("v3-{i}").as_bytes()));
        }
        engine.close().await.unwrap();
    });
}

/// Overwrites leave the newest versions in one level over the versions
/// they replaced in the next; once the tables are at rest (every version
/// past the retention window) compaction moves the upper level down and
/// drops the replaced versions: the tables shrink to about one version
/// per key, every value still read back. Deleting every key then empties
/// them.
#[test]
fn at_rest_compaction_drops_what_overwrites_replaced() {
    run_local(|| async {
        let opts = Options {
            wal_sync: SyncMode::None,
            retention_ms: 300,
            expiry_check_ms: 50,
            rest_after_ms: 300,
            ..Options::for_tests()
        };
        let engine = Engine::open_on(MemDisk::new(), "/db", opts).await.unwrap();
        let (keys, passes) = (3000, 6);
        for pass in 0..passes {
            for chunk in 0..keys / 100 {
                let mut batch = WriteBatch::with_capacity(100);
                for i in chunk * 100..(chunk + 1) * 100 {
                    batch.put(key(i), vec![pass as u8; 100]);
                }
                engine.write(batch).await.unwrap();
            }
        }
        engine.flush().await.unwrap();
        // Only the static targets, within the retention window: the
        // levels hold several versions of most keys.
        engine.compact().await.unwrap();
        let total = |s: &tessera_engine::EngineStats| s.level_bytes.iter().sum::<u64>();
        let before = engine.stats();
        let live = (keys * 120) as u64;
        assert!(
            total(&before) > 2 * live,
            "expected overwritten versions in the tables: {:?}",
            before.level_bytes
        );
        // At rest: the compaction task, woken by its periodic check, runs
        // until no level is over its share of the last.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let after = loop {
            glommio::timer::sleep(Duration::from_millis(50)).await;
            let s = engine.stats();
            let last = s.level_bytes.iter().rposition(|&b| b > 0).unwrap();
            let settled = (1..last).all(|l| s.level_bytes[l] <= s.level_bytes[last] / 10);
            if settled && s.compactions > before.compactions {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no compaction for space: {:?}",
                s.level_bytes
            );
        };
        assert!(
            total(&after) < live * 3 / 2,
            "{} bytes in the tables for {live} live ({:?}, before {:?})",
            total(&after),
            after.level_bytes,
            before.level_bytes
        );
        for i in (0..keys).step_by(7) {
            assert_eq!(
                engine.get(&key(i)).await.unwrap(),
                Some(Bytes::from(vec![(passes - 1) as u8; 100]))
            );
        }

        // Delete every key: once at rest, the tombstones (level 0) and the
        // values they deleted (level 1 or 2) go together.
        for chunk in 0..keys / 100 {
            let mut batch = WriteBatch::with_capacity(100);
            for i in chunk * 100..(chunk + 1) * 100 {
                batch.delete(key(i));
            }
            engine.write(batch).await.unwrap();
        }
        engine.flush().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while total(&engine.stats()) > live / 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "deleted keys still hold {:?}",
                engine.stats().level_bytes
            );
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(engine.get(&key(5)).await.unwrap(), None);
    });
}
