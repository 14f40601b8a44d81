//! Bad input against the running server: random bytes, truncated frames, an
//! oversized frame, an unknown operation, a verifier-failing buffer, keys and
//! values over the limits. Each gets an error response or a closed
//! connection; the server stays up and other connections are unaffected.

mod common;

use common::raw::{assert_error, raw, read_response, send_frame};
use common::Server;
use rand::{Rng, SeedableRng};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tessera_client::{Client, Error, ErrorCode, Request, Response};
use tessera_protocol::frame::{next_frame, put_frame};
use tessera_protocol::message::decode_response;

#[test]
fn bad_input_gets_errors_and_never_hurts_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        2,
        &[
            "--key-bytes-max",
            "64",
            "--value-bytes-max",
            "1024",
            "--frame-bytes-max",
            "4096",
        ],
    );
    let mut good = Client::connect(server.listen.as_str()).unwrap();
    good.put("survivor", "still here").unwrap();

    // A frame that fails the flatbuffers verifier: BadFrame, connection stays.
    let mut s = raw(&server.listen);
    send_frame(&mut s, b"definitely not a flatbuffer");
    assert_error(read_response(&mut s), 0, ErrorCode::BadFrame);
    send_frame(&mut s, &Request::Ping.encode(5));
    assert_eq!(read_response(&mut s), Some((5, Response::Pong)));

    // An unknown operation (union type 200): UnknownOperation with the id.
    let mut ping = Request::Ping.encode(9);
    let pos = ping
        .iter()
        .rposition(|&b| b == 2)
        .expect("the Ping union tag is 2");
    ping[pos] = 200;
    send_frame(&mut s, &ping);
    assert_error(read_response(&mut s), 9, ErrorCode::UnknownOperation);

    // Keys and values over the limits, and an empty key.
    send_frame(
        &mut s,
        &Request::Get {
            key: vec![b'k'; 65].into(),
        }
        .encode(11),
    );
    assert_error(read_response(&mut s), 11, ErrorCode::KeyTooLarge);
    send_frame(
        &mut s,
        &Request::Put {
            key: "k".into(),
            value: vec![0; 1025].into(),
            ttl_ms: 0,
        }
        .encode(12),
    );
    assert_error(read_response(&mut s), 12, ErrorCode::ValueTooLarge);
    send_frame(
        &mut s,
        &Request::Get {
            key: bytes::Bytes::new(),
        }
        .encode(13),
    );
    assert_error(read_response(&mut s), 13, ErrorCode::InvalidArgument);
    // Hello with a future protocol version.
    send_frame(
        &mut s,
        &Request::Hello {
            protocol_version: 99,
            client_name: "x".into(),
            token: None,
        }
        .encode(14),
    );
    assert_error(read_response(&mut s), 14, ErrorCode::UnsupportedVersion);

    // A frame longer than the limit: an error, then the connection closes.
    let mut big = raw(&server.listen);
    big.write_all(&100_000u32.to_le_bytes()).unwrap();
    assert_error(read_response(&mut big), 0, ErrorCode::BadFrame);
    assert_eq!(read_response(&mut big), None);
    // Requests ahead of it in the same write are answered first.
    let mut late = raw(&server.listen);
    let mut burst = Vec::new();
    for id in [21, 22] {
        let ping = Request::Ping.encode(id);
        burst.extend_from_slice(&(ping.len() as u32).to_le_bytes());
        burst.extend_from_slice(&ping);
    }
    burst.extend_from_slice(&100_000u32.to_le_bytes());
    late.write_all(&burst).unwrap();
    let mut replies = Vec::new();
    late.read_to_end(&mut replies)
        .expect("the server closes the connection");
    let mut replies = bytes::BytesMut::from(&replies[..]);
    let mut next = || {
        next_frame(&mut replies, 1 << 20)
            .unwrap()
            .map(|f| decode_response(&f).unwrap())
    };
    assert_eq!(next(), Some((21, Response::Pong)));
    assert_eq!(next(), Some((22, Response::Pong)));
    assert_error(next(), 0, ErrorCode::BadFrame);
    assert_eq!(next(), None);

    // A truncated frame followed by a hang-up.
    let mut cut = raw(&server.listen);
    let frame = Request::Put {
        key: "truncated".into(),
        value: "x".into(),
        ttl_ms: 0,
    }
    .encode(1);
    cut.write_all(&(frame.len() as u32).to_le_bytes()).unwrap();
    cut.write_all(&frame[..frame.len() / 2]).unwrap();
    drop(cut);

    // Random bytes on many connections, seeded and replayable.
    let seed = 0x07e5_5e7a;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..50 {
        let mut r = raw(&server.listen);
        let len = rng.gen_range(1..2000);
        let junk: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let _ = r.write_all(&junk);
        let _ = r.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = r.read_to_end(&mut sink);
    }

    // The server is up, the other connection never noticed, nothing was lost.
    assert_eq!(
        good.get("survivor").unwrap().as_deref(),
        Some(&b"still here"[..])
    );
    assert_eq!(good.get("truncated").unwrap(), None);
    let err = good.put(vec![b'k'; 65], "v").unwrap_err();
    assert!(
        matches!(
            err,
            Error::Server {
                code: ErrorCode::KeyTooLarge,
                ..
            }
        ),
        "{err}"
    );
    good.ping().unwrap();
    assert!(server.stop(), "seed {seed}: clean shutdown after bad input");
}

