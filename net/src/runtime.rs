//! Starting and stopping the shards: one glommio executor per shard (pinned
//! to its CPU unless told to float, glommio's default 100 ms preempt timer:
//! a 1 ms timer lost woken tasks under CPU contention, see
//! docs/architecture.md), the channel mesh between them, the
//! listeners, the ready line, and a clean shutdown on SIGTERM/SIGINT
//! (stop accepting, finish in-flight writes, flush, exit 0).

use crate::config::{Config, Placement};
use crate::machine::{Fit, MemoryLimit};
use crate::server::{accept_loop, metrics_loop};
use crate::shard::{MeshMsg, Shard};
use crate::slots::SlotMap;
use anyhow::{bail, Context};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::LocalExecutorBuilder;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Duration;
use tessera_engine::{Engine, Options, WalRecovery};

/// Capacity of each mesh queue (one per ordered pair of shards): 1024
/// messages up to 9 shards, then fewer so that a shard's queues from all
/// its peers hold ~8192 together, down to 128. A full queue makes its
/// sender wait. Each slot is ~128 bytes, so at 1024 for any count, 64
/// shards held 4032 queues of 128 KiB (~500 MiB) and 128 shards ~2 GiB.
fn mesh_queue_depth(shards: usize) -> usize {
    let share = 8192 / shards.saturating_sub(1).max(1);
    1 << share.clamp(128, 1024).ilog2()
}

/// What the server reports once every shard listens.
#[derive(Debug, Clone)]
pub struct Ready {
    pub listen: SocketAddr,
    pub shard_addresses: Vec<String>,
    pub metrics: Option<SocketAddr>,
}

enum ShardStarted {
    Listening {
        shard: usize,
        own: SocketAddr,
        metrics: Option<SocketAddr>,
    },
    Failed(String),
}

/// Holds an exclusive lock on the data directory for the server's life.
struct DirLock {
    _file: std::fs::File,
}

fn lock_data_dir(config: &Config) -> anyhow::Result<DirLock> {
    std::fs::create_dir_all(&config.data)
        .with_context(|| format!("creating data directory {}", config.data.display()))?;
    let path = config.data.join("LOCK");
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "data directory {} is in use by another tessera-server",
            config.data.display()
        );
    }
    Ok(DirLock { _file: file })
}

/// Makes any panic end the process: logs it, then aborts. Unwinding out of
/// a shard ends only that shard's thread, and the server would go on
/// without it: its keys unreachable, other shards' messages to it
/// unanswered, nothing for a supervisor to see. And a panic may stop a
/// shard's engine halfway through a change, so its state cannot be
/// trusted after one. Aborting fails the whole server at once; a restart
/// recovers every acknowledged write from the WAL. For the server binary,
/// not embedders: an embedding process decides its own panic policy.
pub fn abort_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let backtrace = std::backtrace::Backtrace::capture();
        let backtrace = match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => format!("\n{backtrace}"),
            _ => String::new(),
        };
        let (name, location) = (
            thread.name().unwrap_or("unnamed"),
            info.location().map(|l| l.to_string()).unwrap_or_default(),
        );
        let message = info.payload_as_str().unwrap_or("(no message)");
        let what = "aborting the server (a restart recovers acknowledged writes from the WAL)";
        if tracing::dispatcher::has_been_set() {
            tracing::error!(thread = name, %location, "panic: {message}; {what}{backtrace}");
        } else {
            eprintln!("thread {name} panicked at {location}: {message}; {what}{backtrace}");
        }
        std::process::abort();
    }));
}

