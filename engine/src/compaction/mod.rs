//! Leveled compaction, run by a background task on the shard's own task
//! queue and paced by a write rate limit, so foreground latency holds while
//! it runs (docs/architecture.md says why it has no low-share queue of its
//! own).
//!
//! Shape: level 0 holds flushed tables (overlapping, newest first); once it
//! has `l0_compaction_trigger` tables they all merge into level 1. Level n
//! ≥ 1 targets `level_base_bytes × 10^(n-1)`; over target, one table
//! (round-robin by key) merges with its overlap in level n+1, or moves down
//! when nothing overlaps.
//!
//! Versions: for each key, every version newer than the retention watermark
//! is kept, plus the newest version at or below it (a read at the watermark
//! needs it), unless that one is a tombstone and no deeper level can hold
//! the key. Older versions are dropped. An expiring put expired by the
//! watermark counts as a tombstone.
//!
//! Expired data: with no level over its target, a table at least half of
//! whose entries are expiring puts, all expired by the watermark, is
//! compacted anyway: rewritten in place when no deeper level overlaps it
//! (its expired entries then go), else merged into the next level (they
//! become tombstones there). Without this, keys that expired in a table
//! no write reaches would hold their space for good.

mod limiter;

use crate::clock::ms_of_ts;
use crate::engine::{Inner, Slices};
use crate::error::{Error, Result};
use crate::io::Disk;
use crate::iter::{MergeIter, Source};
use crate::key::{expires_at_ms, Kind};
use crate::manifest::{Edit, LEVELS};
use crate::sst::{Table, TableBuilder};
use crate::write::wait_until;
use bytes::Bytes;
use limiter::RateLimiter;
use std::rc::Rc;
use std::time::Duration;

/// One unit of compaction work.
struct Job<F: crate::io::DiskFile> {
    level: usize,
    inputs: Vec<Rc<Table<F>>>,
    next: Vec<Rc<Table<F>>>,
    bottommost: bool,
    /// Rewrite `inputs` into their own level (expired data, see the
    /// module's documentation) instead of into the next.
    in_place: bool,
}

/// Whether most of a table's entries are expiring puts, all expired by
/// the watermark's milliseconds.
fn mostly_expired(props: &crate::sst::format::Props, watermark_ms: u64) -> bool {
    props.expiring > 0
        && props.expiring.saturating_mul(2) >= props.entries
        && props.expires_by_ms <= watermark_ms
}

fn level_target_bytes(base: u64, level: usize) -> u64 {
    base.saturating_mul(10u64.saturating_pow(level.saturating_sub(1) as u32))
}

fn pick<D: Disk>(inner: &Inner<D>) -> Option<Job<D::File>> {
    let version = inner.version.borrow().clone();
    let overlapping = |level: usize, lo: &[u8], hi: &[u8]| -> Vec<Rc<Table<D::File>>> {
        version.levels[level]
            .iter()
            .filter(|t| t.meta.overlaps(lo, hi))
            .cloned()
            .collect()
    };
    let deeper_overlap = |below: usize, lo: &[u8], hi: &[u8]| {
        (below + 1..LEVELS).any(|l| version.levels[l].iter().any(|t| t.meta.overlaps(lo, hi)))
    };
    let range = |tables: &[Rc<Table<D::File>>]| -> (Bytes, Bytes) {
        let lo = tables
            .iter()
            .map(|t| t.meta.smallest.user_bytes())
            .min()
            .expect("non-empty");
        let hi = tables
            .iter()
            .map(|t| t.meta.largest.user_bytes())
            .max()
            .expect("non-empty");
        (lo, hi)
    };
    if version.levels[0].len() >= inner.opts.l0_compaction_trigger {
        let inputs = version.levels[0].clone();
        let (lo, hi) = range(&inputs);
        return Some(Job {
            level: 0,
            next: overlapping(1, &lo, &hi),
            bottommost: !deeper_overlap(1, &lo, &hi),
            inputs,
            in_place: false,
        });
    }
    for level in 1..LEVELS - 1 {
        if version.level_bytes(level) <= level_target_bytes(inner.opts.level_base_bytes, level) {
            continue;
        }
        let tables = &version.levels[level];
        let pointer = inner.compaction_pointer.borrow()[level].clone();
        let chosen = pointer
            .and_then(|p| tables.iter().find(|t| t.meta.smallest.user() > p.as_ref()))
            .unwrap_or(&tables[0])
            .clone();
        inner.compaction_pointer.borrow_mut()[level] = Some(chosen.meta.largest.user_bytes());
        let (lo, hi) = (
            chosen.meta.smallest.user_bytes(),
            chosen.meta.largest.user_bytes(),
        );
        return Some(Job {
            level,
            next: overlapping(level + 1, &lo, &hi),
            bottommost: !deeper_overlap(level + 1, &lo, &hi),
            inputs: vec![chosen],
            in_place: false,
        });
    }
    let watermark_ms = ms_of_ts(inner.watermark());
    for level in 1..LEVELS {
        let Some(t) = version.levels[level]
            .iter()
            .find(|t| mostly_expired(&t.meta.props, watermark_ms))
        else {
            continue;
        };
        let (lo, hi) = (t.meta.smallest.user_bytes(), t.meta.largest.user_bytes());
        let deepest = !deeper_overlap(level, &lo, &hi);
        return Some(Job {
            level,
            next: match deepest {
                true => Vec::new(),
                false => overlapping(level + 1, &lo, &hi),
            },
            bottommost: deepest || !deeper_overlap(level + 1, &lo, &hi),
            inputs: vec![t.clone()],
            in_place: deepest,
        });
    }
    None
}

