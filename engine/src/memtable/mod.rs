//! The in-memory write buffer of one shard. Single-threaded (the shard owns
//! it), so a B+tree of its own (`tree.rs`) in a `RefCell` is enough: no
//! skiplist, no locks.
//!
//! Sketch: a 16-byte key + 100-byte value costs ~245 bytes here (the value
//! in a chunk, ~143 bytes of tree per version: a 97-byte leaf slot in
//! leaves ~70% full), so a 64 MiB memtable holds ~275k versions.

mod tree;

use crate::key::{Entry, InternalKey, KeyRef, Kind, Probe, Versioned};
use crate::sst::bloom;
use bytes::{Bytes, BytesMut};
use std::cell::{Cell, RefCell};
use tree::Tree;

/// Approximate per-version overhead of the tree (node slots at the fill
/// random inserts leave, `Bytes` headers), besides the key and value.
const ENTRY_OVERHEAD_BYTES: usize = 120;

/// Values are copied into chunks of this size (see [`Memtable::insert`]).
const ARENA_CHUNK_BYTES: usize = 256 << 10;
/// After each copy, the chunk's lines this far ahead are prefetched: a
/// chunk is fresh memory the core does not hold, so each copy's stores
/// waited on its lines, and the count bump that follows (an atomic, which
/// drains the store buffer) waited with them: `split_to` was ~5% of a
/// `none`-mode SET's server CPU, ~2% with the prefetch; SETs with 16-deep
/// pipelines +4% (6 alternating rounds).
const ARENA_PREFETCH_FROM: usize = 256;
const ARENA_PREFETCH_TO: usize = 512;
/// Larger values keep their own buffer.
const ARENA_VALUE_MAX: usize = 4 << 10;
/// Most keys [`Memtable::prefetch_paths`] walks together.
const PREFETCH_KEYS_MAX: usize = 16;
/// How many versions ahead [`Memtable::visit_from`] prefetches values,
/// and how many bytes of each.
const VISIT_PREFETCH_AHEAD: usize = 4;
const VISIT_PREFETCH_BYTES: usize = 256;

/// A sorted set of versions.
///
/// Invariant: keys are ordered by (user key asc, ts desc); at most one
/// version per (key, ts); `bytes` is the sum of `entry_bytes` of all entries.
pub struct Memtable {
    map: RefCell<Tree>,
    /// Every key inserted: a read of a key the memtable does not hold (most
    /// reads, once the data outgrows it) skips the tree, one cache line
    /// instead of a descent.
    filter: RefCell<bloom::Growing>,
    /// The chunk values are being copied into.
    arena: RefCell<BytesMut>,
    bytes: Cell<usize>,
    max_ts: Cell<u64>,
}

fn entry_bytes(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + 8 + ENTRY_OVERHEAD_BYTES
}

impl Default for Memtable {
    fn default() -> Self {
        Memtable::for_bytes(DEFAULT_BYTES)
    }
}

/// The size a memtable made with [`Memtable::new`] expects to reach.
const DEFAULT_BYTES: usize = 4 << 20;

impl Memtable {
    pub fn new() -> Self {
        Self::default()
    }

    /// A memtable that will be flushed at about `bytes` (its filter is
    /// sized for the versions of 100-byte values that fit).
    pub fn for_bytes(bytes: usize) -> Self {
        Memtable {
            map: RefCell::default(),
            filter: RefCell::new(bloom::Growing::for_keys(
                bytes / entry_bytes(&[0; 16], &[0; 100]),
            )),
            arena: RefCell::default(),
            bytes: Cell::default(),
            max_ts: Cell::default(),
        }
    }

