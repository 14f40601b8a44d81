//! `--auth-token-file`: with it, a connection is served only after a Hello
//! carrying the token; a wrong token closes the connection. Checked over
//! raw frames on the shared port and a shard's own port, and through the
//! SDK, against the real server.

mod common;

use common::raw::{assert_error, raw, read_response, send_frame};
use common::Server;
use std::os::unix::fs::PermissionsExt;
use tessera_client::{Client, ConnectOptions, Error, ErrorCode, Request, Response, Token};

const TOKEN: &str = "s3cret-token-of-32-bytes-exactly";

fn hello(token: Option<&str>) -> Request {
    Request::Hello {
        protocol_version: tessera_client::PROTOCOL_VERSION,
        client_name: "auth-test".into(),
        token: token.map(|t| Token(t.into())),
    }
}

fn token_file(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("token");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_str().unwrap().to_string()
}

fn auth_failures(client: &mut Client) -> f64 {
    client
        .stats()
        .unwrap()
        .iter()
        .filter(|m| m.name == "auth_failures_total")
        .map(|m| m.value)
        .sum()
}

#[test]
fn only_a_hello_with_the_token_opens_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let file = token_file(dir.path(), &format!("{TOKEN}\n"));
    let server = Server::start(&dir.path().join("data"), 2, &["--auth-token-file", &file]);

    // Before a Hello: refused, and the connection stays open for one.
    let mut s = raw(&server.listen);
    let get = Request::Get {
        key: bytes::Bytes::from_static(b"k"),
    };
    send_frame(&mut s, &get.encode(1));
    assert_error(read_response(&mut s), 1, ErrorCode::Unauthenticated);
    send_frame(&mut s, &Request::Ping.encode(2));
    assert_error(read_response(&mut s), 2, ErrorCode::Unauthenticated);
    // A wrong token: refused, then closed.
    send_frame(
        &mut s,
        &hello(Some("s3cret-token-of-32-bytes-exactlY")).encode(3),
    );
    assert_error(read_response(&mut s), 3, ErrorCode::Unauthenticated);
    assert_eq!(read_response(&mut s), None, "closed after a wrong token");

    // A shard's own port asks the same; a Hello without a token is refused.
    for address in &server.shard_addresses {
        let mut s = raw(address);
        send_frame(&mut s, &hello(None).encode(4));
        assert_error(read_response(&mut s), 4, ErrorCode::Unauthenticated);
        assert_eq!(read_response(&mut s), None);
    }

    // The right token (the file's trailing newline is not part of it).
    let mut s = raw(&server.listen);
    send_frame(&mut s, &hello(Some(TOKEN)).encode(5));
    match read_response(&mut s) {
        Some((5, Response::Hello { shards: 2, .. })) => {}
        other => panic!("expected a Hello answer, got {other:?}"),
    }
    send_frame(
        &mut s,
        &Request::Put {
            key: bytes::Bytes::from_static(b"k"),
            value: bytes::Bytes::from_static(b"v"),
            ttl_ms: 0,
        }
        .encode(6),
    );
    assert!(matches!(
        read_response(&mut s),
        Some((6, Response::Written { .. }))
    ));
    send_frame(&mut s, &get.encode(7));
    assert_eq!(
        read_response(&mut s),
        Some((7, Response::value(Some(bytes::Bytes::from_static(b"v")))))
    );

    // The SDK: without the token it cannot connect; with it, every shard
    // serves it.
    match Client::connect(&server.listen) {
        Err(Error::Server {
            code: ErrorCode::Unauthenticated,
            ..
        }) => {}
        Err(other) => panic!("expected Unauthenticated, got {other}"),
        Ok(_) => panic!("connected without the token"),
    }
    let options = ConnectOptions {
        token: Some(Token(TOKEN.into())),
        ..ConnectOptions::default()
    };
    let mut client = Client::connect_with(&server.listen, &options).unwrap();
    let keys: Vec<String> = (0..64).map(|i| format!("key-{i}")).collect();
    for key in &keys {
        client.put(key.clone(), format!("value of {key}")).unwrap();
    }
    for shard in 0..2 {
        assert!(
            keys.iter().any(|k| client.shard_of(k.as_bytes()) == shard),
            "64 keys cover both shards"
        );
    }
    for key in &keys {
        assert_eq!(
            client.get(key.clone()).unwrap().as_deref(),
            Some(format!("value of {key}").as_bytes())
        );
    }
    // The wrong token, the two token-less Hellos and the SDK's attempt.
    assert_eq!(auth_failures(&mut client), 4.0);
    assert!(server.stop());
}

#[test]
fn a_token_file_that_is_missing_short_or_not_one_line_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let missing = dir.path().join("nothing-here");
    let err = Server::try_start(&data, 1, &["--auth-token-file", missing.to_str().unwrap()])
        .err()
        .expect("a missing token file stops the start");
    assert!(err.contains("reading --auth-token-file"), "{err}");
    let short = token_file(dir.path(), "short\n");
    let err = Server::try_start(&data, 1, &["--auth-token-file", &short])
        .err()
        .expect("a short token stops the start");
    assert!(err.contains("holds 5 bytes"), "{err}");
    let two_lines = token_file(dir.path(), &format!("{TOKEN}\n{TOKEN}\n"));
    let err = Server::try_start(&data, 1, &["--auth-token-file", &two_lines])
        .err()
        .expect("a token of two lines stops the start");
    assert!(err.contains("more than one line"), "{err}");
}

#[test]
fn sighup_reloads_the_token_for_new_connections_and_keeps_a_bad_one_out() {
    let dir = tempfile::tempdir().unwrap();
    let file = token_file(dir.path(), TOKEN);
    let server = Server::start(&dir.path().join("data"), 2, &["--auth-token-file", &file]);
    let with = |token: &str| ConnectOptions {
        token: Some(Token(token.into())),
        ..ConnectOptions::default()
    };
    let mut before = Client::connect_with(&server.listen, &with(TOKEN)).unwrap();
    before.put("k", "v").unwrap();
    let sighup = || {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) };
    };

    let rotated = "the-next-token-0123456789";
    std::fs::write(&file, rotated).unwrap();
    sighup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Client::connect_with(&server.listen, &with(rotated)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the new token was never taken"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        Client::connect_with(&server.listen, &with(TOKEN)).is_err(),
        "the old token still opens connections"
    );
    // A connection opened before keeps working.
    assert_eq!(before.get("k").unwrap().as_deref(), Some(&b"v"[..]));

    // A reload that fails its checks changes nothing.
    std::fs::write(&file, "short").unwrap();
    sighup();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(Client::connect_with(&server.listen, &with(rotated)).is_ok());
    assert!(server.stop());
}
