//! Bloom filters over user keys, ~10 bits per key, from one xxh3 hash per
//! key. Two layouts; tables written since 2026-11-26 use the first:
//!
//! ```text
//! filter := 0x80|probes:u8 | line*      (cache-local: line := 8 x u64 LE)
//!         | probes:u8 | bits[n/8]       (classic, probes < 0x80)
//! ```
//!
//! Cache-local: the high 32 bits of the hash pick one 512-bit line
//! (multiply-shift, no division) and every probe falls inside it, each
//! taking the top 9 bits of the low half, multiplied by the golden ratio
//! between probes. A lookup touches one cache line.
//!
//! Classic: 7 probes anywhere in the filter by double hashing, each a
//! 64-bit modulo. Building one for a 64 MiB flush (~320k keys) held the
//! shard ~17 ms, and a lookup touched up to 7 cache lines.

use xxhash_rust::xxh3::xxh3_64;

pub const BITS_PER_KEY: usize = 10;
const LINE_BITS: usize = 512;
const BLOCKED: u8 = 0x80;
/// Probes of the cache-local layout: with ~51 keys per line, 6 gave the
/// fewest false positives of 5-7 (~1%).
const BLOCKED_PROBES: u8 = 6;

pub fn hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// 64 bytes of a cache-local filter, aligned so a probe reads one cache line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Line([u64; 8]);

/// A filter read back from a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Blocked { probes: u8, lines: Box<[Line]> },
    Classic(Vec<u8>),
}

/// Builds the (cache-local) filter bytes for a set of key hashes.
pub fn build(hashes: &[u64]) -> Vec<u8> {
    let mut filter = Growing::for_keys(hashes.len());
    for &h in hashes {
        filter.insert(h);
    }
    let mut out = Vec::with_capacity(1 + filter.lines.len() * LINE_BITS / 8);
    out.push(BLOCKED | BLOCKED_PROBES);
    for line in filter.lines.iter() {
        for word in line.0 {
            out.extend_from_slice(&word.to_le_bytes());
        }
    }
    out
}

/// A cache-local filter that keys join one at a time (a memtable's), in
/// the layout of a table's, sized once for the keys expected: past them
/// its false positives grow.
#[derive(Debug, Clone)]
pub struct Growing {
    lines: Box<[Line]>,
}

impl Growing {
    pub fn for_keys(keys: usize) -> Self {
        let count = (keys * BITS_PER_KEY).div_ceil(LINE_BITS).max(1);
        Growing {
            lines: vec![Line::default(); count].into_boxed_slice(),
        }
    }

    pub fn insert(&mut self, h: u64) {
        let count = self.lines.len();
        let line = &mut self.lines[line_of(h, count)];
        for (word, mask) in probes(h, BLOCKED_PROBES) {
            line.0[word] |= mask;
        }
    }

    /// Starts loading the line of `h`.
    pub fn prefetch(&self, h: u64) {
        let line = &self.lines[line_of(h, self.lines.len())];
        crate::hint::prefetch((line as *const Line).cast());
    }

    /// True if the key may have joined; false means it certainly has not.
    pub fn may_contain(&self, h: u64) -> bool {
        lines_may_contain(&self.lines, h, BLOCKED_PROBES)
    }
}

fn lines_may_contain(lines: &[Line], h: u64, k: u8) -> bool {
    let line = &lines[line_of(h, lines.len())];
    probes(h, k).all(|(word, mask)| line.0[word] & mask != 0)
}

fn line_of(h: u64, lines: usize) -> usize {
    (((h >> 32) * lines as u64) >> 32) as usize
}

/// (word, bit mask) of each probe within a line.
fn probes(h: u64, probes: u8) -> impl Iterator<Item = (usize, u64)> {
    let mut x = h as u32;
    (0..probes).map(move |_| {
        let bit = x >> 23;
        x = x.wrapping_mul(0x9E37_79B9);
        ((bit >> 6) as usize, 1u64 << (bit & 63))
    })
}

