//! The retention window of time-travel reads, and the timestamps reads
//! hold past it: a long backup or paged scan at one snapshot keeps working
//! while it reads at least every half window.

use bytes::Bytes;
use std::time::Duration;
use tessera_engine::io::MemDisk;
use tessera_engine::{run_local, Engine, Error, Options};

const RETENTION_MS: u64 = 1000;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn sleep_ms(ms: u64) {
    glommio::timer::sleep(Duration::from_millis(ms)).await;
}

/// Overwrites `key`, flushes and compacts: without a hold, compaction may
/// drop every version the window no longer covers.
async fn overwrite_and_compact(engine: &Engine<MemDisk>, key: &str, value: &str) {
    engine.put(b(key), b(value)).await.unwrap();
    engine.put(b("other"), b(value)).await.unwrap();
    engine.flush().await.unwrap();
    engine.compact().await.unwrap();
}

/// An engine with a short retention window holding `k` = "old", and a
/// snapshot timestamp taken after that write.
async fn open_with_old_key() -> (Engine<MemDisk>, u64) {
    let opts = Options {
        retention_ms: RETENTION_MS,
        ..Options::for_tests()
    };
    let engine = Engine::open_on(MemDisk::new(), "/db", opts).await.unwrap();
    engine.put(b("k"), b("old")).await.unwrap();
    let snapshot = engine.clock().now();
    (engine, snapshot)
}

#[test]
fn reads_at_a_snapshot_hold_it_past_the_window_while_they_keep_coming() {
    run_local(|| async {
        let (engine, snapshot) = open_with_old_key().await;
        // Three windows of reads a fifth of a window apart, while the key
        // is overwritten and compacted under them.
        for round in 0..15 {
            assert_eq!(
                engine.read_at(b"k", snapshot).await.unwrap(),
                Some(b("old")),
                "round {round}"
            );
            let rows = engine.scan(b"", None, 10, Some(snapshot)).await.unwrap();
            assert_eq!(rows, vec![(b("k"), b("old"))], "round {round}");
            overwrite_and_compact(&engine, "k", &format!("new-{round}")).await;
            sleep_ms(RETENTION_MS / 5).await;
        }
        assert!(
            engine.retention_watermark() <= snapshot,
            "the watermark passed a held snapshot"
        );
        assert_eq!(engine.stats().read_holds, 1);
        // Unread for longer than a window, the hold lapses.
        sleep_ms(RETENTION_MS + 100).await;
        assert!(engine.retention_watermark() > snapshot);
        assert_eq!(engine.stats().read_holds, 0);
        match engine.read_at(b"k", snapshot).await {
            Err(Error::TimestampTooOld { requested, .. }) => assert_eq!(requested, snapshot),
            other => panic!("read past a lapsed hold: {other:?}"),
        }
        assert_eq!(engine.get(b"k").await.unwrap(), Some(b("new-14")));
        engine.close().await.unwrap();
    });
}

#[test]
fn a_snapshot_read_only_when_young_is_not_held() {
    run_local(|| async {
        let (engine, snapshot) = open_with_old_key().await;
        // Read inside the first half of the window: the window alone keeps
        // it at least half a window more, so nothing is held...
        assert_eq!(
            engine.read_at(b"k", snapshot).await.unwrap(),
            Some(b("old"))
        );
        assert_eq!(engine.stats().read_holds, 0);
        // ...and a window later it is gone.
        sleep_ms(RETENTION_MS + 100).await;
        overwrite_and_compact(&engine, "k", "new").await;
        assert!(matches!(
            engine.read_at(b"k", snapshot).await,
            Err(Error::TimestampTooOld { .. })
        ));
        engine.close().await.unwrap();
    });
}
