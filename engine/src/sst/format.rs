//! SST file layout: everything but the data blocks themselves.
//!
//! ```text
//! file    := data_block* | index | bloom | props | zero pad | footer
//!            (each data block starts 4 KiB-aligned; the footer fills the
//!             last 64 bytes of the last 4 KiB block)
//! index   := (last_key_len:u16 | last_key | last_ts:u64 | offset:u64 | len:u32)* | crc32c:u32
//! bloom   := filter (see bloom.rs) | crc32c:u32
//! props   := entries:u64 | min_ts:u64 | max_ts:u64
//!            [| expiring:u64 | expires_by_ms:u64 [| overwritten:u64]] | crc32c:u32
//! footer  := index_off:u64 | index_len:u32 | bloom_off:u64 | bloom_len:u32
//!            | props_off:u64 | props_len:u32 | 0:u32 * 3 | version:u32
//!            | magic:u64 | crc32c:u32        (64 bytes, crc over the first 60)
//! ```

use crate::key::compare_bytes;
use bytes::{Buf, BufMut, Bytes};
use std::cmp::Ordering;

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

/// Where one data block is (the in-memory form of an index entry; its
/// last key lives in [`BlockIndex`]'s flat key buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHandle {
    pub last_ts: u64,
    pub offset: u64,
    pub len: u32,
}

/// A table's decoded index, laid out flat for the binary search of every
/// point read: the last keys side by side in one buffer, so a probe touches
/// two small arrays instead of chasing one heap pointer per step (with
/// ~33k blocks per 1M keys, that chase was ~10% of a read's CPU).
///
/// Invariant: `key_ends` is non-decreasing, has one entry per handle, and
/// its last entry is `keys.len()`.
///
/// The search compares 8-byte heads first: `heads[i]` holds the 8 bytes of
/// last key `i` after the prefix every last key shares (`common` bytes),
/// big-endian and zero-padded, so most steps read one array and compare
/// one word; only equal heads compare whole keys. Keys like `k0000…123`
/// share their first bytes, so heads taken from the start would all be
/// equal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockIndex {
    keys: Vec<u8>,
    key_ends: Vec<u32>,
    handles: Vec<BlockHandle>,
    common: usize,
    heads: Vec<u64>,
}

/// The 8 bytes of `key` after its first `skip`, big-endian, zero-padded.
/// For two keys that share their first `skip` bytes, unequal heads order
/// them as the whole keys would be ordered.
fn head(key: &[u8], skip: usize) -> u64 {
    let rest = key.get(skip..).unwrap_or_default();
    let mut word = [0u8; 8];
    let n = rest.len().min(8);
    word[..n].copy_from_slice(&rest[..n]);
    u64::from_be_bytes(word)
}

impl BlockIndex {
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    pub fn handle(&self, i: usize) -> &BlockHandle {
        &self.handles[i]
    }

    pub fn last_key(&self, i: usize) -> &[u8] {
        let start = if i == 0 {
            0
        } else {
            self.key_ends[i - 1] as usize
        };
        &self.keys[start..self.key_ends[i] as usize]
    }

