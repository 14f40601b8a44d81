//! Fault injection through the in-memory disk: torn WAL tails, bit flips in
//! tables and WAL, ENOSPC and EIO during writes, syncs, flushes and
//! compactions.

use bytes::Bytes;
use std::path::PathBuf;
use std::time::Duration;
use tessera_engine::io::{Fault, MemDisk};
use tessera_engine::{
    run_local, Engine, Error, Options, SyncMode, WalRecovery, WriteBatch, WriteStart,
};

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key-{i:06}"))
}

fn value(i: usize) -> Bytes {
    Bytes::from(format!("value-{i}-{}", "x".repeat(100)))
}

async fn open(disk: &MemDisk) -> Engine<MemDisk> {
    Engine::open_on(disk.clone(), "/db", Options::for_tests())
        .await
        .unwrap()
}

/// A fresh engine on an in-memory disk, with keys `0..n` written.
async fn with_writes(n: usize) -> (MemDisk, Engine<MemDisk>) {
    let disk = MemDisk::new();
    let engine = open(&disk).await;
    put_all(&engine, 0..n).await;
    (disk, engine)
}

async fn put_all(engine: &Engine<MemDisk>, keys: impl IntoIterator<Item = usize>) {
    for i in keys {
        engine.put(key(i), value(i)).await.unwrap();
    }
}

async fn assert_all_present(engine: &Engine<MemDisk>, keys: impl IntoIterator<Item = usize>) {
    for i in keys {
        assert_eq!(
            engine.get(&key(i)).await.unwrap(),
            Some(value(i)),
            "key {i}"
        );
    }
}

fn paths_with(disk: &MemDisk, suffix: &str) -> Vec<PathBuf> {
    disk.paths()
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect()
}

/// The WAL's segments, oldest first.
fn wal_segments(disk: &MemDisk) -> Vec<PathBuf> {
    let mut segments: Vec<_> = paths_with(disk, ".log")
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("spare"))
        .collect();
    segments.sort();
    segments
}

#[test]
fn torn_wal_tail_recovers_to_a_prefix_of_the_writes() {
    run_local(|| async {
        let (mut partial, mut torn) = (0, 0);
        for seed in 1..=120u64 {
            let disk = MemDisk::new();
            let opts = Options {
                // Writes reach the "device" but are never synced, so the
                // crash may keep any prefix of them, the last one torn.
                wal_sync: SyncMode::Interval(Duration::from_secs(3600)),
                ..Options::for_tests()
            };
            let engine = Engine::open_on(disk.clone(), "/db", opts.clone())
                .await
                .unwrap();
            let writes = 40 + (seed as usize * 7) % 60;
            // Records of up to ~3 KiB span several 512-byte sectors, so a
            // torn chunk can cut one in the middle.
            let big = |i: usize| Bytes::from(vec![b'a' + (i % 26) as u8; 100 + i * 97 % 3000]);
            for i in 0..writes {
                engine.put(key(i), big(i)).await.unwrap();
            }
            let after = disk.crash_torn(seed);
            let engine = Engine::open_on(after, "/db", opts.clone()).await.unwrap();
            let mut present = Vec::with_capacity(writes);
            for i in 0..writes {
                present.push(engine.get(&key(i)).await.unwrap());
            }
            let survived = present.iter().take_while(|v| v.is_some()).count();
            for (i, v) in present.iter().enumerate() {
                if i < survived {
                    assert_eq!(
                        v.as_ref(),
                        Some(&big(i)),
                        "seed {seed}: wrong value for {i}"
                    );
                } else {
                    assert!(
                        v.is_none(),
                        "seed {seed}: write {i} survived after a lost write {survived}"
                    );
                }
            }
            partial += usize::from(survived > 0 && survived < writes);
            torn += usize::from(engine.replay_report().torn_tail_at.is_some());
            engine.close().await.unwrap();
        }
        // The seeds must actually exercise lost and torn tails.
        assert!(
            partial >= 10 && torn >= 10,
            "partial {partial}, torn {torn}"
        );
    });
}

