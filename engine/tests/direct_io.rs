//! Proves the production I/O path works on this machine: io_uring O_DIRECT
//! write + fdatasync + read-back through glommio-ng DMA files, including the
//! case that broke glommio 0.9 (the first DMA file opened is empty).

use tessera_engine::io::{Disk, DiskFile, DmaDisk, ALIGN};
use tessera_engine::{run_local, Engine, Options};

#[test]
fn direct_write_fdatasync_and_read_back_on_an_initially_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("probe");
    run_local(move || async move {
        let disk = DmaDisk;
        let file = disk.create(&path).await.unwrap();
        assert_eq!(file.size().await.unwrap(), 0);
        let block: Vec<u8> = (0..2 * ALIGN).map(|i| (i % 251) as u8).collect();
        file.write_at(&block, 0).await.unwrap();
        file.sync().await.unwrap();
        let back = file.read_at(0, block.len()).await.unwrap();
        assert_eq!(back.as_ref(), block.as_slice());
        let unaligned = file.read_at(100, 50).await.unwrap();
        assert_eq!(unaligned.as_ref(), &block[100..150]);
        drop(file);
        let std_read = std::fs::read(&path).unwrap();
        assert_eq!(std_read, block);
    });
}

#[test]
fn engine_on_the_real_disk_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let engine = Engine::open(&path, Options::for_tests()).await.unwrap();
        for i in 0..2000u32 {
            engine
                .put(format!("key{i:05}"), format!("value{i}"))
                .await
                .unwrap();
        }
        engine.flush().await.unwrap();
        engine.put("after-flush", "x").await.unwrap();
        engine.close().await.unwrap();
        let engine = Engine::open(&path, Options::for_tests()).await.unwrap();
        assert_eq!(engine.get(b"key01234").await.unwrap().unwrap(), "value1234");
        assert_eq!(engine.get(b"after-flush").await.unwrap().unwrap(), "x");
        assert_eq!(engine.get(b"missing").await.unwrap(), None);
        let scanned = engine
            .scan(b"key00010", Some(b"key00013"), 100, None)
            .await
            .unwrap();
        let keys: Vec<_> = scanned.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, vec!["key00010", "key00011", "key00012"]);
        engine.close().await.unwrap();
    });
}

/// Compaction reads tables in windows of many blocks
/// (`Table::block_read_ahead`); on the real disk those are direct reads of
/// whole aligned blocks.
#[test]
fn compaction_on_the_real_disk_reads_its_inputs_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let opts = |trigger| Options {
            memtable_bytes_max: 4 << 20,
            l0_compaction_trigger: trigger,
            l0_slowdown_trigger: trigger,
            l0_stop_trigger: trigger,
            ..Options::for_tests()
        };
        let value = |i: u32, round: u32| format!("{i}-{round}-{}", "v".repeat(150));
        let engine = Engine::open(&path, opts(100)).await.unwrap();
        for round in 0..3 {
            for i in 0..3000u32 {
                engine
                    .put(format!("key{i:05}"), value(i, round))
                    .await
                    .unwrap();
            }
            engine.flush().await.unwrap();
        }
        let stats = engine.stats();
        // Each table spans several windows.
        assert!(
            stats.level_bytes[0] > 3 * 2 * Options::for_tests().compaction_read_ahead_bytes as u64
        );
        engine.close().await.unwrap();
        let engine = Engine::open(&path, opts(2)).await.unwrap();
        engine.compact().await.unwrap();
        assert_eq!(engine.stats().level_tables[0], 0);
        engine.close().await.unwrap();
        // Cold: every read below comes from the compacted tables on disk.
        let engine = Engine::open(&path, opts(2)).await.unwrap();
        for i in 0..3000u32 {
            let got = engine.get(format!("key{i:05}").as_bytes()).await.unwrap();
            assert_eq!(got.as_deref(), Some(value(i, 2).as_bytes()), "key {i}");
        }
        engine.close().await.unwrap();
    });
}

/// The `always` WAL's segments are opened O_DSYNC: each completed write is
/// durable without an fdatasync.
#[test]
fn write_through_files_are_opened_o_dsync_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("segment");
    run_local(move || async move {
        let disk = DmaDisk;
        disk.create(&path).await.unwrap();
        let file = disk.open_write_through(&path).await.unwrap();
        let block: Vec<u8> = (0..ALIGN).map(|i| (i % 241) as u8).collect();
        file.write_at(&block, 0).await.unwrap();
        assert_eq!(open_flags(&path) & libc::O_DSYNC, libc::O_DSYNC);
        let plain = disk.open(&path).await.unwrap();
        assert_eq!(plain.read_at(0, ALIGN).await.unwrap().as_ref(), block);
        drop((file, plain));
        assert_eq!(std::fs::read(&path).unwrap(), block);
    });
}

/// Open flags of this process's one descriptor of `path`, from
/// /proc/self/fdinfo.
fn open_flags(path: &std::path::Path) -> i32 {
    let fds: Vec<_> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|fd| std::fs::read_link(fd.path()).ok().as_deref() == Some(path))
        .collect();
    assert_eq!(fds.len(), 1, "descriptors of {}", path.display());
    let info = std::fs::read_to_string(format!(
        "/proc/self/fdinfo/{}",
        fds[0].file_name().to_str().unwrap()
    ))
    .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|f| i32::from_str_radix(f.trim(), 8).unwrap())
        .unwrap()
}
