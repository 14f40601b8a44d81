//! The memtable's index: a B+tree of versions that are only ever added,
//! never removed, in fixed-size nodes.
//!
//! Each node keeps its keys' 16-byte heads (as two words) in an array of
//! their own, apart from the keys and values: a search prefetches a node's
//! heads (eight cache lines, loaded in parallel) and binary-searches them,
//! then reads a key only where heads tie (versions of one key, or long keys
//! sharing their head). `std`'s `BTreeMap` holds eleven 40-byte keys per
//! node and compares them in order: about six levels at 300k versions,
//! each several dependent cache misses, most of a write's memtable cost.
//!
//! With nothing removed there is no merging or rebalancing: a full node
//! splits in two, and leaves are chained for ordered walks.

use crate::hint::prefetch;
use crate::key::{InternalKey, KeyRef, Kind, Prefix, Probe};
use std::cmp::Ordering;
use std::mem::ManuallyDrop;

/// Versions per leaf (at most 64: a split tracks slots in a `u64`).
const LEAF_CAP: usize = 32;
const _: () = assert!(LEAF_CAP <= 64);
/// Separators per inner node (children: one more).
const INNER_CAP: usize = 32;
/// No leaf.
const NONE: u32 = u32::MAX;
/// Levels above the leaves a tree can have: 33^12 versions is beyond any
/// memtable.
const MAX_HEIGHT: usize = 12;

/// A version's kind and where its value sits: `len` bytes from `offset`
/// in the memtable's chunk number `chunk` (see `Memtable`). Plain
/// numbers: with a `Bytes` per version, each holding a count on a shared
/// chunk, freeing a flushed memtable visited every version to drop its
/// count, ~3% of the server's CPU under 16-deep SETs. Now only the nodes
/// are freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Value {
    pub kind: Kind,
    pub chunk: u32,
    pub offset: u32,
    pub len: u32,
}

impl Value {
    const EMPTY: Value = Value {
        kind: Kind::Put,
        chunk: 0,
        offset: 0,
        len: 0,
    };
}

/// Versions sit in slots in arrival order and stay there; `heads` and
/// `order` are in key order (`order[i]` is the slot of the `i`th version).
/// An insert then shifts a head and a byte per later version, not a
/// 40-byte key and a 40-byte value: shifting those moved ~1.3 KiB per
/// insert and cost as much as the search it saved.
///
/// `len` leads, beside the first heads: a search reads it first, and at
/// the end of the node it was a cache miss of its own (~30% of an insert).
///
/// `keys` are dropped only if one of them ever was long (`long_keys`):
/// the others own nothing, and reading them all to find that out touched
/// 20 cache lines per leaf when a flushed memtable was freed.
#[repr(C)]
struct Leaf {
    len: usize,
    /// The next leaf in key order.
    next: u32,
    long_keys: bool,
    heads: [Prefix; LEAF_CAP],
    order: [u8; LEAF_CAP],
    keys: ManuallyDrop<[InternalKey; LEAF_CAP]>,
    vals: [Value; LEAF_CAP],
}

impl Drop for Leaf {
    fn drop(&mut self) {
        if self.long_keys {
            drop(std::mem::replace(
                &mut *self.keys,
                std::array::from_fn(|_| empty_key()),
            ));
        }
    }
}

/// Child `i` holds the keys from separator `i - 1` (inclusive) to
/// separator `i` (exclusive). Laid out like [`Leaf`]: `len`, then heads.
#[repr(C)]
struct Inner {
    len: usize,
    heads: [Prefix; INNER_CAP],
    children: [u32; INNER_CAP + 1],
    keys: [InternalKey; INNER_CAP],
}

fn empty_key() -> InternalKey {
    InternalKey::copied(b"", 0)
}

impl Leaf {
    fn new() -> Box<Leaf> {
        Box::new(Leaf {
            heads: [(0, 0); LEAF_CAP],
            order: [0; LEAF_CAP],
            keys: ManuallyDrop::new(std::array::from_fn(|_| empty_key())),
            vals: [Value::EMPTY; LEAF_CAP],
            len: 0,
            next: NONE,
            long_keys: false,
        })
    }

