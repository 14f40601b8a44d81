//! One shard's side of a transaction: admission under multi-version
//! timestamp ordering (`cc.rs`), reads at the transaction's timestamp,
//! condition checks, and either a one-phase commit (the shard is the only
//! participant) or a durable prepare that waits for the coordinator's
//! commit or abort. Also the coordinator's durable decision log.
//!
//! The coordination itself (which shards, votes, messages) belongs to the
//! server; the engine only guarantees that what it acknowledged is in its
//! WAL: a prepare before the vote, a decision before the commit messages,
//! and that recovery hands back every prepared transaction still undecided
//! (`in_doubt`), with its intents in place, until the caller resolves it.

use crate::cc::{key_hash, Admission};
use crate::engine::{Engine, WriteBatch};
use crate::error::Result;
use crate::io::Disk;
use crate::key::{read_ms, visible};
use crate::options::SyncMode;
use crate::wal::Record;
use bytes::Bytes;
use std::time::Instant;

/// A check evaluated at the transaction's timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The key has a live value.
    Exists(Bytes),
    /// The key has no live value.
    Missing(Bytes),
    /// The key's live value equals this.
    Equals(Bytes, Bytes),
    /// The key's newest version (a put or a delete) has this timestamp;
    /// 0 means it was never written (or compacted away).
    VersionIs(Bytes, u64),
}

impl Condition {
    pub fn key(&self) -> &Bytes {
        match self {
            Condition::Exists(k)
            | Condition::Missing(k)
            | Condition::Equals(k, _)
            | Condition::VersionIs(k, _) => k,
        }
    }

    fn holds(&self, found: &ReadResult) -> bool {
        match self {
            Condition::Exists(_) => found.value.is_some(),
            Condition::Missing(_) => found.value.is_none(),
            Condition::Equals(_, v) => found.value.as_ref() == Some(v),
            Condition::VersionIs(_, version) => found.version == *version,
        }
    }
}

/// This shard's part of a transaction. Indexes number the conditions and
/// reads of the whole transaction, so the coordinator can merge parts.
#[derive(Debug, Clone, Default)]
pub struct TxnPart {
    pub ts: u64,
    pub conditions: Vec<(u32, Condition)>,
    pub reads: Vec<(u32, Bytes)>,
    pub writes: WriteBatch,
}

/// A key read at the transaction's timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    pub index: u32,
    pub key: Bytes,
    pub value: Option<Bytes>,
    /// Timestamp of the newest version at or below the read (0: none).
    pub version: u64,
}

/// A commit to log (see [`Engine::apply_prepared`]).
#[derive(Debug)]
pub struct CommitRecord(Record);

/// A participant's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vote {
    /// Conditions hold; writes are committed (one phase) or prepared.
    Yes(Vec<ReadResult>),
    /// Condition `index` does not hold; nothing was written.
    ConditionFailed { index: u32, reads: Vec<ReadResult> },
    /// Timestamp order forbids it; retry at a new timestamp.
    Conflict(String),
}

/// What a yes vote leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The only participant: commit at once.
    One,
    /// One of several: log a prepare and hold the intents for the decision.
    Prepare,
    /// The coordinator's own part: admitted and held, not logged; it is
    /// logged inside the decision record ([`Engine::log_decision`]), so a
    /// crash before the decision leaves nothing to resolve.
    Hold,
}

/// Releases a transaction's intents if the participant's work is abandoned
/// before it hands them to a decision (an error, or the future dropped).
struct Intents<'a, D: Disk> {
    engine: &'a Engine<D>,
    ts: u64,
    armed: bool,
}

impl<D: Disk> Drop for Intents<'_, D> {
    fn drop(&mut self) {
        if self.armed {
            self.engine.release(self.ts);
        }
    }
}