/// Raises this process's soft limit on open files to its hard limit, and
/// returns the limit then in force. The soft limit is often 1024: ~1000
/// connections used it up, and then a shard could not open a table or a
/// WAL segment either, so its flushes failed. For the server binary: the
/// limit is the whole process's.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = open_files_limits()?;
    // An unlimited hard limit still stops at the kernel's `nr_open`.
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|n| n.trim().parse::<u64>().ok())
        .map_or(limit.rlim_max, |n| n.min(limit.rlim_max));
    if limit.rlim_cur < ceiling {
        limit.rlim_cur = ceiling;
        // SAFETY: setrlimit reads a struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// This process's soft and hard limits on open files.
fn open_files_limits() -> std::io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a struct we own.
    match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => Ok(limit),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Fewer connections per shard than this, for the open-files limit, is
/// worth a warning.
const CONNECTIONS_FEW: usize = 1024;

/// Connections per shard that an open-files limit leaves room for: half
/// of it at most goes to connections, the rest to the engines' tables,
/// WAL segments and manifests, the rings, listeners and the mesh.
fn connections_room(wanted: usize, shards: usize, open_files: u64) -> usize {
    let room = open_files / 2 / shards.max(1) as u64;
    wanted.min(usize::try_from(room).unwrap_or(usize::MAX).max(1))
}

/// Claims the shared listen address for this process: the claim is held
/// until it is dropped, and fails while another process listens there.
///
/// Every shard listens on the shared address with SO_REUSEPORT, so the
/// kernel spreads connections over them; but the kernel lets any process
/// of the same user join that group, and a second server (another data
/// directory, same `--listen`) used to start and take half the
/// connections, each client then talking to whichever database it drew.
/// So first a plain bind, which fails on an address anyone listens on,
/// with or without SO_REUSEPORT; and for the moment between that check
/// and the shards' own binds, an abstract Unix socket named after the
/// address, which only one process can hold. An address in use is
/// retried briefly ([`InUseRetry`]).
fn claim_listen_address(addr: SocketAddr) -> anyhow::Result<std::os::unix::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
    let name = UnixAddr::from_abstract_name(format!("tessera-server {addr}"))?;
    let claim = || -> std::io::Result<UnixListener> {
        let claim = UnixListener::bind_addr(&name)?;
        drop(StdListener::bind(addr)?);
        Ok(claim)
    };
    let retry = InUseRetry::new();
    loop {
        match claim() {
            Err(e) if retry.again(&e) => std::thread::sleep(IN_USE_RETRY_EVERY),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(e).with_context(|| {
                    format!(
                        "listening on {addr}: the address is in use \
                         (by another tessera-server or another program)"
                    )
                })
            }
            result => return result.with_context(|| format!("listening on {addr}")),
        }
    }
}

/// How long a start retries an address in use, and how often. A server
/// killed with its connections open leaves its sockets until the kernel
/// has torn down its io_uring rings (~5-10 ms here), and a supervisor may
/// restart it sooner than that.
const IN_USE_RETRY_FOR: Duration = Duration::from_secs(2);
const IN_USE_RETRY_EVERY: Duration = Duration::from_millis(20);

/// Whether to bind again after an error: while the address is in use, up
/// to [`IN_USE_RETRY_FOR`] after the first attempt.
struct InUseRetry {
    until: std::time::Instant,
}

impl InUseRetry {
    fn new() -> Self {
        InUseRetry {
            until: std::time::Instant::now() + IN_USE_RETRY_FOR,
        }
    }

    fn again(&self, e: &std::io::Error) -> bool {
        e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < self.until
    }
}

/// A listening socket for a shard. `shared`: with SO_REUSEPORT, for the
/// address every shard listens on; else the shard's alone (its own port,
/// metrics), and binding an address another process listens on fails
/// instead of sharing it. SO_REUSEADDR either way: the connections of a
/// server killed with clients connected stay in FIN_WAIT2 for ~60 s, and
/// the next start's binds (and [`claim_listen_address`]'s plain one) pass
/// them only if they carry it. An address in use is retried briefly
/// ([`InUseRetry`]).
async fn listener(addr: SocketAddr, shared: bool) -> anyhow::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::IntoRawFd;
    let bind = || -> std::io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(shared)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket)
    };
    let retry = InUseRetry::new();
    let socket = loop {
        match bind() {
            Err(e) if retry.again(&e) => glommio::timer::sleep(IN_USE_RETRY_EVERY).await,
            result => break result.with_context(|| format!("listening on {addr}"))?,
        }
    };
    // SAFETY: a bound, listening TCP socket whose descriptor we own and
    // hand over; glommio makes it non-blocking.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(socket.into_raw_fd()) })
}

