//! Integration tests against the real `tessera-server` binary with 1 and 2
//! shards: every operation through the SDK, keys on the other shard, the
//! metrics endpoint, restart, and a refused shard-count change.

mod common;

use bytes::Bytes;
use common::{http, Server};
use std::io::{Read, Write};
use tessera_client::{BatchOp, Client, Request, Response};
use tessera_protocol::frame::{next_frame, put_frame};
use tessera_protocol::message::decode_response;

fn exercise_every_operation(server: &Server, shards: usize) {
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    assert_eq!(client.shard_count(), shards);
    client.ping().unwrap();
    for i in 0..200 {
        client
            .put(format!("key{i:03}"), format!("value{i}"))
            .unwrap();
    }
    // Keys really are spread over the shards.
    let owners: std::collections::BTreeSet<usize> = (0..200)
        .map(|i| client.shard_of(format!("key{i:03}").as_bytes()))
        .collect();
    assert_eq!(owners.len(), shards);
    for i in 0..200 {
        assert_eq!(
            client.get(format!("key{i:03}")).unwrap(),
            Some(Bytes::from(format!("value{i}")))
        );
    }
    assert_eq!(client.get("missing").unwrap(), None);
    client.delete("key007").unwrap();
    assert_eq!(client.get("key007").unwrap(), None);
    // Scan merges every shard in key order, with continuation.
    let page = client.scan("key000", Some("key010"), 5).unwrap();
    let keys: Vec<_> = page.rows.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, vec!["key000", "key001", "key002", "key003", "key004"]);
    let page = client
        .scan(page.next_start.unwrap(), Some("key010"), 5)
        .unwrap();
    let keys: Vec<_> = page.rows.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, vec!["key005", "key006", "key008", "key009"]);
    assert_eq!(page.next_start, None);
    // Batches: atomic on one shard and across shards.
    let a = Bytes::from_static(b"batch-a");
    let same: Vec<Bytes> = (0..100)
        .map(|i| Bytes::from(format!("batch-{i}")))
        .filter(|k| client.shard_of(k) == client.shard_of(&a))
        .take(3)
        .collect();
    let ops = same
        .iter()
        .map(|k| BatchOp::Put {
            key: k.clone(),
            value: Bytes::from_static(b"b"),
            ttl_ms: 0,
        })
        .collect();
    client.batch(ops).unwrap();
    for k in &same {
        assert_eq!(client.get(k.clone()).unwrap().as_deref(), Some(&b"b"[..]));
    }
    if shards > 1 {
        let other = (0..100)
            .map(|i| Bytes::from(format!("other-{i}")))
            .find(|k| client.shard_of(k) != client.shard_of(&a))
            .unwrap();
        // A batch across shards commits atomically through a transaction.
        let ts = client
            .batch(vec![
                BatchOp::Put {
                    key: a.clone(),
                    value: Bytes::from_static(b"both"),
                    ttl_ms: 0,
                },
                BatchOp::Put {
                    key: other.clone(),
                    value: Bytes::from_static(b"both"),
                    ttl_ms: 0,
                },
            ])
            .unwrap();
        for key in [&a, &other] {
            assert_eq!(
                client.read_at(key.clone(), ts).unwrap().as_deref(),
                Some(&b"both"[..])
            );
            assert_eq!(client.read_at(key.clone(), ts - 1).unwrap(), None);
        }
    }
    // Requests sent to the shared port for keys on another shard are
    // forwarded over the mesh.
    for i in 0..50 {
        let key = Bytes::from(format!("key{i:03}"));
        let want = client.get(key.clone()).unwrap();
        let resp = client
            .entry()
            .call(&tessera_client::Request::Get { key })
            .unwrap();
        assert_eq!(resp, tessera_client::Response::value(want));
    }
    let stats = client.stats().unwrap();
    let shards_seen: std::collections::BTreeSet<u32> = stats.iter().map(|m| m.shard).collect();
    assert_eq!(shards_seen.len(), shards);
    let puts: f64 = stats
        .iter()
        .filter(|m| m.name == "requests_total{op=\"put\"}")
        .map(|m| m.value)
        .sum();
    assert_eq!(puts, 200.0);
}

