//! Block cache of one shard: verified data blocks by (table id, offset),
//! evicted by CLOCK once the byte budget is exceeded. The row cache
//! (`row_cache.rs`) evicts by CLOCK too, from a table of its own.

use crate::sst::block::Block;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

type BlockId = (u64, u64);

/// Hashes a (table id, offset) pair with two multiply-xor rounds. The
/// default SipHash cost more than the rest of a cache hit (~6% of a point
/// read's CPU); ids are ours, not an attacker's, so no keyed hash is needed.
#[derive(Default)]
struct BlockIdHasher(u64);

impl Hasher for BlockIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0 ^ x)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }

    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0xD6E8_FEB8_6659_FD93)
    }
}

/// A cached value, its charge against the budget, and whether it was read
/// since the clock hand last passed it.
struct Slot<V> {
    value: V,
    bytes: usize,
    referenced: Cell<bool>,
}

/// A byte-budgeted map evicting by CLOCK (second chance): a hit only sets
/// the flag of its slot, which sits in the bucket the lookup already read.
/// An LRU list moved the hit to its head on every read, touching its
/// neighbours' nodes as well (readrandom ran ~7% faster without). The hand
/// sweeps `ring` (keys in insertion order): a flagged entry loses its flag
/// and goes round again, an unflagged one is evicted. Single-threaded, so
/// `RefCell`s do.
///
/// Invariant: every key of `map` is in `ring` exactly once; `used_bytes` is
/// the sum of the slots' charges.
pub struct ClockCache<K, V, S> {
    map: RefCell<HashMap<K, Slot<V>, S>>,
    ring: RefCell<VecDeque<K>>,
    capacity_bytes: usize,
    used_bytes: Cell<usize>,
}

impl<K: Hash + Eq + Copy, V, S: BuildHasher + Default> ClockCache<K, V, S> {
    pub fn new(capacity_bytes: usize) -> Self {
        ClockCache {
            map: RefCell::new(HashMap::default()),
            ring: RefCell::default(),
            capacity_bytes,
            used_bytes: Cell::new(0),
        }
    }

    /// Runs `f` on the cached value and marks it read.
    pub fn with<R>(&self, key: &K, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.map.borrow().get(key).map(|slot| {
            slot.referenced.set(true);
            f(&slot.value)
        })
    }

    /// Caches `value` under `key`, charging `bytes`, in place of any value
    /// already there. A value larger than the whole budget is not cached.
    pub fn insert(&self, key: K, value: V, bytes: usize) {
        if bytes > self.capacity_bytes {
            return;
        }
        let mut map = self.map.borrow_mut();
        if let Some(slot) = map.get_mut(&key) {
            self.used_bytes
                .set(self.used_bytes.get() - slot.bytes + bytes);
            slot.value = value;
            slot.bytes = bytes;
            return;
        }
        // Make room first, so the sweep never meets the new entry. Each
        // key is in the ring once, so it ends within two turns (the first
        // clears every flag).
        let mut ring = self.ring.borrow_mut();
        while self.used_bytes.get() + bytes > self.capacity_bytes {
            let Some(old) = ring.pop_front() else { break };
            let referenced = match map.get(&old) {
                Some(slot) => slot.referenced.replace(false),
                None => continue,
            };
            if referenced {
                ring.push_back(old);
            } else if let Some(gone) = map.remove(&old) {
                self.used_bytes.set(self.used_bytes.get() - gone.bytes);
            }
        }
        let slot = Slot {
            value,
            bytes,
            referenced: Cell::new(false),
        };
        map.insert(key, slot);
        ring.push_back(key);
        self.used_bytes.set(self.used_bytes.get() + bytes);
    }

    pub fn used_bytes(&self) -> usize {
        self.used_bytes.get()
    }

    pub fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }
}

/// What a cache holds and how often it answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub bytes: usize,
    pub capacity_bytes: usize,
    pub hits: u64,
    pub misses: u64,
}

