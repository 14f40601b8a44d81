//! Framing: each frame is a little-endian u32 length, then that many bytes
//! (one flatbuffer). The decoder accumulates bytes from a stream and yields
//! whole frames; a length over the limit is an error that ends the stream
//! (its bytes cannot be trusted to find the next frame).

use bytes::{Buf, BytesMut};

pub const LENGTH_BYTES: usize = 4;

/// Size limits, enforced before any frame is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub frame_bytes_max: usize,
    pub key_bytes_max: usize,
    pub value_bytes_max: usize,
    pub batch_ops_max: usize,
    pub scan_rows_max: usize,
    /// Keys and values one scan page carries at most (a page whose first
    /// row is larger carries that row alone).
    pub scan_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_bytes_max: 2 << 20,
            key_bytes_max: 1024,
            value_bytes_max: 1 << 20,
            batch_ops_max: 1024,
            scan_rows_max: 10_000,
            scan_bytes_max: 4 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
pub struct FrameTooLarge {
    pub len: usize,
    pub limit: usize,
}

/// Takes the next whole frame out of `buf`, if one is there.
pub fn next_frame(buf: &mut BytesMut, limit: usize) -> Result<Option<BytesMut>, FrameTooLarge> {
    let Some(len) = peek_frame(buf, limit)? else {
        return Ok(None);
    };
    buf.advance(LENGTH_BYTES);
    Ok(Some(buf.split_to(len)))
}

/// The payload length of the frame at the start of `buf` if all of it is
/// there: the payload is `buf[LENGTH_BYTES..LENGTH_BYTES + len]`, and the
/// caller advances past it once done. Unlike [`next_frame`], nothing is
/// split off: a split shares `buf`'s memory (the first one allocates the
/// shared header), where a server that copies what it decodes needs no
/// frame to outlive the buffer. Reserves room for the rest of a partial
/// frame.
pub fn peek_frame(buf: &mut BytesMut, limit: usize) -> Result<Option<usize>, FrameTooLarge> {
    if buf.len() < LENGTH_BYTES {
        return Ok(None);
    }
    let len = u32::from_le_bytes(buf[..LENGTH_BYTES].try_into().expect("4 bytes")) as usize;
    if len > limit {
        return Err(FrameTooLarge { len, limit });
    }
    if buf.len() < LENGTH_BYTES + len {
        buf.reserve(LENGTH_BYTES + len - buf.len());
        return Ok(None);
    }
    Ok(Some(len))
}

/// Appends one frame holding `payload` to `out`.
pub fn put_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peeked_frames_split_across_reads_come_out_whole_and_in_place() {
        let mut wire = Vec::new();
        put_frame(&mut wire, b"hello");
        put_frame(&mut wire, b"");
        put_frame(&mut wire, &[7u8; 300]);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in wire.chunks(7) {
            buf.extend_from_slice(chunk);
            while let Some(len) = peek_frame(&mut buf, 1000).unwrap() {
                frames.push(buf[LENGTH_BYTES..LENGTH_BYTES + len].to_vec());
                buf.advance(LENGTH_BYTES + len);
            }
        }
        assert_eq!(frames, vec![b"hello".to_vec(), vec![], vec![7u8; 300]]);
        assert!(buf.is_empty());
        // Over the limit: an error, and the bytes stay for the caller.
        let mut big = BytesMut::new();
        big.extend_from_slice(&wire[wire.len() - 304..]);
        assert_eq!(
            peek_frame(&mut big, 299),
            Err(FrameTooLarge {
                len: 300,
                limit: 299
            })
        );
        assert_eq!(big.len(), 304);
    }

    #[test]
    fn frames_split_across_reads_come_out_whole() {
        let mut wire = Vec::new();
        put_frame(&mut wire, b"hello");
        put_frame(&mut wire, b"");
        put_frame(&mut wire, b"world!");
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for chunk in wire.chunks(3) {
            buf.extend_from_slice(chunk);
            while let Some(f) = next_frame(&mut buf, 100).unwrap() {
                frames.push(f.to_vec());
            }
        }
        assert_eq!(frames, vec![b"hello".to_vec(), vec![], b"world!".to_vec()]);
        assert!(buf.is_empty());
    }

    #[test]
    fn an_oversized_length_is_rejected_before_buffering() {
        let mut buf = BytesMut::from(&(1000u32).to_le_bytes()[..]);
        assert_eq!(
            next_frame(&mut buf, 999),
            Err(FrameTooLarge {
                len: 1000,
                limit: 999
            })
        );
    }
}
