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

        // A reopened engine starts cold: the same reads now miss (the
        // counters above can tell the difference).
        let engine = Engine::open_on(disk, "/db", Options::for_tests())
            .await
            .unwrap();
        read_all(&engine, n).await;
        assert!(engine.stats().cache_misses > 0);
        engine.close().await.unwrap();
    });
}