#[test]
fn connections_over_the_limit_are_refused_and_the_rest_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 1, &["--connections-max", "3"]);
    // The shared port and the shard port belong to one shard: 3 in total.
    let mut kept: Vec<TcpStream> = (0..3).map(|_| raw(&server.listen)).collect();
    for s in &mut kept {
        send_frame(s, &Request::Ping.encode(1));
        assert_eq!(read_response(s), Some((1, Response::Pong)));
    }
    let mut refused = raw(&server.listen);
    assert_error(read_response(&mut refused), 0, ErrorCode::Unavailable);
    assert_eq!(read_response(&mut refused), None);
    send_frame(&mut kept[0], &Request::Ping.encode(2));
    assert_eq!(read_response(&mut kept[0]), Some((2, Response::Pong)));
    drop(kept);
    std::thread::sleep(Duration::from_millis(200));
    let mut again = raw(&server.listen);
    send_frame(&mut again, &Request::Ping.encode(3));
    assert_eq!(read_response(&mut again), Some((3, Response::Pong)));
    assert!(server.stop());
}

/// An idle connection costs the server little memory: its output buffers
/// grow with its responses instead of being reserved at accept. With two
/// 64 KiB output buffers and a 64 KiB frame buffer reserved up front, 1,000
/// connections that had each sent one PING held ~290 MB (resident in huge
/// pages); now ~115 MB, most of it the socket's 64 KiB receive buffer.
#[test]
fn idle_connections_hold_little_memory() {
    let dir = tempfile::tempdir().unwrap();
    // Not prefaulted: connections would reuse the budget's resident pages.
    let server = Server::start(dir.path(), 1, &["--prefault-memory", "false"]);
    let before = common::rss_bytes(server.child.id());
    const CONNECTIONS: usize = 400;
    let mut held = Vec::with_capacity(CONNECTIONS);
    for id in 0..CONNECTIONS as u64 {
        let mut c = raw(&server.listen);
        send_frame(&mut c, &Request::Ping.encode(id));
        assert_eq!(read_response(&mut c), Some((id, Response::Pong)));
        held.push(c);
    }
    let grown = common::rss_bytes(server.child.id()).saturating_sub(before);
    assert!(
        grown < (CONNECTIONS as u64) * (160 << 10),
        "{CONNECTIONS} idle connections grew the server by {} MiB",
        grown >> 20
    );
    drop(held);
    assert!(server.stop());
}

#[test]
fn a_client_that_never_reads_its_responses_cannot_grow_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 1, &[]);
    let mut good = Client::connect(server.listen.as_str()).unwrap();
    let value = vec![b'v'; 64 << 10];
    good.put("big", value.clone()).unwrap();
    let before = common::rss_bytes(server.child.id());

    // 4,000 pipelined GETs of a 64 KiB value: 256 MiB of responses if the
    // server buffered them. The writer thread blocks once the server stops
    // reading; the connection is dropped (unread) at the end.
    let mut greedy = raw(&server.listen);
    let mut frames = Vec::new();
    for id in 0..4000u64 {
        put_frame(&mut frames, &Request::Get { key: "big".into() }.encode(id));
    }
    let mut writer = greedy.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&frames);
    });
    std::thread::sleep(Duration::from_secs(2));
    let grown = common::rss_bytes(server.child.id()).saturating_sub(before);
    assert!(
        grown < 48 << 20,
        "server RSS grew by {} MiB for one connection that never reads",
        grown >> 20
    );
    // Everyone else is still served.
    assert_eq!(good.get("big").unwrap().as_deref(), Some(&value[..]));
    sender.join().unwrap();
    // Once it reads, the responses it was owed arrive in order of completion.
    let (id, response) = read_response(&mut greedy).expect("a response");
    assert_eq!(id, 0);
    assert_eq!(response, Response::value(Some(value.into())));
    drop(greedy);
    good.ping().unwrap();
    assert!(server.stop());
}

/// A request larger than the server's frames is refused by the SDK before
/// anything is sent (the server would end the connection), with the limit
/// the server's hello gave; the connection goes on.
#[test]
fn a_request_over_the_servers_frame_limit_is_refused_before_it_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 1, &["--frame-bytes-max", "4194304"]);
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    // 3 MiB fits a 4 MiB frame: sent, and the value limit answers.
    let err = client.put("big", vec![b'x'; 3 << 20]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Server {
                code: ErrorCode::ValueTooLarge,
                ..
            }
        ),
        "{err}"
    );
    let err = client.put("big", vec![b'x'; 5 << 20]).unwrap_err();
    assert!(
        matches!(err, Error::RequestTooLarge { limit, .. } if limit == 4 << 20),
        "{err}"
    );
    client.ping().unwrap();
    client.put("small", "v").unwrap();
    assert_eq!(client.get("small").unwrap().as_deref(), Some(&b"v"[..]));
    assert!(server.stop());
}
