//! `tessera-bench`: the load generator. Same workload against Tessera
//! (`tessera://HOST:PORT`, shard-aware) or Redis (`redis://HOST:PORT`).
//! See `--help` and docs/benchmarks.md.

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::json;
use std::io::Write;
use std::net::ToSocketAddrs;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tessera_bench::driver::Protocol;
use tessera_bench::report::{to_stdout, Summary};
use tessera_bench::runner::{self, Plan, Shared};
use tessera_bench::workload::{Distribution, OpKind, ValueSize, Workload};

/// The allocator `tessera-server` runs with, so the engine and the load
/// generator are measured as they ship.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "tessera-bench",
    about = "Load generator for Tessera and Redis",
    after_help = "A connection the server drops during the run reconnects: its requests in \
                  flight count as `connection lost` errors, failed attempts as `reconnect \
                  failed`; the run fails after 10 s without the server, and a preload at once."
)]
struct Args {
    /// tessera://HOST:PORT or redis://HOST:PORT
    #[arg(long, default_value = "tessera://127.0.0.1:7878")]
    target: String,
    /// set | get | txn | ping | mixed:<read%> | ycsb-a .. ycsb-f
    #[arg(long, default_value = "ycsb-a")]
    workload: String,
    /// uniform | zipfian | latest [default: the workload's own]
    #[arg(long)]
    distribution: Option<String>,
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// CPUs to pin load threads to, e.g. "1" or "2-3".
    #[arg(long)]
    cpus: Option<String>,
    /// Open loop at this many requests per second (latency from the
    /// intended send time; each thread wakes for each due time, so add
    /// --threads when the CPU line warns); closed loop when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Measured seconds (after warmup).
    #[arg(long)]
    duration: Option<f64>,
    /// Stop after this many requests instead.
    #[arg(long)]
    requests: Option<u64>,
    /// Seconds run before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    /// Bytes, or a range like 64-1024.
    #[arg(long, default_value = "100")]
    value_size: String,
    /// Insert every key once before the run.
    #[arg(long)]
    preload: bool,
    /// Tessera: send every request to the target address, as a client
    /// that does not know the shard map would; the shard a connection
    /// lands on forwards keys it does not own over the mesh.
    #[arg(long)]
    no_shard_routing: bool,
    /// Longest scan (ycsb-e), rows.
    #[arg(long, default_value_t = 100)]
    scan_length_max: u32,
    /// What the server's sync mode is, for the report (e.g. "always").
    #[arg(long)]
    durable: Option<String>,
    /// Print the final report as JSON.
    #[arg(long)]
    json: bool,
    /// Write <prefix>.<op>.hgrm percentile distributions.
    #[arg(long)]
    hgrm: Option<String>,
    /// Write an SVG with the latency spectrum and throughput over time.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// Tessera: file holding the server's token (its
    /// `--auth-token-file`) [default: $TESSERA_TOKEN, if set].
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    /// Speak TLS, trusting the CA certificates in this PEM file (e.g. the
    /// ca.pem of `tessera cert`), to Tessera (--tls-cert) or Redis
    /// (--tls-port).
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// Writes of the measured phase expire this many ms after them
    /// (Tessera: Put.ttl_ms; Redis: SET .. PX); the preload's never do.
    #[arg(long, default_value_t = 0)]
    ttl_ms: u64,
}

