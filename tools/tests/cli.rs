//! The `tessera` CLI against a server started in this process (two
//! shards): one-shot commands, JSON output, errors, and the shell.

mod common;

use common::{tessera, tessera_env, tessera_status, InProcessServer};
use std::io::Write;
use std::process::{Command, Stdio};

/// Writes `input` to a spawned command's standard input, closes it, and
/// waits for the command's output.
fn fed(mut child: std::process::Child, input: &[u8]) -> std::process::Output {
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn json_of(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

#[test]
fn one_shot_commands_print_results_and_json() {
    let server = InProcessServer::start();
    let a = server.addr;
    let (ok, out, _) = tessera(a, &["put", "greeting", "hello world"]);
    assert!(ok && out.starts_with("OK (ts "), "{out}");
    assert_eq!(tessera(a, &["get", "greeting"]).1, "hello world\n");
    // "Not found" is an answer, not an error, with its own exit status.
    let no = |args: &[&str]| tessera_status(a, args).0;
    assert_eq!(tessera(a, &["get", "nope"]).1, "(not found)\n");
    assert_eq!(no(&["get", "nope"]), Some(3));
    assert_eq!(no(&["--json", "get", "nope"]), Some(3));
    assert_eq!(no(&["ttl", "nope"]), Some(3));
    assert_eq!(no(&["get", "greeting"]), Some(0));
    let (_, out, _) = tessera(a, &["--json", "get", "greeting"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["value"], "hello world");
    assert_eq!(v["found"], true);
    for k in ["a1", "a2", "a3", "b1"] {
        assert!(tessera(a, &["put", k, "x"]).0);
    }
    let (_, out, _) = tessera(a, &["scan", "a", "--end", "b", "--limit", "2"]);
    assert_eq!(out, "a1\tx\na2\tx\n(2 rows; more from a2\\x00)\n");
    let (_, out, _) = tessera(a, &["scan", "a", "--keys-only"]);
    assert_eq!(out, "a1\na2\na3\nb1\ngreeting\n(5 rows)\n");
    let (_, out, _) = tessera(a, &["--json", "scan", "b", "--end", "c", "--keys-only"]);
    assert_eq!(out, "{\"next_start\":null,\"rows\":[{\"key\":\"b1\"}]}\n");
    assert!(tessera(a, &["del", "a1"]).0);
    assert_eq!(tessera(a, &["get", "a1"]).1, "(not found)\n");
    assert_eq!(tessera(a, &["ping"]).1, "PONG\n");
    let (_, out, _) = tessera(a, &["stats"]);
    assert!(
        out.contains("shard 1") && out.contains("requests_total{op=\"put\"}"),
        "{out}"
    );
    // Histogram buckets go to Prometheus and --json, not to a reader.
    assert!(!out.contains("_bucket{"), "{out}");
    let (_, out, _) = tessera(a, &["--json", "stats"]);
    assert!(out.contains("request_duration_seconds_bucket{"), "{out}");
    let (ok, _, err) = tessera(a, &["put", "k", "v", "--ttl", "0s"]);
    assert!(!ok && err.contains("a TTL must be above zero"), "{err}");
    let (ok, _, err) = tessera(a, &["put", &"k".repeat(5000), "v"]);
    assert!(
        !ok && err.starts_with("error: server error KeyTooLarge"),
        "{err}"
    );
    // A key with a TTL is there, then gone.
    let (ok, out, _) = tessera(a, &["put", "brief", "x", "--ttl", "1500ms"]);
    assert!(ok && out.ends_with(", expires after 1s 500ms)\n"), "{out}");
    let written = std::time::Instant::now();
    assert_eq!(tessera(a, &["get", "brief"]).1, "x\n");
    let (_, out, _) = tessera(a, &["ttl", "brief"]);
    assert!(
        out.starts_with("expires in ") && out.contains(" ms since the epoch)"),
        "{out}"
    );
    let (_, out, _) = tessera(a, &["--json", "get", "brief"]);
    let left = json_of(&out)["expires_at_ms"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(left > now && left <= now + 1500, "{out}");
    assert_eq!(tessera(a, &["ttl", "greeting"]).1, "no expiry\n");
    assert_eq!(tessera(a, &["ttl", "nope"]).1, "(not found)\n");
    assert!(written.elapsed() < std::time::Duration::from_millis(1500));
    let (_, out, _) = tessera(a, &["--json", "put", "brief2", "x", "--ttl", "1h"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ttl_ms"], 3_600_000);
    std::thread::sleep(std::time::Duration::from_millis(1600));
    assert_eq!(tessera(a, &["get", "brief"]).1, "(not found)\n");
    assert_eq!(tessera(a, &["get", "brief2"]).1, "x\n");
    let (ok, _, err) = tessera(a, &["put", "k", "v", "--ttl", "soon"]);
    assert!(!ok && err.contains("--ttl"), "{err}");
}

#[test]
fn transactions_and_reads_at_a_timestamp() {
    let server = InProcessServer::start();
    let a = server.addr;
    let (_, out, _) = tessera(a, &["--json", "put", "acct-a", "10"]);
    let ts: u64 = serde_json::from_str::<serde_json::Value>(&out).unwrap()["ts"]
        .as_u64()
        .unwrap();
    let (ok, out, err) = tessera(
        a,
        &[
            "txn",
            "--equals",
            "acct-a=10",
            "--missing",
            "acct-b",
            "--read",
            "acct-a",
            "--put",
            "acct-a=4",
            "--put",
            "acct-b=6",
            "--retry",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!("acct-a\t10\t(version {ts})\nCOMMITTED (ts ")),
        "{out}"
    );
    let commit_ts: u64 = out
        .trim_end()
        .rsplit(' ')
        .next()
        .unwrap()
        .trim_end_matches(')')
        .parse()
        .unwrap();
    assert_eq!(tessera(a, &["get", "acct-b"]).1, "6\n");
    // Time travel: the state just before the transaction.
    let before = (commit_ts - 1).to_string();
    assert_eq!(tessera(a, &["get", "acct-a", "--at", &before]).1, "10\n");
    assert_eq!(
        tessera(a, &["get", "acct-b", "--at", &before]).1,
        "(not found)\n"
    );
    let (_, out, _) = tessera(a, &["scan", "acct-", "--at", &before]);
    assert_eq!(out, "acct-a\t10\n(1 rows)\n");
    // A failed condition names itself and writes nothing.
    let (status, out, _) = tessera_status(
        a,
        &[
            "--json",
            "txn",
            "--equals",
            "acct-a=10",
            "--put",
            "acct-a=0",
        ],
    );
    // Exit 3: a script can tell "not committed" from done and from an error.
    assert_eq!(status, Some(3));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["committed"], false);
    assert_eq!(v["failed_condition"], "--equals acct-a=10");
    assert_eq!(tessera(a, &["get", "acct-a"]).1, "4\n");
    let (status, out, _) = tessera_status(a, &["txn", "--missing", "acct-a", "--put", "x=1"]);
    assert_eq!(
        (status, out.as_str()),
        (
            Some(3),
            "NOT COMMITTED: condition --missing acct-a does not hold\n"
        )
    );
    let (status, _, err) = tessera_status(a, &["txn", "--put", "novalue"]);
    // The CLI's own usage errors, not the SDK's "protocol:" ones, exit 2
    // as clap's do.
    assert_eq!(err, "error: --put wants KEY=VALUE, got \"novalue\"\n");
    assert_eq!(status, Some(2));
    let (ok, _, err) = tessera(a, &["get", "acct-a", "--at", "1"]);
    assert!(!ok && err.contains("TimestampTooOld"), "{err}");
}

#[test]
fn an_unreachable_server_is_one_clear_line_and_exit_1() {
    let (ok, _, err) = tessera("127.0.0.1:1".parse().unwrap(), &["ping"]);
    assert!(!ok);
    assert!(
        err.starts_with("error: cannot connect to 127.0.0.1:1"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn a_server_that_requires_a_token_serves_the_cli_given_one() {
    let token_dir = tempfile::tempdir().unwrap();
    let token = token_dir.path().join("token");
    std::fs::write(&token, "cli-test-token-0123456789abcdef\n").unwrap();
    let server = InProcessServer::start_with(|f| f.auth_token_file = Some(token.clone()));
    let a = server.addr;
    let (ok, _, err) = tessera(a, &["put", "k", "v"]);
    assert!(!ok);
    assert!(
        err.starts_with("error: cannot connect to") && err.contains("Unauthenticated"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
    let file = token.to_str().unwrap();
    let (ok, _, err) = tessera(a, &["--token-file", file, "put", "k", "v"]);
    assert!(ok, "{err}");
    let by_env = [("TESSERA_TOKEN", "cli-test-token-0123456789abcdef")];
    assert_eq!(tessera_env(a, &["get", "k"], &by_env).1, "v\n");
    let wrong = [("TESSERA_TOKEN", "cli-test-token-0123456789abcdeF")];
    let (ok, _, err) = tessera_env(a, &["get", "k"], &wrong);
    assert!(!ok && err.contains("wrong token"), "{err}");
    let (ok, _, err) = tessera(a, &["--token-file", "/nonexistent/token", "get", "k"]);
    assert!(
        !ok && err.starts_with("error: --token-file: reading /nonexistent/token"),
        "{err}"
    );
}

#[test]
fn the_shell_runs_commands_from_its_input() {
    let server = InProcessServer::start();
    let home = tempfile::tempdir().unwrap();
    let shell = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("--addr")
        .arg(server.addr.to_string())
        .env("HOME", home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let output = fed(
        shell,
        b"put k \"two words\"\nget k\nbogus\nget\n--addr 127.0.0.1:1 get k\nhelp\nquit\n",
    );
    let out = String::from_utf8(output.stdout).unwrap();
    assert!(out.contains("OK (ts "), "{out}");
    assert!(out.contains("two words\n"), "{out}");
    assert!(out.contains("unrecognized subcommand 'bogus'"), "{out}");
    // A missing argument is named, and the usage text is left out.
    assert!(out.contains("were not provided:\n  <KEY>\n"), "{out}");
    assert!(!out.contains("Usage:"), "{out}");
    // The connection's options belong to the shell, not to a line.
    assert!(
        out.contains("error: --addr applies to the whole shell"),
        "{out}"
    );
    assert!(out.contains("commands: get KEY"), "{out}");
}

/// Binary values through files and pipes: `put --value-file` (a path, or
/// `-` for standard input) and `get --raw` store and give back the exact
/// bytes, which VALUE arguments and escaped output cannot carry.
#[test]
fn binary_values_go_in_from_a_file_or_stdin_and_out_raw() {
    let server = InProcessServer::start();
    let a = server.addr;
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob.bin");
    std::fs::write(&file, &blob).unwrap();
    let (ok, out, err) = tessera(a, &["put", "blob", "--value-file", file.to_str().unwrap()]);
    assert!(ok && out.starts_with("OK (ts "), "{out}{err}");
    let raw = |key: &str| {
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["--addr", &a.to_string(), "get", key, "--raw"])
            .output()
            .unwrap()
    };
    let got = raw("blob");
    assert!(got.status.success());
    assert!(got.stdout == blob, "the raw bytes differ");

    let put = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "--addr",
            &a.to_string(),
            "put",
            "piped",
            "--value-file",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(fed(put, &blob[..1000]).status.success());
    assert!(raw("piped").stdout == blob[..1000], "stdin's bytes differ");

    // A missing key: nothing written, exit 3 (not found).
    let missing = raw("nothing-here");
    assert!(missing.status.code() == Some(3) && missing.stdout.is_empty());
    let (ok, _, err) = tessera(a, &["put", "k", "--value-file", "/nonexistent/file"]);
    assert!(
        !ok && err.starts_with("error: /nonexistent/file: No such file"),
        "{err}"
    );
    let (ok, _, err) = tessera(
        a,
        &["put", "k", "v", "--value-file", file.to_str().unwrap()],
    );
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    let (ok, _, err) = tessera(a, &["put", "k"]);
    assert!(!ok && err.contains("required"), "{err}");
}

/// A reader that stops early (`tessera get big | head -c 10`) ends the
/// output quietly, with the command's own exit status: `println!`
/// panicked on the closed pipe, and the raw path printed an error.
#[test]
fn a_reader_that_stops_early_is_no_error() {
    let server = InProcessServer::start();
    let a = server.addr;
    // Larger than a pipe holds, so the write meets the closed pipe.
    let blob = vec![b'x'; 300_000];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob.bin");
    std::fs::write(&file, &blob).unwrap();
    assert!(tessera(a, &["put", "big", "--value-file", file.to_str().unwrap()]).0);
    for args in [
        &["get", "big"][..],
        &["get", "big", "--raw"],
        &["scan", "b"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("--addr")
            .arg(a.to_string())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut head = [0u8; 10];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut head).unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}
