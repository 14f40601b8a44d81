//! Keys written with a TTL, through the real server and the SDK: single
//! puts, batches and cross-shard transactions expire for every read, reads
//! at a timestamp still see them, and the expiry survives kill -9.

mod common;

use common::Server;
use std::time::{Duration, Instant};
use tessera_client::{BatchOp, Client, Txn};

const TTL: Duration = Duration::from_millis(1500);

/// Keys that live on each of the client's shards, first one of `shard` 0.
fn keys_on_both_shards(client: &Client, prefix: &str) -> (String, String) {
    let on = |shard| {
        (0..)
            .map(|i| format!("{prefix}-{i}"))
            .find(|k| client.shard_of(k.as_bytes()) == shard)
            .unwrap()
    };
    (on(0), on(1))
}

#[test]
fn keys_with_a_ttl_expire_for_every_read_and_survive_a_crash_with_their_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2, &[]);
    let mut client = Client::connect(&server.listen).unwrap();
    let (a, b) = keys_on_both_shards(&client, "txn");
    let written = Instant::now();
    let put_ts = client.put_with_ttl("single", "1", TTL).unwrap();
    client
        .batch(vec![
            BatchOp::Put {
                key: "batched".into(),
                value: "2".into(),
                ttl_ms: TTL.as_millis() as u64,
            },
            BatchOp::put("batched-forever", "3"),
        ])
        .unwrap();
    let txn = Txn::new()
        .put_with_ttl(a.clone(), "4", TTL)
        .put_with_ttl(b.clone(), "5", TTL);
    assert!(client.txn(&txn).unwrap().committed);
    client.put("overwritten", "old").unwrap();
    client.put_with_ttl("overwritten", "new", TTL).unwrap();
    client
        .put_with_ttl("long", "lives", Duration::from_secs(3600))
        .unwrap();
    let expiring = ["single", "batched", a.as_str(), b.as_str(), "overwritten"];
    let everything = |client: &mut Client| -> Vec<String> {
        let page = client.scan("", None::<&str>, 100).unwrap();
        assert!(page.next_start.is_none());
        page.rows
            .iter()
            .map(|(k, _)| String::from_utf8(k.to_vec()).unwrap())
            .collect()
    };
    assert_eq!(everything(&mut client).len(), 7);
    // Scans say when each key expires.
    let page = client.scan("", None::<&str>, 100).unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for (i, (key, _)) in page.rows.iter().enumerate() {
        let expires = page.expires_at_ms(i);
        match &key[..] {
            b"batched-forever" => assert_eq!(expires, None),
            b"long" => assert!(expires.unwrap().abs_diff(now_ms + 3_600_000) < 1000),
            _ => assert!(expires.unwrap().abs_diff(now_ms + TTL.as_millis() as u64) < 1000),
        }
    }
    for key in expiring {
        assert!(
            client.get(key.to_string()).unwrap().is_some(),
            "{key} before its TTL"
        );
    }
    // A read says when its key expires.
    let (value, expires) = client.get_with_expiry("single").unwrap().unwrap();
    assert_eq!(&value[..], b"1");
    assert!(expires.unwrap().abs_diff(now_ms + TTL.as_millis() as u64) < 1000);
    let at_write = client
        .read_at_with_expiry("single", put_ts)
        .unwrap()
        .unwrap();
    assert_eq!(at_write.1, expires);
    let forever = client.get_with_expiry("batched-forever").unwrap().unwrap();
    assert_eq!(forever.1, None);
    assert!(
        written.elapsed() < TTL,
        "the machine was too slow to check before the TTL"
    );

    std::thread::sleep(TTL + Duration::from_millis(100));
    for key in expiring {
        assert_eq!(
            client.get(key.to_string()).unwrap(),
            None,
            "{key} after its TTL"
        );
    }
    let reads = client
        .txn(&Txn::new().read(a.clone()).read(b.clone()))
        .unwrap();
    assert!(reads.reads.iter().all(|r| r.value.is_none()));
    let mut left = everything(&mut client);
    left.sort();
    assert_eq!(left, ["batched-forever", "long"]);
    assert_eq!(
        client.read_at("single", put_ts).unwrap().as_deref(),
        Some(&b"1"[..]),
        "a read at the write's timestamp still sees it"
    );

    // kill -9: the WAL replays the TTLs with their timestamps.
    client.put_with_ttl("short", "lived", TTL).unwrap();
    let short_written = Instant::now();
    drop(client);
    server.kill9();
    let server = Server::start(dir.path(), 2, &[]);
    let mut client = Client::connect(&server.listen).unwrap();
    assert_eq!(client.get("long").unwrap().as_deref(), Some(&b"lives"[..]));
    assert_eq!(client.get("single").unwrap(), None);
    std::thread::sleep((TTL + Duration::from_millis(100)).saturating_sub(short_written.elapsed()));
    assert_eq!(client.get("short").unwrap(), None);
    assert_eq!(client.get("long").unwrap().as_deref(), Some(&b"lives"[..]));
    assert!(server.stop());
}

/// A TTL of zero expires at once, like one under a millisecond: sent as 0
/// it meant no expiry at all, the opposite of what was asked.
#[test]
fn a_zero_ttl_expires_at_once_instead_of_never() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 1, &[]);
    let mut client = Client::connect(&server.listen).unwrap();
    client.put_with_ttl("zero", "v", Duration::ZERO).unwrap();
    let txn = Txn::new().put_with_ttl("zero-txn", "v", Duration::ZERO);
    assert!(client.txn(&txn).unwrap().committed);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(client.get("zero").unwrap(), None);
    assert_eq!(client.get("zero-txn").unwrap(), None);
    assert!(server.stop());
}