fn parse_cpus(s: &str) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<usize>()?..=b.parse::<usize>()?),
            None => out.push(part.parse()?),
        }
    }
    Ok(out)
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> anyhow::Result<()> {
    let (protocol, host) = match a.target.split_once("://") {
        Some(("tessera", h)) => (Protocol::Tessera, h),
        Some(("redis", h)) => (Protocol::Redis, h),
        _ => bail!("--target must be tessera://HOST:PORT or redis://HOST:PORT"),
    };
    let workload: Workload = a.workload.parse()?;
    let distribution = match &a.distribution {
        Some(d) => d.parse()?,
        None => workload.distribution,
    };
    if protocol == Protocol::Redis
        && workload
            .mix
            .iter()
            .any(|(op, _)| matches!(op, OpKind::Scan | OpKind::Txn))
    {
        bail!(
            "workload {} needs key-range scans or cross-shard transactions, which this Redis driver does not speak",
            workload.name
        );
    }
    if a.duration.is_none() && a.requests.is_none() {
        bail!("give --duration <seconds> or --requests <n>");
    }
    if a.connections == 0 || a.pipeline == 0 || a.threads == 0 || a.threads > a.connections {
        bail!("need connections >= threads >= 1 and pipeline >= 1");
    }
    let connect_options = tessera_client::ConnectOptions {
        client_name: "tessera-bench".into(),
        ..tessera_client::ConnectOptions::default()
    }
    .token_from(a.token_file.as_deref())
    .context("--token-file")?;
    let connect_options = tessera_client::ConnectOptions {
        tls: a
            .tls_ca
            .as_deref()
            .map(tessera_client::TlsOptions::from_ca_file)
            .transpose()
            .context("--tls-ca")?,
        ..connect_options
    };
    // Redis, or a client that does not know the shard map: every request
    // goes to the target address.
    let (addresses, slot_owner) = if protocol == Protocol::Redis || a.no_shard_routing {
        (
            vec![host
                .to_socket_addrs()?
                .next()
                .context("target resolves to nothing")?],
            Vec::new(),
        )
    } else {
        let mut client = tessera_client::Client::connect_with(host, &connect_options)
            .with_context(|| format!("connecting to {host}"))?;
        let (owner, shards) = match client.entry().call(&tessera_client::Request::Topology)? {
            tessera_client::Response::Topology {
                slot_owner, shards, ..
            } => (slot_owner, shards),
            other => bail!("unexpected topology reply {other:?}"),
        };
        let addresses = shards
            .iter()
            .map(|(_, addr)| {
                addr.to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .context("bad shard address")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        (addresses, owner)
    };
    let plan = Plan {
        protocol,
        addresses,
        slot_owner,
        connections: a.connections,
        pipeline: a.pipeline,
        threads: a.threads,
        cpus: a.cpus.as_deref().map(parse_cpus).transpose()?,
        rate: a.rate,
        duration: a.duration.map(Duration::from_secs_f64),
        requests: a.requests,
        warmup: Duration::from_secs_f64(a.warmup),
        workload: workload.clone(),
        distribution,
        keys: a.keys,
        key_size: a.key_size,
        value_size: a.value_size.parse::<ValueSize>()?,
        scan_length_max: a.scan_length_max.max(1),
        token: match protocol {
            Protocol::Tessera => connect_options.token,
            Protocol::Redis => None,
        },
        tls: connect_options.tls,
        ttl_ms: a.ttl_ms,
    };
    if a.preload {
        let t = Instant::now();
        runner::preload(&plan)?;
        if !a.quiet {
            eprintln!(
                "preloaded {} keys in {:.1}s",
                a.keys,
                t.elapsed().as_secs_f64()
            );
        }
    }
    let shared = Shared::new(a.keys);
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let worker = {
        let (plan, shared) = (plan.clone(), shared.clone());
        std::thread::spawn(move || runner::run(&plan, &shared))
    };
    let mut timeline = Vec::new();
    let mut last = 0u64;
    let mut tick = started + plan.warmup + Duration::from_secs(1);
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
        if Instant::now() < tick {
            continue;
        }
        let done = shared.completed.load(Ordering::Relaxed);
        let rate = (done - last) as f64;
        last = done;
        let second = (tick - started - plan.warmup).as_secs_f64();
        timeline.push((second, rate));
        let p99 = {
            let mut h = shared.interval.lock().expect("not poisoned");
            let p = h.value_at_quantile(0.99);
            h.reset();
            p
        };
        if !a.quiet {
            // Dropped if stderr's reader has gone: the run goes on.
            let _ = writeln!(
                std::io::stderr(),
                "[{second:>4.0}s] {rate:>10.0} ops/s  p99 {:>8.3} ms  errors {}",
                p99 as f64 / 1000.0,
                shared.errors.load(Ordering::Relaxed)
            );
        }
        tick += Duration::from_secs(1);
    }
    let results = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the load threads panicked"))??;
    let wall = started.elapsed().as_secs_f64();
    let measured = (wall - plan.warmup.as_secs_f64()).max(1e-3);
    let cpu = (cpu_seconds() - cpu_before) / wall;
    let summary = Summary::merge(results, measured, timeline, cpu, plan.threads);
    let header =
        format!(
        "target {} workload {} ({:?}) connections {} pipeline {} threads {} {} keys {} value {}B{}",
        a.target,
        workload.name,
        distribution,
        a.connections,
        a.pipeline,
        a.threads,
        match a.rate {
            Some(r) => format!("open loop {r:.0}/s"),
            None => "closed loop".into(),
        },
        a.keys,
        a.value_size,
        a.durable.as_deref().map(|d| format!(" durable {d}")).unwrap_or_default()
    );
    if a.json {
        let context = json!({"target": a.target, "workload": workload.name, "distribution": format!("{distribution:?}"),
            "connections": a.connections, "pipeline": a.pipeline, "threads": a.threads, "rate": a.rate,
            "keys": a.keys, "key_size": a.key_size, "value_size": a.value_size, "durable": a.durable});
        to_stdout(&format!("{}\n", summary.json(context)))?;
    } else {
        to_stdout(&summary.text(&header))?;
    }
    if let Some(prefix) = &a.hgrm {
        for path in summary.write_hgrm(prefix)? {
            eprintln!("wrote {path}");
        }
    }
    if let Some(path) = &a.plot {
        summary.plot(path, &format!("{} {}", a.target, workload.name))?;
        eprintln!("wrote {}", path.display());
    }
    if distribution == Distribution::Latest
        && !workload.mix.iter().any(|(op, _)| *op == OpKind::Insert)
        && !a.quiet
    {
        eprintln!("note: the latest distribution without inserts reads the highest-numbered keys");
    }
    Ok(())
}