    /// Adds a version. A value of up to 4 KiB is copied into the
    /// memtable's current 256 KiB chunk: a version then holds a count on a
    /// chunk shared with thousands of others, not a buffer of its own.
    /// Dropping a flushed memtable (~330k versions of 100 bytes) freed each
    /// version's buffer, a cache miss apiece: ~22 ms in one go on the shard
    /// that serves requests, the longest stall durable writes saw.
    pub fn insert(&self, entry: Entry) {
        let add = entry_bytes(&entry.key, &entry.value);
        let value = match entry.value.len() {
            0 => Bytes::new(),
            n if n <= ARENA_VALUE_MAX => self.copy_in(&entry.value),
            _ => entry.value,
        };
        self.filter.borrow_mut().insert(bloom::hash(&entry.key));
        let old = self
            .map
            .borrow_mut()
            .insert(InternalKey::new(entry.key, entry.ts), (entry.kind, value));
        match old {
            // Replaying a WAL record twice stores the same version twice.
            Some(_) => {}
            None => self.bytes.set(self.bytes.get() + add),
        }
        if entry.ts > self.max_ts.get() {
            self.max_ts.set(entry.ts);
        }
    }

    fn copy_in(&self, value: &[u8]) -> Bytes {
        let mut arena = self.arena.borrow_mut();
        if arena.capacity() - arena.len() < value.len() {
            *arena = BytesMut::with_capacity(ARENA_CHUNK_BYTES);
        }
        arena.extend_from_slice(value);
        let value = arena.split().freeze();
        let spare = arena.spare_capacity_mut();
        for at in (ARENA_PREFETCH_FROM..spare.len().min(ARENA_PREFETCH_TO)).step_by(64) {
            crate::hint::prefetch(spare[at..].as_ptr().cast());
        }
        value
    }

    /// Consumes the memtable: its versions in order, each freed as the
    /// iterator moves past it.
    pub fn into_versions(self) -> impl Iterator<Item = (InternalKey, (Kind, Bytes))> {
        self.map.into_inner().into_versions()
    }

    /// Inserts `entries` a few at a time, each few after prefetching the
    /// paths their inserts walk (see `Tree::prefetch_paths`), so that
    /// their cache misses overlap.
    pub fn insert_all(&self, entries: impl IntoIterator<Item = Entry>) {
        let mut entries = entries.into_iter();
        let mut chunk: Vec<Entry> = Vec::with_capacity(PREFETCH_KEYS_MAX);
        loop {
            chunk.extend(entries.by_ref().take(PREFETCH_KEYS_MAX));
            if chunk.is_empty() {
                return;
            }
            if chunk.len() > 1 {
                let mut keys: [&[u8]; PREFETCH_KEYS_MAX] = [&[]; PREFETCH_KEYS_MAX];
                for (key, e) in keys.iter_mut().zip(&chunk) {
                    *key = &e.key;
                }
                self.prefetch_paths(&keys[..chunk.len()]);
            }
            for e in chunk.drain(..) {
                self.insert(e);
            }
        }
    }

    /// Starts loading the nodes that inserting new versions of `keys` will
    /// walk (see `Tree::prefetch_paths`).
    pub fn prefetch_paths(&self, keys: &[&[u8]]) {
        self.prefetch_paths_where(keys, |_| true);
    }

    /// [`Memtable::prefetch_paths`] of those of `keys` (with these
    /// [`bloom::hash`]es) the memtable may hold: the paths a read of their
    /// newest versions walks.
    pub fn prefetch_paths_of_held(&self, keys: &[&[u8]], hashes: &[u64]) {
        let filter = self.filter.borrow();
        self.prefetch_paths_where(keys, |i| filter.may_contain(hashes[i]));
    }

    fn prefetch_paths_where(&self, keys: &[&[u8]], held: impl Fn(usize) -> bool) {
        let mut probes: [Option<Probe>; PREFETCH_KEYS_MAX] = Default::default();
        let mut any = false;
        for (i, (probe, key)) in probes.iter_mut().zip(keys).enumerate() {
            if held(i) {
                // A new version is the key's newest: it goes first among
                // them, where a read of the newest looks.
                *probe = Some(Probe::new(key, u64::MAX));
                any = true;
            }
        }
        if any {
            let n = keys.len().min(PREFETCH_KEYS_MAX);
            self.map.borrow().prefetch_paths(&probes[..n]);
        }
    }

