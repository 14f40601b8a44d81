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
    /// A put with a time to live: its stored value is the TTL in
    /// milliseconds (`u64`, little-endian, [`TTL_BYTES`]) and then the
    /// value. It is live for reads whose time is before the physical
    /// milliseconds of its own timestamp plus the TTL (see [`visible`]):
    /// what a read sees stays a function of its timestamp, so reads at a
    /// timestamp and transactions treat expiry like a delete at that
    /// moment that nobody wrote.
    Expiring = 4,
}

impl Kind {
    pub fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Put),
            2 => Some(Kind::Delete),
            3 => Some(Kind::Intent),
            4 => Some(Kind::Expiring),
            _ => None,
        }
    }

    /// Whether a stored value of `len` bytes is well formed for this kind.
    pub fn value_len_ok(self, len: usize) -> bool {
        self != Kind::Expiring || len >= TTL_BYTES
    }
}

/// Bytes of the TTL that leads an [`Kind::Expiring`] version's value.
pub const TTL_BYTES: usize = 8;

/// The stored value of an [`Kind::Expiring`] version.
pub fn expiring_value(ttl_ms: u64, value: &[u8]) -> Bytes {
    let mut stored = Vec::with_capacity(TTL_BYTES + value.len());
    stored.extend_from_slice(&ttl_ms.to_le_bytes());
    stored.extend_from_slice(value);
    stored.into()
}

/// The milliseconds a read at `read_ts` judges expiry by: its
/// timestamp's, or for a read of the newest state (`u64::MAX`) the
/// clock's now, which writes take their timestamps from.
pub fn read_ms(read_ts: u64, clock: &crate::clock::HybridClock) -> u64 {
    match read_ts {
        u64::MAX => clock.now_ms(),
        ts => crate::clock::ms_of_ts(ts),
    }
}

/// When an expiring version written at `ts` with this stored value
/// expires, in wall-clock milliseconds (`None` for a malformed value,
/// which decoding refuses before it gets here).
pub fn expires_at_ms(ts: u64, stored: &[u8]) -> Option<u64> {
    let ttl = u64::from_le_bytes(stored.get(..TTL_BYTES)?.try_into().expect("8 bytes"));
    Some(crate::clock::ms_of_ts(ts).saturating_add(ttl))
}

/// When a version written at `ts` expires: an expiring put's
/// [`expires_at_ms`]; `None` for any other kind.
pub fn expiry(kind: Kind, ts: u64, stored: &[u8]) -> Option<u64> {
    match kind {
        Kind::Expiring => expires_at_ms(ts, stored),
        _ => None,
    }
}

/// The value a read sees in a version written at `ts`: a put's; an
/// expiring put's while `now_ms()` (the read's time, see [`read_ms`]) is
/// before it expires; nothing for a delete or an intent. `now_ms` is
/// called only for an expiring version.
#[inline]
pub fn visible(kind: Kind, ts: u64, value: Bytes, now_ms: impl FnOnce() -> u64) -> Option<Bytes> {
    match kind {
        Kind::Put => Some(value),
        Kind::Expiring => match expires_at_ms(ts, &value) {
            Some(at) if now_ms() < at => Some(value.slice(TTL_BYTES..)),
            _ => None,
        },
        Kind::Delete | Kind::Intent => None,
    }
}

/// A user key plus a version timestamp.
///
/// Invariant: ordered by `user` ascending, then `ts` descending. The key's
/// first sixteen bytes are kept inline (`head`), so a comparison in a
/// memtable search reads the key's own allocation (one cache miss per
/// compared key: a third of a fill's memtable cost) only when both keys
/// are longer than that and share their first sixteen bytes. A key of at
/// most sixteen bytes has no allocation at all: its bytes are `head`'s and
/// `len` says how many. The memtable then holds no per-key allocation, and
/// a key it hands out is a fresh copy instead of a clone whose refcount
/// sits in a cold line.
///
/// Five words: a B-tree node of the memtable holds eleven keys, and both
/// a search (which reads keys in order) and an insert (which shifts them)
/// touch fewer cache lines the smaller a key is. A longer key's bytes sit
/// behind one pointer (`long`); its `len` is [`LONG`].
#[derive(Debug, Clone)]
pub struct InternalKey {
    head: [u8; PREFIX_BYTES],
    ts: u64,
    long: Option<Box<Bytes>>,
    len: u8,
}

/// Key bytes kept inline.
const PREFIX_BYTES: usize = 16;

/// The `len` of a key longer than [`PREFIX_BYTES`]. Greater than any
/// inline length, so a key that ties on its head with a shorter one (a
/// prefix of it) orders after it.
const LONG: u8 = PREFIX_BYTES as u8 + 1;