#[test]
fn the_metrics_and_health_endpoints_serve_get_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 1, &[]);
    let metrics = server.metrics.clone().unwrap();
    let (status, body) = http(
        &metrics,
        "GET /metrics?name[]=x HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        body.contains("# TYPE tessera_bytes_in_total counter"),
        "{body}"
    );
    let (status, _) = http(&metrics, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    let (status, body) = http(&metrics, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "shard 0: ok\n")
    );
    let (status, _) = http(&metrics, "DELETE /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    let (status, body) = http(&metrics, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        (status.as_str(), body.as_str()),
        (
            "HTTP/1.1 404 Not Found",
            "try GET /metrics or GET /health\n"
        )
    );
    assert!(server.stop());
}

/// More shards than CPUs: 64 executors on a 2-CPU machine. Joining the
/// shard mesh spun (vendor/glommio-ng patch 7), and such a start had not
/// finished after 100 s; now every shard serves and answers the health
/// check within seconds.
#[test]
fn many_shards_start_on_few_cpus() {
    const SHARDS: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let small = [
        "--prefault-memory",
        "false",
        "--memtable-bytes",
        "1048576",
        "--cache-bytes",
        "1048576",
        "--row-cache-bytes",
        "0",
        "--wal-segment-bytes",
        "4194304",
        "--txn-ts-cache-keys",
        "1024",
    ];
    let server = Server::start(dir.path(), SHARDS, &small);
    assert_eq!(server.shard_addresses.len(), SHARDS);
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    for i in 0..1000 {
        client.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    for i in 0..1000 {
        let key = format!("k{i}");
        assert_eq!(client.get(key).unwrap(), Some(Bytes::from(format!("v{i}"))));
    }
    let (status, text) = http(
        server.metrics.as_deref().unwrap(),
        "GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 200 OK", "{text}");
    assert_eq!(text.lines().filter(|l| l.ends_with(": ok")).count(), SHARDS);
    // Every shard took writes (1000 keys over 64 shards).
    let puts: Vec<f64> = client
        .stats()
        .unwrap()
        .iter()
        .filter(|m| m.name == "requests_total{op=\"put\"}")
        .map(|m| m.value)
        .collect();
    assert_eq!(puts.len(), SHARDS);
    assert!(puts.iter().all(|&n| n > 0.0), "{puts:?}");
    drop(client);
    assert!(server.stop(), "clean shutdown exits 0");
}

/// A server whose log reader has gone (`tessera-server 2>&1 | grep -m1
/// ready` in a script) serves on and stops cleanly: the log subscriber
/// reported a failed write with `eprintln!`, which panicked on the same
/// closed pipe, and the server aborts on a panic (exit 134 on SIGTERM).
#[test]
fn a_server_whose_log_reader_has_gone_serves_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Server::command(dir.path(), 1, &[]);
    command.env("RUST_LOG", "info");
    let mut server = Server::spawn(command).unwrap();
    drop(server.child.stderr.take());
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    client.put("k", "v").unwrap();
    assert_eq!(client.get("k").unwrap(), Some(Bytes::from("v")));
    drop(client);
    assert!(server.stop(), "clean shutdown exits 0");
}

#[test]
fn one_shard_serves_every_operation() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 1, &[]);
    exercise_every_operation(&server, 1);
    assert!(server.stop(), "clean shutdown exits 0");
}

#[test]
fn two_shards_serve_every_operation_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2, &[]);
    exercise_every_operation(&server, 2);
    // Every shard answers the health check, over the mesh for shard 1.
    let (status, text) = http(
        server.metrics.as_deref().unwrap(),
        "GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(
        (status.as_str(), text.as_str()),
        ("HTTP/1.1 200 OK", "shard 0: ok\nshard 1: ok\n")
    );
    let (status, text) = http(
        server.metrics.as_deref().unwrap(),
        "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        text.contains("tessera_requests_total{shard=\"0\",op=\"put\"}"),
        "{text}"
    );
    assert!(
        text.contains("tessera_requests_total{shard=\"1\",op=\"put\"}"),
        "{text}"
    );
    assert!(
        text.contains("tessera_request_latency_us{shard=\"1\",op=\"get\",quantile=\"0.99\"}"),
        "{text}"
    );
    assert!(server.stop());
}

