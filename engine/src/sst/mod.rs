//! Sorted string tables: immutable files of versions, written once by a flush
//! or a compaction and read through the block cache.
//!
//! Sketch: a 4 KiB block holds ~30 versions of 16 B keys / 100 B values; a
//! point read that misses the cache is one aligned 4 KiB read (~60 µs at
//! queue depth 1 here), a hit is a binary search over the flat index, one
//! over the block's ~8 restarts and at most 4 entry decodes: a handful of
//! cache misses, which is what a read costs at 1M keys. Flushes warm the
//! cache, so fresh tables are read from memory. The bloom filter skips ~99%
//! of tables that lack the key.

pub mod block;
pub mod bloom;
pub mod format;

use crate::cache::BlockCache;
use crate::error::{Error, Result};
use crate::io::{align_up, DiskFile, ALIGN};
use crate::key::{compare, expiry, InternalKey, Kind, Versioned};
use block::{Block, BlockBuilder, BlockError};
use bytes::Bytes;
use format::{BlockIndex, Footer, IndexEntry, Props, FOOTER_BYTES};
use std::cmp::Ordering;
use std::collections::VecDeque;
use std::rc::Rc;

/// Bytes buffered before a write is issued.
const WRITE_CHUNK_BYTES: usize = 1 << 20;

/// What the manifest records about a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMeta {
    pub id: u64,
    pub file_bytes: u64,
    pub smallest: InternalKey,
    pub largest: InternalKey,
    pub props: Props,
}

impl TableMeta {
    /// True if the table may hold versions of user keys in [lo, hi].
    pub fn overlaps(&self, lo: &[u8], hi: &[u8]) -> bool {
        self.smallest.user() <= hi && self.largest.user() >= lo
    }
}

/// Name of the table file with this id.
pub fn table_name(id: u64) -> String {
    format!("{id:016}.sst")
}

pub fn parse_table_name(name: &str) -> Option<u64> {
    name.strip_suffix(".sst")?.parse().ok()
}

/// Streams sorted versions into a new table file.
pub struct TableBuilder<F: DiskFile> {
    file: Rc<F>,
    id: u64,
    block_bytes: usize,
    out: Vec<u8>,
    out_offset: u64,
    /// The last chunk's write, in flight while the next chunk fills; it
    /// hands back the chunk's buffer. A flush or compaction that waited
    /// for each write waited for the foreground too (the executor reaps a
    /// completed write only between foreground tasks).
    writing: Option<glommio::Task<(Vec<u8>, Result<()>)>>,
    block: BlockBuilder,
    index: Vec<IndexEntry>,
    hashes: Vec<u64>,
    first: Option<InternalKey>,
    /// The last version added (valid once `props.entries > 0`), copied into
    /// a reused buffer: cloning the `Bytes` of every key was an atomic
    /// increment and decrement per version (and an allocation for a key
    /// not yet shared).
    last_key: Vec<u8>,
    last_ts: u64,
    props: Props,
    /// Where finished blocks also go, already verified, so the first reads
    /// of a fresh table hit memory instead of the disk (direct I/O has no
    /// page cache behind it: without this, a read of a just-flushed key was
    /// a ~60-100 µs disk read at queue depth 1).
    warm: Option<Rc<BlockCache>>,
}

impl<F: DiskFile> TableBuilder<F> {
    /// A builder for table `id`; with `warm`, each finished block is also
    /// put in that cache.
    pub fn new(file: F, id: u64, block_bytes: usize, warm: Option<Rc<BlockCache>>) -> Self {
        TableBuilder {
            file: Rc::new(file),
            id,
            block_bytes,
            out: Vec::with_capacity(WRITE_CHUNK_BYTES + ALIGN),
            out_offset: 0,
            writing: None,
            block: BlockBuilder::default(),
            index: Vec::new(),
            hashes: Vec::new(),
            first: None,
            last_key: Vec::new(),
            last_ts: 0,
            props: Props {
                entries: 0,
                min_ts: u64::MAX,
                max_ts: 0,
                expiring: 0,
                expires_by_ms: 0,
                overwritten: 0,
            },
            warm,
        }
    }

