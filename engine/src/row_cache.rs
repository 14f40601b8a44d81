//! Row cache of one shard: for recently read keys, the newest version the
//! shard's tables hold (or that they hold none). A point read that finds
//! nothing in the memtables answers from it without touching a table's
//! bloom filter, index or block: those lookups were half of a cached GET's
//! server CPU (bloom, index search, block-cache probe, restart search).
//!
//! A row describes the tables of one [`Version`](crate::version::Version),
//! named by its `seq`. Writes never touch the cache: reads check the
//! memtables first, and a newer version reaches the tables only by a
//! flush. So a row learned at version `s` still holds at a later version
//! if no table flushed since may contain its key, which the flushed tables'
//! bloom filters answer. Compactions add no versions and drop no newest
//! version other than a tombstone, and tombstones are not cached. A row
//! past the installs the cache remembers is stale.
//!
//! Rows sit in a set-associative table: a row's set is a function of its
//! key's hash, and a set is two cache lines holding eight ways: their
//! hashes, then their rows' pointers. A batch of reads then prefetches its rows
//! without waiting: first every set's line, then every row's header, then
//! every row's bytes, each round's cache misses in parallel
//! ([`RowCache::prefetch`]). A hash map's lookup waited for its control
//! bytes and then its bucket before the row could be asked for, and
//! 16-deep GETs over 1M cached keys spent ~12% of the server's CPU in the
//! row cache (docs/benchmarks.md). Eviction is CLOCK, as in the block
//! cache: a hit sets the row's flag; a full set gives up a way whose flag
//! is clear, and the budget is kept by a hand sweeping the whole table.
//!
//! Sketch: a row of a 16-byte key and a 100-byte value costs ~230 bytes
//! (its two allocations), so 256 MiB hold ~1M rows. The table has a way
//! for every [`BUDGET_BYTES_PER_WAY`] of the budget (16 bytes each, an
//! eighth of the budget, charged up front): about twice as many ways as
//! rows of that size, so that few sets overflow (a set holding more than
//! its ways' worth of hot keys misses on one of them every time).

use crate::cache::{CacheStats, Counts};
use crate::hint::prefetch;
use crate::key::{Kind, Versioned};
use crate::sst::bloom::Filter;
use bytes::Bytes;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

/// What a row costs besides its key and value bytes: its header's and its
/// bytes' allocations (each with the allocator's share).
const ROW_OVERHEAD_BYTES: usize = 112;

/// Ways per set: a set's hashes fill one cache line, its pointers another.
const WAYS: usize = 8;

/// One way in the table per this many bytes of the budget: about half a
/// row of a short key and a 100-byte value.
const BUDGET_BYTES_PER_WAY: usize = 128;

/// Installs remembered: a row older than this many installs is stale.
const INSTALLS_KEPT: usize = 64;

/// The newest version of one key in the tables of version `seq`.
struct Row {
    /// The key, then the value.
    data: Box<[u8]>,
    key_len: u32,
    /// The version's kind: a put or an expiring put (whose value keeps
    /// its TTL: whether it has expired depends on the read).
    kind: Kind,
    /// Read since the clock hand last passed.
    referenced: Cell<bool>,
    /// The version's timestamp; `None`: the tables hold no version.
    ts: Option<u64>,
    /// The version the row is known to hold for.
    seq: Cell<u64>,
}

impl Row {
    fn bytes(&self) -> usize {
        self.data.len() + ROW_OVERHEAD_BYTES
    }
}

/// Eight ways, two cache lines. A way's tag is its row's key hash (0, the
/// empty way's tag, stands for hash 0 as well: the row names its key).
#[repr(C, align(64))]
#[derive(Default)]
struct Set {
    tags: [u64; WAYS],
    rows: [Option<Box<Row>>; WAYS],
}

/// Rows by the key's 64-bit hash (the bloom filters' hash, so checking a
/// row against a flushed table costs no second hash). Two keys with one
/// hash share a way: the row names its key, and a lookup of the other
/// misses.
struct Table {
    sets: Box<[Set]>,
    /// The hand: the next way it looks at, as `set * WAYS + way`.
    hand: usize,
    used_bytes: usize,
    capacity_bytes: usize,
}