#[test]
fn a_scan_page_of_large_values_stays_under_its_byte_budget() {
    // 100 values of 256 KiB over two shards: 25 MiB in all. Asked for every
    // row at once, a page used to carry all of them (with 1 MiB values,
    // 100 MiB: more than a client accepts in one frame).
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2, &["--scan-bytes-max", "1048576"]);
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    let value = |i: usize| Bytes::from(vec![i as u8; 256 << 10]);
    for i in 0..100 {
        client.put(format!("big{i:03}"), value(i)).unwrap();
    }
    client.put("small", "s").unwrap();
    let mut start = Bytes::from_static(b"big");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = client.scan(start, None::<Bytes>, 10_000).unwrap();
        pages += 1;
        let bytes: usize = page.rows.iter().map(|(k, v)| k.len() + v.len()).sum();
        // The budget, plus the row that reached it.
        assert!(
            bytes < (1 << 20) + (256 << 10) + 16,
            "page of {bytes} bytes"
        );
        assert!(!page.rows.is_empty(), "a page that goes on holds a row");
        seen.extend(page.rows);
        match page.next_start {
            Some(next) => start = next,
            None => break,
        }
    }
    let want: Vec<(Bytes, Bytes)> = (0..100)
        .map(|i| (Bytes::from(format!("big{i:03}")), value(i)))
        .chain([(Bytes::from_static(b"small"), Bytes::from_static(b"s"))])
        .collect();
    assert!(seen == want, "every row once, in key order");
    assert!(pages >= 25, "{pages} pages");
    assert!(server.stop());
}

#[test]
fn each_shards_memory_budget_is_resident_once_ready_unless_turned_off() {
    // Budget per shard: a 64 MiB cache and three 16 MiB memtables.
    let sizes = ["--cache-bytes", "67108864", "--memtable-bytes", "16777216"];
    let budget = (2 * (64u64 + 3 * 16)) << 20;
    // Fresh directories: opening an existing one reads its WAL segments.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("on"), 2, &sizes);
    let prefaulted = common::rss_bytes(server.child.id());
    assert!(server.stop());
    let mut off = sizes.to_vec();
    off.extend(["--prefault-memory", "false"]);
    let server = Server::start(&dir.path().join("off"), 2, &off);
    let lazy = common::rss_bytes(server.child.id());
    assert!(server.stop());
    // What the engine allocates at startup comes out of the prefaulted
    // memory, so the difference is less than the budget.
    assert!(
        prefaulted >= budget && prefaulted >= lazy + budget / 2,
        "prefaulted {prefaulted} bytes resident, {lazy} without, budget {budget}"
    );
}

/// A restart without `--shards` starts the count the directory was
/// written with (here one more than the CPUs, which a fresh start would
/// take); one with another count is refused.
#[test]
fn data_survives_a_restart_and_a_shard_count_change_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cpus = std::thread::available_parallelism().unwrap().get();
    let shards = cpus + 1;
    let server = Server::start(dir.path(), shards, &[]);
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    for i in 0..100 {
        client.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    drop(client);
    assert!(server.stop());
    let err = Server::try_start(dir.path(), cpus, &[])
        .err()
        .expect("another shard count must be refused");
    assert!(
        err.contains(&format!(
            "written with {shards} shards; started with {cpus} (start it with --shards {shards}"
        )),
        "{err}"
    );
    let server = Server::spawn(Server::command_without_shards(dir.path(), &[])).unwrap();
    assert_eq!(server.shard_addresses.len(), shards);
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    for i in 0..100 {
        assert_eq!(
            client.get(format!("k{i}")).unwrap(),
            Some(Bytes::from(format!("v{i}")))
        );
    }
    assert!(server.stop());
}

/// A shard whose port is taken fails the whole server with a clear error;
/// the other shards, already waiting on their peers, must not hang it.
#[test]
fn a_taken_shard_port_stops_the_server_with_a_clear_error() {
    // Shard 1 takes the port after the taken one, which another process
    // (a test running beside this one) may hold too: then it fails first,
    // as it should, and the check is tried again on other ports.
    for attempt in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let started = std::time::Instant::now();
        let err = Server::try_start(dir.path(), 2, &["--shard-base-port", &port.to_string()])
            .err()
            .expect("a taken shard port must stop the server");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the server took {:?} to give up",
            started.elapsed()
        );
        if err.contains(&format!("shard 0: listening on 127.0.0.1:{port}")) {
            return;
        }
        assert!(
            attempt < 2 && err.contains(&format!("shard 1: listening on 127.0.0.1:{}", port + 1)),
            "{err}"
        );
    }
}

