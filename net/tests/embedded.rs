//! A server run inside another process (`tessera_net::runtime::Embedded`)
//! gives everything back when it stops: its clients' connections and every
//! file it opened. A process that starts and stops servers (tests, an
//! application embedding one) would otherwise keep them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};
use tessera_net::config::{Config, Flags};
use tessera_net::runtime::Embedded;
use tessera_protocol::frame::put_frame;
use tessera_protocol::Request;

fn start(dir: &Path) -> Embedded {
    Embedded::start(Config::resolve(Flags::local(dir.to_path_buf(), 2)).unwrap()).unwrap()
}

/// Writes `n` keys over `stream` and reads the answers.
fn put_keys(stream: &mut TcpStream, n: u64) {
    let mut frames = Vec::new();
    for i in 0..n {
        let put = Request::Put {
            key: format!("key-{i}").into(),
            value: vec![b'v'; 300].into(),
            ttl_ms: 0,
        };
        put_frame(&mut frames, &put.encode(i));
    }
    stream.write_all(&frames).unwrap();
    let mut answered = 0;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while answered < n {
        let read = stream.read(&mut chunk).unwrap();
        assert!(read > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..read]);
        while buf.len() >= 4 {
            let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
            if buf.len() < 4 + len {
                break;
            }
            buf.drain(..4 + len);
            answered += 1;
        }
    }
}

/// The files this process holds open under `dir`.
fn open_files_under(dir: &Path) -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .map(|target| target.display().to_string())
        .collect()
}

#[test]
fn stopping_closes_the_connections_clients_keep_open() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let mut stream = TcpStream::connect(server.ready.listen).unwrap();
    put_keys(&mut stream, 100);
    server.stop().unwrap();
    // The client learns at once, not when its own timeout gives up.
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let read = stream.read(&mut byte);
    assert!(
        matches!(read, Ok(0))
            || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "after the stop, a read gave {read:?} after {:?}",
        started.elapsed()
    );
}

#[test]
fn stopping_releases_every_file_of_every_shard() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().canonicalize().unwrap();
    let server = start(&data);
    let mut stream = TcpStream::connect(server.ready.listen).unwrap();
    put_keys(&mut stream, 2000);
    drop(stream);
    assert!(
        !open_files_under(&data).is_empty(),
        "the shards hold their files"
    );
    server.stop().unwrap();
    assert_eq!(open_files_under(&data), Vec::<String>::new());
}
