//! Crash tests of the real server: SDK clients write concurrently, the
//! server is SIGKILLed at a random moment and restarted, in each WAL sync
//! mode. `always` and `interval` must keep every acknowledged write (an
//! acknowledgement follows the group's direct write, which a process crash
//! cannot undo); `none` may lose the groups not yet written, but only a
//! suffix of each writer's writes, and the server must start again as it
//! is. No key that was never sent may appear. `TESSERA_SERVER_CRASH_CYCLES`
//! sets the cycles (default 3); `scripts/server-crash-loop.sh` runs hundreds.

mod common;

use bytes::Bytes;
use common::Server;
use rand::Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tessera_client::Client;

const WRITERS: usize = 8;

fn value(key: &str) -> Bytes {
    Bytes::from(format!("{key}={}", key.len()))
}

fn key_of(cycle: usize, writer: usize, seq: u64) -> String {
    format!("c{cycle:03}-w{writer}-{seq:08}")
}

/// What one writer did in a cycle: its writes acknowledged, in order, and
/// how many it sent.
struct Written {
    writer: usize,
    acked: Vec<String>,
    sent: u64,
}

/// Runs the cycles against a server of `shards` shards started with
/// `--wal-sync sync`; after each restart `check` reads back each writer's
/// keys of that cycle and returns how many acknowledged writes it found.
fn crash_cycles(shards: usize, sync: &str, check: impl Fn(&mut Client, usize, &Written) -> usize) {
    let cycles: usize = std::env::var("TESSERA_SERVER_CRASH_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let args = ["--wal-sync", sync];
    let mut rng = rand::thread_rng();
    let (mut acked_total, mut found_total, mut most_lost) = (0, 0, 0);
    for cycle in 0..cycles {
        let server = Server::start(dir.path(), shards, &args);
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let (addr, stop) = (server.listen.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut client = Client::connect(addr.as_str()).unwrap();
                    let (mut acked, mut sent) = (Vec::new(), 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        let key = key_of(cycle, writer, sent);
                        sent += 1;
                        match client.put(key.clone(), value(&key)) {
                            Ok(_) => acked.push(key),
                            Err(_) => break, // the server died under us
                        }
                    }
                    Written {
                        writer,
                        acked,
                        sent,
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..600)));
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        let results: Vec<_> = writers.into_iter().map(|h| h.join().unwrap()).collect();
        let server = Server::try_start(dir.path(), shards, &args)
            .unwrap_or_else(|e| panic!("cycle {cycle}: the server did not start again: {e}"));
        let mut client = Client::connect(server.listen.as_str()).unwrap();
        let mut lost = 0;
        for written in &results {
            let found = check(&mut client, cycle, written);
            found_total += found;
            lost += written.acked.len() - found;
            for seq in written.sent..written.sent + 5 {
                let key = key_of(cycle, written.writer, seq);
                assert_eq!(
                    client.get(key.clone()).unwrap(),
                    None,
                    "cycle {cycle}: never-sent {key} exists"
                );
            }
            acked_total += written.acked.len();
        }
        most_lost = most_lost.max(lost);
        assert!(
            results.iter().any(|w| !w.acked.is_empty()),
            "cycle {cycle}: nothing was acknowledged"
        );
        assert!(server.stop());
    }
    eprintln!(
        "--wal-sync {sync}: {cycles} server crash cycles, \
         {found_total} of {acked_total} acknowledged writes present, \
         at most {most_lost} lost in one crash"
    );
}

/// Every acknowledged write of `written` reads back; returns their count.
fn all_acknowledged_present(client: &mut Client, cycle: usize, written: &Written) -> usize {
    for key in &written.acked {
        assert_eq!(
            client.get(key.clone()).unwrap(),
            Some(value(key)),
            "cycle {cycle}: acknowledged {key} lost"
        );
    }
    written.acked.len()
}

#[test]
fn acknowledged_writes_survive_sigkill_of_the_server() {
    crash_cycles(2, "always", all_acknowledged_present);
}

/// `interval` syncs only every so often (power loss may take up to the
/// interval) but acknowledges after the direct write: a process crash
/// loses nothing. An hour, so no sync happens during the test.
#[test]
fn acknowledged_writes_survive_sigkill_in_interval_mode() {
    crash_cycles(2, "interval:3600000", all_acknowledged_present);
}

/// `none` acknowledges from the memtable; a crash loses what the WAL had
/// not written yet. One shard, one WAL: what survives of each writer's
/// writes is a prefix of them (a write is queued to the WAL only after the
/// writer's previous one was acknowledged), and whatever is lost, the
/// restart needs no `--wal-recovery point-in-time`.
#[test]
fn sigkill_in_none_mode_loses_at_most_a_suffix_of_each_writers_writes() {
    crash_cycles(1, "none", |client, cycle, written| {
        let present: Vec<bool> = written
            .acked
            .iter()
            .map(|key| match client.get(key.clone()).unwrap() {
                Some(v) => {
                    assert_eq!(v, value(key), "cycle {cycle}: {key} has a wrong value");
                    true
                }
                None => false,
            })
            .collect();
        let found = present.iter().take_while(|p| **p).count();
        assert!(
            present[found..].iter().all(|p| !p),
            "cycle {cycle}: writer {} lost {} but kept a later write",
            written.writer,
            written.acked[found]
        );
        found
    });
}

/// Set in the child process of the test below.
const PANIC_CHILD: &str = "TESSERA_TEST_PANIC_CHILD";

/// A panic on one shard's thread ends the whole process (the server
/// binary's hook): without it that thread alone ends and the process goes
/// on. The test runs itself again as a child that installs the hook, keeps
/// a second shard-like thread running, and panics a task on the first.
#[test]
fn a_panic_on_a_shard_thread_aborts_the_server_process() {
    use std::os::unix::process::ExitStatusExt;
    let name = "a_panic_on_a_shard_thread_aborts_the_server_process";
    if std::env::var_os(PANIC_CHILD).is_some() {
        // As the server binary does: log through tracing, then the hook.
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
        tessera_net::runtime::abort_on_panic();
        let executor =
            |name: &str| glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).name(name);
        let _other = executor("tessera-shard-0")
            .spawn(|| glommio::timer::sleep(Duration::from_secs(30)))
            .unwrap();
        let panicking = executor("tessera-shard-1")
            .spawn(|| async {
                glommio::spawn_local(async { panic!("injected shard panic") }).await;
            })
            .unwrap();
        let joined = panicking.join();
        println!("the process went on after the panic (joined: {joined:?})");
        std::process::exit(0);
    }
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(PANIC_CHILD, "1")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr),
    );
    assert_eq!(
        child.status.signal(),
        Some(libc::SIGABRT),
        "{:?}\nstdout: {stdout}\nstderr: {stderr}",
        child.status
    );
    let line = stderr
        .lines()
        .find(|l| l.contains("injected shard panic"))
        .unwrap_or_else(|| panic!("no panic line in: {stderr}"));
    assert!(line.contains("tessera-shard-1"), "{line}");
    assert!(line.contains("aborting the server"), "{line}");
}
