//! `tessera-bench` against a two-shard server in this process: a shard-aware
//! run sends each key to its owner (nothing is forwarded), and
//! `--no-shard-routing` sends everything to the target address, whose shard
//! forwards the keys it does not own over the mesh. And against a server
//! that requires a token, `--token-file` gets every socket served, over
//! TLS too (`--tls-ca`).

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
    let out = bench_command(addr, workload, extra).output().unwrap();
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

fn bench_command(addr: SocketAddr, workload: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera-bench"));
    command
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
        .env_remove("TESSERA_TOKEN");
    command
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

#[test]
fn a_token_file_gets_every_socket_served_by_a_server_that_requires_one() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "bench-test-token-0123456789\n").unwrap();
    let mut flags = Flags::local(dir.path().join("data"), 2);
    flags.auth_token_file = Some(token.clone());
    let server = Embedded::start(Config::resolve(flags).unwrap()).unwrap();
    let addr = server.ready.listen;

    let with_token = ["--token-file", token.to_str().unwrap()];
    let (ops, errors) = bench(addr, "ycsb-a", &with_token);
    assert_eq!((ops, errors), (REQUESTS, serde_json::json!({})));
    let (ops, errors) = bench(
        addr,
        "get",
        &[&with_token[..], &["--no-shard-routing"]].concat(),
    );
    assert_eq!((ops, errors), (REQUESTS, serde_json::json!({})));

    let refused = bench_command(addr, "get", &[]).output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
    server.stop().unwrap();
}

#[test]
fn tls_and_a_token_carry_a_pipelined_run() {
    let dir = tempfile::tempdir().unwrap();
    let certs =
        tessera_tools::cert::create(&dir.path().join("certs"), &["127.0.0.1".into()], 1).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "bench-test-token-0123456789").unwrap();
    let mut flags = Flags::local(dir.path().join("data"), 2);
    flags.auth_token_file = Some(token.clone());
    flags.tls_cert = Some(certs.cert.clone());
    flags.tls_key = Some(certs.key.clone());
    let server = Embedded::start(Config::resolve(flags).unwrap()).unwrap();
    let addr = server.ready.listen;
    let args = [
        "--token-file",
        token.to_str().unwrap(),
        "--tls-ca",
        certs.ca.to_str().unwrap(),
        "--pipeline",
        "16",
        "--value-size",
        "100-20000",
    ];
    let (ops, errors) = bench(addr, "ycsb-a", &args);
    assert_eq!((ops, errors), (REQUESTS, serde_json::json!({})));
    // --ttl-ms: the writes expire.
    let (ops, errors) = bench(addr, "set", &[&args[..], &["--ttl-ms", "600000"]].concat());
    assert_eq!((ops, errors), (REQUESTS, serde_json::json!({})));
    let options = tessera_client::ConnectOptions {
        token: Some(tessera_client::Token("bench-test-token-0123456789".into())),
        tls: Some(tessera_client::TlsOptions::from_ca_file(&certs.ca).unwrap()),
        ..Default::default()
    };
    let mut client = Client::connect_with(addr, &options).unwrap();
    let page = client.scan("", None::<&str>, 1000).unwrap();
    let expiring = (0..page.rows.len())
        .filter(|&i| page.expires_at_ms(i).is_some())
        .count();
    assert!(
        expiring > 100,
        "{expiring} of {} keys expire",
        page.rows.len()
    );
    // Without the CA the handshake fails.
    let refused = bench_command(addr, "get", &args[..2]).output().unwrap();
    assert!(!refused.status.success());
    server.stop().unwrap();
}
