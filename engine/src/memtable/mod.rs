//! The in-memory write buffer of one shard. Single-threaded (the shard owns
//! it), so a B+tree of its own (`tree.rs`) in a `RefCell` is enough: no
//! skiplist, no locks.
//!
//! Sketch: a 16-byte key + 100-byte value costs ~260 bytes here (measured:
//! resident memory over 300k versions of random keys): the value in a
//! chunk, a 74-byte leaf slot in leaves ~70% full, the inner nodes and the
//! allocator's rounding. A 64 MiB memtable holds ~260k such versions.

mod tree;

use crate::key::{Entry, InternalKey, KeyRef, Kind, Probe, Versioned};
use crate::sst::bloom;
use bytes::{Bytes, BytesMut};
use std::cell::{Cell, RefCell};
use tree::{Tree, Value};

/// Approximate per-version overhead of the tree (node slots at the fill
/// random inserts leave, allocator rounding), besides the key and value.
/// (120 with 40-byte values in the slots, when a version measured ~300
/// bytes: memtables overran their budget by ~20%.)
const ENTRY_OVERHEAD_BYTES: usize = 135;

/// Values are copied into chunks of this size (see [`Memtable::insert`]).
const ARENA_CHUNK_BYTES: usize = 256 << 10;
/// After each copy, the chunk's lines this far ahead are prefetched: a
/// chunk is fresh memory the core does not hold, so each copy's stores
/// waited on its lines (measured when each value also bumped a count on
/// its chunk, an atomic that drained the store buffer: SETs with 16-deep
/// pipelines +4% over 6 alternating rounds).
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
    chunks: RefCell<Chunks>,
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
            chunks: RefCell::new(Chunks::new()),
            bytes: Cell::default(),
            max_ts: Cell::default(),
        }
    }

    /// Adds a version. A value of up to 4 KiB is copied into the
    /// memtable's current chunk (see [`Chunks`]). Dropping a flushed
    /// memtable (~330k versions of 100 bytes) whose versions each held a
    /// buffer of their own freed each, a cache miss apiece: ~22 ms in one
    /// go on the shard that serves requests, the longest stall durable
    /// writes saw.
    pub fn insert(&self, entry: Entry) {
        let add = entry_bytes(&entry.key, &entry.value);
        let value = self.chunks.borrow_mut().add(entry.kind, entry.value);
        self.filter.borrow_mut().insert(bloom::hash(&entry.key));
        let old = self
            .map
            .borrow_mut()
            .insert(InternalKey::new(entry.key, entry.ts), value);
        match old {
            // Replaying a WAL record twice stores the same version twice.
            Some(_) => {}
            None => self.bytes.set(self.bytes.get() + add),
        }
        if entry.ts > self.max_ts.get() {
            self.max_ts.set(entry.ts);
        }
    }

    /// Consumes the memtable, to free it a few pieces at a time.
    pub fn into_pieces(self) -> Pieces {
        Pieces {
            nodes: self.map.into_inner().into_nodes(),
            chunks: self.chunks.into_inner().done,
        }
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

    /// Starts loading what reads of the newest versions of those of `keys`
    /// (with these [`bloom::hash`]es) the memtable may hold will touch:
    /// the paths they walk, the versions they find and those versions'
    /// values (see `Tree::prefetch_reads`).
    pub fn prefetch_reads_of_held(&self, keys: &[&[u8]], hashes: &[u64]) {
        let filter = self.filter.borrow();
        self.with_probes(
            keys,
            |i| filter.may_contain(hashes[i]),
            |map, probes| {
                let chunks = self.chunks.borrow();
                map.prefetch_reads(probes, |value| prefetch_value(chunks.slice(value)));
            },
        );
    }

    fn prefetch_paths_where(&self, keys: &[&[u8]], held: impl Fn(usize) -> bool) {
        self.with_probes(keys, held, |map, probes| map.prefetch_paths(probes));
    }

    /// Calls `f` with probes for the newest versions of those of `keys`
    /// (at most [`PREFETCH_KEYS_MAX`]) that are `held`, if any are.
    fn with_probes(
        &self,
        keys: &[&[u8]],
        held: impl Fn(usize) -> bool,
        f: impl FnOnce(&Tree, &[Option<Probe>]),
    ) {
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
            f(&self.map.borrow(), &probes[..n]);
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
        let (k, value) = map.first_from(probe)?;
        (k.user() == key).then(|| Versioned {
            ts: k.ts(),
            kind: value.kind,
            value: self.chunks.borrow().bytes(value),
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
        let chunks = self.chunks.borrow();
        out.extend(
            map.iter_from(Some((from, !inclusive)))
                .take(max)
                .map(|(k, value)| Entry {
                    key: k.user_bytes(),
                    ts: k.ts(),
                    kind: value.kind,
                    value: chunks.bytes(value),
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
        mut f: impl FnMut(&InternalKey, Kind, &[u8]) -> bool,
    ) -> Option<InternalKey> {
        let map = self.map.borrow();
        let chunks = self.chunks.borrow();
        let from = after.map(|k| (k as &dyn KeyRef, true));
        let versions = map.iter_from(from);
        // Values sit in their chunks in the order they were written, not in
        // key order: each one visited was a cache miss, waited on by the
        // copy into the table being built (about half a flush's CPU).
        // A second cursor runs ahead and prefetches them. Leaves are
        // scattered too: the cursor ahead loads each leaf a leaf before
        // it reads the leaf's values (its own misses were ~60% of a
        // walk's time, and the keys read behind it another ~25%).
        let mut ahead = map
            .iter_from_loading_leaves(from)
            .skip(VISIT_PREFETCH_AHEAD);
        for (k, value) in versions {
            if let Some((_, upcoming)) = ahead.next() {
                prefetch_value(chunks.slice(upcoming));
            }
            if !f(k, value.kind, chunks.slice(value)) {
                return Some(k.clone());
            }
        }
        None
    }
}

/// Starts loading every line the first [`VISIT_PREFETCH_BYTES`] of
/// `value` touch, the last included.
fn prefetch_value(value: &[u8]) {
    let (at, len) = (value.as_ptr(), value.len().min(VISIT_PREFETCH_BYTES));
    for offset in (0..len).step_by(64).chain(len.checked_sub(1)) {
        crate::hint::prefetch(at.wrapping_add(offset));
    }
}

/// Where a memtable's values sit. Values of up to [`ARENA_VALUE_MAX`] are
/// copied back to back into chunks of [`ARENA_CHUNK_BYTES`]; a larger one
/// is a chunk of its own, kept, not copied. Versions refer to their values
/// by chunk number and offset ([`Value`]), so that freeing the memtable
/// frees its chunks and nodes, and nothing per version.
struct Chunks {
    /// Filled chunks and large values; at `filling`, an empty placeholder
    /// for the chunk being filled.
    done: Vec<Bytes>,
    filling: BytesMut,
    filling_at: u32,
}

impl Chunks {
    fn new() -> Self {
        Chunks {
            done: vec![Bytes::new()],
            filling: BytesMut::new(),
            filling_at: 0,
        }
    }

    /// Stores `value` (shorter than 4 GiB, as the engine's value limit
    /// ensures).
    fn add(&mut self, kind: Kind, value: Bytes) -> Value {
        let len = u32::try_from(value.len()).expect("values are shorter than 4 GiB");
        let (chunk, offset) = match value.len() {
            0 => (0, 0),
            n if n > ARENA_VALUE_MAX => {
                self.done.push(value);
                (self.done.len() - 1, 0)
            }
            n => {
                if self.filling.capacity() - self.filling.len() < n {
                    let full = std::mem::replace(
                        &mut self.filling,
                        BytesMut::with_capacity(ARENA_CHUNK_BYTES),
                    );
                    self.done[self.filling_at as usize] = full.freeze();
                    self.filling_at = self.done.len() as u32;
                    self.done.push(Bytes::new());
                }
                let offset = self.filling.len();
                self.filling.extend_from_slice(&value);
                let spare = self.filling.spare_capacity_mut();
                for at in (ARENA_PREFETCH_FROM..spare.len().min(ARENA_PREFETCH_TO)).step_by(64) {
                    crate::hint::prefetch(spare[at..].as_ptr().cast());
                }
                (self.filling_at as usize, offset)
            }
        };
        Value {
            kind,
            chunk: chunk as u32,
            offset: offset as u32,
            len,
        }
    }

    /// A value's bytes.
    fn slice(&self, value: &Value) -> &[u8] {
        if value.len == 0 {
            return &[];
        }
        let chunk: &[u8] = match value.chunk == self.filling_at {
            true => &self.filling,
            false => &self.done[value.chunk as usize],
        };
        &chunk[value.offset as usize..][..value.len as usize]
    }

    /// A value, owned: a share of its chunk, or a copy while its chunk is
    /// still being filled.
    fn bytes(&self, value: &Value) -> Bytes {
        match value.len != 0 && value.chunk != self.filling_at {
            true => {
                let start = value.offset as usize;
                self.done[value.chunk as usize].slice(start..start + value.len as usize)
            }
            false => Bytes::copy_from_slice(self.slice(value)),
        }
    }
}

/// A memtable being freed (see [`Memtable::into_pieces`]).
pub struct Pieces {
    nodes: tree::Nodes,
    chunks: Vec<Bytes>,
}

impl Pieces {
    /// Frees up to `n` tree nodes, or one chunk of values in place of 64
    /// of them; returns whether any pieces are left.
    pub fn free(&mut self, n: usize) -> bool {
        if self.nodes.free(n) {
            return true;
        }
        for _ in 0..n.div_ceil(64) {
            self.chunks.pop();
        }
        !self.chunks.is_empty()
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
        let insert = |k: &str, v: &Bytes| {
            m.insert(Entry {
                key: Bytes::copy_from_slice(k.as_bytes()),
                ts: 1,
                kind: Kind::Put,
                value: v.clone(),
            })
        };
        for (k, v) in [("a", &small), ("b", &small), ("c", &large)] {
            insert(k, v);
        }
        let get = |k: &str| m.get(k.as_bytes(), 1).unwrap().value;
        // While their chunk fills, reads get copies.
        let (a, c) = (get("a"), get("c"));
        assert_eq!((a.clone(), c.clone()), (small.clone(), large.clone()));
        assert_ne!(a.as_ptr(), small.as_ptr(), "a small value is copied");
        assert_eq!(c.as_ptr(), large.as_ptr(), "a large value is kept");
        // Fill the chunk and start the next: reads of its values now share
        // it, the two copies back to back.
        for i in 0..ARENA_CHUNK_BYTES / small.len() {
            insert(&format!("fill-{i}"), &small);
        }
        let (a, b) = (get("a"), get("b"));
        assert_eq!((&a, &b), (&small, &small));
        assert_eq!(b.as_ptr(), a.as_ptr().wrapping_add(a.len()));
        assert_eq!(get("a").as_ptr(), a.as_ptr(), "reads share, not copy");
        assert_eq!(get("c").as_ptr(), large.as_ptr());
        let mut pieces = m.into_pieces();
        while pieces.free(3) {}
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Values of every size class (empty, small, at the copy limit,
        /// past it) across many chunks read back the same by every path:
        /// point reads, ordered reads and a flush's visit.
        #[test]
        fn values_read_back_whole_across_chunks(
            ops in proptest::collection::vec((0u8..40, 0usize..6, proptest::prelude::any::<u8>()), 1..400)
        ) {
            const SIZES: [usize; 6] = [0, 1, 100, ARENA_VALUE_MAX, ARENA_VALUE_MAX + 1, 3000];
            let m = Memtable::new();
            let mut model = std::collections::BTreeMap::new();
            for (ts, &(key, size, fill)) in (1u64..).zip(&ops) {
                let key = Bytes::from(format!("key-{key:02}"));
                let value = Bytes::from(vec![fill; SIZES[size]]);
                let kind = if size == 0 { Kind::Delete } else { Kind::Put };
                m.insert(Entry { key: key.clone(), ts, kind, value: value.clone() });
                model.insert((key, std::cmp::Reverse(ts)), (kind, value));
            }
            for ((key, std::cmp::Reverse(ts)), (kind, value)) in &model {
                let got = m.get(key, *ts).expect("version present");
                proptest::prop_assert_eq!((got.ts, got.kind, &got.value), (*ts, *kind, value));
            }
            let mut ordered = Vec::new();
            m.range_from(&InternalKey::copied(b"", u64::MAX), true, usize::MAX, &mut ordered);
            let want: Vec<_> = model
                .iter()
                .map(|((k, std::cmp::Reverse(ts)), (kind, v))| (k.clone(), *ts, *kind, v.clone()))
                .collect();
            let got: Vec<_> = ordered.into_iter().map(|e| (e.key, e.ts, e.kind, e.value)).collect();
            proptest::prop_assert_eq!(&got, &want);
            let mut visited = Vec::new();
            m.visit_from(None, |k, kind, value| {
                visited.push((k.user_bytes(), k.ts(), kind, Bytes::copy_from_slice(value)));
                true
            });
            proptest::prop_assert_eq!(&visited, &want);
            let mut pieces = m.into_pieces();
            while pieces.free(5) {}
        }
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
#[cfg(test)]
mod rss_probe {
    use super::*;
    fn rss() -> usize {
        let s = std::fs::read_to_string("/proc/self/statm").unwrap();
        s.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<usize>()
            .unwrap()
            * 4096
    }
    #[test]
    fn rss_per_version() {
        let n = 300_000u64;
        let keys: Vec<Bytes> = (0..n)
            .map(|i| Bytes::from(format!("user{:012}", (i * 2654435761) % 1_000_000_007)))
            .collect();
        let val = Bytes::from(vec![7u8; 100]);
        let before = rss();
        let m = Memtable::for_bytes(64 << 20);
        for (i, k) in keys.iter().enumerate() {
            m.insert(Entry {
                key: k.clone(),
                ts: i as u64 + 1,
                kind: Kind::Put,
                value: val.clone(),
            });
        }
        let after = rss();
        eprintln!(
            "RSS per version {} accounted {}",
            (after - before) / n as usize,
            m.bytes() / n as usize
        );
    }
}
