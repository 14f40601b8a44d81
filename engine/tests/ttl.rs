//! Expiring puts (`WriteBatch::put_with_ttl`): live until their timestamp's
//! time plus the TTL for every kind of read (newest, at a timestamp, scans,
//! transactions; from memtables, tables and the row cache), and reclaimed
//! by compaction once expired past the retention watermark.

use bytes::Bytes;
use std::time::Duration;
use tessera_engine::clock::{ms_of_ts, ts_from_ms, wall_ms};
use tessera_engine::io::MemDisk;
use tessera_engine::{run_local, Engine, Options, Phase, TxnPart, Vote, WriteBatch};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn put_ttl(engine: &Engine<MemDisk>, key: &str, value: &str, ttl_ms: u64) -> u64 {
    let mut batch = WriteBatch::new();
    batch.put_with_ttl(b(key), b(value), ttl_ms);
    engine.write(batch).await.unwrap()
}

async fn sleep_ms(ms: u64) {
    glommio::timer::sleep(Duration::from_millis(ms)).await;
}

/// Sleeps until the wall clock reads past `at` ms.
async fn sleep_past_ms(at: u64) {
    sleep_ms((at + 1).saturating_sub(wall_ms())).await;
}

/// A one-phase transaction reading `key` at a fresh timestamp.
async fn txn_read(engine: &Engine<MemDisk>, key: &str) -> Option<Bytes> {
    let part = TxnPart {
        ts: engine.clock().now(),
        conditions: Vec::new(),
        reads: vec![(0, b(key))],
        writes: WriteBatch::new(),
    };
    match engine.txn(part, Phase::One).await.unwrap() {
        Vote::Yes(reads) => reads[0].value.clone(),
        other => panic!("expected a yes vote, got {other:?}"),
    }
}

async fn scan_keys(engine: &Engine<MemDisk>, ts: Option<u64>) -> Vec<Bytes> {
    let rows = engine.scan(b"", None, 1000, ts).await.unwrap();
    rows.into_iter().map(|(k, _)| k).collect()
}

#[test]
fn an_expiring_put_is_live_until_its_ttl_for_every_read_and_every_source() {
    run_local(|| async {
        let engine = Engine::open_on(MemDisk::new(), "/db", Options::for_tests())
            .await
            .unwrap();
        let ts = put_ttl(&engine, "brief", "here", 400).await;
        let ms = ms_of_ts(ts);
        put_ttl(&engine, "plain", "stays", 0).await;
        // A newer expiring put hides the older plain value once it expires;
        // a newer plain put outlives the older expiring one.
        engine.put(b("hidden"), b("old")).await.unwrap();
        let hidden_ms = ms_of_ts(put_ttl(&engine, "hidden", "new", 400).await);
        put_ttl(&engine, "outlived", "old", 400).await;
        engine.put(b("outlived"), b("new")).await.unwrap();

        // The newest state, from the memtable.
        assert_eq!(engine.get(b"brief").await.unwrap(), Some(b("here")));
        assert_eq!(txn_read(&engine, "hidden").await, Some(b("new")));
        assert_eq!(
            scan_keys(&engine, None).await,
            vec![b("brief"), b("hidden"), b("outlived"), b("plain")]
        );

        // At a timestamp: exactly the state of that moment (a read up to
        // a second ahead of the clock is allowed).
        assert_eq!(engine.read_at(b"brief", ts).await.unwrap(), Some(b("here")));
        let last_live = ts_from_ms(ms + 399);
        let expired = ts_from_ms(ms + 400);
        assert_eq!(
            engine.read_at(b"brief", last_live).await.unwrap(),
            Some(b("here"))
        );
        assert_eq!(engine.read_at(b"brief", expired).await.unwrap(), None);
        assert_eq!(
            scan_keys(&engine, Some(last_live)).await,
            vec![b("brief"), b("hidden"), b("outlived"), b("plain")]
        );
        // "hidden" was written a little later (a millisecond or more on a
        // busy machine), so it expires a little later.
        let all_expired = ts_from_ms(hidden_ms + 400);
        let after = vec![b("outlived"), b("plain")];
        assert_eq!(scan_keys(&engine, Some(all_expired)).await, after);
        // That read moved the shard's clock past the expiry: the newest
        // state agrees with it at once, before the wall clock gets there.
        assert_eq!(engine.get(b"brief").await.unwrap(), None);
        assert_eq!(txn_read(&engine, "hidden").await, None);
        assert_eq!(scan_keys(&engine, None).await, after);
        assert_eq!(engine.get(b"outlived").await.unwrap(), Some(b("new")));
        assert_eq!(engine.get(b"plain").await.unwrap(), Some(b("stays")));

        // From a table, then from the row cache, until the TTL passes.
        let again = put_ttl(&engine, "brief", "again", 400).await;
        engine.flush().await.unwrap();
        for _ in 0..2 {
            assert_eq!(engine.get(b"brief").await.unwrap(), Some(b("again")));
        }
        assert_eq!(txn_read(&engine, "brief").await, Some(b("again")));
        let hits = engine.stats().row_cache_hits;
        // Its timestamp is the clock's, ahead of the wall clock since the
        // read ahead: wait until the wall clock is past its expiry too.
        sleep_past_ms(ms_of_ts(again) + 400).await;
        for _ in 0..2 {
            assert_eq!(engine.get(b"brief").await.unwrap(), None);
        }
        assert!(
            engine.stats().row_cache_hits > hits,
            "the row cache answered"
        );
        assert_eq!(txn_read(&engine, "brief").await, None);
        assert_eq!(scan_keys(&engine, None).await, after);
        // Time travel still sees both.
        assert_eq!(engine.read_at(b"brief", ts).await.unwrap(), Some(b("here")));
        assert_eq!(
            engine.read_at(b"brief", again).await.unwrap(),
            Some(b("again"))
        );
        engine.close().await.unwrap();
    });
}

