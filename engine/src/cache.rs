//! Block cache of one shard: verified data blocks by (table id, offset),
//! evicted by CLOCK once the byte budget is exceeded. Single-threaded, so
//! `RefCell`s around a hash map and the clock's ring do.

use crate::sst::block::Block;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

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

/// A cached block, its charge against the budget, and whether it was read
/// since the clock hand last passed it.
struct Slot {
    block: Block,
    bytes: usize,
    referenced: Cell<bool>,
}

type Map = HashMap<BlockId, Slot, BuildHasherDefault<BlockIdHasher>>;

/// Evicts by CLOCK (second chance): a hit only sets the flag of its slot,
/// which sits in the bucket the lookup already read. An LRU list moved the
/// hit to its head on every read, touching its neighbours' nodes as well
/// (readrandom ran ~7% faster without). The hand sweeps `ring` (blocks in
/// insertion order): a flagged block loses its flag and goes round again,
/// an unflagged one is evicted.
pub struct BlockCache {
    map: RefCell<Map>,
    ring: RefCell<VecDeque<BlockId>>,
    capacity_bytes: usize,
    used_bytes: Cell<usize>,
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl BlockCache {
    pub fn new(capacity_bytes: usize) -> Self {
        BlockCache {
            map: RefCell::new(Map::default()),
            ring: RefCell::default(),
            capacity_bytes,
            used_bytes: Cell::new(0),
            hits: Cell::new(0),
            misses: Cell::new(0),
        }
    }

    pub fn get(&self, table: u64, offset: u64) -> Option<Block> {
        self.with(table, offset, Block::clone)
    }

    /// Runs `f` on the cached block, without cloning it: a clone bumps the
    /// count in the block buffer's shared header, a cache miss of its own
    /// on a point read (~5% of a cached GET's server CPU).
    pub fn with<R>(&self, table: u64, offset: u64, f: impl FnOnce(&Block) -> R) -> Option<R> {
        let found = self.map.borrow().get(&(table, offset)).map(|slot| {
            slot.referenced.set(true);
            f(&slot.block)
        });
        match found {
            Some(_) => self.hits.set(self.hits.get() + 1),
            None => self.misses.set(self.misses.get() + 1),
        }
        found
    }

    pub fn insert(&self, table: u64, offset: u64, block: Block, bytes: usize) {
        if bytes > self.capacity_bytes {
            return;
        }
        let mut map = self.map.borrow_mut();
        if let Some(slot) = map.get_mut(&(table, offset)) {
            // Loaded twice (two readers missed at once): keep one copy.
            self.used_bytes
                .set(self.used_bytes.get() - slot.bytes + bytes);
            slot.block = block;
            slot.bytes = bytes;
            return;
        }
        // Make room first, so the sweep never meets the new block. Each
        // block is in the ring once, so it ends within two turns (the
        // first clears every flag).
        let mut ring = self.ring.borrow_mut();
        while self.used_bytes.get() + bytes > self.capacity_bytes {
            let Some(id) = ring.pop_front() else { break };
            let referenced = match map.get(&id) {
                Some(slot) => slot.referenced.replace(false),
                None => continue,
            };
            if referenced {
                ring.push_back(id);
            } else if let Some(gone) = map.remove(&id) {
                self.used_bytes.set(self.used_bytes.get() - gone.bytes);
            }
        }
        let slot = Slot {
            block,
            bytes,
            referenced: Cell::new(false),
        };
        map.insert((table, offset), slot);
        ring.push_back((table, offset));
        self.used_bytes.set(self.used_bytes.get() + bytes);
    }

    pub fn used_bytes(&self) -> usize {
        self.used_bytes.get()
    }

    pub fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }

    pub fn hits(&self) -> u64 {
        self.hits.get()
    }

    pub fn misses(&self) -> u64 {
        self.misses.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Kind;
    use crate::sst::block::BlockBuilder;
    use bytes::Bytes;

    fn block() -> Block {
        let mut b = BlockBuilder::default();
        b.add(b"key", 1, Kind::Put, b"value");
        let mut out = Vec::new();
        b.finish_into(&mut out);
        Block::parse(Bytes::from(out)).expect("a built block parses")
    }

    #[test]
    fn the_budget_holds_and_the_oldest_unread_block_goes_first() {
        let cache = BlockCache::new(300);
        for offset in 0..3 {
            cache.insert(1, offset, block(), 100);
        }
        assert_eq!(cache.used_bytes(), 300);
        cache.insert(1, 3, block(), 100);
        assert_eq!(cache.used_bytes(), 300);
        assert!(cache.get(1, 0).is_none(), "the oldest block was evicted");
        for offset in 1..4 {
            assert!(cache.get(1, offset).is_some(), "block {offset} is cached");
        }
        // Loading a block again charges the difference only.
        cache.insert(1, 3, block(), 50);
        assert_eq!(cache.used_bytes(), 250);
        assert!(cache.get(1, 3).is_some());
        assert_eq!((cache.hits(), cache.misses()), (4, 1));
    }

    #[test]
    fn a_block_read_since_the_hand_passed_gets_a_second_chance() {
        let cache = BlockCache::new(300);
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
        assert_eq!(cache.used_bytes(), 300);
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
        assert_eq!(cache.used_bytes(), 0);
        assert!(cache.get(1, 0).is_none());
    }
}
