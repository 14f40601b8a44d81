//! The responses a server sends most (`PingResult`, `GetResult`,
//! `WriteResult`), and the requests a client sends most (`Get`, `Put`),
//! written as frames directly, in one fixed layout each.
//!
//! `FlatBufferBuilder` builds back to front in a buffer of its own, with
//! its field bookkeeping and vtable deduplication, and the frame is then
//! copied out of it: ~8% of a shard's CPU under 16-deep GETs and ~6% under
//! 16-deep PINGs went to building responses (docs/benchmarks.md). These
//! shapes never change, so the frame is written front to back into the
//! connection's output instead, the value copied once. A load generator
//! building each request in a builder, from a key and value copied into
//! a `Request` first, spent ~6% of its CPU there under 16-deep GETs.
//!
//! Each layout is a valid flatbuffer: every field the decoder reads is
//! present (defaults included), tables and vtables are aligned as the
//! verifier checks (relative to the payload's start, which is where it
//! checks from), and the union tag names the table that follows. The
//! tests decode every shape through the verifying decoder and compare it
//! with the builder's encoding of the same response.

use crate::wire;

/// Bytes before the result's (or op's) vtable: the root offset, the
/// `Response` vtable and table (`id`, `outcome_type`, `outcome`),
/// padding. A `Request` (`id`, `op_type`, `op`) has the same shape.
const ENVELOPE_BYTES: usize = 36;
/// Where the `Response` table starts.
const RESPONSE_TABLE: usize = 16;
/// Where its `outcome` offset sits (the offset counts from here).
const OUTCOME_FIELD: usize = RESPONSE_TABLE + 4;

/// Appends a frame's length prefix and the `Response` envelope for a
/// payload of `payload_len` bytes in all, whose result table starts at
/// `result_table` (relative to the payload).
fn envelope(
    out: &mut Vec<u8>,
    payload_len: usize,
    id: u64,
    outcome: wire::Outcome,
    result_table: usize,
) {
    envelope_tagged(out, payload_len, id, outcome.0, result_table);
}

/// [`envelope`] with the union's tag as a number: a `Response`'s outcome
/// or a `Request`'s op.
fn envelope_tagged(out: &mut Vec<u8>, payload_len: usize, id: u64, tag: u8, result_table: usize) {
    out.reserve(4 + payload_len);
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    let start = out.len();
    // Root: the Response table.
    put_u32(out, RESPONSE_TABLE as u32);
    // Response's vtable at 4: its length, the table's inline size (17:
    // the vtable offset, `outcome`, `id`, `outcome_type`), then each
    // field's place in the table, in field order (id, outcome_type,
    // outcome), and two bytes of padding.
    for half in [10u16, 17, 8, 16, 4, 0] {
        out.extend_from_slice(&half.to_le_bytes());
    }
    // The table at 16: back to its vtable at 4.
    put_u32(out, (RESPONSE_TABLE - 4) as u32);
    put_u32(out, (result_table - OUTCOME_FIELD) as u32);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&[tag, 0, 0, 0]);
    debug_assert_eq!(out.len() - start, ENVELOPE_BYTES);
}