/// A recycled segment keeps the bytes of its earlier use past the records
/// of this one: after a crash, recovery ends this use's records there
/// without calling it a torn tail (it warned "cutting torn WAL tail" after
/// every kill of a server whose log had wrapped once).
#[test]
fn a_recycled_segments_leftovers_are_not_a_torn_tail() {
    run_local(|| async {
        // 128 KiB segments: ~400 KB of writes roll and recycle several.
        let (disk, engine) = with_writes(3000).await;
        engine.flush().await.unwrap();
        put_all(&engine, 3000..3010).await;
        let engine = open(&disk.crash()).await;
        assert_eq!(engine.replay_report().torn_tail_at, None);
        assert_all_present(&engine, 0..3010).await;
    });
}

/// A restart that writes nothing (or a read-only run) recycles the
/// segment the last one opened; each such open used to keep one more
/// segment for good, and read it back at every later open.
#[test]
fn opens_that_write_nothing_keep_no_more_wal_segments() {
    run_local(|| async {
        let (mut disk, engine) = with_writes(100).await;
        engine.close().await.unwrap();
        let spares = Options::for_tests().wal_spare_segments;
        for round in 0..6 {
            let engine = open(&disk).await;
            assert_all_present(&engine, 0..100).await;
            // Every other round ends in a crash instead of a close.
            if round % 2 == 0 {
                engine.close().await.unwrap();
            } else {
                disk = disk.crash();
            }
            assert_eq!(
                wal_segments(&disk).len(),
                1,
                "round {round}: {:?}",
                disk.paths()
            );
            assert!(
                paths_with(&disk, ".log").len() <= 1 + spares,
                "round {round}"
            );
        }
        let engine = open(&disk).await;
        assert_eq!(engine.replay_report().segments, 1);
        assert_all_present(&engine, 0..100).await;
    });
}

#[test]
fn a_bit_flip_in_a_table_block_is_a_corruption_error_never_wrong_data() {
    run_local(|| async {
        let disk = MemDisk::new();
        let engine = open(&disk).await;
        put_all(&engine, 0..200).await;
        engine.flush().await.unwrap();
        engine.close().await.unwrap();
        let tables = paths_with(&disk, ".sst");
        assert_eq!(tables.len(), 1);
        // Offset 200 is inside the first data block (the first keys).
        disk.flip_bit(&tables[0], 200, 3);
        let engine = open(&disk).await;
        let err = engine.get(&key(0)).await.unwrap_err();
        assert!(err.is_corruption(), "expected corruption, got {err}");
        let err = engine.scan(b"", None, 10, None).await.unwrap_err();
        assert!(err.is_corruption(), "expected corruption, got {err}");
        // Keys in other blocks are still served, correctly.
        assert_eq!(engine.get(&key(150)).await.unwrap(), Some(value(150)));
        engine.close().await.unwrap();
    });
}

/// Compaction reads tables in windows of many blocks
/// (`Table::block_read_ahead`); a block deep in one fails its checksum
/// there too, and the inputs stay.
#[test]
fn a_bit_flip_in_a_block_compaction_reads_ahead_fails_the_compaction() {
    run_local(|| async {
        let disk = MemDisk::new();
        let opts = Options {
            memtable_bytes_max: 4 << 20,
            l0_compaction_trigger: 100,
            l0_slowdown_trigger: 100,
            l0_stop_trigger: 100,
            ..Options::for_tests()
        };
        let engine = Engine::open_on(disk.clone(), "/db", opts.clone())
            .await
            .unwrap();
        for round in 0..2 {
            put_all(&engine, (0..4000).map(|i| i + round)).await;
            engine.flush().await.unwrap();
        }
        engine.close().await.unwrap();
        let tables = paths_with(&disk, ".sst");
        assert_eq!(tables.len(), 2);
        // In the second read-ahead window of the table, past its first.
        let at = Options::for_tests().compaction_read_ahead_bytes as u64 + 5000;
        assert!(disk.file_len(&tables[0]).unwrap() > at + 64 * 1024);
        disk.flip_bit(&tables[0], at, 5);
        let low = Options {
            l0_compaction_trigger: 2,
            ..opts
        };
        let engine = Engine::open_on(disk.clone(), "/db", low).await.unwrap();
        let err = engine.compact().await.unwrap_err();
        assert!(err.is_corruption(), "expected corruption, got {err}");
        assert_eq!(engine.stats().level_tables[0], 2, "the inputs stay");
        // Keys in intact blocks are still served, correctly.
        assert_eq!(engine.get(&key(1)).await.unwrap(), Some(value(1)));
        engine.close().await.unwrap();
    });
}

