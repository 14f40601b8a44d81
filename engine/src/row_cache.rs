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
//! Sketch: a row of a 16-byte key and a 100-byte value costs ~230 bytes
//! (its allocation, the map slot and the ring entry), so 256 MiB hold ~1.1M
//! rows.

use crate::cache::{CacheStats, ClockCache, Counts};
use crate::key::{Kind, Versioned};
use crate::sst::bloom::Filter;
use bytes::Bytes;
use nohash_hasher::BuildNoHashHasher;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

/// What a row costs besides its key and value bytes.
const ROW_OVERHEAD_BYTES: usize = 112;

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
    /// The version's timestamp; `None`: the tables hold no version.
    ts: Option<u64>,
    /// The version the row is known to hold for.
    seq: Cell<u64>,
}

/// Rows by the key's 64-bit hash (the bloom filters' hash, so checking a
/// row against a flushed table costs no second hash). Two keys with one
/// hash share a slot: the row names its key, and a lookup of the other
/// misses.
pub struct RowCache {
    rows: ClockCache<u64, Row, BuildNoHashHasher<u64>>,
    /// The latest installs, oldest first: (the version's seq, the filters
    /// of the tables it flushed). Consecutive seqs.
    installs: RefCell<VecDeque<(u64, Vec<Rc<Filter>>)>>,
    counts: Counts,
}

impl RowCache {
    /// A cache of `capacity_bytes`; zero turns it off.
    pub fn new(capacity_bytes: usize) -> Self {
        RowCache {
            rows: ClockCache::new(capacity_bytes),
            installs: RefCell::default(),
            counts: Counts::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.rows.capacity_bytes() > 0
    }

    /// The newest version of `key` (hash `hash`, see [`crate::sst::bloom::hash`])
    /// at or below `ts` in the tables of version `seq`: `Some(None)` if
    /// they hold none, `None` if the cache cannot tell.
    pub fn get(&self, key: &[u8], hash: u64, seq: u64, ts: u64) -> Option<Option<Versioned>> {
        let found = self
            .rows
            .with(&hash, |row| {
                let (k, value) = row.data.split_at(row.key_len as usize);
                if k != key || !self.holds(row, hash, seq) {
                    return None;
                }
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
            })
            .flatten();
        self.counts.record(found.is_some());
        found
    }

    /// Looks the slots of `hashes` up and starts loading their rows'
    /// lines. One tight loop, so the slots' cache misses overlap.
    pub fn prefetch(&self, hashes: &[u64]) {
        self.rows.with_each(hashes, |row| {
            for at in (0..row.data.len()).step_by(64) {
                crate::hint::prefetch(row.data[at..].as_ptr());
            }
        });
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
        let bytes = data.len() + ROW_OVERHEAD_BYTES;
        let row = Row {
            data: data.into_boxed_slice(),
            key_len: key.len() as u32,
            kind,
            ts,
            seq: Cell::new(seq),
        };
        self.rows.insert(hash, row, bytes);
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
        self.counts.stats(&self.rows)
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
        assert_eq!(cache.stats().bytes, 0);
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
        let row_bytes = 1 + 2 + ROW_OVERHEAD_BYTES;
        let cache = RowCache::new(3 * row_bytes);
        for k in 0u8..10 {
            cache.insert(&[k], bloom::hash(&[k]), 1, Some(&put(1, b"vv")));
        }
        assert_eq!(cache.stats().bytes, 3 * row_bytes);
        assert!(get(&cache, &[9], 1, 9).is_some(), "the newest row stays");
        let off = RowCache::new(0);
        off.insert(b"a", bloom::hash(b"a"), 1, None);
        assert!(get(&off, b"a", 1, 9).is_none());
        assert_eq!(off.stats().bytes, 0);
    }
}