impl Filter {
    /// Reads a filter whose checksum passed. `None`: malformed.
    pub fn decode(bytes: &[u8]) -> Option<Filter> {
        let (&head, rest) = bytes.split_first()?;
        if head & BLOCKED == 0 {
            return Some(Filter::Classic(bytes.to_vec()));
        }
        if rest.is_empty() || !rest.len().is_multiple_of(LINE_BITS / 8) {
            return None;
        }
        let lines = rest
            .chunks_exact(LINE_BITS / 8)
            .map(|chunk| {
                let mut line = Line::default();
                for (word, b) in line.0.iter_mut().zip(chunk.chunks_exact(8)) {
                    *word = u64::from_le_bytes(b.try_into().expect("8 bytes"));
                }
                line
            })
            .collect();
        Some(Filter::Blocked {
            probes: head & !BLOCKED,
            lines,
        })
    }

    /// True if the key may be present; false means it certainly is not.
    pub fn may_contain(&self, h: u64) -> bool {
        match self {
            Filter::Blocked { probes: k, lines } => lines_may_contain(lines, h, *k),
            Filter::Classic(filter) => classic_may_contain(filter, h),
        }
    }

    /// Memory the filter holds.
    pub fn resident_bytes(&self) -> usize {
        match self {
            Filter::Blocked { lines, .. } => std::mem::size_of_val(&**lines),
            Filter::Classic(filter) => filter.len(),
        }
    }
}

fn classic_bits(h: u64, probes: u8, bits: usize) -> impl Iterator<Item = usize> {
    let h1 = h as u32 as u64;
    let h2 = (h >> 32) | 1;
    (0..probes as u64).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % bits as u64) as usize)
}

fn classic_may_contain(filter: &[u8], h: u64) -> bool {
    let Some((&probes, bits)) = filter.split_first() else {
        return true;
    };
    if bits.is_empty() {
        return true;
    }
    classic_bits(h, probes, bits.len() * 8).all(|bit| bits[bit / 8] & (1 << (bit % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classic layout as tables before 2026-11-26 were written.
    fn build_classic(hashes: &[u64]) -> Vec<u8> {
        let bits = (hashes.len() * BITS_PER_KEY).max(64).next_multiple_of(8);
        let mut out = vec![0u8; 1 + bits / 8];
        out[0] = 7;
        for &h in hashes {
            for bit in classic_bits(h, 7, bits) {
                out[1 + bit / 8] |= 1 << (bit % 8);
            }
        }
        out
    }

    fn keys(range: std::ops::Range<u32>) -> Vec<u64> {
        range.map(|i| hash(&i.to_le_bytes())).collect()
    }

    fn false_positives(filter: &Filter) -> usize {
        keys(10_000..110_000)
            .into_iter()
            .filter(|&h| filter.may_contain(h))
            .count()
    }

    #[test]
    fn no_false_negatives_and_about_one_percent_false_positives() {
        let present = keys(0..10_000);
        let filter = Filter::decode(&build(&present)).unwrap();
        assert!(matches!(filter, Filter::Blocked { probes: 6, .. }));
        assert!(present.iter().all(|&h| filter.may_contain(h)));
        let fp = false_positives(&filter);
        assert!(fp < 1_500, "{fp} false positives in 100k");
        assert_eq!(
            filter.resident_bytes(),
            10_000 * BITS_PER_KEY / 512 * 64 + 64
        );
    }

    #[test]
    fn classic_filters_of_older_tables_still_read() {
        let present = keys(0..10_000);
        let filter = Filter::decode(&build_classic(&present)).unwrap();
        assert!(matches!(filter, Filter::Classic(_)));
        assert!(present.iter().all(|&h| filter.may_contain(h)));
        let fp = false_positives(&filter);
        assert!(fp < 2_000, "{fp} false positives in 100k");
    }

    #[test]
    fn empty_and_malformed_filters() {
        let empty = Filter::decode(&build(&[])).unwrap();
        assert!(!empty.may_contain(hash(b"k")));
        assert_eq!(Filter::decode(&[]), None);
        assert_eq!(Filter::decode(&[BLOCKED | 6]), None);
        assert_eq!(Filter::decode(&[BLOCKED | 6, 0, 0]), None);
    }
}
