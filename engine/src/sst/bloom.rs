//! Bloom filter over user keys, ~10 bits per key and 7 probes (≈1% false
//! positives), probes derived from one xxh3 hash by double hashing.
//!
//! ```text
//! filter := probes:u8 | bits[n/8]
//! ```

use xxhash_rust::xxh3::xxh3_64;

pub const BITS_PER_KEY: usize = 10;
const PROBES: u8 = 7;

pub fn hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// Builds the filter bytes for a set of key hashes.
pub fn build(hashes: &[u64]) -> Vec<u8> {
    let bits = (hashes.len() * BITS_PER_KEY).max(64).next_multiple_of(8);
    let mut out = vec![0u8; 1 + bits / 8];
    out[0] = PROBES;
    let filter = &mut out[1..];
    for &h in hashes {
        for bit in probe_bits(h, PROBES, bits) {
            filter[bit / 8] |= 1 << (bit % 8);
        }
    }
    out
}

fn probe_bits(h: u64, probes: u8, bits: usize) -> impl Iterator<Item = usize> {
    let h1 = h as u32 as u64;
    let h2 = (h >> 32) | 1;
    (0..probes as u64).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % bits as u64) as usize)
}

/// True if the key may be present; false means it certainly is not.
pub fn may_contain(filter: &[u8], h: u64) -> bool {
    let Some((&probes, bits)) = filter.split_first() else {
        return true;
    };
    if bits.is_empty() {
        return true;
    }
    probe_bits(h, probes, bits.len() * 8).all(|bit| bits[bit / 8] & (1 << (bit % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_about_one_percent_false_positives() {
        let keys: Vec<u64> = (0..10_000u32).map(|i| hash(&i.to_le_bytes())).collect();
        let filter = build(&keys);
        assert!(keys.iter().all(|&h| may_contain(&filter, h)));
        let false_positives = (10_000..110_000u32)
            .filter(|i| may_contain(&filter, hash(&i.to_le_bytes())))
            .count();
        assert!(
            false_positives < 2_000,
            "{false_positives} false positives in 100k"
        );
    }
}
