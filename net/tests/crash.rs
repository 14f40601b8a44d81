//! Crash test of the real server: SDK clients write concurrently (`always`
//! sync), the server is SIGKILLed at a random moment and restarted; every
//! acknowledged write must be readable, and no key that was never sent may
//! appear. `TESSERA_SERVER_CRASH_CYCLES` sets the cycles (default 3);
//! `scripts/server-crash-loop.sh` runs hundreds.

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

#[test]
fn acknowledged_writes_survive_sigkill_of_the_server() {
    let cycles: usize = std::env::var("TESSERA_SERVER_CRASH_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::thread_rng();
    let mut acked_total = 0;
    for cycle in 0..cycles {
        let server = Server::start(dir.path(), 2, &[]);
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (addr, stop) = (server.listen.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut client = Client::connect(addr.as_str()).unwrap();
                    let (mut acked, mut sent) = (Vec::new(), 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("c{cycle:03}-w{w}-{sent:08}");
                        sent += 1;
                        match client.put(key.clone(), value(&key)) {
                            Ok(_) => acked.push(key),
                            Err(_) => break, // the server died under us
                        }
                    }
                    (w, acked, sent)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..600)));
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        let results: Vec<_> = writers.into_iter().map(|h| h.join().unwrap()).collect();
        let server = Server::start(dir.path(), 2, &[]);
        let mut client = Client::connect(server.listen.as_str()).unwrap();
        for (w, acked, sent) in &results {
            for key in acked {
                assert_eq!(
                    client.get(key.clone()).unwrap(),
                    Some(value(key)),
                    "cycle {cycle}: acknowledged {key} lost"
                );
            }
            for seq in *sent..sent + 5 {
                let key = format!("c{cycle:03}-w{w}-{seq:08}");
                assert_eq!(
                    client.get(key.clone()).unwrap(),
                    None,
                    "cycle {cycle}: never-sent {key} exists"
                );
            }
            acked_total += acked.len();
        }
        assert!(
            results.iter().any(|(_, acked, _)| !acked.is_empty()),
            "cycle {cycle}: nothing was acknowledged"
        );
        assert!(server.stop());
    }
    eprintln!("{cycles} server crash cycles, {acked_total} acknowledged writes all present");
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