    /// Bytes the file will have if finished now (roughly).
    pub fn estimated_bytes(&self) -> u64 {
        self.out_offset + self.out.len() as u64 + self.block.estimated_len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.props.entries == 0
    }

    /// Adds the next version; versions must come in strictly increasing
    /// (key asc, ts desc) order. Returns the bytes written to disk by this
    /// call (for rate limiting).
    pub async fn add(&mut self, key: &[u8], ts: u64, kind: Kind, value: &[u8]) -> Result<usize> {
        self.push(key, ts, kind, value);
        self.write_if_due().await
    }

    /// [`TableBuilder::add`] without the write: buffers the version and
    /// returns true once enough is buffered that the caller should call
    /// [`TableBuilder::write_if_due`] (a memtable flush adds from inside a
    /// borrow of the memtable and writes between runs).
    pub fn push(&mut self, key: &[u8], ts: u64, kind: Kind, value: &[u8]) -> bool {
        if self.props.entries > 0 {
            assert_eq!(
                compare(&self.last_key, self.last_ts, key, ts),
                Ordering::Less,
                "table input out of order"
            );
            if self.last_key != key {
                self.hashes.push(bloom::hash(key));
            } else {
                self.props.overwritten += 1;
            }
        } else {
            self.hashes.push(bloom::hash(key));
            self.first = Some(InternalKey::copied(key, ts));
        }
        let entry_len = 17 + key.len() + value.len() + 4;
        if !self.block.is_empty() && self.block.estimated_len() + entry_len > self.block_bytes {
            self.finish_block();
        }
        self.block.add(key, ts, kind, value);
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.last_ts = ts;
        self.props.entries += 1;
        self.props.min_ts = self.props.min_ts.min(ts);
        self.props.max_ts = self.props.max_ts.max(ts);
        if let Some(at) = expiry(kind, ts, value) {
            self.props.expiring += 1;
            self.props.expires_by_ms = self.props.expires_by_ms.max(at);
        }
        self.out.len() >= WRITE_CHUNK_BYTES
    }

    /// Writes the buffered blocks once a write's worth is buffered; returns
    /// the bytes written (0 if not yet due).
    pub async fn write_if_due(&mut self) -> Result<usize> {
        match self.out.len() >= WRITE_CHUNK_BYTES {
            true => self.write_out().await,
            false => Ok(0),
        }
    }

    fn finish_block(&mut self) {
        assert!(self.props.entries > 0, "finishing an empty block");
        let (last_key, last_ts) = (Bytes::copy_from_slice(&self.last_key), self.last_ts);
        let offset = self.out_offset + self.out.len() as u64;
        debug_assert_eq!(offset % ALIGN as u64, 0);
        let start = self.out.len();
        let len = self.block.finish_into(&mut self.out);
        if let Some(cache) = &self.warm {
            let raw = Bytes::copy_from_slice(&self.out[start..start + len]);
            let block = Block::parse_built(raw).expect("a block just built parses");
            cache.insert(self.id, offset, block, len);
        }
        self.out.resize(align_up(self.out.len()), 0);
        self.index.push(IndexEntry {
            last_key,
            last_ts,
            offset,
            len: len as u32,
        });
    }

    /// Starts writing the buffered chunk, once the last one is written.
    async fn write_out(&mut self) -> Result<usize> {
        let n = self.out.len();
        debug_assert_eq!(n % ALIGN, 0);
        let spare = self.written().await?;
        let chunk = std::mem::replace(&mut self.out, spare);
        let (file, offset) = (self.file.clone(), self.out_offset);
        self.writing = Some(glommio::spawn_local(async move {
            let done = file.write_at(&chunk, offset).await;
            (chunk, done)
        }));
        self.out_offset += n as u64;
        Ok(n)
    }

