//! The write path: writers enqueue batches; one writer task per engine
//! drains the queue as a group, writes it to the WAL as one chunk (durable
//! when written in `always` mode: the WAL is write-through), syncs per the
//! sync mode otherwise, applies it to the memtable and wakes every writer of
//! the group (group commit). It also swaps full memtables out for flushing.
//!
//! Sketch: at ~150 µs per durable write a shard does ~6k groups/s, so
//! 300k durable writes/s needs ≥ 50 writers per group; the group is bounded
//! by `wal_group_bytes_max` (2 MiB ≈ 14k 100-byte writes).

use crate::engine::{Inner, STALL_CHECK};
use crate::error::{Error, Result};
use crate::io::Disk;
use crate::memtable::Memtable;
use crate::options::SyncMode;
use crate::wal::{Record, Wal};
use event_listener::Event;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Writers that share one WAL write. Completed exactly once.
#[derive(Default)]
pub(crate) struct Group {
    error: RefCell<Option<Error>>,
    /// Set ("cancelled") when the group completes: a one-shot flag whose
    /// waiters are a plain list of wakers on this executor. An
    /// `event_listener::Event` took a lock three times per waiter (listen,
    /// poll, drop) and allocated each listener: waiting and waking were
    /// 7.1% of a shard's CPU under 16-deep durable writes (a group wakes
    /// ~400 writers), 3.9% with this (`perf`).
    done: glommio::sync::CancellationToken,
}

impl Group {
    fn complete(&self, error: Option<Error>) {
        assert!(!self.done.is_cancelled(), "group completed twice");
        *self.error.borrow_mut() = error;
        self.done.cancel();
    }

    pub(crate) async fn wait(&self) -> Result<()> {
        self.done.cancelled().await;
        self.outcome()
    }

    /// Whether the group has completed; until it has, `cx` is woken when
    /// it does (a waker per call: call once per task).
    fn poll_done(&self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.done.cancelled()).poll(cx)
    }

    fn outcome(&self) -> Result<()> {
        match &*self.error.borrow() {
            None => Ok(()),
            Some(e) => Err(e.duplicate()),
        }
    }
}

/// A durable write queued for the writer task ([`Engine::start_write`]):
/// done once its group is written and synced. A server keeps these in
/// order and watches the oldest, instead of a future per write: the
/// futures, their boxes and their wake-ups were ~10% of a shard's CPU
/// under 16-deep durable writes.
///
/// [`Engine::start_write`]: crate::Engine::start_write
pub struct QueuedWrite {
    ts: u64,
    group: Rc<Group>,
    /// A waker waits on the group.
    registered: bool,
}

impl QueuedWrite {
    pub(crate) fn new(ts: u64, group: Rc<Group>) -> QueuedWrite {
        QueuedWrite {
            ts,
            group,
            registered: false,
        }
    }

    /// The write's outcome once its group has completed: its timestamp, or
    /// the error that failed the group. Until then `cx` is woken when the
    /// group completes. Registers one waker per write: poll a queued write
    /// from one task only.
    pub fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<Result<u64>> {
        if !self.group.done.is_cancelled() {
            if !self.registered {
                self.registered = true;
                let _ = self.group.poll_done(cx);
            }
            return Poll::Pending;
        }
        Poll::Ready(self.group.outcome().map(|()| self.ts))
    }
}

/// Waits on `event` until `ready()` holds.
pub(crate) async fn wait_until(event: &Event, ready: impl Fn() -> bool) {
    loop {
        if ready() {
            return;
        }
        let listener = event.listen();
        if ready() {
            return;
        }
        listener.await;
    }
}

/// Batches waiting for the writer task.
///
/// In `none` mode a record is encoded when queued (`encoded`, stamped for
/// segment `encoded_segment`) and its writes move into the memtable: no
/// copy of the entries outlives the call. In the other modes the records
/// wait whole in `batches`, and their writes move into the memtable once
/// durable; prepares, which put nothing into the memtable, are encoded
/// when queued in every mode. A group writes `encoded` before `batches`:
/// replay does not depend on the order of records within a group.
///
/// Invariant: `bytes` is the WAL size of `batches` and `encoded` together,
/// at most `wal_group_bytes_max` unless a single batch is alone. Plain
/// batches are in timestamp order; transaction records carry their own
/// timestamps.
#[derive(Default)]
pub(crate) struct Queue {
    pub batches: Vec<Record>,
    pub encoded: Vec<u8>,
    pub encoded_count: usize,
    pub encoded_segment: u64,
    pub bytes: usize,
    pub group: Rc<Group>,
    /// Plain writes in `batches` that readers wait for (`Inner::inflight`),
    /// the newest of them.
    pub tracked: usize,
}

impl Queue {
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.encoded_count == 0
    }

    pub fn len(&self) -> usize {
        self.batches.len() + self.encoded_count
    }
}

/// The first wait before retrying a failed WAL roll; each failure in a row
/// doubles it, up to [`ROLL_RETRY_MAX`].
const ROLL_RETRY_FIRST: Duration = Duration::from_millis(100);
const ROLL_RETRY_MAX: Duration = Duration::from_secs(5);