    /// Index of the first block whose last version is ≥ (key, ts).
    pub fn find(&self, key: &[u8], ts: u64) -> usize {
        let n = self.handles.len();
        if n == 0 {
            return 0;
        }
        // Every last key starts with `prefix`: a key that does not (a
        // shorter one included) sorts before or after all of them.
        let prefix = &self.keys[..self.common];
        match compare_bytes(&key[..key.len().min(self.common)], prefix) {
            Ordering::Less => return 0,
            Ordering::Greater => return n,
            Ordering::Equal => {}
        }
        let probe = head(key, self.common);
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let h = self.heads[mid];
            let less = match h.cmp(&probe) {
                Ordering::Less => true,
                Ordering::Greater => false,
                Ordering::Equal => match compare_bytes(self.last_key(mid), key) {
                    Ordering::Less => true,
                    Ordering::Greater => false,
                    Ordering::Equal => self.handles[mid].last_ts > ts,
                },
            };
            if less {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Memory held by the index.
    pub fn resident_bytes(&self) -> usize {
        self.keys.len() + self.handles.len() * (4 + 8 + std::mem::size_of::<BlockHandle>())
    }
}

pub fn decode_index(raw: &[u8]) -> Option<BlockIndex> {
    let mut b = unseal(raw)?;
    let mut out = BlockIndex::default();
    while b.has_remaining() {
        if b.remaining() < 2 {
            return None;
        }
        let len = b.get_u16_le() as usize;
        if b.remaining() < len + 20 {
            return None;
        }
        out.keys.extend_from_slice(&b[..len]);
        out.key_ends.push(u32::try_from(out.keys.len()).ok()?);
        b.advance(len);
        out.handles.push(BlockHandle {
            last_ts: b.get_u64_le(),
            offset: b.get_u64_le(),
            len: b.get_u32_le(),
        });
    }
    if let Some(last) = out.handles.len().checked_sub(1) {
        let (first, last) = (out.last_key(0), out.last_key(last));
        out.common = first.iter().zip(last).take_while(|(a, b)| a == b).count();
        out.heads = (0..out.handles.len())
            .map(|i| head(out.last_key(i), out.common))
            .collect();
    }
    Some(out)
}

/// Summary figures of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Props {
    pub entries: u64,
    pub min_ts: u64,
    pub max_ts: u64,
    /// Expiring puts among the entries, and when the last of them expires
    /// (wall-clock ms): compaction rewrites a table most of whose entries
    /// have expired (see `compaction::pick`).
    pub expiring: u64,
    pub expires_by_ms: u64,
    /// Versions with a newer version of their key in the same table:
    /// once every version is past the retention watermark, compaction
    /// drops them (see `compaction::pick`).
    pub overwritten: u64,
}

/// Props of a table without expiring puts: three numbers, as tables have
/// had from the start (so such tables stay readable by older builds).
const PROPS_BYTES: usize = 24;
/// With the expiring count and last expiry.
const PROPS_EXPIRY_BYTES: usize = 40;
/// With those and the overwritten count.
const PROPS_OVERWRITTEN_BYTES: usize = 48;

pub fn encode_props(out: &mut Vec<u8>, p: &Props) {
    let start = out.len();
    out.put_u64_le(p.entries);
    out.put_u64_le(p.min_ts);
    out.put_u64_le(p.max_ts);
    if p.expiring > 0 || p.overwritten > 0 {
        out.put_u64_le(p.expiring);
        out.put_u64_le(p.expires_by_ms);
    }
    if p.overwritten > 0 {
        out.put_u64_le(p.overwritten);
    }
    seal(out, start);
}

pub fn decode_props(raw: &[u8]) -> Option<Props> {
    let mut b = unseal(raw)?;
    if ![PROPS_BYTES, PROPS_EXPIRY_BYTES, PROPS_OVERWRITTEN_BYTES].contains(&b.len()) {
        return None;
    }
    let mut props = Props {
        entries: b.get_u64_le(),
        min_ts: b.get_u64_le(),
        max_ts: b.get_u64_le(),
        ..Props::default()
    };
    if b.has_remaining() {
        props.expiring = b.get_u64_le();
        props.expires_by_ms = b.get_u64_le();
    }
    if b.has_remaining() {
        props.overwritten = b.get_u64_le();
    }
    Some(props)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn props_round_trip_in_every_size() {
        for p in [
            Props {
                entries: 9,
                min_ts: 1,
                max_ts: 7,
                ..Props::default()
            },
            Props {
                entries: 9,
                min_ts: 1,
                max_ts: 7,
                expiring: 4,
                expires_by_ms: 1_800_000_000_000,
                ..Props::default()
            },
            Props {
                entries: 9,
                min_ts: 1,
                max_ts: 7,
                overwritten: 3,
                ..Props::default()
            },
        ] {
            let mut raw = Vec::new();
            encode_props(&mut raw, &p);
            let want = match (p.expiring, p.overwritten) {
                (_, 1..) => PROPS_OVERWRITTEN_BYTES,
                (1.., 0) => PROPS_EXPIRY_BYTES,
                (0, 0) => PROPS_BYTES,
            };
            assert_eq!(unseal(&raw).map(|b| b.len()), Some(want));
            assert_eq!(decode_props(&raw), Some(p));
        }
    }

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
    fn find_by_heads_agrees_with_comparing_whole_keys() {
        // Sorted last keys sharing a long prefix, some a prefix of the
        // next, some with zero bytes where a shorter key is padded, and
        // repeated keys whose blocks end at different timestamps.
        let mut keys: Vec<(Vec<u8>, u64)> = Vec::new();
        for i in 0..300u32 {
            let mut k = format!("k0000000000{i:05}").into_bytes();
            if i % 7 == 0 {
                k.truncate(13);
            }
            if i % 11 == 0 {
                k.push(0);
            }
            keys.push((k, 5));
            if i % 13 == 0 {
                keys.push((keys.last().unwrap().0.clone(), 2));
            }
        }
        keys.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        keys.dedup();
        let idx: Vec<IndexEntry> = keys
            .iter()
            .enumerate()
            .map(|(i, (k, ts))| IndexEntry {
                last_key: Bytes::copy_from_slice(k),
                last_ts: *ts,
                offset: i as u64 * 4096,
                len: 100,
            })
            .collect();
        let mut raw = Vec::new();
        encode_index(&mut raw, &idx);
        let decoded = decode_index(&raw).unwrap();
        assert_eq!(decoded.common, 13, "the keys share `k000000000000`");
        let naive = |key: &[u8], ts: u64| {
            keys.iter()
                .position(|(k, kts)| match k.as_slice().cmp(key) {
                    Ordering::Less => false,
                    Ordering::Greater => true,
                    Ordering::Equal => *kts <= ts,
                })
                .unwrap_or(keys.len())
        };
        let mut probes: Vec<Vec<u8>> = keys.iter().map(|(k, _)| k.clone()).collect();
        for (k, _) in &keys {
            let mut shorter = k.clone();
            shorter.pop();
            probes.push(shorter);
            let mut longer = k.clone();
            longer.push(b'5');
            probes.push(longer);
        }
        probes.extend([
            b"".to_vec(),
            b"a".to_vec(),
            b"k".to_vec(),
            b"k00000000".to_vec(),
            b"k000000000".to_vec(),
            b"k0000000000".to_vec(),
            b"k1".to_vec(),
            b"z".to_vec(),
        ]);
        for p in &probes {
            for ts in [1, 2, 3, 5, 9] {
                assert_eq!(
                    decoded.find(p, ts),
                    naive(p, ts),
                    "key {:?} ts {ts}",
                    String::from_utf8_lossy(p)
                );
            }
        }
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
        let decoded = decode_index(&raw).unwrap();
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded.last_key(0), b"k");
        assert_eq!(
            *decoded.handle(0),
            BlockHandle {
                last_ts: 3,
                offset: 4096,
                len: 100
            }
        );
        raw[0] ^= 1;
        assert_eq!(decode_index(&raw), None);
    }

    #[test]
    fn index_find_returns_the_first_block_at_or_after_the_version() {
        let entry = |k: &'static [u8], ts| IndexEntry {
            last_key: Bytes::from_static(k),
            last_ts: ts,
            offset: 0,
            len: 1,
        };
        // Block 1 ends inside key "b" (at its version 5): older versions of
        // "b" are in block 2.
        let idx = vec![entry(b"a", 1), entry(b"b", 5), entry(b"d", 9)];
        let mut raw = Vec::new();
        encode_index(&mut raw, &idx);
        let decoded = decode_index(&raw).unwrap();
        assert_eq!(decoded.find(b"a", 7), 0);
        assert_eq!(decoded.find(b"a", 0), 1);
        assert_eq!(decoded.find(b"b", 9), 1);
        assert_eq!(decoded.find(b"b", 5), 1);
        assert_eq!(decoded.find(b"b", 4), 2);
        assert_eq!(decoded.find(b"c", 100), 2);
        assert_eq!(decoded.find(b"e", 100), 3);
    }
}