#[test]
fn a_bit_flip_before_the_wal_tail_fails_the_open() {
    run_local(|| async {
        let disk = MemDisk::new();
        let engine = open(&disk).await;
        put_all(&engine, 0..20).await;
        // Crash rather than close: a clean close flushes the WAL away.
        let disk = disk.crash();
        let segments = wal_segments(&disk);
        assert_eq!(segments.len(), 1);
        disk.flip_bit(&segments[0], 30, 0);
        match Engine::open_on(disk.clone(), "/db", Options::for_tests()).await {
            Err(e) => assert!(e.is_corruption(), "expected corruption, got {e}"),
            Ok(_) => panic!("opened a WAL with a damaged record followed by valid ones"),
        }
    });
}

#[test]
fn point_in_time_wal_recovery_replays_up_to_the_damage_and_sets_the_rest_aside() {
    run_local(|| async {
        let disk = MemDisk::new();
        let engine = open(&disk).await;
        // One 4 KiB group per write (`always`, one writer): 50 of them fill
        // the 128 KiB test segments and go on into a second.
        put_all(&engine, 0..50).await;
        let disk = disk.crash();
        let segments = wal_segments(&disk);
        assert_eq!(segments.len(), 2, "{segments:?}");
        // Damage the 6th group of the first segment.
        disk.flip_bit(&segments[0], 5 * 4096 + 30, 0);
        match Engine::open_on(disk.clone(), "/db", Options::for_tests()).await {
            Err(e) => assert!(e.is_corruption(), "expected corruption, got {e}"),
            Ok(_) => panic!("strict recovery opened a damaged WAL"),
        }
        let point_in_time = Options {
            wal_recovery: WalRecovery::PointInTime,
            ..Options::for_tests()
        };
        let engine = Engine::open_on(disk.clone(), "/db", point_in_time)
            .await
            .unwrap();
        let discarded = engine
            .replay_report()
            .discarded
            .clone()
            .expect("damage reported");
        assert_eq!(discarded.segment, segments[0]);
        assert_eq!(discarded.offset, 5 * 4096);
        assert_eq!(discarded.later_segments.len(), 1);
        assert!(disk.paths().contains(&PathBuf::from(format!(
            "{}.discarded",
            segments[1].display()
        ))));
        assert_all_present(&engine, 0..5).await;
        for i in 5..50 {
            assert_eq!(engine.get(&key(i)).await.unwrap(), None, "key {i}");
        }
        // The log was sealed at the damage: new writes land after it, and a
        // strict open afterwards replays them with the prefix.
        put_all(&engine, 100..110).await;
        let disk = disk.crash();
        let engine = open(&disk).await;
        assert_eq!(engine.replay_report().discarded, None);
        assert_all_present(&engine, (0..5).chain(100..110)).await;
        assert_eq!(engine.get(&key(5)).await.unwrap(), None);
        engine.close().await.unwrap();
    });
}

