//! SST file layout: everything but the data blocks themselves.
//!
//! ```text
//! file    := data_block* | index | bloom | props | zero pad | footer
//!            (each data block starts 4 KiB-aligned; the footer fills the
//!             last 64 bytes of the last 4 KiB block)
//! index   := (last_key_len:u16 | last_key | last_ts:u64 | offset:u64 | len:u32)* | crc32c:u32
//! bloom   := filter (see bloom.rs) | crc32c:u32
//! props   := entries:u64 | min_ts:u64 | max_ts:u64 | crc32c:u32
//! footer  := index_off:u64 | index_len:u32 | bloom_off:u64 | bloom_len:u32
//!            | props_off:u64 | props_len:u32 | 0:u32 * 3 | version:u32
//!            | magic:u64 | crc32c:u32        (64 bytes, crc over the first 60)
//! ```

use bytes::{Buf, BufMut, Bytes};

pub const MAGIC: u64 = 0x5445_5353_4552_4131; // "TESSERA1"
pub const FORMAT_VERSION: u32 = 1;
pub const FOOTER_BYTES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Footer {
    pub index_off: u64,
    pub index_len: u32,
    pub bloom_off: u64,
    pub bloom_len: u32,
    pub props_off: u64,
    pub props_len: u32,
}

impl Footer {
    pub fn encode(&self) -> [u8; FOOTER_BYTES] {
        let mut out = Vec::with_capacity(FOOTER_BYTES);
        out.put_u64_le(self.index_off);
        out.put_u32_le(self.index_len);
        out.put_u64_le(self.bloom_off);
        out.put_u32_le(self.bloom_len);
        out.put_u64_le(self.props_off);
        out.put_u32_le(self.props_len);
        out.put_bytes(0, 12);
        out.put_u32_le(FORMAT_VERSION);
        out.put_u64_le(MAGIC);
        let crc = crc32c::crc32c(&out);
        out.put_u32_le(crc);
        out.try_into().expect("footer is 64 bytes")
    }

    pub fn decode(raw: &[u8]) -> Result<Footer, &'static str> {
        if raw.len() != FOOTER_BYTES {
            return Err("short footer");
        }
        if crc32c::crc32c(&raw[..60]) != u32::from_le_bytes(raw[60..].try_into().unwrap()) {
            return Err("footer checksum mismatch");
        }
        let mut b = raw;
        let footer = Footer {
            index_off: b.get_u64_le(),
            index_len: b.get_u32_le(),
            bloom_off: b.get_u64_le(),
            bloom_len: b.get_u32_le(),
            props_off: b.get_u64_le(),
            props_len: b.get_u32_le(),
        };
        b.advance(12);
        if b.get_u32_le() != FORMAT_VERSION {
            return Err("unsupported format version");
        }
        if b.get_u64_le() != MAGIC {
            return Err("bad magic");
        }
        Ok(footer)
    }
}

/// Where one data block is and the last version it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub last_key: Bytes,
    pub last_ts: u64,
    pub offset: u64,
    pub len: u32,
}

/// Appends `payload`'s crc32c after it.
pub fn seal(out: &mut Vec<u8>, start: usize) {
    let crc = crc32c::crc32c(&out[start..]);
    out.put_u32_le(crc);
}

/// Verifies and strips a trailing crc32c.
pub fn unseal(raw: &[u8]) -> Option<&[u8]> {
    let body = raw.len().checked_sub(4)?;
    let crc = u32::from_le_bytes(raw[body..].try_into().ok()?);
    (crc32c::crc32c(&raw[..body]) == crc).then_some(&raw[..body])
}

pub fn encode_index(out: &mut Vec<u8>, index: &[IndexEntry]) {
    let start = out.len();
    for e in index {
        out.put_u16_le(e.last_key.len() as u16);
        out.extend_from_slice(&e.last_key);
        out.put_u64_le(e.last_ts);
        out.put_u64_le(e.offset);
        out.put_u32_le(e.len);
    }
    seal(out, start);
}

pub fn decode_index(raw: &[u8]) -> Option<Vec<IndexEntry>> {
    let mut b = unseal(raw)?;
    let mut out = Vec::new();
    while b.has_remaining() {
        if b.remaining() < 2 {
            return None;
        }
        let len = b.get_u16_le() as usize;
        if b.remaining() < len + 20 {
            return None;
        }
        let last_key = Bytes::copy_from_slice(&b[..len]);
        b.advance(len);
        out.push(IndexEntry {
            last_key,
            last_ts: b.get_u64_le(),
            offset: b.get_u64_le(),
            len: b.get_u32_le(),
        });
    }
    Some(out)
}

/// Summary figures of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Props {
    pub entries: u64,
    pub min_ts: u64,
    pub max_ts: u64,
}

pub fn encode_props(out: &mut Vec<u8>, p: &Props) {
    let start = out.len();
    out.put_u64_le(p.entries);
    out.put_u64_le(p.min_ts);
    out.put_u64_le(p.max_ts);
    seal(out, start);
}

pub fn decode_props(raw: &[u8]) -> Option<Props> {
    let mut b = unseal(raw)?;
    if b.len() != 24 {
        return None;
    }
    Some(Props {
        entries: b.get_u64_le(),
        min_ts: b.get_u64_le(),
        max_ts: b.get_u64_le(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_round_trips_and_rejects_damage() {
        let f = Footer {
            index_off: 8192,
            index_len: 77,
            bloom_off: 8269,
            bloom_len: 13,
            props_off: 8282,
            props_len: 28,
        };
        let mut raw = f.encode();
        assert_eq!(Footer::decode(&raw), Ok(f));
        raw[5] ^= 1;
        assert!(Footer::decode(&raw).is_err());
    }

    #[test]
    fn index_round_trips() {
        let idx = vec![IndexEntry {
            last_key: Bytes::from_static(b"k"),
            last_ts: 3,
            offset: 4096,
            len: 100,
        }];
        let mut raw = Vec::new();
        encode_index(&mut raw, &idx);
        assert_eq!(decode_index(&raw), Some(idx));
        raw[0] ^= 1;
        assert_eq!(decode_index(&raw), None);
    }
}
