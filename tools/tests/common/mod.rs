//! What the CLI's tests share: a server in this process and a way to run
//! the `tessera` binary against it.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Command;
use tessera_net::config::{Config, Flags};
use tessera_net::runtime::Embedded;

/// A server in this process, and its data directory.
pub struct InProcessServer {
    pub addr: SocketAddr,
    /// Its token and TLS certificate (`request_reload` as SIGHUP would).
    pub credentials: std::sync::Arc<tessera_net::config::CredentialSource>,
    _server: Embedded,
    _dir: tempfile::TempDir,
}

impl InProcessServer {
    /// Two shards.
    pub fn start() -> InProcessServer {
        Self::start_with(|_| {})
    }

    /// Two shards, with `adjust` applied to the flags.
    pub fn start_with(adjust: impl FnOnce(&mut Flags)) -> InProcessServer {
        let dir = tempfile::tempdir().unwrap();
        // This test binary's allocator returns freed memory to the OS, so
        // touching the budget up front (off in `local`) would only cost time.
        let mut flags = Flags::local(dir.path().to_path_buf(), 2);
        adjust(&mut flags);
        let config = Config::resolve(flags).unwrap();
        let credentials = config.credentials.clone();
        let server = Embedded::start(config).unwrap();
        InProcessServer {
            credentials,
            addr: server.ready.listen,
            _server: server,
            _dir: dir,
        }
    }
}

/// Runs `tessera --addr ADDR ARGS...`: (success, stdout, stderr).
pub fn tessera(addr: SocketAddr, args: &[&str]) -> (bool, String, String) {
    tessera_env(addr, args, &[])
}

/// Like [`tessera`], with the exit status instead of its success.
pub fn tessera_status(addr: SocketAddr, args: &[&str]) -> (Option<i32>, String, String) {
    run(addr, args, &[])
}

/// Like [`tessera`], with these environment variables set (and no
/// `TESSERA_TOKEN` but one set here).
pub fn tessera_env(
    addr: SocketAddr,
    args: &[&str],
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let (status, out, err) = run(addr, args, env);
    (status == Some(0), out, err)
}

fn run(addr: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("--addr")
        .arg(addr.to_string())
        .args(args)
        .env_remove("TESSERA_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
