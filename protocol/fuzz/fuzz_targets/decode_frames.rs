//! Feeds arbitrary bytes through the server's frame decoder and request
//! decoder, split into reads of fuzzer-chosen sizes: it must never panic,
//! and every frame it yields must be within the limit.
//! Run: `cd protocol/fuzz && cargo +nightly fuzz run decode_frames`.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tessera_protocol::frame::{next_frame, Limits};
use tessera_protocol::message::{decode_request, decode_response};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        frame_bytes_max: 4096,
        ..Limits::default()
    };
    let (split, stream) = data.split_first().map(|(s, r)| (*s as usize + 1, r)).unwrap_or((1, data));
    let mut buf = BytesMut::new();
    for chunk in stream.chunks(split) {
        buf.extend_from_slice(chunk);
        loop {
            match next_frame(&mut buf, limits.frame_bytes_max) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= limits.frame_bytes_max);
                    let _ = decode_request(&frame, &limits);
                    let _ = decode_response(&frame);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