    /// The `i`th key in order.
    #[inline]
    fn key(&self, i: usize) -> &InternalKey {
        &self.keys[self.order[i] as usize]
    }

    #[inline]
    fn val(&self, i: usize) -> &Value {
        &self.vals[self.order[i] as usize]
    }

    /// The first position at or after `probe` (after it, with `strict`).
    #[inline]
    fn position(&self, probe: &dyn KeyRef, head: Prefix, strict: bool) -> usize {
        position(
            &self.heads[..self.len],
            |i| self.key(i),
            probe,
            head,
            strict,
        )
    }

    /// Adds a version as the `i`th in order, in the next free slot.
    fn insert_at(&mut self, i: usize, head: Prefix, key: InternalKey, val: Value) {
        debug_assert!(self.len < LEAF_CAP && i <= self.len);
        let (slot, end) = (self.len, self.len + 1);
        // Slots from `len` on hold empty keys, which own nothing:
        // overwrite them without the drop, whose read of the slot was a
        // cache miss (~2% of the server's CPU under SETs).
        debug_assert!(self.keys[slot].user().is_empty());
        self.long_keys |= key.is_long();
        std::mem::forget(std::mem::replace(&mut self.keys[slot], key));
        self.vals[slot] = val;
        self.heads[i..end].rotate_right(1);
        self.order[i..end].rotate_right(1);
        self.heads[i] = head;
        self.order[i] = slot as u8;
        self.len += 1;
    }
}

impl Inner {
    fn new() -> Box<Inner> {
        Box::new(Inner {
            heads: [(0, 0); INNER_CAP],
            keys: std::array::from_fn(|_| empty_key()),
            children: [NONE; INNER_CAP + 1],
            len: 0,
        })
    }
}

/// Starts loading the cache lines of a node's length and heads (and, for
/// an inner node, its children), all at once: they do not wait on the
/// length.
#[inline]
fn prefetch_node<T>(node: &T) {
    let at = (node as *const T).cast::<u8>();
    for offset in (0..HEAD_LINES_BYTES).step_by(64) {
        prefetch(at.wrapping_add(offset));
    }
}

/// A node's bytes up to the end of its heads and children.
const HEAD_LINES_BYTES: usize = 16 + 16 * INNER_CAP + 4 * (INNER_CAP + 1);

/// The first position whose key is at least `probe` (after it, with
/// `strict`). `head` is the probe's head; `key(i)` is the `i`th key.
#[inline]
fn position<'a>(
    heads: &[Prefix],
    key: impl Fn(usize) -> &'a InternalKey,
    probe: &dyn KeyRef,
    head: Prefix,
    strict: bool,
) -> usize {
    let mut i = heads.partition_point(|h| *h < head);
    while i < heads.len() && heads[i] == head {
        match <dyn KeyRef as Ord>::cmp(key(i), probe) {
            Ordering::Less => i += 1,
            Ordering::Equal if strict => i += 1,
            _ => break,
        }
    }
    i
}

/// A sorted set of versions with values.
///
/// Invariant: every leaf's keys are sorted and below the next leaf's;
/// each inner node's separators are sorted, and every key under child `i`
/// is at least separator `i - 1` and below separator `i`; all leaves are
/// `height` levels below the root; `len` counts the versions.
pub struct Tree {
    // Boxed: a growing vector of 3 KiB nodes would copy them all (~45 MB
    // for a full memtable) in one stall on the shard that serves requests.
    #[allow(clippy::vec_box)]
    leaves: Vec<Box<Leaf>>,
    #[allow(clippy::vec_box)]
    inners: Vec<Box<Inner>>,
    root: u32,
    /// Inner levels above the leaves (0: the root is a leaf).
    height: usize,
    len: usize,
}

impl Default for Tree {
    fn default() -> Self {
        Tree {
            leaves: vec![Leaf::new()],
            inners: Vec::new(),
            root: 0,
            height: 0,
            len: 0,
        }
    }
}

impl Tree {
    pub fn len(&self) -> usize {
        self.len
    }