impl Table {
    fn new(capacity_bytes: usize) -> Table {
        let sets = capacity_bytes / BUDGET_BYTES_PER_WAY / WAYS;
        let sets: Box<[Set]> = (0..sets).map(|_| Set::default()).collect();
        let table_bytes = std::mem::size_of_val(&*sets);
        Table {
            sets,
            hand: 0,
            used_bytes: table_bytes.min(capacity_bytes),
            capacity_bytes,
        }
    }

    /// The set of `hash`: its high half scaled to the number of sets (the
    /// low bits pick the key's shard, so on one shard they vary less).
    fn set_of(&self, hash: u64) -> usize {
        (((hash >> 32) * self.sets.len() as u64) >> 32) as usize
    }

    /// The row of `hash`, if cached.
    fn find(&self, hash: u64) -> Option<&Row> {
        if self.sets.is_empty() {
            return None;
        }
        let set = &self.sets[self.set_of(hash)];
        let way = set.tags.iter().position(|&t| t == hash)?;
        set.rows[way].as_deref()
    }

    /// Caches `row` under `hash`, in place of any row there.
    fn insert(&mut self, hash: u64, row: Row) {
        let bytes = row.bytes();
        if self.sets.is_empty() {
            return;
        }
        if self.used_bytes + bytes > self.capacity_bytes {
            // Make room first, so the hand never meets the new row. Each
            // way is passed at most twice (the first pass clears every
            // flag), and a row fits a budget the table alone leaves room
            // for, so this ends.
            if bytes > self.capacity_bytes.saturating_sub(self.table_bytes()) {
                return;
            }
            while self.used_bytes + bytes > self.capacity_bytes {
                self.sweep_one();
            }
        }
        let s = self.set_of(hash);
        let set = &mut self.sets[s];
        let way = match set.tags.iter().position(|&t| t == hash) {
            Some(same) if set.rows[same].is_some() => same,
            _ => match set.rows.iter().position(Option::is_none) {
                Some(empty) => empty,
                // A full set: its first way not read since the hand passed;
                // if all were, they lose their flags and one goes, picked
                // by the hash.
                None => set
                    .rows
                    .iter()
                    .position(|r| r.as_ref().is_some_and(|r| !r.referenced.get()))
                    .unwrap_or_else(|| {
                        for r in set.rows.iter().flatten() {
                            r.referenced.set(false);
                        }
                        (hash >> 8) as usize % WAYS
                    }),
            },
        };
        let old = set.rows[way].replace(Box::new(row));
        set.tags[way] = hash;
        self.used_bytes += bytes;
        if let Some(old) = old {
            self.used_bytes -= old.bytes();
        }
    }

    /// Moves the hand one way on: a flagged row loses its flag, an
    /// unflagged one is evicted.
    fn sweep_one(&mut self) {
        let (s, way) = (self.hand / WAYS, self.hand % WAYS);
        self.hand = (self.hand + 1) % (self.sets.len() * WAYS);
        let slot = &mut self.sets[s].rows[way];
        if let Some(row) = slot {
            if !row.referenced.replace(false) {
                self.used_bytes -= row.bytes();
                *slot = None;
                self.sets[s].tags[way] = 0;
            }
        }
    }

    fn table_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.sets)
    }
}

pub struct RowCache {
    table: RefCell<Table>,
    /// The latest installs, oldest first: (the version's seq, the filters
    /// of the tables it flushed). Consecutive seqs.
    installs: RefCell<VecDeque<(u64, Vec<Rc<Filter>>)>>,
    counts: Counts,
}