/// A start that fails on the disk says so in one line, the OS error once:
/// the engine's I/O error carried it in its message and as its source, and
/// the server prints the whole chain.
#[test]
fn a_failed_start_names_the_os_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 1, &[]);
    assert!(server.stop());
    std::fs::remove_dir_all(dir.path().join("shard-0")).unwrap();
    std::fs::write(dir.path().join("shard-0"), b"not a directory").unwrap();
    let err = Server::try_start(dir.path(), 1, &[])
        .err()
        .expect("a shard directory that is a file must stop the start");
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in: {err}"));
    assert!(line.contains("opening"), "{line}");
    assert_eq!(line.matches("os error").count(), 1, "{line}");
}

/// A second server (its own data directory) on any address a running
/// server listens on is refused: the shared one, a shard's own, the
/// metrics one. With SO_REUSEPORT the kernel let it join, and split the
/// connections between two databases.
#[test]
fn a_second_server_on_a_running_servers_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start(dir.path(), 2, &[]);
    let port = |addr: &str| addr.rsplit_once(':').unwrap().1.to_string();
    let shard_port = port(&first.shard_addresses[0]);
    let metrics = first.metrics.clone().unwrap();
    let cases: [(&[&str], String); 3] = [
        (
            &["--listen", &first.listen],
            format!("listening on {}: the address is in use", first.listen),
        ),
        (
            &["--shard-base-port", &shard_port],
            format!("shard 0: listening on 127.0.0.1:{shard_port}"),
        ),
        (
            &["--metrics", &metrics],
            format!("metrics: listening on {metrics}"),
        ),
    ];
    for (args, expected) in cases {
        let other = tempfile::tempdir().unwrap();
        // One shard: with two, the second's port (the one after the
        // first's) may be taken as well, by anyone, and its error may come
        // first.
        let err = Server::try_start(other.path(), 1, args)
            .err()
            .unwrap_or_else(|| panic!("a second server with {args:?} started"));
        assert!(err.contains(&expected), "{args:?}: {err}");
        assert!(err.contains("Address already in use"), "{args:?}: {err}");
    }
    // Every new connection still reaches the first server's data.
    Client::connect(first.listen.as_str())
        .unwrap()
        .put("owner", "first")
        .unwrap();
    for _ in 0..20 {
        let mut client = Client::connect(first.listen.as_str()).unwrap();
        assert_eq!(client.get("owner").unwrap(), Some(Bytes::from("first")));
    }
    assert!(first.stop());
}

/// Writes `count` keys of `value_bytes` each, then reads back a sample.
fn write_and_read_back(client: &mut Client, count: usize, value_bytes: usize) {
    let value = Bytes::from(vec![b'v'; value_bytes]);
    for i in 0..count {
        client.put(format!("key-{i:05}"), value.clone()).unwrap();
    }
    for i in (0..count).step_by(61) {
        assert_eq!(
            client.get(format!("key-{i:05}")).unwrap(),
            Some(value.clone())
        );
    }
}

/// A server started with a low open-files limit raises its soft limit to
/// the hard one, and keeps half of it from connections: clients beyond
/// that are refused, and flushes and compactions still get the files they
/// open. Before, ~1000 connections under the usual soft limit of 1024 took
/// every descriptor, and a shard's flushes failed.
#[test]
fn connections_leave_the_engine_room_under_the_open_files_limit() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let mut command = Server::command(
        dir.path(),
        1,
        &["--memtable-bytes", "131072", "--prefault-memory", "false"],
    );
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 100,
                rlim_max: 200,
            };
            match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    let server = Server::spawn(command).unwrap();
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    // 200 files, half for connections: 150 more are more than fit.
    let held: Vec<_> = (0..150)
        .map(|_| std::net::TcpStream::connect(server.listen.as_str()).unwrap())
        .collect();
    write_and_read_back(&mut client, 3000, 1024);
    let stats = client.stats().unwrap();
    let metric = |name: &str| {
        stats
            .iter()
            .filter(|m| m.name == name)
            .map(|m| m.value)
            .sum::<f64>()
    };
    assert!(metric("connections_refused_total") >= 40.0, "{stats:?}");
    assert!(metric("flushes_total") >= 10.0, "{stats:?}");
    for failures in [
        "flush_errors_total",
        "compaction_errors_total",
        "wal_errors_total",
    ] {
        assert_eq!(metric(failures), 0.0, "{failures}");
    }
    drop((held, client));
    let (stopped, stderr) = server.stop_with_stderr();
    assert!(stopped, "{stderr}");
    assert!(
        stderr.contains("the open-files limit leaves room for fewer connections")
            && stderr.contains("open_files=200")
            && stderr.contains("connections_per_shard=100"),
        "{stderr}"
    );
}