/// A port nobody listens on right now (for `--listen host:0`).
fn free_port(ip: std::net::IpAddr) -> anyhow::Result<u16> {
    Ok(StdListener::bind((ip, 0))?.local_addr()?.port())
}

/// A server running on threads of this process (tests, embedding). It
/// shuts down cleanly when stopped or dropped.
pub struct Embedded {
    pub ready: Ready,
    shutdown: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Embedded {
    /// Starts the server `config` describes and returns once every shard
    /// listens.
    pub fn start(config: Config) -> anyhow::Result<Embedded> {
        let shutdown = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let stop = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("tessera-embedded".into())
            .spawn(move || {
                run(config, stop, |ready| {
                    let _ = tx.send(ready.clone());
                })
            })?;
        match rx.recv() {
            Ok(ready) => Ok(Embedded {
                ready,
                shutdown,
                thread: Some(thread),
            }),
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => bail!("the server stopped before it was ready"),
                Err(_) => bail!("the server thread panicked while starting"),
            },
        }
    }

    /// Shuts the server down and waits for it.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.store(true, Ordering::SeqCst);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => bail!("the server thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs the server until `shutdown` becomes true. Calls `on_ready` once
/// every shard is listening.
pub fn run(
    mut config: Config,
    shutdown: Arc<AtomicBool>,
    on_ready: impl FnOnce(&Ready),
) -> anyhow::Result<()> {
    let _lock = lock_data_dir(&config)?;
    let slots = Arc::new(SlotMap::load_or_create(&config.data, config.shards)?);
    if config.listen.port() == 0 {
        config.listen.set_port(free_port(config.listen.ip())?);
    }
    let _claim = claim_listen_address(config.listen)?;
    if let Ok(libc::rlimit {
        rlim_cur: open_files,
        ..
    }) = open_files_limits()
    {
        let room = connections_room(config.connections_max, config.shards, open_files);
        if room < config.connections_max {
            let why = "the open-files limit leaves room for fewer connections than \
                       --connections-max (half of it goes to connections)";
            let (wanted, room_per_shard) = (config.connections_max, room);
            // A warning only when the room is small: a limit of 20,000
            // already takes some of the default 10,000 per shard away.
            if room < CONNECTIONS_FEW {
                tracing::warn!(
                    open_files,
                    connections_max = wanted,
                    connections_per_shard = room_per_shard,
                    "{why}; raise it (ulimit -n, LimitNOFILE= in systemd)"
                );
            } else {
                tracing::info!(
                    open_files,
                    connections_max = wanted,
                    connections_per_shard = room_per_shard,
                    "{why}"
                );
            }
            config.connections_max = room;
        }
    }
    if let Some(limit) = config.memory_limit {
        let room = crate::machine::connections_for_memory(limit.bytes, config.shards);
        if room < config.connections_max {
            tracing::info!(
                limit_mib = limit.bytes >> 20,
                of = limit.of(),
                connections_max = config.connections_max,
                connections_per_shard = room,
                "the memory limit leaves room for fewer connections than --connections-max \
                 (a third of it, at 128 KiB each)"
            );
            config.connections_max = room;
        }
    }
    let config = Arc::new(config);
    let n = config.shards;
    if config.shards_from_data {
        tracing::info!(
            shards = n,
            data = %config.data.display(),
            "the data directory was written with this many shards; starting that many"
        );
    }
    match &config.placement {
        Placement::Pinned(cpus) => {
            let cpus: Vec<String> = cpus.iter().map(usize::to_string).collect();
            tracing::info!(shards = n, cpus = %cpus.join(","), "shards pinned, shard i to the i-th CPU")
        }
        Placement::Floating => tracing::info!(shards = n, "shards float (--cpus any)"),
    }
    log_memory_fit(&config);
    if config.prefault_memory {
        prefault(config.engine.memory_budget() * n, n, config.memory_limit);
    }
    let mesh = (n > 1).then(|| MeshBuilder::<MeshMsg, _>::full(n, mesh_queue_depth(n)));
    let addresses: Arc<OnceLock<Vec<String>>> = Arc::new(OnceLock::new());
    let (started_tx, started_rx) = mpsc::channel();
    let mut executors = Vec::new();
    for i in 0..n {
        let placement = match &config.placement {
            Placement::Pinned(cpus) => glommio::Placement::Fixed(cpus[i]),
            Placement::Floating => glommio::Placement::Unbound,
        };
        let (config, slots, mesh, addresses, shutdown, started) = (
            config.clone(),
            slots.clone(),
            mesh.clone(),
            addresses.clone(),
            shutdown.clone(),
            started_tx.clone(),
        );
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("tessera-shard-{i}"))
            .spawn(move || async move {
                let result = shard_main(
                    i,
                    config,
                    slots,
                    mesh,
                    addresses,
                    shutdown.clone(),
                    started.clone(),
                )
                .await;
                if let Err(e) = &result {
                    let _ = started.send(ShardStarted::Failed(format!("shard {i}: {e:#}")));
                    shutdown.store(true, Ordering::SeqCst);
                }
                result
            })
            .with_context(|| format!("starting the executor of shard {i}"))?;
        executors.push(handle);
    }
    drop(started_tx);
    let mut own = vec![String::new(); n];
    let mut metrics = None;
    let mut failure = None;
    for _ in 0..n {
        match started_rx.recv() {
            Ok(ShardStarted::Listening {
                shard,
                own: addr,
                metrics: m,
            }) => {
                own[shard] = addr.to_string();
                metrics = metrics.or(m);
            }
            Ok(ShardStarted::Failed(e)) => {
                failure = Some(e);
                break;
            }
            Err(_) => break,
        }
    }
    if failure.is_none() && own.iter().all(|a| !a.is_empty()) {
        let _ = addresses.set(own.clone());
        on_ready(&Ready {
            listen: config.listen,
            shard_addresses: own,
            metrics,
        });
    } else {
        shutdown.store(true, Ordering::SeqCst);
    }
    let mut errors = Vec::new();
    for handle in executors {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(format!("executor failed: {e}")),
        }
    }
    if let Some(e) = failure {
        bail!(e);
    }
    if let Some(e) = errors.into_iter().next() {
        bail!(e);
    }
    Ok(())
}

