//! Wire drivers of the load generator: Tessera's native frames and Redis
//! RESP. Each encodes requests into a write buffer and decodes replies from
//! a read buffer without blocking; Tessera replies carry the request id,
//! Redis replies come back in order.

use bytes::{Buf, BytesMut};
use tessera_protocol::frame::next_frame;
use tessera_protocol::message::{encode_get_frame, encode_put_frame, response_status, BatchOp};
use tessera_protocol::Request;

thread_local! {
    /// One flatbuffer builder per load thread, reused for every request.
    static BUILDER: std::cell::RefCell<flatbuffers::FlatBufferBuilder<'static>> =
        std::cell::RefCell::new(flatbuffers::FlatBufferBuilder::with_capacity(1024));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tessera,
    Redis,
}

/// One request on the wire.
#[derive(Debug, Clone)]
pub enum Command<'a> {
    Get(&'a [u8]),
    /// Key, value, and a TTL in ms (0: none).
    Set(&'a [u8], &'a [u8], u64),
    Scan(&'a [u8], u32),
    /// One transaction putting `value` under both keys.
    Txn(&'a [u8], &'a [u8], &'a [u8]),
    Ping,
}

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok,
    /// Error kind (a protocol error code name, or `redis:<first word>`).
    Error(String),
}

impl Protocol {
    pub fn encode(self, id: u64, command: &Command, out: &mut Vec<u8>) {
        match self {
            Protocol::Tessera => {
                let request = match command {
                    // Written straight from the borrowed key and value.
                    Command::Get(k) => return encode_get_frame(id, k, out),
                    Command::Set(k, v, ttl_ms) => return encode_put_frame(id, k, v, *ttl_ms, out),
                    Command::Scan(k, n) => Request::Scan {
                        start: k.to_vec().into(),
                        end: None,
                        limit: *n,
                        ts: None,
                    },
                    Command::Txn(a, b, v) => Request::Txn {
                        conditions: Vec::new(),
                        reads: Vec::new(),
                        writes: [a, b]
                            .into_iter()
                            .map(|k| BatchOp::put(k.to_vec(), v.to_vec()))
                            .collect(),
                    },
                    Command::Ping => Request::Ping,
                };
                BUILDER.with_borrow_mut(|b| request.encode_frame(id, b, out));
            }
            Protocol::Redis => {
                use std::io::Write as _;
                let ttl;
                let parts: &[&[u8]] = match command {
                    Command::Get(k) => &[b"GET", k],
                    Command::Set(k, v, 0) => &[b"SET", k, v],
                    Command::Set(k, v, ttl_ms) => {
                        ttl = ttl_ms.to_string();
                        &[b"SET", k, v, b"PX", ttl.as_bytes()]
                    }
                    Command::Ping => &[b"PING"],
                    Command::Scan(..) | Command::Txn(..) => {
                        panic!("scans and transactions are not supported against Redis")
                    }
                };
                // Writes into a Vec cannot fail.
                let _ = write!(out, "*{}\r\n", parts.len());
                for p in parts {
                    let _ = write!(out, "${}\r\n", p.len());
                    out.extend_from_slice(p);
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
    }

    /// Takes one reply out of `buf` if a whole one is there: `(id, reply)`;
    /// the id is `None` for Redis (replies are in request order).
    pub fn decode(self, buf: &mut BytesMut) -> Result<Option<(Option<u64>, Reply)>, String> {
        match self {
            Protocol::Tessera => {
                let Some(frame) = next_frame(buf, 64 << 20).map_err(|e| e.to_string())? else {
                    return Ok(None);
                };
                // The id and whether it failed: the result is not read.
                let (id, error) = response_status(&frame).map_err(|e| e.to_string())?;
                let reply = match error {
                    Some(code) => Reply::Error(code.name().to_string()),
                    None => Reply::Ok,
                };
                Ok(Some((Some(id), reply)))
            }
            Protocol::Redis => match resp_len(buf)? {
                None => Ok(None),
                Some(len) => {
                    let reply = if buf[0] == b'-' {
                        let text = String::from_utf8_lossy(&buf[1..len - 2]).into_owned();
                        Reply::Error(format!(
                            "redis:{}",
                            text.split_whitespace().next().unwrap_or("ERR")
                        ))
                    } else {
                        Reply::Ok
                    };
                    buf.advance(len);
                    Ok(Some((None, reply)))
                }
            },
        }
    }
}

fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

/// Length of the complete RESP value at the start of `buf`, if complete.
fn resp_len(buf: &[u8]) -> Result<Option<usize>, String> {
    resp_len_at(buf, 0)
}

fn resp_len_at(buf: &[u8], at: usize) -> Result<Option<usize>, String> {
    if buf.len() <= at {
        return Ok(None);
    }
    let Some(end) = line_end(buf, at) else {
        return Ok(None);
    };
    let header = &buf[at + 1..end];
    let number = || -> Result<i64, String> {
        std::str::from_utf8(header)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad RESP header {:?}", String::from_utf8_lossy(header)))
    };
    match buf[at] {
        b'+' | b'-' | b':' => Ok(Some(end + 2 - at)),
        b'$' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some(end + 2 - at));
            }
            let total = end + 2 + n as usize + 2;
            Ok((buf.len() >= total).then_some(total - at))
        }
        b'*' => {
            let n = number()?;
            let mut pos = end + 2;
            for _ in 0..n.max(0) {
                match resp_len_at(buf, pos)? {
                    Some(len) => pos += len,
                    None => return Ok(None),
                }
            }
            Ok(Some(pos - at))
        }
        other => Err(format!("unexpected RESP type byte {other:#x}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_protocol::frame::put_frame;
    use tessera_protocol::{ErrorCode, Response};

    #[test]
    fn resp_replies_are_framed_whole_and_only_whole() {
        let mut buf = BytesMut::from(
            &b"+OK\r\n$5\r\nhello\r\n$-1\r\n-ERR wrong type\r\n*2\r\n$1\r\na\r\n:7\r\n$3\r\nab"[..],
        );
        let mut replies = Vec::new();
        while let Some((_, r)) = Protocol::Redis.decode(&mut buf).unwrap() {
            replies.push(r);
        }
        assert_eq!(
            replies,
            vec![
                Reply::Ok,
                Reply::Ok,
                Reply::Ok,
                Reply::Error("redis:ERR".into()),
                Reply::Ok
            ]
        );
        assert_eq!(&buf[..], b"$3\r\nab");
    }

    #[test]
    fn redis_commands_encode_as_resp_arrays() {
        let mut out = Vec::new();
        Protocol::Redis.encode(0, &Command::Set(b"k", b"vv", 0), &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n".to_vec());
    }

    #[test]
    fn pings_encode_as_each_protocol_s_ping() {
        let mut out = Vec::new();
        Protocol::Redis.encode(0, &Command::Ping, &mut out);
        assert_eq!(out, b"*1\r\n$4\r\nPING\r\n".to_vec());
        out.clear();
        Protocol::Tessera.encode(9, &Command::Ping, &mut out);
        let frame = next_frame(&mut BytesMut::from(&out[..]), 1 << 20)
            .unwrap()
            .unwrap();
        let limits = tessera_protocol::frame::Limits::default();
        let (id, request) = tessera_protocol::message::decode_request(&frame, &limits).unwrap();
        assert_eq!(id, 9);
        assert!(matches!(request, Request::Ping), "{request:?}");
    }

    #[test]
    fn tessera_replies_carry_their_id() {
        let mut wire = Vec::new();
        put_frame(&mut wire, &Response::Written { ts: 1 }.encode(77));
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(
            Protocol::Tessera.decode(&mut buf).unwrap(),
            Some((Some(77), Reply::Ok))
        );
    }

    #[test]
    fn tessera_errors_count_by_code_and_garbage_is_refused() {
        let mut wire = Vec::new();
        let error = Response::Error {
            code: ErrorCode::ValueTooLarge,
            message: "too big".into(),
        };
        put_frame(&mut wire, &error.encode(5));
        put_frame(&mut wire, &Response::Pong.encode(6));
        put_frame(&mut wire, &[0xff; 12]);
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(
            Protocol::Tessera.decode(&mut buf).unwrap(),
            Some((
                Some(5),
                Reply::Error(ErrorCode::ValueTooLarge.name().into())
            ))
        );
        assert_eq!(
            Protocol::Tessera.decode(&mut buf).unwrap(),
            Some((Some(6), Reply::Ok))
        );
        let garbage = Protocol::Tessera.decode(&mut buf).unwrap_err();
        assert!(garbage.contains("not a valid Response"), "{garbage}");
    }
}