    /// Starts loading the filter lines reads of keys with these hashes
    /// ([`bloom::hash`]) check.
    pub fn prefetch_filter(&self, hashes: &[u64]) {
        let filter = self.filter.borrow();
        for &h in hashes {
            filter.prefetch(h);
        }
    }

    /// Approximate memory used.
    pub fn bytes(&self) -> usize {
        self.bytes.get()
    }

    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.borrow().len() == 0
    }

    pub fn max_ts(&self) -> u64 {
        self.max_ts.get()
    }

    /// The newest version of `key` with ts ≤ `ts`, intents included.
    pub fn get(&self, key: &[u8], ts: u64) -> Option<Versioned> {
        self.get_hashed(key, bloom::hash(key), ts)
    }

    /// [`Memtable::get`] of a key whose [`bloom::hash`] is `hash`.
    pub fn get_hashed(&self, key: &[u8], hash: u64, ts: u64) -> Option<Versioned> {
        if !self.filter.borrow().may_contain(hash) {
            return None;
        }
        let probe: &dyn KeyRef = &Probe::new(key, ts);
        let map = self.map.borrow();
        let (k, (kind, value)) = map.first_from(probe)?;
        (k.user() == key).then(|| Versioned {
            ts: k.ts(),
            kind: *kind,
            value: value.clone(),
        })
    }

    /// Up to `max` versions at or after `from` (inclusive) or strictly after
    /// it (`inclusive == false`), in order. Used by cursors that re-seek, so
    /// no borrow outlives the call.
    pub fn range_from(
        &self,
        from: &InternalKey,
        inclusive: bool,
        max: usize,
        out: &mut impl Extend<Entry>,
    ) {
        let map = self.map.borrow();
        out.extend(
            map.iter_from(Some((from, !inclusive)))
                .take(max)
                .map(|(k, (kind, value))| Entry {
                    key: k.user_bytes(),
                    ts: k.ts(),
                    kind: *kind,
                    value: value.clone(),
                }),
        );
    }

    /// Calls `f` on each version in order after `after` (from the first
    /// with `None`) until `f` returns false; returns the version it stopped
    /// at, to resume after, or `None` at the end. Borrows, never clones,
    /// the keys and values (a flush streams every version into a table).
    pub fn visit_from(
        &self,
        after: Option<&InternalKey>,
        mut f: impl FnMut(&InternalKey, Kind, &Bytes) -> bool,
    ) -> Option<InternalKey> {
        let map = self.map.borrow();
        let from = after.map(|k| (k as &dyn KeyRef, true));
        let versions = map.iter_from(from);
        // Values sit in the arena in the order they were written, not in
        // key order: each one visited was a cache miss, waited on by the
        // copy into the table being built (about half a flush's CPU).
        // A second cursor runs ahead and prefetches them. Leaves are
        // scattered too: the cursor ahead loads each leaf a leaf before
        // it reads the leaf's values (its own misses were ~60% of a
        // walk's time, and the keys read behind it another ~25%).
        let mut ahead = map
            .iter_from_loading_leaves(from)
            .skip(VISIT_PREFETCH_AHEAD);
        for (k, (kind, value)) in versions {
            if let Some((_, (_, upcoming))) = ahead.next() {
                let (at, len) = (upcoming.as_ptr(), upcoming.len().min(VISIT_PREFETCH_BYTES));
                // Every line the first `len` bytes touch, the last included.
                for offset in (0..len).step_by(64).chain(len.checked_sub(1)) {
                    crate::hint::prefetch(at.wrapping_add(offset));
                }
            }
            if !f(k, *kind, value) {
                return Some(k.clone());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(m: &Memtable, k: &str, ts: u64, v: &str) {
        m.insert(Entry {
            key: Bytes::copy_from_slice(k.as_bytes()),
            ts,
            kind: Kind::Put,
            value: Bytes::copy_from_slice(v.as_bytes()),
        });
    }

    #[test]
    fn get_returns_the_newest_version_at_or_below_ts() {
        let m = Memtable::new();
        put(&m, "a", 10, "a10");
        put(&m, "a", 20, "a20");
        put(&m, "ab", 5, "ab5");
        assert_eq!(m.get(b"a", 25).unwrap().value, "a20");
        assert_eq!(m.get(b"a", 20).unwrap().value, "a20");
        assert_eq!(m.get(b"a", 19).unwrap().value, "a10");
        assert!(m.get(b"a", 9).is_none());
        assert!(m.get(b"b", 100).is_none());
    }

    #[test]
    fn visiting_in_runs_sees_every_version_once_in_order() {
        let m = Memtable::new();
        for (k, ts) in [("b", 1), ("a", 2), ("a", 3), ("c", 1), ("ab", 9)] {
            put(&m, k, ts, "v");
        }
        let mut seen = Vec::new();
        let mut resume = None;
        loop {
            // Stop after every second version, as a flush stops to write.
            let mut n = 0;
            resume = m.visit_from(resume.as_ref(), |k, _, _| {
                seen.push((k.user_bytes(), k.ts()));
                n += 1;
                n < 2
            });
            if resume.is_none() {
                break;
            }
        }
        let want: Vec<(Bytes, u64)> = [("a", 3), ("a", 2), ("ab", 9), ("b", 1), ("c", 1)]
            .iter()
            .map(|(k, ts)| (Bytes::from_static(k.as_bytes()), *ts))
            .collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn small_values_are_copied_into_shared_chunks_and_large_ones_kept() {
        let m = Memtable::new();
        let small = Bytes::from(vec![b's'; 100]);
        let large = Bytes::from(vec![b'l'; ARENA_VALUE_MAX + 1]);
        for (k, v) in [("a", &small), ("b", &small), ("c", &large)] {
            m.insert(Entry {
                key: Bytes::copy_from_slice(k.as_bytes()),
                ts: 1,
                kind: Kind::Put,
                value: v.clone(),
            });
        }
        let (a, b, c) = (
            m.get(b"a", 1).unwrap().value,
            m.get(b"b", 1).unwrap().value,
            m.get(b"c", 1).unwrap().value,
        );
        assert_eq!((a.clone(), c.clone()), (small.clone(), large.clone()));
        assert_ne!(a.as_ptr(), small.as_ptr(), "a small value is copied");
        // Both copies sit back to back in one chunk.
        assert_eq!(b.as_ptr(), a.as_ptr().wrapping_add(a.len()));
        assert_eq!(c.as_ptr(), large.as_ptr(), "a large value is kept");
    }

    #[test]
    fn the_key_filter_never_hides_a_key_even_past_the_keys_it_was_sized_for() {
        let m = Memtable::for_bytes(4096); // a filter of one line
        for i in 0..5000 {
            put(&m, &format!("key-{i}"), 1, "v");
        }
        for i in 0..5000 {
            assert!(m.get(format!("key-{i}").as_bytes(), 1).is_some(), "key-{i}");
        }
        let big = Memtable::for_bytes(64 << 20);
        put(&big, "present", 1, "v");
        let absent = (0..10_000)
            .filter(|i| big.get(format!("absent-{i}").as_bytes(), 1).is_none())
            .count();
        assert_eq!(absent, 10_000);
        assert!(big.get(b"present", 1).is_some());
    }

    #[test]
    fn inserting_the_same_version_twice_counts_once() {
        let m = Memtable::new();
        put(&m, "a", 1, "x");
        let bytes = m.bytes();
        put(&m, "a", 1, "x");
        assert_eq!(m.bytes(), bytes);
        assert_eq!(m.len(), 1);
    }
}
