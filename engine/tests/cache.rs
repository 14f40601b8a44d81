//! The block cache is warmed by flushes: with direct I/O there is no page
//! cache behind it, so without warming every first read of a fresh table's
//! block is a disk read.

use bytes::Bytes;
use tessera_engine::io::MemDisk;
use tessera_engine::{run_local, Engine, Options};

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key-{i:06}"))
}

async fn read_all(engine: &Engine<MemDisk>, n: usize) {
    for i in 0..n {
        let got = engine.get(&key(i)).await.unwrap();
        assert_eq!(got.as_deref(), Some(format!("v{i}").as_bytes()), "key {i}");
    }
}

#[test]
fn reads_of_a_freshly_flushed_table_hit_the_cache() {
    run_local(|| async {
        let disk = MemDisk::new();
        let engine = Engine::open_on(disk.clone(), "/db", Options::for_tests())
            .await
            .unwrap();
        let n = 400;
        for i in 0..n {
            engine.put(key(i), format!("v{i}")).await.unwrap();
        }
        engine.flush().await.unwrap();
        assert_eq!(engine.stats().level_tables[0], 1, "one flushed table");
        read_all(&engine, n).await;
        let stats = engine.stats();
        assert_eq!(stats.cache_misses, 0, "every block was warmed by the flush");
        assert!(stats.cache_hits >= n as u64, "{} hits", stats.cache_hits);
        engine.close().await.unwrap();

        // A reopened engine starts cold: the first read of each block
        // misses.
        let engine = Engine::open_on(disk, "/db", Options::for_tests())
            .await
            .unwrap();
        read_all(&engine, n).await;
        let stats = engine.stats();
        assert!(stats.cache_misses > 0);
        // One lookup per read, a miss counted once (a miss was counted
        // again when the block was then loaded).
        assert_eq!(stats.cache_hits + stats.cache_misses, n as u64);
        engine.close().await.unwrap();
    });
}

/// The row cache answers repeated point reads without the block cache; a
/// flush of a newer version makes that key's row stale (and only that
/// key's), a compaction keeps every row, and reads below a row's version
/// still find the older one.
#[test]
fn the_row_cache_answers_repeat_reads_and_never_outlives_a_newer_flush() {
    run_local(|| async {
        let opts = Options {
            row_cache_bytes: 1 << 20,
            ..Options::for_tests()
        };
        let engine = Engine::open_on(MemDisk::new(), "/db", opts).await.unwrap();
        let n = 200;
        for i in 0..n {
            engine.put(key(i), format!("v{i}")).await.unwrap();
        }
        engine.flush().await.unwrap();
        read_all(&engine, n).await; // fills the rows
        let before = engine.stats();
        assert_eq!(before.row_cache_misses, n as u64, "the first reads miss");
        read_all(&engine, n).await;
        let after = engine.stats();
        assert_eq!(after.row_cache_hits, n as u64, "the second reads hit");
        assert_eq!(
            after.cache_hits + after.cache_misses,
            before.cache_hits + before.cache_misses,
            "hits read no block"
        );

        // Key 7 gets a newer version, flushed into a new table.
        let new_ts = engine.put(key(7), "newer").await.unwrap();
        engine.flush().await.unwrap();
        assert_eq!(
            engine.get(&key(7)).await.unwrap().as_deref(),
            Some(&b"newer"[..])
        );
        assert_eq!(
            engine
                .read_at(&key(7), new_ts - 1)
                .await
                .unwrap()
                .as_deref(),
            Some(&b"v7"[..]),
            "a read below the row's version walks the tables"
        );
        let hits = engine.stats().row_cache_hits;
        read_all_but(&engine, n, 7).await;
        assert_eq!(
            engine.stats().row_cache_hits - hits,
            n as u64 - 1,
            "the flush left the other rows valid"
        );

        // A compaction rewrites every table and adds no version.
        engine.compact().await.unwrap();
        let hits = engine.stats().row_cache_hits;
        read_all_but(&engine, n, 7).await;
        assert_eq!(engine.stats().row_cache_hits - hits, n as u64 - 1);
        assert_eq!(
            engine.get(&key(7)).await.unwrap().as_deref(),
            Some(&b"newer"[..])
        );
        engine.close().await.unwrap();
    });
}

async fn read_all_but(engine: &Engine<MemDisk>, n: usize, skip: usize) {
    for i in (0..n).filter(|&i| i != skip) {
        let got = engine.get(&key(i)).await.unwrap();
        assert_eq!(got.as_deref(), Some(format!("v{i}").as_bytes()), "key {i}");
    }
}

/// Compaction reads its inputs in large reads that go past the block cache:
/// a table's blocks are about to be replaced, and caching them would evict
/// the blocks requests read.
#[test]
fn compaction_reads_ahead_past_the_block_cache() {
    run_local(|| async {
        let opts = Options {
            memtable_bytes_max: 4 << 20,
            block_cache_bytes: 1 << 20,
            l0_compaction_trigger: 100,
            l0_slowdown_trigger: 100,
            l0_stop_trigger: 100,
            level_base_bytes: 1 << 30,
            ..Options::for_tests()
        };
        let value = |i: usize, round: usize| format!("{i}-{round}-{}", "v".repeat(200));
        let disk = MemDisk::new();
        let engine = Engine::open_on(disk.clone(), "/db", opts.clone())
            .await
            .unwrap();
        let (n, rounds) = (5000, 3);
        for round in 0..rounds {
            for i in 0..n {
                engine.put(key(i), value(i, round)).await.unwrap();
            }
            engine.flush().await.unwrap();
        }
        engine.close().await.unwrap();

        let engine = Engine::open_on(
            disk.clone(),
            "/db",
            Options {
                l0_compaction_trigger: 2,
                ..opts
            },
        )
        .await
        .unwrap();
        let before = engine.stats();
        assert_eq!(before.level_tables[0], rounds, "one table per flush");
        let input_bytes = before.level_bytes[0];
        // Several read-ahead windows per table, so windows follow each other.
        assert!(
            input_bytes
                > 3 * rounds as u64 * Options::for_tests().compaction_read_ahead_bytes as u64
        );
        let reads = disk.reads();
        engine.compact().await.unwrap();
        let after = engine.stats();
        assert_eq!(after.level_tables[0], 0);
        // Each input is read in windows (the last one of a table partial);
        // each output table is opened with a read of its footer and one of
        // its index. Block by block it would be ~input_bytes / 4 KiB reads.
        let windows =
            input_bytes / Options::for_tests().compaction_read_ahead_bytes as u64 + rounds as u64;
        let opens = 2 * after.level_tables[1] as u64;
        let made = disk.reads() - reads;
        assert!(
            made <= windows + opens,
            "{made} reads for {input_bytes} bytes in, {} tables out",
            after.level_tables[1]
        );
        assert_eq!(after.cache_misses, before.cache_misses, "cache consulted");
        for i in 0..n {
            let got = engine.get(&key(i)).await.unwrap();
            assert_eq!(got.as_deref(), Some(value(i, rounds - 1).as_bytes()));
        }
        engine.close().await.unwrap();
    });
}
