//! Versioned keys. Every stored version is `(user key, timestamp, kind)`;
//! the order is user key ascending, then timestamp descending, so the first
//! version at or below a read timestamp is found by one seek.

use bytes::Bytes;
use std::cmp::Ordering;

/// What a version says about its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Put = 1,
    Delete = 2,
    /// A provisional write of an undecided transaction. Reserved for the
    /// transaction layer; reads at the engine level skip it.
    Intent = 3,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Put),
            2 => Some(Kind::Delete),
            3 => Some(Kind::Intent),
            _ => None,
        }
    }
}

/// A user key plus a version timestamp.
///
/// Invariant: ordered by `user` ascending, then `ts` descending.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InternalKey {
    pub user: Bytes,
    pub ts: u64,
}

impl InternalKey {
    pub fn new(user: Bytes, ts: u64) -> Self {
        InternalKey { user, ts }
    }
}

impl Ord for InternalKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(&self.user, self.ts, &other.user, other.ts)
    }
}

impl PartialOrd for InternalKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A borrowed view of a versioned key, so ordered maps keyed by
/// [`InternalKey`] can be probed with `(&[u8], u64)` without building an
/// owned key (an allocation and a copy per memtable read).
pub trait KeyRef {
    fn user(&self) -> &[u8];
    fn ts(&self) -> u64;
}

impl KeyRef for InternalKey {
    fn user(&self) -> &[u8] {
        &self.user
    }
    fn ts(&self) -> u64 {
        self.ts
    }
}

impl KeyRef for (&[u8], u64) {
    fn user(&self) -> &[u8] {
        self.0
    }
    fn ts(&self) -> u64 {
        self.1
    }
}

impl<'a> std::borrow::Borrow<dyn KeyRef + 'a> for InternalKey {
    fn borrow(&self) -> &(dyn KeyRef + 'a) {
        self
    }
}

impl Ord for dyn KeyRef + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(self.user(), self.ts(), other.user(), other.ts())
    }
}

impl PartialOrd for dyn KeyRef + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for dyn KeyRef + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for dyn KeyRef + '_ {}

/// Compares two versioned keys given as parts.
#[inline]
pub fn compare(a_user: &[u8], a_ts: u64, b_user: &[u8], b_ts: u64) -> Ordering {
    compare_bytes(a_user, b_user).then(b_ts.cmp(&a_ts))
}

/// Byte-wise (memcmp) order of two keys, inlined: eight bytes at a time as
/// big-endian words. Keys are short (16 bytes in the benchmarks), and a
/// libc `memcmp` call per comparison was ~30% of a fill's CPU profile
/// (memtable `BTreeMap` and index searches).
#[inline]
pub fn compare_bytes(a: &[u8], b: &[u8]) -> Ordering {
    let common = a.len().min(b.len());
    let (mut ca, mut cb) = (a[..common].chunks_exact(8), b[..common].chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        let x = u64::from_be_bytes(x.try_into().expect("8 bytes"));
        let y = u64::from_be_bytes(y.try_into().expect("8 bytes"));
        if x != y {
            return x.cmp(&y);
        }
    }
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

/// One version of one key, as stored in memtables, SSTs and WAL batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Bytes,
    pub ts: u64,
    pub kind: Kind,
    pub value: Bytes,
}

/// One version of a key whose user key the caller already knows (what a
/// point read returns: no copy of the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub ts: u64,
    pub kind: Kind,
    pub value: Bytes,
}

impl Entry {
    pub fn encoded_len(&self) -> usize {
        self.key.len() + self.value.len() + 8 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn compare_bytes_is_slice_order(
            a in prop::collection::vec(any::<u8>(), 0..40),
            b in prop::collection::vec(any::<u8>(), 0..40),
            shared in 0usize..24,
        ) {
            prop_assert_eq!(compare_bytes(&a, &b), a.cmp(&b));
            // Long common prefixes exercise the word loop and the tail.
            let mut c = a.iter().take(shared).copied().collect::<Vec<u8>>();
            c.extend_from_slice(&b);
            let mut d = a.iter().take(shared).copied().collect::<Vec<u8>>();
            d.extend_from_slice(&a);
            prop_assert_eq!(compare_bytes(&c, &d), c.cmp(&d));
        }
    }
}
