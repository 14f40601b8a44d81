//! The engine of one shard: open/recover, the public read and write API,
//! and the background flush task. See `write.rs` for group commit and
//! `compaction/` for leveled compaction.
//!
//! Read path: active memtable → immutable memtables (newest first) → level-0
//! tables (newest first) → one table per deeper level; the newest version at
//! or below the read timestamp wins, sources whose newest version is older
//! than the best found so far are skipped.

use crate::cache::BlockCache;
use crate::cc::{key_hash, Concurrency};
use crate::clock::{ms_of_ts, ts_from_ms, wall_ms, HybridClock};
use crate::compaction;
use crate::error::{Error, Result};
use crate::io::{Disk, DiskFile, DmaDisk};
use crate::iter::{MergeIter, Source};
use crate::key::{
    expiring_value, expiry, read_ms, visible, Entry, Kind, Row, Versioned, TTL_BYTES,
};
use crate::manifest::{Edit, LevelsState, Manifest, LEVELS};
use crate::memtable::Memtable;
use crate::options::{Options, SyncMode};
use crate::row_cache::RowCache;
use crate::sst::{bloom, parse_table_name, table_name, Table, TableBuilder, TableMeta};
use crate::version::Version;
use crate::wal::{self, Record, ReplayReport, Spares, Wal};
use crate::write::{self, wait_until, Group, Queue, QueuedWrite};
use bytes::Bytes;
use event_listener::Event;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

/// Rows a scan reserves room for before reading (more grow as needed).
const SCAN_PREALLOCATE_ROWS: usize = 256;

/// Most timestamps reads hold past the retention window at once (see
/// `Inner::hold_for_reads`); each is one map entry.
const READ_HOLDS_MAX: usize = 1024;

/// What [`Engine::start_write`] did with a batch.
pub enum WriteStart {
    /// Done: the write's timestamp, or why it was refused.
    Done(Result<u64>),
    /// Queued, and done when its group is durable.
    Queued(QueuedWrite),
    /// Not queued: it would have to wait (use [`Engine::write`]).
    Back(WriteBatch),
}

/// One write of a batch: all entries commit atomically at one timestamp.
///
/// The entries are built as they will be stored, their timestamp stamped
/// at commit: turning `(kind, key, value)` triples into entries then cost
/// every write an allocation and a copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<Entry>,
    arrived_ms: Option<u64>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(ops: usize) -> Self {
        WriteBatch {
            ops: Vec::with_capacity(ops),
            arrived_ms: None,
        }
    }

    /// Takes the batch's timestamp from `wall_ms`, a wall-clock reading
    /// made after the request that asked for the batch arrived, instead of
    /// a fresh reading (see [`HybridClock::now_at`]).
    pub fn arrived_at(&mut self, wall_ms: u64) -> &mut Self {
        self.arrived_ms = Some(wall_ms);
        self
    }

    pub fn put(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> &mut Self {
        self.push(Kind::Put, key.into(), value.into())
    }

    /// A put that expires `ttl_ms` milliseconds after the batch's
    /// timestamp (see [`Kind::Expiring`]); 0 is a plain put.
    pub fn put_with_ttl(
        &mut self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ttl_ms: u64,
    ) -> &mut Self {
        match ttl_ms {
            0 => self.push(Kind::Put, key.into(), value.into()),
            ttl => self.push(
                Kind::Expiring,
                key.into(),
                expiring_value(ttl, &value.into()),
            ),
        }
    }

    pub fn delete(&mut self, key: impl Into<Bytes>) -> &mut Self {
        self.push(Kind::Delete, key.into(), Bytes::new())
    }

    fn push(&mut self, kind: Kind, key: Bytes, value: Bytes) -> &mut Self {
        self.ops.push(Entry {
            key,
            ts: 0,
            kind,
            value,
        });
        self
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub(crate) fn ops(&self) -> &[Entry] {
        &self.ops
    }

    /// The keys written, in order.
    pub fn keys(&self) -> impl Iterator<Item = &Bytes> {
        self.ops.iter().map(|e| &e.key)
    }

    pub(crate) fn into_entries(mut self, ts: u64) -> Vec<Entry> {
        for e in &mut self.ops {
            e.ts = ts;
        }
        self.ops
    }
}

/// Event sources the tasks wait on.
#[derive(Default)]
pub(crate) struct Events {
    /// Queue gained batches, a swap was requested, or the engine closed.
    pub work: Event,
    /// The queue has room again.
    pub space: Event,
    /// A memtable awaits flushing.
    pub flush: Event,
    /// A flush finished (or failed); stalled writers re-check.
    pub flushed: Event,
    /// The level shape changed; compaction re-checks.
    pub compact: Event,
    /// An intent was released or a queued write applied.
    pub resolved: Event,
}

/// Monotonic counters, read by [`Engine::stats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub wal_syncs: Cell<u64>,
    pub wal_bytes: Cell<u64>,
    pub wal_groups: Cell<u64>,
    pub wal_batches: Cell<u64>,
    pub wal_errors: Cell<u64>,
    pub write_stalls: Cell<u64>,
    /// Flushes that waited for level 0 to drop below `l0_stop_trigger`.
    pub l0_stops: Cell<u64>,
    pub flushes: Cell<u64>,
    pub flush_errors: Cell<u64>,
    pub compactions: Cell<u64>,
    pub compaction_errors: Cell<u64>,
    pub compaction_bytes_written: Cell<u64>,
}

pub(crate) struct Inner<D: Disk> {
    pub opts: Options,
    pub disk: D,
    pub wal_dir: PathBuf,
    pub sst_dir: PathBuf,
    pub clock: HybridClock,
    pub mem: RefCell<Rc<Memtable>>,
    /// Full memtables, oldest first, each with the first WAL segment id that
    /// holds none of its records.
    pub imms: RefCell<VecDeque<(Rc<Memtable>, u64)>>,
    pub version: RefCell<Rc<Version<D::File>>>,
    pub levels: RefCell<LevelsState>,
    pub next_table_id: Cell<u64>,
    pub cache: Rc<BlockCache>,
    pub rows: RowCache,
    pub manifest: glommio::sync::RwLock<Manifest<D>>,
    pub spares: Rc<Spares<D>>,
    pub queue: RefCell<Queue>,
    /// The WAL's active segment as the writer last saw it: records encoded
    /// when queued are stamped with it (and re-stamped if a roll intervenes).
    pub wal_segment: Cell<u64>,
    pub events: Events,
    pub bg_error: RefCell<Option<String>>,
    /// Why the last WAL write failed, until one succeeds.
    pub wal_error: RefCell<Option<String>>,
    /// Why the last compaction failed, until one succeeds.
    pub compaction_error: RefCell<Option<String>>,
    pub closed: Cell<bool>,
    pub writer_done: Cell<bool>,
    /// Where the writer task is (for `debug_state`).
    pub writer_phase: Cell<&'static str>,
    /// Flush and compaction tasks still running (close waits for zero).
    pub tasks_running: Cell<usize>,
    pub swap_requested: Cell<bool>,
    /// Explicit flushes ([`Engine::flush`], close) waiting: flushes then
    /// run even with level 0 at `l0_stop_trigger`.
    pub flushes_forced: Cell<usize>,
    pub stats: Counters,
    pub watermark_pin: Cell<Option<u64>>,
    /// Timestamps that reads asked for once they were older than half the
    /// retention window, each until one window after its latest read
    /// (wall-clock ms): see [`Inner::hold_for_reads`].
    pub read_holds: RefCell<BTreeMap<u64, u64>>,
    pub compaction_lock: glommio::sync::Semaphore,
    pub compaction_pointer: RefCell<Vec<Option<Bytes>>>,
    /// Tables compacted away whose files await removal (see
    /// [`Inner::retire`]), and whether a task is removing them.
    pub retired: RefCell<Vec<Retired<D::File>>>,
    pub reaping: Cell<bool>,
    pub replay: ReplayReport,
    /// Intents and read/write timestamps (see `cc.rs`).
    pub cc: RefCell<Concurrency>,
    /// Prepared transactions awaiting a decision: ts → their writes.
    pub prepared: RefCell<BTreeMap<u64, Vec<Entry>>>,
    /// Admitted parts of transactions this shard coordinates, not logged:
    /// they are logged with the decision. ts → writes.
    pub held: RefCell<BTreeMap<u64, Vec<Entry>>>,
    /// Transactions recovered prepared, undecided at open.
    pub in_doubt: Vec<u64>,
    /// Commit decisions this shard coordinated, kept until every
    /// participant has its commit durable: ts → participants.
    pub decisions: RefCell<BTreeMap<u64, Vec<u32>>>,
    /// Timestamps of queued durable plain writes not yet applied, oldest
    /// first (the writer task removes a group's once it is applied).
    pub inflight: RefCell<VecDeque<u64>>,
    /// The clock when recovery finished.
    pub open_ts: u64,
    /// Foreground operations so far (see `let_background_run`).
    pub foreground_ops: Cell<u32>,
}

/// A point-in-time view of the engine's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub memtable_bytes: usize,
    pub immutable_memtables: usize,
    pub cache_bytes: usize,
    pub cache_capacity_bytes: usize,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub row_cache_bytes: usize,
    pub row_cache_capacity_bytes: usize,
    pub row_cache_hits: u64,
    pub row_cache_misses: u64,
    pub table_resident_bytes: usize,
    pub level_tables: Vec<usize>,
    pub level_bytes: Vec<u64>,
    pub wal_syncs: u64,
    pub wal_bytes: u64,
    pub wal_groups: u64,
    pub wal_batches: u64,
    pub wal_errors: u64,
    pub write_stalls: u64,
    /// Flushes that waited for compaction to bring level 0 below
    /// `l0_stop_trigger` (the writes behind them stalled meanwhile).
    pub l0_stops: u64,
    pub flushes: u64,
    pub flush_errors: u64,
    pub compactions: u64,
    pub compaction_errors: u64,
    pub compaction_bytes_written: u64,
    pub retention_watermark_ts: u64,
    /// Timestamps reads hold past the retention window (see
    /// [`Engine::read_at`]).
    pub read_holds: usize,
    pub last_ts: u64,
    pub background_error: Option<String>,
    /// Why writes fail now, or will once the memtables fill
    /// ([`Engine::write_health`]).
    pub writes_failing: Option<String>,
    /// Keys under an undecided transaction's intent.
    pub txn_intents: usize,
    /// Transactions prepared here awaiting their decision.
    pub txn_prepared: usize,
    /// Commit decisions kept until every participant has its commit durable.
    pub txn_decisions: usize,
}

