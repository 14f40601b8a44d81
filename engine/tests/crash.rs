//! Crash test on the real disk: a child process writes with `always` sync
//! and reports each acknowledged key; we SIGKILL it at a random moment,
//! reopen, and check that every acknowledged write is present and intact.
//! `TESSERA_CRASH_CYCLES` sets the number of cycles (default 4;
//! `scripts/crash-loop.sh` runs hundreds).

use rand::Rng;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tessera_engine::{run_local, Engine, Options};

fn child_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tessera-crash-writer"))
}

#[test]
fn every_acknowledged_write_survives_sigkill() {
    let cycles: usize = std::env::var("TESSERA_CRASH_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(4);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::thread_rng();
    let mut acknowledged: Vec<String> = Vec::new();
    for cycle in 0..cycles {
        let mut child = Command::new(child_binary())
            .arg(dir.path())
            .arg(format!("c{cycle:04}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cargo builds tessera-crash-writer for this test");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the child's first acknowledged write, then let it write
        // for a random while.
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), "ready");
        acknowledged.push(rx.recv_timeout(Duration::from_secs(30)).unwrap());
        let run_for = Duration::from_millis(rng.gen_range(20..400));
        let start = Instant::now();
        while start.elapsed() < run_for {
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success());
        reader.join().unwrap();
        acknowledged.extend(rx.try_iter());
        let keys = acknowledged.clone();
        let path = dir.path().to_path_buf();
        let missing = run_local(move || async move {
            let engine = Engine::open(&path, Options::default()).await.unwrap();
            let mut missing = Vec::new();
            for key in &keys {
                let want = key.rsplit('-').next().unwrap().parse::<u64>().unwrap() % 200;
                match engine.get(key.as_bytes()).await.unwrap() {
                    Some(v) => assert_eq!(
                        v,
                        format!("{key}:{}", "v".repeat(want as usize)),
                        "wrong value for {key}"
                    ),
                    None => missing.push(key.clone()),
                }
            }
            engine.close().await.unwrap();
            missing
        });
        assert!(
            missing.is_empty(),
            "cycle {cycle}: {} acknowledged writes lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
    eprintln!(
        "{cycles} crash cycles, {} acknowledged writes all present",
        acknowledged.len()
    );
}
