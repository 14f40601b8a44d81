//! WAL record format, the only place that reads or writes it.
//!
//! A segment is a preallocated file written in chunks; each chunk is one
//! group-commit write and starts at a 4 KiB boundary. A chunk is a run of
//! records, then zero padding to the next boundary:
//!
//! ```text
//! record  := crc32c:u32 | len:u32 | type:u8 | 0:u8 x3 | segment_id:u64 | payload[len]
//!            (crc32c covers everything after itself, payload included)
//! batch   := ts:u64 | count:u32 | entry*count        (type 1)
//! entry   := kind:u8 | key_len:u32 | value_len:u32 | key | value
//! seal    := (empty payload)                         (type 2: segment complete)
//! prepare := batch   (type 3: a transaction's intents, logged before its vote)
//! commit  := batch   (type 4: prepared transaction `ts` decided to commit;
//!            written with no entries, its writes are the prepare's; logs
//!            from before 2026-11-26 repeat them here, and replay takes both)
//! decision:= ts:u64 | commit:u8 | count:u32 | shard:u32*count | batch
//!            (type 5: a coordinator's outcome for transaction `ts`, with the
//!            coordinator's own writes when it takes part: one record, so
//!            the decision and those writes are durable together)
//! ```
//! A transaction is named by its timestamp, unique across shards.
//! All integers little-endian. `segment_id` tells a record of this use of a
//! recycled file from leftovers of an earlier use; ids are never reused.

use crate::key::{Entry, Kind};
use bytes::{Buf, BufMut, Bytes};

pub const HEADER_BYTES: usize = 20;
pub const TYPE_BATCH: u8 = 1;
pub const TYPE_SEAL: u8 = 2;
pub const TYPE_PREPARE: u8 = 3;
pub const TYPE_COMMIT: u8 = 4;
pub const TYPE_DECISION: u8 = 5;

/// A logged record other than the seal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Writes applied at `ts`.
    Batch { ts: u64, entries: Vec<Entry> },
    /// Intents of transaction `ts`, not yet decided.
    Prepare { ts: u64, entries: Vec<Entry> },
    /// Prepared transaction `ts` decided to commit. Written with no
    /// entries (the prepare holds the writes); older logs repeat them.
    Commit { ts: u64, entries: Vec<Entry> },
    /// The coordinator's outcome of transaction `ts`, its participants,
    /// and the coordinator's own writes (applied if `commit`).
    Decision {
        ts: u64,
        commit: bool,
        participants: Vec<u32>,
        entries: Vec<Entry>,
    },
}

impl Record {
    pub fn record_type(&self) -> u8 {
        match self {
            Record::Batch { .. } => TYPE_BATCH,
            Record::Prepare { .. } => TYPE_PREPARE,
            Record::Commit { .. } => TYPE_COMMIT,
            Record::Decision { .. } => TYPE_DECISION,
        }
    }

    pub fn ts(&self) -> u64 {
        match self {
            Record::Batch { ts, .. }
            | Record::Prepare { ts, .. }
            | Record::Commit { ts, .. }
            | Record::Decision { ts, .. } => *ts,
        }
    }

    /// The writes applied to the memtable once the record is queued (`none`
    /// mode) or logged: batches and the coordinator's own writes of a
    /// commit. Taken out of the record, so the memtable gets them without a
    /// clone.
    pub fn into_applied_entries(self) -> Vec<Entry> {
        match self {
            Record::Batch { entries, .. }
            | Record::Decision {
                commit: true,
                entries,
                ..
            } => entries,
            _ => Vec::new(),
        }
    }

    /// Bytes the record takes in the log, header included.
    pub fn logged_len(&self) -> usize {
        HEADER_BYTES
            + match self {
                Record::Batch { entries, .. }
                | Record::Prepare { entries, .. }
                | Record::Commit { entries, .. } => batch_payload_len(entries),
                Record::Decision {
                    participants,
                    entries,
                    ..
                } => 13 + 4 * participants.len() + batch_payload_len(entries),
            }
    }

    /// Appends the whole record (header and payload) to `out`, the payload
    /// encoded in place (no staging copy: every logged byte was copied
    /// twice before).
    pub fn encode(&self, out: &mut Vec<u8>, segment_id: u64) {
        let start = begin(out, segment_id, self.record_type());
        match self {
            Record::Batch { ts, entries }
            | Record::Prepare { ts, entries }
            | Record::Commit { ts, entries } => encode_batch(out, *ts, entries),
            Record::Decision {
                ts,
                commit,
                participants,
                entries,
            } => {
                out.put_u64_le(*ts);
                out.put_u8(*commit as u8);
                out.put_u32_le(participants.len() as u32);
                for p in participants {
                    out.put_u32_le(*p);
                }
                encode_batch(out, *ts, entries);
            }
        }
        finish(out, start);
    }

