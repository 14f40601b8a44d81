//! Concurrency control of one shard: multi-version timestamp ordering.
//!
//! Pure bookkeeping with no I/O and no executor, so the same code runs in
//! the engine and in the loom models of `loom-tests/`. Keys are tracked by
//! their 64-bit xxh3 hash: a collision can only cause a needless wait or
//! abort, never a missed conflict.
//!
//! Rules, for a transaction at timestamp `ts` touching key `k`:
//! - An intent (undecided write) of an older transaction on `k` makes it
//!   wait; an intent of a younger one makes a write abort and a read ignore
//!   it (that version would sit above `ts`). Waits only go from younger to
//!   older, so no wait cycle, hence no deadlock, can form.
//! - A write aborts if `k` was read at or after `ts`, or written after `ts`
//!   (by anyone), or a range read covered `ts` (the read floor).
//! - An admitted transaction raises `k`'s read timestamp (reads) or write
//!   timestamp and places an intent (writes) before it reads anything.

use std::collections::{BTreeMap, HashMap};
use xxhash_rust::xxh3::xxh3_64;

type HashKeyed<V> = HashMap<u64, V, nohash_hasher::BuildNoHashHasher<u64>>;

/// The hash concurrency control tracks a key by.
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// Why a transaction could not be admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// A younger transaction holds an intent on a key this one writes.
    YoungerIntent { holder: u64 },
    /// The key was read at or after this transaction's timestamp.
    ReadLater { read_ts: u64 },
    /// The key was written after this transaction's timestamp.
    WrittenLater { write_ts: u64 },
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conflict::YoungerIntent { holder } => {
                write!(
                    f,
                    "a younger transaction ({holder}) holds an intent on a key it writes"
                )
            }
            Conflict::ReadLater { read_ts } => write!(f, "a key it writes was read at {read_ts}"),
            Conflict::WrittenLater { write_ts } => {
                write!(f, "a key it writes was written at {write_ts}")
            }
        }
    }
}

/// The outcome of [`Concurrency::admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Intents are placed and read timestamps raised.
    Admitted,
    /// An older transaction's intent is in the way: wait for it to resolve
    /// and try again. Nothing was changed.
    WaitFor(u64),
    /// The transaction must abort (and may retry at a new timestamp).
    /// Nothing was changed.
    Abort(Conflict),
}

/// Keys per set of the [`TsCache`]: with its floor, a set fills one
/// 64-byte cache line.
const TS_WAYS: usize = 2;

/// One line of the [`TsCache`]: the keys whose hashes map here, and the
/// largest timestamps of those it evicted.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
struct TsSet {
    /// (read, write): at least those of every key evicted from this set.
    floor: (u64, u64),
    /// (key hash, read ts, write ts); both timestamps 0 when unused.
    ways: [(u64, u64, u64); TS_WAYS],
}

/// Latest read and write timestamps per key, bounded: a set-associative
/// table of one cache line per set. A key maps to one set; when its
/// ways are full, the way with the oldest timestamps leaves and they
/// raise the set's floor, which every key of the set then reports.
///
/// Sketch: two generations of a `HashMap` (the older one's maxima
/// becoming a floor when it was dropped) cost a write a cache miss on
/// the bucket its key was inserted into, which no prefetch could reach:
/// ~7% of the server's CPU under 16-deep pipelined SETs. A set is one
/// line, prefetched with the memtable path ahead of the write.
///
/// Invariant: for every key, the reported read (write) timestamp is at least
/// the largest one ever recorded for it.
#[derive(Debug)]
pub struct TsCache {
    sets: Box<[TsSet]>,
    /// Raised for every key (after recovery: the recovered clock).
    floor: (u64, u64),
}

impl TsCache {
    /// A cache that holds `keys` keys (rounded up to a power of two).
    pub fn new(keys: usize) -> Self {
        let sets = keys.div_ceil(TS_WAYS).next_power_of_two();
        TsCache {
            sets: vec![TsSet::default(); sets].into_boxed_slice(),
            floor: (0, 0),
        }
    }

