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
//! Space at rest: once the tables are at rest (their newest version past
//! the retention window and `rest_after_ms` old: no flush for that long),
//! a level above
//! the last holding more than its share of the last level's bytes (a
//! tenth per level between them, RocksDB's dynamic level sizing) is
//! compacted down, one table at a time (level 0 whole), dropping the
//! versions it overwrote and the ones its tombstones deleted. The static targets alone let a level 1 of the newest
//! versions sit over a level 2 of the versions they replaced: after five
//! overwrites of 1M keys (~140 MB live) the tables held 487 MB at rest.
//! Under writes the tables always hold a version younger than that, so
//! this never adds to the write load (`rest_after_ms` keeps it so with a
//! retention window of zero).
//!
//! Garbage in a table: with no level over its target, a table is
//! compacted anyway when at least half of its entries are expiring puts,
//! all expired by the watermark, or, with the tables at rest, at least a
//! quarter are versions a newer one in the same table overwrote
//! (compactions inside the retention window keep them). It is rewritten in place when no deeper level overlaps it (the
//! garbage then goes), else merged into the next level (expired puts
//! become tombstones there). Without this, keys that expired, or versions
//! overwritten, in a table no write reaches would hold their space for
//! good.

mod limiter;

use crate::clock::{ms_of_ts, wall_ms};
use crate::engine::{Inner, Slices};
use crate::error::{Error, Result};
use crate::io::Disk;
use crate::iter::{MergeIter, Source};
use crate::key::{expires_at_ms, Kind};
use crate::manifest::{Edit, LEVELS};
use crate::options::Options;
use crate::sst::{Table, TableBuilder};
use crate::version::Version;
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

/// Whether a quarter or more of a table's entries are versions a newer
/// one in the same table overwrote (with the tables at rest, every version
/// in it is at or below the watermark, so a rewrite drops them all).
fn mostly_overwritten(props: &crate::sst::format::Props) -> bool {
    props.overwritten > 0 && props.overwritten.saturating_mul(4) >= props.entries
}

/// Whether a table holds enough garbage that compaction rewrites it with
/// nothing else to do: expired puts, or overwritten versions once the
/// tables are at rest.
fn garbage(props: &crate::sst::format::Props, watermark: u64, at_rest: bool) -> bool {
    mostly_expired(props, ms_of_ts(watermark)) || (at_rest && mostly_overwritten(props))
}

/// The wall-clock ms from which the tables count as at rest: their newest
/// version past the retention window and `rest_after_ms` old.
fn rest_from_ms<D: Disk>(inner: &Inner<D>, version: &Version<D::File>) -> u64 {
    let quiet = inner.opts.retention_ms.max(inner.opts.rest_after_ms);
    ms_of_ts(version.max_ts).saturating_add(quiet + 1)
}

