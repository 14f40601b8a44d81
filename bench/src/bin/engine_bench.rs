//! Engine benchmark with db_bench's vocabulary: `--benchmarks
//! fillrandom,readrandom,seekrandom,overwrite,fillsync,compact --num N --key_size K
//! --value_size V`. Prints one db_bench-style line per benchmark plus
//! latency percentiles.
//!
//! `fillrandom`, `overwrite`: one writer, `--wal_sync` (default `none`,
//! the closest to db_bench's default sync=0). `fillsync`: `--writers`
//! concurrent writers in `always` mode (acknowledged only after fdatasync).
//! `readrandom`: random point reads (`--threads` readers at once, `--reads`
//! in all). `seekrandom`: seek to a random key and read the next
//! `--seek_nexts` entries. `compact`: flush, then compact until no level
//! needs it.

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;
use tessera_bench::report::to_stdout;
use tessera_engine::{run_local, Engine, Options, SyncMode};

/// The allocator `tessera-server` runs with, so the engine and the load
/// generator are measured as they ship.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug, Clone)]
#[command(about = "Tessera engine benchmark (db_bench vocabulary)")]
struct Args {
    /// Comma-separated: fillrandom, readrandom, seekrandom, overwrite,
    /// fillsync, compact (flush, then compact until no level needs it:
    /// what db_bench's `compact` settles).
    #[arg(long, default_value = "fillrandom,readrandom,seekrandom,overwrite")]
    benchmarks: String,
    /// Number of keys (and of operations per benchmark).
    #[arg(long, default_value_t = 1_000_000)]
    num: u64,
    #[arg(long = "key_size", default_value_t = 16)]
    key_size: usize,
    #[arg(long = "value_size", default_value_t = 100)]
    value_size: usize,
    /// Entries read after each seek in seekrandom.
    #[arg(long = "seek_nexts", default_value_t = 10)]
    seek_nexts: usize,
    /// Operations of readrandom (seekrandom: a tenth of them) [default:
    /// --num]. With `--db` of a filled database and `--benchmarks
    /// readrandom`, reads a database larger than memory without refilling
    /// it (db_bench's `--reads` with `--use_existing_db`).
    #[arg(long)]
    reads: Option<u64>,
    /// Concurrent readers in readrandom, each its share of `--reads`: tasks
    /// on the one core (db_bench's `--threads`, which runs OS threads).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Sync mode for fillrandom / overwrite.
    #[arg(long = "wal_sync", default_value = "none")]
    wal_sync: String,
    /// Concurrent writers for fillsync.
    #[arg(long, default_value_t = 256)]
    writers: usize,
    /// Operations for fillsync (default: --num).
    #[arg(long = "sync_num")]
    sync_num: Option<u64>,
    /// Block cache bytes.
    #[arg(long = "cache_size", default_value_t = 256 << 20)]
    cache_size: usize,
    /// Row cache bytes; 0 (off) as in db_bench, so the comparison with
    /// RocksDB is block cache against block cache.
    #[arg(long = "row_cache_size", default_value_t = 0)]
    row_cache_size: usize,
    /// Database directory (default: a fresh temporary directory).
    #[arg(long)]
    db: Option<PathBuf>,
}

/// `k` in decimal, zero-padded to `size` bytes (cut to `size` if longer),
/// like db_bench's keys. Formatted with `itoa` into a buffer of the final
/// size: `format!` was ~3% of a fill.
fn key(k: u64, size: usize) -> Bytes {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(k).as_bytes();
    let mut out = vec![b'0'; size.max(digits.len())];
    let start = out.len() - digits.len();
    out[start..].copy_from_slice(digits);
    out.truncate(size);
    Bytes::from(out)
}

struct Report {
    name: String,
    ops: u64,
    seconds: f64,
    hist: Histogram<u64>,
}

impl Report {
    fn print(&self) -> anyhow::Result<()> {
        let h = &self.hist;
        to_stdout(&format!(
            "{:<12} : {:>9.3} micros/op {:>9.0} ops/sec; p50 {} us p99 {} us p99.9 {} us max {} us\n",
            self.name,
            self.seconds * 1e6 / self.ops as f64,
            self.ops as f64 / self.seconds,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        ))
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

async fn fill(engine: &Engine, a: &Args, name: &str, seed: u64) -> anyhow::Result<Report> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let value = Bytes::from(vec![b'v'; a.value_size]);
    let mut h = hist();
    let start = Instant::now();
    for _ in 0..a.num {
        let k = key(rng.gen_range(0..a.num), a.key_size);
        let t = Instant::now();
        engine.put(k, value.clone()).await?;
        h.record(t.elapsed().as_micros() as u64)?;
    }
    Ok(Report {
        name: name.into(),
        ops: a.num,
        seconds: start.elapsed().as_secs_f64(),
        hist: h,
    })
}

/// Runs `tasks` tasks at once, each `per_task` times: `op` on a random
/// key of `0..--num` (task `t` seeded with `seed + t`), every call timed
/// into one histogram. Returns it and the seconds the whole run took.
async fn concurrently<F, Fut>(
    a: &Args,
    tasks: usize,
    per_task: u64,
    seed: u64,
    op: F,
) -> anyhow::Result<(Histogram<u64>, f64)>
where
    F: Fn(Bytes) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + 'static,
{
    let h = Rc::new(RefCell::new(hist()));
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (h, op, num, key_size) = (h.clone(), op.clone(), a.num, a.key_size);
        handles.push(glommio::spawn_local(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed + t as u64);
            for _ in 0..per_task {
                let k = key(rng.gen_range(0..num), key_size);
                let at = Instant::now();
                op(k).await?;
                h.borrow_mut().record(at.elapsed().as_micros() as u64)?;
            }
            anyhow::Ok(())
        }));
    }
    for handle in handles {
        handle.await?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let hist = h.borrow().clone();
    Ok((hist, seconds))
}