/// Appends `bytes` as a vector: its length, then its bytes.
fn put_vector(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

/// Appends the frame of a `Get` request.
pub(crate) fn get_request(out: &mut Vec<u8>, id: u64, key: &[u8]) {
    // The vtable at 36, padding, the table at 44 (the vtable offset,
    // `key`'s offset at 4); then, at 52, the key as a vector.
    let table = ENVELOPE_BYTES + 8;
    let vector = table + 8;
    envelope_tagged(out, vector + 4 + key.len(), id, wire::Op::Get.0, table);
    for half in [6u16, 8, 4, 0] {
        out.extend_from_slice(&half.to_le_bytes());
    }
    put_u32(out, (table - ENVELOPE_BYTES) as u32);
    put_u32(out, (vector - (table + 4)) as u32);
    put_vector(out, key);
}

/// Appends the frame of a `Put` request (`ttl_ms` 0: no TTL).
pub(crate) fn put_request(out: &mut Vec<u8>, id: u64, key: &[u8], value: &[u8], ttl_ms: u64) {
    // The vtable at 36, padding, the table at 48: the vtable offset,
    // `key`'s offset at 4, `value`'s at 8, padding, `ttl_ms` at 16
    // (8-aligned in the payload); then, at 72, the key as a vector, and
    // the value as one, 4-aligned, after it.
    let table = ENVELOPE_BYTES + 12;
    let key_vector = table + 24;
    let value_vector = (key_vector + 4 + key.len()).next_multiple_of(4);
    let len = value_vector + 4 + value.len();
    envelope_tagged(out, len, id, wire::Op::Put.0, table);
    for half in [10u16, 24, 4, 8, 16, 0] {
        out.extend_from_slice(&half.to_le_bytes());
    }
    put_u32(out, (table - ENVELOPE_BYTES) as u32);
    put_u32(out, (key_vector - (table + 4)) as u32);
    put_u32(out, (value_vector - (table + 8)) as u32);
    put_u32(out, 0);
    out.extend_from_slice(&ttl_ms.to_le_bytes());
    put_vector(out, key);
    let padding = value_vector - (key_vector + 4 + key.len());
    out.extend_from_slice(&[0; 3][..padding]);
    put_vector(out, value);
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends the frame of a `PingResult` response.
pub(crate) fn pong(out: &mut Vec<u8>, id: u64) {
    // An empty vtable at 36, the empty table at 40.
    let len = ENVELOPE_BYTES + 8;
    envelope(out, len, id, wire::Outcome::PingResult, ENVELOPE_BYTES + 4);
    for half in [4u16, 4] {
        out.extend_from_slice(&half.to_le_bytes());
    }
    put_u32(out, 4);
}

/// Appends the frame of a `WriteResult` response.
pub(crate) fn written(out: &mut Vec<u8>, id: u64, ts: u64) {
    // The vtable at 36 (its `ts` at 4 in the table), padding, the table
    // at 44 with `ts` at 48.
    let table = ENVELOPE_BYTES + 8;
    envelope(out, table + 12, id, wire::Outcome::WriteResult, table);
    for half in [6u16, 12, 4, 0] {
        out.extend_from_slice(&half.to_le_bytes());
    }
    put_u32(out, (table - ENVELOPE_BYTES) as u32);
    out.extend_from_slice(&ts.to_le_bytes());
}

/// Appends the frame of a `GetResult` response: `found` and the value if
/// there is one, and `expires_at_ms` (0: none).
pub(crate) fn get(out: &mut Vec<u8>, id: u64, value: Option<&[u8]>, expires_at_ms: u64) {
    // The vtable at 36, padding, the table at 48: the vtable offset,
    // `value`'s offset at 4, `expires_at_ms` at 8, `found` at 16; then,
    // 4-aligned at 68, the value as a vector (its length, its bytes).
    let table = ENVELOPE_BYTES + 12;
    let vector = table + 20;
    let len = vector + value.map_or(0, |v| 4 + v.len());
    envelope(out, len, id, wire::Outcome::GetResult, table);
    let value_field = if value.is_some() { 4 } else { 0 };
    for half in [10u16, 17, 16, value_field, 8, 0] {
        out.extend_from_slice(&half.to_le_bytes());
    }
    put_u32(out, (table - ENVELOPE_BYTES) as u32);
    put_u32(out, value.map_or(0, |_| (vector - (table + 4)) as u32));
    out.extend_from_slice(&expires_at_ms.to_le_bytes());
    out.extend_from_slice(&[u8::from(value.is_some()), 0, 0, 0]);
    if let Some(value) = value {
        put_u32(out, value.len() as u32);
        out.extend_from_slice(value);
    }
}

/// A request in one of the layouts above, its key and value borrowed
/// from the payload.
pub(crate) enum Parsed<'a> {
    Get {
        key: &'a [u8],
    },
    Put {
        key: &'a [u8],
        value: &'a [u8],
        ttl_ms: u64,
    },
}

/// The request in `payload`, with its id, if the payload is exactly one
/// of the layouts [`get_request`] and [`put_request`] write, byte for byte
/// wherever those write constants (`None` otherwise: decode it with the
/// verifier). Such a payload is a valid flatbuffer, as the tests check, so
/// the generic verifier, ~5% of a shard's CPU under 16-deep GETs, can be
/// skipped for what the Rust SDK and the load generator send. Every read
/// here is bounds-checked.
pub(crate) fn parse_request(payload: &[u8]) -> Option<(u64, Parsed<'_>)> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            payload.get(at..at + 4)?.try_into().ok()?,
        ))
    };
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            payload.get(at..at + 8)?.try_into().ok()?,
        ))
    };
    let halves = |at: usize, want: &[u16]| -> bool {
        want.iter()
            .enumerate()
            .all(|(i, h)| payload.get(at + 2 * i..at + 2 * i + 2) == Some(&h.to_le_bytes()[..]))
    };
    // The envelope: what `envelope_tagged` writes but the id and the tag.
    if u32_at(0)? != RESPONSE_TABLE as u32
        || !halves(4, &[10, 17, 8, 16, 4, 0])
        || u32_at(RESPONSE_TABLE)? != (RESPONSE_TABLE - 4) as u32
        || payload.get(33..36)? != [0, 0, 0]
    {
        return None;
    }
    let id = u64_at(24)?;
    let tag = *payload.get(32)?;
    let table = ENVELOPE_BYTES + if tag == wire::Op::Get.0 { 8 } else { 12 };
    if u32_at(OUTCOME_FIELD)? != (table - OUTCOME_FIELD) as u32
        || u32_at(table)? != (table - ENVELOPE_BYTES) as u32
    {
        return None;
    }
    // A vector at `at`, ending at or before `end`: its bytes and its end.
    let vector = |at: usize| -> Option<(&[u8], usize)> {
        let len = u32_at(at)? as usize;
        let end = (at + 4).checked_add(len)?;
        Some((payload.get(at + 4..end)?, end))
    };
    if tag == wire::Op::Get.0 {
        let key_at = table + 8;
        if !halves(ENVELOPE_BYTES, &[6, 8, 4, 0]) || u32_at(table + 4)? != 4 {
            return None;
        }
        let (key, end) = vector(key_at)?;
        return (end == payload.len()).then_some((id, Parsed::Get { key }));
    }
    if tag != wire::Op::Put.0
        || !halves(ENVELOPE_BYTES, &[10, 24, 4, 8, 16, 0])
        || u32_at(table + 4)? != 20
        || u32_at(table + 12)? != 0
    {
        return None;
    }
    let ttl_ms = u64_at(table + 16)?;
    let key_at = table + 24;
    let (key, key_end) = vector(key_at)?;
    let value_at = key_end.next_multiple_of(4);
    if u32_at(table + 8)? as usize != value_at.checked_sub(table + 8)?
        || payload.get(key_end..value_at)?.iter().any(|&b| b != 0)
    {
        return None;
    }
    let (value, end) = vector(value_at)?;
    (end == payload.len()).then_some((id, Parsed::Put { key, value, ttl_ms }))
}

