//! Ordered iteration over versions from several sources (memtables, runs of
//! tables) merged into one (key asc, ts desc) stream. Used by scans and by
//! compaction. Sources are few (memtables + L0 tables + one run per level),
//! so the merge picks the smallest head by a linear pass instead of a heap.

use crate::cache::BlockCache;
use crate::error::Result;
use crate::io::DiskFile;
use crate::key::{compare, Entry, InternalKey};
use crate::memtable::Memtable;
use crate::sst::block::{Block, BlockCursor};
use crate::sst::{ReadAhead, Table};
use std::cmp::Ordering;
use std::collections::VecDeque;
use std::rc::Rc;

/// Versions fetched from a memtable by the first re-seek after a seek; each
/// later one doubles, up to `MEM_BATCH_MAX` (short scans stay cheap, long
/// ones amortize the re-seek). Each fetched version clones two `Bytes`,
/// and each clone touches a refcount elsewhere in memory: a first batch of
/// 16 made seek + 10 nexts ~15% slower than 4 (measured with 2 is slower
/// again: the re-seeks cost more than the clones saved).
const MEM_BATCH_FIRST: usize = 4;
const MEM_BATCH_MAX: usize = 256;

/// One ordered stream of versions.
pub enum Source<F: DiskFile> {
    /// A memtable, read by re-seeking after the last version returned, so no
    /// borrow is held across an await.
    Mem {
        table: Rc<Memtable>,
        buf: VecDeque<Entry>,
        cursor: InternalKey,
        inclusive: bool,
        exhausted: bool,
        batch: usize,
    },
    /// Tables with disjoint key ranges in key order (one level), or a single
    /// level-0 table. Entries are decoded one at a time from the current
    /// block.
    Run {
        tables: Vec<Rc<Table<F>>>,
        /// The table and block index of the next block to load.
        table: usize,
        block: usize,
        /// The loaded block, where it is in `tables`, and the cursor in it.
        current: Option<(Block, usize, usize, BlockCursor)>,
        head: Option<Entry>,
        /// For a pass over the whole run (compaction): blocks read ahead,
        /// past the cache. `None`: blocks come through the cache.
        ahead: Option<Box<ReadAhead>>,
    },
}

impl<F: DiskFile> Source<F> {
    pub fn mem(table: Rc<Memtable>) -> Self {
        Source::Mem {
            table,
            buf: VecDeque::new(),
            cursor: InternalKey::copied(&[], u64::MAX),
            inclusive: true,
            exhausted: false,
            batch: MEM_BATCH_FIRST,
        }
    }

    pub fn run(tables: Vec<Rc<Table<F>>>) -> Self {
        Self::run_with(tables, None)
    }

    /// A run read from its start to its end in large reads that bypass
    /// the cache ([`Table::block_read_ahead`]): for compaction.
    pub fn run_read_ahead(tables: Vec<Rc<Table<F>>>) -> Self {
        Self::run_with(tables, Some(Box::default()))
    }

    fn run_with(tables: Vec<Rc<Table<F>>>, ahead: Option<Box<ReadAhead>>) -> Self {
        Source::Run {
            tables,
            table: 0,
            block: 0,
            current: None,
            head: None,
            ahead,
        }
    }