    /// The leaf that holds the first key at or after `probe` (or that key
    /// is the next leaf's first), recording the path in `path` when given.
    fn descend(
        &self,
        probe: &dyn KeyRef,
        head: Prefix,
        mut path: Option<&mut [(u32, usize); MAX_HEIGHT]>,
    ) -> u32 {
        let mut node = self.root;
        for level in 0..self.height {
            let inner = &self.inners[node as usize];
            prefetch_node(&**inner);
            let heads = &inner.heads[..inner.len];
            // Children left of the probe: the separators at or below it.
            let c = position(heads, |i| &inner.keys[i], probe, head, true);
            if let Some(path) = path.as_deref_mut() {
                path[level] = (node, c);
            }
            node = inner.children[c];
        }
        node
    }

    /// The position of the first version at or after `probe` (strictly
    /// after, with `strict`): (leaf, index), or `None` past the end.
    fn seek(&self, probe: &dyn KeyRef, strict: bool) -> Option<(u32, usize)> {
        let head = probe.parts().0;
        let mut leaf = self.descend(probe, head, None);
        let node = &self.leaves[leaf as usize];
        prefetch_node(&**node);
        let mut i = node.position(probe, head, strict);
        if i == node.len {
            // Every key here is below the probe: the next leaf's first is
            // above it (it is at least the separator that bounds this one).
            leaf = node.next;
            i = 0;
        }
        (leaf != NONE).then_some((leaf, i))
    }

    /// The first version at or after `probe`.
    pub fn first_from(&self, probe: &dyn KeyRef) -> Option<(&InternalKey, &Value)> {
        let (leaf, i) = self.seek(probe, false)?;
        let node = &self.leaves[leaf as usize];
        Some((node.key(i), node.val(i)))
    }

    /// The versions from `from` on (after it, with `strict`), in order.
    pub fn iter_from(
        &self,
        from: Option<(&dyn KeyRef, bool)>,
    ) -> impl Iterator<Item = (&InternalKey, &Value)> + Clone {
        self.cursor(from, false)
    }

    /// [`Tree::iter_from`] that, each time it steps into a leaf, starts
    /// loading the whole leaf after it: a walk that runs ahead of another
    /// (a flush's prefetching cursor) then finds its leaves in cache, and
    /// the walk behind it finds their keys there too.
    pub fn iter_from_loading_leaves(
        &self,
        from: Option<(&dyn KeyRef, bool)>,
    ) -> impl Iterator<Item = (&InternalKey, &Value)> + Clone {
        self.cursor(from, true)
    }