    /// Decodes a payload whose checksum passed. `None`: malformed, or a type
    /// this version does not know.
    pub fn decode(record_type: u8, payload: &[u8]) -> Option<Record> {
        match record_type {
            TYPE_BATCH | TYPE_PREPARE | TYPE_COMMIT => {
                let (ts, entries) = decode_batch(payload)?;
                Some(match record_type {
                    TYPE_BATCH => Record::Batch { ts, entries },
                    TYPE_PREPARE => Record::Prepare { ts, entries },
                    _ => Record::Commit { ts, entries },
                })
            }
            TYPE_DECISION => {
                let mut buf = payload;
                if buf.remaining() < 13 {
                    return None;
                }
                let ts = buf.get_u64_le();
                let commit = match buf.get_u8() {
                    0 => false,
                    1 => true,
                    _ => return None,
                };
                let count = buf.get_u32_le() as usize;
                if buf.remaining() < 4 * count {
                    return None;
                }
                let participants = (0..count).map(|_| buf.get_u32_le()).collect();
                let (batch_ts, entries) = decode_batch(buf)?;
                if batch_ts != ts {
                    return None;
                }
                Some(Record::Decision {
                    ts,
                    commit,
                    participants,
                    entries,
                })
            }
            _ => None,
        }
    }
}

/// Appends one record to `out`.
pub fn encode(out: &mut Vec<u8>, segment_id: u64, record_type: u8, payload: &[u8]) {
    let start = begin(out, segment_id, record_type);
    out.extend_from_slice(payload);
    finish(out, start);
}

/// Appends a record header whose crc and length are filled in by
/// [`finish`] once the payload follows it; returns where the record starts.
fn begin(out: &mut Vec<u8>, segment_id: u64, record_type: u8) -> usize {
    let start = out.len();
    out.put_u32_le(0);
    out.put_u32_le(0);
    out.put_u8(record_type);
    out.put_bytes(0, 3);
    out.put_u64_le(segment_id);
    start
}

