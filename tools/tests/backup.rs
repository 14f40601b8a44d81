//! `tessera backup` and `tessera restore` against servers in this process
//! (two shards): every key and value comes back, a backup taken while
//! cross-shard transfers commit is one moment, and a damaged file restores
//! nothing.

mod common;

use bytes::Bytes;
use common::{tessera, InProcessServer};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tessera_client::{Client, Error, ErrorCode, Txn};
use tessera_tools::backup::{self, BackupRow, Reader};

/// Every live row, by scanning the newest state.
fn all_rows(client: &mut Client) -> Vec<(Bytes, Bytes)> {
    let mut rows = Vec::new();
    let mut start = Bytes::new();
    loop {
        let page = client.scan(start, None::<Bytes>, 1000).unwrap();
        rows.extend(page.rows);
        match page.next_start {
            Some(next) => start = next,
            None => return rows,
        }
    }
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

#[test]
fn a_restore_brings_back_every_key_and_value() {
    let source = InProcessServer::start();
    let mut client = Client::connect(source.addr).unwrap();
    for i in 0..3000u32 {
        let key = format!("k{i:05}");
        let value = match i % 100 {
            0 => Bytes::from(vec![(i % 251) as u8; 200 << 10]),
            1 => Bytes::new(),
            _ => Bytes::from(format!("value {i}")),
        };
        client.put(key, value).unwrap();
    }
    // Binary keys, an overwrite and deletes: only the newest live state
    // is backed up.
    client.put(&b"\x00\xff bin"[..], &b"\x00\x01"[..]).unwrap();
    client.put("k00002", "overwritten").unwrap();
    for i in (3..3000).step_by(7) {
        client.delete(format!("k{i:05}")).unwrap();
    }
    let want = all_rows(&mut client);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("all.tbk");
    let file_arg = file.to_str().unwrap();

    let (ok, out, err) = tessera(source.addr, &["--json", "backup", file_arg]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["rows"], want.len());
    assert!(
        !dir.path().join("all.tmp").exists(),
        "the temporary file is renamed"
    );

    let target = InProcessServer::start();
    let (ok, out, err) = tessera(target.addr, &["restore", file_arg]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!("restore: {} rows", want.len())),
        "{out}"
    );
    let mut restored = Client::connect(target.addr).unwrap();
    assert!(all_rows(&mut restored) == want, "the restored rows differ");

    // A second restore would merge into what is there: refused unless
    // asked for.
    let (ok, _, err) = tessera(target.addr, &["restore", file_arg]);
    assert!(!ok && err.contains("already holds data"), "{err}");
    restored.put("k00002", "changed since").unwrap();
    let (ok, _, err) = tessera(target.addr, &["restore", "--merge", file_arg]);
    assert!(ok, "{err}");
    assert_eq!(
        restored.get("k00002").unwrap().as_deref(),
        Some(&b"overwritten"[..])
    );
}

/// A restore sends batches that fit the server's limits, from its hello:
/// into 64 KiB frames, and at most 20 operations. It used to send ~512 KiB
/// batches of up to 256 puts whatever the server.
#[test]
fn a_restore_fits_its_batches_to_the_servers_limits() {
    let source = InProcessServer::start();
    let mut client = Client::connect(source.addr).unwrap();
    for i in 0..300u32 {
        client
            .put(format!("k{i:03}"), vec![(i % 251) as u8; 20 << 10])
            .unwrap();
        client.put(format!("small{i:03}"), "v").unwrap();
    }
    let want = all_rows(&mut client);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("all.tbk");
    let file_arg = file.to_str().unwrap();
    let (ok, _, err) = tessera(source.addr, &["backup", file_arg]);
    assert!(ok, "{err}");
    let target = InProcessServer::start_with(|flags| {
        flags.frame_bytes_max = Some(64 << 10);
        flags.value_bytes_max = Some(32 << 10);
        flags.batch_ops_max = Some(20);
    });
    let (ok, out, err) = tessera(target.addr, &["restore", file_arg]);
    assert!(ok, "{err}");
    assert!(out.starts_with("restore: 600 rows"), "{out}");
    let mut restored = Client::connect(target.addr).unwrap();
    assert!(all_rows(&mut restored) == want, "the restored rows differ");
}