/// Whether some table of level 1 or deeper is [`mostly_expired`].
fn expired_table<D: Disk>(inner: &Inner<D>) -> bool {
    let watermark_ms = ms_of_ts(inner.watermark());
    let version = inner.version.borrow();
    version.levels[1..]
        .iter()
        .flatten()
        .any(|t| mostly_expired(&t.meta.props, watermark_ms))
}

/// The compaction task: waits for level changes and compacts until no level
/// needs it; failures back off and retry.
pub(crate) async fn compaction_loop<D: Disk>(inner: Rc<Inner<D>>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if inner.closed.get() {
            inner.task_exited();
            return;
        }
        match compact_once(&inner).await {
            Ok(true) => backoff = Duration::from_millis(100),
            Ok(false) => {
                let seen = inner.stats.flushes.get();
                let woken = wait_until(&inner.events.compact, || {
                    inner.closed.get() || inner.stats.flushes.get() != seen || pick_needed(&inner)
                });
                // Keys expire with no event: look again now and then.
                let expiry_check = async {
                    loop {
                        glommio::timer::sleep(Duration::from_millis(inner.opts.expiry_check_ms))
                            .await;
                        if expired_table(&inner) {
                            return;
                        }
                    }
                };
                futures_lite::future::or(woken, expiry_check).await;
            }
            Err(Error::Closed) => {}
            Err(e) => {
                tracing::error!(error = %e, "compaction failed; retrying");
                inner
                    .stats
                    .compaction_errors
                    .set(inner.stats.compaction_errors.get() + 1);
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

pub(crate) fn pick_needed<D: Disk>(inner: &Inner<D>) -> bool {
    let version = inner.version.borrow();
    version.levels[0].len() >= inner.opts.l0_compaction_trigger
        || (1..LEVELS - 1)
            .any(|l| version.level_bytes(l) > level_target_bytes(inner.opts.level_base_bytes, l))
}

/// Runs one compaction if one is needed; returns whether it did.
pub(crate) async fn compact_once<D: Disk>(inner: &Rc<Inner<D>>) -> Result<bool> {
    let _permit = inner
        .compaction_lock
        .acquire_permit(1)
        .await
        .map_err(|_| Error::Closed)?;
    let Some(job) = pick(inner) else {
        return Ok(false);
    };
    run(inner, job).await?;
    inner
        .stats
        .compactions
        .set(inner.stats.compactions.get() + 1);
    Ok(true)
}

async fn run<D: Disk>(inner: &Rc<Inner<D>>, job: Job<D::File>) -> Result<()> {
    let out_level = match job.in_place {
        true => job.level,
        false => job.level + 1,
    };
    let mut edit = Edit::default();
    for t in &job.inputs {
        edit.removed.push((job.level, t.id()));
    }
    if job.level > 0 && job.next.is_empty() && !job.in_place {
        // Nothing below overlaps: move the table down without rewriting it.
        let t = &job.inputs[0];
        edit.added.push((out_level, t.meta.clone()));
        tracing::debug!(table = t.id(), from = job.level, "compaction moved table");
        return inner.install(edit, &[], false).await;
    }
    for t in &job.next {
        edit.removed.push((out_level, t.id()));
    }
    // Every table this compaction creates, to remove if it fails before
    // installing them (see `Inner::discard_tables`).
    let mut created = Vec::new();
    let (fresh, written) =
        match write_outputs(inner, &job, out_level, &mut edit, &mut created).await {
            Ok(done) => done,
            // Closing: the outputs so far are orphans; the next open removes them.
            Err(Error::Closed) => return Err(Error::Closed),
            Err(e) => {
                inner.discard_tables(&created).await;
                return Err(e);
            }
        };
    edit.next_table_id = Some(inner.next_table_id.get());
    inner.install(edit, &fresh, false).await?;
    inner
        .stats
        .compaction_bytes_written
        .set(inner.stats.compaction_bytes_written.get() + written);
    inner.retire(job.inputs.iter().chain(&job.next));
    tracing::debug!(
        level = job.level,
        inputs = job.inputs.len() + job.next.len(),
        outputs = fresh.len(),
        "compaction done"
    );
    Ok(())
}

/// Merges the job's inputs into new tables for `out_level`, adds them to
/// `edit` and opens them; returns them and the bytes written. Records
/// each table's id in `created` as soon as it is allocated.
async fn write_outputs<D: Disk>(
    inner: &Rc<Inner<D>>,
    job: &Job<D::File>,
    out_level: usize,
    edit: &mut Edit,
    created: &mut Vec<u64>,
) -> Result<(Vec<Rc<Table<D::File>>>, u64)> {
    let mut sources: Vec<Source<D::File>> = if job.level == 0 {
        job.inputs
            .iter()
            .map(|t| Source::run_read_ahead(vec![t.clone()]))
            .collect()
    } else {
        vec![Source::run_read_ahead(job.inputs.clone())]
    };
    if !job.next.is_empty() {
        sources.push(Source::run_read_ahead(job.next.clone()));
    }
    let mut iter = MergeIter::new(sources, inner.cache.clone());
    let watermark = inner.watermark();
    let mut limiter = RateLimiter::new(inner.opts.compaction_bytes_per_sec);
    let mut outputs = Vec::new();
    let mut builder: Option<TableBuilder<D::File>> = None;
    let mut settled = false;
    let mut written = 0u64;
    // A merged version is well under a microsecond of work.
    let mut slices = Slices::new(64);
    // Versions are borrowed from the merge: copying each key out of its
    // block and cloning it per key were two allocations per version.
    while let Some(e) = iter.next_ref().await? {
        slices.tick(|| inner.background_behind()).await;
        if inner.closed.get() {
            return Err(Error::Closed);
        }
        if e.new_key {
            settled = false;
            if builder
                .as_ref()
                .is_some_and(|b| b.estimated_bytes() >= inner.opts.table_target_bytes)
            {
                let (meta, file) = builder.take().expect("checked").finish().await?;
                written += meta.file_bytes;
                outputs.push((meta, file));
            }
        }
        if settled {
            continue;
        }
        let (mut kind, mut value) = (e.kind, e.value);
        if e.ts <= watermark {
            settled = true;
            // An expiring put expired by the watermark is, to every read
            // still allowed, a delete: it is kept as one, its value gone.
            if kind == Kind::Expiring
                && expires_at_ms(e.ts, value).is_some_and(|at| at <= ms_of_ts(watermark))
            {
                (kind, value) = (Kind::Delete, &[][..]);
            }
            if kind == Kind::Delete && job.bottommost {
                continue;
            }
        }
        if builder.is_none() {
            let id = inner.allocate_table_id();
            created.push(id);
            builder = Some(inner.create_table(id, out_level <= 1).await?);
        }
        let b = builder.as_mut().expect("just created");
        let flushed = b.add(e.key, e.ts, kind, value).await?;
        limiter.consume(flushed as u64).await;
    }
    if let Some(b) = builder {
        if !b.is_empty() {
            let (meta, file) = b.finish().await?;
            written += meta.file_bytes;
            outputs.push((meta, file));
        }
    }
    inner.disk.sync_dir(&inner.sst_dir).await?;
    let mut fresh = Vec::new();
    for (meta, file) in outputs {
        edit.added.push((out_level, meta.clone()));
        fresh.push(Rc::new(Table::open(file, meta).await?));
    }
    Ok((fresh, written))
}
