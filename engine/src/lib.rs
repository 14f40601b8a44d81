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

pub use engine::{Engine, EngineStats, WriteBatch, WriteStart};
pub use error::{Error, Result};
pub use key::Row;
pub use options::{Options, SyncMode, WalRecovery};
pub use txn::{CommitRecord, Condition, Phase, ReadResult, TxnPart, Vote};
pub use write::QueuedWrite;

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

/// CPU time the calling thread has used: unlike wall time, it does not
/// grow while other threads hold the cores. For tests and benchmarks.
pub fn thread_cpu_time() -> std::time::Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}
