//! `tessera-server`: starts one shard per core. See `--help` and
//! docs/operations.md.

use clap::Parser;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tessera_net::config::{Config, Flags};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    tessera_engine::memory::keep_freed_pages();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tessera_net::runtime::abort_on_panic();
    if let Err(e) = tessera_net::runtime::raise_open_files_limit() {
        tracing::warn!(error = %e, "cannot raise the open-files limit");
    }
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let config = Config::resolve(Flags::parse())?;
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, shutdown.clone())?;
    }
    // SIGHUP: read the token and TLS files again.
    signal_hook::flag::register(
        signal_hook::consts::SIGHUP,
        config.credentials.reload_requested.clone(),
    )?;
    let (data, sync) = (config.data.clone(), config.engine.wal_sync);
    tessera_net::runtime::run(config, shutdown, |ready| {
        let metrics = ready
            .metrics
            .map(|m| format!("http://{m}/metrics"))
            .unwrap_or_else(|| "off".into());
        println!(
            "tessera-server ready: listen {} shards {} ({}) data {} wal-sync {sync} metrics {metrics}",
            ready.listen,
            ready.shard_addresses.len(),
            ready.shard_addresses.join(" "),
            data.display(),
        );
    })?;
    eprintln!("tessera-server stopped cleanly");
    Ok(())
}