/// A memory cgroup of this test's own, removed when dropped: cgroup v1's
/// memory hierarchy or, without it, the v2 root when it delegates the
/// memory controller. `None` where neither can be written (not root).
struct MemoryCgroup {
    dir: std::path::PathBuf,
    /// `cgroup.procs`, opened before the fork: writing "0" to it moves the
    /// writer, the child between fork and exec.
    procs: std::fs::File,
}

impl MemoryCgroup {
    fn create(limit_bytes: u64) -> Option<MemoryCgroup> {
        let name = format!("tessera-test-{}", std::process::id());
        let v1 = std::path::Path::new("/sys/fs/cgroup/memory");
        let v2 = std::path::Path::new("/sys/fs/cgroup");
        let delegates_memory = std::fs::read_to_string(v2.join("cgroup.subtree_control"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let (dir, limit_file) = if v1.join("memory.limit_in_bytes").exists() {
            (v1.join(&name), "memory.limit_in_bytes")
        } else if delegates_memory {
            (v2.join(&name), "memory.max")
        } else {
            return None;
        };
        std::fs::create_dir(&dir).ok()?;
        let made = std::fs::write(dir.join(limit_file), limit_bytes.to_string()).and_then(|()| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
        });
        match made {
            Ok(procs) => Some(MemoryCgroup { dir, procs }),
            Err(_) => {
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A server in a container's memory limit sizes itself to the limit,
/// not to the host's memory that /proc/meminfo reports there. Before,
/// two default shards prefaulted their 1 GiB budget at startup and the
/// kernel killed the server before it was ready; now the settings not
/// given shrink to fit a third of the limit, connections are capped at
/// what another third holds, it says so, and it serves.
#[test]
fn a_server_in_a_memory_limited_cgroup_sizes_itself_to_the_limit() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let Some(cgroup) = MemoryCgroup::create(768 << 20) else {
        eprintln!("skipped: no memory cgroup can be made here (needs root and cgroups)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut command = Server::command(dir.path(), 2, &["--wal-sync", "none"]);
    command.env("RUST_LOG", "info");
    let procs = cgroup.procs.as_raw_fd();
    // SAFETY: one write(2) to a descriptor opened before the fork.
    unsafe {
        command.pre_exec(move || match libc::write(procs, b"0".as_ptr().cast(), 1) {
            1 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        });
    }
    let server = Server::spawn(command).expect("the server starts inside the limit");
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    write_and_read_back(&mut client, 8000, 16 << 10);
    drop(client);
    let (stopped, stderr) = server.stop_with_stderr();
    assert!(stopped, "{stderr}");
    // 768 MiB / 3 / 2 shards = 128 MiB each: every default quartered.
    let shrunk = stderr
        .lines()
        .find(|l| l.contains("memory settings not given were shrunk"))
        .unwrap_or_else(|| panic!("no sizing line: {stderr}"));
    for said in [
        "limit_mib=768",
        "of=\"cgroup\"",
        "to_mib=256",
        "memtable_mib=16",
        "cache_mib=64",
        "row_cache_mib=16",
    ] {
        assert!(shrunk.contains(said), "{said} not in {shrunk}");
    }
    assert!(
        stderr.contains("memory budget prefaulted mib=256"),
        "{stderr}"
    );
    // Connections get another third: 1,024 per shard at 128 KiB.
    assert!(
        stderr.lines().any(
            |l| l.contains("the memory limit leaves room for fewer connections")
                && l.contains("connections_per_shard=1024")
        ),
        "{stderr}"
    );
}

/// A server started under `taskset` (or in a container's cpuset) runs
/// its shards on the CPUs it was given. Before, it pinned shard 0 to CPU
/// 0 whatever its affinity: `taskset -c 1 tessera-server` served from
/// CPU 0.
#[test]
fn a_server_under_taskset_pins_its_shards_to_the_cpus_it_was_given() {
    use std::os::unix::process::CommandExt;
    let allowed = tessera_net::machine::Machine::read().cpus;
    let Some(&cpu) = allowed.last().filter(|_| allowed.len() >= 2) else {
        eprintln!("skipped: this process may run on one CPU only");
        return;
    };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: a zeroed cpu_set_t is an empty set; `cpu` is below its size.
    let mut only = unsafe { std::mem::zeroed::<libc::cpu_set_t>() };
    unsafe { libc::CPU_SET(cpu, &mut only) };
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(common::server_binary());
    command
        .arg("--data")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--shard-base-port", "0"])
        .args(["--metrics", "off", "--prefault-memory", "false"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: one sched_setaffinity(2) between fork and exec.
    unsafe {
        command.pre_exec(move || match libc::sched_setaffinity(0, size, &only) {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        });
    }
    let server = Server::spawn(command).unwrap();
    assert_eq!(server.shard_addresses.len(), 1, "one CPU, one shard");
    let tasks = format!("/proc/{}/task", server.child.id());
    let shard_cpus: Vec<String> = std::fs::read_dir(tasks)
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?.path();
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            (comm.trim() == "tessera-shard-0").then(|| {
                let status = std::fs::read_to_string(t.join("status")).unwrap();
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                    .unwrap()
                    .trim()
                    .to_string()
            })
        })
        .collect();
    assert!(!shard_cpus.is_empty(), "no tessera-shard-0 thread");
    for on in shard_cpus {
        assert_eq!(
            on,
            cpu.to_string(),
            "shard 0 runs on CPUs {on}, given {cpu}"
        );
    }
    assert!(server.stop());
}

/// The shard addresses a server's topology gives a connection to `addr`.
fn shard_addresses_told(addr: &str) -> Vec<String> {
    let mut c = tessera_client::Connection::open(addr, std::time::Duration::from_secs(10)).unwrap();
    c.hello("test", None).unwrap();
    let Response::Topology { shards, .. } = c.call(&Request::Topology).unwrap() else {
        panic!("not a topology");
    };
    shards.into_iter().map(|(_, a)| a).collect()
}

/// A server listening on every address (`--listen 0.0.0.0:PORT`)
/// advertises its shards at the address each client reached it on. Before,
/// the topology said `0.0.0.0:PORT`: shard-aware clients on this machine
/// got through only because connecting to 0.0.0.0 reaches the local host,
/// and a client on another machine connected to itself.
#[test]
fn a_server_on_every_address_advertises_its_shards_where_the_client_reached_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2, &["--listen", "0.0.0.0:0"]);
    let port = server.listen.rsplit(':').next().unwrap().to_string();
    assert!(server.listen.starts_with("0.0.0.0:"), "{}", server.listen);
    for seen_at in ["127.0.0.1", "127.0.0.2"] {
        let advertised = shard_addresses_told(&format!("{seen_at}:{port}"));
        let bound: Vec<String> = server
            .shard_addresses
            .iter()
            .map(|a| a.replacen("0.0.0.0", seen_at, 1))
            .collect();
        assert_eq!(advertised, bound, "reached at {seen_at}");
    }
    let mut client = Client::connect(format!("127.0.0.2:{port}")).unwrap();
    for i in 0..50 {
        client.put(format!("k{i}"), "v").unwrap();
    }
    assert_eq!(client.get("k7").unwrap(), Some(Bytes::from("v")));
    drop(client);
    assert!(server.stop());
}

/// `--advertise-host` is the host shard-aware clients are told to reach
/// the shard ports at (behind NAT the server cannot see it).
#[test]
fn an_advertised_host_is_what_clients_are_told() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        2,
        &["--listen", "0.0.0.0:0", "--advertise-host", "localhost"],
    );
    let port = server.listen.rsplit(':').next().unwrap().to_string();
    let told = shard_addresses_told(&format!("127.0.0.1:{port}"));
    let expected: Vec<String> = server
        .shard_addresses
        .iter()
        .map(|a| a.replacen("0.0.0.0", "localhost", 1))
        .collect();
    assert_eq!(told, expected);
    let mut client = Client::connect(format!("127.0.0.1:{port}")).unwrap();
    client.put("k", "v").unwrap();
    assert_eq!(client.get("k").unwrap(), Some(Bytes::from("v")));
    drop(client);
    assert!(server.stop());
}

/// One raw connection's framing, for tests that control how request bytes
/// reach the server.
struct RawConnection {
    stream: std::net::TcpStream,
    received: bytes::BytesMut,
    next_id: u64,
}

impl RawConnection {
    fn open(addr: &str) -> RawConnection {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        RawConnection {
            stream,
            received: bytes::BytesMut::new(),
            next_id: 1,
        }
    }

    /// Frames `requests` with fresh ids; returns the bytes and the ids.
    fn frames(&mut self, requests: &[Request]) -> (Vec<u8>, Vec<u64>) {
        let mut out = Vec::new();
        let mut ids = Vec::new();
        for r in requests {
            put_frame(&mut out, &r.encode(self.next_id));
            ids.push(self.next_id);
            self.next_id += 1;
        }
        (out, ids)
    }

    /// Reads `n` responses, in the order they arrive.
    fn responses(&mut self, n: usize) -> Vec<(u64, Response)> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            if let Some(frame) = next_frame(&mut self.received, 1 << 24).unwrap() {
                got.push(decode_response(&frame).unwrap());
                continue;
            }
            let mut chunk = [0u8; 16 << 10];
            let read = self.stream.read(&mut chunk).unwrap();
            assert!(read > 0, "server closed the connection");
            self.received.extend_from_slice(&chunk[..read]);
        }
        got
    }