    fn set_of(&self, hash: u64) -> usize {
        // The low bits of the hash pick the shard and the memtable filter
        // line: mix before picking the set.
        (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & (self.sets.len() - 1)
    }

    /// (read ts, write ts) of a key hash.
    pub fn get(&self, hash: u64) -> (u64, u64) {
        let set = &self.sets[self.set_of(hash)];
        let mut r = self.floor.0.max(set.floor.0);
        let mut w = self.floor.1.max(set.floor.1);
        for &(h, wr, ww) in &set.ways {
            if h == hash {
                r = r.max(wr);
                w = w.max(ww);
            }
        }
        (r, w)
    }

    pub fn record_read(&mut self, hash: u64, ts: u64) {
        self.record(hash, ts, 0);
    }

    pub fn record_write(&mut self, hash: u64, ts: u64) {
        self.record(hash, 0, ts);
    }

    /// Raises the floors of every key (after recovery: the recovered clock).
    pub fn raise_floor(&mut self, ts: u64) {
        self.floor = (self.floor.0.max(ts), self.floor.1.max(ts));
    }

    /// Starts loading the sets of `hashes`.
    pub fn prefetch(&self, hashes: &[u64]) {
        for &hash in hashes {
            crate::hint::prefetch((&self.sets[self.set_of(hash)] as *const TsSet).cast());
        }
    }

    fn record(&mut self, hash: u64, read: u64, write: u64) {
        let at = self.set_of(hash);
        let set = &mut self.sets[at];
        let used = |&(_, r, w): &(u64, u64, u64)| r != 0 || w != 0;
        let way = match set.ways.iter().position(|way| way.0 == hash && used(way)) {
            Some(way) => way,
            None => {
                // The unused or oldest way makes room.
                let (way, &(_, r, w)) = set
                    .ways
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, &(_, r, w))| r.max(w))
                    .expect("a set has ways");
                set.floor = (set.floor.0.max(r), set.floor.1.max(w));
                set.ways[way] = (hash, 0, 0);
                way
            }
        };
        let slot = &mut set.ways[way];
        slot.1 = slot.1.max(read);
        slot.2 = slot.2.max(write);
    }
}

/// Intents and timestamps of one shard.
#[derive(Debug)]
pub struct Concurrency {
    /// Key hash → timestamp of the transaction holding an intent on it.
    intents: HashKeyed<u64>,
    /// Transaction timestamp → the key hashes of its intents.
    holders: BTreeMap<u64, Vec<u64>>,
    ts_cache: TsCache,
    /// Range reads at a timestamp raise this: no write at or below it.
    read_floor: u64,
}

impl Concurrency {
    pub fn new(ts_cache_keys: usize) -> Self {
        Concurrency {
            intents: HashKeyed::default(),
            holders: BTreeMap::new(),
            ts_cache: TsCache::new(ts_cache_keys),
            read_floor: 0,
        }
    }

    /// Admits transaction `ts` reading `reads` and writing `writes` (key
    /// hashes), or says why not. See the module rules.
    pub fn admit(&mut self, ts: u64, reads: &[u64], writes: &[u64]) -> Admission {
        debug_assert!(
            !self.holders.contains_key(&ts),
            "transaction {ts} admitted twice"
        );
        for (&hash, is_write) in reads
            .iter()
            .map(|h| (h, false))
            .chain(writes.iter().map(|h| (h, true)))
        {
            if let Some(&holder) = self.intents.get(&hash) {
                if holder < ts {
                    return Admission::WaitFor(holder);
                }
                if is_write {
                    return Admission::Abort(Conflict::YoungerIntent { holder });
                }
            }
        }
        for &hash in writes {
            let (read_ts, write_ts) = self.ts_cache.get(hash);
            let read_ts = read_ts.max(self.read_floor);
            if read_ts >= ts {
                return Admission::Abort(Conflict::ReadLater { read_ts });
            }
            if write_ts > ts {
                return Admission::Abort(Conflict::WrittenLater { write_ts });
            }
        }
        for &hash in reads {
            self.ts_cache.record_read(hash, ts);
        }
        if !writes.is_empty() {
            for &hash in writes {
                self.ts_cache.record_write(hash, ts);
                self.intents.insert(hash, ts);
            }
            self.holders.insert(ts, writes.to_vec());
        }
        Admission::Admitted
    }

    /// Places intents without checks (recovered prepared transactions).
    pub fn restore(&mut self, ts: u64, writes: &[u64]) {
        for &hash in writes {
            self.intents.insert(hash, ts);
            self.ts_cache.record_write(hash, ts);
        }
        self.holders.insert(ts, writes.to_vec());
    }

    /// Removes the intents of transaction `ts` (committed or aborted).
    pub fn release(&mut self, ts: u64) {
        for hash in self.holders.remove(&ts).unwrap_or_default() {
            if self.intents.get(&hash) == Some(&ts) {
                self.intents.remove(&hash);
            }
        }
    }

    /// Whether transaction `ts` still holds intents.
    pub fn holds(&self, ts: u64) -> bool {
        self.holders.contains_key(&ts)
    }

    /// The transaction holding an intent on `hash`, if any.
    pub fn intent_on(&self, hash: u64) -> Option<u64> {
        self.intents.get(&hash).copied()
    }

    /// The oldest transaction holding intents.
    pub fn oldest_intent(&self) -> Option<u64> {
        self.holders.keys().next().copied()
    }

    /// A single-key write outside any transaction, at a fresh timestamp.
    /// See [`TsCache::prefetch`].
    pub fn prefetch(&self, hashes: &[u64]) {
        self.ts_cache.prefetch(hashes);
    }