    fn cursor(&self, from: Option<(&dyn KeyRef, bool)>, load_leaves: bool) -> Cursor<'_> {
        let start = match from {
            Some((probe, strict)) => self.seek(probe, strict),
            None => Some((self.first_leaf(), 0)).filter(|_| self.len > 0),
        };
        Cursor {
            tree: self,
            at: start.unwrap_or((NONE, 0)),
            load_leaves,
        }
    }

    fn first_leaf(&self) -> u32 {
        let mut node = self.root;
        for _ in 0..self.height {
            node = self.inners[node as usize].children[0];
        }
        node
    }

    /// Starts loading the nodes searches for `probes` will read, walking
    /// down level by level across all of them: each level's nodes are
    /// prefetched together and searched a round later, so their cache
    /// misses overlap instead of queueing one per level per search. Ends
    /// with the leaves' free slots, which inserts write.
    pub fn prefetch_paths(&self, probes: &[Option<Probe>]) {
        let (leaves, probes) = self.walk_down(probes);
        for (leaf, probe) in leaves.iter().zip(probes) {
            if probe.is_some() {
                let leaf = &self.leaves[*leaf as usize];
                let slot = leaf.len.min(LEAF_CAP - 1);
                prefetch((&leaf.keys[slot] as *const InternalKey).cast());
                prefetch((&leaf.vals[slot] as *const Value).cast());
            }
        }
    }

    /// [`Tree::prefetch_paths`] for reads of the newest versions: two
    /// rounds further, each waiting once for all probes' misses, it finds
    /// in each leaf the version whose head is the probe's and starts
    /// loading its key and value slots, then hands `value` each found
    /// value to start loading its bytes. A read otherwise waited, one
    /// after the other, for its version's key, its value slot and its
    /// value's bytes: ~5% of the server's CPU under 16-deep GETs was the
    /// copy of values that a read of the memtable had not touched before.
    pub fn prefetch_reads(&self, probes: &[Option<Probe>], mut value: impl FnMut(&Value)) {
        let (leaves, probes) = self.walk_down(probes);
        let mut found = [None; 16];
        for ((found, leaf), probe) in found.iter_mut().zip(&leaves).zip(probes) {
            let Some(probe) = probe else { continue };
            let node = &self.leaves[*leaf as usize];
            let head = probe.parts().0;
            let heads = &node.heads[..node.len];
            // By head alone: reading keys to settle ties would wait for
            // them here. A longer key sharing the head costs a wasted load.
            let i = heads.partition_point(|h| *h < head);
            if heads.get(i) == Some(&head) {
                let slot = node.order[i] as usize;
                prefetch((&node.keys[slot] as *const InternalKey).cast());
                prefetch((&node.vals[slot] as *const Value).cast());
                *found = Some((node, slot));
            }
        }
        for (node, slot) in found.iter().flatten() {
            value(&node.vals[*slot]);
        }
    }

    /// Walks `probes` (at most 16) down to their leaves, a level at a
    /// time, and starts loading the leaves: the leaf of each probe.
    fn walk_down<'p, 'k>(
        &self,
        probes: &'p [Option<Probe<'k>>],
    ) -> ([u32; 16], &'p [Option<Probe<'k>>]) {
        let mut at = [self.root; 16];
        let probes = &probes[..probes.len().min(at.len())];
        for level in 0..self.height {
            for (node, probe) in at.iter_mut().zip(probes) {
                let Some(probe) = probe else { continue };
                let inner = &self.inners[*node as usize];
                let heads = &inner.heads[..inner.len];
                let c = position(heads, |i| &inner.keys[i], probe, probe.parts().0, true);
                *node = inner.children[c];
                match level + 1 < self.height {
                    true => prefetch_node(&*self.inners[*node as usize]),
                    false => prefetch_node(&*self.leaves[*node as usize]),
                }
            }
        }
        (at, probes)
    }

    /// Adds a version; an equal one already there gets `val` and its old
    /// value is returned.
    pub fn insert(&mut self, key: InternalKey, val: Value) -> Option<Value> {
        let head = key.parts().0;
        let mut path = [(0u32, 0usize); MAX_HEIGHT];
        let leaf = self.descend(&key, head, Some(&mut path));
        let node = &mut self.leaves[leaf as usize];
        prefetch_node(&**node);
        // The free slot the version will take.
        prefetch((&node.keys[node.len.min(LEAF_CAP - 1)] as *const InternalKey).cast());
        let i = node.position(&key, head, false);
        // Equal keys have equal heads: a head that differs settles it
        // without reading the key, whose slot no prefetch reached (it
        // was ~4% of the server's CPU under 16-deep SETs).
        if i < node.len && node.heads[i] == head && *node.key(i) == key {
            let slot = node.order[i] as usize;
            return Some(std::mem::replace(&mut node.vals[slot], val));
        }
        self.len += 1;
        if node.len < LEAF_CAP {
            node.insert_at(i, head, key, val);
            return None;
        }
        let (mut sep, mut right) = self.split_leaf(leaf, i, head, key, val);
        for level in (0..self.height).rev() {
            let (inner, c) = path[level];
            match self.insert_separator(inner, c, sep, right) {
                None => return None,
                Some((up, new)) => (sep, right) = (up, new),
            }
        }
        // The root split: a new root above both halves.
        let mut root = Inner::new();
        root.heads[0] = sep.0;
        root.keys[0] = sep.1;
        root.children[0] = self.root;
        root.children[1] = right;
        root.len = 1;
        self.inners.push(root);
        self.root = (self.inners.len() - 1) as u32;
        self.height += 1;
        assert!(self.height < MAX_HEIGHT, "memtable tree too deep");
        None
    }

    /// Splits full leaf `leaf` in two and adds the version at `i`. Returns
    /// the separator (the right half's first key) and the right half.
    fn split_leaf(
        &mut self,
        leaf: u32,
        i: usize,
        head: Prefix,
        key: InternalKey,
        val: Value,
    ) -> ((Prefix, InternalKey), u32) {
        let right_id = self.leaves.len() as u32;
        let mut right = Leaf::new();
        let left = &mut self.leaves[leaf as usize];
        let mid = LEAF_CAP / 2;
        for (j, at) in (mid..LEAF_CAP).enumerate() {
            let slot = left.order[at] as usize;
            right.keys[j] = std::mem::replace(&mut left.keys[slot], empty_key());
            right.vals[j] = left.vals[slot];
            right.heads[j] = left.heads[at];
            right.order[j] = j as u8;
        }
        right.len = LEAF_CAP - mid;
        right.long_keys = left.long_keys;
        left.len = mid;
        // The versions left sit in scattered slots, and inserts take the
        // slots from `len` on: move those past it into the emptied ones.
        let mut used = 0u64;
        for &slot in &left.order[..mid] {
            used |= 1 << slot;
        }
        for at in 0..mid {
            let slot = left.order[at] as usize;
            if slot >= mid {
                let free = (!used).trailing_zeros() as usize;
                debug_assert!(free < mid);
                left.keys.swap(free, slot);
                left.vals.swap(free, slot);
                left.order[at] = free as u8;
                used |= 1 << free;
            }
        }
        right.next = left.next;
        left.next = right_id;
        match i <= mid {
            true => left.insert_at(i, head, key, val),
            false => right.insert_at(i - mid, head, key, val),
        }
        let sep = (right.heads[0], right.key(0).clone());
        self.leaves.push(right);
        (sep, right_id)
    }

    /// Adds separator `sep` at position `c` of inner node `inner`, with
    /// `right` as the child after it. If the node was full it splits:
    /// returns the separator that moves up and the new right node.
    fn insert_separator(
        &mut self,
        inner: u32,
        c: usize,
        sep: (Prefix, InternalKey),
        right: u32,
    ) -> Option<((Prefix, InternalKey), u32)> {
        let node = &mut self.inners[inner as usize];
        if node.len < INNER_CAP {
            let n = node.len;
            node.heads[c..=n].rotate_right(1);
            node.keys[c..=n].rotate_right(1);
            node.children[c + 1..=n + 1].rotate_right(1);
            node.heads[c] = sep.0;
            node.keys[c] = sep.1;
            node.children[c + 1] = right;
            node.len += 1;
            return None;
        }
        // Full: lay out all separators and children, then cut in two
        // around the middle separator, which moves up.
        let mut seps: Vec<(Prefix, InternalKey)> = (0..INNER_CAP)
            .map(|j| {
                let key = std::mem::replace(&mut node.keys[j], empty_key());
                (node.heads[j], key)
            })
            .collect();
        let mut children: Vec<u32> = node.children.to_vec();
        seps.insert(c, sep);
        children.insert(c + 1, right);
        let mid = seps.len() / 2;
        let right_seps = seps.split_off(mid + 1);
        let up = seps.pop().expect("the middle separator");
        let right_children = children.split_off(mid + 1);
        let fill = |node: &mut Inner, seps: Vec<(Prefix, InternalKey)>, children: Vec<u32>| {
            node.len = seps.len();
            for (j, (head, key)) in seps.into_iter().enumerate() {
                node.heads[j] = head;
                node.keys[j] = key;
            }
            node.children = [NONE; INNER_CAP + 1];
            node.children[..children.len()].copy_from_slice(&children);
        };
        fill(node, seps, children);
        let mut new = Inner::new();
        fill(&mut new, right_seps, right_children);
        self.inners.push(new);
        Some((up, (self.inners.len() - 1) as u32))
    }

    /// The tree's nodes, to be freed a few at a time.
    pub fn into_nodes(self) -> Nodes {
        Nodes {
            leaves: self.leaves,
            inners: self.inners,
        }
    }
}

