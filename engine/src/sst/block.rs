//! Data blocks: prefix-compressed versions with restart points and a crc32c.
//!
//! ```text
//! block   := entry* | restart:u32 * n | n:u32 | crc32c:u32 | zero pad to 4 KiB
//! entry   := shared:u16 | unshared:u16 | value_len:u32 | ts:u64 | kind:u8
//!            | key[shared..] | value
//! ```
//! Every `RESTART_INTERVAL`-th entry stores its whole key (shared = 0) and its
//! offset in the restart array, so a seek binary-searches restarts and then
//! scans at most one interval. The crc covers everything before it; the
//! block's length in the index includes the crc but not the padding.

use crate::hint::prefetch;
use crate::key::{compare, compare_bytes, Entry, Kind, Versioned};
use bytes::{Buf, BufMut, Bytes};
use std::cmp::Ordering;

/// Point reads walk at most this many entries after the restart search.
/// 16 made readrandom 5-10% slower than 4 at 1M keys (more entries
/// decoded in a random block); 1 (no prefix compression) measured no
/// faster than 4 and makes tables larger.
pub const RESTART_INTERVAL: usize = 4;
const ENTRY_HEADER_BYTES: usize = 17;
const CACHE_LINE_BYTES: usize = 64;
/// Point reads copy values up to this size out of the block (`Block::get`).
const COPIED_VALUE_MAX: usize = 512;

/// Accumulates one block.
#[derive(Default)]
pub struct BlockBuilder {
    buf: Vec<u8>,
    restarts: Vec<u32>,
    count: usize,
    last_key: Vec<u8>,
}

impl BlockBuilder {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Size of the finished block if finished now.
    pub fn estimated_len(&self) -> usize {
        self.buf.len() + 4 * self.restarts.len() + 8
    }

    pub fn add(&mut self, key: &[u8], ts: u64, kind: Kind, value: &[u8]) {
        let shared = if self.count.is_multiple_of(RESTART_INTERVAL) {
            self.restarts.push(self.buf.len() as u32);
            0
        } else {
            self.last_key
                .iter()
                .zip(key)
                .take_while(|(a, b)| a == b)
                .count()
        };
        self.buf.put_u16_le(shared as u16);
        self.buf.put_u16_le((key.len() - shared) as u16);
        self.buf.put_u32_le(value.len() as u32);
        self.buf.put_u64_le(ts);
        self.buf.put_u8(kind as u8);
        self.buf.extend_from_slice(&key[shared..]);
        self.buf.extend_from_slice(value);
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.count += 1;
    }

    /// Appends the finished block (with crc, without padding) to `out`;
    /// returns its length and resets the builder.
    pub fn finish_into(&mut self, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend_from_slice(&self.buf);
        for r in &self.restarts {
            out.put_u32_le(*r);
        }
        out.put_u32_le(self.restarts.len() as u32);
        let crc = crc32c::crc32c(&out[start..]);
        out.put_u32_le(crc);
        self.buf.clear();
        self.restarts.clear();
        self.count = 0;
        self.last_key.clear();
        out.len() - start
    }
}

/// Why a block failed to parse.
#[derive(Debug, PartialEq, Eq)]
pub enum BlockError {
    Checksum,
    Malformed,
}

/// Restart offsets a block keeps beside its buffer (`Block::head`).
const HEAD_RESTARTS: usize = 16;

/// A verified block. Holding one means its crc passed (or it was built in
/// this process, see [`Block::parse_built`]).
#[derive(Clone)]
pub struct Block {
    data: Bytes,
    restarts_at: usize,
    restart_count: usize,
    /// Whether `head` holds the restart offsets.
    headed: bool,
    /// The restart offsets, when there are at most `HEAD_RESTARTS` and the
    /// block is under 64 KiB (else empty and read from `data`). A point
    /// read finds the block in the cache's slot, where these sit: reading
    /// them from the block's tail was a cache miss of its own, before the
    /// restart entries' (~10% of a cached GET's server CPU in `perf`;
    /// GETs with 16-deep pipelines +3.5%, 6 alternating rounds).
    head: [u16; HEAD_RESTARTS],
}

