//! File I/O behind a small trait, so the engine runs on real direct I/O in
//! production and on a fault-injecting in-memory disk in tests.
//!
//! Contract shared by both implementations: writes are whole 4 KiB-aligned
//! blocks at 4 KiB-aligned offsets (O_DIRECT); data is durable only after
//! `sync`, or once its write completes on a file opened with
//! `open_write_through`; a new or renamed directory entry is durable only
//! after `sync_dir` of its directory. Reads may be unaligned.

mod dma;
mod memory;

pub use dma::DmaDisk;
pub use memory::{Fault, MemDisk};

use crate::error::Result;
use bytes::Bytes;
use std::path::{Path, PathBuf};

/// Direct-I/O alignment for offsets and lengths of writes.
pub const ALIGN: usize = 4096;

/// Rounds `n` up to the next multiple of [`ALIGN`].
#[inline]
pub fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Rounds `n` down to a multiple of [`ALIGN`].
#[inline]
pub fn align_down(n: u64) -> u64 {
    n / ALIGN as u64 * ALIGN as u64
}

// The engine lives on one thread per shard (thread-per-core); its futures
// never cross threads, so the auto-trait bounds that this lint asks for
// would only get in the way.
#[allow(async_fn_in_trait)]
/// A directory tree of files.
pub trait Disk: Clone + 'static {
    type File: DiskFile;
    /// Creates (or truncates) a file for reading and writing.
    async fn create(&self, path: &Path) -> Result<Self::File>;
    /// Opens an existing file for reading and writing.
    async fn open(&self, path: &Path) -> Result<Self::File>;
    /// Opens an existing file whose writes are durable when they complete,
    /// as if each were followed by `sync` (O_DSYNC): one I/O where a write
    /// and an fdatasync take two round trips through the executor.
    async fn open_write_through(&self, path: &Path) -> Result<Self::File>;
    async fn remove(&self, path: &Path) -> Result<()>;
    async fn rename(&self, from: &Path, to: &Path) -> Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    async fn sync_dir(&self, dir: &Path) -> Result<()>;
    async fn create_dir_all(&self, dir: &Path) -> Result<()>;
    /// File names (not paths) in `dir`, sorted.
    async fn list(&self, dir: &Path) -> Result<Vec<String>>;
    async fn exists(&self, path: &Path) -> bool;
}

#[allow(async_fn_in_trait)]
/// One open file.
pub trait DiskFile: 'static {
    /// Writes `data` (length a multiple of [`ALIGN`]) at `offset` (aligned).
    async fn write_at(&self, data: &[u8], offset: u64) -> Result<()>;
    /// Reads up to `len` bytes at `offset`; shorter only at end of file.
    async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes>;
    /// Makes written data durable (fdatasync).
    async fn sync(&self) -> Result<()>;
    async fn size(&self) -> Result<u64>;
    async fn truncate(&self, len: u64) -> Result<()>;
    fn path(&self) -> &Path;
}

/// Joins a directory and a file name.
pub fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
