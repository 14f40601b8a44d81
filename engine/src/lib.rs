//! `tessera-engine`: the storage engine of one Tessera shard, usable
//! embedded. It owns the WAL (group commit, preallocated recycled segments),
//! the memtable, SSTables with bloom filters and a block cache, the manifest,
//! leveled compaction, MVCC versions and crash recovery.
//!
//! It knows nothing of sockets, frames or other shards: one [`Engine`] runs
//! on one glommio executor and is driven by whoever owns that shard.
//! All file I/O goes through [`io::Disk`]: [`io::DmaDisk`] (io_uring,
//! O_DIRECT) in production, [`io::MemDisk`] (fault injection) in tests.
//!
//! Main types: [`Engine`], [`Options`], [`WriteBatch`], [`Error`].

pub mod cache;
pub mod cc;
pub mod clock;
mod compaction;
mod engine;
pub mod error;
mod hint;
pub mod io;
pub mod iter;
pub mod key;
pub mod manifest;
pub mod memory;
pub mod memtable;
pub mod options;
pub mod row_cache;
pub mod sst;
pub mod txn;
pub mod version;
pub mod wal;
mod write;

pub use engine::{Engine, EngineStats, WriteBatch};
pub use error::{Error, Result};
pub use options::{Options, SyncMode};
pub use txn::{CommitRecord, Condition, Phase, ReadResult, TxnPart, Vote};

/// Runs `f` to completion on a fresh glommio executor on this thread's
/// behalf (floating, not pinned). For tests, tools and benchmarks.
pub fn run_local<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(f)
        .expect("cannot start a glommio executor")
        .join()
        .expect("executor thread panicked")
}
