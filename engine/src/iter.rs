//! Ordered iteration over versions from several sources (memtables, runs of
//! tables) merged into one (key asc, ts desc) stream. Used by scans and by
//! compaction. The next version is picked by a tournament tree of losers
//! over the sources' heads (log2 of the sources' count comparisons per
//! version): a level-0 compaction under sustained writes merges 20-36
//! tables, and picking the smallest head by a linear pass (each source's
//! head compared, each asked to fill) made its merge 4.3x slower per
//! version with 32 sources than with 4 (`cargo bench -p tessera-engine
//! --bench merge`).

use crate::cache::BlockCache;
use crate::error::Result;
use crate::io::DiskFile;
use crate::key::{compare, Entry, InternalKey, Kind};
use crate::memtable::Memtable;
use crate::sst::block::{Block, BlockCursor, Slot};
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
        /// The loaded block and where it is in `tables` (table, block).
        current: Option<(Block, usize, usize)>,
        /// The position in `current`; its key buffer serves every block.
        cursor: BlockCursor,
        /// The next version, decoded in place: its key is `cursor.key()`
        /// and its value in `current`'s block. Some only with `current`.
        head: Option<Slot>,
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

    /// A run read from its start to its end in reads of up to
    /// `window_bytes` that bypass the cache ([`Table::block_read_ahead`]):
    /// for compaction.
    pub fn run_read_ahead(tables: Vec<Rc<Table<F>>>, window_bytes: usize) -> Self {
        Self::run_with(tables, Some(Box::new(ReadAhead::new(window_bytes))))
    }

    fn run_with(tables: Vec<Rc<Table<F>>>, ahead: Option<Box<ReadAhead>>) -> Self {
        Source::Run {
            tables,
            table: 0,
            block: 0,
            current: None,
            cursor: BlockCursor::default(),
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
                        *current = Some((b, *table, *block));
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
            current: Some((b, t, i)),
            cursor,
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
        while !self.fill_now()? {
            self.load_block(cache).await?;
        }
        Ok(())
    }

    /// Loads the head without waiting where it can: from a memtable, or
    /// from a run's current block. True once the head is loaded or the
    /// source is done; false if a run needs its next block
    /// ([`Source::load_block`]). Most versions a merge takes come this
    /// way, without a future polled per version.
    #[inline]
    fn fill_now(&mut self) -> Result<bool> {
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
                Ok(true)
            }
            Source::Run {
                tables,
                table,
                current,
                cursor,
                head,
                ..
            } => {
                if head.is_some() {
                    return Ok(true);
                }
                if let Some((b, t, i)) = current.as_ref() {
                    match b.step(cursor) {
                        Ok(Some(slot)) => {
                            *head = Some(slot);
                            return Ok(true);
                        }
                        Ok(None) => *current = None,
                        Err(_) => return Err(tables[*t].block_error(*i)),
                    }
                }
                Ok(*table >= tables.len())
            }
        }
    }

    /// Loads a run's next block (its current one is done), moving to the
    /// next table at the end of one.
    async fn load_block(&mut self, cache: &BlockCache) -> Result<()> {
        let Source::Run {
            tables,
            table,
            block,
            current,
            cursor,
            ahead,
            ..
        } = self
        else {
            return Ok(());
        };
        while let Some(t) = tables.get(*table) {
            if *block >= t.block_count() {
                *table += 1;
                *block = 0;
                continue;
            }
            let b = match ahead {
                Some(ahead) => Table::block_read_ahead(t, *block, ahead).await?,
                None => t.block(*block, cache).await?,
            };
            *current = Some((b, *table, *block));
            cursor.rewind();
            *block += 1;
            return Ok(());
        }
        Ok(())
    }

    /// The next version's key and timestamp.
    #[inline]
    fn head_key(&self) -> Option<(&[u8], u64)> {
        match self {
            Source::Mem { buf, .. } => buf.front().map(|e| (&e.key[..], e.ts)),
            Source::Run { cursor, head, .. } => head.as_ref().map(|h| (cursor.key(), h.ts)),
        }
    }

    /// The next version's kind and value (the source has a head).
    fn head_value(&self) -> (Kind, &[u8]) {
        match self {
            Source::Mem { buf, .. } => {
                let e = buf.front().expect("a head");
                (e.kind, &e.value[..])
            }
            Source::Run { current, head, .. } => {
                let (b, _, _) = current.as_ref().expect("a head's block");
                let slot = head.as_ref().expect("a head");
                (slot.kind, b.value(slot))
            }
        }
    }

    /// Takes the head as an owned entry.
    fn pop(&mut self) -> Option<Entry> {
        match self {
            Source::Mem { buf, .. } => buf.pop_front(),
            Source::Run {
                current,
                cursor,
                head,
                ..
            } => {
                let slot = head.take()?;
                let (b, _, _) = current.as_ref().expect("a head's block");
                Some(b.entry(cursor, &slot))
            }
        }
    }

    /// Drops the head.
    fn skip(&mut self) {
        match self {
            Source::Mem { buf, .. } => {
                buf.pop_front();
            }
            Source::Run { head, .. } => *head = None,
        }
    }
}