    /// Sends `requests` as one write and checks every response is a write
    /// acknowledgement for its id.
    fn put_all(&mut self, requests: &[Request]) {
        let (bytes, ids) = self.frames(requests);
        self.stream.write_all(&bytes).unwrap();
        self.expect_written(&ids);
    }

    /// Reads a response per id in `ids`, in any order, and checks each is
    /// a write acknowledgement.
    fn expect_written(&mut self, ids: &[u64]) {
        let mut answered: Vec<u64> = self
            .responses(ids.len())
            .into_iter()
            .map(|(id, r)| {
                assert!(matches!(r, Response::Written { .. }), "id {id}: {r:?}");
                id
            })
            .collect();
        answered.sort_unstable();
        assert_eq!(answered, ids);
    }
}

fn put(key: String, value: Vec<u8>) -> Request {
    Request::Put {
        key: key.into(),
        value: value.into(),
        ttl_ms: 0,
    }
}

/// The server reads a quiet connection and a streaming one differently
/// (a completion read per small request, readiness and `recv` once a read
/// brings a burst). On one connection, small requests one at a time, a
/// burst of 500, a large value written in pieces and a frame written a byte
/// at a time all arrive whole and in order, and every value reads back.
#[test]
fn frames_arrive_whole_however_their_bytes_are_split_or_batched() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 1, &[]);
    let mut c = RawConnection::open(&server.listen);
    let value = |i: usize, len: usize| -> Vec<u8> { (0..len).map(|j| (i * 7 + j) as u8).collect() };
    let mut expected = Vec::new();
    for i in 0..50 {
        expected.push((format!("quiet{i}"), value(i, 20)));
        c.put_all(&[put(format!("quiet{i}"), value(i, 20))]);
    }
    let burst: Vec<Request> = (0..500)
        .map(|i| put(format!("burst{i}"), value(i, 100)))
        .collect();
    expected.extend((0..500).map(|i| (format!("burst{i}"), value(i, 100))));
    c.put_all(&burst);
    // A large value in 1000-byte pieces, each its own segment.
    let (bytes, _) = c.frames(&[put("large".into(), value(9, 300 << 10))]);
    for piece in bytes.chunks(1000) {
        c.stream.write_all(piece).unwrap();
    }
    assert!(matches!(c.responses(1)[0].1, Response::Written { .. }));
    expected.push(("large".into(), value(9, 300 << 10)));
    // A small frame a byte at a time, after the burst.
    let (bytes, _) = c.frames(&[put("trickle".into(), value(3, 30))]);
    for byte in bytes.chunks(1) {
        c.stream.write_all(byte).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(matches!(c.responses(1)[0].1, Response::Written { .. }));
    expected.push(("trickle".into(), value(3, 30)));
    // Read back one at a time (quiet again), then all in one write.
    for (key, v) in expected.iter().take(20) {
        let (bytes, _) = c.frames(&[Request::Get {
            key: key.clone().into(),
        }]);
        c.stream.write_all(&bytes).unwrap();
        assert_eq!(
            c.responses(1)[0].1,
            Response::value(Some(v.clone().into())),
            "{key}"
        );
    }
    let gets: Vec<Request> = expected
        .iter()
        .map(|(key, _)| Request::Get {
            key: key.clone().into(),
        })
        .collect();
    let (bytes, ids) = c.frames(&gets);
    c.stream.write_all(&bytes).unwrap();
    let mut by_id: std::collections::HashMap<u64, Response> =
        c.responses(ids.len()).into_iter().collect();
    for (id, (key, v)) in ids.iter().zip(&expected) {
        assert_eq!(
            by_id.remove(id),
            Some(Response::value(Some(v.clone().into()))),
            "{key}"
        );
    }
    assert!(server.stop(), "clean shutdown exits 0");
}

