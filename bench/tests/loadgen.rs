//! The load generator itself: open-loop latency includes the queueing
//! delay a stalled server causes (no coordinated omission), closed loop
//! hides it; Tessera replies find their requests by id in any order; and
//! the RESP driver works against a real `redis-server`.

use bytes::BytesMut;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tessera_bench::driver::Protocol;
use tessera_bench::runner::{self, Plan, Shared};
use tessera_bench::workload::{OpKind, ValueSize, Workload};
use tessera_protocol::frame::{next_frame, put_frame, Limits};
use tessera_protocol::message::{decode_request, Response};

/// A RESP server that answers `+OK` to every command, but sleeps `stall`
/// before answering the first command received after `stall_after`.
fn stalling_server(stall_after: Duration, stall: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let start = Instant::now();
        let mut stalled = false;
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            // "*3" header: then 3 × ($len, data) lines.
            let n: usize = line.trim_start_matches('*').trim().parse().unwrap();
            for _ in 0..2 * n {
                line.clear();
                reader.read_line(&mut line).unwrap();
            }
            if !stalled && start.elapsed() >= stall_after {
                stalled = true;
                std::thread::sleep(stall);
            }
            if writer.write_all(b"+OK\r\n").is_err() {
                return;
            }
        }
    });
    addr
}

/// Serves Tessera frames on `stream`: each read's request ids go to
/// `answer`, which returns the bytes to send back and whether to close.
fn serve_frames(mut stream: TcpStream, mut answer: impl FnMut(Vec<u64>) -> (Vec<u8>, bool)) {
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 64 << 10];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut ids = Vec::new();
        while let Some(frame) = next_frame(&mut buf, 1 << 20).unwrap() {
            ids.push(decode_request(&frame, &Limits::default()).unwrap().0);
        }
        let (out, close) = answer(ids);
        if stream.write_all(&out).is_err() || close {
            return;
        }
    }
}

/// A Tessera server that answers each read's requests in reverse order;
/// with `stray`, it answers the 100th request a second time once 200 have
/// been answered, when its slot on the client is taken by a later one.
fn reordering_server(stray: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut answered = 0;
        let mut repeat = None;
        serve_frames(stream, |ids| {
            let mut out = Vec::new();
            if answered >= 200 {
                if let Some(id) = repeat.take() {
                    put_frame(&mut out, &Response::Written { ts: 1 }.encode(id));
                }
            }
            for &id in ids.iter().rev() {
                put_frame(&mut out, &Response::Written { ts: 1 }.encode(id));
                answered += 1;
                if stray && answered == 100 {
                    repeat = Some(id);
                }
            }
            (out, false)
        });
    });
    addr
}

/// A Tessera server that answers `per_connection` requests on each
/// connection it accepts and then closes it, the rest of what it read
/// unanswered.
fn closing_server(per_connection: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let mut answered = 0;
                serve_frames(stream, |ids| {
                    let mut out = Vec::new();
                    for id in ids.into_iter().take(per_connection - answered) {
                        put_frame(&mut out, &Response::Written { ts: 1 }.encode(id));
                        answered += 1;
                    }
                    (out, answered == per_connection)
                });
            });
        }
    });
    addr
}

fn plan(addr: SocketAddr, rate: Option<f64>) -> Plan {
    Plan {
        protocol: Protocol::Redis,
        addresses: vec![addr],
        slot_owner: Vec::new(),
        connections: 1,
        pipeline: 1,
        threads: 1,
        cpus: None,
        rate,
        duration: Some(Duration::from_millis(1500)),
        requests: None,
        warmup: Duration::ZERO,
        workload: "set".parse::<Workload>().unwrap(),
        distribution: tessera_bench::workload::Distribution::Uniform,
        keys: 1000,
        key_size: 16,
        value_size: ValueSize { min: 10, max: 10 },
        scan_length_max: 10,
        token: None,
        tls: None,
        ttl_ms: 0,
    }
}

/// Requests slower than 100 ms, and all requests.
fn slow_and_total(plan: &Plan) -> (u64, u64) {
    let results = runner::run(plan, &Shared::new(plan.keys)).unwrap();
    let h = &results[0].histograms[OpKind::Update.index()];
    let slow = h.len() - h.count_between(0, 100_000);
    (slow, h.len())
}

#[test]
fn open_loop_latency_includes_the_queueing_delay_of_a_stall() {
    let stall = Duration::from_millis(400);
    // Open loop at 1000/s: the ~400 requests due during the stall all wait.
    let (slow, total) = slow_and_total(&plan(
        stalling_server(Duration::from_millis(300), stall),
        Some(1000.0),
    ));
    assert!(total > 1000, "{total} requests completed");
    assert!(
        slow >= 250,
        "open loop: only {slow} of {total} requests saw the stall"
    );
    // Closed loop: one request waits, the schedule silently slips.
    let (slow, total) = slow_and_total(&plan(
        stalling_server(Duration::from_millis(300), stall),
        None,
    ));
    assert!(slow <= 2, "closed loop: {slow} of {total} slow");
}

