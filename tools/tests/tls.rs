//! TLS end to end: `tessera cert` makes the certificates, a server in this
//! process serves only TLS on every client port, and the SDK and the CLI
//! talk to it (and with a token). Plain clients, an unknown CA and a wrong
//! server name are refused.

mod common;

use common::{tessera, tessera_env, InProcessServer};
use std::time::Duration;
use tessera_client::{BatchOp, Client, ConnectOptions, Error, Request, Response, TlsOptions};
use tessera_net::config::{Config, Flags};
use tessera_tools::cert;

const TOKEN: &str = "tls-test-token-0123456789";

struct Setup {
    server: InProcessServer,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn tls_server() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let files = cert::create(&dir.path().join("certs"), &["127.0.0.1".into()], 1).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let server = InProcessServer::start_with(|f| {
        f.tls_cert = Some(files.cert.clone());
        f.tls_key = Some(files.key.clone());
        f.auth_token_file = Some(token.clone());
    });
    Setup {
        server,
        ca: files.ca,
        _dir: dir,
    }
}

fn options(ca: &std::path::Path) -> ConnectOptions {
    ConnectOptions {
        tls: Some(TlsOptions::from_ca_file(ca).unwrap()),
        token: Some(tessera_client::Token(TOKEN.into())),
        ..ConnectOptions::default()
    }
}