/// A shard's storage engine. Cheap to clone (a handle); all clones must
/// stay on the glommio executor that opened it.
///
/// [`Engine::close`] flushes and stops it. Dropping the last handle
/// without closing stops it as a crash would, minus the crash: the
/// background tasks end (the WAL's tail is synced, as on close, but no
/// memtable is flushed), and reopening replays the WAL.
pub struct Engine<D: Disk = DmaDisk> {
    inner: Rc<Inner<D>>,
    /// Shared by the clones; the last one's drop stops the engine.
    _stopper: Rc<Stopper<D>>,
}

impl<D: Disk> Clone for Engine<D> {
    fn clone(&self) -> Self {
        Engine {
            inner: self.inner.clone(),
            _stopper: self._stopper.clone(),
        }
    }
}

/// Stops an engine whose last handle is dropped unclosed. Its background
/// tasks each hold the engine's state and wait for work: without this they
/// waited forever, holding its memtables, caches and files (~1.4 MB per
/// engine dropped in the tests that simulate crashes; 5,000 cases of the
/// model test ran out of 24 GiB).
struct Stopper<D: Disk>(Rc<Inner<D>>);

impl<D: Disk> Drop for Stopper<D> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl Engine<DmaDisk> {
    /// Opens (creating if needed) the engine in `dir` on the real disk.
    pub async fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Self> {
        Engine::open_on(DmaDisk, dir, opts).await
    }
}

impl<D: Disk> Engine<D> {
    /// Opens (creating if needed) the engine in `dir` on `disk`: manifest,
    /// then tables, then WAL replay; then starts the writer, flush and
    /// compaction tasks. Must run inside a glommio executor.
    pub async fn open_on(disk: D, dir: impl AsRef<Path>, opts: Options) -> Result<Self> {
        opts.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let wal_dir = dir.join("wal");
        let sst_dir = dir.join("sst");
        for d in [&dir, &wal_dir, &sst_dir] {
            disk.create_dir_all(d).await?;
        }
        let (mut manifest, mut levels) =
            Manifest::open(&disk, &dir, opts.manifest_roll_bytes).await?;
        let live: std::collections::HashSet<u64> =
            levels.levels.iter().flatten().map(|t| t.id).collect();
        for name in disk.list(&sst_dir).await? {
            match parse_table_name(&name) {
                Some(id) if live.contains(&id) => {}
                _ => disk.remove(&sst_dir.join(&name)).await?,
            }
        }
        let mut opened = Vec::new();
        let mut max_ts = 0;
        for meta in levels.levels.iter().flatten() {
            let file = disk.open(&sst_dir.join(table_name(meta.id))).await?;
            max_ts = max_ts.max(meta.props.max_ts);
            opened.push(Rc::new(Table::open(file, meta.clone()).await?));
        }
        let version = Version::empty().rebuild(&levels, &opened);
        let mem = Rc::new(Memtable::for_bytes(opts.memtable_bytes_max));
        let mut prepared: BTreeMap<u64, Vec<Entry>> = BTreeMap::new();
        let mut decisions: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        let (wal, replay) = Wal::open(
            &disk,
            &wal_dir,
            opts.wal_segment_bytes,
            levels.log_number,
            opts.wal_sync == SyncMode::Always,
            opts.wal_recovery,
            |rec| match rec {
                Record::Batch { entries, .. } => {
                    for e in entries {
                        mem.insert(e);
                    }
                }
                Record::Prepare { ts, entries } => {
                    prepared.insert(ts, entries);
                }
                Record::Commit { ts, entries } => {
                    // The writes are the prepare's (commits logged before
                    // 2026-11-26 also repeat them); no prepare replayed
                    // means they were flushed with an earlier memtable.
                    let prepared = prepared.remove(&ts).unwrap_or_default();
                    for e in prepared.into_iter().chain(entries) {
                        mem.insert(e);
                    }
                }
                Record::Decision {
                    ts,
                    commit,
                    participants,
                    entries,
                } => {
                    if commit {
                        decisions.insert(ts, participants);
                        for e in entries {
                            mem.insert(e);
                        }
                    } else {
                        decisions.remove(&ts);
                    }
                }
            },
        )
        .await?;
        if replay.batches == 0 && wal.segment_id() > levels.log_number {
            // The segments below the new one hold no records, and no flush
            // will say so: without this each open that wrote nothing (a
            // restart, a read-only run) kept another segment, of the full
            // segment size, and read it back at every later open.
            let edit = Edit {
                log_number: Some(wal.segment_id()),
                ..Edit::default()
            };
            levels.apply(&edit);
            manifest.append(&edit, &levels).await?;
            if let Err(e) = wal::recycle_below(
                &disk,
                &wal_dir,
                opts.wal_segment_bytes,
                &wal.spares(),
                levels.log_number,
                opts.wal_spare_segments,
            )
            .await
            {
                tracing::warn!(error = %e, "could not recycle WAL segments");
            }
        }
        let clock = HybridClock::new(opts.clock_node);
        clock.observe(max_ts.max(replay.max_ts));
        // Nothing is known of reads and writes before the crash: no
        // transaction may write below what was recovered.
        let mut cc = Concurrency::new(opts.txn_ts_cache_keys);
        cc.raise_floor(clock.last());
        for (&ts, entries) in &prepared {
            let hashes: Vec<u64> = entries.iter().map(|e| key_hash(&e.key)).collect();
            cc.restore(ts, &hashes);
        }
        tracing::info!(
            dir = %dir.display(),
            tables = version.table_count(),
            wal_segments = replay.segments,
            wal_records = replay.batches,
            in_doubt = prepared.len(),
            torn_tail = ?replay.torn_tail_at,
            "engine opened"
        );
        let inner = Rc::new(Inner {
            cache: Rc::new(BlockCache::new(opts.block_cache_bytes)),
            rows: RowCache::new(opts.row_cache_bytes),
            next_table_id: Cell::new(levels.next_table_id),
            spares: wal.spares(),
            opts,
            disk,
            wal_dir,
            sst_dir,
            mem: RefCell::new(mem),
            imms: RefCell::default(),
            version: RefCell::new(Rc::new(version)),
            levels: RefCell::new(levels),
            manifest: glommio::sync::RwLock::new(manifest),
            queue: RefCell::default(),
            wal_segment: Cell::new(wal.segment_id()),
            events: Events::default(),
            bg_error: RefCell::default(),
            wal_error: RefCell::default(),
            compaction_error: RefCell::default(),
            closed: Cell::new(false),
            writer_done: Cell::new(false),
            writer_phase: Cell::new("starting"),
            tasks_running: Cell::new(2),
            // Flush what the WAL replay rebuilt, so the replayed segments
            // are recycled instead of read again at every open.
            swap_requested: Cell::new(replay.batches > 0),
            flushes_forced: Cell::new(0),
            stats: Counters::default(),
            watermark_pin: Cell::new(None),
            read_holds: RefCell::default(),
            compaction_lock: glommio::sync::Semaphore::new(1),
            compaction_pointer: RefCell::new(vec![None; LEVELS]),
            retired: RefCell::default(),
            reaping: Cell::new(false),
            replay,
            cc: RefCell::new(cc),
            in_doubt: prepared.keys().copied().collect(),
            prepared: RefCell::new(prepared),
            held: RefCell::default(),
            decisions: RefCell::new(decisions),
            inflight: RefCell::default(),
            open_ts: clock.last(),
            foreground_ops: Cell::new(0),
            clock,
        });
        // Flush and compaction run in the shard's own task queue, at its
        // yield points. Measured with glommio-ng 0.12: tasks in separate
        // low-share queues were not scheduled at all while a foreground that
        // never blocks (memtable reads, `none` writes) kept running, even
        // with `yield_task_queue_now`, so flushes waited until the run ended.
        // Compaction is bounded by its I/O rate limiter instead of shares.
        glommio::spawn_local(write::writer_loop(inner.clone(), wal)).detach();
        glommio::spawn_local(flush_loop(inner.clone())).detach();
        glommio::spawn_local(compaction::compaction_loop(inner.clone())).detach();
        Ok(Engine {
            _stopper: Rc::new(Stopper(inner.clone())),
            inner,
        })
    }

    pub(crate) fn inner(&self) -> &Inner<D> {
        &self.inner
    }

    /// What recovery replayed from the WAL when this engine opened.
    pub fn replay_report(&self) -> &ReplayReport {
        &self.inner.replay
    }

    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// The engine's clock (the transaction layer reads and advances it).
    pub fn clock(&self) -> &HybridClock {
        &self.inner.clock
    }

    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<u64> {
        let mut batch = WriteBatch::with_capacity(1);
        batch.put(key, value);
        self.write(batch).await
    }

    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<u64> {
        let mut batch = WriteBatch::with_capacity(1);
        batch.delete(key);
        self.write(batch).await
    }

    /// Commits a batch atomically at a fresh timestamp, returned once the
    /// batch is as durable as the sync mode promises.
    pub async fn write(&self, batch: WriteBatch) -> Result<u64> {
        let inner = &self.inner;
        let bytes = inner.check_ops(&batch.ops)?;
        if batch.is_empty() {
            return Ok(inner.clock.now());
        }
        inner.wait_for_room(bytes).await?;
        let (ts, group) = inner.queue_write(batch, bytes);
        if inner.opts.wal_sync == SyncMode::None {
            // Nothing above awaited: let the writer, flush and compaction
            // tasks run, or a writer that never blocks would starve them.
            inner.let_background_run().await;
            return Ok(ts);
        }
        group.wait().await.map(|()| ts)
    }