/// Open loop against a server that answers at once: the latency is the
/// round trip, not the load generator's own oversleep. With mio's
/// millisecond poll timeouts a thread due to send in 500 µs slept ~1 ms,
/// and the median read ~0.5 ms late; a timerfd wakes it on time. Three
/// tries, as another test may hold both CPUs for a while.
#[test]
fn open_loop_requests_go_out_when_due() {
    let mut medians = Vec::new();
    for _ in 0..3 {
        let plan = plan(
            stalling_server(Duration::from_secs(3600), Duration::ZERO),
            Some(2000.0),
        );
        let results = runner::run(&plan, &Shared::new(plan.keys)).unwrap();
        let h = &results[0].histograms[OpKind::Update.index()];
        assert!(h.len() > 2000, "{} requests completed", h.len());
        // The thread's own lateness, as the report states it.
        let lag = &results[0].send_lag;
        assert_eq!(lag.len(), h.len(), "one lag per measured request");
        medians.push((h.value_at_quantile(0.5), lag.value_at_quantile(0.5)));
        if h.value_at_quantile(0.5) < 300 && lag.value_at_quantile(0.5) < 200 {
            return;
        }
    }
    panic!("median latencies and lags {medians:?} µs: requests went out late");
}

#[test]
fn replies_in_any_order_find_their_requests_and_a_repeated_one_fails_the_run() {
    let tessera = |addr| Plan {
        protocol: Protocol::Tessera,
        pipeline: 8,
        duration: None,
        requests: Some(2000),
        ..plan(addr, None)
    };
    let results = runner::run(&tessera(reordering_server(false)), &Shared::new(1000)).unwrap();
    assert_eq!(results[0].histograms[OpKind::Update.index()].len(), 2000);
    assert!(results[0].errors.is_empty(), "{:?}", results[0].errors);
    // The second reply to one id names a slot a later request has taken.
    let Err(e) = runner::run(&tessera(reordering_server(true)), &Shared::new(1000)) else {
        panic!("a repeated reply went unnoticed");
    };
    assert!(e.to_string().contains("matched no request"), "{e}");
}

struct Redis(Child);

/// A `redis-server` with its data in `dir`, listening where `listen`'s
/// arguments say given a free port; returns it once it accepts
/// connections there.
fn start_redis(
    dir: &std::path::Path,
    listen: impl FnOnce(u16) -> Vec<std::ffi::OsString>,
) -> (Redis, SocketAddr) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args(listen(port))
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is installed by scripts/test.sh");
    let redis = Redis(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (redis, addr)
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_resp_driver_talks_to_a_real_redis_server() {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, addr) = start_redis(dir.path(), |port| {
        vec!["--port".into(), port.to_string().into()]
    });
    let port = addr.port();
    let mut p = plan(addr, None);
    p.connections = 4;
    p.pipeline = 8;
    p.duration = None;
    // Fewer measured requests than keys: the preload still writes them all.
    p.keys = 3000;
    p.requests = Some(2000);
    p.workload = "mixed:50".parse().unwrap();
    runner::preload(&p).unwrap();
    let results = runner::run(&p, &Shared::new(p.keys)).unwrap();
    let reads: u64 = results
        .iter()
        .map(|r| r.histograms[OpKind::Read.index()].len())
        .sum();
    let updates: u64 = results
        .iter()
        .map(|r| r.histograms[OpKind::Update.index()].len())
        .sum();
    let errors: u64 = results.iter().flat_map(|r| r.errors.values()).sum();
    assert_eq!(errors, 0);
    assert!(reads + updates >= 2000, "{reads} reads + {updates} updates");
    assert!(
        reads > 800 && updates > 800,
        "{reads} reads, {updates} updates"
    );
    // The preload really wrote every key.
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "dbsize"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3000");

    // Writes with a TTL are SET .. PX: some keys now expire.
    let expiring = |port: u16| {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "info", "keyspace"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let expires = text
            .split("expires=")
            .nth(1)
            .map(|s| s.split(',').next().unwrap().to_string());
        expires.and_then(|n| n.parse::<u64>().ok()).unwrap_or(0)
    };
    assert_eq!(expiring(port), 0);
    let mut with_ttl = p.clone();
    with_ttl.workload = "set".parse().unwrap();
    with_ttl.ttl_ms = 600_000;
    with_ttl.requests = Some(500);
    runner::run(&with_ttl, &Shared::new(p.keys)).unwrap();
    assert!(expiring(port) > 100, "{} keys expire", expiring(port));

    // PING: every request answered, none an error.
    p.workload = "ping".parse().unwrap();
    let results = runner::run(&p, &Shared::new(p.keys)).unwrap();
    let pings: u64 = results
        .iter()
        .map(|r| r.histograms[OpKind::Ping.index()].len())
        .sum();
    let errors: u64 = results.iter().flat_map(|r| r.errors.values()).sum();
    assert_eq!((pings, errors), (2000, 0));
}

