//! The Rust SDK across a server restart (kill -9, then the same ports and
//! data): reads retry on a fresh connection, and a connection that sat
//! idle through the restart is reopened, with its hello and token, before
//! the next request.

mod common;

use common::Server;
use std::net::TcpListener;
use std::time::Duration;
use tessera_client::{Client, ConnectOptions, Token};

/// A free port followed by `n` free ports.
fn free_ports(n: u16) -> (u16, u16) {
    for _ in 0..100 {
        let listen = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listen.local_addr().unwrap().port();
        if port > u16::MAX - n - 1 {
            continue;
        }
        let base = port + 1;
        let taken: Vec<_> = (base..base + n)
            .map(|p| TcpListener::bind(("127.0.0.1", p)))
            .collect();
        if taken.iter().all(Result::is_ok) {
            return (port, base);
        }
    }
    panic!("no run of free ports");
}

#[test]
fn a_client_carries_on_across_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "reconnect-test-token-0123").unwrap();
    let (port, base) = free_ports(2);
    let (listen, base) = (format!("127.0.0.1:{port}"), base.to_string());
    let args = [
        "--listen",
        &listen,
        "--shard-base-port",
        &base,
        "--auth-token-file",
        token.to_str().unwrap(),
    ];
    let data = dir.path().join("data");
    let server = Server::start(&data, 2, &args);
    let options = ConnectOptions {
        token: Some(Token("reconnect-test-token-0123".into())),
        ..ConnectOptions::default()
    };
    let mut client = Client::connect_with(&server.listen, &options).unwrap();
    let keys: Vec<String> = (0..20).map(|i| format!("key-{i}")).collect();
    for key in &keys {
        client.put(key.clone(), "before").unwrap();
    }

    server.kill9();
    let server = Server::start(&data, 2, &args);
    // Reads go out again on fresh connections, on both shards.
    for key in &keys {
        assert_eq!(
            client.get(key.clone()).unwrap().as_deref(),
            Some(&b"before"[..])
        );
    }
    client.ping().unwrap();

    server.kill9();
    let server = Server::start(&data, 2, &args);
    // Idle through the restart: every connection is found closed and
    // reopened before a write goes out.
    std::thread::sleep(Duration::from_millis(1100));
    for key in &keys {
        client.put(key.clone(), "after").unwrap();
    }
    assert!(!client.stats().unwrap().is_empty());
    for key in &keys {
        assert_eq!(
            client.get(key.clone()).unwrap().as_deref(),
            Some(&b"after"[..])
        );
    }
    assert!(server.stop());
}