    /// [`Engine::write`] without waiting: when the memtable and the queue
    /// have room and no yield is owed to background work or the executor,
    /// the batch is queued, and in `none` mode that is the write
    /// ([`WriteStart::Done`]); a durable write is done when its group is
    /// ([`WriteStart::Queued`]). Otherwise the batch comes back, for
    /// `write`. Lets a server answer most writes without a future per
    /// write.
    pub fn start_write(&self, batch: WriteBatch) -> WriteStart {
        let inner = &self.inner;
        let bytes = match inner.check_ops(&batch.ops) {
            Ok(bytes) => bytes,
            Err(e) => return WriteStart::Done(Err(e)),
        };
        if batch.is_empty() {
            return WriteStart::Done(Ok(inner.clock.now()));
        }
        let no_turn_owed = match inner.opts.wal_sync {
            // The write is done once queued: a writer that never waits takes
            // turns with background work (see `let_background_run`).
            SyncMode::None => inner.owes_no_turn(),
            // Its caller waits for the group, which lets background work
            // run; the executor's own time slice still counts. (Asking
            // `owes_no_turn` here, which counts nothing when it says no,
            // sent every write the waiting way while a flush or compaction
            // ran: `write` never counts a durable write.)
            _ => !glommio::executor().need_preempt(),
        };
        if !(inner.memtable_has_room() && inner.queue_has_room(bytes) && no_turn_owed) {
            return WriteStart::Back(batch);
        }
        let (ts, group) = inner.queue_write(batch, bytes);
        match inner.opts.wal_sync {
            SyncMode::None => WriteStart::Done(Ok(ts)),
            _ => WriteStart::Queued(QueuedWrite::new(ts, group)),
        }
    }

    /// The oldest timestamp reads can still ask for.
    pub fn retention_watermark(&self) -> u64 {
        self.inner.watermark()
    }

    /// Holds the watermark at or below `ts` (an open transaction's snapshot)
    /// until cleared with `None`.
    pub fn pin_watermark(&self, ts: Option<u64>) {
        self.inner.watermark_pin.set(ts);
    }

    /// Starts the cache misses point reads of `keys` (with these hashes:
    /// [`bloom::hash`], the key's `xxh3_64`) will take: the memtable
    /// filter's lines, their row cache slots and rows, and, for the keys
    /// the memtable may hold, the paths, versions and values their reads
    /// find there. (Walking the memtable for every key, as writes do, cost
    /// what it saved.)
    pub fn prefetch_reads(&self, keys: &[&[u8]], hashes: &[u64]) {
        let mem = self.inner.mem.borrow();
        mem.prefetch_filter(hashes);
        let rows = &self.inner.rows;
        if rows.enabled() {
            rows.prefetch(hashes);
        }
        // By now the filter's lines are in: walk down only for the keys
        // the memtable may hold (walking for every key cost what it saved).
        mem.prefetch_reads_of_held(keys, hashes);
    }

    /// Starts the cache misses admitting a transaction's keys here (with
    /// these hashes, their `xxh3_64`) will take: their ts-cache slots.
    pub fn prefetch_admissions(&self, hashes: &[u64]) {
        self.inner.cc.borrow().prefetch(hashes);
    }