/// The writer task. Runs until the engine closes and the queue is empty.
pub(crate) async fn writer_loop<D: Disk>(inner: Rc<Inner<D>>, mut wal: Wal<D>) {
    let mut chunk = Vec::with_capacity(inner.opts.wal_group_bytes_max + 4096);
    // The queue's vector goes back to it empty after each group: grown from
    // nothing each time, it reallocated into fresh pages, and zeroing them
    // was ~9% of a `none`-mode fill.
    let mut spare: Vec<Record> = Vec::new();
    let mut spare_encoded: Vec<u8> = Vec::new();
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    let mut roll_backoff = ROLL_RETRY_FIRST;
    loop {
        inner.writer_phase.set("swap");
        match maybe_swap_memtable(&inner, &mut wal).await {
            Ok(()) => roll_backoff = ROLL_RETRY_FIRST,
            Err(e) => {
                let why = e.to_string();
                // The memtable cannot be flushed: a flush waiting on this
                // swap fails with the error.
                inner.flush_failed(format!("rolling the WAL: {why}"));
                fail_queue(&inner, e);
                if inner.closed.get() {
                    // Closing: the memtable stays unflushed, in the WAL,
                    // which the next open replays. Retrying here held the
                    // close, and a server's stop, forever (a data
                    // directory removed under a stopping server).
                    tracing::error!(
                        error = %why,
                        "WAL roll failed while closing; the memtable is left to WAL replay"
                    );
                    inner.swap_requested.set(false);
                } else {
                    tracing::error!(
                        error = %why,
                        retry_ms = roll_backoff.as_millis() as u64,
                        "WAL roll failed; retrying"
                    );
                    glommio::timer::sleep(roll_backoff).await;
                    roll_backoff = (roll_backoff * 2).min(ROLL_RETRY_MAX);
                    continue;
                }
            }
        }
        if inner.queue.borrow().is_empty() {
            if inner.closed.get() {
                if unsynced {
                    let _ = wal.sync().await;
                }
                inner.writer_done.set(true);
                inner.events.flushed.notify(usize::MAX);
                return;
            }
            inner.writer_phase.set("idle");
            idle(&inner, unsynced, last_sync).await;
            if unsynced && due(&inner, last_sync) && wal.sync().await.is_ok() {
                unsynced = false;
                last_sync = Instant::now();
            }
            continue;
        }
        // Let every task already runnable queue its record first (requests
        // woken by the previous group's completion, transactions woken by
        // mesh replies): they join this group instead of waiting a whole
        // write for the next one. Two shards, `always`, 256 requests in
        // flight: +3-4% single-key writes/s, +1-3% transactions/s.
        futures_lite::future::yield_now().await;
        let (mut batches, mut encoded, group, tracked) = {
            let mut q = inner.queue.borrow_mut();
            q.bytes = 0;
            let encoded = Encoded {
                bytes: std::mem::replace(&mut q.encoded, std::mem::take(&mut spare_encoded)),
                count: std::mem::take(&mut q.encoded_count),
                segment: q.encoded_segment,
            };
            (
                std::mem::replace(&mut q.batches, std::mem::take(&mut spare)),
                encoded,
                std::mem::take(&mut q.group),
                std::mem::take(&mut q.tracked),
            )
        };
        inner.events.space.notify(usize::MAX);
        inner.writer_phase.set("write");
        let mut result = write_group(&inner, &mut wal, &batches, &mut encoded, &mut chunk).await;
        inner.wal_segment.set(wal.segment_id());
        inner.writer_phase.set("sync");
        if result.is_ok() {
            // A write-through WAL (`always`) is durable once written.
            unsynced = !wal.write_through();
            if unsynced && due(&inner, last_sync) {
                result = wal.sync().await;
                if result.is_ok() {
                    unsynced = false;
                    last_sync = Instant::now();
                    inner.stats.wal_syncs.set(inner.stats.wal_syncs.get() + 1);
                }
            }
        }
        inner.writer_phase.set("complete");
        match result {
            Ok(()) => {
                // `none` applied these when queued; commits of prepared
                // transactions are applied when decided.
                if inner.opts.wal_sync != SyncMode::None {
                    let mem = inner.mem.borrow().clone();
                    mem.insert_all(batches.drain(..).flat_map(Record::into_applied_entries));
                }
                group.complete(None);
                inner.wal_error.take();
            }
            Err(e) => {
                tracing::error!(error = %e, "WAL write failed; the group is not acknowledged");
                inner.stats.wal_errors.set(inner.stats.wal_errors.get() + 1);
                *inner.wal_error.borrow_mut() = Some(e.to_string());
                group.complete(Some(e));
            }
        }
        // Applied or failed: readers need not wait for them any more.
        inner.applied_oldest(tracked);
        batches.clear();
        spare = batches;
        encoded.bytes.clear();
        spare_encoded = encoded.bytes;
    }
}

/// Records encoded when queued (see [`Queue`]).
struct Encoded {
    bytes: Vec<u8>,
    count: usize,
    segment: u64,
}