/// Says how the memory settings were sized to the memory limit.
fn log_memory_fit(config: &Config) {
    let Some(limit) = config.memory_limit else {
        return;
    };
    let limit_mib = limit.bytes >> 20;
    let of = limit.of();
    let (memtable_mib, cache_mib, row_cache_mib) = (
        config.engine.memtable_bytes_max >> 20,
        config.engine.block_cache_bytes >> 20,
        config.engine.row_cache_bytes >> 20,
    );
    match config.memory_fit {
        Fit::Fits => {}
        Fit::Shrunk {
            from_bytes,
            to_bytes,
        } => tracing::info!(
            limit_mib,
            of,
            from_mib = from_bytes >> 20,
            to_mib = to_bytes >> 20,
            memtable_mib,
            cache_mib,
            row_cache_mib,
            "memory settings not given were shrunk for the shards to fit a third of the memory limit"
        ),
        Fit::Over { budget_bytes } => tracing::warn!(
            limit_mib,
            of,
            budget_mib = budget_bytes >> 20,
            memtable_mib,
            cache_mib,
            row_cache_mib,
            "the shards' memory budget exceeds a third of the memory limit: lower --memtable-bytes, \
             --cache-bytes or --row-cache-bytes, or run fewer shards"
        ),
    }
}

/// Touches the shards' memory budget before they start, one thread per
/// shard (see `tessera_engine::memory::prefault`), at most half the memory
/// the kernel reports available (and the cgroup allows): a budget the
/// machine cannot hold would otherwise be forced into memory at startup,
/// and a budget is a ceiling the shards may never reach.
fn prefault(budget: usize, shards: usize, limit: Option<MemoryLimit>) {
    let available = crate::machine::available(limit);
    let bytes = prefault_bytes(budget, available);
    if bytes < budget {
        tracing::warn!(
            budget_mib = budget >> 20,
            available_mib = available.unwrap_or(0) >> 20,
            prefault_mib = bytes >> 20,
            "memory budget exceeds half the available memory; prefaulting part of it"
        );
    }
    let started = std::time::Instant::now();
    tessera_engine::memory::prefault(bytes, shards);
    tracing::info!(
        mib = bytes >> 20,
        ms = started.elapsed().as_millis() as u64,
        "memory budget prefaulted"
    );
}