#[test]
fn enospc_on_the_wal_fails_the_write_loses_nothing_and_recovers() {
    run_local(|| async {
        let (disk, engine) = with_writes(50).await;
        disk.inject(Fault::Writes(libc::ENOSPC));
        assert_eq!(engine.write_health(), Ok(()));
        let err = engine.put(key(50), value(50)).await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        let why = engine.write_health().unwrap_err();
        assert!(why.starts_with("the last WAL write failed: "), "{why}");
        disk.clear_faults();
        engine.put(key(51), value(51)).await.unwrap();
        assert_eq!(engine.write_health(), Ok(()));
        for i in 0..50 {
            assert_eq!(engine.get(&key(i)).await.unwrap(), Some(value(i)));
        }
        assert_eq!(engine.get(&key(50)).await.unwrap(), None);
        let disk = disk.crash();
        let engine = open(&disk).await;
        assert_all_present(&engine, (0..50).chain([51])).await;
        engine.close().await.unwrap();
    });
}

/// A close whose WAL cannot roll fails with the error instead of retrying
/// forever (a server stopping while its data directory was removed never
/// exited), and the WAL still holds every acknowledged write.
#[test]
fn a_close_that_cannot_roll_the_wal_fails_instead_of_hanging() {
    run_local(|| async {
        let (disk, engine) = with_writes(50).await;
        disk.inject(Fault::Writes(libc::EIO));
        let closed = futures_lite::future::or(async { Some(engine.close().await) }, async {
            glommio::timer::sleep(Duration::from_secs(10)).await;
            None
        })
        .await;
        let err = closed.expect("close returned").unwrap_err();
        assert!(err.to_string().contains("rolling the WAL"), "{err}");
        disk.clear_faults();
        let disk = disk.crash();
        let engine = open(&disk).await;
        assert_all_present(&engine, 0..50).await;
        engine.close().await.unwrap();
    });
}

/// In `always` mode the WAL is written through (O_DSYNC): acknowledged
/// writes are durable with no fdatasync at all, and a failure to make a
/// write durable (EIO where a sync would fail) is not acknowledged.
#[test]
fn always_mode_writes_are_durable_without_fdatasync() {
    run_local(|| async {
        let disk = MemDisk::new();
        let engine = open(&disk).await;
        let syncs = disk.syncs();
        put_all(&engine, 0..20).await;
        assert_eq!(disk.syncs(), syncs, "a group write needed an fdatasync");
        let disk = disk.crash();
        let engine = open(&disk).await;
        assert_all_present(&engine, 0..20).await;
        engine.close().await.unwrap();
    });
}

/// A durable write started without waiting (`start_write`, which a
/// server uses instead of a future per write) is done when its group is:
/// not before the writer task has run, then durable across a crash. One
/// whose group fails gets the error, and reads at later timestamps do not
/// wait for it.
#[test]
fn a_queued_durable_write_is_done_with_its_group() {
    run_local(|| async {
        let disk = MemDisk::new();
        let opts = || Options {
            txn_wait_ms: 300,
            ..Options::for_tests()
        };
        let engine = Engine::open_on(disk.clone(), "/db", opts()).await.unwrap();
        let start = |i: usize| {
            let mut batch = WriteBatch::new();
            batch.put(key(i), value(i));
            match engine.start_write(batch) {
                WriteStart::Queued(queued) => queued,
                WriteStart::Done(_) => panic!("a durable write was done at once"),
                WriteStart::Back(_) => panic!("a write to an idle engine came back"),
            }
        };
        let (mut first, mut second) = (start(1), start(2));
        assert!(
            futures_lite::future::poll_once(std::future::poll_fn(|cx| first.poll_done(cx)))
                .await
                .is_none()
        );
        let ts1 = std::future::poll_fn(|cx| first.poll_done(cx))
            .await
            .unwrap();
        let ts2 = std::future::poll_fn(|cx| second.poll_done(cx))
            .await
            .unwrap();
        assert!(ts2 > ts1);
        disk.inject(Fault::Writes(libc::EIO));
        let mut failed = start(3);
        let err = std::future::poll_fn(|cx| failed.poll_done(cx))
            .await
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        disk.clear_faults();
        let ts4 = engine.put(key(4), value(4)).await.unwrap();
        // Reads at a later timestamp neither wait for the failed write nor
        // fail for it.
        assert_eq!(engine.read_at(&key(2), ts4).await.unwrap(), Some(value(2)));
        assert_eq!(engine.read_at(&key(3), ts4).await.unwrap(), None);
        let disk = disk.crash();
        let engine = Engine::open_on(disk, "/db", opts()).await.unwrap();
        assert_eq!(engine.get(&key(1)).await.unwrap(), Some(value(1)));
        assert_eq!(engine.get(&key(2)).await.unwrap(), Some(value(2)));
        assert_eq!(engine.get(&key(3)).await.unwrap(), None);
        engine.close().await.unwrap();
    });
}