impl RowCache {
    /// A cache of `capacity_bytes`; zero turns it off.
    pub fn new(capacity_bytes: usize) -> Self {
        RowCache {
            table: RefCell::new(Table::new(capacity_bytes)),
            installs: RefCell::default(),
            counts: Counts::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.table.borrow().sets.is_empty()
    }

    /// The newest version of `key` (hash `hash`, see [`crate::sst::bloom::hash`])
    /// at or below `ts` in the tables of version `seq`: `Some(None)` if
    /// they hold none, `None` if the cache cannot tell.
    pub fn get(&self, key: &[u8], hash: u64, seq: u64, ts: u64) -> Option<Option<Versioned>> {
        let table = self.table.borrow();
        let found = table.find(hash).and_then(|row| {
            let (k, value) = row.data.split_at(row.key_len as usize);
            if k != key || !self.holds(row, hash, seq) {
                return None;
            }
            row.referenced.set(true);
            match row.ts {
                None => Some(None),
                // The newest version is too new for `ts`; an older one
                // is not cached.
                Some(v) if v > ts => None,
                Some(v) => Some(Some(Versioned {
                    ts: v,
                    kind: row.kind,
                    value: Bytes::copy_from_slice(value),
                })),
            }
        });
        self.counts.record(found.is_some());
        found
    }

    /// Starts loading the rows of `hashes`, in three rounds whose cache
    /// misses overlap: their sets' two lines, then the rows those name,
    /// then the rows' bytes.
    pub fn prefetch(&self, hashes: &[u64]) {
        let table = self.table.borrow();
        if table.sets.is_empty() {
            return;
        }
        for &hash in hashes {
            let set = &table.sets[table.set_of(hash)];
            prefetch((&set.tags as *const [u64; WAYS]).cast());
            prefetch((&set.rows as *const [Option<Box<Row>>; WAYS]).cast());
        }
        for &hash in hashes {
            let set = &table.sets[table.set_of(hash)];
            if let Some(way) = set.tags.iter().position(|&t| t == hash) {
                if let Some(row) = &set.rows[way] {
                    prefetch((&**row as *const Row).cast());
                }
            }
        }
        for &hash in hashes {
            if let Some(row) = table.find(hash) {
                for at in (0..row.data.len()).step_by(64) {
                    prefetch(row.data[at..].as_ptr());
                }
            }
        }
    }

    /// Whether `row` still holds at version `seq`; if so it is marked as
    /// holding there, so the check runs once per install.
    fn holds(&self, row: &Row, hash: u64, seq: u64) -> bool {
        let from = row.seq.get();
        if from == seq {
            return true;
        }
        // Every install in (from, seq] must be remembered, and none may
        // have flushed the key.
        let mut expected = from + 1;
        for (s, flushed) in self.installs.borrow().iter() {
            if *s <= from {
                continue;
            }
            if *s > seq {
                break;
            }
            if *s != expected || flushed.iter().any(|f| f.may_contain(hash)) {
                return false;
            }
            expected += 1;
        }
        if expected != seq + 1 {
            return false;
        }
        row.seq.set(seq);
        true
    }

    /// Caches what a read of `key` at a timestamp no older than any version
    /// in the tables of version `seq` found there: the newest version, or
    /// none. Tombstones and intents are not cached; expiring puts are,
    /// with their TTL, and each read judges them.
    pub fn insert(&self, key: &[u8], hash: u64, seq: u64, newest: Option<&Versioned>) {
        if !self.enabled() {
            return;
        }
        let (kind, ts, value) = match newest {
            None => (Kind::Put, None, &[][..]),
            Some(v) if matches!(v.kind, Kind::Put | Kind::Expiring) => {
                (v.kind, Some(v.ts), &v.value[..])
            }
            Some(_) => return,
        };
        let mut data = Vec::with_capacity(key.len() + value.len());
        data.extend_from_slice(key);
        data.extend_from_slice(value);
        let row = Row {
            data: data.into_boxed_slice(),
            key_len: key.len() as u32,
            kind,
            referenced: Cell::new(false),
            ts,
            seq: Cell::new(seq),
        };
        self.table.borrow_mut().insert(hash, row);
    }

    /// Version `seq` was installed; `flushed` are the filters of the tables
    /// it added from memtables (none for a compaction).
    pub fn installed(&self, seq: u64, flushed: Vec<Rc<Filter>>) {
        let mut installs = self.installs.borrow_mut();
        installs.push_back((seq, flushed));
        while installs.len() > INSTALLS_KEPT {
            installs.pop_front();
        }
    }

    pub fn stats(&self) -> CacheStats {
        let table = self.table.borrow();
        self.counts.stats(table.used_bytes, table.capacity_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sst::bloom;

    fn put(ts: u64, value: &'static [u8]) -> Versioned {
        Versioned {
            ts,
            kind: Kind::Put,
            value: Bytes::from_static(value),
        }
    }

    fn filter_of(keys: &[&[u8]]) -> Rc<Filter> {
        let hashes: Vec<u64> = keys.iter().map(|k| bloom::hash(k)).collect();
        let built = bloom::build(&hashes);
        Rc::new(Filter::decode(&built).expect("a built filter decodes"))
    }

    fn get(cache: &RowCache, key: &[u8], seq: u64, ts: u64) -> Option<Option<Versioned>> {
        cache.get(key, bloom::hash(key), seq, ts)
    }

    #[test]
    fn a_row_answers_reads_at_or_after_its_version_and_absence_answers_all() {
        let cache = RowCache::new(1 << 20);
        cache.insert(b"a", bloom::hash(b"a"), 1, Some(&put(10, b"va")));
        cache.insert(b"b", bloom::hash(b"b"), 1, None);
        let found = get(&cache, b"a", 1, 10).expect("cached").expect("present");
        assert_eq!((found.ts, &found.value[..]), (10, &b"va"[..]));
        assert!(
            get(&cache, b"a", 1, 9).is_none(),
            "older reads walk the tables"
        );
        assert_eq!(get(&cache, b"b", 1, 1), Some(None));
        assert!(get(&cache, b"c", 1, 10).is_none());
        assert_eq!((cache.stats().hits, cache.stats().misses), (2, 2));
    }

    #[test]
    fn tombstones_and_intents_are_not_cached() {
        let cache = RowCache::new(1 << 20);
        for kind in [Kind::Delete, Kind::Intent] {
            let v = Versioned {
                ts: 5,
                kind,
                value: Bytes::new(),
            };
            cache.insert(b"k", bloom::hash(b"k"), 1, Some(&v));
            assert!(get(&cache, b"k", 1, 9).is_none(), "{kind:?} was cached");
        }
        assert_eq!(cache.stats().bytes, RowCache::new(1 << 20).stats().bytes);
    }

    #[test]
    fn a_flush_that_may_hold_the_key_makes_its_row_stale() {
        let cache = RowCache::new(1 << 20);
        cache.insert(b"a", bloom::hash(b"a"), 1, Some(&put(10, b"old")));
        cache.insert(b"b", bloom::hash(b"b"), 1, None);
        cache.insert(b"c", bloom::hash(b"c"), 1, None);
        cache.installed(2, vec![filter_of(&[b"x", b"y"])]); // a flush without them
        cache.installed(3, Vec::new()); // a compaction
        cache.installed(4, vec![filter_of(&[b"a", b"b"])]); // a flush with a and b
        assert!(get(&cache, b"a", 4, 99).is_none());
        assert!(get(&cache, b"b", 4, 99).is_none());
        assert_eq!(get(&cache, b"c", 4, 99), Some(None));
        // At version 3, before the second flush, a still held.
        cache.insert(b"a", bloom::hash(b"a"), 3, Some(&put(10, b"old")));
        assert!(get(&cache, b"a", 4, 99).is_none());
        assert!(get(&cache, b"a", 3, 99).is_some());
    }

    #[test]
    fn a_row_older_than_the_remembered_installs_is_stale() {
        let cache = RowCache::new(1 << 20);
        cache.insert(b"a", bloom::hash(b"a"), 1, Some(&put(10, b"v")));
        for seq in 2..2 + INSTALLS_KEPT as u64 {
            cache.installed(seq, Vec::new());
        }
        let last = 1 + INSTALLS_KEPT as u64;
        assert!(
            get(&cache, b"a", last, 99).is_some(),
            "every install is known"
        );
        cache.insert(b"b", bloom::hash(b"b"), 1, Some(&put(10, b"v")));
        cache.installed(last + 1, Vec::new());
        assert!(
            get(&cache, b"a", last + 1, 99).is_some(),
            "a was checked at {last}"
        );
        assert!(
            get(&cache, b"b", last + 1, 99).is_none(),
            "install 2 is forgotten"
        );
    }

    #[test]
    fn a_missing_install_makes_rows_stale() {
        let cache = RowCache::new(1 << 20);
        cache.insert(b"a", bloom::hash(b"a"), 1, Some(&put(10, b"v")));
        cache.installed(3, Vec::new());
        assert!(get(&cache, b"a", 3, 99).is_none());
    }

    #[test]
    fn keys_sharing_a_hash_do_not_answer_for_each_other() {
        let cache = RowCache::new(1 << 20);
        cache.insert(b"a", 7, 1, Some(&put(10, b"va")));
        assert!(cache.get(b"b", 7, 1, 99).is_none());
        cache.insert(b"b", 7, 1, None);
        assert!(cache.get(b"a", 7, 1, 99).is_none());
        assert_eq!(cache.get(b"b", 7, 1, 99), Some(None));
    }

    #[test]
    fn the_budget_holds_and_zero_turns_it_off() {
        let capacity = 4096;
        let cache = RowCache::new(capacity);
        let table = cache.stats().bytes;
        assert!(
            table > 0 && table < capacity / 2,
            "the table is charged: {table}"
        );
        let value = vec![7u8; 500];
        let row_bytes = 1 + value.len() + ROW_OVERHEAD_BYTES;
        let versioned = Versioned {
            ts: 1,
            kind: Kind::Put,
            value: Bytes::from(value),
        };
        for k in 0u8..100 {
            cache.insert(&[k], bloom::hash(&[k]), 1, Some(&versioned));
            let cached = (0..=k)
                .filter(|&k| get(&cache, &[k], 1, 9).is_some())
                .count();
            assert_eq!(cache.stats().bytes, table + cached * row_bytes);
            assert!(cache.stats().bytes <= capacity);
            assert!(get(&cache, &[k], 1, 9).is_some(), "the newest row stays");
        }
        let big = Versioned {
            ts: 1,
            kind: Kind::Put,
            value: Bytes::from(vec![0u8; capacity]),
        };
        cache.insert(b"big", bloom::hash(b"big"), 1, Some(&big));
        assert!(
            get(&cache, b"big", 1, 9).is_none(),
            "larger than the budget"
        );
        let off = RowCache::new(0);
        off.insert(b"a", bloom::hash(b"a"), 1, None);
        assert!(get(&off, b"a", 1, 9).is_none());
        assert_eq!(off.stats().bytes, 0);
        assert!(!off.enabled());
        off.prefetch(&[bloom::hash(b"a")]);
    }

    /// Hashes that share a set (the high half picks it).
    fn in_one_set(i: u64) -> u64 {
        (5 << 32) | i
    }

    #[test]
    fn a_full_set_gives_up_a_row_not_read_since_the_hand_passed() {
        let cache = RowCache::new(1 << 20);
        let keys: Vec<[u8; 1]> = (0..=WAYS as u8).map(|k| [k]).collect();
        for (i, key) in keys[..WAYS].iter().enumerate() {
            cache.insert(key, in_one_set(i as u64), 1, Some(&put(1, b"v")));
        }
        // Prefetching is not reading: it marks nothing.
        let hashes: Vec<u64> = (0..=WAYS as u64).map(in_one_set).collect();
        cache.prefetch(&hashes);
        for (i, key) in keys[..WAYS].iter().enumerate() {
            if i != 2 {
                assert!(cache.get(key, in_one_set(i as u64), 1, 9).is_some());
            }
        }
        cache.insert(&keys[WAYS], in_one_set(WAYS as u64), 1, Some(&put(1, b"v")));
        for (i, key) in keys.iter().enumerate() {
            let cached = cache.get(key, in_one_set(i as u64), 1, 9).is_some();
            assert_eq!(cached, i != 2, "key {i}");
        }
        // Every way read since: one goes all the same, and the set still
        // holds WAYS rows.
        let extra = [WAYS as u8 + 1];
        cache.insert(&extra, in_one_set(99), 1, Some(&put(1, b"v")));
        assert!(cache.get(&extra, in_one_set(99), 1, 9).is_some());
        let held = keys
            .iter()
            .enumerate()
            .filter(|(i, key)| cache.get(&key[..], in_one_set(*i as u64), 1, 9).is_some())
            .count();
        assert_eq!(held, WAYS - 1);
    }

    #[test]
    fn a_row_replaces_the_row_of_its_hash_and_its_charge() {
        let cache = RowCache::new(1 << 20);
        let table = cache.stats().bytes;
        cache.insert(b"k", 3, 1, Some(&put(1, b"short")));
        cache.insert(b"k", 3, 2, Some(&put(2, b"longer value")));
        let found = cache.get(b"k", 3, 2, 9).expect("cached").expect("present");
        assert_eq!((found.ts, &found.value[..]), (2, &b"longer value"[..]));
        assert_eq!(
            cache.stats().bytes,
            table + 1 + b"longer value".len() + ROW_OVERHEAD_BYTES
        );
    }
}
