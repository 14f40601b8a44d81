//! Block cache of one shard: verified data blocks by (table id, offset),
//! evicted least-recently-used once the byte budget is exceeded.
//! Single-threaded, so a `RefCell` around `lru::LruCache` does.

use crate::sst::block::Block;
use std::cell::{Cell, RefCell};
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

type Map = lru::LruCache<BlockId, (Block, usize), BuildHasherDefault<BlockIdHasher>>;

pub struct BlockCache {
    map: RefCell<Map>,
    capacity_bytes: usize,
    used_bytes: Cell<usize>,
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl BlockCache {
    pub fn new(capacity_bytes: usize) -> Self {
        BlockCache {
            map: RefCell::new(Map::unbounded_with_hasher(Default::default())),
            capacity_bytes,
            used_bytes: Cell::new(0),
            hits: Cell::new(0),
            misses: Cell::new(0),
        }
    }

    pub fn get(&self, table: u64, offset: u64) -> Option<Block> {
        let found = self
            .map
            .borrow_mut()
            .get(&(table, offset))
            .map(|(b, _)| b.clone());
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
        if let Some((_, old)) = map.put((table, offset), (block, bytes)) {
            self.used_bytes.set(self.used_bytes.get() - old);
        }
        self.used_bytes.set(self.used_bytes.get() + bytes);
        while self.used_bytes.get() > self.capacity_bytes {
            match map.pop_lru() {
                Some((_, (_, b))) => self.used_bytes.set(self.used_bytes.get() - b),
                None => break,
            }
        }
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