impl<D: Disk> Engine<D> {
    /// Runs this shard's part of transaction `part.ts`. See the module doc.
    pub async fn txn(&self, part: TxnPart, phase: Phase) -> Result<Vote> {
        let inner = self.inner();
        let ts = part.ts;
        let bytes = inner.check_ops(part.writes.ops())?;
        inner.check_retained(ts)?;
        inner.clock.observe(ts);
        let read_keys: Vec<&Bytes> = part
            .conditions
            .iter()
            .map(|(_, c)| c.key())
            .chain(part.reads.iter().map(|(_, k)| k))
            .collect();
        let read_hashes: Vec<u64> = read_keys.iter().map(|k| key_hash(k)).collect();
        let write_hashes: Vec<u64> = part.writes.keys().map(|k| key_hash(k)).collect();
        let started = Instant::now();
        loop {
            let admission = inner.cc.borrow_mut().admit(ts, &read_hashes, &write_hashes);
            match admission {
                Admission::Admitted => break,
                Admission::Abort(why) => return Ok(Vote::Conflict(why.to_string())),
                Admission::WaitFor(holder) => {
                    if !inner.cc.borrow().holds(holder) {
                        continue;
                    }
                    inner.wait_resolved(started, holder).await?;
                }
            }
        }
        let mut intents = Intents {
            engine: self,
            ts,
            armed: !write_hashes.is_empty(),
        };
        // Plain writes queued below `ts` must be applied before we read.
        loop {
            let queued = inner.inflight.borrow().front().copied();
            match queued {
                Some(q) if q <= ts => inner.wait_resolved(started, q).await?,
                _ => break,
            }
        }
        let mut found = Vec::with_capacity(read_keys.len());
        for (i, key) in read_keys.iter().enumerate() {
            let newest = inner.newest_at(key, ts).await?;
            let index = match i.checked_sub(part.conditions.len()) {
                None => part.conditions[i].0,
                Some(r) => part.reads[r].0,
            };
            found.push(ReadResult {
                index,
                key: (*key).clone(),
                version: newest.as_ref().map_or(0, |e| e.ts),
                value: newest
                    .and_then(|e| visible(e.kind, e.ts, e.value, || read_ms(ts, &inner.clock))),
            });
        }
        let reads = found.split_off(part.conditions.len());
        if let Some(((index, _), _)) = part
            .conditions
            .iter()
            .zip(&found)
            .find(|((_, c), r)| !c.holds(r))
        {
            return Ok(Vote::ConditionFailed {
                index: *index,
                reads,
            });
        }
        if part.writes.is_empty() {
            return Ok(Vote::Yes(reads));
        }
        inner.wait_for_room(bytes).await?;
        let entries = part.writes.into_entries(ts);
        match phase {
            Phase::One => {
                let group = inner.enqueue(Record::Batch { ts, entries }, bytes);
                if inner.opts.wal_sync != SyncMode::None {
                    group.wait().await?;
                }
            }
            Phase::Hold => {
                inner.held.borrow_mut().insert(ts, entries);
                intents.armed = false;
            }
            Phase::Prepare => {
                let rec = Record::Prepare { ts, entries };
                let group = inner.enqueue_encoded(&rec, bytes);
                let Record::Prepare { entries, .. } = rec else {
                    unreachable!("built as a prepare above")
                };
                inner.prepared.borrow_mut().insert(ts, entries);
                if let Err(e) = group.wait().await {
                    inner.prepared.borrow_mut().remove(&ts);
                    return Err(e);
                }
                // The intents now wait for the decision.
                intents.armed = false;
            }
        }
        Ok(Vote::Yes(reads))
    }

    /// Commits prepared transaction `ts`: its writes become visible at
    /// once (the decision is durable at the coordinator), and the call
    /// returns when the commit record is as durable as the sync mode
    /// promises. Committing an unknown or already resolved transaction is a
    /// no-op.
    pub async fn commit_prepared(&self, ts: u64) -> Result<()> {
        match self.apply_prepared(ts) {
            Some(commit) => self.log_commits(vec![commit]).await,
            None => Ok(()),
        }
    }

    /// Starts loading the memtable paths that applying prepared
    /// transactions `ts` will walk, all of them together.
    pub fn prefetch_prepared(&self, ts: &[u64]) {
        let inner = self.inner();
        let prepared = inner.prepared.borrow();
        let keys: Vec<&[u8]> = ts
            .iter()
            .filter_map(|ts| prepared.get(ts))
            .flatten()
            .map(|e| &e.key[..])
            .collect();
        let mem = inner.mem.borrow();
        for chunk in keys.chunks(16) {
            mem.prefetch_paths(chunk);
        }
    }

    /// The first half of [`Engine::commit_prepared`]: makes the writes of
    /// prepared transaction `ts` visible and releases its intents, without
    /// awaiting. Returns the commit record to hand to
    /// [`Engine::log_commits`] (`None`: unknown or already resolved).
    pub fn apply_prepared(&self, ts: u64) -> Option<CommitRecord> {
        let inner = self.inner();
        let entries = inner.prepared.borrow_mut().remove(&ts)?;
        inner.mem.borrow().insert_all(entries);
        self.release(ts);
        // The record names the transaction; replay takes the writes from
        // its prepare, which is logged at or after every segment replay
        // reads while it is undecided (prepares are logged again past each
        // memtable boundary). Once the prepare's segment is recycled, the
        // memtable these writes went into is flushed.
        Some(CommitRecord(Record::Commit {
            ts,
            entries: Vec::new(),
        }))
    }