/// Fills in the length and crc of the record that starts at `start` and
/// runs to the end of `out`.
fn finish(out: &mut [u8], start: usize) {
    let len = out.len() - start - HEADER_BYTES;
    out[start + 4..start + 8].copy_from_slice(&(len as u32).to_le_bytes());
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Re-stamps whole records laid end to end in `buf` (as [`Record::encode`]
/// wrote them, no padding) for segment `segment_id`, recomputing each crc.
/// Records encoded ahead of the write are stamped with the segment active
/// then; a roll before the write moves them to the next one.
pub fn restamp(buf: &mut [u8], segment_id: u64) {
    let mut at = 0;
    while at < buf.len() {
        let len = u32::from_le_bytes(buf[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        let end = at + HEADER_BYTES + len;
        buf[at + 12..at + 20].copy_from_slice(&segment_id.to_le_bytes());
        let crc = crc32c::crc32c(&buf[at + 4..end]);
        buf[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

/// The outcome of parsing bytes at one position.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A valid record of the expected segment.
    Record {
        record_type: u8,
        payload: &'a [u8],
        len: usize,
    },
    /// An all-zero header: padding until the next block.
    Zero,
    /// Anything else: bad checksum, truncated, or another segment's record.
    Invalid,
}

/// Parses the record at the start of `buf`.
pub fn parse(buf: &[u8], segment_id: u64) -> Parsed<'_> {
    if buf.len() < HEADER_BYTES {
        return if buf.iter().all(|&b| b == 0) {
            Parsed::Zero
        } else {
            Parsed::Invalid
        };
    }
    if buf[..HEADER_BYTES].iter().all(|&b| b == 0) {
        return Parsed::Zero;
    }
    let mut header = &buf[..HEADER_BYTES];
    let crc = header.get_u32_le();
    let len = header.get_u32_le() as usize;
    let record_type = header.get_u8();
    header.advance(3);
    let id = header.get_u64_le();
    if id != segment_id || buf.len() < HEADER_BYTES + len {
        return Parsed::Invalid;
    }
    if crc32c::crc32c(&buf[4..HEADER_BYTES + len]) != crc {
        return Parsed::Invalid;
    }
    Parsed::Record {
        record_type,
        payload: &buf[HEADER_BYTES..HEADER_BYTES + len],
        len: HEADER_BYTES + len,
    }
}

/// Whether `buf` may start a record of this use of segment `segment_id`,
/// whether or not it checks out, rather than a leftover of an earlier use
/// of a recycled file: its header names `segment_id`, or names no segment
/// at all (a header cut off before its id, over zeros).
pub fn names_segment(buf: &[u8], segment_id: u64) -> bool {
    let Some(id) = buf.get(12..HEADER_BYTES) else {
        return true;
    };
    id == segment_id.to_le_bytes() || id == [0; 8]
}

/// Bytes a batch payload will take.
pub fn batch_payload_len(entries: &[Entry]) -> usize {
    12 + entries
        .iter()
        .map(|e| 9 + e.key.len() + e.value.len())
        .sum::<usize>()
}

/// Encodes a batch payload: all entries share `ts`.
pub fn encode_batch(out: &mut Vec<u8>, ts: u64, entries: &[Entry]) {
    out.put_u64_le(ts);
    out.put_u32_le(entries.len() as u32);
    for e in entries {
        debug_assert_eq!(e.ts, ts);
        out.put_u8(e.kind as u8);
        out.put_u32_le(e.key.len() as u32);
        out.put_u32_le(e.value.len() as u32);
        out.extend_from_slice(&e.key);
        out.extend_from_slice(&e.value);
    }
}

/// Decodes a batch payload whose checksum already passed. `None` means the
/// payload is malformed (a bug in the writer, or a crc collision).
pub fn decode_batch(payload: &[u8]) -> Option<(u64, Vec<Entry>)> {
    let owned = Bytes::copy_from_slice(payload);
    let mut buf = owned.clone();
    if buf.remaining() < 12 {
        return None;
    }
    let ts = buf.get_u64_le();
    let count = buf.get_u32_le() as usize;
    let mut entries = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        if buf.remaining() < 9 {
            return None;
        }
        let kind = Kind::from_u8(buf.get_u8())?;
        let key_len = buf.get_u32_le() as usize;
        let value_len = buf.get_u32_le() as usize;
        if buf.remaining() < key_len + value_len || !kind.value_len_ok(value_len) {
            return None;
        }
        let key = buf.split_to(key_len);
        let value = buf.split_to(value_len);
        entries.push(Entry {
            key,
            ts,
            kind,
            value,
        });
    }
    if buf.has_remaining() {
        return None;
    }
    Some((ts, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(k: &str, v: &str, ts: u64) -> Entry {
        Entry {
            key: Bytes::copy_from_slice(k.as_bytes()),
            ts,
            kind: Kind::Put,
            value: Bytes::copy_from_slice(v.as_bytes()),
        }
    }

    #[test]
    fn restamped_records_parse_for_the_new_segment_only() {
        let records = [
            Record::Batch {
                ts: 3,
                entries: vec![entry("a", "1", 3)],
            },
            Record::Batch {
                ts: 4,
                entries: vec![entry("bb", "22", 4), entry("c", "", 4)],
            },
        ];
        let mut buf = Vec::new();
        for r in &records {
            r.encode(&mut buf, 5);
        }
        restamp(&mut buf, 6);
        let mut at = 0;
        for r in &records {
            assert_eq!(parse(&buf[at..], 5), Parsed::Invalid);
            let Record::Batch { ts, entries } = r else {
                unreachable!()
            };
            at += parse_batch(&buf[at..], 6, *ts, entries);
        }
        assert_eq!(at, buf.len());
    }

    /// Parses the batch record at the start of `buf` for `segment`, checks
    /// it holds (`ts`, `entries`) and returns its length.
    fn parse_batch(buf: &[u8], segment: u64, ts: u64, entries: &[Entry]) -> usize {
        match parse(buf, segment) {
            Parsed::Record {
                record_type,
                payload,
                len,
            } => {
                assert_eq!(record_type, TYPE_BATCH);
                assert_eq!(decode_batch(payload), Some((ts, entries.to_vec())));
                len
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn batch_round_trips() {
        let entries = vec![entry("a", "1", 9), entry("bb", "", 9)];
        let mut payload = Vec::new();
        encode_batch(&mut payload, 9, &entries);
        assert_eq!(payload.len(), batch_payload_len(&entries));
        let mut rec = Vec::new();
        encode(&mut rec, 7, TYPE_BATCH, &payload);
        assert_eq!(parse_batch(&rec, 7, 9, &entries), rec.len());
    }

    #[test]
    fn transaction_records_round_trip() {
        let records = [
            Record::Prepare {
                ts: 5,
                entries: vec![entry("k", "v", 5)],
            },
            Record::Commit {
                ts: 5,
                entries: vec![entry("k", "v", 5)],
            },
            Record::Decision {
                ts: 5,
                commit: true,
                participants: vec![0, 3],
                entries: vec![entry("own", "w", 5)],
            },
            Record::Decision {
                ts: 6,
                commit: false,
                participants: vec![1],
                entries: vec![],
            },
        ];
        for r in records {
            let mut out = Vec::new();
            r.encode(&mut out, 1);
            assert_eq!(out.len(), r.logged_len());
            let Parsed::Record {
                record_type,
                payload,
                ..
            } = parse(&out, 1)
            else {
                panic!("record does not parse");
            };
            assert_eq!(Record::decode(record_type, payload), Some(r));
        }
        assert_eq!(Record::decode(TYPE_DECISION, &[0; 12]), None);
        assert_eq!(Record::decode(9, &[]), None);
    }

    #[test]
    fn a_flipped_bit_or_other_segment_is_invalid() {
        let mut rec = Vec::new();
        encode(&mut rec, 7, TYPE_SEAL, b"");
        assert_eq!(parse(&rec, 8), Parsed::Invalid);
        rec[HEADER_BYTES - 1] ^= 0x10;
        assert_eq!(parse(&rec, 7), Parsed::Invalid);
        assert_eq!(parse(&[0u8; 64], 7), Parsed::Zero);
    }
}