    /// Starts the cache misses writes of these keys (with these hashes,
    /// their `xxh3_64`) will take: the memtable nodes their inserts walk,
    /// the memtable filter's lines they set, and the slots that record
    /// their write timestamps.
    pub fn prefetch_writes(&self, keys: &[&[u8]], hashes: &[u64]) {
        let mem = self.inner.mem.borrow();
        mem.prefetch_filter(hashes);
        mem.prefetch_paths(keys);
        self.inner.cc.borrow().prefetch(hashes);
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.get_with_expiry(key).await?.map(|(value, _)| value))
    }

    /// Like [`Engine::get`], with when the key expires (wall-clock
    /// milliseconds) if it was written with a TTL.
    pub async fn get_with_expiry(&self, key: &[u8]) -> Result<Option<(Bytes, Option<u64>)>> {
        self.inner.settle_newest(Some(key)).await?;
        self.inner.value_at(key, u64::MAX).await
    }

    /// [`Engine::get_with_expiry`] if memory answers it at once: the
    /// memtables or the row cache know the key's newest version, no
    /// transaction intent is to be waited for, and no yield is owed to
    /// background work or the executor. `None` otherwise: then await
    /// `get_with_expiry`. Lets a server answer most reads without a
    /// future per read.
    pub fn get_in_memory(&self, key: &[u8]) -> Option<Option<(Bytes, Option<u64>)>> {
        self.inner.get_in_memory(key)
    }

    /// The value of `key` as of `ts`: exactly the state at `ts`, which no
    /// later write can change (writes at or below `ts` to `key` are refused
    /// from now on, and undecided ones are waited for). `ts` stays readable
    /// for at least half the retention window after this read (a scan at
    /// `ts` holds it the same way): see `Inner::hold_for_reads`.
    pub async fn read_at(&self, key: &[u8], ts: u64) -> Result<Option<Bytes>> {
        Ok(self
            .read_at_with_expiry(key, ts)
            .await?
            .map(|(value, _)| value))
    }

    /// Like [`Engine::read_at`], with when the key expires if it was
    /// written with a TTL.
    pub async fn read_at_with_expiry(
        &self,
        key: &[u8],
        ts: u64,
    ) -> Result<Option<(Bytes, Option<u64>)>> {
        self.inner.settle_read(Some(key), ts).await?;
        self.inner.value_at(key, ts).await
    }

    /// Up to `limit` live (key, value) pairs with `start <= key < end` (no
    /// end bound if `end` is `None`), in key order, as of `ts` (`None`:
    /// newest). A scan at `ts` is repeatable like [`Engine::read_at`].
    pub async fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        ts: Option<u64>,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        let rows = self.scan_bounded(start, end, limit, usize::MAX, ts).await?;
        Ok(rows.into_iter().map(|r| (r.key, r.value)).collect())
    }

    /// Like [`Engine::scan`], ending after the row that brings the keys
    /// and values returned to `bytes_max` or more: a page of large values
    /// stays bounded (and holds at least one row). Each row says when its
    /// key expires, if it does.
    pub async fn scan_bounded(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        bytes_max: usize,
        ts: Option<u64>,
    ) -> Result<Vec<Row>> {
        let ts = match ts {
            Some(ts) => {
                self.inner.settle_read(None, ts).await?;
                ts
            }
            None => {
                self.inner.settle_newest(None).await?;
                u64::MAX
            }
        };
        let mut iter = MergeIter::new(self.inner.sources(), self.inner.cache.clone());
        iter.seek(start, u64::MAX).await?;
        // Sized up front: grown from empty, a short scan reallocated its
        // rows (and the merge its key buffers) several times per call.
        let mut out: Vec<Row> = Vec::with_capacity(limit.min(SCAN_PREALLOCATE_ROWS));
        // Whether the newest visible version of the last key seen is
        // decided (it was emitted, or it was a tombstone).
        let mut decided = false;
        let mut decided_key: Vec<u8> = Vec::with_capacity(start.len() + 16);
        let mut bytes = 0usize;
        // Expiring versions are judged by the scan's time, read once.
        let now_ms = read_ms(ts, &self.inner.clock);
        while out.len() < limit {
            let Some(e) = iter.next().await? else { break };
            if end.is_some_and(|end| e.key.as_ref() >= end) {
                break;
            }
            if e.ts > ts || (decided && decided_key == e.key.as_ref()) {
                continue;
            }
            decided = true;
            decided_key.clear();
            decided_key.extend_from_slice(&e.key);
            let expires_at_ms = expiry(e.kind, e.ts, &e.value);
            if let Some(value) = visible(e.kind, e.ts, e.value, || now_ms) {
                bytes = bytes.saturating_add(e.key.len() + value.len());
                out.push(Row {
                    key: e.key,
                    value,
                    expires_at_ms,
                });
                if bytes >= bytes_max {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Flushes every memtable to level 0 and waits for it.
    pub async fn flush(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.mem.borrow().is_empty() && inner.imms.borrow().is_empty() {
            return Ok(());
        }
        inner.swap_requested.set(true);
        inner.events.work.notify(usize::MAX);
        let _forced = Forced::new(inner);
        let flushes_before = inner.stats.flushes.get();
        let errors_before = inner.stats.flush_errors.get();
        wait_until(&inner.events.flushed, || {
            let drained = !inner.swap_requested.get() && inner.imms.borrow().is_empty();
            drained || inner.stats.flush_errors.get() > errors_before || inner.closed.get()
        })
        .await;
        if inner.stats.flush_errors.get() > errors_before {
            let bg = inner.bg_error.borrow().clone().unwrap_or_default();
            return Err(Error::Stalled(format!("background flush failed: {bg}")));
        }
        debug_assert!(inner.stats.flushes.get() >= flushes_before);
        Ok(())
    }

    /// Whether writes succeed now and will go on doing so; `Err` says why
    /// not: the last WAL write failed (and none has succeeded since), the
    /// last flush failed (writes stall once the memtables are full), or
    /// level 0 is at its stop while compaction fails. Reads are served
    /// either way.
    pub fn write_health(&self) -> std::result::Result<(), String> {
        let inner = &self.inner;
        if let Some(why) = inner.wal_error.borrow().clone() {
            return Err(format!("the last WAL write failed: {why}"));
        }
        inner.stall_error().map_or(Ok(()), Err)
    }

    /// Runs compactions until no level needs one.
    pub async fn compact(&self) -> Result<()> {
        while compaction::compact_once(&self.inner).await? {}
        Ok(())
    }

    /// Internal scheduling state, for diagnosing stalls.
    #[doc(hidden)]
    pub fn debug_state(&self) -> String {
        let i = &self.inner;
        let q = i.queue.borrow();
        format!(
            "writer={} mem_bytes={} imms={} queue_batches={} queue_bytes={} swap_requested={} closed={} writer_done={} tasks_running={} bg_error={:?} flushes={} flush_errors={} compactions={} stalls={} groups={}",
            i.writer_phase.get(),
            i.mem.borrow().bytes(),
            i.imms.borrow().len(),
            q.len(),
            q.bytes,
            i.swap_requested.get(),
            i.closed.get(),
            i.writer_done.get(),
            i.tasks_running.get(),
            i.bg_error.borrow(),
            i.stats.flushes.get(),
            i.stats.flush_errors.get(),
            i.stats.compactions.get(),
            i.stats.write_stalls.get(),
            i.stats.wal_groups.get(),
        )
    }

    pub fn stats(&self) -> EngineStats {
        let inner = &self.inner;
        let version = inner.version.borrow().clone();
        let s = &inner.stats;
        let (blocks, rows) = (inner.cache.stats(), inner.rows.stats());
        EngineStats {
            memtable_bytes: inner.mem.borrow().bytes(),
            immutable_memtables: inner.imms.borrow().len(),
            cache_bytes: blocks.bytes,
            cache_capacity_bytes: blocks.capacity_bytes,
            cache_hits: blocks.hits,
            cache_misses: blocks.misses,
            row_cache_bytes: rows.bytes,
            row_cache_capacity_bytes: rows.capacity_bytes,
            row_cache_hits: rows.hits,
            row_cache_misses: rows.misses,
            table_resident_bytes: version
                .levels
                .iter()
                .flatten()
                .map(|t| t.resident_bytes())
                .sum(),
            level_tables: version.levels.iter().map(Vec::len).collect(),
            level_bytes: (0..LEVELS).map(|l| version.level_bytes(l)).collect(),
            wal_syncs: s.wal_syncs.get(),
            wal_bytes: s.wal_bytes.get(),
            wal_groups: s.wal_groups.get(),
            wal_batches: s.wal_batches.get(),
            wal_errors: s.wal_errors.get(),
            write_stalls: s.write_stalls.get(),
            l0_stops: s.l0_stops.get(),
            flushes: s.flushes.get(),
            flush_errors: s.flush_errors.get(),
            compactions: s.compactions.get(),
            compaction_errors: s.compaction_errors.get(),
            compaction_bytes_written: s.compaction_bytes_written.get(),
            retention_watermark_ts: inner.watermark(),
            read_holds: {
                // Expired holds behind a live one stay in the map until
                // they come first: count only the live.
                let now = wall_ms();
                inner
                    .read_holds
                    .borrow()
                    .values()
                    .filter(|&&until| until > now)
                    .count()
            },
            last_ts: inner.clock.last(),
            background_error: inner.bg_error.borrow().clone(),
            writes_failing: self.write_health().err(),
            txn_intents: inner.cc.borrow().intent_count(),
            txn_prepared: inner.prepared.borrow().len(),
            txn_decisions: inner.decisions.borrow().len(),
        }
    }

    /// Flushes the memtables (so the next open replays nothing), stops
    /// accepting writes, writes and syncs what is queued, and stops the
    /// background tasks. If the flush fails the data stays in the WAL and
    /// the error is returned after the shutdown.
    pub async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.closed.get() {
            return Ok(());
        }
        let flushed = self.flush().await;
        inner.stop();
        wait_until(&inner.events.flushed, || {
            inner.writer_done.get() && inner.tasks_running.get() == 0 && !inner.reaping.get()
        })
        .await;
        flushed
    }
}

impl<D: Disk> Inner<D> {
    /// Refuses new operations and wakes every background task, each of
    /// which then ends (the writer after syncing the WAL's tail).
    fn stop(&self) {
        self.closed.set(true);
        self.events.work.notify(usize::MAX);
        self.events.space.notify(usize::MAX);
        self.events.flush.notify(usize::MAX);
        self.events.compact.notify(usize::MAX);
    }

    /// Checks key, value and batch sizes; returns the batch's WAL payload
    /// bytes.
    pub(crate) fn check_ops(&self, ops: &[Entry]) -> Result<usize> {
        if self.closed.get() {
            return Err(Error::Closed);
        }
        let mut bytes = 12;
        for Entry {
            key, value, kind, ..
        } in ops
        {
            if key.is_empty() || key.len() > self.opts.key_bytes_max {
                return Err(Error::TooLarge {
                    what: "key",
                    len: key.len(),
                    limit: self.opts.key_bytes_max,
                });
            }
            // An expiring put's TTL is not part of its value's size.
            let value_len = match kind {
                Kind::Expiring => value.len().saturating_sub(TTL_BYTES),
                _ => value.len(),
            };
            if value_len > self.opts.value_bytes_max {
                return Err(Error::TooLarge {
                    what: "value",
                    len: value_len,
                    limit: self.opts.value_bytes_max,
                });
            }
            bytes += 9 + key.len() + value.len();
        }
        let limit = self.opts.wal_group_bytes_max;
        if bytes > limit {
            return Err(Error::TooLarge {
                what: "batch",
                len: bytes,
                limit,
            });
        }
        Ok(bytes)
    }

    /// Waits until the write queue has room for `bytes` (and, in `none`
    /// mode, a memtable slot is free: acknowledged writes go straight to
    /// the memtable there, so this is where memory is bounded; the writer
    /// task stalls the other modes). A write that waits for a slot fails
    /// with [`Error::Stalled`] while flushes, or compactions with level 0
    /// at its stop, are failing ([`Inner::stall_error`]), as the writer
    /// task fails durable writes: it would otherwise wait for good on a
    /// full disk.
    pub(crate) async fn wait_for_room(&self, bytes: usize) -> Result<()> {
        while !self.memtable_has_room() {
            if let Some(why) = self.stall_error() {
                return Err(Error::Stalled(why));
            }
            // A failing flush notifies `flushed`; a failing compaction
            // does not, hence the timer (the writer task's period too).
            futures_lite::future::or(
                wait_until(&self.events.flushed, || self.memtable_has_room()),
                glommio::timer::sleep(STALL_CHECK),
            )
            .await;
        }
        wait_until(&self.events.space, || self.queue_has_room(bytes)).await;
        if self.closed.get() {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Whether a write may go into the memtable now: in `none` mode, not
    /// while the memtable is full and every immutable slot taken (the
    /// other modes apply writes in the writer task, which waits itself).
    fn memtable_has_room(&self) -> bool {
        self.opts.wal_sync != SyncMode::None
            || self.mem.borrow().bytes() < self.opts.memtable_bytes_max
            || self.imms.borrow().len() < self.opts.immutable_memtables_max
            || self.closed.get()
    }

    /// Whether `bytes` more fit the writer's queue (a group's bound).
    fn queue_has_room(&self, bytes: usize) -> bool {
        let q = self.queue.borrow();
        q.is_empty() || q.bytes + bytes <= self.opts.wal_group_bytes_max || self.closed.get()
    }

    /// Stamps `batch` and queues it for the writer (in `none` mode, also
    /// into the memtable); returns its timestamp and its group. Callers
    /// checked its ops (`bytes`) and that there is room.
    fn queue_write(&self, batch: WriteBatch, bytes: usize) -> (u64, Rc<Group>) {
        // No await between taking the timestamp and queueing: queue order is
        // timestamp order.
        let ts = match batch.arrived_ms {
            Some(ms) => self.clock.now_at(ms),
            None => self.clock.now(),
        };
        let entries = batch.into_entries(ts);
        {
            let mut cc = self.cc.borrow_mut();
            for e in &entries {
                cc.record_write(key_hash(&e.key), ts);
            }
        }
        let group = self.enqueue(Record::Batch { ts, entries }, bytes);
        if self.opts.wal_sync != SyncMode::None {
            // Readers at a timestamp above `ts` wait until it is applied
            // (queue order is timestamp order: the oldest comes first).
            self.inflight.borrow_mut().push_back(ts);
            self.queue.borrow_mut().tracked += 1;
        }
        (ts, group)
    }

    /// Queues a record that puts nothing into the memtable when durable (a
    /// prepare): it is encoded now, in any sync mode, so the caller keeps
    /// its entries instead of a copy.
    pub(crate) fn enqueue_encoded(&self, rec: &Record, bytes: usize) -> Rc<Group> {
        debug_assert!(matches!(rec, Record::Prepare { .. }));
        let (group, was_empty) = {
            let mut q = self.queue.borrow_mut();
            let was_empty = q.is_empty();
            self.encode_queued(&mut q, rec);
            q.bytes += bytes;
            (q.group.clone(), was_empty)
        };
        self.wake_writer(was_empty);
        group
    }

    /// Wakes the writer task for a queue that was `was_empty` before a
    /// record joined it. The writer only waits on an empty queue, and
    /// looks at the queue again after it starts listening, so the record
    /// that made the queue non-empty is the only one that needs to wake
    /// it. A notify is a full memory fence: once per write, it waited for
    /// the memtable's stores still in flight (~4% of the server's CPU
    /// under 16-deep SETs).
    fn wake_writer(&self, was_empty: bool) {
        if was_empty {
            self.events.work.notify(1);
        }
    }

    /// Appends `rec` to the queue's encoded records (see `write::Queue`).
    fn encode_queued(&self, q: &mut Queue, rec: &Record) {
        if q.encoded_count == 0 {
            q.encoded_segment = self.wal_segment.get();
        }
        rec.encode(&mut q.encoded, q.encoded_segment);
        q.encoded_count += 1;
    }

    /// Queues a record for the writer task without awaiting; in `none` mode
    /// a batch is applied to the memtable here.
    pub(crate) fn enqueue(&self, rec: Record, bytes: usize) -> Rc<Group> {
        let (group, was_empty) = {
            let mut q = self.queue.borrow_mut();
            let was_empty = q.is_empty();
            if self.opts.wal_sync == SyncMode::None {
                self.encode_queued(&mut q, &rec);
                let mem = self.mem.borrow();
                for e in rec.into_applied_entries() {
                    mem.insert(e);
                }
            } else {
                q.batches.push(rec);
            }
            q.bytes += bytes;
            (q.group.clone(), was_empty)
        };
        self.wake_writer(was_empty);
        group
    }

    /// Called by foreground operations that may never block. glommio reaps
    /// disk completions only when the task queue runs dry or its preempt
    /// timer (100 ms) fires, and `yield_if_needed` only yields on that
    /// timer, so a foreground that never blocks left each flush or
    /// compaction write waiting up to 100 ms (no flush finished during a
    /// 1M-key fill). Every `REACTOR_EVERY` calls, while background work is
    /// pending, this sleeps for a microsecond: the task parks, the reactor
    /// reaps completions and the background tasks run.
    pub(crate) async fn let_background_run(&self) {
        let n = self.foreground_ops.get().wrapping_add(1);
        self.foreground_ops.set(n);
        if self.background_turn(n) {
            glommio::timer::sleep(Duration::from_micros(1)).await;
        } else {
            glommio::yield_if_needed().await;
        }
    }

    /// Whether foreground operation number `n` is the one in
    /// `REACTOR_EVERY` that parks while background work is pending.
    fn background_turn(&self, n: u32) -> bool {
        const REACTOR_EVERY: u32 = 256;
        n.is_multiple_of(REACTOR_EVERY) && self.background_busy()
    }

    /// [`Inner::let_background_run`] for an operation that cannot wait:
    /// counts it and returns true if it owes nothing, false (uncounted) if
    /// it would park or yield; the caller then takes its waiting path,
    /// which does.
    fn owes_no_turn(&self) -> bool {
        let n = self.foreground_ops.get().wrapping_add(1);
        if self.background_turn(n) || glommio::executor().need_preempt() {
            return false;
        }
        self.foreground_ops.set(n);
        true
    }

    /// Whether a flush or compaction is waiting, running, or due. "Due"
    /// matters: the compaction task only starts once the foreground parks,
    /// so without it a foreground that never blocks left level 0 at 5
    /// tables through a whole read benchmark (every read and seek then
    /// probed them all).
    fn background_busy(&self) -> bool {
        !self.imms.borrow().is_empty()
            || self.compaction_lock.available() == 0
            || crate::compaction::pick_needed(self)
    }

    /// Whether flushes or compactions are falling behind the writes: every
    /// immutable memtable slot is taken (the next full memtable stops the
    /// writes), or level 0 holds twice the tables that trigger its
    /// compaction (every read probes each). Then they give way only every
    /// 500 µs ([`Slices`]): under a load that keeps the shard busy, a flush
    /// that gave way every 100 µs got a few percent of the CPU, and the
    /// writes it held up stalled for tens of milliseconds; one that did not
    /// give way at all held requests 4-5 ms at a time.
    fn background_behind(&self) -> bool {
        self.imms.borrow().len() >= self.opts.immutable_memtables_max
    }

    /// How long a flush or compaction runs before it gives way
    /// ([`Slices`]): [`BACKGROUND_SLICE`], or [`BEHIND_SLICE`] while
    /// [`Inner::background_behind`]. From `l0_slowdown_trigger` level-0
    /// tables on it grows with them, to [`STOP_SLICE`] at
    /// `l0_stop_trigger`: the foreground, which gets the CPU between
    /// slices, gets a shrinking share, so writes slow down as compaction
    /// falls behind instead of running at full speed into the stop.
    pub(crate) fn background_slice(&self) -> Duration {
        let l0 = self.version.borrow().levels[0].len();
        let (slowdown, stop) = (self.opts.l0_slowdown_trigger, self.opts.l0_stop_trigger);
        if l0 >= slowdown {
            let depth = (l0 - slowdown + 1) as f64 / (stop - slowdown + 1) as f64;
            return BEHIND_SLICE + (STOP_SLICE - BEHIND_SLICE).mul_f64(depth.min(1.0));
        }
        match self.background_behind() {
            true => BEHIND_SLICE,
            false => BACKGROUND_SLICE,
        }
    }

    /// Whether flushes wait for compaction: level 0 holds
    /// `l0_stop_trigger` tables, and neither an explicit flush nor a close
    /// is waiting for them.
    pub(crate) fn l0_stopped(&self) -> bool {
        self.version.borrow().levels[0].len() >= self.opts.l0_stop_trigger
            && self.flushes_forced.get() == 0
            && !self.closed.get()
    }

    /// Why writes that wait for a memtable slot should fail instead: the
    /// flush is failing, or level 0 is at its stop and compaction is
    /// failing (on a nearly full disk flushes may still fit where a
    /// compaction does not; the writes would otherwise wait for good).
    pub(crate) fn stall_error(&self) -> Option<String> {
        if let Some(bg) = self.bg_error.borrow().clone() {
            return Some(format!("background flush failed: {bg}"));
        }
        let failing = self.compaction_error.borrow().clone()?;
        self.l0_stopped().then(|| {
            format!(
                "level 0 holds {} tables and compaction is failing: {failing}",
                self.version.borrow().levels[0].len()
            )
        })
    }

    /// Records why a memtable could not be flushed: a flush waiting for it
    /// returns the error, and it counts in `flush_errors`.
    pub(crate) fn flush_failed(&self, why: String) {
        *self.bg_error.borrow_mut() = Some(why);
        self.stats
            .flush_errors
            .set(self.stats.flush_errors.get() + 1);
        self.events.flushed.notify(usize::MAX);
    }

    /// The `n` oldest tracked writes are applied (or failed): wake readers.
    pub(crate) fn applied_oldest(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.inflight.borrow_mut().drain(..n);
        self.events.resolved.notify(usize::MAX);
    }

    /// Prepares and commit decisions not yet resolved, to log again when the
    /// segments holding them are about to be recycled.
    pub(crate) fn undecided_records(&self) -> Vec<Record> {
        let mut out: Vec<Record> = self
            .prepared
            .borrow()
            .iter()
            .map(|(&ts, entries)| Record::Prepare {
                ts,
                entries: entries.clone(),
            })
            .collect();
        out.extend(
            self.decisions
                .borrow()
                .iter()
                .map(|(&ts, participants)| Record::Decision {
                    ts,
                    commit: true,
                    participants: participants.clone(),
                    // The writes are in the memtable this swap hands to
                    // the flush; only the decision must outlive it.
                    entries: Vec::new(),
                }),
        );
        out
    }

    pub(crate) fn watermark(&self) -> u64 {
        let now = wall_ms();
        let window = ts_from_ms(now.saturating_sub(self.opts.retention_ms));
        [self.watermark_pin.get(), self.oldest_read_hold(now)]
            .into_iter()
            .flatten()
            .fold(window, u64::min)
    }

    /// The oldest timestamp a read still holds (expired holds go).
    fn oldest_read_hold(&self, now_ms: u64) -> Option<u64> {
        let mut holds = self.read_holds.borrow_mut();
        while let Some((&ts, &until)) = holds.first_key_value() {
            if until > now_ms {
                return Some(ts);
            }
            holds.pop_first();
        }
        None
    }

    /// Keeps `ts`, which a read just asked for, readable for at least half
    /// the retention window after this read: a backup or a paged scan at
    /// one snapshot then lasts as long as it reads at least that often,
    /// however long it runs (before, any that outlived the window failed
    /// with `TimestampTooOld`). A timestamp younger than half the window
    /// needs nothing held (the window keeps it that long); an older one is
    /// held until one window after this read, which holds back compaction's
    /// dropping of versions by as much. At most [`READ_HOLDS_MAX`]
    /// timestamps are held; past them a read gets the window alone.
    fn hold_for_reads(&self, ts: u64) {
        let now = wall_ms();
        if ms_of_ts(ts).saturating_add(self.opts.retention_ms / 2) > now {
            return;
        }
        let mut holds = self.read_holds.borrow_mut();
        if holds.len() >= READ_HOLDS_MAX && !holds.contains_key(&ts) {
            holds.retain(|_, until| *until > now);
            if holds.len() >= READ_HOLDS_MAX {
                return;
            }
        }
        holds.insert(ts, now.saturating_add(self.opts.retention_ms));
    }

    /// Makes a read at `ts` repeatable: refuses `ts` outside the retention
    /// window or too far ahead, moves the clock past it, forbids writes at
    /// or below it (to `key`, or anywhere for a range read) and waits until
    /// no write at or below it is queued or undecided.
    pub(crate) async fn settle_read(&self, key: Option<&[u8]>, ts: u64) -> Result<()> {
        self.check_retained(ts)?;
        self.hold_for_reads(ts);
        let now = self.clock.now();
        if ts > now.saturating_add(ts_from_ms(1000)) {
            return Err(Error::TimestampInFuture { requested: ts, now });
        }
        self.clock.observe(ts);
        let hash = key.map(key_hash);
        match hash {
            Some(h) => self.cc.borrow_mut().record_read(h, ts),
            None => self.cc.borrow_mut().raise_read_floor(ts),
        }
        let started = std::time::Instant::now();
        loop {
            let blocker = {
                let intent = self.intent_holder(hash);
                let queued = self.inflight.borrow().front().copied();
                [intent, queued]
                    .into_iter()
                    .flatten()
                    .filter(|&t| t <= ts)
                    .min()
            };
            match blocker {
                None => return Ok(()),
                Some(holder) => self.wait_resolved(started, holder).await?,
            }
        }
    }

    /// Before a read of the newest state: waits until no transaction that
    /// held an intent on `key` (on any key: `None`) when the call began
    /// still holds it.
    ///
    /// A participant applies a committed transaction's writes when the
    /// coordinator's commit message arrives, which may be after the client
    /// heard of the commit. Every intent here has a timestamp at or below
    /// this shard's clock (a prepare observes its timestamp), so waiting for
    /// those lets a read that starts after the answer see the writes.
    /// Intents placed later with a higher timestamp are not waited for.
    pub(crate) async fn settle_newest(&self, key: Option<&[u8]>) -> Result<()> {
        if self.cc.borrow().intent_count() == 0 {
            return Ok(());
        }
        let bound = self.clock.last();
        let hash = key.map(key_hash);
        let started = std::time::Instant::now();
        loop {
            match self.intent_holder(hash) {
                // Boxed: rare, and its state would otherwise be part of
                // every read's future, which the server boxes per request.
                Some(t) if t <= bound => Box::pin(self.wait_resolved(started, t)).await?,
                _ => return Ok(()),
            }
        }
    }

    /// The transaction holding an intent on the key with this hash, or
    /// (`None`) the oldest one holding any intent.
    fn intent_holder(&self, hash: Option<u64>) -> Option<u64> {
        let cc = self.cc.borrow();
        match hash {
            Some(h) => cc.intent_on(h),
            None => cc.oldest_intent(),
        }
    }

    /// Waits for the next intent release or applied write, failing once
    /// `txn_wait_ms` have passed since `started`.
    pub(crate) async fn wait_resolved(
        &self,
        started: std::time::Instant,
        holder: u64,
    ) -> Result<()> {
        let limit = Duration::from_millis(self.opts.txn_wait_ms);
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(Error::WaitTimeout {
                holder,
                waited_ms: self.opts.txn_wait_ms,
            });
        }
        let listener = self.events.resolved.listen();
        futures_lite::future::or(listener, glommio::timer::sleep(left)).await;
        Ok(())
    }

    pub(crate) fn check_retained(&self, ts: u64) -> Result<()> {
        let watermark = self.watermark();
        if ts < watermark {
            return Err(Error::TimestampTooOld {
                requested: ts,
                watermark,
            });
        }
        debug_assert!(ms_of_ts(ts) + self.opts.retention_ms >= ms_of_ts(watermark));
        Ok(())
    }

    /// Every source of versions, newest first.
    pub(crate) fn sources(&self) -> Vec<Source<D::File>> {
        let mut sources = vec![Source::mem(self.mem.borrow().clone())];
        for (imm, _) in self.imms.borrow().iter().rev() {
            sources.push(Source::mem(imm.clone()));
        }
        let version = self.version.borrow().clone();
        for t in &version.levels[0] {
            sources.push(Source::run(vec![t.clone()]));
        }
        for level in &version.levels[1..] {
            if !level.is_empty() {
                sources.push(Source::run(level.clone()));
            }
        }
        sources
    }

    /// The live value of `key` as of `ts` (`u64::MAX`: newest), and when
    /// it expires if it was written with a TTL.
    pub(crate) async fn value_at(
        &self,
        key: &[u8],
        ts: u64,
    ) -> Result<Option<(Bytes, Option<u64>)>> {
        Ok(self.value_of(self.newest_at(key, ts).await?, ts))
    }

    /// What a read at `ts` that found `newest` returns: its value and
    /// expiry, if it is a live value.
    fn value_of(&self, newest: Option<Versioned>, ts: u64) -> Option<(Bytes, Option<u64>)> {
        newest.and_then(|e| {
            let expires_at_ms = expiry(e.kind, e.ts, &e.value);
            visible(e.kind, e.ts, e.value, || read_ms(ts, &self.clock))
                .map(|value| (value, expires_at_ms))
        })
    }

    /// The newest version of `key` at or below `ts`, tombstones included.
    pub(crate) async fn newest_at(&self, key: &[u8], ts: u64) -> Result<Option<Versioned>> {
        // Reads served from memory never block: keep background tasks fed.
        self.let_background_run().await;
        let hash = bloom::hash(key);
        let (version, best, cache) = match self.newest_in_memory(key, hash, ts) {
            InMemory::Found(found) => return Ok(found),
            InMemory::Tables {
                version,
                best,
                cache,
            } => (version, best, cache),
        };
        // The tables' reads are boxed: their state (a block read's) would
        // otherwise be part of every read's future, which the server boxes
        // per request, and most reads end above.
        let found = Box::pin(self.newest_in_tables(&version, key, ts, best)).await?;
        // Below the tables' newest timestamp the answer may not be their
        // newest version.
        if cache && ts >= version.max_ts {
            self.rows.insert(key, hash, version.seq, found.as_ref());
        }
        Ok(found)
    }

    /// The newest version of `key` (whose bloom hash is `hash`) at or
    /// below `ts`, if the memtables or the row cache know it.
    fn newest_in_memory(&self, key: &[u8], hash: u64, ts: u64) -> InMemory<D::File> {
        let mut best: Option<Versioned> = None;
        take_newer(&mut best, self.mem.borrow().get_hashed(key, hash, ts));
        let imms: Vec<Rc<Memtable>> = self
            .imms
            .borrow()
            .iter()
            .rev()
            .map(|(m, _)| m.clone())
            .collect();
        for imm in imms {
            if may_be_newer(&best, imm.max_ts()) {
                take_newer(&mut best, imm.get_hashed(key, hash, ts));
            }
        }
        let version = self.version.borrow().clone();
        // Nothing in the tables is newer than a version the memtables hold
        // at or past their newest timestamp (the usual case): skip the walk.
        if let Some(found) = &best {
            if found.ts >= version.max_ts {
                return InMemory::Found(best);
            }
        }
        if best.is_some() || !self.rows.enabled() {
            return InMemory::Tables {
                version,
                best,
                cache: false,
            };
        }
        // Nothing in the memtables: the tables' newest version at or below
        // `ts` is the answer, and the row cache may know it.
        if let Some(found) = self.rows.get(key, hash, version.seq, ts) {
            return InMemory::Found(found);
        }
        InMemory::Tables {
            version,
            best: None,
            cache: true,
        }
    }

    /// [`Engine::get_in_memory`].
    fn get_in_memory(&self, key: &[u8]) -> Option<Option<(Bytes, Option<u64>)>> {
        // As `get_with_expiry`, whose waits (for an intent, for the
        // background's turn, for the tables) this cannot take.
        if self.cc.borrow().intent_count() != 0 || !self.owes_no_turn() {
            return None;
        }
        match self.newest_in_memory(key, bloom::hash(key), u64::MAX) {
            InMemory::Found(found) => Some(self.value_of(found, u64::MAX)),
            InMemory::Tables { .. } => None,
        }
    }

    /// The newest version of `key` at or below `ts` in `version`'s tables,
    /// or `best` if none is newer.
    async fn newest_in_tables(
        &self,
        version: &Version<D::File>,
        key: &[u8],
        ts: u64,
        mut best: Option<Versioned>,
    ) -> Result<Option<Versioned>> {
        for (level, tables) in version.levels.iter().enumerate() {
            if level == 0 {
                for t in tables {
                    let m = &t.meta;
                    if may_be_newer(&best, m.props.max_ts) && m.overlaps(key, key) {
                        take_newer(&mut best, t.get(key, ts, &self.cache).await?);
                    }
                }
            } else {
                let i = tables.partition_point(|t| t.meta.largest.user() < key);
                if let Some(t) = tables.get(i) {
                    if may_be_newer(&best, t.meta.props.max_ts) && t.meta.smallest.user() <= key {
                        take_newer(&mut best, t.get(key, ts, &self.cache).await?);
                    }
                }
            }
        }
        Ok(best)
    }

    /// Applies an edit to the manifest and, once durable, to the in-memory
    /// level state and version. `fresh` are the newly opened tables;
    /// `flushed` says they come from memtables (they may hold versions
    /// newer than any table had), not from a compaction.
    pub(crate) async fn install(
        &self,
        edit: Edit,
        fresh: &[Rc<Table<D::File>>],
        flushed: bool,
    ) -> Result<()> {
        let mut manifest = self.manifest.write().await.map_err(|_| Error::Closed)?;
        let mut next = self.levels.borrow().clone();
        next.apply(&edit);
        manifest.append(&edit, &next).await?;
        let version = self.version.borrow().rebuild(&next, fresh);
        let filters = match flushed {
            true => fresh.iter().map(|t| t.filter().clone()).collect(),
            false => Vec::new(),
        };
        self.rows.installed(version.seq, filters);
        *self.version.borrow_mut() = Rc::new(version);
        *self.levels.borrow_mut() = next;
        Ok(())
    }

    /// Marks a background task as exited.
    pub(crate) fn task_exited(&self) {
        self.tasks_running.set(self.tasks_running.get() - 1);
        self.events.flushed.notify(usize::MAX);
    }

    pub(crate) fn allocate_table_id(&self) -> u64 {
        let id = self.next_table_id.get();
        self.next_table_id.set(id + 1);
        id
    }

    /// Creates the file for table `id`. With `warm`, its blocks enter the
    /// block cache as they are written: flushes and compactions into level
    /// 1 hold the newest (most read) data, and the LRU evicts whatever turns
    /// out cold; deeper compactions would flush the cache for data that is
    /// rarely read, so they do not warm it.
    pub(crate) async fn create_table(&self, id: u64, warm: bool) -> Result<TableBuilder<D::File>> {
        let file = self.disk.create(&self.sst_dir.join(table_name(id))).await?;
        let warm = warm.then(|| self.cache.clone());
        Ok(TableBuilder::new(file, id, self.opts.block_bytes, warm))
    }

    /// Removes the files of tables a compaction replaced, each once no
    /// reader holds the table any more and its file is closed.
    ///
    /// Unlinked while still open (as they were, right after the compaction
    /// installed), their blocks were freed when the last reader dropped the
    /// table and the file closed: in that close, on the shard's thread,
    /// 3-4 ms per 64 MiB table here. After a level-0 compaction that held
    /// the shard ~24 ms. Closed first, the unlink frees them, on the
    /// blocking thread pool ([`Disk::remove`]).
    pub(crate) fn retire<'a>(
        self: &Rc<Self>,
        tables: impl IntoIterator<Item = &'a Rc<Table<D::File>>>,
    ) where
        D::File: 'a,
    {
        self.retired
            .borrow_mut()
            .extend(tables.into_iter().map(|t| Retired {
                id: t.id(),
                table: Rc::downgrade(t),
                closed: false,
            }));
        if !self.reaping.replace(true) {
            glommio::spawn_local(reap(self.clone())).detach();
        }
    }

    /// Removes a table's file; one already gone is not an error.
    pub(crate) async fn remove_table_file(&self, id: u64) {
        match self.disk.remove(&self.sst_dir.join(table_name(id))).await {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                tracing::warn!(table = id, error = %e, "could not remove a table file");
            }
            _ => {}
        }
    }

    /// Removes the files of tables a failed flush or compaction wrote
    /// before installing them (none is in the manifest, so none is read).
    /// Left for the next open to collect, a partial output held its space
    /// meanwhile: on a full disk, the space the retry needed, so writes
    /// failed until a restart even after space was freed.
    pub(crate) async fn discard_tables(&self, ids: &[u64]) {
        for &id in ids {
            self.remove_table_file(id).await;
        }
    }
}

/// A table a compaction replaced (see [`Inner::retire`]).
pub(crate) struct Retired<F: crate::io::DiskFile> {
    id: u64,
    table: std::rc::Weak<Table<F>>,
    /// Seen dropped on an earlier pass: its file's close has been
    /// submitted since (a dropped file closes at the next submission).
    closed: bool,
}

/// How often retired tables are checked.
const REAP_EVERY: Duration = Duration::from_millis(20);

/// Removes retired tables' files once closed, until none is left or the
/// engine closes (what is left then, the next open removes: every table
/// file the manifest does not list goes).
async fn reap<D: Disk>(inner: Rc<Inner<D>>) {
    loop {
        // Woken early by a close: until this task ends it holds the
        // engine, and a close returns only after it has.
        let closed = wait_until(&inner.events.compact, || inner.closed.get());
        futures_lite::future::or(glommio::timer::sleep(REAP_EVERY), closed).await;
        if inner.closed.get() {
            return reap_ended(&inner);
        }
        let mut due = Vec::new();
        inner.retired.borrow_mut().retain_mut(|r| {
            if r.table.strong_count() > 0 {
                return true;
            }
            if r.closed {
                due.push(r.id);
                return false;
            }
            r.closed = true;
            true
        });
        for id in due {
            if inner.closed.get() {
                break;
            }
            inner.remove_table_file(id).await;
        }
        if inner.retired.borrow().is_empty() {
            return reap_ended(&inner);
        }
    }
}

/// Marks the reaping task ended, and wakes a close waiting for it: a
/// close that came while the task removed the last retired files, and so
/// found nothing left to reap, waited for good (a server once hung on
/// SIGTERM after a sustained write load that way).
fn reap_ended<D: Disk>(inner: &Inner<D>) {
    inner.reaping.set(false);
    inner.events.flushed.notify(usize::MAX);
}

/// Frees a flushed memtable a slice at a time, letting the shard serve
/// requests in between, when this task holds its last reference (a reader
/// still holding it frees it whole when done). Freed in one go, ~330k
/// versions held the shard ~11.5 ms when each held a share of its value's
/// chunk; now its ~12k nodes and ~100 value chunks are freed, nothing per
/// version.
async fn shed(mem: Rc<Memtable>) {
    /// Nodes freed per slice, a cache miss each.
    const STEP: usize = 256;
    let Ok(mem) = Rc::try_unwrap(mem) else {
        return;
    };
    let mut pieces = mem.into_pieces();
    let mut slices = Slices::new(1, || BACKGROUND_SLICE);
    // Freeing does nothing for a backlog: it always gives way. (Under the
    // flush's rule, with every memtable slot full, it freed a whole
    // memtable in one ~15 ms go.)
    while pieces.free(STEP) {
        slices.tick().await;
    }
}

/// The flush task: writes the oldest full memtable to a level-0 table,
/// installs it, then recycles the WAL segments it made obsolete.
async fn flush_loop<D: Disk>(inner: Rc<Inner<D>>) {
    let mut backoff = Duration::from_millis(50);
    let spare_target = inner.opts.wal_spare_segments;
    loop {
        if inner.closed.get() {
            inner.task_exited();
            return;
        }
        let next = inner.imms.borrow().front().cloned();
        let Some((mem, boundary)) = next else {
            if inner.spares.count() < spare_target {
                let log_number = inner.levels.borrow().log_number;
                if let Err(e) = wal::recycle_below(
                    &inner.disk,
                    &inner.wal_dir,
                    inner.opts.wal_segment_bytes,
                    &inner.spares,
                    log_number,
                    spare_target,
                )
                .await
                {
                    tracing::warn!(error = %e, "could not prepare spare WAL segments");
                }
            }
            wait_until(&inner.events.flush, || {
                !inner.imms.borrow().is_empty() || inner.closed.get()
            })
            .await;
            continue;
        };
        if inner.l0_stopped() {
            inner.stats.l0_stops.set(inner.stats.l0_stops.get() + 1);
            tracing::debug!(
                tables = inner.version.borrow().levels[0].len(),
                "flush waits for compaction of level 0"
            );
            wait_until(&inner.events.flush, || !inner.l0_stopped()).await;
            continue;
        }
        match flush_one(&inner, &mem, boundary).await {
            Ok(()) => {
                backoff = Duration::from_millis(50);
                *inner.bg_error.borrow_mut() = None;
                inner.stats.flushes.set(inner.stats.flushes.get() + 1);
                inner.events.compact.notify(usize::MAX);
                shed(mem).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "memtable flush failed; retrying");
                inner.flush_failed(e.to_string());
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        }
        inner.events.flushed.notify(usize::MAX);
    }
}

/// Counts an explicit flush in [`Inner::flushes_forced`] while it lives.
struct Forced<'a, D: Disk>(&'a Inner<D>);