/// A tree's nodes being freed (see [`Tree::into_nodes`]).
pub struct Nodes {
    #[allow(clippy::vec_box)]
    leaves: Vec<Box<Leaf>>,
    #[allow(clippy::vec_box)]
    inners: Vec<Box<Inner>>,
}

impl Nodes {
    /// Frees up to `n` nodes; returns whether any are left.
    pub fn free(&mut self, n: usize) -> bool {
        for _ in 0..n {
            if self.leaves.pop().is_none() && self.inners.pop().is_none() {
                return false;
            }
        }
        !(self.leaves.is_empty() && self.inners.is_empty())
    }
}

/// An ordered walk: (leaf, index) of the next version.
#[derive(Clone)]
struct Cursor<'a> {
    tree: &'a Tree,
    at: (u32, usize),
    /// Prefetch the leaf after each leaf stepped into.
    load_leaves: bool,
}

impl<'a> Iterator for Cursor<'a> {
    type Item = (&'a InternalKey, &'a Value);

    fn next(&mut self) -> Option<Self::Item> {
        let (mut leaf, mut i) = self.at;
        while leaf != NONE {
            let node = &self.tree.leaves[leaf as usize];
            if i < node.len {
                self.at = (leaf, i + 1);
                return Some((node.key(i), node.val(i)));
            }
            leaf = node.next;
            i = 0;
            if self.load_leaves && leaf != NONE {
                let after = self.tree.leaves[leaf as usize].next;
                if after != NONE {
                    let at = (&*self.tree.leaves[after as usize] as *const Leaf).cast::<u8>();
                    for offset in (0..std::mem::size_of::<Leaf>()).step_by(64) {
                        prefetch(at.wrapping_add(offset));
                    }
                }
            }
        }
        self.at = (NONE, 0);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Probe;
    use bytes::Bytes;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
    use std::sync::Arc;

    /// Short keys, keys of exactly 16 bytes, and long keys sharing their
    /// 16-byte head, so heads tie across keys as well as across versions.
    fn key(k: u16) -> Bytes {
        Bytes::from(match k % 3 {
            0 => format!("k{k}"),
            1 => format!("{k:016}"),
            _ => format!("a-long-shared-head-{k:05}"),
        })
    }

    fn value(v: u32) -> Value {
        Value {
            kind: Kind::Put,
            chunk: v,
            offset: v / 3,
            len: v % 1000,
        }
    }

    fn build(ops: &[(u16, u64, u32)]) -> (Tree, BTreeMap<InternalKey, Value>) {
        let mut tree = Tree::default();
        let mut model: BTreeMap<InternalKey, Value> = BTreeMap::new();
        for &(k, ts, v) in ops {
            let ik = InternalKey::new(key(k), ts);
            assert_eq!(
                tree.insert(ik.clone(), value(v)),
                model.insert(ik, value(v))
            );
        }
        (tree, model)
    }

    fn check(ops: &[(u16, u64, u32)]) -> Result<(), TestCaseError> {
        let (tree, model) = build(ops);
        prop_assert_eq!(tree.len(), model.len());
        let all: Vec<_> = tree.iter_from(None).collect();
        let want: Vec<_> = model.iter().collect();
        prop_assert_eq!(all, want);
        // Seeks at, between and past the versions, inclusive and not.
        for &(k, ts, _) in ops.iter().take(50) {
            for ts in [ts.saturating_sub(1), ts, ts + 1] {
                let user = key(k);
                let probe = Probe::new(&user, ts);
                let ik = InternalKey::new(key(k), ts);
                let got: Vec<_> = tree.iter_from(Some((&probe, false))).take(3).collect();
                let want: Vec<_> = model.range::<InternalKey, _>(&ik..).take(3).collect();
                prop_assert_eq!(got, want);
                let got: Vec<_> = tree.iter_from(Some((&probe, true))).take(3).collect();
                let want: Vec<_> = model
                    .range::<InternalKey, _>((
                        std::ops::Bound::Excluded(&ik),
                        std::ops::Bound::Unbounded,
                    ))
                    .take(3)
                    .collect();
                prop_assert_eq!(got, want);
                prop_assert_eq!(
                    tree.first_from(&probe),
                    model.range::<InternalKey, _>(&ik..).next()
                );
            }
        }
        check_prefetch_reads(&tree, &model, ops)?;
        let mut nodes = tree.into_nodes();
        while nodes.free(7) {}
        Ok(())
    }

    /// What `prefetch_reads` hands over for up to 16 probes of short and
    /// 16-byte keys (present ones, then an absent one): in probe order, the
    /// newest values of some of the present keys, and never another
    /// value. Returns how many it found.
    fn check_prefetch_reads(
        tree: &Tree,
        model: &BTreeMap<InternalKey, Value>,
        ops: &[(u16, u64, u32)],
    ) -> Result<usize, TestCaseError> {
        let mut probed: Vec<u16> = Vec::new();
        for &(k, _, _) in ops {
            if k % 3 != 2 && !probed.contains(&k) && probed.len() < 15 {
                probed.push(k);
            }
        }
        probed.push(60001);
        let users: Vec<Bytes> = probed.iter().map(|&k| key(k)).collect();
        let probes: Vec<Option<Probe>> = users
            .iter()
            .map(|u| Some(Probe::new(u, u64::MAX)))
            .collect();
        let newest: Vec<Value> = users
            .iter()
            .filter_map(|u| {
                let from = InternalKey::new(u.clone(), u64::MAX);
                model
                    .range(from..)
                    .next()
                    .filter(|(k, _)| k.user() == &u[..])
                    .map(|(_, v)| *v)
            })
            .collect();
        let mut found = Vec::new();
        tree.prefetch_reads(&probes, |v| found.push(*v));
        let mut expected = newest.iter();
        for v in &found {
            prop_assert!(
                expected.any(|e| e == v),
                "{v:?} is not the next probed key's newest"
            );
        }
        Ok(found.len())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn matches_a_btreemap(ops in prop::collection::vec((0u16..400, 1u64..6, any::<u32>()), 0..3000)) {
            check(&ops)?;
        }
    }

    #[test]
    fn ascending_descending_and_one_key_inserts_stay_ordered() {
        let up: Vec<_> = (0..5000u16).map(|k| (k, 1, k as u32)).collect();
        let down: Vec<_> = (0..5000u16).rev().map(|k| (k, 1, k as u32)).collect();
        let versions: Vec<_> = (1..3000u64).map(|ts| (7, ts, ts as u32)).collect();
        for ops in [up, down, versions] {
            check(&ops).unwrap();
        }
    }

    #[test]
    fn reads_prefetch_most_of_the_values_they_will_find() {
        // 16-byte keys, one version each, inserted out of order.
        let ops: Vec<_> = (0..3000u32)
            .map(|i| ((i * 7919 % 3000 * 3 + 1) as u16, 1, i))
            .collect();
        let (tree, model) = build(&ops);
        let found = check_prefetch_reads(&tree, &model, &ops).unwrap();
        assert!(found >= 12, "{found} of 15 present keys found");
    }

    #[test]
    fn an_empty_tree_has_nothing_to_walk() {
        let tree = Tree::default();
        assert_eq!(tree.iter_from(None).count(), 0);
        let probe = Probe::new(b"a", 1);
        assert!(tree.first_from(&probe).is_none());
        assert!(tree.iter_from(Some((&probe, false))).next().is_none());
        assert!(!tree.into_nodes().free(1));
    }

    /// Dropped when its key is.
    struct Owner(Arc<AtomicUsize>, &'static [u8]);

    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            self.1
        }
    }

    impl Drop for Owner {
        fn drop(&mut self) {
            self.0.fetch_add(1, AtomicOrdering::Relaxed);
        }
    }

    #[test]
    fn freeing_the_nodes_frees_long_keys_and_only_those() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let mut tree = Tree::default();
        for k in 0..2000u32 {
            // Every 10th key is long, and each one owns its bytes.
            let key = match k % 10 {
                0 => Bytes::from_owner(Owner(
                    dropped.clone(),
                    format!("a-long-key-past-sixteen-bytes-{k:05}")
                        .leak()
                        .as_bytes(),
                )),
                _ => Bytes::from(format!("k{k:05}")),
            };
            tree.insert(InternalKey::new(key, 1), value(k));
        }
        let mut nodes = tree.into_nodes();
        assert!(nodes.free(1), "a tree of 2000 versions has many nodes");
        while nodes.free(16) {}
        assert_eq!(dropped.load(AtomicOrdering::Relaxed), 200);
    }
}