    /// The second half: logs commit records, returning once they are as
    /// durable as the sync mode promises. Records queued together share
    /// their group commit.
    pub async fn log_commits(&self, commits: Vec<CommitRecord>) -> Result<()> {
        let inner = self.inner();
        let bytes = commits.iter().map(|c| c.0.logged_len()).sum();
        inner.wait_for_room(bytes).await?;
        let mut groups: Vec<_> = commits
            .into_iter()
            .map(|c| {
                let bytes = c.0.logged_len();
                inner.enqueue(c.0, bytes)
            })
            .collect();
        groups.dedup_by(|a, b| std::rc::Rc::ptr_eq(a, b));
        for group in groups {
            group.wait().await?;
        }
        Ok(())
    }

    /// Aborts transaction `ts` here, prepared or held: its intents go.
    /// Nothing is logged: after a crash an undecided prepare asks its
    /// coordinator, whose log has no commit decision for it.
    pub fn abort_prepared(&self, ts: u64) {
        let inner = self.inner();
        inner.prepared.borrow_mut().remove(&ts);
        inner.held.borrow_mut().remove(&ts);
        self.release(ts);
    }

    /// Logs the coordinator's decision for transaction `ts` and returns
    /// once it is durable. A commit carries this shard's own held part
    /// ([`Phase::Hold`]), which becomes visible with it. A commit decision
    /// is remembered (and logged again past flushes) until
    /// [`Engine::forget_decision`]. The held part moves into the record: on
    /// error it is gone from memory (and the record may or may not be
    /// durable), its intents stay until the caller aborts or recovery
    /// decides.
    pub async fn log_decision(&self, ts: u64, commit: bool, participants: Vec<u32>) -> Result<()> {
        let inner = self.inner();
        let held = match commit {
            true => inner.held.borrow_mut().remove(&ts),
            false => None,
        };
        let had_held = held.is_some();
        let entries = held.unwrap_or_default();
        if commit {
            inner
                .decisions
                .borrow_mut()
                .insert(ts, participants.clone());
        }
        let rec = Record::Decision {
            ts,
            commit,
            participants,
            entries,
        };
        let bytes = rec.logged_len();
        let result = match inner.wait_for_room(bytes).await {
            Ok(()) => inner.enqueue(rec, bytes).wait().await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(()) if commit && had_held => {
                // The writer task applied the held writes with the record.
                self.release(ts);
            }
            Ok(()) => {}
            Err(_) if commit => {
                inner.decisions.borrow_mut().remove(&ts);
            }
            Err(_) => {}
        }
        result
    }

    /// Every participant of `ts` has its commit durable.
    pub fn forget_decision(&self, ts: u64) {
        self.inner().decisions.borrow_mut().remove(&ts);
    }

    /// Whether this shard's log holds a commit decision for `ts`.
    pub fn committed(&self, ts: u64) -> bool {
        self.inner().decisions.borrow().contains_key(&ts)
    }

    /// Commit decisions recovered at open, to forget once every shard has
    /// resolved its in-doubt transactions.
    pub fn forget_recovered_decisions(&self) {
        let inner = self.inner();
        let open_ts = inner.open_ts;
        inner.decisions.borrow_mut().retain(|&ts, _| ts > open_ts);
    }

    /// Transactions recovered prepared but undecided, still holding their
    /// intents. Each must be resolved with [`Engine::commit_prepared`] or
    /// [`Engine::abort_prepared`] per its coordinator's log.
    pub fn in_doubt(&self) -> Vec<u64> {
        let inner = self.inner();
        let prepared = inner.prepared.borrow();
        inner
            .in_doubt
            .iter()
            .copied()
            .filter(|ts| prepared.contains_key(ts))
            .collect()
    }

    fn release(&self, ts: u64) {
        let inner = self.inner();
        inner.cc.borrow_mut().release(ts);
        inner.events.resolved.notify(usize::MAX);
    }
}

/// Which shard coordinated transaction `ts` (the clock's node bits).
pub fn coordinator_of(ts: u64) -> u32 {
    (ts & ((1 << crate::clock::NODE_BITS) - 1)) as u32
}