    /// Waits for the write in flight, if any; returns its buffer, emptied,
    /// for the next chunk.
    async fn written(&mut self) -> Result<Vec<u8>> {
        let Some(write) = self.writing.take() else {
            return Ok(Vec::with_capacity(WRITE_CHUNK_BYTES + ALIGN));
        };
        let (mut buf, done) = write.await;
        done?;
        buf.clear();
        Ok(buf)
    }

    /// Writes the index, bloom filter, props and footer, then syncs.
    pub async fn finish(mut self) -> Result<(TableMeta, F)> {
        assert!(!self.is_empty(), "empty table");
        if !self.block.is_empty() {
            self.finish_block();
        }
        let base = self.out_offset;
        let index_off = base + self.out.len() as u64;
        format::encode_index(&mut self.out, &self.index);
        let bloom_off = base + self.out.len() as u64;
        let filter = bloom::build(&self.hashes);
        let start = self.out.len();
        self.out.extend_from_slice(&filter);
        format::seal(&mut self.out, start);
        let props_off = base + self.out.len() as u64;
        format::encode_props(&mut self.out, &self.props);
        let end = base + self.out.len() as u64;
        let footer = Footer {
            index_off,
            index_len: (bloom_off - index_off) as u32,
            bloom_off,
            bloom_len: (props_off - bloom_off) as u32,
            props_off,
            props_len: (end - props_off) as u32,
        };
        let total = align_up(self.out.len() + FOOTER_BYTES);
        self.out.resize(total - FOOTER_BYTES, 0);
        self.out.extend_from_slice(&footer.encode());
        self.write_out().await?;
        self.written().await?;
        self.file.sync().await?;
        // The finished write task dropped its handle on the file.
        let file = Rc::into_inner(self.file).expect("no write holds the table's file");
        let meta = TableMeta {
            id: self.id,
            file_bytes: self.out_offset,
            smallest: self.first.expect("non-empty"),
            largest: InternalKey::new(Bytes::from(self.last_key), self.last_ts),
            props: self.props,
        };
        Ok((meta, file))
    }
}

/// Windows a pass in order has read or is reading past the one it is in
/// ([`Table::block_read_ahead`]).
pub const READ_AHEAD_WINDOWS: usize = 4;

/// The blocks a pass in order read last, and the reads of the windows of
/// blocks after them (see [`Table::block_read_ahead`]).
pub struct ReadAhead {
    /// The most a read takes (whole blocks, so at least one).
    window_bytes: usize,
    /// The table they belong to (ids are never reused) and where they start.
    table: u64,
    offset: u64,
    data: Bytes,
    /// The next windows' table, offset and read, in flight meanwhile,
    /// oldest first.
    pending: VecDeque<(u64, u64, glommio::Task<Result<Bytes>>)>,
    /// The block after the last window read or being read.
    next_block: usize,
}

impl ReadAhead {
    pub fn new(window_bytes: usize) -> Self {
        ReadAhead {
            window_bytes,
            table: 0,
            offset: 0,
            data: Bytes::new(),
            pending: VecDeque::new(),
            next_block: 0,
        }
    }
}

/// An open table: its index and bloom filter in memory, blocks via the cache.
pub struct Table<F: DiskFile> {
    pub meta: TableMeta,
    file: F,
    index: BlockIndex,
    /// Shared with the row cache, which checks rows against the filters of
    /// tables flushed since they were cached.
    bloom: Rc<bloom::Filter>,
}