/// A version [`MergeIter::next_ref`] returned, borrowed from the merge
/// until its next call.
#[derive(Debug)]
pub struct VersionRef<'a> {
    pub key: &'a [u8],
    pub ts: u64,
    pub kind: Kind,
    pub value: &'a [u8],
    /// Whether the key differs from the previous version's (the first
    /// version of each key, the newest, comes first).
    pub new_key: bool,
}

/// The merged stream. Exact duplicates (same key and ts, e.g. a version
/// both replayed from the WAL and already flushed) come out once.
pub struct MergeIter<F: DiskFile> {
    sources: Vec<Source<F>>,
    cache: Rc<BlockCache>,
    /// A tournament tree of losers over the sources' heads: the sources
    /// are its leaves (source `i` is node `sources.len() + i`), each inner
    /// node `1..sources.len()` holds the source that lost the match there,
    /// and `tree[0]` the overall winner, whose head is the next version. A
    /// source without a head loses every match.
    tree: Vec<usize>,
    /// Whether `tree` must be built again before the next pick: on a new
    /// merge and after a seek, every source fills and the tree is built.
    stale: bool,
    /// Whether the winner's head was returned (and is taken or lent):
    /// before the next pick, the source fills and replays its matches up
    /// the tree.
    top_taken: bool,
    /// The last version returned, copied into a reused buffer: cloning
    /// the entry's `Bytes` key instead cost an allocation per entry (a
    /// key copied out of a block is Vec-backed, and its first clone
    /// promotes it to a shared buffer).
    last_key: Vec<u8>,
    last_ts: Option<u64>,
    /// The source whose head `next_ref` lent out: dropped on the next call.
    lent: Option<usize>,
}