fn due<D: Disk>(inner: &Inner<D>, last_sync: Instant) -> bool {
    match inner.opts.wal_sync {
        SyncMode::Always => true,
        SyncMode::Interval(every) => last_sync.elapsed() >= every,
        SyncMode::None => false,
    }
}

/// Waits for work, or for the next interval sync when data is unsynced.
async fn idle<D: Disk>(inner: &Inner<D>, unsynced: bool, last_sync: Instant) {
    let has_work =
        || !inner.queue.borrow().is_empty() || inner.closed.get() || inner.swap_requested.get();
    match inner.opts.wal_sync {
        SyncMode::Interval(every) if unsynced => {
            let left = every.saturating_sub(last_sync.elapsed());
            futures_lite::future::or(wait_until(&inner.events.work, has_work), async {
                glommio::timer::sleep(left).await;
            })
            .await
        }
        _ => wait_until(&inner.events.work, has_work).await,
    }
}

async fn write_group<D: Disk>(
    inner: &Inner<D>,
    wal: &mut Wal<D>,
    batches: &[Record],
    encoded: &mut Encoded,
    chunk: &mut Vec<u8>,
) -> Result<()> {
    let needed: usize = batches.iter().map(Record::logged_len).sum::<usize>() + encoded.bytes.len();
    if needed > wal.room() {
        wal.roll().await?;
    }
    assert!(needed <= wal.room(), "group larger than a segment");
    chunk.clear();
    if encoded.count > 0 {
        if encoded.segment != wal.segment_id() {
            crate::wal::record::restamp(&mut encoded.bytes, wal.segment_id());
        }
        // The queued bytes become the chunk; the chunk's buffer goes back
        // to the queue.
        std::mem::swap(chunk, &mut encoded.bytes);
    }
    for rec in batches {
        rec.encode(chunk, wal.segment_id());
    }
    inner
        .stats
        .wal_bytes
        .set(inner.stats.wal_bytes.get() + chunk.len() as u64);
    inner.stats.wal_groups.set(inner.stats.wal_groups.get() + 1);
    inner
        .stats
        .wal_batches
        .set(inner.stats.wal_batches.get() + (batches.len() + encoded.count) as u64);
    wal.write_chunk(chunk).await
}

/// Fails every queued writer (used while writes cannot proceed).
fn fail_queue<D: Disk>(inner: &Inner<D>, error: Error) {
    let (group, tracked) = {
        let mut q = inner.queue.borrow_mut();
        if q.is_empty() {
            return;
        }
        q.batches.clear();
        q.encoded.clear();
        q.encoded_count = 0;
        q.bytes = 0;
        (std::mem::take(&mut q.group), std::mem::take(&mut q.tracked))
    };
    inner.events.space.notify(usize::MAX);
    group.complete(Some(error));
    inner.applied_oldest(tracked);
}

/// Moves a full (or explicitly flushed) memtable to the flush queue, rolling
/// the WAL so the new memtable's records start in a new segment. Stalls
/// while too many memtables await flushing; fails queued writers instead if
/// flushing itself is failing.
async fn maybe_swap_memtable<D: Disk>(inner: &Rc<Inner<D>>, wal: &mut Wal<D>) -> Result<()> {
    loop {
        let mem_bytes = inner.mem.borrow().bytes();
        let wanted = mem_bytes >= inner.opts.memtable_bytes_max
            || (inner.swap_requested.get() && mem_bytes > 0);
        if !wanted {
            inner.swap_requested.set(false);
            return Ok(());
        }
        if inner.imms.borrow().len() < inner.opts.immutable_memtables_max {
            break;
        }
        inner
            .stats
            .write_stalls
            .set(inner.stats.write_stalls.get() + 1);
        if let Some(why) = inner.stall_error() {
            fail_queue(inner, Error::Stalled(why));
        }
        let imms_max = inner.opts.immutable_memtables_max;
        futures_lite::future::or(
            wait_until(&inner.events.flushed, || {
                inner.imms.borrow().len() < imms_max
            }),
            glommio::timer::sleep(STALL_CHECK),
        )
        .await;
        if inner.closed.get() && inner.imms.borrow().len() >= imms_max {
            return Ok(());
        }
    }
    let boundary = wal.roll().await?;
    // Records of undecided transactions in the segments this memtable's
    // flush will recycle must outlive them: log them again past the boundary.
    let relog = inner.undecided_records();
    if !relog.is_empty() {
        let mut chunk = Vec::new();
        let mut none = Encoded {
            bytes: Vec::new(),
            count: 0,
            segment: wal.segment_id(),
        };
        write_group(inner, wal, &relog, &mut none, &mut chunk).await?;
        wal.sync().await?;
    }
    let fresh = Memtable::for_bytes(inner.opts.memtable_bytes_max);
    let full = std::mem::replace(&mut *inner.mem.borrow_mut(), Rc::new(fresh));
    inner.imms.borrow_mut().push_back((full, boundary));
    inner.swap_requested.set(false);
    inner.events.flush.notify(usize::MAX);
    Ok(())
}
