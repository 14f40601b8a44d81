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
        // A log line that cannot be written (stderr a pipe whose reader
        // has gone) is dropped. By default the subscriber reported that
        // with `eprintln!`, which panicked on the same pipe: the server
        // aborts on any panic.
        .log_internal_errors(false)
        .init();
    tessera_net::runtime::abort_on_panic();
    if let Err(e) = tessera_net::runtime::raise_open_files_limit() {
        tracing::warn!(error = %e, "cannot raise the open-files limit");
    }
    if let Err(e) = run() {
        say(std::io::stderr(), format_args!("error: {e:#}"));
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
        say(
            std::io::stdout(),
            format_args!(
                "tessera-server ready: listen {} shards {} ({}) data {} wal-sync {sync} metrics {metrics}",
                ready.listen,
                ready.shard_addresses.len(),
                ready.shard_addresses.join(" "),
                data.display(),
            ),
        );
    })?;
    say(
        std::io::stderr(),
        format_args!("tessera-server stopped cleanly"),
    );
    Ok(())
}

/// Writes a line to `out`, which may be a pipe whose reader has gone (a
/// script that waited for the ready line with `grep -m1`): that is not the
/// server's failure. `println!` and `eprintln!` panic there, and the server
/// aborts on any panic.
fn say(mut out: impl std::io::Write, line: std::fmt::Arguments) {
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