    /// The first half of positioning the source at the first version
    /// ≥ (key, ts): a memtable forgets its position; a run
    /// finds and loads the block the key falls in and prefetches the
    /// lines its search will read (see [`MergeIter::seek`]).
    async fn seek_start(&mut self, key: &[u8], ts: u64, cache: &BlockCache) -> Result<()> {
        match self {
            Source::Mem {
                buf,
                cursor,
                inclusive,
                exhausted,
                batch,
                ..
            } => {
                buf.clear();
                *cursor = InternalKey::copied(key, ts);
                *inclusive = true;
                *exhausted = false;
                *batch = MEM_BATCH_FIRST;
            }
            Source::Run {
                tables,
                table,
                block,
                current,
                head,
                ..
            } => {
                *current = None;
                *head = None;
                *table = tables.partition_point(|t| {
                    compare(t.meta.largest.user(), t.meta.largest.ts(), key, ts) == Ordering::Less
                });
                *block = 0;
                if let Some(t) = tables.get(*table) {
                    *block = t.find_block(key, ts);
                    if *block < t.block_count() {
                        let b = t.block(*block, cache).await?;
                        b.prefetch_restarts();
                        *current = Some((b, *table, *block, BlockCursor::default()));
                        *block += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// The second half of a seek: a run searches the loaded block.
    fn seek_finish(&mut self, key: &[u8], ts: u64) -> Result<()> {
        if let Source::Run {
            tables,
            current: Some((b, t, i, cursor)),
            head,
            ..
        } = self
        {
            let (at, first) = b
                .cursor_at(key, ts)
                .map_err(|_| tables[*t].block_error(*i))?;
            *cursor = at;
            *head = first;
        }
        Ok(())
    }

    /// Makes sure the head is loaded if the source has more versions.
    async fn fill(&mut self, cache: &BlockCache) -> Result<()> {
        match self {
            Source::Mem {
                table,
                buf,
                cursor,
                inclusive,
                exhausted,
                batch,
            } => {
                if buf.is_empty() && !*exhausted {
                    table.range_from(cursor, *inclusive, *batch, buf);
                    *batch = (*batch * 2).min(MEM_BATCH_MAX);
                    match buf.back() {
                        Some(last) => {
                            *cursor = InternalKey::of(&last.key, last.ts);
                            *inclusive = false;
                        }
                        None => *exhausted = true,
                    }
                }
            }
            Source::Run {
                tables,
                table,
                block,
                current,
                head,
                ahead,
            } => {
                while head.is_none() {
                    if let Some((b, t, i, cursor)) = current.as_mut() {
                        match b.next(cursor) {
                            Ok(Some(e)) => *head = Some(e),
                            Ok(None) => *current = None,
                            Err(_) => return Err(tables[*t].block_error(*i)),
                        }
                        continue;
                    }
                    let Some(t) = tables.get(*table) else { break };
                    if *block >= t.block_count() {
                        *table += 1;
                        *block = 0;
                        continue;
                    }
                    let b = match ahead {
                        Some(ahead) => t.block_read_ahead(*block, ahead).await?,
                        None => t.block(*block, cache).await?,
                    };
                    *current = Some((b, *table, *block, BlockCursor::default()));
                    *block += 1;
                }
            }
        }
        Ok(())
    }

    fn head(&self) -> Option<&Entry> {
        match self {
            Source::Mem { buf, .. } => buf.front(),
            Source::Run { head, .. } => head.as_ref(),
        }
    }

    fn pop(&mut self) -> Option<Entry> {
        match self {
            Source::Mem { buf, .. } => buf.pop_front(),
            Source::Run { head, .. } => head.take(),
        }
    }
}

/// The merged stream. Exact duplicates (same key and ts, e.g. a version
/// both replayed from the WAL and already flushed) come out once.
pub struct MergeIter<F: DiskFile> {
    sources: Vec<Source<F>>,
    cache: Rc<BlockCache>,
    /// The last version returned, copied into a reused buffer: cloning
    /// the entry's `Bytes` key instead cost an allocation per entry (a
    /// key copied out of a block is Vec-backed, and its first clone
    /// promotes it to a shared buffer).
    last_key: Vec<u8>,
    last_ts: Option<u64>,
}

impl<F: DiskFile> MergeIter<F> {
    pub fn new(sources: Vec<Source<F>>, cache: Rc<BlockCache>) -> Self {
        MergeIter {
            sources,
            cache,
            last_key: Vec::with_capacity(64),
            last_ts: None,
        }
    }

    /// Positions every source at the first version ≥ (key, ts). Each
    /// source's search is a chain of cache misses (B-tree nodes, a block's
    /// restart entries), so they are interleaved instead of run one after
    /// another: every run loads its block and prefetches the lines its
    /// search will read, the memtables search meanwhile, then the runs
    /// search lines that have arrived.
    pub async fn seek(&mut self, key: &[u8], ts: u64) -> Result<()> {
        self.last_ts = None;
        for s in &mut self.sources {
            s.seek_start(key, ts, &self.cache).await?;
        }
        for s in &mut self.sources {
            if let Source::Mem { .. } = s {
                s.fill(&self.cache).await?;
            }
        }
        for s in &mut self.sources {
            s.seek_finish(key, ts)?;
        }
        Ok(())
    }

    pub async fn next(&mut self) -> Result<Option<Entry>> {
        loop {
            for s in &mut self.sources {
                if s.head().is_none() {
                    s.fill(&self.cache).await?;
                }
            }
            let mut best: Option<(usize, &Entry)> = None;
            for (i, s) in self.sources.iter().enumerate() {
                let Some(e) = s.head() else { continue };
                if best.is_none_or(|(_, b)| compare(&e.key, e.ts, &b.key, b.ts) == Ordering::Less) {
                    best = Some((i, e));
                }
            }
            let Some((i, _)) = best else { return Ok(None) };
            let e = self.sources[i].pop().expect("head exists");
            if let Some(ts) = self.last_ts {
                match compare(&self.last_key, ts, &e.key, e.ts) {
                    Ordering::Equal => continue,
                    Ordering::Greater => panic!("merge produced versions out of order"),
                    Ordering::Less => {}
                }
            }
            self.last_key.clear();
            self.last_key.extend_from_slice(&e.key);
            self.last_ts = Some(e.ts);
            return Ok(Some(e));
        }
    }
}