/// A position in a block: the next entry's offset and the key before it
/// (entries share prefixes with their predecessor).
#[derive(Debug, Clone, Default)]
pub struct BlockCursor {
    pos: usize,
    key: Vec<u8>,
}

impl BlockCursor {
    /// Back to the start of a block, keeping the key buffer's capacity.
    pub fn rewind(&mut self) {
        self.pos = 0;
        self.key.clear();
    }

    /// The key of the entry last decoded.
    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

/// An entry decoded in place ([`Block::step`]): its key is in the cursor
/// that decoded it, its value a range of the block. Iterating so copies no
/// key and touches no refcount per version (a compaction merges millions).
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub ts: u64,
    pub kind: Kind,
    value_at: usize,
    value_len: usize,
}

impl Block {
    /// Verifies the crc and the restart array of `raw` (length from the index).
    pub fn parse(raw: Bytes) -> Result<Block, BlockError> {
        if raw.len() < 8 {
            return Err(BlockError::Malformed);
        }
        let body = raw.len() - 4;
        let crc = u32::from_le_bytes(raw[body..].try_into().unwrap());
        if crc32c::crc32c(&raw[..body]) != crc {
            return Err(BlockError::Checksum);
        }
        Self::parse_layout(raw)
    }

    /// A block [`BlockBuilder::finish_into`] made in this process, whose
    /// crc was computed over these very bytes: the restart array is checked,
    /// the crc is not computed twice (a flush warms the cache with every
    /// block it writes).
    pub(crate) fn parse_built(raw: Bytes) -> Result<Block, BlockError> {
        if raw.len() < 8 {
            return Err(BlockError::Malformed);
        }
        Self::parse_layout(raw)
    }

    fn parse_layout(raw: Bytes) -> Result<Block, BlockError> {
        let body = raw.len() - 4;
        let restart_count = u32::from_le_bytes(raw[body - 4..body].try_into().unwrap()) as usize;
        let restarts_at = (body - 4)
            .checked_sub(restart_count * 4)
            .ok_or(BlockError::Malformed)?;
        let mut block = Block {
            data: raw.slice(..body - 4),
            restarts_at,
            restart_count,
            headed: false,
            head: [0; HEAD_RESTARTS],
        };
        for i in 0..restart_count {
            if block.restart(i) >= restarts_at {
                return Err(BlockError::Malformed);
            }
        }
        if restart_count <= HEAD_RESTARTS && restarts_at <= u16::MAX as usize {
            for i in 0..restart_count {
                block.head[i] = block.restart(i) as u16;
            }
            block.headed = true;
        }
        Ok(block)
    }

    fn restart(&self, i: usize) -> usize {
        if self.headed {
            return self.head[i] as usize;
        }
        let at = self.restarts_at + 4 * i;
        u32::from_le_bytes(self.data[at..at + 4].try_into().unwrap()) as usize
    }

    /// Decodes the entry at `pos` given the previous key; returns the next
    /// position.
    fn decode(
        &self,
        pos: usize,
        key: &mut Vec<u8>,
    ) -> Result<(usize, u64, Kind, usize, usize), BlockError> {
        if pos + ENTRY_HEADER_BYTES > self.restarts_at {
            return Err(BlockError::Malformed);
        }
        let mut h = &self.data[pos..pos + ENTRY_HEADER_BYTES];
        let shared = h.get_u16_le() as usize;
        let unshared = h.get_u16_le() as usize;
        let value_len = h.get_u32_le() as usize;
        let ts = h.get_u64_le();
        let kind = Kind::from_u8(h.get_u8()).ok_or(BlockError::Malformed)?;
        let key_at = pos + ENTRY_HEADER_BYTES;
        let value_at = key_at + unshared;
        let next = value_at + value_len;
        if shared > key.len() || next > self.restarts_at || !kind.value_len_ok(value_len) {
            return Err(BlockError::Malformed);
        }
        key.truncate(shared);
        key.extend_from_slice(&self.data[key_at..value_at]);
        Ok((next, ts, kind, value_at, value_len))
    }

