//! `none` sync mode: a write is acknowledged once queued, its record is
//! encoded right then (stamped for the WAL segment active at that moment)
//! and written by the writer task later, with no fdatasync. If the WAL
//! rolls to a new segment in between, the queued records are re-stamped.
//! A process kill loses nothing the writer has written: the OS keeps it.

use bytes::Bytes;
use std::time::Duration;
use tessera_engine::io::MemDisk;
use tessera_engine::{run_local, Engine, Options, SyncMode, WriteStart};

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key-{i:06}"))
}

fn value(i: usize) -> Bytes {
    Bytes::from(format!("{i:06}-{}", "v".repeat(300)))
}

#[test]
fn writes_logged_across_many_wal_rolls_survive_a_process_kill() {
    run_local(|| async {
        let opts = || Options {
            wal_sync: SyncMode::None,
            // Several segments' worth of records, all in one memtable: the
            // WAL rolls for room while records are queued, never for a
            // memtable swap, and nothing is flushed to a table.
            memtable_bytes_max: 4 << 20,
            wal_segment_bytes: 64 << 10,
            wal_group_bytes_max: 20 << 10,
            ..Options::for_tests()
        };
        let disk = MemDisk::new();
        let engine = Engine::open_on(disk.clone(), "/db", opts()).await.unwrap();
        let n = 1000;
        for i in 0..n {
            engine.put(key(i), value(i)).await.unwrap();
            if i % 97 == 0 {
                // Let the writer catch up now and then, so groups of many
                // sizes straddle the rolls.
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
        }
        // Let the writer write what is still queued.
        glommio::timer::sleep(Duration::from_millis(20)).await;
        assert_eq!(engine.stats().level_tables.iter().sum::<usize>(), 0);
        let reopened = Engine::open_on(disk.kill(), "/db", opts()).await.unwrap();
        for i in 0..n {
            let got = reopened.get(&key(i)).await.unwrap();
            assert_eq!(got, Some(value(i)), "key {i} after the kill");
        }
        reopened.close().await.unwrap();
    });
}

/// A write started without waiting (`start_write`, which a server uses to
/// answer a write without a future) is queued like `write`'s: in `none`
/// mode it is done at once, readable, in timestamp order with the others,
/// and logged (it survives a process kill). Bad input is refused as
/// `write` refuses it.
#[test]
fn a_started_write_in_none_mode_is_done_at_once() {
    run_local(|| async {
        let none = || Options {
            wal_sync: SyncMode::None,
            ..Options::for_tests()
        };
        let disk = MemDisk::new();
        let engine = Engine::open_on(disk.clone(), "/db", none()).await.unwrap();
        let batch = |i: usize| {
            let mut batch = tessera_engine::WriteBatch::new();
            batch.put(key(i), value(i));
            batch
        };
        let mut last = 0;
        let mut at_once = 0;
        for i in 0..50 {
            // The engine's turn-taking may send any one write back.
            let ts = match engine.start_write(batch(i)) {
                WriteStart::Done(written) => {
                    at_once += 1;
                    written.unwrap()
                }
                WriteStart::Back(back) => engine.write(back).await.unwrap(),
                WriteStart::Queued(_) => panic!("a none-mode write was queued"),
            };
            assert!(ts > last, "timestamps rise");
            last = ts;
            assert_eq!(engine.get(&key(i)).await.unwrap(), Some(value(i)));
        }
        assert!(at_once >= 40, "{at_once} of 50 done at once");
        let mut too_large = tessera_engine::WriteBatch::new();
        too_large.put(Bytes::from(vec![b'k'; 2000]), value(0));
        assert!(matches!(
            engine.start_write(too_large),
            WriteStart::Done(Err(tessera_engine::Error::TooLarge { what: "key", .. }))
        ));
        // Written by the writer task, with no fdatasync: kept by the OS.
        glommio::timer::sleep(Duration::from_millis(20)).await;
        let engine = Engine::open_on(disk.kill(), "/db", none()).await.unwrap();
        for i in 0..50 {
            assert_eq!(engine.get(&key(i)).await.unwrap(), Some(value(i)), "{i}");
        }
        engine.close().await.unwrap();
    });
}