/// Moves money between accounts on both shards until `stop`, counting the
/// transfers that commit.
fn transfers(
    addr: std::net::SocketAddr,
    accounts: u32,
    seed: u32,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
) {
    let mut client = Client::connect(addr).unwrap();
    let mut x = seed;
    while !stop.load(Ordering::Relaxed) {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let (a, b) = ((x >> 8) % accounts, (x >> 20) % accounts);
        if a == b {
            continue;
        }
        let (a, b) = (format!("acct{a:03}"), format!("acct{b:03}"));
        let read = match client.txn(&Txn::new().read(a.clone()).read(b.clone())) {
            Ok(r) => r,
            Err(Error::Server {
                code: ErrorCode::Conflict,
                ..
            }) => continue,
            Err(e) => panic!("{e}"),
        };
        let balance = |i: usize| -> i64 {
            let v = read.reads[i]
                .value
                .as_deref()
                .expect("every account exists");
            std::str::from_utf8(v).unwrap().parse().unwrap()
        };
        let amount = 1 + (x % 7) as i64;
        let txn = Txn::new()
            .version_is(a.clone(), read.reads[0].version)
            .version_is(b.clone(), read.reads[1].version)
            .put(a, (balance(0) - amount).to_string())
            .put(b, (balance(1) + amount).to_string());
        match client.txn(&txn) {
            Ok(outcome) if outcome.committed => {
                committed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_)
            | Err(Error::Server {
                code: ErrorCode::Conflict,
                ..
            }) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

fn balances_in(file: &Path) -> (u64, i64) {
    let mut reader = Reader::open(file).unwrap();
    let (mut rows, mut total) = (0, 0i64);
    while let Some(BackupRow { value, .. }) = reader.next_row().unwrap() {
        rows += 1;
        total += std::str::from_utf8(&value).unwrap().parse::<i64>().unwrap();
    }
    (rows, total)
}

#[test]
fn a_backup_taken_while_transfers_commit_is_one_moment() {
    const ACCOUNTS: u32 = 60;
    let server = InProcessServer::start();
    let mut client = Client::connect(server.addr).unwrap();
    for i in 0..ACCOUNTS {
        client.put(format!("acct{i:03}"), "1000").unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let movers: Vec<_> = (0..2)
        .map(|seed| {
            let (stop, committed) = (stop.clone(), committed.clone());
            std::thread::spawn(move || transfers(server.addr, ACCOUNTS, seed, stop, committed))
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut during = 0;
    for round in 0..5 {
        let file = dir.path().join(format!("bank{round}.tbk"));
        let before = committed.load(Ordering::Relaxed);
        // Two rows a page: 30 round trips while transfers commit.
        backup::backup(&mut client, &file, 2, &mut |_, _| {}).unwrap();
        during += committed.load(Ordering::Relaxed) - before;
        let (rows, total) = balances_in(&file);
        assert_eq!(rows, ACCOUNTS as u64);
        assert_eq!(
            total,
            1000 * ACCOUNTS as i64,
            "backup {round} is not one moment"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for m in movers {
        m.join().unwrap();
    }
    assert!(
        during >= 5,
        "only {during} transfers committed during the backups"
    );
}

#[test]
fn a_damaged_or_cut_short_backup_restores_nothing() {
    let source = InProcessServer::start();
    let mut client = Client::connect(source.addr).unwrap();
    for i in 0..500 {
        client
            .put(format!("key{i:03}"), format!("value {i}"))
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.tbk");
    backup::backup(&mut client, &good, backup::PAGE_ROWS, &mut |_, _| {}).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let target = InProcessServer::start();
    let mut restored = Client::connect(target.addr).unwrap();

    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x10;
    let mut extended = bytes.clone();
    extended.push(0);
    let cases = [
        ("flipped", flipped, "fails its checksum"),
        ("cut", bytes[..bytes.len() - 10].to_vec(), "cut short"),
        (
            "no-trailer",
            bytes[..bytes.len() - 16].to_vec(),
            "before its trailer",
        ),
        ("extended", extended, "bytes after the trailer"),
        ("empty", Vec::new(), "cut short"),
    ];
    // `verify` needs no server: nothing listens on this address.
    let nobody = "127.0.0.1:1".parse().unwrap();
    let (ok, out, err) = tessera(nobody, &["verify", good.to_str().unwrap()]);
    assert!(ok && out.starts_with("verify: 500 rows"), "{out}{err}");
    for (name, content, why) in cases {
        let file = dir.path().join(format!("{name}.tbk"));
        std::fs::write(&file, content).unwrap();
        let (ok, _, err) = tessera(nobody, &["verify", file.to_str().unwrap()]);
        assert!(!ok && err.contains(why), "verify {name}: {err}");
        let (ok, _, err) = tessera(target.addr, &["restore", file.to_str().unwrap()]);
        assert!(!ok, "{name} was restored");
        assert!(
            err.contains("is not a whole Tessera backup") && err.contains(why),
            "{name}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(all_rows(&mut restored).is_empty(), "{name} wrote rows");
    }
    let (ok, _, err) = tessera(target.addr, &["restore", good.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(all_rows(&mut restored).len(), 500);
}

/// Fills a server with `rows` small keys.
fn fill(client: &mut Client, rows: usize) {
    for chunk in (0..rows).collect::<Vec<_>>().chunks(500) {
        let ops = chunk
            .iter()
            .map(|i| tessera_client::BatchOp::put(format!("key{i:06}"), "v"))
            .collect();
        client.batch(ops).unwrap();
    }
}

/// Its snapshot would have left the window long before the end: each page
/// read at it holds it for another window.
#[test]
fn a_backup_longer_than_the_retention_window_completes() {
    const RETENTION_MS: u64 = 400;
    let server = InProcessServer::start_with(|flags| flags.retention_ms = Some(RETENTION_MS));
    let mut client = Client::connect(server.addr).unwrap();
    fill(&mut client, 10_000);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("slow.tbk");
    // One row a page: 10,000 round trips, ~1 s in a debug build.
    // Told after each page how far it is.
    let mut done = (0, 0);
    let summary = backup::backup(&mut client, &file, 1, &mut |rows, bytes| {
        assert!(
            rows >= done.0 && bytes >= done.1,
            "{done:?} then {rows} rows, {bytes} bytes"
        );
        done = (rows, bytes);
    })
    .unwrap();
    assert_eq!(summary.rows, 10_000);
    assert_eq!(done, (summary.rows, summary.bytes));
    assert!(
        summary.seconds * 1000.0 > RETENTION_MS as f64,
        "the backup took {} s, too short to outlive the window",
        summary.seconds
    );
    assert_eq!(backup::verify(&file).unwrap().rows, 10_000);
}

#[test]
fn a_backup_that_fails_leaves_no_file() {
    let server = InProcessServer::start();
    let mut client = Client::connect(server.addr).unwrap();
    fill(&mut client, 20_000);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cut.tbk");
    let backing_up = {
        let file = file.clone();
        std::thread::spawn(move || backup::backup(&mut client, &file, 1, &mut |_, _| {}))
    };
    // The server stops under it, a few thousand pages in.
    std::thread::sleep(std::time::Duration::from_millis(200));
    drop(server);
    let err = backing_up.join().unwrap().unwrap_err();
    assert!(!err.to_string().is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "files left after {err}"
    );
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn keys_with_a_ttl_keep_their_expiry_through_a_backup() {
    let source = InProcessServer::start();
    let mut client = Client::connect(source.addr).unwrap();
    client.put("forever", "1").unwrap();
    let hour = std::time::Duration::from_secs(3600);
    client.put_with_ttl("hour", "2", hour).unwrap();
    client
        .put_with_ttl("brief", "3", std::time::Duration::from_millis(1500))
        .unwrap();
    let written = now_ms();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ttl.tbk");
    let file_arg = file.to_str().unwrap();
    let (ok, _, err) = tessera(source.addr, &["backup", file_arg]);
    assert!(ok, "{err}");

    let mut reader = Reader::open(&file).unwrap();
    let mut rows = Vec::new();
    while let Some(row) = reader.next_row().unwrap() {
        rows.push((
            String::from_utf8(row.key.to_vec()).unwrap(),
            row.expires_at_ms,
        ));
    }
    let near = |at: Option<u64>, want: u64| at.is_some_and(|at| at.abs_diff(want) < 1000);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].0, "brief");
    assert!(near(rows[0].1, written + 1500), "{rows:?}");
    assert_eq!(rows[1], ("forever".into(), None));
    assert!(near(rows[2].1, written + 3_600_000), "{rows:?}");

    // Restored after "brief" expired: it is not written, "hour" keeps its
    // expiry and "forever" has none.
    std::thread::sleep(std::time::Duration::from_millis(1600));
    let target = InProcessServer::start();
    let (ok, out, err) = tessera(target.addr, &["--json", "restore", file_arg]);
    assert!(ok, "{err}");
    assert_eq!(
        (json(&out)["rows"].as_u64(), json(&out)["expired"].as_u64()),
        (Some(2), Some(1))
    );
    let mut restored = Client::connect(target.addr).unwrap();
    let page = restored.scan("", None::<&str>, 10).unwrap();
    let keys: Vec<&[u8]> = page.rows.iter().map(|(k, _)| &k[..]).collect();
    assert_eq!(keys, [&b"forever"[..], b"hour"]);
    assert_eq!(page.expires_at_ms(0), None);
    assert!(near(page.expires_at_ms(1), written + 3_600_000), "{page:?}");
}

#[test]
fn a_backup_of_the_first_format_still_restores() {
    // BACKUP01: a header, records without an expiry, a trailer.
    let mut file = Vec::new();
    let checked = |file: &mut Vec<u8>, bytes: &[u8]| {
        file.extend_from_slice(bytes);
        file.extend_from_slice(&crc32c::crc32c(bytes).to_le_bytes());
    };
    let mut header = b"TESSERA\0BACKUP01".to_vec();
    header.extend_from_slice(&42u64.to_le_bytes());
    checked(&mut file, &header);
    let mut record = Vec::new();
    record.extend_from_slice(&3u32.to_le_bytes());
    record.extend_from_slice(&5u32.to_le_bytes());
    record.extend_from_slice(b"oldvalue");
    checked(&mut file, &record);
    let mut trailer = u32::MAX.to_le_bytes().to_vec();
    trailer.extend_from_slice(&1u64.to_le_bytes());
    checked(&mut file, &trailer);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.tbk");
    std::fs::write(&path, file).unwrap();

    let summary = backup::verify(&path).unwrap();
    assert_eq!((summary.rows, summary.ts), (1, 42));
    let target = InProcessServer::start();
    let (ok, _, err) = tessera(target.addr, &["restore", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    let mut client = Client::connect(target.addr).unwrap();
    assert_eq!(client.get("old").unwrap().as_deref(), Some(&b"value"[..]));
}