    /// The whole key and ts of restart `i`, read in place (restart entries
    /// share no prefix).
    fn restart_key(&self, i: usize) -> Result<(&[u8], u64), BlockError> {
        let pos = self.restart(i);
        if pos + ENTRY_HEADER_BYTES > self.restarts_at {
            return Err(BlockError::Malformed);
        }
        let mut h = &self.data[pos..pos + ENTRY_HEADER_BYTES];
        let shared = h.get_u16_le() as usize;
        let unshared = h.get_u16_le() as usize;
        h.advance(4);
        let ts = h.get_u64_le();
        let key_at = pos + ENTRY_HEADER_BYTES;
        if shared != 0 || key_at + unshared > self.restarts_at {
            return Err(BlockError::Malformed);
        }
        Ok((&self.data[key_at..key_at + unshared], ts))
    }

    /// Position of the last restart whose version is < (user, ts): where a
    /// walk to the first version ≥ (user, ts) starts.
    fn walk_start(&self, user: &[u8], ts: u64) -> Result<usize, BlockError> {
        self.prefetch_restarts();
        let (mut lo, mut hi) = (0, self.restart_count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (k, k_ts) = self.restart_key(mid)?;
            if compare(k, k_ts, user, ts) == Ordering::Less {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let start = match (self.restart_count, lo) {
            (0, _) => self.restarts_at,
            (_, 0) => 0,
            (_, lo) => self.restart(lo - 1),
        };
        // The walk decodes the interval's entries one after another, each
        // header a miss of its own (~130 bytes apart): prefetch the
        // interval's cache lines first, for the same reason.
        let end = match lo < self.restart_count {
            true => self.restart(lo),
            false => self.restarts_at,
        };
        for at in (start + CACHE_LINE_BYTES..end).step_by(CACHE_LINE_BYTES) {
            prefetch(self.data[at..].as_ptr());
        }
        Ok(start)
    }

    /// Prefetches every restart entry. The binary search of `walk_start`
    /// reads restart entries one after another, each a cache miss in a
    /// block the CPU has not touched yet (~500 bytes apart): a quarter of a
    /// cached point read. Prefetching them all first issues those misses
    /// side by side; a seek across several sources prefetches each
    /// source's block before searching any of them. Prefetch instructions,
    /// not loads: a load that misses holds its place in the reorder buffer
    /// until it returns, so touching the lines with loads stalled the work
    /// meant to overlap them (a seek measured ~5% slower that way).
    pub fn prefetch_restarts(&self) {
        for i in 0..self.restart_count {
            if let Some(at) = self.data.get(self.restart(i)..) {
                prefetch(at.as_ptr());
            }
        }
    }

    /// The newest version of `user` at or below `ts` in this block: the
    /// first entry ≥ (user, ts), if it has that user key. A value up to
    /// `COPIED_VALUE_MAX` bytes is copied out, a larger one is a slice of
    /// the block.
    ///
    /// Sketch: a slice bumps the count in the block buffer's shared header,
    /// a cache miss on a point read that copying 100 bytes (whose lines
    /// the walk just read) does not take; and a small value no longer
    /// keeps its 4 KiB block alive after the cache let it go.
    pub fn get(&self, user: &[u8], ts: u64) -> Result<Option<Versioned>, BlockError> {
        let mut pos = self.walk_start(user, ts)?;
        let mut key = Vec::with_capacity(user.len() + 16);
        while pos < self.restarts_at {
            let (next, k_ts, kind, value_at, value_len) = self.decode(pos, &mut key)?;
            pos = next;
            match compare_bytes(&key, user) {
                Ordering::Less => continue,
                Ordering::Greater => return Ok(None),
                Ordering::Equal if k_ts > ts => continue,
                Ordering::Equal => {
                    let range = value_at..value_at + value_len;
                    let value = match value_len <= COPIED_VALUE_MAX {
                        true => Bytes::copy_from_slice(&self.data[range]),
                        false => self.data.slice(range),
                    };
                    return Ok(Some(Versioned {
                        ts: k_ts,
                        kind,
                        value,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// The first entry ≥ (key, ts), if any in this block.
    pub fn seek(&self, user: &[u8], ts: u64) -> Result<Option<Entry>, BlockError> {
        let (cursor, slot) = self.cursor_at(user, ts)?;
        Ok(slot.map(|slot| self.entry(&cursor, &slot)))
    }

    /// Every entry, in order. Values are slices of the block (no copy).
    pub fn entries(&self) -> Result<Vec<Entry>, BlockError> {
        let mut out = Vec::new();
        let mut cursor = BlockCursor::default();
        while let Some(e) = self.next(&mut cursor)? {
            out.push(e);
        }
        Ok(out)
    }

    /// A cursor after the first entry ≥ (user, ts), and that entry (`None`:
    /// every entry of the block is smaller).
    pub fn cursor_at(
        &self,
        user: &[u8],
        ts: u64,
    ) -> Result<(BlockCursor, Option<Slot>), BlockError> {
        let mut cursor = BlockCursor {
            pos: self.walk_start(user, ts)?,
            key: Vec::with_capacity(user.len() + 16),
        };
        while let Some(slot) = self.step(&mut cursor)? {
            if compare(&cursor.key, slot.ts, user, ts) != Ordering::Less {
                return Ok((cursor, Some(slot)));
            }
        }
        Ok((cursor, None))
    }

    /// Decodes the entry at the cursor in place, moving the cursor on: its
    /// key is then [`BlockCursor::key`] and its value [`Block::value`].
    /// `None` at the block's end.
    pub fn step(&self, cursor: &mut BlockCursor) -> Result<Option<Slot>, BlockError> {
        if cursor.pos >= self.restarts_at {
            return Ok(None);
        }
        let (next, ts, kind, value_at, value_len) = self.decode(cursor.pos, &mut cursor.key)?;
        cursor.pos = next;
        Ok(Some(Slot {
            ts,
            kind,
            value_at,
            value_len,
        }))
    }

    /// The value of an entry [`Block::step`] decoded from this block.
    pub fn value(&self, slot: &Slot) -> &[u8] {
        &self.data[slot.value_at..slot.value_at + slot.value_len]
    }

    /// The entry `slot` names, with the key the cursor holds for it, as an
    /// owned entry (the key copied, the value a slice of the block).
    pub fn entry(&self, cursor: &BlockCursor, slot: &Slot) -> Entry {
        Entry {
            key: Bytes::copy_from_slice(&cursor.key),
            ts: slot.ts,
            kind: slot.kind,
            value: self
                .data
                .slice(slot.value_at..slot.value_at + slot.value_len),
        }
    }

    /// The entry at the cursor, moving it on; `None` at the block's end.
    pub fn next(&self, cursor: &mut BlockCursor) -> Result<Option<Entry>, BlockError> {
        Ok(self.step(cursor)?.map(|slot| self.entry(cursor, &slot)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(n: usize) -> Block {
        let mut b = BlockBuilder::default();
        for i in 0..n {
            let key = format!("key{:05}", i / 2);
            b.add(
                key.as_bytes(),
                100 - (i % 2) as u64,
                Kind::Put,
                format!("v{i}").as_bytes(),
            );
        }
        let mut out = Vec::new();
        b.finish_into(&mut out);
        Block::parse(Bytes::from(out)).unwrap()
    }

    #[test]
    fn entries_round_trip_and_seek_finds_first_at_or_after() {
        let block = build(100);
        let all = block.entries().unwrap();
        assert_eq!(all.len(), 100);
        assert_eq!(all[7].key, "key00003");
        assert_eq!(all[7].ts, 99);
        assert_eq!(all[7].value, "v7");
        let hit = block.seek(b"key00010", 99).unwrap().unwrap();
        assert_eq!((hit.key.as_ref(), hit.ts), (b"key00010".as_ref(), 99));
        let next = block.seek(b"key00010", 98).unwrap().unwrap();
        assert_eq!((next.key.as_ref(), next.ts), (b"key00011".as_ref(), 100));
        assert!(block.seek(b"zzz", 0).unwrap().is_none());
    }

    #[test]
    fn a_block_built_here_parses_the_same_without_its_crc_recomputed() {
        let mut b = BlockBuilder::default();
        for i in 0..40u64 {
            b.add(format!("key{i:05}").as_bytes(), 7, Kind::Put, b"value");
        }
        let mut out = Vec::new();
        b.finish_into(&mut out);
        let checked = Block::parse(Bytes::from(out.clone())).unwrap();
        let built = Block::parse_built(Bytes::from(out.clone())).unwrap();
        assert_eq!(built.entries().unwrap(), checked.entries().unwrap());
        // The layout is still checked: a restart past the entries is refused.
        let body = out.len() - 4;
        out[body - 8..body - 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Block::parse_built(Bytes::from(out)),
            Err(BlockError::Malformed)
        ));
    }

    #[test]
    fn get_finds_the_newest_version_at_or_below_ts_of_that_key_only() {
        let block = build(100);
        let v = block.get(b"key00010", 100).unwrap().unwrap();
        assert_eq!((v.ts, v.value.as_ref()), (100, b"v20".as_ref()));
        let v = block.get(b"key00010", 99).unwrap().unwrap();
        assert_eq!((v.ts, v.value.as_ref()), (99, b"v21".as_ref()));
        // Older than every version of the key: the next key is not it.
        assert_eq!(block.get(b"key00010", 98).unwrap(), None);
        assert_eq!(block.get(b"key0001", 100).unwrap(), None);
        assert_eq!(block.get(b"key00049", 1000).unwrap().unwrap().value, "v98");
        assert_eq!(block.get(b"zzz", 1000).unwrap(), None);
        assert_eq!(block.get(b"a", 1000).unwrap(), None);
    }

    #[test]
    fn get_copies_small_values_out_and_slices_large_ones() {
        let large = vec![7u8; COPIED_VALUE_MAX + 1];
        let mut b = BlockBuilder::default();
        b.add(b"large", 1, Kind::Put, &large);
        b.add(b"small", 1, Kind::Put, b"tiny");
        let mut out = Vec::new();
        b.finish_into(&mut out);
        let block = Block::parse(Bytes::from(out)).unwrap();
        let inside = |v: &Bytes| block.data.as_ptr_range().contains(&v.as_ptr());
        let small = block.get(b"small", 1).unwrap().unwrap().value;
        assert_eq!(small, "tiny");
        assert!(!inside(&small), "a small value must not pin its block");
        let big = block.get(b"large", 1).unwrap().unwrap().value;
        assert_eq!(big, large);
        assert!(inside(&big), "a large value is a slice of the block");
    }

    #[test]
    fn restart_offsets_held_beside_the_block_or_read_from_it_find_the_same() {
        // 60 entries have 15 restarts (held in `head`), 100 have 25 (read
        // from the block's tail).
        for n in [1, 60, 100] {
            let block = build(n);
            assert_eq!(block.headed, n <= 4 * HEAD_RESTARTS, "{n} entries");
            for e in block.entries().unwrap() {
                let v = block.get(&e.key, e.ts).unwrap().unwrap();
                assert_eq!((v.ts, v.value), (e.ts, e.value), "{n} entries");
            }
        }
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let mut b = BlockBuilder::default();
        b.add(b"a", 1, Kind::Put, b"x");
        let mut out = Vec::new();
        b.finish_into(&mut out);
        out[3] ^= 4;
        assert_eq!(
            Block::parse(Bytes::from(out)).err(),
            Some(BlockError::Checksum)
        );
    }
}