#[test]
fn the_sdk_speaks_tls_to_every_shard_with_large_and_pipelined_traffic() {
    let setup = tls_server();
    let mut client = Client::connect_with(setup.server.addr, &options(&setup.ca)).unwrap();
    assert_eq!(client.shard_count(), 2);
    // Durable writes (answered from the connections' writer tasks) and
    // reads (answered inline), on both shards.
    for i in 0..200 {
        client.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    for i in 0..200 {
        let want = format!("v{i}");
        assert_eq!(
            client.get(format!("k{i}")).unwrap().as_deref(),
            Some(want.as_bytes())
        );
    }
    // Values far larger than a TLS record, each way.
    let big: Vec<u8> = (0..(900 << 10)).map(|i| (i % 251) as u8).collect();
    client.put("big", big.clone()).unwrap();
    assert_eq!(client.get("big").unwrap().as_deref(), Some(&big[..]));
    // 2,000 requests in flight on one connection: responses span many
    // sends, some of them partial.
    let conn = client.connection_for(b"k1");
    let ids: Vec<u64> = (0..2000)
        .map(|_| conn.send(&Request::Get { key: "k1".into() }).unwrap())
        .collect();
    for id in ids {
        assert_eq!(conn.wait(id).unwrap(), Response::value(Some("v1".into())));
    }
    // Responses far beyond the socket's buffer while the client is not
    // reading: the server's sends fill it, and what TLS holds back must
    // still go out once the client reads.
    let conn = client.connection_for(b"big");
    let ids: Vec<u64> = (0..40)
        .map(|_| conn.send(&Request::Get { key: "big".into() }).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    for id in ids {
        assert_eq!(
            conn.wait(id).unwrap(),
            Response::value(Some(big.clone().into()))
        );
    }
    // A batch across shards commits through a transaction.
    client
        .batch(vec![BatchOp::put("x", "1"), BatchOp::put("y", "2")])
        .unwrap();
    let page = client.scan("", None::<&str>, 1000).unwrap();
    assert_eq!(page.rows.len(), 203);
}

#[test]
fn plain_clients_unknown_cas_and_wrong_names_are_refused() {
    let setup = tls_server();
    let addr = setup.server.addr;
    // Plain TCP: the server closes the connection.
    let plain = ConnectOptions {
        timeout: Duration::from_secs(5),
        ..ConnectOptions::default()
    };
    match Client::connect_with(addr, &plain) {
        Err(Error::Io(e)) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        ),
        Err(other) => panic!("expected the connection closed, got {other}"),
        Ok(_) => panic!("a plain client was served"),
    }
    // Another CA's certificates are not trusted.
    let other = tempfile::tempdir().unwrap();
    let other = cert::create(other.path(), &["127.0.0.1".into()], 1).unwrap();
    let err = Client::connect_with(addr, &options(&other.ca))
        .err()
        .expect("an unknown CA");
    assert!(
        err.to_string()
            .contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    // The certificate names 127.0.0.1, not this name.
    let mut named = options(&setup.ca);
    named.tls.as_mut().unwrap().server_name = Some("db.example.com".into());
    let err = Client::connect_with(addr, &named)
        .err()
        .expect("a wrong name");
    assert!(
        err.to_string()
            .contains("not valid for name \"db.example.com\""),
        "{err}"
    );
    // And the right one still works.
    assert!(Client::connect_with(addr, &options(&setup.ca)).is_ok());
}

#[test]
fn the_cli_speaks_tls_given_the_ca() {
    let setup = tls_server();
    let a = setup.server.addr;
    let ca = setup.ca.to_str().unwrap();
    let token = [("TESSERA_TOKEN", TOKEN)];
    let (ok, out, err) = tessera_env(a, &["--tls-ca", ca, "put", "k", "v"], &token);
    assert!(ok && out.starts_with("OK"), "{err}");
    let by_env = [("TESSERA_TOKEN", TOKEN), ("TESSERA_TLS_CA", ca)];
    assert_eq!(tessera_env(a, &["get", "k"], &by_env).1, "v\n");
    let (ok, _, err) = tessera(a, &["get", "k"]);
    assert!(!ok && err.contains("give --tls-ca"), "{err}");
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn cert_files_are_new_and_a_server_refuses_a_half_or_bad_tls_setup() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let (ok, out, err) = tessera(
        "127.0.0.1:1".parse().unwrap(),
        &["cert", certs.to_str().unwrap(), "--host", "db.internal"],
    );
    assert!(
        ok && out.contains("valid 365 days for db.internal"),
        "{err}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(certs.join("server.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let (ok, _, err) = tessera(
        "127.0.0.1:1".parse().unwrap(),
        &["cert", certs.to_str().unwrap()],
    );
    assert!(!ok && err.contains("already exists"), "{err}");

    let resolve = |cert: Option<&str>, key: Option<&str>| {
        let mut flags = Flags::local(dir.path().join("data"), 1);
        flags.tls_cert = cert.map(|c| certs.join(c));
        flags.tls_key = key.map(|k| certs.join(k));
        Config::resolve(flags)
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    };
    assert!(resolve(Some("server.pem"), Some("server.key")).is_ok());
    let half = resolve(Some("server.pem"), None).unwrap_err();
    assert!(half.contains("go together"), "{half}");
    let swapped = resolve(Some("server.key"), Some("server.pem")).unwrap_err();
    assert!(swapped.contains("holds no certificate"), "{swapped}");
    let missing = resolve(Some("nothing.pem"), Some("server.key")).unwrap_err();
    assert!(missing.contains("reading --tls-cert"), "{missing}");
}

#[test]
fn a_reload_serves_a_new_certificate_to_new_connections() {
    let setup = tls_server();
    let addr = setup.server.addr;
    let mut before = Client::connect_with(addr, &options(&setup.ca)).unwrap();
    before.put("k", "v").unwrap();
    // A new set over the files the server was started with.
    let certs = setup.ca.parent().unwrap();
    let next_dir = tempfile::tempdir().unwrap();
    let next = cert::create(next_dir.path(), &["127.0.0.1".into()], 1).unwrap();
    std::fs::copy(&next.cert, certs.join("server.pem")).unwrap();
    std::fs::copy(&next.key, certs.join("server.key")).unwrap();
    setup.server.credentials.request_reload();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Client::connect_with(addr, &options(&next.ca)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = Client::connect_with(addr, &options(&setup.ca))
        .err()
        .expect("the old CA no longer matches");
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
    // A connection opened before keeps working.
    assert_eq!(before.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    // A key that does not match its certificate changes nothing.
    std::fs::copy(&setup.ca, certs.join("server.pem")).unwrap();
    setup.server.credentials.request_reload();
    std::thread::sleep(Duration::from_millis(300));
    assert!(Client::connect_with(addr, &options(&next.ca)).is_ok());
}