/// Whether the tables are at rest (see the module's documentation).
fn at_rest<D: Disk>(inner: &Inner<D>, version: &Version<D::File>) -> bool {
    wall_ms() >= rest_from_ms(inner, version) && version.max_ts <= inner.watermark()
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
    // Level 0 whole into level 1; one table of a deeper level (round-robin
    // by key) into the next.
    let level_job = |level: usize| {
        if level == 0 {
            let inputs = version.levels[0].clone();
            let (lo, hi) = range(&inputs);
            return Job {
                level: 0,
                next: overlapping(1, &lo, &hi),
                bottommost: !deeper_overlap(1, &lo, &hi),
                inputs,
                in_place: false,
            };
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
        Job {
            level,
            next: overlapping(level + 1, &lo, &hi),
            bottommost: !deeper_overlap(level + 1, &lo, &hi),
            inputs: vec![chosen],
            in_place: false,
        }
    };
    if let Some(level) = most_needed(inner, &version) {
        return Some(level_job(level));
    }
    if let Some(level) = space_needed(inner, &version) {
        tracing::debug!(
            level,
            bytes = version.level_bytes(level),
            "compaction for space: the level holds more than its share of the last"
        );
        return Some(level_job(level));
    }
    let (watermark, rest) = (inner.watermark(), at_rest(inner, &version));
    for level in 1..LEVELS {
        let Some(t) = version.levels[level]
            .iter()
            .find(|t| garbage(&t.meta.props, watermark, rest))
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

/// The level to compact down for space, if the tables are at rest (every
/// version in them at or below the watermark: see the module's
/// documentation).
fn space_needed<D: Disk>(inner: &Inner<D>, version: &Version<D::File>) -> Option<usize> {
    if !at_rest(inner, version) {
        return None;
    }
    let bytes: [u64; LEVELS] = std::array::from_fn(|l| version.level_bytes(l));
    space_overdue(&bytes)
}

/// The level above the last non-empty one most over its share of it: a
/// tenth of the last level's bytes per level between them (level 0
/// included: its tables may be all that is left of the newest writes, or
/// the tombstones of deletes). None when no level is over (or only one
/// level holds tables).
fn space_overdue(level_bytes: &[u64]) -> Option<usize> {
    let last = (1..level_bytes.len()).rev().find(|&l| level_bytes[l] > 0)?;
    let over = (0..last).filter_map(|l| {
        let share = level_bytes[last] / 10u64.pow((last - l) as u32);
        let ratio = level_bytes[l] as f64 / share.max(1) as f64;
        (ratio > 1.0).then_some((l, ratio))
    });
    highest(over)
}

/// The level of the highest score; the first (shallowest) on a tie.
fn highest(scores: impl Iterator<Item = (usize, f64)>) -> Option<usize> {
    scores
        .fold(None, |best: Option<(usize, f64)>, (l, score)| match best {
            Some((_, top)) if top >= score => best,
            _ => Some((l, score)),
        })
        .map(|(l, _)| l)
}

/// Whether some table of level 1 or deeper holds [`garbage`].
fn garbage_table<D: Disk>(inner: &Inner<D>) -> bool {
    let watermark = inner.watermark();
    let version = inner.version.borrow();
    let rest = at_rest(inner, &version);
    version.levels[1..]
        .iter()
        .flatten()
        .any(|t| garbage(&t.meta.props, watermark, rest))
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
            Ok(true) => {
                backoff = Duration::from_millis(100);
                *inner.compaction_error.borrow_mut() = None;
            }
            Ok(false) => {
                let seen = inner.stats.flushes.get();
                let woken = wait_until(&inner.events.compact, || {
                    inner.closed.get() || inner.stats.flushes.get() != seen || pick_needed(&inner)
                });
                // Keys expire, and versions fall past the watermark, with
                // no event: look again now and then, and when the tables'
                // newest version leaves the retention window (they are
                // then at rest).
                let expiry_check = async {
                    loop {
                        let rest_ms = rest_from_ms(&inner, &inner.version.borrow());
                        let until_rest = rest_ms.saturating_sub(wall_ms());
                        let wait = match until_rest {
                            0 => inner.opts.expiry_check_ms,
                            ms => ms.min(inner.opts.expiry_check_ms),
                        };
                        glommio::timer::sleep(Duration::from_millis(wait)).await;
                        if garbage_table(&inner) || pick_needed(&inner) {
                            return;
                        }
                    }
                };
                futures_lite::future::or(woken, expiry_check).await;
            }
            Err(Error::Closed) => {}
            Err(e) => {
                tracing::error!(error = %e, "compaction failed; retrying");
                *inner.compaction_error.borrow_mut() = Some(e.to_string());
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
    most_needed(inner, &version).is_some() || space_needed(inner, &version).is_some()
}

/// The level whose compaction is most overdue, if any is: level 0 by its
/// tables over `l0_compaction_trigger`, deeper levels by their bytes over
/// target; the first level on a tie. Level 0 does not simply come first:
/// under writes that keep it at its trigger, level 1 then never moved
/// down, and every level-0 compaction rewrote all of a level 1 that grew
/// without bound (15 tables of 64 MiB after 40 s of 16-deep SETs).
fn most_needed<D: Disk>(inner: &Inner<D>, version: &Version<D::File>) -> Option<usize> {
    let bytes: [u64; LEVELS] = std::array::from_fn(|l| version.level_bytes(l));
    most_overdue(&inner.opts, version.levels[0].len(), &bytes)
}

/// [`most_needed`] from level 0's table count and each level's bytes.
fn most_overdue(opts: &Options, l0_tables: usize, level_bytes: &[u64]) -> Option<usize> {
    let due = |over: bool, score: f64| if over { score } else { 0.0 };
    let trigger = opts.l0_compaction_trigger;
    let l0 = due(l0_tables >= trigger, l0_tables as f64 / trigger as f64);
    let deeper = (1..LEVELS - 1).map(|l| {
        let target = level_target_bytes(opts.level_base_bytes, l);
        let bytes = level_bytes[l];
        (l, due(bytes > target, bytes as f64 / target as f64))
    });
    highest(
        std::iter::once((0, l0))
            .chain(deeper)
            .filter(|&(_, score)| score > 0.0),
    )
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
    // A flush may be waiting for level 0 to shrink.
    inner.events.flush.notify(usize::MAX);
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
    let window = inner.opts.compaction_read_ahead_bytes;
    let mut sources: Vec<Source<D::File>> = if job.level == 0 {
        job.inputs
            .iter()
            .map(|t| Source::run_read_ahead(vec![t.clone()], window))
            .collect()
    } else {
        vec![Source::run_read_ahead(job.inputs.clone(), window)]
    };
    if !job.next.is_empty() {
        sources.push(Source::run_read_ahead(job.next.clone(), window));
    }
    let mut iter = MergeIter::new(sources, inner.cache.clone());
    let watermark = inner.watermark();
    let mut limiter = RateLimiter::new(inner.opts.compaction_bytes_per_sec);
    let mut outputs = Vec::new();
    let mut builder: Option<TableBuilder<D::File>> = None;
    let mut settled = false;
    let mut written = 0u64;
    // A merged version is well under a microsecond of work.
    let mut slices = Slices::new(64, || inner.background_slice());
    // Versions are borrowed from the merge: copying each key out of its
    // block and cloning it per key were two allocations per version.
    while let Some(e) = slices.wait(iter.next_ref()).await? {
        slices.tick().await;
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
        let flushed = slices.wait(b.add(e.key, e.ts, kind, value)).await?;
        slices.wait(limiter.consume(flushed as u64)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_most_over_its_bound_is_compacted_first() {
        let opts = Options {
            l0_compaction_trigger: 4,
            level_base_bytes: 100,
            ..Options::default()
        };
        let bytes = |l1: u64, l2: u64| [0, l1, l2, 0, 0, 0, 0];
        // Nothing due: level 0 under its trigger, levels at (not over) target.
        assert_eq!(most_overdue(&opts, 3, &bytes(100, 1000)), None);
        assert_eq!(most_overdue(&opts, 4, &bytes(100, 1000)), Some(0));
        assert_eq!(most_overdue(&opts, 0, &bytes(101, 1000)), Some(1));
        assert_eq!(most_overdue(&opts, 0, &bytes(100, 1001)), Some(2));
        // Level 0 at twice its trigger against level 1 at 2.5x its target:
        // level 1 goes first, which level 0 coming first always never let it.
        assert_eq!(most_overdue(&opts, 8, &bytes(250, 0)), Some(1));
        assert_eq!(most_overdue(&opts, 12, &bytes(250, 0)), Some(0));
        // A tie goes to the shallower level.
        assert_eq!(most_overdue(&opts, 8, &bytes(200, 2000)), Some(0));
        assert_eq!(most_overdue(&opts, 0, &bytes(300, 3000)), Some(1));
        assert_eq!(most_overdue(&opts, 0, &bytes(300, 3500)), Some(2));
    }

    #[test]
    fn at_rest_a_level_over_its_share_of_the_last_level_goes_down() {
        // Level 1 of the newest versions over a level 2 of what they
        // replaced (the shape five overwrites left): level 1 goes down.
        assert_eq!(space_overdue(&[0, 238, 272, 0, 0, 0, 0]), Some(1));
        // At its share (a tenth), or one level alone: nothing.
        assert_eq!(space_overdue(&[0, 27, 272, 0, 0, 0, 0]), None);
        assert_eq!(space_overdue(&[5, 238, 0, 0, 0, 0, 0]), None);
        assert_eq!(space_overdue(&[0, 0, 0, 0, 0, 0, 0]), None);
        // A hundredth two levels up; the level most over its share first.
        assert_eq!(space_overdue(&[0, 11, 100, 1000, 0, 0, 0]), Some(1));
        assert_eq!(space_overdue(&[0, 11, 300, 1000, 0, 0, 0]), Some(2));
        assert_eq!(space_overdue(&[0, 10, 100, 1000, 0, 0, 0]), None);
        // Level 0 (the tombstones of deleting every key, say) over a
        // tenth of level 1; a table of level 0 alone stays.
        assert_eq!(space_overdue(&[20, 129, 0, 0, 0, 0, 0]), Some(0));
        assert_eq!(space_overdue(&[12, 129, 0, 0, 0, 0, 0]), None);
        assert_eq!(space_overdue(&[20, 0, 0, 0, 0, 0, 0]), None);
    }
}