impl<'a, D: Disk> Forced<'a, D> {
    fn new(inner: &'a Inner<D>) -> Self {
        inner.flushes_forced.set(inner.flushes_forced.get() + 1);
        inner.events.flush.notify(usize::MAX);
        Forced(inner)
    }
}

impl<D: Disk> Drop for Forced<'_, D> {
    fn drop(&mut self) {
        self.0.flushes_forced.set(self.0.flushes_forced.get() - 1);
    }
}

/// How often a write waiting for a memtable slot looks again at whether
/// it should fail instead ([`Inner::stall_error`]).
pub(crate) const STALL_CHECK: Duration = Duration::from_millis(50);

/// Background CPU between chances for the foreground: a flush or a
/// compaction that ran on without awaiting anything left every request on
/// its shard waiting as long.
const BACKGROUND_SLICE: Duration = Duration::from_micros(100);
/// The same when the background is behind ([`Inner::background_behind`]):
/// it then takes most of the CPU, yet still holds requests for at most
/// about this long.
const BEHIND_SLICE: Duration = Duration::from_micros(500);
/// The longest slice, with level 0 at `l0_stop_trigger`
/// ([`Inner::background_slice`]).
const STOP_SLICE: Duration = Duration::from_millis(4);
/// Versions a flush copies into its table between [`Slices::tick`]s.
const FLUSH_STEP_VERSIONS: usize = 32;