#[test]
fn the_resp_driver_talks_tls_to_a_real_redis_server() {
    let dir = tempfile::tempdir().unwrap();
    let certs =
        tessera_tools::cert::create(&dir.path().join("certs"), &["127.0.0.1".into()], 1).unwrap();
    let (_redis, addr) = start_redis(dir.path(), |port| {
        let mut args: Vec<std::ffi::OsString> = vec!["--port".into(), "0".into()];
        args.extend(["--tls-port".into(), port.to_string().into()]);
        for (flag, file) in [
            ("--tls-cert-file", &certs.cert),
            ("--tls-key-file", &certs.key),
            ("--tls-ca-cert-file", &certs.ca),
        ] {
            args.extend([flag.into(), file.into()]);
        }
        args.extend(["--tls-auth-clients".into(), "no".into()]);
        args
    });
    let mut p = plan(addr, None);
    p.tls = Some(tessera_client::TlsOptions::from_ca_file(&certs.ca).unwrap());
    p.connections = 4;
    p.pipeline = 16;
    p.duration = None;
    p.keys = 1000;
    p.requests = Some(5000);
    p.value_size = ValueSize {
        min: 10,
        max: 20_000,
    };
    p.workload = "mixed:50".parse().unwrap();
    runner::preload(&p).unwrap();
    let results = runner::run(&p, &Shared::new(p.keys)).unwrap();
    let done: u64 = results
        .iter()
        .flat_map(|r| [OpKind::Read, OpKind::Update].map(|k| r.histograms[k.index()].len()))
        .sum();
    let errors: u64 = results.iter().flat_map(|r| r.errors.values()).sum();
    assert_eq!(errors, 0);
    assert!(done >= 5000, "{done} requests answered");
}

/// A reader of the report that has gone (`tessera-bench ... | head`) is no
/// error: `print!` panicked there and the run exited 101.
#[test]
fn a_report_reader_that_has_gone_is_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_redis, addr) = start_redis(dir.path(), |port| {
        vec!["--port".into(), port.to_string().into()]
    });
    let mut bench = Command::new(env!("CARGO_BIN_EXE_tessera-bench"))
        .args(["--target", &format!("redis://{addr}")])
        .args(["--workload", "get", "--keys", "100", "--duration", "1"])
        .args(["--connections", "2", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Closed long before the report, written after the second's run.
    drop(bench.stdout.take());
    let out = bench.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
}

/// A server that drops connections does not end the run: requests in
/// flight on a dropped connection count as `connection lost`, the
/// connection reconnects, and every request issued either completes or
/// is counted.
#[test]
fn a_dropped_connection_counts_its_requests_as_lost_and_reconnects() {
    let plan = Plan {
        protocol: Protocol::Tessera,
        connections: 2,
        pipeline: 4,
        duration: None,
        requests: Some(3000),
        ..plan(closing_server(250), None)
    };
    let results = runner::run(&plan, &Shared::new(plan.keys)).unwrap();
    let completed = results[0].histograms[OpKind::Update.index()].len();
    let lost = results[0]
        .errors
        .get("connection lost")
        .copied()
        .unwrap_or(0);
    assert!(
        completed >= 2500,
        "{completed} completed, errors {:?}",
        results[0].errors
    );
    assert!(lost > 0, "errors {:?}", results[0].errors);
    assert_eq!(
        completed + lost,
        3000,
        "errors {:?}: requests neither answered nor counted",
        results[0].errors
    );
    // A preload needs every key: a dropped connection fails it.
    let preload = Plan {
        keys: 5000,
        ..plan.clone()
    };
    let Err(e) = runner::preload(&preload) else {
        panic!("a preload lost requests and went on");
    };
    assert!(e.to_string().contains("closed"), "{e}");
}

/// Open loop far above what the server does: once the load generator is
/// a million requests behind, the run ends early and reports what it
/// measured, the requests never sent counted as errors (it used to fail
/// with no report).
#[test]
fn an_unsustainable_rate_ends_the_run_early_with_a_report() {
    let plan = Plan {
        duration: Some(Duration::from_secs(30)),
        ..plan(
            stalling_server(Duration::ZERO, Duration::from_millis(800)),
            Some(5_000_000.0),
        )
    };
    let started = Instant::now();
    let results = runner::run(&plan, &Shared::new(plan.keys)).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "ran {:?} of 30 s",
        started.elapsed()
    );
    let unsent = results[0].errors.get(runner::UNSENT).copied().unwrap_or(0);
    assert!(unsent > 1_000_000, "errors {:?}", results[0].errors);
    // The requests that did go out waited out the stall.
    let h = &results[0].histograms[OpKind::Update.index()];
    assert!(
        !h.is_empty() && h.max() >= 500_000,
        "{} requests, max {} µs",
        h.len(),
        h.max()
    );
}
