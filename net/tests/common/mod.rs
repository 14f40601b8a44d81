//! Starts the real `tessera-server` binary on free localhost ports.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod history;
pub mod raw;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Server {
    pub child: Child,
    pub listen: String,
    pub shard_addresses: Vec<String>,
    pub metrics: Option<String>,
}

impl Server {
    pub fn start(data: &Path, shards: usize, extra: &[&str]) -> Server {
        Self::try_start(data, shards, extra).unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    /// Starts the server; `Err` carries its stderr when it exits instead.
    /// Shard ports are picked free unless `extra` names a base port.
    pub fn try_start(data: &Path, shards: usize, extra: &[&str]) -> Result<Server, String> {
        Self::spawn(Self::command(data, shards, extra))
    }

    /// The command [`Server::try_start`] runs, to adjust before [`Server::spawn`].
    pub fn command(data: &Path, shards: usize, extra: &[&str]) -> Command {
        let mut command = Self::command_without_shards(data, extra);
        command.args(["--shards", &shards.to_string()]);
        command
    }

    /// [`Server::command`] without `--shards`: the server picks the count.
    pub fn command_without_shards(data: &Path, extra: &[&str]) -> Command {
        let base_port = match extra.contains(&"--shard-base-port") {
            true => &[][..],
            false => &["--shard-base-port", "0"][..],
        };
        let listen = match extra.contains(&"--listen") {
            true => &[][..],
            false => &["--listen", "127.0.0.1:0"][..],
        };
        let metrics = match extra.contains(&"--metrics") {
            true => &[][..],
            false => &["--metrics", "127.0.0.1:0"][..],
        };
        let mut command = Command::new(server_binary());
        command
            .arg("--data")
            .arg(data)
            .args(listen)
            .args(["--cpus", "any"])
            .args(base_port)
            .args(metrics)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs `command` and waits for the server's ready line.
    pub fn spawn(mut command: Command) -> Result<Server, String> {
        let mut child = command
            .spawn()
            .expect("tessera-server is built for this test");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => Ok(parse_ready(child, &line)),
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        }
    }

    /// SIGTERM, then waits; returns whether it exited 0.
    pub fn stop(mut self) -> bool {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap().success()
    }

    /// SIGTERM, then waits; returns whether it exited 0, and its stderr.
    pub fn stop_with_stderr(mut self) -> (bool, String) {
        let mut stderr = self.child.stderr.take().unwrap();
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        (self.child.wait().unwrap().success(), text)
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A test that fails (or forgets to stop its server) leaves no server
/// running after it.
impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn parse_ready(child: Child, line: &str) -> Server {
    // tessera-server ready: listen A shards N (S1 S2 ...) data D wal-sync M metrics URL
    assert!(
        line.starts_with("tessera-server ready: "),
        "unexpected first line {line:?}"
    );
    let words: Vec<&str> = line.split_whitespace().collect();
    let listen = words[words.iter().position(|w| *w == "listen").unwrap() + 1].to_string();
    let open = line.find('(').unwrap();
    let close = line.find(')').unwrap();
    let shard_addresses = line[open + 1..close]
        .split_whitespace()
        .map(String::from)
        .collect();
    let metrics = words
        .last()
        .and_then(|m| m.strip_prefix("http://"))
        .map(|m| m.trim_end_matches("/metrics").to_string());
    Server {
        child,
        listen,
        shard_addresses,
        metrics,
    }
}

pub fn server_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tessera-server"))
}

/// Resident memory of a process in bytes (Linux).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib << 10
}

/// The status line and body of an HTTP request to `addr`.
pub fn http(addr: &str, request: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.lines().next().unwrap_or_default().to_string();
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}