/// How much of `budget` to prefault given the available memory (`None`:
/// unknown, so none).
fn prefault_bytes(budget: usize, available: Option<usize>) -> usize {
    available.map_or(0, |a| budget.min(a / 2))
}

async fn shard_main(
    i: usize,
    config: Arc<Config>,
    slots: Arc<SlotMap>,
    mesh: Option<MeshBuilder<MeshMsg, glommio::channels::channel_mesh::Full>>,
    addresses: Arc<OnceLock<Vec<String>>>,
    shutdown: Arc<AtomicBool>,
    started: mpsc::Sender<ShardStarted>,
) -> anyhow::Result<()> {
    // Join the mesh first: a peer that fails later must not leave the
    // others waiting in `join`.
    let (senders, receivers) = match mesh {
        Some(m) => {
            let (s, r) = m
                .join()
                .await
                .map_err(|_| anyhow::anyhow!("cannot join the shard mesh"))?;
            (Some(s), Some(r))
        }
        None => (None, None),
    };
    let opts = Options {
        clock_node: i as u8,
        ..config.engine.clone()
    };
    let dir = config.data.join(format!("shard-{i}"));
    let recovery = opts.wal_recovery;
    let engine = match Engine::open(&dir, opts).await {
        Ok(engine) => engine,
        // A damaged WAL refuses the start: say how to start anyway.
        Err(e) if e.is_corruption() && recovery == WalRecovery::Strict => {
            return Err(anyhow::anyhow!(
                "opening {}: {e}; if the damage is in the WAL, --wal-recovery point-in-time \
                 starts from the records before it and sets the rest of the log aside, losing \
                 its writes",
                dir.display()
            ))
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("opening {}", dir.display()))),
    };
    let shared = listener(config.listen, true).await?;
    let own_port = if config.shard_base_port == 0 {
        0
    } else {
        config.shard_base_port + i as u16
    };
    let own_addr = SocketAddr::new(config.listen.ip(), own_port);
    let own = listener(own_addr, false).await?;
    let own_addr = own.local_addr()?;
    let metrics = match (i, config.metrics) {
        (0, Some(addr)) => Some(listener(addr, false).await.context("metrics")?),
        _ => None,
    };
    let metrics_addr = metrics.as_ref().map(|m| m.local_addr()).transpose()?;
    let shard = Shard::new(i, engine.clone(), slots, config.clone(), addresses, senders);
    let mesh_tasks = match receivers {
        Some(r) => shard.serve_mesh(r),
        None => Vec::new(),
    };
    // Resolving talks to every peer: a peer that failed to start would
    // never answer, so give up once the server is told to stop.
    unless_stopped(&shutdown, shard.resolve_in_doubt())
        .await
        .with_context(|| format!("resolving shard {i}'s in-doubt transactions"))?;
    let mut tasks = vec![
        glommio::spawn_local(accept_loop(shard.clone(), shared)),
        glommio::spawn_local(accept_loop(shard.clone(), own)),
    ];
    if let Some(m) = metrics {
        tasks.push(glommio::spawn_local(metrics_loop(shard.clone(), m)));
    }
    let _ = started.send(ShardStarted::Listening {
        shard: i,
        own: own_addr,
        metrics: metrics_addr,
    });
    while !shutdown.load(Ordering::SeqCst) {
        glommio::timer::sleep(Duration::from_millis(20)).await;
        let credentials = &config.credentials;
        if i == 0 && credentials.reload_requested.swap(false, Ordering::SeqCst) {
            // A few small files: read inline on this shard.
            match credentials.reload() {
                Ok(()) => tracing::info!("credentials reloaded (token, TLS certificate)"),
                Err(e) => tracing::error!(
                    error = %format!("{e:#}"),
                    "credentials not reloaded; the old ones stay in use"
                ),
            }
        }
        shard.refresh_credentials();
    }
    shard.shutting_down.set(true);
    // Dropping the accept tasks closes the listeners.
    drop(tasks);
    // In-flight requests finish; then open connections are closed, and
    // queued writes are written and synced.
    glommio::timer::sleep(Duration::from_millis(50)).await;
    shard.close_connections();
    let closed = engine.close().await;
    // Peers may still be closing: this shard stops answering them only
    // now, after its own close.
    drop(mesh_tasks);
    drop(shard);
    drop(engine);
    // Cancelled tasks are dropped, and the files of a dropped engine
    // closed, on the executor's next turns (glommio submits a file's close
    // with its next batch): give it those turns, or the executor ends with
    // the files still open.
    for _ in 0..2 {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    closed.context("closing the engine")?;
    tracing::info!(shard = i, "shard stopped");
    Ok(())
}