/// A connection needs no Hello: its first request may be any, including
/// those whose responses the server writes without its flatbuffer builder
/// (a first PING, GET or PUT once brought the shard down).
#[test]
fn any_request_may_be_a_connections_first() {
    use common::raw::{raw, read_response, send_frame};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 1, &[]);
    let get = |key: &'static str| Request::Get {
        key: Bytes::from_static(key.as_bytes()),
    };
    let firsts = [
        Request::Ping,
        put("k".into(), b"v".to_vec()),
        get("k"),
        get("absent"),
        Request::Delete {
            key: Bytes::from_static(b"k"),
        },
    ];
    for (id, first) in firsts.into_iter().enumerate() {
        let mut s = raw(&server.listen);
        send_frame(&mut s, &first.encode(id as u64));
        let (got, response) = read_response(&mut s).expect("an answer, not a closed connection");
        assert_eq!(got, id as u64);
        match (&first, response) {
            (Request::Ping, Response::Pong) => {}
            (Request::Put { .. } | Request::Delete { .. }, Response::Written { ts }) => {
                assert!(ts > 0)
            }
            (Request::Get { key }, Response::Get { value, .. }) => {
                let expected = (key.as_ref() == b"k").then(|| Bytes::from_static(b"v"));
                assert_eq!(value, expected);
            }
            (first, other) => panic!("{first:?} answered with {other:?}"),
        }
    }
    assert!(server.stop(), "the server exits cleanly");
}