#[test]
fn eio_making_a_wal_write_durable_is_not_acknowledged() {
    run_local(|| async {
        let disk = MemDisk::new();
        let engine = open(&disk).await;
        engine.put(key(1), value(1)).await.unwrap();
        disk.inject(Fault::Syncs(libc::EIO));
        let err = engine.put(key(2), value(2)).await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        disk.clear_faults();
        engine.put(key(3), value(3)).await.unwrap();
        let disk = disk.crash();
        let engine = open(&disk).await;
        assert_eq!(engine.get(&key(1)).await.unwrap(), Some(value(1)));
        assert_eq!(engine.get(&key(3)).await.unwrap(), Some(value(3)));
        engine.close().await.unwrap();
    });
}

#[test]
fn a_full_disk_during_flush_reports_and_recovers_once_space_returns() {
    run_local(|| async {
        let disk = MemDisk::new();
        let engine = open(&disk).await;
        put_all(&engine, 0..100).await;
        disk.inject(Fault::WritesTo(".sst"));
        let err = engine.flush().await.unwrap_err();
        assert!(matches!(err, Error::Stalled(_)), "{err}");
        assert!(engine.stats().background_error.is_some());
        let why = engine.stats().writes_failing.unwrap();
        assert!(why.starts_with("background flush failed: "), "{why}");
        // The failed flush removed its partial table (kept, it would hold
        // space a full disk needs for the retry).
        assert_eq!(paths_with(&disk, ".sst"), Vec::<PathBuf>::new());
        // Writes go on into the WAL and the next memtable meanwhile.
        put_all(&engine, 100..150).await;
        disk.clear_faults();
        engine.flush().await.unwrap();
        assert_eq!(engine.stats().background_error, None);
        assert_eq!(engine.stats().writes_failing, None);
        assert!(!paths_with(&disk, ".sst").is_empty());
        let disk = disk.crash();
        let engine = open(&disk).await;
        assert_all_present(&engine, 0..150).await;
        engine.close().await.unwrap();
    });
}

/// In `none` mode a write is done once it is in the memtable, so a full
/// disk shows where a write waits for a memtable slot: while the flush is
/// failing, it fails with a clear error instead of waiting for good.
/// Nothing acknowledged is lost, and writes go on once space returns.
#[test]
fn a_full_disk_during_flush_fails_none_mode_writes_instead_of_hanging_them() {
    run_local(|| async {
        let opts = Options {
            wal_sync: SyncMode::None,
            ..Options::for_tests()
        };
        let disk = MemDisk::new();
        let engine = Engine::open_on(disk.clone(), "/db", opts).await.unwrap();
        disk.inject(Fault::WritesTo(".sst"));
        let writes = async {
            for i in 0.. {
                if let Err(e) = engine.put(key(i), value(i)).await {
                    return (i, e);
                }
            }
            unreachable!()
        };
        let gave_up = async {
            glommio::timer::sleep(Duration::from_secs(20)).await;
            panic!("a write still waits after 20 s: {}", engine.debug_state());
        };
        let (failed, err) = futures_lite::future::or(writes, gave_up).await;
        assert!(matches!(err, Error::Stalled(_)), "{err}");
        assert!(err.to_string().contains("background flush failed"), "{err}");
        // The memtables filled before any write failed (two of 64 KiB
        // hold ~1,000 of these writes).
        assert!(failed > 900, "failed at write {failed}");
        assert_all_present(&engine, 0..failed).await;
        disk.clear_faults();
        engine.flush().await.unwrap();
        put_all(&engine, failed..failed + 2000).await;
        engine.flush().await.unwrap();
        assert_all_present(&engine, 0..failed + 2000).await;
        engine.close().await.unwrap();
    });
}