    pub fn record_write(&mut self, hash: u64, ts: u64) {
        self.ts_cache.record_write(hash, ts);
    }

    /// A single-key read at `ts` (time travel): no write may land at or
    /// below `ts` on this key from now on.
    pub fn record_read(&mut self, hash: u64, ts: u64) {
        self.ts_cache.record_read(hash, ts);
    }

    /// A range read at `ts`: no write may land at or below `ts` anywhere.
    pub fn raise_read_floor(&mut self, ts: u64) {
        self.read_floor = self.read_floor.max(ts);
    }

    /// After recovery, nothing is known about reads and writes before `ts`.
    pub fn raise_floor(&mut self, ts: u64) {
        self.ts_cache.raise_floor(ts);
    }

    pub fn intent_count(&self) -> usize {
        self.intents.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn younger_waits_for_older_and_older_aborts_on_younger() {
        let mut cc = Concurrency::new(16);
        assert_eq!(cc.admit(10, &[], &[1]), Admission::Admitted);
        assert_eq!(cc.admit(20, &[1], &[]), Admission::WaitFor(10));
        assert_eq!(cc.admit(20, &[], &[1]), Admission::WaitFor(10));
        assert_eq!(
            cc.admit(5, &[], &[1]),
            Admission::Abort(Conflict::YoungerIntent { holder: 10 })
        );
        // A read below the intent does not see it and need not wait.
        assert_eq!(cc.admit(6, &[1], &[]), Admission::Admitted);
        cc.release(10);
        assert!(!cc.holds(10));
        assert_eq!(cc.intent_on(1), None);
        assert_eq!(cc.admit(20, &[1], &[]), Admission::Admitted);
    }

    #[test]
    fn writes_below_reads_or_later_writes_abort() {
        let mut cc = Concurrency::new(16);
        cc.record_read(1, 50);
        assert_eq!(
            cc.admit(50, &[], &[1]),
            Admission::Abort(Conflict::ReadLater { read_ts: 50 })
        );
        cc.record_write(2, 70);
        assert_eq!(
            cc.admit(60, &[], &[2]),
            Admission::Abort(Conflict::WrittenLater { write_ts: 70 })
        );
        assert_eq!(cc.admit(80, &[], &[1, 2]), Admission::Admitted);
        cc.raise_read_floor(100);
        assert_eq!(
            cc.admit(90, &[], &[3]),
            Admission::Abort(Conflict::ReadLater { read_ts: 100 })
        );
    }

    #[test]
    fn the_ts_cache_never_forgets_downwards() {
        let mut cache = TsCache::new(2);
        for hash in 0..10u64 {
            cache.record_read(hash, 100 + hash);
            cache.record_write(hash, 200 + hash);
        }
        for hash in 0..10u64 {
            let (r, w) = cache.get(hash);
            assert!(r >= 100 + hash && w >= 200 + hash, "hash {hash}: {r} {w}");
        }
    }

    #[test]
    fn the_ts_cache_evicts_the_oldest_key_of_a_set_into_its_floor() {
        // One set: every key shares it.
        let mut cache = TsCache::new(TS_WAYS);
        assert_eq!(cache.sets.len(), 1);
        cache.record_write(1, 10);
        cache.record_write(2, 30);
        cache.record_read(3, 20);
        // Key 1 (newest at 10) left; the floor is its timestamps.
        assert_eq!(cache.get(1), (0, 10));
        assert_eq!(cache.get(2), (0, 30));
        assert_eq!(cache.get(3), (20, 10));
        assert_eq!(cache.get(99), (0, 10));
        // A key already held is updated in place: nothing leaves.
        cache.record_write(3, 40);
        assert_eq!(cache.get(2), (0, 30));
        assert_eq!(cache.get(3), (20, 40));
    }

    proptest::proptest! {
        #[test]
        fn the_ts_cache_reports_at_least_every_recorded_timestamp(
            capacity in 1usize..6,
            ops in proptest::collection::vec((0u64..12, 0u64..1000, proptest::bool::ANY), 0..200),
        ) {
            let mut cache = TsCache::new(capacity);
            let mut model: std::collections::HashMap<u64, (u64, u64)> = Default::default();
            for (hash, ts, read) in ops {
                let slot = model.entry(hash).or_default();
                if read {
                    cache.record_read(hash, ts);
                    slot.0 = slot.0.max(ts);
                } else {
                    cache.record_write(hash, ts);
                    slot.1 = slot.1.max(ts);
                }
                for (&h, &(r, w)) in &model {
                    let (cr, cw) = cache.get(h);
                    proptest::prop_assert!(cr >= r && cw >= w, "hash {}: {:?} < {:?}", h, (cr, cw), (r, w));
                }
            }
        }
    }
}