/// Cuts a flush or compaction into slices as long as `slice` says, at
/// least [`BACKGROUND_SLICE`]. Between slices the task sleeps for a
/// microsecond: the task queue then runs dry, the executor polls its
/// rings, and the requests that arrived meanwhile run before the
/// background task resumes. (`yield_now` alone would not do: the executor
/// only polls for I/O when its queue runs dry.)
pub(crate) struct Slices<S: Fn() -> Duration> {
    started: std::time::Instant,
    units: u32,
    check_every: u32,
    slice: S,
}

impl<S: Fn() -> Duration> Slices<S> {
    /// Reads the clock every `check_every` units of work.
    pub(crate) fn new(check_every: u32, slice: S) -> Self {
        Slices {
            started: std::time::Instant::now(),
            units: 0,
            check_every,
            slice,
        }
    }

    /// Counts one unit of work; at the end of a slice, lets the foreground
    /// run, and returns true.
    pub(crate) async fn tick(&mut self) -> bool {
        self.units = self.units.wrapping_add(1);
        if !self.units.is_multiple_of(self.check_every) {
            return false;
        }
        let ran = self.started.elapsed();
        if ran >= BACKGROUND_SLICE && ran >= (self.slice)() {
            glommio::timer::sleep(Duration::from_micros(1)).await;
            self.started = std::time::Instant::now();
            return true;
        }
        false
    }