impl<F: DiskFile> MergeIter<F> {
    pub fn new(sources: Vec<Source<F>>, cache: Rc<BlockCache>) -> Self {
        MergeIter {
            sources,
            cache,
            tree: Vec::new(),
            stale: true,
            top_taken: false,
            last_key: Vec::with_capacity(64),
            last_ts: None,
            lent: None,
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
        self.lent = None;
        self.stale = true;
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

    /// The next version, owned.
    pub async fn next(&mut self) -> Result<Option<Entry>> {
        let Some((i, _)) = self.advance().await? else {
            return Ok(None);
        };
        Ok(self.sources[i].pop())
    }

    /// The next version, borrowed: no key is copied and no refcount
    /// touched, where [`MergeIter::next`] allocates each version's key
    /// (for compaction, which copies each version into a block anyway).
    pub async fn next_ref(&mut self) -> Result<Option<VersionRef<'_>>> {
        let Some((i, new_key)) = self.advance().await? else {
            return Ok(None);
        };
        self.lent = Some(i);
        let (kind, value) = self.sources[i].head_value();
        Ok(Some(VersionRef {
            key: &self.last_key,
            ts: self.last_ts.expect("just set"),
            kind,
            value,
            new_key,
        }))
    }

    /// Finds the source whose head is the next version and records it as
    /// the last returned; returns that source and whether its key is new.
    async fn advance(&mut self) -> Result<Option<(usize, bool)>> {
        if let Some(i) = self.lent.take() {
            self.sources[i].skip();
        }
        if self.stale {
            for s in &mut self.sources {
                s.fill(&self.cache).await?;
            }
            self.build_tree();
            self.stale = false;
            self.top_taken = false;
        }
        loop {
            let Some(&i) = self.tree.first() else {
                return Ok(None);
            };
            if self.top_taken {
                self.top_taken = false;
                if !self.sources[i].fill_now()? {
                    self.sources[i].fill(&self.cache).await?;
                }
                self.replay(i);
            }
            let i = self.tree[0];
            let Some((key, ts)) = self.sources[i].head_key() else {
                return Ok(None);
            };
            // The caller takes this head, or it is skipped below.
            self.top_taken = true;
            // `None`: an exact duplicate of the last version, which came
            // out once already.
            let verdict = match self.last_ts {
                None => Some(true),
                Some(last_ts) => match compare(&self.last_key, last_ts, key, ts) {
                    Ordering::Equal => None,
                    Ordering::Greater => panic!("merge produced versions out of order"),
                    Ordering::Less => Some(self.last_key.as_slice() != key),
                },
            };
            let Some(new_key) = verdict else {
                self.sources[i].skip();
                continue;
            };
            self.last_key.clear();
            self.last_key.extend_from_slice(key);
            self.last_ts = Some(ts);
            return Ok(Some((i, new_key)));
        }
    }

    /// Builds the tree from the sources' heads: each inner node, from the
    /// last up, plays the winners of its two children.
    fn build_tree(&mut self) {
        let n = self.sources.len();
        self.tree.clear();
        if n == 0 {
            return;
        }
        self.tree.resize(n, 0);
        // The winner at every node, leaves included.
        let mut winners: Vec<usize> = (0..2 * n).map(|node| node.wrapping_sub(n)).collect();
        for node in (1..n).rev() {
            let (a, b) = (winners[2 * node], winners[2 * node + 1]);
            let (winner, loser) = match self.head_before(a, b) {
                true => (a, b),
                false => (b, a),
            };
            self.tree[node] = loser;
            winners[node] = winner;
        }
        self.tree[0] = if n == 1 { 0 } else { winners[1] };
    }

    /// Source `i`, the last winner, has a new head (or none): it plays
    /// the losers on its way up from its leaf, and the winner of each match
    /// goes on.
    fn replay(&mut self, i: usize) {
        let n = self.sources.len();
        let mut winner = i;
        let mut node = (n + i) / 2;
        while node > 0 {
            if self.head_before(self.tree[node], winner) {
                std::mem::swap(&mut self.tree[node], &mut winner);
            }
            node /= 2;
        }
        self.tree[0] = winner;
    }

    /// Whether source `a`'s head comes before source `b`'s; a source with
    /// no head comes after every other.
    #[inline]
    fn head_before(&self, a: usize, b: usize) -> bool {
        match (self.sources[a].head_key(), self.sources[b].head_key()) {
            (Some((ka, tsa)), Some((kb, tsb))) => compare(ka, tsa, kb, tsb) == Ordering::Less,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{Disk, MemDisk};
    use crate::sst::{TableBuilder, READ_AHEAD_WINDOWS};
    use bytes::Bytes;
    use std::path::Path;

    type Version = (String, u64, Kind, String);

    fn version(key: usize, ts: u64, value: &str) -> Version {
        (format!("key{key:04}"), ts, Kind::Put, value.to_string())
    }

    /// A merged version as a [`Version`], to compare with those written.
    fn readable(key: &[u8], ts: u64, kind: Kind, value: &[u8]) -> Version {
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        (text(key), ts, kind, text(value))
    }

    /// A table of `versions` (sorted) in blocks of a few entries each, so
    /// a run crosses many block boundaries.
    async fn table(
        disk: &MemDisk,
        id: u64,
        versions: &[Version],
    ) -> Rc<Table<<MemDisk as Disk>::File>> {
        let file = disk
            .create(&Path::new("/t").join(id.to_string()))
            .await
            .unwrap();
        let mut b = TableBuilder::new(file, id, 128, None);
        for (k, ts, kind, v) in versions {
            b.add(k.as_bytes(), *ts, *kind, v.as_bytes()).await.unwrap();
        }
        let (meta, file) = b.finish().await.unwrap();
        Rc::new(Table::open(file, meta).await.unwrap())
    }

    /// A pass with read-ahead reads each window once, and reads the
    /// windows after the one it is in before they are asked for.
    #[test]
    fn read_ahead_reads_the_next_window_before_it_is_needed() {
        crate::run_local(|| async {
            let disk = MemDisk::new();
            disk.create_dir_all(Path::new("/t")).await.unwrap();
            let versions: Vec<Version> = (0..60).map(|k| version(k, 10, "a")).collect();
            let t = table(&disk, 1, &versions).await;
            let blocks = t.block_count();
            assert!(blocks >= 6, "{blocks} blocks");
            // Two 4 KiB blocks a window.
            let mut ahead = ReadAhead::new(2 * 4096);
            let before = disk.reads();
            Table::block_read_ahead(&t, 0, &mut ahead).await.unwrap();
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            let windows = blocks.div_ceil(2) as u64;
            let ahead_reads = (READ_AHEAD_WINDOWS as u64).min(windows - 1);
            assert_eq!(
                disk.reads() - before,
                1 + ahead_reads,
                "windows not read ahead"
            );
            for i in 1..blocks {
                Table::block_read_ahead(&t, i, &mut ahead).await.unwrap();
            }
            assert_eq!(disk.reads() - before, windows);
        });
    }

    /// Two runs (one of two tables), a memtable, overlapping keys and an
    /// exact duplicate in two sources: `next` and `next_ref` return the
    /// same versions in (key asc, ts desc) order, the duplicate once, and
    /// `new_key` marks exactly the first version of each key.
    #[test]
    fn both_ways_of_iterating_merge_the_same_versions() {
        crate::run_local(|| async {
            let disk = MemDisk::new();
            disk.create_dir_all(Path::new("/t")).await.unwrap();
            let a: Vec<Version> = (0..60).map(|k| version(k * 2, 10, "a")).collect();
            let (b1, b2): (Vec<Version>, Vec<Version>) = (0..80)
                .map(|k| version(k, 20 + (k % 3) as u64, "b"))
                .partition(|v| v.0.as_str() < "key0040");
            let mem = Rc::new(Memtable::new());
            for k in (0..100).step_by(7) {
                let (key, ts, kind, value) = version(k, 30, "m");
                mem.insert(Entry {
                    key: key.into(),
                    ts,
                    kind,
                    value: value.into(),
                });
            }
            // The same version as run b holds: it must come out once.
            let (key, ts, kind, value) = version(41, 20 + 41 % 3, "b");
            mem.insert(Entry {
                key: key.into(),
                ts,
                kind,
                value: value.into(),
            });
            let ta = table(&disk, 1, &a).await;
            let (tb1, tb2) = (table(&disk, 2, &b1).await, table(&disk, 3, &b2).await);
            let sources = || {
                vec![
                    Source::mem(mem.clone()),
                    Source::run_read_ahead(vec![ta.clone()], 2 * 4096),
                    Source::run(vec![tb1.clone(), tb2.clone()]),
                ]
            };
            let mut expected: Vec<Version> = a.iter().chain(&b1).chain(&b2).cloned().collect();
            for k in (0..100).step_by(7) {
                expected.push(version(k, 30, "m"));
            }
            expected.sort_by(|x, y| compare(x.0.as_bytes(), x.1, y.0.as_bytes(), y.1));

            let cache = Rc::new(BlockCache::new(1 << 20));
            let mut owned = Vec::new();
            let mut iter = MergeIter::new(sources(), cache.clone());
            while let Some(e) = iter.next().await.unwrap() {
                owned.push(readable(&e.key, e.ts, e.kind, &e.value));
            }
            assert_eq!(owned, expected);

            let mut borrowed = Vec::new();
            let mut firsts = Vec::new();
            let mut iter = MergeIter::new(sources(), cache);
            while let Some(e) = iter.next_ref().await.unwrap() {
                let version = readable(e.key, e.ts, e.kind, e.value);
                if e.new_key {
                    firsts.push(version.0.clone());
                }
                borrowed.push(version);
            }
            assert_eq!(borrowed, expected);
            let mut keys: Vec<String> = expected.iter().map(|v| v.0.clone()).collect();
            keys.dedup();
            assert_eq!(firsts, keys);

            // A seek, then both again from there.
            let from = expected.iter().position(|v| v.0 == "key0041").unwrap();
            let mut iter = MergeIter::new(sources(), Rc::new(BlockCache::new(1 << 20)));
            iter.seek(b"key0041", u64::MAX).await.unwrap();
            let e = iter.next_ref().await.unwrap().unwrap();
            assert_eq!(
                (e.key, e.ts, e.new_key),
                (b"key0041".as_slice(), expected[from].1, true)
            );
            let e = iter.next().await.unwrap().unwrap();
            assert_eq!(e.key, Bytes::from(expected[from + 1].0.clone()));
            assert_eq!(e.ts, expected[from + 1].1);
        });
    }

    /// Many sources of random versions (tables, a memtable, an empty
    /// memtable), some versions in two sources: for every count of
    /// sources the merge returns each version once, in (key asc, ts desc)
    /// order, from the start and from a seek.
    #[test]
    fn any_number_of_sources_merge_in_order_each_version_once() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        crate::run_local(|| async {
            let disk = MemDisk::new();
            disk.create_dir_all(Path::new("/t")).await.unwrap();
            let mut rng = StdRng::seed_from_u64(11);
            let mut next_id = 0;
            for tables in [1usize, 2, 3, 5, 8, 13, 33] {
                // Each version in one table, or in two (as a version both
                // replayed from the WAL and flushed), or in the memtable.
                let mut per_table: Vec<Vec<Version>> = vec![Vec::new(); tables];
                let mem = Rc::new(Memtable::new());
                let mut expected = Vec::new();
                for ts in 1..=40 * tables as u64 {
                    let v = version(rng.gen_range(0..300), ts, &format!("v{ts}"));
                    match rng.gen_range(0..10) {
                        0 => {
                            let (key, ts, kind, value) = v.clone();
                            mem.insert(Entry {
                                key: key.into(),
                                ts,
                                kind,
                                value: value.into(),
                            });
                        }
                        1 if tables > 1 => {
                            let a = rng.gen_range(0..tables);
                            let b = (a + rng.gen_range(1..tables)) % tables;
                            per_table[a].push(v.clone());
                            per_table[b].push(v.clone());
                        }
                        _ => per_table[rng.gen_range(0..tables)].push(v.clone()),
                    }
                    expected.push(v);
                }
                expected.sort_by(|x, y| compare(x.0.as_bytes(), x.1, y.0.as_bytes(), y.1));
                let mut runs = Vec::new();
                for mut versions in per_table {
                    versions.sort_by(|x, y| compare(x.0.as_bytes(), x.1, y.0.as_bytes(), y.1));
                    next_id += 1;
                    if !versions.is_empty() {
                        runs.push(table(&disk, next_id, &versions).await);
                    }
                }
                let sources = || {
                    let mut sources: Vec<Source<_>> = runs
                        .iter()
                        .map(|t| Source::run_read_ahead(vec![t.clone()], 2 * 4096))
                        .collect();
                    sources.insert(sources.len() / 2, Source::mem(mem.clone()));
                    sources.push(Source::mem(Rc::new(Memtable::new())));
                    sources
                };
                let cache = Rc::new(BlockCache::new(1 << 20));
                let mut merged = Vec::new();
                let mut iter = MergeIter::new(sources(), cache.clone());
                while let Some(e) = iter.next_ref().await.unwrap() {
                    merged.push(readable(e.key, e.ts, e.kind, e.value));
                }
                assert_eq!(merged, expected, "{tables} tables");

                let from = expected.len() / 3;
                let (key, ts) = (expected[from].0.clone(), expected[from].1);
                let mut iter = MergeIter::new(sources(), cache);
                iter.seek(key.as_bytes(), ts).await.unwrap();
                let mut rest = Vec::new();
                while let Some(e) = iter.next().await.unwrap() {
                    rest.push(readable(&e.key, e.ts, e.kind, &e.value));
                }
                assert_eq!(rest, expected[from..], "{tables} tables, from {key}@{ts}");
            }
        });
    }
}
