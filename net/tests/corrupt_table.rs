//! A flipped bit in a table file on the real disk, read by the real server
//! (O_DIRECT through io_uring, the block's crc32c): the keys of the damaged
//! block get a `Corruption` error, never the wrong value; every other key
//! reads back; the server keeps serving. `engine/tests/faults.rs` flips bits
//! on the in-memory disk.

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
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&tables[0])
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, 200).unwrap();
    byte[0] ^= 0x10;
    file.write_all_at(&byte, 200).unwrap();
    file.sync_all().unwrap();
    drop(file);

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