#[cfg(test)]
mod tests {
    use super::parse_request;
    use crate::frame::next_frame;
    use crate::frame::Limits;
    use crate::message::{
        decode_request, decode_response, decode_verified_request, response_status, Request,
        Response,
    };
    use bytes::Bytes;
    use flatbuffers::FlatBufferBuilder;
    use proptest::prelude::*;

    /// The frame `encode_frame` appends after `prefix` bytes already in
    /// the output (its payload's alignment in memory then varies; the
    /// verifier's checks must not depend on it).
    fn framed(response: &Response, id: u64, prefix: usize) -> Vec<u8> {
        let mut out = vec![0xAB; prefix];
        response.encode_frame(id, &mut FlatBufferBuilder::new(), &mut out);
        payload_after(&out, prefix)
    }

    /// The payload of the one whole frame in `out` after `prefix` bytes.
    fn payload_after(out: &[u8], prefix: usize) -> Vec<u8> {
        let mut frame = bytes::BytesMut::from(&out[prefix..]);
        let payload = next_frame(&mut frame, usize::MAX)
            .expect("a frame")
            .expect("whole");
        assert!(frame.is_empty(), "the length prefix is the payload's");
        payload.to_vec()
    }

    fn response() -> impl Strategy<Value = Response> {
        prop_oneof![
            Just(Response::Pong),
            any::<u64>().prop_map(|ts| Response::Written { ts }),
            (
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..600)),
                proptest::option::of(1..u64::MAX),
            )
                .prop_map(|(value, expires_at_ms)| Response::Get {
                    value: value.map(Bytes::from),
                    expires_at_ms,
                }),
        ]
    }

    proptest! {
        #[test]
        fn direct_frames_decode_as_the_builders_do(
            r in response(),
            id in any::<u64>(),
            prefix in 0usize..8,
        ) {
            let payload = framed(&r, id, prefix);
            prop_assert_eq!(decode_response(&payload), Ok((id, r.clone())));
            prop_assert_eq!(decode_response(&payload), decode_response(&r.encode(id)));
            prop_assert_eq!(response_status(&payload), Ok((id, None)));
        }
    }

    /// The payload of the frame `encode_frame` appends for `request`
    /// after `prefix` bytes already in the output.
    fn request_framed(request: &Request, id: u64, prefix: usize) -> Vec<u8> {
        let mut out = vec![0xAB; prefix];
        request.encode_frame(id, &mut FlatBufferBuilder::new(), &mut out);
        payload_after(&out, prefix)
    }

    fn request() -> impl Strategy<Value = Request> {
        let bytes = |max| proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from);
        prop_oneof![
            bytes(40).prop_map(|key| Request::Get { key }),
            (bytes(40), bytes(600), prop_oneof![Just(0), any::<u64>()])
                .prop_map(|(key, value, ttl_ms)| Request::Put { key, value, ttl_ms }),
        ]
    }

    proptest! {
        #[test]
        fn direct_request_frames_decode_as_the_builders_do(
            r in request(),
            id in any::<u64>(),
            prefix in 0usize..8,
        ) {
            let payload = request_framed(&r, id, prefix);
            let limits = Limits::default();
            prop_assert!(parse_request(&payload).is_some(), "the layout is recognised");
            let decoded = decode_request(&payload, &limits);
            prop_assert_eq!(&decoded, &decode_verified_request(&payload, &limits));
            prop_assert_eq!(&decoded, &decode_request(&r.encode(id), &limits));
            let key_is_empty = matches!(&r, Request::Get { key } | Request::Put { key, .. } if key.is_empty());
            if !key_is_empty {
                prop_assert_eq!(decoded, Ok((id, r)));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Whatever the bytes, reading a request without the verifier
        /// agrees with reading it through the verifier: damaged (mostly
        /// where the layout's constants and offsets are), cut short,
        /// extended or built otherwise, a payload is either in the layout
        /// and read the same, or not and read by the verifier.
        #[test]
        fn requests_read_without_the_verifier_agree_with_it(
            r in request(),
            id in any::<u64>(),
            damage in proptest::collection::vec((0usize..80, any::<u8>()), 0..3),
            cut in proptest::option::of(any::<prop::sample::Index>()),
            extra in proptest::collection::vec(any::<u8>(), 0..3),
        ) {
            let mut payload = request_framed(&r, id, 0);
            for (at, byte) in damage {
                let at = at % payload.len();
                payload[at] = byte;
            }
            if let Some(cut) = cut {
                payload.truncate(cut.index(payload.len() + 1));
            }
            payload.extend_from_slice(&extra);
            let limits = Limits { key_bytes_max: 30, value_bytes_max: 500, ..Limits::default() };
            prop_assert_eq!(
                decode_request(&payload, &limits),
                decode_verified_request(&payload, &limits)
            );
        }
    }

    #[test]
    fn every_byte_of_a_direct_request_is_needed() {
        let r = Request::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"value"),
            ttl_ms: 7,
        };
        let payload = request_framed(&r, 9, 0);
        for end in 0..payload.len() {
            let decoded = decode_request(&payload[..end], &Limits::default());
            assert!(decoded.is_err(), "{end} bytes");
        }
    }

    #[test]
    fn defaults_are_written_and_read_back() {
        for r in [
            Response::Written { ts: 0 },
            Response::Get {
                value: None,
                expires_at_ms: None,
            },
            Response::Get {
                value: Some(Bytes::new()),
                expires_at_ms: None,
            },
        ] {
            assert_eq!(decode_response(&framed(&r, 0, 0)), Ok((0, r)));
        }
    }

    #[test]
    fn every_byte_of_a_direct_frame_is_needed() {
        // Cut short anywhere, the payload is refused, never misread.
        let r = Response::Get {
            value: Some(Bytes::from_static(b"value")),
            expires_at_ms: Some(7),
        };
        let payload = framed(&r, 9, 0);
        for end in 0..payload.len() {
            assert!(decode_response(&payload[..end]).is_err(), "{end} bytes");
        }
    }
}
