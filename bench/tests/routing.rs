//! `tessera-bench` against a two-shard server in this process: a shard-aware
//! run sends each key to its owner (nothing is forwarded), and
//! `--no-shard-routing` sends everything to the target address, whose shard
//! forwards the keys it does not own over the mesh.

use std::net::SocketAddr;
use std::process::Command;
use tessera_client::Client;
use tessera_net::config::{Config, Flags};
use tessera_net::runtime::Embedded;

const REQUESTS: u64 = 2000;

/// Requests the shards forwarded to each other so far. A stats request
/// crosses the mesh itself, once to the other shard, and that crossing
/// shows in its own figures or in the next request's (whichever shard
/// took the connection): between two calls, up to two crossings are the
/// calls' own.
fn forwarded(addr: SocketAddr) -> f64 {
    let stats = Client::connect(addr).unwrap().stats().unwrap();
    stats
        .iter()
        .filter(|m| m.name == "forwarded_total")
        .map(|m| m.value)
        .sum()
}

/// Runs `REQUESTS` of `workload`; returns how many the report counts and
/// its errors.
fn bench(addr: SocketAddr, workload: &str, extra: &[&str]) -> (u64, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera-bench"))
        .args(["--target", &format!("tessera://{addr}")])
        .args([
            "--workload",
            workload,
            "--keys",
            "1000",
            "--connections",
            "4",
        ])
        .args(["--threads", "1", "--requests", &REQUESTS.to_string()])
        .args(["--warmup", "0", "--json", "--quiet"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ops = report["operations"]
        .as_object()
        .unwrap()
        .values()
        .map(|o| o["ops"].as_u64().unwrap())
        .sum();
    (ops, report["errors"].clone())
}

#[test]
fn no_shard_routing_sends_every_key_to_the_target_shard() {
    let dir = tempfile::tempdir().unwrap();
    let flags = Flags::local(dir.path().to_path_buf(), 2);
    let server = Embedded::start(Config::resolve(flags).unwrap()).unwrap();
    let addr = server.ready.listen;

    let before = forwarded(addr);
    let (ops, errors) = bench(addr, "set", &[]);
    assert_eq!((ops, errors), (REQUESTS, serde_json::json!({})));
    let routed = forwarded(addr) - before;
    assert!(
        routed <= 2.0,
        "a shard-aware client sends keys to their owners, yet {routed} were forwarded"
    );

    let (ops, errors) = bench(addr, "set", &["--no-shard-routing"]);
    assert_eq!((ops, errors), (REQUESTS, serde_json::json!({})));
    let unrouted = forwarded(addr) - before - routed;
    // About half the keys live on the other shard.
    assert!(
        unrouted > REQUESTS as f64 * 0.3 && unrouted < REQUESTS as f64 * 0.7,
        "forwarded {unrouted} of {REQUESTS}"
    );
    // Pings touch no data and are not forwarded either.
    let before = forwarded(addr);
    let (ops, errors) = bench(addr, "ping", &[]);
    assert_eq!((ops, errors), (REQUESTS, serde_json::json!({})));
    let pinged = forwarded(addr) - before;
    assert!(pinged <= 2.0, "{pinged} pings were forwarded");
    server.stop().unwrap();
}