/// The length class of a key: its length, or [`LONG`].
#[inline]
fn len_class(key: &[u8]) -> u8 {
    key.len().min(LONG as usize) as u8
}

/// The first sixteen bytes of `key`, zero-padded.
#[inline]
fn head_of(key: &[u8]) -> [u8; PREFIX_BYTES] {
    let mut head = [0u8; PREFIX_BYTES];
    let inline = key.len().min(PREFIX_BYTES);
    head[..inline].copy_from_slice(&key[..inline]);
    head
}

/// A key's head as a pair of big-endian words. Zero is the least byte, so
/// a smaller pair means a smaller key; equal pairs of keys no longer than
/// sixteen bytes order by length.
#[inline]
fn words(head: &[u8; PREFIX_BYTES]) -> Prefix {
    let word = |bytes: &[u8]| u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
    (word(&head[..8]), word(&head[8..]))
}

/// A key's first sixteen bytes, zero-padded, as two big-endian words;
/// compared as a pair, high word first.
pub type Prefix = (u64, u64);

impl InternalKey {
    pub fn new(user: Bytes, ts: u64) -> Self {
        let head = head_of(&user);
        let len = len_class(&user);
        let long = (len == LONG).then(|| Box::new(user));
        InternalKey {
            head,
            ts,
            long,
            len,
        }
    }

    /// A key with a copy of `user`: no allocation when it fits inline.
    pub fn copied(user: &[u8], ts: u64) -> Self {
        match len_class(user) == LONG {
            true => InternalKey::new(Bytes::copy_from_slice(user), ts),
            false => InternalKey {
                head: head_of(user),
                ts,
                long: None,
                len: user.len() as u8,
            },
        }
    }

    /// A key sharing `user`'s bytes when they do not fit inline (a clone,
    /// no copy), else holding them inline (no clone: cloning a `Bytes`
    /// built from a vector allocates its shared count).
    pub fn of(user: &Bytes, ts: u64) -> Self {
        match len_class(user) == LONG {
            true => InternalKey::new(user.clone(), ts),
            false => InternalKey::copied(user, ts),
        }
    }

    /// The user key.
    #[inline]
    pub fn user(&self) -> &[u8] {
        match &self.long {
            Some(user) => user,
            None => &self.head[..self.len as usize],
        }
    }

    /// The user key, owned: a copy for a key kept inline, else a clone.
    pub fn user_bytes(&self) -> Bytes {
        match &self.long {
            Some(user) => Bytes::clone(user),
            None => Bytes::copy_from_slice(self.user()),
        }
    }

    pub fn ts(&self) -> u64 {
        self.ts
    }

    /// Whether the key's bytes sit behind a pointer (it owns an
    /// allocation), not inline.
    #[inline]
    pub fn is_long(&self) -> bool {
        self.long.is_some()
    }
}

impl PartialEq for InternalKey {
    fn eq(&self, other: &Self) -> bool {
        self.ts == other.ts && self.user() == other.user()
    }
}

impl Eq for InternalKey {}

impl std::hash::Hash for InternalKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.user().hash(state);
        self.ts.hash(state);
    }
}

impl Ord for InternalKey {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        compare_prefixed(self, other)
    }
}

impl PartialOrd for InternalKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A borrowed view of a versioned key, so ordered maps keyed by
/// [`InternalKey`] can be probed with a [`Probe`] without building an owned
/// key (an allocation and a copy per memtable read).
pub trait KeyRef {
    /// (prefix, length class, ts), in one call: each comparison through
    /// the trait object costs one indirect call per side. The key's bytes
    /// ([`KeyRef::user`]) are needed only past equal prefixes of two keys
    /// longer than the prefix.
    fn parts(&self) -> (Prefix, u8, u64);

    /// The whole user key.
    fn user(&self) -> &[u8];
}

impl KeyRef for InternalKey {
    #[inline]
    fn parts(&self) -> (Prefix, u8, u64) {
        (words(&self.head), self.len, self.ts)
    }

    #[inline]
    fn user(&self) -> &[u8] {
        InternalKey::user(self)
    }
}

/// A versioned key to search for, borrowed.
pub struct Probe<'a> {
    prefix: Prefix,
    len: u8,
    user: &'a [u8],
    ts: u64,
}

impl<'a> Probe<'a> {
    pub fn new(user: &'a [u8], ts: u64) -> Self {
        Probe {
            prefix: words(&head_of(user)),
            len: len_class(user),
            user,
            ts,
        }
    }
}

