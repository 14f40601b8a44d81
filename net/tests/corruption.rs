//! Flipped bits in the files of the real server on the real disk (O_DIRECT
//! through io_uring, crc32c on every block and record). In a table: the
//! keys of the damaged block get a `Corruption` error, never the wrong
//! value, and every other key reads back. In the WAL before its tail: the
//! server refuses to start and names the segment, instead of cutting the
//! log there. `engine/tests/faults.rs` flips bits on the in-memory disk.

mod common;

use bytes::Bytes;
use common::Server;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tessera_client::{Client, Error};
use tessera_protocol::ErrorCode;

const KEYS: usize = 2000;

fn key(i: usize) -> String {
    format!("key{i:05}")
}

fn value(i: usize) -> Bytes {
    Bytes::from(format!("value-{i:05}-").repeat(8))
}

fn tables(data: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(data.join("shard-0/sst"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .collect();
    found.sort();
    found
}

#[test]
fn a_flipped_bit_in_a_table_is_a_corruption_error_never_wrong_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let options = ["--row-cache-bytes", "0", "--prefault-memory", "false"];
    let server = Server::start(&data, 1, &options);
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    for i in 0..KEYS {
        client.put(key(i), value(i)).unwrap();
    }
    drop(client);
    // A clean stop flushes the memtable: every key is in a table.
    assert!(server.stop(), "the server did not stop cleanly");
    let tables = tables(&data);
    assert_eq!(tables.len(), 1, "{tables:?}");

    // Flip one bit in the table's first data block, which holds the
    // smallest keys.
    flip_bit(&tables[0], 200);

    let server = Server::start(&data, 1, &options);
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    let mut corrupt = 0;
    for i in 0..KEYS {
        match client.get(key(i)) {
            Ok(found) => assert_eq!(found, Some(value(i)), "{}", key(i)),
            Err(Error::Server { code, message }) => {
                assert_eq!(code, ErrorCode::Corruption, "{}: {message}", key(i));
                corrupt += 1;
            }
            Err(e) => panic!("{}: {e}", key(i)),
        }
    }
    // The damaged block's keys, and only a block's worth.
    assert!(
        (1..100).contains(&corrupt),
        "{corrupt} keys reported corrupt"
    );
    assert!(
        matches!(
            client.get(key(0)),
            Err(Error::Server {
                code: ErrorCode::Corruption,
                ..
            })
        ),
        "the first key lives in the first block"
    );
    client.ping().unwrap();
    drop(client);
    assert!(server.stop(), "the server did not stop cleanly");
}

/// The WAL segments of shard 0 that hold records, oldest first (spares are
/// named `spare-*`).
fn wal_segments(data: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(data.join("shard-0/wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(".log") && !name.starts_with("spare-")
        })
        .collect();
    found.sort();
    found
}

fn flip_bit(path: &Path, offset: u64) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x10;
    file.write_all_at(&byte, offset).unwrap();
    file.sync_all().unwrap();
}

/// Puts keys 0..200 one at a time into a fresh 1-shard server at `data`
/// and kills it (kill -9): a 4 KiB WAL group per acknowledged write
/// (`always`, one writer), all still in the WAL. Returns its first segment.
fn two_hundred_writes_then_kill(data: &Path, options: &[&str]) -> PathBuf {
    let server = Server::start(data, 1, options);
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    for i in 0..200 {
        client.put(key(i), value(i)).unwrap();
    }
    drop(client);
    server.kill9();
    wal_segments(data)
        .first()
        .expect("a WAL segment with records")
        .clone()
}

#[test]
fn a_flipped_bit_before_the_wal_tail_refuses_the_start_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let options = ["--prefault-memory", "false"];
    let first = &two_hundred_writes_then_kill(&data, &options);

    // Damage the first group, far from the tail: replay must not take it
    // for a torn write and silently drop the 199 groups after it.
    flip_bit(first, 100);
    let refusal = match Server::try_start(&data, 1, &options) {
        Ok(_) => panic!("the server started on a damaged WAL"),
        Err(stderr) => stderr,
    };
    let last = refusal.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.to_lowercase().contains("corrupt"),
        "{refusal}"
    );
    let name = first.file_name().unwrap().to_string_lossy();
    assert!(last.contains(name.as_ref()), "names the segment: {last}");

    // Nothing was cut: with the bit restored every write is there.
    flip_bit(first, 100);
    let server = Server::start(&data, 1, &options);
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    for i in 0..200 {
        assert_eq!(client.get(key(i)).unwrap(), Some(value(i)), "{}", key(i));
    }
    drop(client);
    assert!(server.stop(), "the server did not stop cleanly");
}

#[test]
fn point_in_time_recovery_starts_on_a_damaged_wal_with_the_writes_before_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let options = ["--prefault-memory", "false"];
    let segment = two_hundred_writes_then_kill(&data, &options);
    flip_bit(&segment, 100 * 4096 + 100);

    // Refused by default, with the way out named.
    let refusal = Server::try_start(&data, 1, &options)
        .err()
        .expect("the server started on a damaged WAL");
    let last = refusal.lines().last().unwrap_or_default();
    assert!(last.contains("--wal-recovery point-in-time"), "{last}");

    let recovering = [
        "--prefault-memory",
        "false",
        "--wal-recovery",
        "point-in-time",
    ];
    let server = Server::start(&data, 1, &recovering);
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    for i in 0..100 {
        assert_eq!(client.get(key(i)).unwrap(), Some(value(i)), "{}", key(i));
    }
    for i in 100..200 {
        assert_eq!(
            client.get(key(i)).unwrap(),
            None,
            "{} was after the damage",
            key(i)
        );
    }
    client.put("after", "recovery").unwrap();
    drop(client);
    server.kill9();

    // The log was sealed at the damage: a strict start takes it as it is.
    let server = Server::start(&data, 1, &options);
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    assert_eq!(
        client.get("after").unwrap().as_deref(),
        Some(&b"recovery"[..])
    );
    assert_eq!(client.get(key(99)).unwrap(), Some(value(99)));
    assert_eq!(client.get(key(100)).unwrap(), None);
    drop(client);
    assert!(server.stop(), "the server did not stop cleanly");
}