/// How often a cache answered.
#[derive(Default)]
pub struct Counts {
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl Counts {
    pub fn record(&self, hit: bool) {
        let counter = match hit {
            true => &self.hits,
            false => &self.misses,
        };
        counter.set(counter.get() + 1);
    }

    /// These counts with what a cache holds of its capacity.
    pub fn stats(&self, bytes: usize, capacity_bytes: usize) -> CacheStats {
        CacheStats {
            bytes,
            capacity_bytes,
            hits: self.hits.get(),
            misses: self.misses.get(),
        }
    }
}

/// What a cached block costs beyond its own bytes: its map entry, with
/// the map's spare capacity (at most half empty after it doubles), and its
/// slot in the clock's ring. Uncharged, they were ~13% on top of a 128 MiB
/// cache of 1 KB values' blocks (heaptrack: 17 MB for the map at its peak;
/// docs/benchmarks.md, "Resident memory").
pub const BLOCK_ENTRY_BYTES: usize =
    2 * std::mem::size_of::<(BlockId, Slot<Block>)>() + std::mem::size_of::<BlockId>();

/// Verified data blocks by (table id, offset), with hit and miss counts.
pub struct BlockCache {
    blocks: ClockCache<BlockId, Block, BuildHasherDefault<BlockIdHasher>>,
    counts: Counts,
}

impl BlockCache {
    pub fn new(capacity_bytes: usize) -> Self {
        BlockCache {
            blocks: ClockCache::new(capacity_bytes),
            counts: Counts::default(),
        }
    }

    pub fn get(&self, table: u64, offset: u64) -> Option<Block> {
        self.with(table, offset, Block::clone)
    }

    /// Runs `f` on the cached block, without cloning it: a clone bumps the
    /// count in the block buffer's shared header, a cache miss of its own
    /// on a point read (~5% of a cached GET's server CPU).
    pub fn with<R>(&self, table: u64, offset: u64, f: impl FnOnce(&Block) -> R) -> Option<R> {
        let found = self.blocks.with(&(table, offset), f);
        self.counts.record(found.is_some());
        found
    }

    /// Caches a block of `bytes`, charged with its entry (loaded twice
    /// when two readers missed at once: the second copy replaces the first
    /// and is charged the difference).
    pub fn insert(&self, table: u64, offset: u64, block: Block, bytes: usize) {
        self.blocks
            .insert((table, offset), block, bytes + BLOCK_ENTRY_BYTES);
    }

    pub fn stats(&self) -> CacheStats {
        self.counts
            .stats(self.blocks.used_bytes(), self.blocks.capacity_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Kind;
    use crate::sst::block::BlockBuilder;
    use bytes::Bytes;

    /// What a block of `bytes` is charged.
    fn charged(bytes: usize) -> usize {
        bytes + BLOCK_ENTRY_BYTES
    }

    fn block() -> Block {
        let mut b = BlockBuilder::default();
        b.add(b"key", 1, Kind::Put, b"value");
        let mut out = Vec::new();
        b.finish_into(&mut out);
        Block::parse(Bytes::from(out)).expect("a built block parses")
    }

    #[test]
    fn the_budget_holds_and_the_oldest_unread_block_goes_first() {
        let cache = BlockCache::new(3 * charged(100));
        for offset in 0..3 {
            cache.insert(1, offset, block(), 100);
        }
        assert_eq!(cache.stats().bytes, 3 * charged(100));
        cache.insert(1, 3, block(), 100);
        assert_eq!(cache.stats().bytes, 3 * charged(100));
        assert!(cache.get(1, 0).is_none(), "the oldest block was evicted");
        for offset in 1..4 {
            assert!(cache.get(1, offset).is_some(), "block {offset} is cached");
        }
        // Loading a block again charges the difference only.
        cache.insert(1, 3, block(), 50);
        assert_eq!(cache.stats().bytes, 2 * charged(100) + charged(50));
        assert!(cache.get(1, 3).is_some());
        assert_eq!((cache.stats().hits, cache.stats().misses), (4, 1));
    }

    #[test]
    fn a_block_read_since_the_hand_passed_gets_a_second_chance() {
        let cache = BlockCache::new(3 * charged(100));
        for offset in 0..3 {
            cache.insert(1, offset, block(), 100);
        }
        assert!(cache.get(1, 0).is_some());
        // Block 0 is the oldest but was read: block 1 goes instead.
        cache.insert(1, 3, block(), 100);
        assert!(cache.get(1, 1).is_none());
        assert!(cache.get(1, 0).is_some());
        // Every block read: one sweep clears the flags, then the oldest goes.
        for offset in [2, 3] {
            assert!(cache.get(1, offset).is_some());
        }
        cache.insert(1, 4, block(), 100);
        assert_eq!(cache.stats().bytes, 3 * charged(100));
        assert!(
            cache.get(1, 2).is_none(),
            "after a full turn the hand's first goes"
        );
        for offset in [0, 3, 4] {
            assert!(cache.get(1, offset).is_some(), "block {offset} is cached");
        }
    }

    #[test]
    fn a_block_larger_than_the_budget_is_not_cached() {
        let cache = BlockCache::new(100);
        cache.insert(1, 0, block(), 101);
        assert_eq!(cache.stats().bytes, 0);
        assert!(cache.get(1, 0).is_none());
    }
}