impl<F: DiskFile> Table<F> {
    pub async fn open(file: F, meta: TableMeta) -> Result<Table<F>> {
        let path = file.path().to_path_buf();
        let size = file.size().await?;
        if size != meta.file_bytes || size < ALIGN as u64 {
            return Err(Error::corruption(
                &path,
                0,
                format!("table is {size} bytes, manifest says {}", meta.file_bytes),
            ));
        }
        let tail = file
            .read_at(size - FOOTER_BYTES as u64, FOOTER_BYTES)
            .await?;
        let footer = Footer::decode(&tail).map_err(|d| Error::corruption(&path, size - 64, d))?;
        let meta_end = footer.props_off + footer.props_len as u64;
        if footer.index_off > footer.bloom_off
            || footer.bloom_off > footer.props_off
            || meta_end > size
        {
            return Err(Error::corruption(
                &path,
                size - 64,
                "footer offsets out of range",
            ));
        }
        let raw = file
            .read_at(footer.index_off, (meta_end - footer.index_off) as usize)
            .await?;
        let bad = |what: &str| {
            Error::corruption(
                &path,
                footer.index_off,
                format!("{what} failed its checksum"),
            )
        };
        let at = |off: u64, len: u32| {
            let s = (off - footer.index_off) as usize;
            &raw[s..s + len as usize]
        };
        let index = format::decode_index(at(footer.index_off, footer.index_len))
            .ok_or_else(|| bad("index"))?;
        let bloom = format::unseal(at(footer.bloom_off, footer.bloom_len))
            .and_then(bloom::Filter::decode)
            .ok_or_else(|| bad("bloom filter"))?;
        let props = format::decode_props(at(footer.props_off, footer.props_len))
            .ok_or_else(|| bad("props"))?;
        if props != meta.props {
            return Err(Error::corruption(
                &path,
                footer.props_off,
                "props differ from manifest",
            ));
        }
        Ok(Table {
            meta,
            file,
            index,
            bloom: Rc::new(bloom),
        })
    }

    pub fn id(&self) -> u64 {
        self.meta.id
    }

    /// The table's bloom filter.
    pub fn filter(&self) -> &Rc<bloom::Filter> {
        &self.bloom
    }

    pub fn block_count(&self) -> usize {
        self.index.len()
    }

    /// Memory held outside the block cache (index and filter).
    pub fn resident_bytes(&self) -> usize {
        self.bloom.resident_bytes() + self.index.resident_bytes()
    }

    /// Index of the first block whose last version is ≥ (key, ts).
    pub fn find_block(&self, key: &[u8], ts: u64) -> usize {
        self.index.find(key, ts)
    }

    /// Loads block `i` through the cache, verifying its checksum.
    pub async fn block(&self, i: usize, cache: &BlockCache) -> Result<Block> {
        match cache.get(self.meta.id, self.index.handle(i).offset) {
            Some(b) => Ok(b),
            None => self.read_block(i, cache).await,
        }
    }

    /// Reads block `i` from the file into the cache, after a lookup that
    /// missed (counted there, once).
    async fn read_block(&self, i: usize, cache: &BlockCache) -> Result<Block> {
        let e = self.index.handle(i);
        // The block's own bytes, not the aligned span the disk reads: the
        // cache holds what it is charged for (a block of three 1 KB values
        // held a 4 KiB buffer and was charged ~3.1 KiB).
        let raw = self.file.read_at(e.offset, e.len as usize).await?;
        let block = self.parse_block(i, &raw, 0)?;
        cache.insert(self.meta.id, e.offset, block.clone(), e.len as usize);
        Ok(block)
    }