    /// Awaits `f`, which may wait (for the disk, say). If it did, the
    /// foreground had the CPU meanwhile, and while the background is
    /// behind (slices longer than [`BACKGROUND_SLICE`]) a fresh slice
    /// starts: a compaction that counted its waits as work gave way right
    /// after each, and had under a fifth of the shard however far behind it
    /// was. Otherwise the wait ends the slice: the background's share then
    /// stays what it was when it never overlapped its I/O with its work
    /// (taking more, it cost 16-deep SETs ~5% in 5-s runs).
    pub(crate) async fn wait<F: std::future::Future>(&mut self, f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut waited = false;
        let out = std::future::poll_fn(|cx| {
            let poll = f.as_mut().poll(cx);
            waited |= poll.is_pending();
            poll
        })
        .await;
        if waited && (self.slice)() > BACKGROUND_SLICE {
            self.started = std::time::Instant::now();
        }
        out
    }
}

async fn flush_one<D: Disk>(inner: &Rc<Inner<D>>, mem: &Rc<Memtable>, boundary: u64) -> Result<()> {
    let mut fresh = Vec::new();
    let mut edit = Edit {
        log_number: Some(boundary),
        ..Edit::default()
    };
    if !mem.is_empty() {
        let id = inner.allocate_table_id();
        match write_flushed_table(inner, mem, id).await {
            Ok((table, meta)) => {
                fresh.push(table);
                edit.added.push((0, meta));
            }
            Err(e) => {
                inner.discard_tables(&[id]).await;
                return Err(e);
            }
        }
    }
    edit.next_table_id = Some(inner.next_table_id.get());
    // A failed install leaves the table's file: the manifest record may
    // have reached the disk even though its sync failed, and then the file
    // is in use after a restart. If it did not, the next open removes it.
    inner.install(edit, &fresh, true).await?;
    {
        let mut imms = inner.imms.borrow_mut();
        let (front, _) = imms.pop_front().expect("flushed memtable is queued");
        assert!(Rc::ptr_eq(&front, mem), "memtables flush in order");
    }
    // The flush is installed; failing to recycle only costs disk space and
    // is retried after the next flush.
    if let Err(e) = wal::recycle_below(
        &inner.disk,
        &inner.wal_dir,
        inner.opts.wal_segment_bytes,
        &inner.spares,
        boundary,
        inner.opts.wal_spare_segments,
    )
    .await
    {
        tracing::warn!(error = %e, "could not recycle WAL segments");
    }
    Ok(())
}

/// Writes `mem` into table `id` and opens it.
async fn write_flushed_table<D: Disk>(
    inner: &Rc<Inner<D>>,
    mem: &Memtable,
    id: u64,
) -> Result<(Rc<Table<D::File>>, TableMeta)> {
    let mut builder = inner.create_table(id, true).await?;
    let mut resume = None;
    // A step of versions is some 10 µs of work.
    let mut slices = Slices::new(4, || inner.background_slice());
    loop {
        let mut budget = FLUSH_STEP_VERSIONS;
        resume = mem.visit_from(resume.as_ref(), |k, kind, value| {
            budget -= 1;
            !builder.push(k.user(), k.ts(), kind, value) && budget > 0
        });
        slices.wait(builder.write_if_due()).await?;
        if resume.is_none() {
            break;
        }
        slices.tick().await;
    }
    let (meta, file) = builder.finish().await?;
    inner.disk.sync_dir(&inner.sst_dir).await?;
    let table = Rc::new(Table::open(file, meta.clone()).await?);
    Ok((table, meta))
}

/// Whether a source whose newest timestamp is `max_ts` may hold a version
/// newer than `best`.
/// What memory knows of a key's newest version ([`Inner::newest_in_memory`]).
enum InMemory<F: DiskFile> {
    /// The answer.
    Found(Option<Versioned>),
    /// `version`'s tables must be read: for a version newer than `best`
    /// (found in the memtables); with `cache`, their answer goes into the
    /// row cache.
    Tables {
        version: Rc<Version<F>>,
        best: Option<Versioned>,
        cache: bool,
    },
}

fn may_be_newer(best: &Option<Versioned>, max_ts: u64) -> bool {
    best.as_ref().is_none_or(|b| max_ts > b.ts)
}