#[test]
fn the_ttl_is_not_part_of_the_value_limit() {
    run_local(|| async {
        let opts = Options::for_tests();
        let largest = "v".repeat(opts.value_bytes_max);
        let engine = Engine::open_on(MemDisk::new(), "/db", opts).await.unwrap();
        put_ttl(&engine, "big", &largest, 60_000).await;
        assert_eq!(
            engine.get(b"big").await.unwrap().unwrap().len(),
            largest.len()
        );
        let mut batch = WriteBatch::new();
        batch.put_with_ttl(b("bigger"), format!("{largest}v"), 60_000);
        assert!(engine.write(batch).await.is_err());
        engine.close().await.unwrap();
    });
}

#[test]
fn expiring_puts_survive_a_restart_with_their_expiry() {
    run_local(|| async {
        let disk = MemDisk::new();
        let engine = Engine::open_on(disk.clone(), "/db", Options::for_tests())
            .await
            .unwrap();
        let long = put_ttl(&engine, "long", "lived", 3_600_000).await;
        let short = put_ttl(&engine, "short", "lived", 300).await;
        engine.flush().await.unwrap();
        put_ttl(&engine, "in-wal", "only", 300).await;
        engine.close().await.unwrap();
        let engine = Engine::open_on(disk, "/db", Options::for_tests())
            .await
            .unwrap();
        assert_eq!(
            engine.read_at(b"long", long).await.unwrap(),
            Some(b("lived"))
        );
        assert_eq!(
            engine.read_at(b"short", short).await.unwrap(),
            Some(b("lived"))
        );
        sleep_ms(350).await;
        assert_eq!(engine.get(b"long").await.unwrap(), Some(b("lived")));
        assert_eq!(engine.get(b"short").await.unwrap(), None);
        assert_eq!(engine.get(b"in-wal").await.unwrap(), None);
        engine.close().await.unwrap();
    });
}

#[test]
fn compaction_drops_versions_expired_before_the_retention_watermark() {
    run_local(|| async {
        let opts = Options {
            retention_ms: 50,
            ..Options::for_tests()
        };
        let engine = Engine::open_on(MemDisk::new(), "/db", opts).await.unwrap();
        let value = "x".repeat(1000);
        // One level-0 table of expiring rows...
        for i in 0..40 {
            put_ttl(&engine, &format!("gone-{i:03}"), &value, 50).await;
        }
        engine.flush().await.unwrap();
        let expiring_bytes: u64 = engine.stats().level_bytes.iter().sum();
        assert!(expiring_bytes > 40_000, "{expiring_bytes}");
        // ...expired past the watermark, then two more tables of a key each:
        // level 0 reaches its trigger and merges into an empty level 1.
        sleep_ms(150).await;
        for key in ["kept-1", "kept-2"] {
            engine.put(b(key), b("v")).await.unwrap();
            engine.flush().await.unwrap();
        }
        engine.compact().await.unwrap();
        let stats = engine.stats();
        assert_eq!(stats.level_tables[0], 0, "{:?}", stats.level_tables);
        let left: u64 = stats.level_bytes.iter().sum();
        assert!(
            left < expiring_bytes / 4,
            "{left} bytes left of {expiring_bytes}: the expired rows were kept"
        );
        assert_eq!(
            scan_keys(&engine, None).await,
            vec![b("kept-1"), b("kept-2")]
        );
        engine.close().await.unwrap();
    });
}

#[test]
fn a_table_of_expired_keys_is_rewritten_without_any_write() {
    run_local(|| async {
        let opts = Options {
            retention_ms: 50,
            expiry_check_ms: 50,
            ..Options::for_tests()
        };
        let engine = Engine::open_on(MemDisk::new(), "/db", opts).await.unwrap();
        let value = "x".repeat(1000);
        // Three flushes: level 0 reaches its trigger and merges into level
        // 1, the deepest, while the keys are still live.
        for round in 0..3 {
            for i in 0..20 {
                put_ttl(&engine, &format!("gone-{round}-{i:02}"), &value, 1500).await;
            }
            engine
                .put(b(&format!("kept-{round}")), b("v"))
                .await
                .unwrap();
            engine.flush().await.unwrap();
        }
        engine.compact().await.unwrap();
        let stats = engine.stats();
        assert_eq!(stats.level_tables[0], 0, "{:?}", stats.level_tables);
        let before: u64 = stats.level_bytes.iter().sum();
        assert!(before > 50_000, "{before}");
        // No write from here on: the compaction task finds the expired
        // table on its own.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left: u64 = engine.stats().level_bytes.iter().sum();
            if left < before / 4 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{left} of {before} bytes still held"
            );
            sleep_ms(50).await;
        }
        assert_eq!(
            scan_keys(&engine, None).await,
            vec![b("kept-0"), b("kept-1"), b("kept-2")]
        );
        engine.close().await.unwrap();
    });
}