#[test]
fn a_spare_wal_segment_that_fails_to_fill_leaves_no_file() {
    run_local(|| async {
        let disk = MemDisk::new();
        let engine = open(&disk).await;
        disk.inject(Fault::WritesTo(".log.tmp"));
        // Writes through several 128 KiB segments: once the spares made at
        // open are used, each new one fails while being zero-filled.
        let mut failed = 0;
        for i in 0..4000 {
            failed += engine.put(key(i), value(i)).await.is_err() as usize;
        }
        assert!(failed > 0, "no write needed a new WAL segment");
        // Kept, a partial spare would hold its space until the next open
        // (one was left per failed write before they were removed).
        let left = paths_with(&disk, ".tmp");
        assert!(
            left.is_empty(),
            "{} partial spares left, e.g. {:?}",
            left.len(),
            left.first()
        );
        disk.clear_faults();
        put_all(&engine, 4000..4100).await;
        assert_all_present(&engine, 4000..4100).await;
        engine.close().await.unwrap();
    });
}

#[test]
fn enospc_during_compaction_keeps_the_old_tables_and_recovers() {
    run_local(|| async {
        let disk = MemDisk::new();
        let opts = Options {
            l0_compaction_trigger: 100,
            l0_slowdown_trigger: 100,
            l0_stop_trigger: 100,
            ..Options::for_tests()
        };
        let engine = Engine::open_on(disk.clone(), "/db", opts.clone())
            .await
            .unwrap();
        for round in 0..3 {
            for i in 0..100 {
                engine.put(key(i), value(i + round)).await.unwrap();
            }
            engine.flush().await.unwrap();
        }
        engine.close().await.unwrap();
        assert_eq!(paths_with(&disk, ".sst").len(), 3);
        // Reopen with a trigger the three level-0 tables exceed, on a disk
        // with room for less than one compaction output.
        disk.set_capacity(Some(disk.used_bytes() + 8192));
        let low = Options {
            l0_compaction_trigger: 2,
            ..Options::for_tests()
        };
        let engine = Engine::open_on(disk.clone(), "/db", low.clone())
            .await
            .unwrap();
        let err = engine.compact().await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        // Only the inputs: the failed compaction removed its partial output.
        assert_eq!(paths_with(&disk, ".sst").len(), 3);
        for i in 0..100 {
            assert_eq!(engine.get(&key(i)).await.unwrap(), Some(value(i + 2)));
        }
        disk.set_capacity(None);
        engine.compact().await.unwrap();
        assert_eq!(engine.stats().level_tables[0], 0);
        for i in 0..100 {
            assert_eq!(engine.get(&key(i)).await.unwrap(), Some(value(i + 2)));
        }
        engine.close().await.unwrap();
        let engine = Engine::open_on(disk.crash(), "/db", low).await.unwrap();
        for i in 0..100 {
            assert_eq!(engine.get(&key(i)).await.unwrap(), Some(value(i + 2)));
        }
        engine.close().await.unwrap();
    });
}

#[test]
fn oversized_keys_and_values_are_rejected_with_the_limit() {
    run_local(|| async {
        let engine = Engine::open_on(MemDisk::new(), "/db", Options::for_tests())
            .await
            .unwrap();
        let err = engine.put(vec![b'k'; 2000], "v").await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::TooLarge {
                    what: "key",
                    len: 2000,
                    limit: 1024
                }
            ),
            "{err}"
        );
        let err = engine.put("k", vec![0u8; 20_000]).await.unwrap_err();
        assert!(
            matches!(err, Error::TooLarge { what: "value", .. }),
            "{err}"
        );
        let err = engine.put("", "v").await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::TooLarge {
                    what: "key",
                    len: 0,
                    ..
                }
            ),
            "{err}"
        );
        engine.close().await.unwrap();
    });
}
