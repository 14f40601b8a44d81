//! A real full disk under the real server. The data directory is a small
//! ext4 filesystem on a loop device, so every layer the server uses in
//! production (O_DIRECT writes through io_uring, `fallocate` of WAL
//! segments, table files, the manifest) meets a real `ENOSPC`.
//! `engine/tests/faults.rs` injects the same errors into an in-memory disk;
//! this test checks that the real one reports them the same way.
//!
//! Mounting needs root and loop devices (CI runs as root on a VM that has
//! them). Where either is missing, or the mount is refused, the test says
//! why and returns.

mod common;

use bytes::Bytes;
use common::{http, Server};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tessera_client::{Client, Error};
use tessera_protocol::ErrorCode;

const IMAGE_MIB: u64 = 64;
/// Taken from the filesystem before the server starts and given back once
/// the disk is full: enough for the flushes and compactions that failed
/// meanwhile to finish (with 12 MiB they filled the disk again, and the
/// health check rightly stayed 503).
const FILLER_MIB: usize = 24;
const VALUE_BYTES: usize = 4096;
const WRITERS: usize = 4;

/// An ext4 image mounted through a loop device, unmounted on drop.
struct LoopMount {
    _dir: tempfile::TempDir,
    at: PathBuf,
}

impl LoopMount {
    /// `Err` says why this machine cannot mount one (not root, no loop
    /// devices, the mount refused); anything else failing fails the test.
    fn new(mib: u64) -> Result<LoopMount, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("mounting needs root".into());
        }
        if !Path::new("/dev/loop-control").exists() {
            return Err("no loop devices (/dev/loop-control)".into());
        }
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("ext4.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        let at = dir.path().join("mnt");
        std::fs::create_dir(&at).unwrap();
        let mount = Command::new("mount")
            .args(["-o", "loop", image.to_str().unwrap(), at.to_str().unwrap()])
            .output()
            .expect("mount runs");
        if !mount.status.success() {
            return Err(format!(
                "mount -o loop failed: {}",
                String::from_utf8_lossy(&mount.stderr).trim()
            ));
        }
        Ok(LoopMount { _dir: dir, at })
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        // Lazy, so a test that failed with files still open leaves no mount.
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn value(key: &str) -> Bytes {
    let mut v = key.as_bytes().repeat(VALUE_BYTES / key.len() + 1);
    v.truncate(VALUE_BYTES);
    Bytes::from(v)
}

/// Starts the server on `data`; the thread returns everything it wrote to
/// stderr once it exits (read as it comes: a full disk makes it log every
/// retry, and a pipe nobody reads would block it).
fn start(data: &Path) -> (Server, std::thread::JoinHandle<String>) {
    let mut server = Server::start(
        data,
        1,
        &[
            "--wal-sync",
            "always",
            "--wal-segment-bytes",
            "4194304",
            "--memtable-bytes",
            "2097152",
            "--cache-bytes",
            "1048576",
            "--row-cache-bytes",
            "0",
            "--prefault-memory",
            "false",
        ],
    );
    let mut stderr = server.child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    (server, log)
}

#[test]
fn a_full_disk_fails_writes_clearly_and_loses_no_acknowledged_write() {
    let disk = match LoopMount::new(IMAGE_MIB) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let filler = disk.at.join("filler");
    std::fs::write(&filler, vec![0xa5u8; FILLER_MIB << 20]).unwrap();
    let data = disk.at.join("data");
    let (server, log) = start(&data);

    // Writers put until the disk is full and each has had a write refused.
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let addr = server.listen.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(addr.as_str()).unwrap();
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut acked = Vec::new();
                loop {
                    assert!(Instant::now() < deadline, "the disk never filled");
                    let key = format!("w{w}-{:08}", acked.len());
                    match client.put(key.clone(), value(&key)) {
                        Ok(_) => acked.push(key),
                        Err(e) => return (acked, e),
                    }
                }
            })
        })
        .collect();
    let mut acked = Vec::new();
    for writer in writers {
        let (keys, error) = writer.join().unwrap();
        match &error {
            Error::Server { code, message } => {
                assert_eq!(*code, ErrorCode::Storage, "{error}");
                assert!(message.contains("No space left"), "{error}");
            }
            other => panic!("a full disk should be a storage error, got {other}"),
        }
        acked.extend(keys);
    }
    assert!(
        acked.len() > 1000,
        "only {} writes before the disk filled",
        acked.len()
    );

    // Full, the server still answers, and reads see every acknowledged write.
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    client.ping().unwrap();
    let failures: f64 = client
        .stats()
        .unwrap()
        .iter()
        .filter(|m| m.name == "flush_errors_total" || m.name == "compaction_errors_total")
        .map(|m| m.value)
        .sum();
    assert!(
        failures > 0.0,
        "the metrics show no failed flush or compaction"
    );
    let failing = |client: &mut Client| {
        let stats = client.stats().unwrap();
        stats
            .iter()
            .find(|m| m.name == "writes_failing")
            .unwrap()
            .value
    };
    assert_eq!(failing(&mut client), 1.0);
    for key in &acked {
        assert_eq!(
            client.get(key.clone()).unwrap(),
            Some(value(key)),
            "{key} while full"
        );
    }
    // The health check says writes fail, and why.
    let metrics = server.metrics.clone().unwrap();
    let health = || http(&metrics, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let (status, body) = health();
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{body}");
    assert!(
        body.starts_with("shard 0: ") && body.contains("No space left"),
        "{body}"
    );

    // With space back, writes are accepted again once a flush retries.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let key = "after-space-returned".to_string();
    loop {
        match client.put(key.clone(), value(&key)) {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "writes still fail: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    acked.push(key);
    // Healthy again once the failed flush has been retried.
    loop {
        let (status, body) = health();
        if status == "HTTP/1.1 200 OK" {
            assert_eq!(body, "shard 0: ok\n");
            assert_eq!(failing(&mut client), 0.0);
            break;
        }
        assert!(Instant::now() < deadline, "still unhealthy: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // And a crash loses none of them.
    drop(client);
    server.kill9();
    let log = log.join().unwrap();
    assert!(log.contains("No space left on device"), "{log}");
    let (server, log) = start(&data);
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    for key in &acked {
        assert_eq!(
            client.get(key.clone()).unwrap(),
            Some(value(key)),
            "{key} after kill -9"
        );
    }
    drop(client);
    // The restarted server fills the disk again (its flushes and
    // compactions need room the data leaves no more of), so it may or may
    // not manage its final flush: it either stops cleanly or says why in
    // one line and exits non-zero.
    let clean = server.stop();
    let log = log.join().unwrap();
    if !clean {
        let last = log.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains("No space left on device"),
            "{log}"
        );
    }
}