/// Runs `work` to its end, or until `shutdown` is set (another shard failed
/// to start, or a signal came).
async fn unless_stopped<T>(
    shutdown: &AtomicBool,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let stopped = async {
        while !shutdown.load(Ordering::SeqCst) {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        bail!("the server stopped while this shard was starting")
    };
    futures_lite::future::or(work, stopped).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_queues_shrink_as_shards_grow() {
        let depths: Vec<usize> = [2, 9, 10, 16, 33, 64, 100, 256]
            .into_iter()
            .map(mesh_queue_depth)
            .collect();
        assert_eq!(depths, [1024, 1024, 512, 512, 256, 128, 128, 128]);
    }

    #[test]
    fn prefault_stops_at_half_the_available_memory() {
        let available = Some(2 << 30);
        assert_eq!(prefault_bytes(512 << 20, available), 512 << 20);
        assert_eq!(prefault_bytes(4 << 30, available), 1 << 30);
        assert_eq!(prefault_bytes(512 << 20, None), 0);
    }

    #[test]
    fn only_an_address_in_use_is_called_in_use() {
        let taken = StdListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = format!("{:#}", claim_listen_address(addr).unwrap_err());
        assert!(err.contains("the address is in use"), "{err}");
        // TEST-NET-1: no machine has it.
        let absent: SocketAddr = "192.0.2.1:7878".parse().unwrap();
        let err = format!("{:#}", claim_listen_address(absent).unwrap_err());
        assert!(err.starts_with("listening on 192.0.2.1:7878: "), "{err}");
        assert!(!err.contains("in use"), "{err}");
        drop(taken);
        assert!(claim_listen_address(addr).is_ok());
    }

    #[test]
    fn connections_get_at_most_half_the_open_files_limit() {
        assert_eq!(connections_room(10_000, 2, 1 << 20), 10_000);
        assert_eq!(connections_room(10_000, 2, 1024), 256);
        assert_eq!(connections_room(10_000, 1, 1024), 512);
        assert_eq!(connections_room(100, 1, 1024), 100);
        assert_eq!(connections_room(10_000, 4, 4), 1);
    }
}