async fn fill_sync(engine: &Engine, a: &Args) -> anyhow::Result<Report> {
    let per_writer = a.sync_num.unwrap_or(a.num) / a.writers as u64;
    let value = Bytes::from(vec![b's'; a.value_size]);
    let engine = engine.clone();
    let (hist, seconds) = concurrently(a, a.writers, per_writer, 1000, move |k| {
        let (engine, value) = (engine.clone(), value.clone());
        async move {
            engine.put(k, value).await?;
            Ok(())
        }
    })
    .await?;
    Ok(Report {
        name: format!("fillsync/{}", a.writers),
        ops: per_writer * a.writers as u64,
        seconds,
        hist,
    })
}

async fn read_random(engine: &Engine, a: &Args) -> anyhow::Result<Report> {
    let threads = a.threads.max(1);
    let per_reader = a.reads.unwrap_or(a.num) / threads as u64;
    let found = Rc::new(std::cell::Cell::new(0u64));
    let (engine, counted) = (engine.clone(), found.clone());
    let (hist, seconds) = concurrently(a, threads, per_reader, 7, move |k| {
        let (engine, found) = (engine.clone(), counted.clone());
        async move {
            let hit = engine.get(&k).await?.is_some();
            found.set(found.get() + u64::from(hit));
            Ok(())
        }
    })
    .await?;
    let ops = per_reader * threads as u64;
    eprintln!("readrandom: {} of {ops} found", found.get());
    Ok(Report {
        name: "readrandom".into(),
        ops,
        seconds,
        hist,
    })
}

async fn seek_random(engine: &Engine, a: &Args) -> anyhow::Result<Report> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut h = hist();
    let ops = a.reads.unwrap_or(a.num) / 10;
    let start = Instant::now();
    for _ in 0..ops {
        let k = key(rng.gen_range(0..a.num), a.key_size);
        let t = Instant::now();
        let rows = engine.scan(&k, None, a.seek_nexts + 1, None).await?;
        std::hint::black_box(rows);
        h.record(t.elapsed().as_micros() as u64)?;
    }
    Ok(Report {
        name: "seekrandom".into(),
        ops,
        seconds: start.elapsed().as_secs_f64(),
        hist: h,
    })
}

fn main() {
    tessera_engine::memory::keep_freed_pages();
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let wal_sync: SyncMode = args.wal_sync.parse().context("--wal_sync")?;
    for b in args.benchmarks.split(',') {
        if ![
            "fillrandom",
            "readrandom",
            "seekrandom",
            "overwrite",
            "fillsync",
            "compact",
        ]
        .contains(&b)
        {
            bail!("unknown benchmark {b:?}");
        }
    }
    let tmp = tempfile::tempdir_in(".").context("creating a temporary database directory")?;
    let dir = args.db.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    to_stdout(&format!(
        "tessera-engine-bench: keys {} bytes, values {} bytes, {} entries, wal_sync {wal_sync}, db {}\n",
        args.key_size,
        args.value_size,
        args.num,
        dir.display()
    ))?;
    run_local(move || async move {
        let opts = Options {
            wal_sync,
            block_cache_bytes: args.cache_size,
            row_cache_bytes: args.row_cache_size,
            ..Options::default()
        };
        // As the server does by default (`--prefault-memory`).
        tessera_engine::memory::prefault(opts.memory_budget(), 1);
        let engine = Engine::open(&dir, opts.clone()).await?;
        let sync_engine = Engine::open(
            dir.join("sync"),
            Options {
                wal_sync: SyncMode::Always,
                ..opts
            },
        )
        .await?;
        for b in args.benchmarks.split(',') {
            if b == "compact" {
                let start = Instant::now();
                engine.flush().await?;
                engine.compact().await?;
                to_stdout(&format!(
                    "compact      : {:.3} seconds\n",
                    start.elapsed().as_secs_f64()
                ))?;
                continue;
            }
            let report = match b {
                "fillrandom" => fill(&engine, &args, "fillrandom", 1).await?,
                "overwrite" => fill(&engine, &args, "overwrite", 2).await?,
                "readrandom" => read_random(&engine, &args).await?,
                "seekrandom" => seek_random(&engine, &args).await?,
                "fillsync" => fill_sync(&sync_engine, &args).await?,
                _ => unreachable!("validated above"),
            };
            report.print()?;
            let s = engine.stats();
            eprintln!("  after {b}: level tables {:?}, memtable {} imm {} groups {} flushes {} flush errors {} stalls {} bg {:?}", s.level_tables, s.memtable_bytes, s.immutable_memtables, s.wal_groups, s.flushes, s.flush_errors, s.write_stalls, s.background_error);
        }
        let s = engine.stats();
        eprintln!(
            "stats: levels {:?} tables, {:?} bytes; cache {} / {} bytes, hits {} misses {}; compactions {} errors {} bg {:?}",
            s.level_tables, s.level_bytes, s.cache_bytes, s.cache_capacity_bytes, s.cache_hits, s.cache_misses, s.compactions, s.compaction_errors, s.background_error
        );
        engine.close().await?;
        sync_engine.close().await?;
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::key;

    #[test]
    fn keys_are_zero_padded_decimal_cut_to_size() {
        for (k, size) in [
            (0u64, 16usize),
            (7, 3),
            (123_456, 16),
            (123_456, 4),
            (u64::MAX, 24),
        ] {
            let mut want = format!("{k:0size$}");
            want.truncate(size);
            assert_eq!(key(k, size), want.as_bytes(), "key({k}, {size})");
        }
    }
}