impl KeyRef for Probe<'_> {
    #[inline]
    fn parts(&self) -> (Prefix, u8, u64) {
        (self.prefix, self.len, self.ts)
    }

    #[inline]
    fn user(&self) -> &[u8] {
        self.user
    }
}

impl<'a> std::borrow::Borrow<dyn KeyRef + 'a> for InternalKey {
    fn borrow(&self) -> &(dyn KeyRef + 'a) {
        self
    }
}

impl Ord for dyn KeyRef + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_prefixed(self, other)
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

/// [`compare`] of keys that carry their head words and length classes.
/// Reads the key bytes only past equal prefixes of two long keys.
#[inline]
fn compare_prefixed<A: KeyRef + ?Sized, B: KeyRef + ?Sized>(a: &A, b: &B) -> Ordering {
    let ((a_prefix, a_len, a_ts), (b_prefix, b_len, b_ts)) = (a.parts(), b.parts());
    a_prefix
        .cmp(&b_prefix)
        .then_with(|| match a_len == LONG && b_len == LONG {
            true => compare_bytes(&a.user()[PREFIX_BYTES..], &b.user()[PREFIX_BYTES..]),
            false => a_len.cmp(&b_len),
        })
        .then(b_ts.cmp(&a_ts))
}

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

/// A live key and value a scan found, with when the key expires, in
/// wall-clock milliseconds, if it was written with a TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub key: Bytes,
    pub value: Bytes,
    pub expires_at_ms: Option<u64>,
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

    #[test]
    fn an_expiring_value_is_live_before_its_timestamp_plus_its_ttl() {
        use crate::clock::ts_from_ms;
        let ts = ts_from_ms(1_000) | 7;
        let stored = expiring_value(250, b"v");
        let at = |ms| visible(Kind::Expiring, ts, stored.clone(), || ms);
        assert_eq!(at(1_249).as_deref(), Some(&b"v"[..]));
        assert_eq!(at(1_250), None);
        // A TTL past the end of time never expires; a short value is
        // malformed, for decoding to refuse, and never shown.
        let forever = expiring_value(u64::MAX, b"v");
        assert!(visible(Kind::Expiring, ts, forever, || u64::MAX - 1).is_some());
        assert!(!Kind::Expiring.value_len_ok(TTL_BYTES - 1));
        assert!(Kind::Put.value_len_ok(0) && Kind::Expiring.value_len_ok(TTL_BYTES));
        assert_eq!(
            visible(Kind::Expiring, ts, Bytes::from_static(b"short"), || 0),
            None
        );
        assert_eq!(visible(Kind::Delete, ts, Bytes::new(), || 0), None);
    }

    #[test]
    fn a_memtable_key_takes_five_words() {
        assert_eq!(std::mem::size_of::<InternalKey>(), 40);
    }

    #[test]
    fn short_keys_live_inline_and_long_ones_keep_their_bytes() {
        for len in [0usize, 1, 15, 16, 17, 40] {
            let user: Bytes = (0..len as u8).map(|b| b.wrapping_mul(37)).collect();
            let k = InternalKey::new(user.clone(), 7);
            assert_eq!(k.user(), user.as_ref());
            assert_eq!(InternalKey::copied(&user, 7), k);
            assert_eq!(InternalKey::of(&user, 7), k);
            assert_eq!(InternalKey::copied(&user, 7).cmp(&k), Ordering::Equal);
            assert_eq!(k.user_bytes(), user);
            assert_eq!(k, InternalKey::new(user.clone(), 7));
            assert_eq!(k.ts(), 7);
        }
    }

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

        #[test]
        fn internal_keys_order_like_their_parts(
            a in prop::collection::vec(0u8..3, 0..40),
            b in prop::collection::vec(0u8..3, 0..40),
            shared in 0usize..24,
            ta in 0u64..4,
            tb in 0u64..4,
        ) {
            // Short keys, zero bytes and shared heads: where the inline
            // prefix ties or pads.
            let c: Vec<u8> = a.iter().take(shared).chain(&b).copied().collect();
            for (x, y) in [(&a, &b), (&a, &c), (&c, &a)] {
                let want = x.cmp(y).then(tb.cmp(&ta));
                let (kx, ky) = (
                    InternalKey::new(Bytes::copy_from_slice(x), ta),
                    InternalKey::new(Bytes::copy_from_slice(y), tb),
                );
                prop_assert_eq!(kx.cmp(&ky), want);
                let (px, py): (&dyn KeyRef, &dyn KeyRef) = (&Probe::new(x, ta), &ky);
                prop_assert_eq!(px.cmp(py), want);
            }
        }
    }
}