/// Durable writes wait for their group commit beside the read loop, at
/// most `--inflight-per-connection-max` per connection. A burst ten times
/// that, sent by a client that then closes its sending side, is read as
/// room frees, and every write is answered before the server closes its
/// side (up to 100 still wait when the server reads the end of the
/// stream); each then reads back.
#[test]
fn a_burst_past_the_inflight_bound_is_answered_after_a_half_close() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        1,
        &[
            "--wal-sync",
            "always",
            "--inflight-per-connection-max",
            "100",
        ],
    );
    let mut c = RawConnection::open(&server.listen);
    let value = |i: usize| format!("value{i}").into_bytes();
    let burst: Vec<Request> = (0..1000).map(|i| put(format!("k{i}"), value(i))).collect();
    let (bytes, ids) = c.frames(&burst);
    c.stream.write_all(&bytes).unwrap();
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    c.expect_written(&ids);
    let mut rest = Vec::new();
    c.stream.read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty() && c.received.is_empty(),
        "nothing after the answers"
    );
    let mut c = RawConnection::open(&server.listen);
    let gets: Vec<Request> = (0..1000)
        .map(|i| Request::Get {
            key: format!("k{i}").into(),
        })
        .collect();
    let (bytes, ids) = c.frames(&gets);
    c.stream.write_all(&bytes).unwrap();
    let mut by_id: std::collections::HashMap<u64, Response> =
        c.responses(ids.len()).into_iter().collect();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            by_id.remove(id),
            Some(Response::value(Some(value(i).into()))),
            "k{i}"
        );
    }
    assert!(server.stop(), "clean shutdown exits 0");
}
