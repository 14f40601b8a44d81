//! The load generator's engine: `threads` OS threads (optionally pinned),
//! each running a mio event loop over its share of the connections. A
//! connection keeps up to `pipeline` requests in flight. Closed loop: a
//! completion sends the next request. Open loop (`rate`): requests are due
//! on a fixed schedule and latency is measured from the scheduled time, so
//! a stalled server shows up as queueing delay (no coordinated omission).
//!
//! Against Tessera a logical connection holds one socket per shard and
//! routes each key to its owner's port (shard-aware); against Redis it is
//! one socket.
//!
//! A connection the server drops during the measured phase (a restart, a
//! connection limit, a reset) does not end the run: its requests in flight
//! count as `connection lost` errors, it reconnects with a backoff (each
//! failed attempt a `reconnect failed` error) and goes on; after
//! [`RECONNECT_GIVE_UP`] without the server the run fails. A preload needs
//! every key written and fails at once.

use crate::driver::{Command, Protocol, Reply};
use crate::workload::{key, Distribution, KeyChooser, OpKind, ValueSize, Workload};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use rand::{Rng, SeedableRng};
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Open-loop requests waiting for a free pipeline slot before the run is
/// declared overloaded and ends, those requests counted as [`UNSENT`].
const BACKLOG_MAX: usize = 1_000_000;
/// The error kind of open-loop requests never sent because the server fell
/// [`BACKLOG_MAX`] requests behind the schedule.
pub const UNSENT: &str = "unsent: the server fell 1M requests behind --rate, the run ended early";
/// How long in-flight requests may take to drain after the run ends.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// The longest a thread waits in `poll` before it looks at the clock.
const POLL_MAX: Duration = Duration::from_millis(5);
/// The first wait before reconnecting a lost connection; each failed
/// attempt doubles it, up to [`RECONNECT_MAX`].
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// How long a connection may stay lost before the run fails.
const RECONNECT_GIVE_UP: Duration = Duration::from_secs(10);
/// The longest a (re)connect waits for the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Wakes an open-loop thread when its next request is due.
///
/// mio's poll timeout has millisecond resolution (epoll's; a shorter one
/// rounds up to 1 ms), so a thread whose next request was due in 200 µs
/// slept ~1 ms, and every request due meanwhile went out late, its
/// latency counted from its schedule: at 2,000 GETs/s against Redis the
/// median read 0.59 ms, ~0.5 ms of it the load generator's own sleep. A
/// timerfd armed for the due time wakes the thread within microseconds.
struct Alarm {
    timer: TimerFd,
    /// The due time the timer is armed for.
    armed_for: Option<Instant>,
}

impl Alarm {
    const TOKEN: Token = Token(usize::MAX);

    fn new(poll: &Poll) -> std::io::Result<Alarm> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        poll.registry().register(
            &mut SourceFd(&timer.as_fd().as_raw_fd()),
            Alarm::TOKEN,
            Interest::READABLE,
        )?;
        Ok(Alarm {
            timer,
            armed_for: None,
        })
    }

    /// Arms the timer for `due` unless it already is; a `due` already
    /// past needs no timer (the caller polls without waiting).
    fn arm(&mut self, due: Instant) -> std::io::Result<()> {
        let after = due.saturating_duration_since(Instant::now());
        if self.armed_for == Some(due) || after.is_zero() {
            return Ok(());
        }
        self.timer.set(
            Expiration::OneShot(TimeSpec::from_duration(after)),
            TimerSetTimeFlags::empty(),
        )?;
        self.armed_for = Some(due);
        Ok(())
    }

    /// The timer fired. Its count needs no read: arming it again resets
    /// the count, and the next expiry is a new edge for epoll.
    fn fired(&mut self) {
        self.armed_for = None;
    }
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub protocol: Protocol,
    /// One address per shard (Tessera) or the one Redis address.
    pub addresses: Vec<SocketAddr>,
    /// Slot owners for routing (Tessera); empty for Redis.
    pub slot_owner: Vec<u16>,
    pub connections: usize,
    pub pipeline: usize,
    pub threads: usize,
    pub cpus: Option<Vec<usize>>,
    /// Total requests per second (open loop), or closed loop.
    pub rate: Option<f64>,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    pub warmup: Duration,
    pub workload: Workload,
    pub distribution: Distribution,
    pub keys: u64,
    pub key_size: usize,
    pub value_size: ValueSize,
    pub scan_length_max: u32,
    /// Tessera: the server's token (`--auth-token-file`), said in a Hello
    /// on every socket before the run.
    pub token: Option<tessera_client::Token>,
    /// TLS (Tessera's `--tls-cert`, Redis's `--tls-port`).
    pub tls: Option<tessera_client::TlsOptions>,
    /// Writes of the measured phase expire this many ms after them (0:
    /// never); the preload's do not.
    pub ttl_ms: u64,
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