    /// Loads block `i` of `table` for a pass over the whole table in
    /// order (compaction): from `ahead` if it holds the block, else by
    /// reading the window of blocks from `i` on, up to its
    /// `window_bytes`, into `ahead` in one read. The next
    /// [`READ_AHEAD_WINDOWS`] windows are read meanwhile: a compaction
    /// that waited for each window in turn waited longest while the shard
    /// was busiest (the executor reaps a completed read only between
    /// foreground tasks) and fell behind the writes; with one window ahead
    /// it still waited ~1,700 times in a level-0 compaction. (Larger
    /// windows cost latency instead: each read's buffer is copied in one
    /// go, and 1 MiB ones raised the p99 of 16-deep durable SETs from ~3
    /// to ~4 ms.) Bypasses the cache: the table is about to be replaced,
    /// and its blocks would evict ones that requests read.
    pub async fn block_read_ahead(
        table: &Rc<Self>,
        i: usize,
        ahead: &mut ReadAhead,
    ) -> Result<Block> {
        let e = table.index.handle(i);
        let id = table.meta.id;
        let held = e.offset >= ahead.offset
            && e.offset + e.len as u64 <= ahead.offset + ahead.data.len() as u64;
        if ahead.table != id || !held {
            ahead.data = match ahead.pending.pop_front() {
                Some((t, offset, read)) if t == id && offset == e.offset => read.await?,
                _ => {
                    ahead.pending.clear();
                    let (len, after) = table.window(i, ahead.window_bytes);
                    ahead.next_block = after;
                    table.file.read_at(e.offset, len).await?
                }
            };
            ahead.table = id;
            ahead.offset = e.offset;
            while ahead.pending.len() < READ_AHEAD_WINDOWS && ahead.next_block < table.index.len() {
                let offset = table.index.handle(ahead.next_block).offset;
                let (len, after) = table.window(ahead.next_block, ahead.window_bytes);
                let t = table.clone();
                let read = glommio::spawn_local(async move { t.file.read_at(offset, len).await });
                ahead.pending.push_back((id, offset, read));
                ahead.next_block = after;
            }
        }
        table.parse_block(i, &ahead.data, (e.offset - ahead.offset) as usize)
    }

    /// The read-ahead window from block `i`, of up to `bytes`: its length,
    /// and the first block after it. Blocks are aligned and back to back:
    /// a window holds whole blocks only (one that does not follow on
    /// starts the next).
    fn window(&self, i: usize, bytes: usize) -> (usize, usize) {
        let start = self.index.handle(i).offset;
        let aligned_end = |j: usize| {
            let h = self.index.handle(j);
            h.offset + align_up(h.len as usize) as u64
        };
        let mut end = aligned_end(i);
        let mut j = i + 1;
        while j < self.index.len() {
            let next = self.index.handle(j);
            if next.offset != end || aligned_end(j) - start > bytes as u64 {
                break;
            }
            end = aligned_end(j);
            j += 1;
        }
        ((end - start) as usize, j)
    }

    /// Parses block `i`, which starts `at` bytes into `raw`.
    fn parse_block(&self, i: usize, raw: &Bytes, at: usize) -> Result<Block> {
        let e = self.index.handle(i);
        if raw.len() < at + e.len as usize {
            return Err(Error::corruption(
                self.file.path(),
                e.offset,
                "block past end of file",
            ));
        }
        Block::parse(raw.slice(at..at + e.len as usize)).map_err(|err| {
            let detail = match err {
                BlockError::Checksum => "data block failed its checksum",
                BlockError::Malformed => "data block is malformed",
            };
            Error::corruption(self.file.path(), e.offset, detail)
        })
    }

    pub(crate) fn block_error(&self, i: usize) -> Error {
        Error::corruption(
            self.file.path(),
            self.index.handle(i).offset,
            "data block is malformed",
        )
    }

    /// The newest version of `key` at or below `ts`, if this table has one.
    pub async fn get(&self, key: &[u8], ts: u64, cache: &BlockCache) -> Result<Option<Versioned>> {
        if self.meta.props.min_ts > ts || !self.bloom.may_contain(bloom::hash(key)) {
            return Ok(None);
        }
        let i = self.find_block(key, ts);
        if i >= self.index.len() {
            return Ok(None);
        }
        let found = match cache.with(self.meta.id, self.index.handle(i).offset, |b| {
            b.get(key, ts)
        }) {
            Some(found) => found,
            // Boxed: the read's state (~0.5 KiB) would otherwise be part of
            // every point read's future, which the server boxes and copies
            // per request, though most are answered from memory.
            None => Box::pin(self.read_block(i, cache)).await?.get(key, ts),
        };
        found.map_err(|_| self.block_error(i))
    }
}
