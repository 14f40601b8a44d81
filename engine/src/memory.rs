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

/// Touches `bytes` of fresh heap, `parts` threads at once, then frees it,
/// so the allocator holds that much memory already backed by the OS.
///
/// With freed pages kept ([`keep_freed_pages`]), the memtables and block
/// cache then grow into memory that is already there. Without it, a young
/// shard faults in zeroed pages (2 MiB at a time with transparent huge
/// pages; ~1 ms per MiB in this VM) while it flushes its first memtables
/// into a block cache still filling up. Measured with one shard, durable
/// unpipelined SETs: `clear_page_erms` was ~54% of the flush's CPU and 5%
/// of the shard's; prefaulted, 82-84k writes/s instead of 75-80k and p99.9
/// ~5 ms instead of 10.5-14 ms. Costs startup time (~1 s per GiB and core
/// here) and resident memory up front, which the configured budgets bound.
/// Nothing is freed before every part is touched: the allocator shares
/// freed memory between threads, so a part touched after another was
/// freed would reuse the same pages.
pub fn prefault(bytes: usize, parts: usize) {
    const CHUNK: usize = 2 << 20;
    const PAGE: usize = 4096;
    let chunks = bytes.div_ceil(CHUNK);
    let parts = parts.clamp(1, chunks.max(1));
    let touched: Vec<Vec<Vec<u8>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..parts)
            .map(|p| {
                let mine = chunks / parts + usize::from(p < chunks % parts);
                scope.spawn(move || {
                    (0..mine)
                        .map(|_| {
                            let mut chunk: Vec<u8> = Vec::with_capacity(CHUNK);
                            let base = chunk.as_mut_ptr();
                            for offset in (0..CHUNK).step_by(PAGE) {
                                // SAFETY: `offset` is within the capacity
                                // just allocated; volatile, so the touch
                                // is not optimised away.
                                unsafe { base.add(offset).write_volatile(0) };
                            }
                            chunk
                        })
                        .collect()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("prefault thread"))
            .collect()
    });
    drop(touched);
}
