//! Process-wide memory settings for binaries that run on mimalloc (the
//! server and the benchmarks). The engine itself allocates through
//! whatever global allocator its host chose.

/// mimalloc's `mi_option_purge_delay` (the enum's 16th entry in
/// mimalloc 2.x and 3.x; the Rust bindings name no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed pages mapped for reuse instead of returning them to the OS.
///
/// By default mimalloc purges freed memory after 10 ms. A shard frees a
/// whole memtable (64 MiB) at each flush and a DMA buffer at each write, and
/// with purging every new memtable faulted in fresh zeroed pages:
/// `clear_page_erms` was ~15% of a fill's CPU and the fill ran at ~380-470k
/// writes/s instead of ~560-590k/s. The process keeps its peak heap instead,
/// which the configured budgets (memtables, block cache) already bound.
/// Call it first thing in `main`; it does nothing for memory mimalloc does
/// not manage.
pub fn keep_freed_pages() {
    // SAFETY: sets one integer option of the allocator; any value is valid
    // for this option (-1 = never purge).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}
