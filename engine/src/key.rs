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

/// Compares two versioned keys given as parts.
#[inline]
pub fn compare(a_user: &[u8], a_ts: u64, b_user: &[u8], b_ts: u64) -> Ordering {
    a_user.cmp(b_user).then(b_ts.cmp(&a_ts))
}

/// One version of one key, as stored in memtables, SSTs and WAL batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Bytes,
    pub ts: u64,
    pub kind: Kind,
    pub value: Bytes,
}

impl Entry {
    pub fn encoded_len(&self) -> usize {
        self.key.len() + self.value.len() + 8 + 1
    }
}