/// State the threads share with the progress reporter.
pub struct Shared {
    pub completed: AtomicU64,
    pub errors: AtomicU64,
    pub issued: AtomicU64,
    pub next_insert: AtomicU64,
    /// Latencies since the last progress line (µs).
    pub interval: Mutex<Histogram<u64>>,
}

impl Shared {
    pub fn new(keys: u64) -> Arc<Shared> {
        Arc::new(Shared {
            completed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            next_insert: AtomicU64::new(keys),
            interval: Mutex::new(new_histogram()),
        })
    }
}

/// What one thread measured.
pub struct ThreadResult {
    pub histograms: Vec<Histogram<u64>>,
    pub errors: HashMap<String, u64>,
    /// Open loop: how late (µs) the thread took each measured request up
    /// after its scheduled time (its own delay, not a wait for a free
    /// connection slot). Empty in closed loop.
    pub send_lag: Histogram<u64>,
}

#[derive(Clone, Copy)]
enum Mode {
    /// Insert keys `[0, keys)` once, as fast as possible; nothing recorded.
    Preload {
        keys: u64,
    },
    Run,
}

struct Pending {
    kind: OpKind,
    intended: Instant,
    /// For read-modify-write: the key to write once the read returns.
    rmw_key: Option<Vec<u8>>,
    conn: usize,
}

struct Socket {
    stream: TcpStream,
    /// Over TLS: the session; `wbuf` and `rbuf` hold plaintext.
    tls: Option<rustls::ClientConnection>,
    wbuf: Vec<u8>,
    rbuf: BytesMut,
    /// Requests sent on this socket, counted (the high half of an id).
    sent: u64,
    /// Tessera's requests awaiting replies. A request's id is its slot
    /// here (the low 32 bits) under its count: a reply finds its request
    /// by index, and one naming a slot since reused matches nothing. A
    /// hash map by id rehashed away its tombstones every so often.
    awaiting: Slab<(u64, Pending)>,
    in_order: VecDeque<Pending>,
    writable_interest: bool,
}

struct Conn {
    sockets: Vec<usize>,
    inflight: usize,
    /// Lost: when it was lost, the next reconnect attempt, the wait after
    /// a failed one, and why.
    lost: Option<Lost>,
}

struct Lost {
    since: Instant,
    retry_at: Instant,
    backoff: Duration,
    why: String,
}

/// Opens one socket; with TLS or a token, says hello first (over TLS,
/// after the handshake), and returns the TLS session with the socket.
fn connect(
    addr: SocketAddr,
    plan: &Plan,
) -> anyhow::Result<(TcpStream, Option<rustls::ClientConnection>)> {
    let (s, tls) = match (&plan.token, &plan.tls) {
        (None, None) => (
            std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?,
            None,
        ),
        // Redis says no hello: the loop drives the handshake.
        (_, Some(tls)) if plan.protocol == Protocol::Redis => (
            std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?,
            Some(tls.session(&addr)?),
        ),
        (token, tls) => {
            let mut hello =
                tessera_client::Connection::open_with(addr, CONNECT_TIMEOUT, tls.as_ref())?;
            hello.hello("tessera-bench", token.as_ref())?;
            hello.into_parts()?
        }
    };
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    Ok((TcpStream::from_std(s), tls))
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Inserts every key once (not measured).
pub fn preload(plan: &Plan) -> anyhow::Result<()> {
    let shared = Shared::new(0);
    run_threads(plan, &shared, Mode::Preload { keys: plan.keys }).map(|_| ())
}

/// Runs the measured phase.
pub fn run(plan: &Plan, shared: &Arc<Shared>) -> anyhow::Result<Vec<ThreadResult>> {
    run_threads(plan, shared, Mode::Run)
}

fn run_threads(plan: &Plan, shared: &Arc<Shared>, mode: Mode) -> anyhow::Result<Vec<ThreadResult>> {
    let start = Instant::now();
    let handles: Vec<_> = (0..plan.threads)
        .map(|t| {
            let (plan, shared) = (plan.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("bench-{t}"))
                .spawn(move || thread_main(&plan, &shared, t, mode, start))
        })
        .collect::<Result<_, _>>()?;
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))?
        })
        .collect()
}

