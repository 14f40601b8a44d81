//! Raw protocol access for tests that send what no SDK would: one frame
//! at a time over a plain socket.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tessera_protocol::frame::{next_frame, put_frame};
use tessera_protocol::message::decode_response;
use tessera_protocol::{ErrorCode, Response};

pub fn raw(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads one response frame, or `None` if the server closed the connection.
pub fn read_response(s: &mut TcpStream) -> Option<(u64, Response)> {
    let mut buf = bytes::BytesMut::new();
    loop {
        if let Some(frame) = next_frame(&mut buf, 1 << 20).unwrap() {
            return Some(decode_response(&frame).unwrap());
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

pub fn send_frame(s: &mut TcpStream, payload: &[u8]) {
    let mut out = Vec::new();
    put_frame(&mut out, payload);
    s.write_all(&out).unwrap();
}

pub fn assert_error(r: Option<(u64, Response)>, id: u64, code: ErrorCode) {
    match r {
        Some((got, Response::Error { code: c, .. })) => assert_eq!((got, c), (id, code)),
        other => panic!("expected error {code:?} for id {id}, got {other:?}"),
    }
}
