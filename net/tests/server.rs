//! Integration tests against the real `tessera-server` binary with 1 and 2
//! shards: every operation through the SDK, keys on the other shard, the
//! metrics endpoint, restart, and a refused shard-count change.

mod common;

use bytes::Bytes;
use common::Server;
use std::io::{Read, Write};
use tessera_client::{BatchOp, Client};

fn exercise_every_operation(server: &Server, shards: usize) {
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    assert_eq!(client.shard_count(), shards);
    client.ping().unwrap();
    for i in 0..200 {
        client
            .put(format!("key{i:03}"), format!("value{i}"))
            .unwrap();
    }
    // Keys really are spread over the shards.
    let owners: std::collections::BTreeSet<usize> = (0..200)
        .map(|i| client.shard_of(format!("key{i:03}").as_bytes()))
        .collect();
    assert_eq!(owners.len(), shards);
    for i in 0..200 {
        assert_eq!(
            client.get(format!("key{i:03}")).unwrap(),
            Some(Bytes::from(format!("value{i}")))
        );
    }
    assert_eq!(client.get("missing").unwrap(), None);
    client.delete("key007").unwrap();
    assert_eq!(client.get("key007").unwrap(), None);
    // Scan merges every shard in key order, with continuation.
    let page = client.scan("key000", Some("key010"), 5).unwrap();
    let keys: Vec<_> = page.rows.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, vec!["key000", "key001", "key002", "key003", "key004"]);
    let page = client
        .scan(page.next_start.unwrap(), Some("key010"), 5)
        .unwrap();
    let keys: Vec<_> = page.rows.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, vec!["key005", "key006", "key008", "key009"]);
    assert_eq!(page.next_start, None);
    // Batches: atomic on one shard and across shards.
    let a = Bytes::from_static(b"batch-a");
    let same: Vec<Bytes> = (0..100)
        .map(|i| Bytes::from(format!("batch-{i}")))
        .filter(|k| client.shard_of(k) == client.shard_of(&a))
        .take(3)
        .collect();
    let ops = same
        .iter()
        .map(|k| BatchOp::Put {
            key: k.clone(),
            value: Bytes::from_static(b"b"),
        })
        .collect();
    client.batch(ops).unwrap();
    for k in &same {
        assert_eq!(client.get(k.clone()).unwrap().as_deref(), Some(&b"b"[..]));
    }
    if shards > 1 {
        let other = (0..100)
            .map(|i| Bytes::from(format!("other-{i}")))
            .find(|k| client.shard_of(k) != client.shard_of(&a))
            .unwrap();
        // A batch across shards commits atomically through a transaction.
        let ts = client
            .batch(vec![
                BatchOp::Put {
                    key: a.clone(),
                    value: Bytes::from_static(b"both"),
                },
                BatchOp::Put {
                    key: other.clone(),
                    value: Bytes::from_static(b"both"),
                },
            ])
            .unwrap();
        for key in [&a, &other] {
            assert_eq!(
                client.read_at(key.clone(), ts).unwrap().as_deref(),
                Some(&b"both"[..])
            );
            assert_eq!(client.read_at(key.clone(), ts - 1).unwrap(), None);
        }
    }
    // Requests sent to the shared port for keys on another shard are
    // forwarded over the mesh.
    for i in 0..50 {
        let key = Bytes::from(format!("key{i:03}"));
        let want = client.get(key.clone()).unwrap();
        let resp = client
            .entry()
            .call(&tessera_client::Request::Get { key })
            .unwrap();
        assert_eq!(resp, tessera_client::Response::Get(want));
    }
    let stats = client.stats().unwrap();
    let shards_seen: std::collections::BTreeSet<u32> = stats.iter().map(|m| m.shard).collect();
    assert_eq!(shards_seen.len(), shards);
    let puts: f64 = stats
        .iter()
        .filter(|m| m.name == "requests_total{op=\"put\"}")
        .map(|m| m.value)
        .sum();
    assert_eq!(puts, 200.0);
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn one_shard_serves_every_operation() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 1, &[]);
    exercise_every_operation(&server, 1);
    assert!(server.stop(), "clean shutdown exits 0");
}

#[test]
fn two_shards_serve_every_operation_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2, &[]);
    exercise_every_operation(&server, 2);
    let text = http_get(server.metrics.as_deref().unwrap(), "/metrics");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(
        text.contains("tessera_requests_total{shard=\"0\",op=\"put\"}"),
        "{text}"
    );
    assert!(
        text.contains("tessera_requests_total{shard=\"1\",op=\"put\"}"),
        "{text}"
    );
    assert!(
        text.contains("tessera_request_latency_us{shard=\"1\",op=\"get\",quantile=\"0.99\"}"),
        "{text}"
    );
    assert!(server.stop());
}

#[test]
fn each_shards_memory_budget_is_resident_once_ready_unless_turned_off() {
    // Budget per shard: a 64 MiB cache and three 16 MiB memtables.
    let sizes = ["--cache-bytes", "67108864", "--memtable-bytes", "16777216"];
    let budget = (2 * (64u64 + 3 * 16)) << 20;
    // Fresh directories: opening an existing one reads its WAL segments.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("on"), 2, &sizes);
    let prefaulted = common::rss_bytes(server.child.id());
    assert!(server.stop());
    let mut off = sizes.to_vec();
    off.extend(["--prefault-memory", "false"]);
    let server = Server::start(&dir.path().join("off"), 2, &off);
    let lazy = common::rss_bytes(server.child.id());
    assert!(server.stop());
    // What the engine allocates at startup comes out of the prefaulted
    // memory, so the difference is less than the budget.
    assert!(
        prefaulted >= budget && prefaulted >= lazy + budget / 2,
        "prefaulted {prefaulted} bytes resident, {lazy} without, budget {budget}"
    );
}

#[test]
fn data_survives_a_restart_and_a_shard_count_change_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2, &[]);
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    for i in 0..100 {
        client.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    drop(client);
    assert!(server.stop());
    let err = Server::try_start(dir.path(), 3, &[])
        .err()
        .expect("3 shards on a 2-shard directory must be refused");
    assert!(
        err.contains("written with 2 shards; started with 3 (use --shards 2)"),
        "{err}"
    );
    let server = Server::start(dir.path(), 2, &[]);
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    for i in 0..100 {
        assert_eq!(
            client.get(format!("k{i}")).unwrap(),
            Some(Bytes::from(format!("v{i}")))
        );
    }
    assert!(server.stop());
}

/// A shard whose port is taken fails the whole server with a clear error;
/// the other shards, already waiting on their peers, must not hang it.
#[test]
fn a_taken_shard_port_stops_the_server_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let started = std::time::Instant::now();
    let err = Server::try_start(dir.path(), 2, &["--shard-base-port", &port])
        .err()
        .expect("a taken shard port must stop the server");
    assert!(
        err.contains(&format!("shard 0: listening on 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the server took {:?} to give up",
        started.elapsed()
    );
}