// `issue!` needs `conns` by index while the loops walk it.
#[allow(clippy::needless_range_loop)]
fn thread_main(
    plan: &Plan,
    shared: &Shared,
    t: usize,
    mode: Mode,
    start: Instant,
) -> anyhow::Result<ThreadResult> {
    if let Some(cpus) = &plan.cpus {
        pin(cpus[t % cpus.len()]);
    }
    let my_conns =
        (plan.connections / plan.threads) + usize::from(t < plan.connections % plan.threads);
    let mut poll = Poll::new()?;
    let mut sockets: Vec<Socket> = Vec::new();
    let mut conns: Vec<Conn> = Vec::new();
    for _ in 0..my_conns {
        let mut conn = Conn {
            sockets: Vec::new(),
            inflight: 0,
            lost: None,
        };
        for addr in &plan.addresses {
            conn.sockets.push(sockets.len());
            sockets.push(open_socket(*addr, plan, &poll, sockets.len())?);
        }
        conns.push(conn);
    }
    // Socket `i` belongs to connection `i / per_conn`.
    let per_conn = plan.addresses.len();
    // Not a cryptographic generator: StdRng's ChaCha refills were ~4% of
    // the load generator's CPU under 16-deep PINGs.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5eed ^ (t as u64) << 32);
    let mut chooser = KeyChooser::new(plan.distribution, plan.keys);
    let values: Vec<u8> = (0..plan.value_size.max + 4096)
        .map(|_| rng.gen_range(b'a'..=b'z'))
        .collect();
    let mut histograms: Vec<Histogram<u64>> = OpKind::ALL.iter().map(|_| new_histogram()).collect();
    let mut interval = new_histogram();
    let mut send_lag = new_histogram();
    let mut errors: HashMap<String, u64> = HashMap::new();
    let record_from = start + plan.warmup;
    let end = match mode {
        Mode::Preload { .. } => None,
        Mode::Run => plan.duration.map(|d| record_from + d),
    };
    let per_thread_rate = plan.rate.map(|r| r / plan.threads as f64);
    let gap = per_thread_rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let mut next_due = start;
    let mut backlog: VecDeque<Instant> = VecDeque::new();
    let mut alarm = match gap {
        Some(_) => Some(Alarm::new(&poll)?),
        None => None,
    };
    let mut events = Events::with_capacity(1024);
    let mut read_chunk = vec![0u8; 64 << 10];
    // Counted once: `other_shard_key` runs per transaction, and counting
    // over every slot there was 70% of the load generator's CPU.
    let shards = plan.slot_owner.iter().max().map_or(1, |&m| m as usize + 1);
    let mut last_flush = Instant::now();
    let mut stopping = false;
    let mut stop_at = None;
    // The preload writes keys that stay.
    let ttl_ms = match mode {
        Mode::Preload { .. } => 0,
        Mode::Run => plan.ttl_ms,
    };

    // Issues one new operation on `c`, due at `intended`. Returns false
    // when there is nothing more to issue.
    macro_rules! issue {
        ($c:expr, $intended:expr) => {{
            // Claim one of `--requests` before issuing: threads and
            // connections issue in turn, and a count checked once per pass
            // overshot the limit by up to connections × pipeline.
            let claimed = !matches!(mode, Mode::Run)
                || plan
                    .requests
                    .is_none_or(|r| shared.issued.fetch_add(1, Ordering::Relaxed) < r);
            let kind = match mode {
                Mode::Preload { .. } => OpKind::Insert,
                Mode::Run => plan.workload.pick(&mut rng),
            };
            let index = if !claimed {
                None
            } else if kind == OpKind::Insert {
                let i = shared.next_insert.fetch_add(1, Ordering::Relaxed);
                match mode {
                    Mode::Preload { keys } if i >= keys => None,
                    _ => Some(i),
                }
            } else {
                chooser.inserted = shared.next_insert.load(Ordering::Relaxed);
                Some(chooser.next(&mut rng))
            };
            match index {
                None => false,
                Some(index) => {
                    let k = key(index, plan.key_size);
                    let len = plan.value_size.next(&mut rng);
                    let offset = rng.gen_range(0..4096);
                    let value = &values[offset..offset + len];
                    let other = (kind == OpKind::Txn)
                        .then(|| other_shard_key(plan, shards, &k, &mut chooser, &mut rng));
                    let command = match kind {
                        OpKind::Txn => Command::Txn(&k, other.as_deref().expect("txn key"), value),
                        OpKind::Read | OpKind::ReadModifyWrite => Command::Get(&k),
                        OpKind::Update | OpKind::Insert => Command::Set(&k, value, ttl_ms),
                        OpKind::Scan => Command::Scan(&k, rng.gen_range(1..=plan.scan_length_max)),
                        OpKind::Ping => Command::Ping,
                    };
                    let rmw_key = (kind == OpKind::ReadModifyWrite).then(|| k.clone());
                    let s = route(plan, &conns[$c], &k);
                    send(
                        &mut sockets[s],
                        plan.protocol,
                        &command,
                        Pending {
                            kind,
                            intended: $intended,
                            rmw_key,
                            conn: $c,
                        },
                    );
                    conns[$c].inflight += 1;
                    true
                }
            }
        }};
    }

    // Connection `c` failed with `e` (see [`lose`]).
    macro_rules! lose {
        ($c:expr, $e:expr) => {
            lose(
                &mut conns[$c],
                &mut sockets,
                &poll,
                mode,
                &mut errors,
                shared,
                $e,
            )?
        };
    }

    loop {
        let now = Instant::now();
        if !stopping {
            for c in 0..conns.len() {
                if conns[c].lost.as_ref().is_some_and(|l| l.retry_at <= now) {
                    reconnect(
                        plan,
                        &poll,
                        &mut conns[c],
                        &mut sockets,
                        &mut errors,
                        shared,
                    )?;
                }
            }
        }
        if !stopping {
            // A preload inserts every key, whatever `--requests` says of
            // the measured phase.
            let out_of_requests = matches!(mode, Mode::Run)
                && plan
                    .requests
                    .is_some_and(|r| shared.issued.load(Ordering::Relaxed) >= r);
            if end.is_some_and(|e| now >= e) || out_of_requests {
                stopping = true;
                stop_at = Some(now);
            }
        }
        if !stopping {
            match gap {
                Some(gap) => {
                    while next_due <= now {
                        // How late this thread took the request up: its
                        // own delay, apart from any wait for a free slot
                        // on a connection (the server's).
                        if matches!(mode, Mode::Run) && next_due >= record_from {
                            let lag = now.saturating_duration_since(next_due).as_micros();
                            let _ = send_lag.record((lag as u64).max(1));
                        }
                        backlog.push_back(next_due);
                        next_due += gap;
                    }
                    if backlog.len() > BACKLOG_MAX {
                        // The rate is not sustainable: end the run and
                        // report what it measured, the requests never
                        // sent counted as errors (ending with an error
                        // instead lost every measurement).
                        let unsent = backlog.len() as u64;
                        *errors.entry(UNSENT.into()).or_default() += unsent;
                        shared.errors.fetch_add(unsent, Ordering::Relaxed);
                        backlog.clear();
                        stopping = true;
                        stop_at = Some(now);
                    }
                    for c in 0..conns.len() {
                        while conns[c].inflight < plan.pipeline && conns[c].lost.is_none() {
                            let Some(intended) = backlog.pop_front() else {
                                break;
                            };
                            if !issue!(c, intended) {
                                stopping = true;
                                break;
                            }
                        }
                    }
                }
                None => {
                    // One clock reading for what this pass issues: it goes
                    // out in the writes below. Read only once a connection
                    // has room: a reading per connection per pass, most of
                    // them with nothing to issue, was 7% of the load
                    // generator's CPU under 16-deep GETs.
                    let mut issued_at = None;
                    for c in 0..conns.len() {
                        while conns[c].inflight < plan.pipeline
                            && !stopping
                            && conns[c].lost.is_none()
                        {
                            let at = *issued_at.get_or_insert_with(Instant::now);
                            if !issue!(c, at) {
                                stopping = true;
                                stop_at = Some(Instant::now());
                            }
                        }
                    }
                }
            }
        }
        for i in 0..sockets.len() {
            if conns[i / per_conn].lost.is_none() {
                if let Err(e) = flush(&poll, i, &mut sockets[i]) {
                    lose!(i / per_conn, e);
                }
            }
        }
        let inflight: usize = conns.iter().map(|c| c.inflight).sum();
        if stopping && (inflight == 0 || stop_at.is_some_and(|s| s.elapsed() > DRAIN_GRACE)) {
            if inflight > 0 {
                *errors.entry("timeout".into()).or_default() += inflight as u64;
            }
            break;
        }
        let timeout = match &mut alarm {
            Some(alarm) if !stopping => {
                alarm.arm(next_due)?;
                next_due
                    .saturating_duration_since(Instant::now())
                    .min(POLL_MAX)
            }
            _ => POLL_MAX,
        };
        poll.poll(&mut events, Some(timeout))?;
        for event in events.iter() {
            if event.token() == Alarm::TOKEN {
                if let Some(alarm) = &mut alarm {
                    alarm.fired();
                }
                continue;
            }
            let i = event.token().0;
            let c = i / per_conn;
            if conns[c].lost.is_some() {
                continue;
            }
            let mut io = Ok(());
            if event.is_writable() {
                io = flush(&poll, i, &mut sockets[i]);
            }
            if io.is_ok() && event.is_readable() {
                io = receive(&poll, i, &mut sockets[i], &mut read_chunk);
            }
            if io.is_ok() && !event.is_readable() {
                continue;
            }
            // The replies of one read arrived together: one clock reading.
            // Those read before a failure count too.
            let done = Instant::now();
            while let Some((id, reply)) = plan
                .protocol
                .decode(&mut sockets[i].rbuf)
                .map_err(|e| anyhow::anyhow!("decoding a reply: {e}"))?
            {
                let socket = &mut sockets[i];
                let pending = match id {
                    Some(id) => {
                        let slot = (id & u64::from(u32::MAX)) as usize;
                        match socket.awaiting.get(slot) {
                            Some(&(sent_as, _)) if sent_as == id => {
                                Some(socket.awaiting.remove(slot).1)
                            }
                            _ => None,
                        }
                    }
                    None => socket.in_order.pop_front(),
                };
                let Some(mut pending) = pending else {
                    anyhow::bail!("a reply matched no request");
                };
                if let (Some(k), Reply::Ok) = (pending.rmw_key.take(), &reply) {
                    // Second half of read-modify-write: same connection, same clock.
                    let offset = rng.gen_range(0..4096);
                    let len = plan.value_size.next(&mut rng);
                    let command = Command::Set(&k, &values[offset..offset + len], ttl_ms);
                    let s = route(plan, &conns[pending.conn], &k);
                    send(&mut sockets[s], plan.protocol, &command, pending);
                    continue;
                }
                conns[pending.conn].inflight -= 1;
                if let Reply::Error(kind) = reply {
                    *errors.entry(kind).or_default() += 1;
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
                if matches!(mode, Mode::Run) && pending.intended >= record_from {
                    let us = done.saturating_duration_since(pending.intended).as_micros() as u64;
                    let _ = histograms[pending.kind.index()].record(us.max(1));
                    let _ = interval.record(us.max(1));
                    shared.completed.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Err(e) = io {
                lose!(c, e);
            }
        }
        if last_flush.elapsed() >= Duration::from_millis(200) {
            if let Ok(mut shared_interval) = shared.interval.lock() {
                let _ = shared_interval.add(&interval);
            }
            interval.reset();
            last_flush = Instant::now();
        }
    }
    Ok(ThreadResult {
        histograms,
        errors,
        send_lag,
    })
}

/// A second key for a transaction with `k`, on another shard when the
/// server has more than one (`shards`).
fn other_shard_key(
    plan: &Plan,
    shards: usize,
    k: &[u8],
    chooser: &mut KeyChooser,
    rng: &mut impl Rng,
) -> Vec<u8> {
    let shard = |key: &[u8]| {
        plan.slot_owner
            .get(tessera_protocol::slot_of(key) as usize)
            .copied()
    };
    loop {
        let other = key(chooser.next(rng), plan.key_size);
        if other != k && (shards < 2 || shard(&other) != shard(k)) {
            return other;
        }
    }
}

fn route(plan: &Plan, conn: &Conn, k: &[u8]) -> usize {
    if plan.slot_owner.is_empty() {
        conn.sockets[0]
    } else {
        conn.sockets[plan.slot_owner[tessera_protocol::slot_of(k) as usize] as usize]
    }
}

/// Connects to `addr` (see [`connect`]) as the socket of token `token`.
fn open_socket(addr: SocketAddr, plan: &Plan, poll: &Poll, token: usize) -> anyhow::Result<Socket> {
    let (mut stream, tls) =
        connect(addr, plan).map_err(|e| anyhow::anyhow!("connecting to {addr}: {e}"))?;
    poll.registry()
        .register(&mut stream, Token(token), Interest::READABLE)?;
    Ok(Socket {
        stream,
        tls,
        wbuf: Vec::with_capacity(64 << 10),
        rbuf: BytesMut::with_capacity(64 << 10),
        sent: 0,
        awaiting: Slab::new(),
        in_order: VecDeque::new(),
        writable_interest: false,
    })
}

/// A connection failed (`why`): in a preload, the run fails; in the
/// measured phase its requests in flight count as `connection lost`, its
/// sockets close and it waits to reconnect.
fn lose(
    conn: &mut Conn,
    sockets: &mut [Socket],
    poll: &Poll,
    mode: Mode,
    errors: &mut HashMap<String, u64>,
    shared: &Shared,
    why: anyhow::Error,
) -> anyhow::Result<()> {
    if matches!(mode, Mode::Preload { .. }) {
        return Err(why);
    }
    let mut dropped = 0;
    for &i in &conn.sockets {
        let s = &mut sockets[i];
        dropped += s.awaiting.len() + s.in_order.len();
        s.awaiting.clear();
        s.in_order.clear();
        let _ = poll.registry().deregister(&mut s.stream);
        let _ = s.stream.shutdown(std::net::Shutdown::Both);
    }
    conn.inflight = 0;
    if dropped > 0 {
        *errors.entry("connection lost".into()).or_default() += dropped as u64;
        shared.errors.fetch_add(dropped as u64, Ordering::Relaxed);
    }
    let now = Instant::now();
    conn.lost = Some(Lost {
        since: now,
        retry_at: now + RECONNECT_FIRST,
        backoff: RECONNECT_FIRST,
        why: why.to_string(),
    });
    Ok(())
}

/// Opens a lost connection's sockets again; a failed attempt counts as a
/// `reconnect failed` error and waits longer, until [`RECONNECT_GIVE_UP`].
fn reconnect(
    plan: &Plan,
    poll: &Poll,
    conn: &mut Conn,
    sockets: &mut [Socket],
    errors: &mut HashMap<String, u64>,
    shared: &Shared,
) -> anyhow::Result<()> {
    let opened: anyhow::Result<Vec<Socket>> = conn
        .sockets
        .iter()
        .zip(&plan.addresses)
        .map(|(&i, &addr)| open_socket(addr, plan, poll, i))
        .collect();
    let Some(lost) = &mut conn.lost else {
        return Ok(());
    };
    match opened {
        Ok(opened) => {
            for (&i, socket) in conn.sockets.iter().zip(opened) {
                sockets[i] = socket;
            }
            conn.lost = None;
        }
        Err(e) => {
            *errors.entry("reconnect failed".into()).or_default() += 1;
            shared.errors.fetch_add(1, Ordering::Relaxed);
            if lost.since.elapsed() >= RECONNECT_GIVE_UP {
                anyhow::bail!(
                    "a connection stayed lost for {} s ({}); reconnecting: {e}",
                    RECONNECT_GIVE_UP.as_secs(),
                    lost.why
                );
            }
            lost.backoff = (lost.backoff * 2).min(RECONNECT_MAX);
            lost.retry_at = Instant::now() + lost.backoff;
        }
    }
    Ok(())
}

fn send(socket: &mut Socket, protocol: Protocol, command: &Command, pending: Pending) {
    socket.sent += 1;
    match protocol {
        Protocol::Tessera => {
            let entry = socket.awaiting.vacant_entry();
            let id = (socket.sent << 32) | entry.key() as u64;
            protocol.encode(id, command, &mut socket.wbuf);
            entry.insert((id, pending));
        }
        Protocol::Redis => {
            protocol.encode(socket.sent, command, &mut socket.wbuf);
            socket.in_order.push_back(pending);
        }
    }
}

/// Reads what the socket holds into `rbuf` (over TLS, decrypted).
fn receive(poll: &Poll, token: usize, s: &mut Socket, chunk: &mut [u8]) -> anyhow::Result<()> {
    loop {
        let read = match &mut s.tls {
            None => s.stream.read(chunk),
            Some(tls) => tls.read_tls(&mut s.stream),
        };
        match read {
            Ok(0) => anyhow::bail!("the server closed a connection"),
            Ok(n) => match &mut s.tls {
                None => {
                    s.rbuf.extend_from_slice(&chunk[..n]);
                    // A short read emptied the socket: what arrives next
                    // raises a new event. Reading on until `WouldBlock`
                    // cost a third system call per unpipelined request.
                    if n < chunk.len() {
                        break;
                    }
                }
                // Decrypted as it comes: rustls holds only so many records.
                Some(tls) => {
                    tls.process_new_packets()
                        .map_err(|e| anyhow::anyhow!("TLS from the server: {e}"))?;
                    loop {
                        match tls.reader().read(chunk) {
                            Ok(0) => anyhow::bail!("the server closed a connection"),
                            Ok(n) => s.rbuf.extend_from_slice(&chunk[..n]),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => anyhow::bail!("reading from the server: {e}"),
                        }
                    }
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => anyhow::bail!("reading from the server: {e}"),
        }
    }
    if s.tls.is_some() {
        // Records the session owes the server (key updates, alerts).
        flush(poll, token, s)?;
    }
    Ok(())
}

/// Sends what `wbuf` holds, as far as the socket takes it (over TLS,
/// encrypted first).
fn flush(poll: &Poll, token: usize, s: &mut Socket) -> anyhow::Result<()> {
    loop {
        let written = match &mut s.tls {
            None if s.wbuf.is_empty() => break,
            None => s.stream.write(&s.wbuf),
            Some(tls) => {
                // As much as the session's buffer takes, then its records.
                let taken = tls.writer().write(&s.wbuf)?;
                s.wbuf.drain(..taken);
                if !tls.wants_write() {
                    break;
                }
                tls.write_tls(&mut s.stream)
            }
        };
        match written {
            Ok(n) if s.tls.is_none() => {
                s.wbuf.drain(..n);
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => anyhow::bail!("writing to the server: {e}"),
        }
    }
    let want_writable = !s.wbuf.is_empty() || s.tls.as_ref().is_some_and(|t| t.wants_write());
    if want_writable != s.writable_interest {
        let interest = if want_writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        poll.registry()
            .reregister(&mut s.stream, Token(token), interest)?;
        s.writable_interest = want_writable;
    }
    Ok(())
}