/// Keeps the newer of `best` and `found`.
fn take_newer(best: &mut Option<Versioned>, found: Option<Versioned>) {
    if let Some(e) = found {
        if best.as_ref().is_none_or(|b| e.ts > b.ts) {
            *best = Some(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemDisk;

    /// Drops `engine` unclosed and waits for its background tasks to end;
    /// returns how many references to its state are left.
    async fn refs_left_after_drop(engine: Engine<MemDisk>) -> usize {
        let state = Rc::downgrade(&engine.inner);
        drop(engine);
        for _ in 0..50 {
            if state.strong_count() == 0 {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        state.strong_count()
    }

    /// Durable writes started without waiting are queued while background
    /// work is pending: their callers wait for the group, which lets it
    /// run. Asking `owes_no_turn`, which counts nothing when it says no,
    /// sent every write from the 256th on the waiting way while a flush or
    /// compaction was pending.
    #[test]
    fn durable_writes_are_queued_while_background_work_is_pending() {
        crate::run_local(|| async {
            let engine = Engine::open_on(MemDisk::new(), "/db", Options::for_tests())
                .await
                .unwrap();
            // A memtable waiting for its flush, which cannot run before this
            // task yields.
            let waiting = Rc::new(Memtable::new());
            engine.inner.imms.borrow_mut().push_back((waiting, 0));
            assert!(engine.inner.background_busy());
            let mut queued = Vec::new();
            for i in 0..600 {
                let mut batch = WriteBatch::new();
                batch.put(format!("k{i}"), &b"v"[..]);
                match engine.start_write(batch) {
                    WriteStart::Queued(write) => queued.push(write),
                    WriteStart::Done(_) => panic!("durable write {i} was done at once"),
                    WriteStart::Back(_) => panic!("durable write {i} came back"),
                }
            }
            engine.inner.imms.borrow_mut().clear();
            for mut write in queued {
                std::future::poll_fn(|cx| write.poll_done(cx))
                    .await
                    .unwrap();
            }
            assert_eq!(
                engine.get(b"k599").await.unwrap().as_deref(),
                Some(&b"v"[..])
            );
            engine.close().await.unwrap();
        });
    }

    /// While the background is behind, a wait inside a slice (for the
    /// disk, say) starts a fresh one: the foreground ran meanwhile.
    /// Counted as work, it made a compaction that waited after each read
    /// give way at once, whatever its slice. Not behind, a wait ends it.
    #[test]
    fn a_wait_starts_a_fresh_slice_while_behind() {
        crate::run_local(|| async {
            let spin = |d: Duration| {
                let t = std::time::Instant::now();
                while t.elapsed() < d {}
            };
            let sleep = || glommio::timer::sleep(Duration::from_millis(1));
            let mut slices = Slices::new(1, || BEHIND_SLICE);
            spin(2 * BACKGROUND_SLICE);
            slices.wait(sleep()).await;
            assert!(!slices.tick().await, "gave way after a wait");
            spin(BEHIND_SLICE);
            assert!(slices.tick().await, "ran past its slice");
            // What is ready at once is no wait.
            spin(BEHIND_SLICE);
            slices.wait(async {}).await;
            assert!(slices.tick().await, "ran past its slice");
            // Not behind: a wait ends the slice.
            let mut slices = Slices::new(1, || BACKGROUND_SLICE);
            slices.wait(sleep()).await;
            assert!(slices.tick().await, "ran on after a wait");
        });
    }

    /// Keeps compaction from running while the permit lives.
    async fn hold_compaction(engine: &Engine<MemDisk>) -> glommio::sync::Permit<'_> {
        engine
            .inner
            .compaction_lock
            .acquire_permit(1)
            .await
            .unwrap()
    }

    /// With level 0 at `l0_stop_trigger` tables, flushes wait for
    /// compaction, so writes stall once the memtable slots are full and
    /// level 0 grows no further; an explicit flush still runs, and the
    /// writes go on once compaction does.
    #[test]
    fn writes_stall_while_level_0_is_at_its_stop_and_go_on_after_compaction() {
        crate::run_local(|| async {
            let opts = Options::for_tests();
            let stop = opts.l0_stop_trigger;
            let engine = Engine::open_on(MemDisk::new(), "/db", opts).await.unwrap();
            let compaction = hold_compaction(&engine).await;
            let writer = glommio::spawn_local({
                let engine = engine.clone();
                async move {
                    for i in 0..6000u32 {
                        engine
                            .put(format!("key-{i:05}"), vec![b'v'; 300])
                            .await
                            .unwrap();
                    }
                }
            });
            let level0 = || engine.stats().level_tables[0];
            let sleep = |ms| glommio::timer::sleep(Duration::from_millis(ms));
            for waited in 0.. {
                if engine.stats().l0_stops > 0 {
                    break;
                }
                assert!(waited < 1000, "no flush waited: {}", engine.debug_state());
                sleep(5).await;
            }
            // The memtable slots fill, then nothing moves.
            sleep(50).await;
            let written = engine.stats().wal_batches;
            sleep(100).await;
            assert_eq!(level0(), stop);
            assert_eq!(engine.stats().wal_batches, written, "writes went on");
            assert_eq!(engine.stats().immutable_memtables, 2);
            // An explicit flush does not wait for compaction.
            engine.flush().await.unwrap();
            assert!(level0() > stop, "the explicit flush added no table");
            drop(compaction);
            writer.await;
            assert!(level0() <= stop + 2, "{} tables in level 0", level0());
            for i in [0, 2999, 5999] {
                let value = engine.get(format!("key-{i:05}").as_bytes()).await.unwrap();
                assert_eq!(value.as_deref(), Some(&[b'v'; 300][..]));
            }
            engine.close().await.unwrap();
        });
    }

    /// With level 0 at its stop and compaction failing (a nearly full
    /// disk can take a flush but not a compaction), writes that wait for a
    /// memtable slot fail with a clear error instead of waiting for good,
    /// durable ones (failed by the writer task) and `none`-mode ones
    /// (which wait before they go into the memtable) alike; once
    /// compaction succeeds, writes go on.
    #[test]
    fn writes_fail_while_level_0_is_stopped_and_compaction_is_failing() {
        for wal_sync in [SyncMode::Always, SyncMode::None] {
            writes_fail_while_level_0_is_stopped_and_compaction_is_failing_in(wal_sync);
        }
    }

    fn writes_fail_while_level_0_is_stopped_and_compaction_is_failing_in(wal_sync: SyncMode) {
        crate::run_local(move || async move {
            let opts = Options {
                wal_sync,
                ..Options::for_tests()
            };
            let stop = opts.l0_stop_trigger;
            let engine = Engine::open_on(MemDisk::new(), "/db", opts).await.unwrap();
            let compaction = hold_compaction(&engine).await;
            *engine.inner.compaction_error.borrow_mut() = Some("No space left".into());
            let value = || vec![b'v'; 300];
            let writes = async {
                for i in 0..6000u32 {
                    if let Err(e) = engine.put(format!("key-{i:05}"), value()).await {
                        return Some(e);
                    }
                }
                None
            };
            // A write that waits for good fails the test rather than hangs it.
            let gave_up = async {
                glommio::timer::sleep(Duration::from_secs(20)).await;
                panic!(
                    "a {wal_sync:?} write still waits after 20 s: {}",
                    engine.debug_state()
                );
            };
            let failed = futures_lite::future::or(writes, gave_up).await;
            let err = failed.expect("every write succeeded");
            assert!(matches!(err, Error::Stalled(_)), "{err}");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("level 0 holds {stop} tables"))
                    && msg.contains("compaction is failing: No space left"),
                "{msg}"
            );
            // Compaction recovers: writes go on.
            *engine.inner.compaction_error.borrow_mut() = None;
            drop(compaction);
            for i in 0..200u32 {
                engine.put(format!("later-{i}"), value()).await.unwrap();
            }
            engine.close().await.unwrap();
        });
    }

    #[test]
    fn an_engine_dropped_unclosed_stops_and_frees_its_state() {
        crate::run_local(|| async {
            let disk = MemDisk::new();
            let engine = Engine::open_on(disk.clone(), "/db", Options::for_tests())
                .await
                .unwrap();
            let mut stamps = Vec::new();
            for i in 0..600u32 {
                let key = format!("key-{:03}", i % 97);
                stamps.push(engine.put(key, vec![b'v'; 300]).await.unwrap());
                if i % 150 == 0 {
                    engine.flush().await.unwrap();
                }
                if i % 250 == 0 {
                    engine.compact().await.unwrap();
                }
            }
            let clone = engine.clone();
            assert!(engine.get(b"key-001").await.unwrap().is_some());
            assert_eq!(engine.scan(b"", None, 1000, None).await.unwrap().len(), 97);
            drop(engine);
            // A clone keeps it running.
            assert!(clone.put(&b"late"[..], &b"write"[..]).await.is_ok());
            assert_eq!(refs_left_after_drop(clone).await, 0);
            // Nothing was flushed on the way out, and nothing was lost.
            let engine = Engine::open_on(disk.clone(), "/db", Options::for_tests())
                .await
                .unwrap();
            assert!(engine.get(b"late").await.unwrap().is_some());
            assert_eq!(engine.scan(b"", None, 1000, None).await.unwrap().len(), 98);
            engine.close().await.unwrap();
        });
    }

    /// An engine whose compactions retired tables, whose files the
    /// reaping task removes later.
    async fn with_retired_tables(disk: &MemDisk) -> Engine<MemDisk> {
        let engine = Engine::open_on(disk.clone(), "/db", Options::for_tests())
            .await
            .unwrap();
        for i in 0..600u32 {
            engine
                .put(format!("key-{:03}", i % 97), vec![b'v'; 300])
                .await
                .unwrap();
        }
        engine.flush().await.unwrap();
        engine.compact().await.unwrap();
        assert!(engine.inner.reaping.get());
        engine
    }

    /// A close that comes while the reaping task removes the last retired
    /// tables' files returns once the removals end. (The task, finding
    /// nothing left to reap, ended without waking the close, which then
    /// waited for good: a server hung on SIGTERM that way after a
    /// sustained write load.)
    #[test]
    fn a_close_during_the_last_file_removals_returns() {
        crate::run_local(|| async {
            let disk = MemDisk::new();
            let engine = with_retired_tables(&disk).await;
            disk.hold_removes(true);
            // The task's second look finds the retired tables due and
            // starts removing their files.
            let sleep = |ms| glommio::timer::sleep(Duration::from_millis(ms));
            sleep(5 * REAP_EVERY.as_millis() as u64).await;
            let close = glommio::spawn_local({
                let engine = engine.clone();
                async move { engine.close().await }
            });
            sleep(10).await;
            disk.hold_removes(false);
            let closed = futures_lite::future::or(
                async {
                    close.await.unwrap();
                    true
                },
                async {
                    sleep(5000).await;
                    false
                },
            )
            .await;
            assert!(closed, "close still waits: {}", engine.debug_state());
        });
    }

    #[test]
    fn once_close_returns_no_task_holds_the_engine() {
        crate::run_local(|| async {
            let engine = with_retired_tables(&MemDisk::new()).await;
            engine.close().await.unwrap();
            let state = Rc::downgrade(&engine.inner);
            drop(engine);
            assert_eq!(state.strong_count(), 0);
        });
    }
}
