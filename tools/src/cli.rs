//! Commands of the `tessera` CLI and how their results print: readable by
//! default, one JSON object per command with `--json`.

use bytes::Bytes;
use clap::{Parser, Subcommand};
use serde_json::json;
use std::path::{Path, PathBuf};
use tessera_client::{Client, Retry, Txn};

use crate::backup;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] tessera_client::Error),
    #[error(transparent)]
    Backup(#[from] backup::Error),
    #[error(transparent)]
    Cert(#[from] crate::cert::Error),
    /// Arguments that make no command (beyond what the parser checks).
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {error}")]
    File {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// A `--ttl`: a duration above zero (the protocol's TTL of 0 means none,
/// the opposite of what `--ttl 0s` asks).
fn positive_duration(s: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("a TTL must be above zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// The bytes `put` stores: VALUE, or the file `--value-file` names (`-`:
/// standard input).
fn put_value(value: &Option<String>, file: &Option<PathBuf>) -> Result<Bytes, CliError> {
    let read = |path: &Path| -> std::io::Result<Vec<u8>> {
        if path == Path::new("-") {
            let mut all = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut all)?;
            Ok(all)
        } else {
            std::fs::read(path)
        }
    };
    match (value, file) {
        (_, Some(path)) => read(path).map(Bytes::from).map_err(|error| CliError::File {
            path: path.clone(),
            error,
        }),
        (Some(value), None) => Ok(Bytes::from(value.clone())),
        (None, None) => Ok(Bytes::new()),
    }
}

/// `get --raw`: the value's bytes, if the key has one.
pub fn get_raw(client: &mut Client, key: &str, at: Option<u64>) -> Result<Option<Bytes>, CliError> {
    let key = Bytes::from(key.to_string());
    Ok(match at {
        Some(ts) => client.read_at(key, ts)?,
        None => client.get(key)?,
    })
}

/// `tessera cert`: makes the files and says how to use them.
pub fn cert(dir: &Path, hosts: &[String], days: u32, as_json: bool) -> Result<String, CliError> {
    let default_hosts = ["localhost", "127.0.0.1", "::1"].map(String::from);
    let hosts = if hosts.is_empty() {
        &default_hosts[..]
    } else {
        hosts
    };
    let files = crate::cert::create(dir, hosts, days)?;
    Ok(if as_json {
        json!({"ca": files.ca, "cert": files.cert, "key": files.key, "hosts": hosts, "days": days})
            .to_string()
    } else {
        format!(
            "wrote {} (for clients: --tls-ca), {} and {} (for tessera-server --tls-cert and --tls-key), valid {days} days for {}",
            files.ca.display(),
            files.cert.display(),
            files.key.display(),
            hosts.join(", ")
        )
    })
}

#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "Command-line client for Tessera",
    after_help = "Exit status: 0 done; 1 an error (one line on stderr); 2 bad arguments; \
                  3 the answer is no: the key of a get or ttl is not found, or a txn did not \
                  commit (a condition failed; nothing was written)."
)]
pub struct Cli {
    /// Server address (any shard's port or the shared port).
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        default_value = "127.0.0.1:7878"
    )]
    pub addr: String,
    /// Print one JSON object per command.
    #[arg(long, global = true)]
    pub json: bool,
    /// Request timeout in milliseconds.
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        default_value_t = 10_000
    )]
    pub timeout_ms: u64,
    /// File holding the server's token (`--auth-token-file` of the
    /// server) [default: $TESSERA_TOKEN, if set].
    #[arg(long, global = true, help_heading = "Connection")]
    pub token_file: Option<PathBuf>,
    /// Connect over TLS, trusting the CA certificates in this PEM file
    /// (e.g. the ca.pem of `tessera cert`) [default: $TESSERA_TLS_CA, if
    /// set; else plain TCP].
    #[arg(long, global = true, help_heading = "Connection")]
    pub tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry [default: the host of
    /// --addr].
    #[arg(long, global = true, help_heading = "Connection")]
    pub tls_server_name: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand, Clone)]
pub enum Command {
    /// Print the value of KEY (as of timestamp --at, inside the retention
    /// window).
    Get {
        key: String,
        #[arg(long)]
        at: Option<u64>,
        /// Write the value's bytes as they are, with no escaping and no
        /// newline (e.g. into a file); a missing key writes nothing. The
        /// shell prints escaped values either way.
        #[arg(long)]
        raw: bool,
    },
    /// Print how long KEY has left, if it was written with a TTL.
    Ttl { key: String },
    /// Store VALUE (or the bytes of --value-file) under KEY.
    Put {
        key: String,
        #[arg(required_unless_present = "value_file")]
        value: Option<String>,
        /// Store the bytes of this file instead of VALUE (`-`: standard
        /// input).
        #[arg(long, value_name = "PATH", conflicts_with = "value")]
        value_file: Option<PathBuf>,
        /// Expire the key this long after the write, e.g. 30s, 10m, 1h 30m.
        #[arg(long, value_parser = positive_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// Delete KEY.
    Del { key: String },
    /// List keys and their values from START (inclusive) to --end
    /// (exclusive), in key order across all shards.
    Scan {
        /// The first key (or a prefix of it) [default: the first key].
        #[arg(default_value = "")]
        start: String,
        /// Stop before this key [default: the last key].
        #[arg(long)]
        end: Option<String>,
        /// Most rows to list; the last line says where the rest start.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Read as of this timestamp.
        #[arg(long)]
        at: Option<u64>,
        /// List the keys without their values.
        #[arg(long)]
        keys_only: bool,
    },
    /// Run a transaction: conditions, reads and writes on any keys,
    /// atomically (serializable). Conditions are checked in the order
    /// exists, missing, equals, version; the first that fails aborts it.
    Txn {
        /// Require KEY to exist.
        #[arg(long, value_name = "KEY")]
        exists: Vec<String>,
        /// Require KEY to be absent.
        #[arg(long, value_name = "KEY")]
        missing: Vec<String>,
        /// Require KEY to hold VALUE.
        #[arg(long, value_name = "KEY=VALUE")]
        equals: Vec<String>,
        /// Require KEY's newest version to have timestamp TS (0: never written).
        #[arg(long, value_name = "KEY=TS")]
        version: Vec<String>,
        /// Read KEY at the transaction's timestamp.
        #[arg(long, value_name = "KEY")]
        read: Vec<String>,
        /// Write VALUE to KEY.
        #[arg(long, value_name = "KEY=VALUE")]
        put: Vec<String>,
        /// Delete KEY.
        #[arg(long, value_name = "KEY")]
        del: Vec<String>,
        /// Retry conflicts with backoff (up to 20 tries).
        #[arg(long)]
        retry: bool,
    },
    /// Per-shard figures (the same as /metrics).
    Stats,
    /// Write every live key and value to FILE as of one moment: a
    /// consistent snapshot across shards, taken online. Each page holds
    /// the snapshot for another retention window (--retention-ms), so it
    /// may run longer than the window.
    Backup {
        file: PathBuf,
        /// Rows per scan page.
        #[arg(long, default_value_t = backup::PAGE_ROWS)]
        page_rows: u32,
    },
    /// Check a backup FILE (every row's checksum, the trailer's row count)
    /// without a server.
    Verify { file: PathBuf },
    /// Make a certificate authority and a server certificate in DIR
    /// (ca.pem, server.pem, server.key) for --tls-cert/--tls-key and
    /// clients' --tls-ca, without a server.
    Cert {
        dir: PathBuf,
        /// A DNS name or IP address the server is reached by (repeat)
        /// [default: localhost, 127.0.0.1, ::1].
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// How long the certificates are valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Write a backup's keys and values into the server, with new
    /// timestamps. The file is checked whole first: a damaged one writes
    /// nothing.
    Restore {
        file: PathBuf,
        /// Write into a server that already holds keys (the backup's keys
        /// overwrite theirs; the others stay).
        #[arg(long)]
        merge: bool,
    },
    /// Check the server answers.
    Ping,
}

/// Splits `KEY=VALUE`.
fn pair(flag: &str, arg: &str) -> Result<(String, String), CliError> {
    arg.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| CliError::Usage(format!("--{flag} wants KEY=VALUE, got {arg:?}")))
}

/// The transaction the `txn` flags describe, and each condition as the
/// user wrote it (for naming the one that failed).
fn build_txn(
    exists: &[String],
    missing: &[String],
    equals: &[String],
    version: &[String],
    read: &[String],
    put: &[String],
    del: &[String],
) -> Result<(Txn, Vec<String>), CliError> {
    let mut txn = Txn::new();
    let mut described = Vec::new();
    for k in exists {
        txn = txn.exists(k.clone());
        described.push(format!("--exists {k}"));
    }
    for k in missing {
        txn = txn.missing(k.clone());
        described.push(format!("--missing {k}"));
    }
    for arg in equals {
        let (k, v) = pair("equals", arg)?;
        txn = txn.equals(k, v);
        described.push(format!("--equals {arg}"));
    }
    for arg in version {
        let (k, v) = pair("version", arg)?;
        let ts = v
            .parse()
            .map_err(|_| CliError::Usage(format!("--version wants KEY=TIMESTAMP, got {arg:?}")))?;
        txn = txn.version_is(k, ts);
        described.push(format!("--version {arg}"));
    }
    for k in read {
        txn = txn.read(k.clone());
    }
    for arg in put {
        let (k, v) = pair("put", arg)?;
        txn = txn.put(k, v);
    }
    for k in del {
        txn = txn.delete(k.clone());
    }
    if txn.home_key().is_none() {
        return Err(CliError::Usage(
            "a transaction needs at least one condition, read or write".into(),
        ));
    }
    Ok((txn, described))
}

/// Bytes as text: printable ASCII as is, everything else escaped.
pub fn show(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

/// The exit status of a command whose answer is "no": the key of a `get`
/// or `ttl` is not found, or a `txn` did not commit (a condition failed,
/// so nothing was written). Errors exit 1 and bad arguments 2.
pub const EXIT_NO: i32 = 3;

/// What a command printed, and whether its answer was "no" (`EXIT_NO`).
#[derive(Debug)]
pub struct Answer {
    pub text: String,
    pub no: bool,
}

/// Runs one command; returns the text to print.
pub fn execute(client: &mut Client, command: &Command, as_json: bool) -> Result<Answer, CliError> {
    let mut no = false;
    let text = match command {
        Command::Get { key, at, .. } => {
            let found = match at {
                Some(ts) => client.read_at_with_expiry(Bytes::from(key.clone()), *ts)?,
                None => client.get_with_expiry(Bytes::from(key.clone()))?,
            };
            let (value, expires_at_ms) = found.map_or((None, None), |(v, at)| (Some(v), at));
            no = value.is_none();
            if as_json {
                json!({"key": key, "found": value.is_some(), "value": value.as_deref().map(show),
                       "expires_at_ms": expires_at_ms})
                .to_string()
            } else {
                value
                    .as_deref()
                    .map(show)
                    .unwrap_or_else(|| "(not found)".into())
            }
        }
        Command::Ttl { key } => {
            let found = client.get_with_expiry(Bytes::from(key.clone()))?;
            let left_ms = |at: u64| at.saturating_sub(backup::wall_ms());
            no = found.is_none();
            if as_json {
                let expires_at_ms = found.as_ref().and_then(|(_, at)| *at);
                json!({"key": key, "found": found.is_some(), "expires_at_ms": expires_at_ms,
                       "ttl_ms": expires_at_ms.map(left_ms)})
                .to_string()
            } else {
                match found {
                    None => "(not found)".into(),
                    Some((_, None)) => "no expiry".into(),
                    Some((_, Some(at))) => {
                        let left = std::time::Duration::from_millis(left_ms(at));
                        format!(
                            "expires in {} (at {at} ms since the epoch)",
                            humantime::format_duration(left)
                        )
                    }
                }
            }
        }
        Command::Put {
            key,
            value,
            value_file,
            ttl,
        } => {
            let value = put_value(value, value_file)?;
            let ts = match ttl {
                Some(ttl) => client.put_with_ttl(key.clone(), value, *ttl)?,
                None => client.put(key.clone(), value)?,
            };
            let expires = ttl.map(|ttl| humantime::format_duration(ttl).to_string());
            match (as_json, expires) {
                (true, _) => {
                    json!({"key": key, "ts": ts, "ttl_ms": ttl.map(|t| t.as_millis() as u64)})
                        .to_string()
                }
                (false, Some(after)) => format!("OK (ts {ts}, expires after {after})"),
                (false, None) => format!("OK (ts {ts})"),
            }
        }
        Command::Del { key } => {
            let ts = client.delete(key.clone())?;
            if as_json {
                json!({"key": key, "ts": ts}).to_string()
            } else {
                format!("OK (ts {ts})")
            }
        }
        Command::Scan {
            start,
            end,
            limit,
            at,
            keys_only,
        } => {
            let page = client.scan_at(start.clone(), end.clone(), *limit, *at)?;
            if as_json {
                let rows: Vec<_> = page
                    .rows
                    .iter()
                    .map(|(k, v)| match keys_only {
                        true => json!({"key": show(k)}),
                        false => json!({"key": show(k), "value": show(v)}),
                    })
                    .collect();
                json!({"rows": rows, "next_start": page.next_start.as_deref().map(show)})
                    .to_string()
            } else {
                let mut out: Vec<String> = page
                    .rows
                    .iter()
                    .map(|(k, v)| match keys_only {
                        true => show(k),
                        false => format!("{}\t{}", show(k), show(v)),
                    })
                    .collect();
                out.push(match &page.next_start {
                    Some(next) => format!("({} rows; more from {})", page.rows.len(), show(next)),
                    None => format!("({} rows)", page.rows.len()),
                });
                out.join("\n")
            }
        }
        Command::Txn {
            exists,
            missing,
            equals,
            version,
            read,
            put,
            del,
            retry,
        } => {
            let (txn, described) = build_txn(exists, missing, equals, version, read, put, del)?;
            let outcome = if *retry {
                client.txn_with_retry(&txn, Retry::default())?
            } else {
                client.txn(&txn)?
            };
            let failed = outcome
                .failed_condition
                .and_then(|i| described.get(i as usize).cloned());
            no = !outcome.committed;
            if as_json {
                let reads: Vec<_> = outcome
                    .reads
                    .iter()
                    .map(|r| {
                        json!({"key": show(&r.key), "found": r.value.is_some(),
                               "value": r.value.as_deref().map(show), "version": r.version})
                    })
                    .collect();
                json!({"committed": outcome.committed, "ts": outcome.ts,
                       "failed_condition": failed, "reads": reads})
                .to_string()
            } else {
                let mut out: Vec<String> = outcome
                    .reads
                    .iter()
                    .map(|r| {
                        let value = r.value.as_deref().map(show);
                        format!(
                            "{}\t{}\t(version {})",
                            show(&r.key),
                            value.as_deref().unwrap_or("(not found)"),
                            r.version
                        )
                    })
                    .collect();
                out.push(match (outcome.committed, failed) {
                    (true, _) => format!("COMMITTED (ts {})", outcome.ts),
                    (false, Some(c)) => format!("NOT COMMITTED: condition {c} does not hold"),
                    (false, None) => "NOT COMMITTED".into(),
                });
                out.join("\n")
            }
        }
        Command::Stats => {
            let metrics = client.stats()?;
            if as_json {
                let all: Vec<_> = metrics
                    .iter()
                    .map(|m| json!({"shard": m.shard, "name": m.name, "value": m.value}))
                    .collect();
                json!({"metrics": all}).to_string()
            } else {
                // The latency histogram's buckets are for Prometheus; the
                // quantiles say the same to a reader.
                let shown: Vec<_> = metrics
                    .iter()
                    .filter(|m| !m.name.contains("_bucket{"))
                    .collect();
                let width = shown.iter().map(|m| m.name.len()).max().unwrap_or(0);
                shown
                    .iter()
                    .map(|m| format!("shard {:<3} {:<width$} {}", m.shard, m.name, m.value))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        Command::Backup { file, page_rows } => {
            let mut line = ProgressLine::new("backup");
            let summary = backup::backup(client, file, *page_rows, &mut |r, b| line.tick(r, b))?;
            drop(line);
            report("backup", file, &summary, as_json)
        }
        Command::Verify { file } => report("verify", file, &backup::verify(file)?, as_json),
        Command::Cert { dir, hosts, days } => cert(dir, hosts, *days, as_json)?,
        Command::Restore { file, merge } => {
            let mut line = ProgressLine::new("restore");
            let summary = backup::restore(client, file, *merge, &mut |r, b| line.tick(r, b))?;
            drop(line);
            report("restore", file, &summary, as_json)
        }
        Command::Ping => {
            client.ping()?;
            if as_json {
                json!({"pong": true}).to_string()
            } else {
                "PONG".into()
            }
        }
    };
    Ok(Answer { text, no })
}

/// A backup's or restore's progress, once a second on a terminal's stderr,
/// each line over the last and cleared when dropped, before the summary
/// (a backup of 100M rows runs for minutes). Nothing when stderr is not a
/// terminal.
struct ProgressLine {
    what: &'static str,
    started: std::time::Instant,
    shown: std::time::Instant,
    terminal: bool,
    printed: bool,
}

impl ProgressLine {
    fn new(what: &'static str) -> ProgressLine {
        let now = std::time::Instant::now();
        ProgressLine {
            what,
            started: now,
            shown: now,
            terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            printed: false,
        }
    }

    fn tick(&mut self, rows: u64, bytes: u64) {
        if self.terminal && self.shown.elapsed() >= std::time::Duration::from_secs(1) {
            self.shown = std::time::Instant::now();
            self.printed = true;
            eprint!(
                "\r\x1b[2K{}: {rows} rows, {:.1} MiB so far ({:.0} s)",
                self.what,
                bytes as f64 / (1 << 20) as f64,
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        if self.printed {
            eprint!("\r\x1b[2K");
        }
    }
}

/// The line (or JSON object) a backup, verify or restore prints.
pub fn report(what: &str, file: &std::path::Path, s: &backup::Summary, as_json: bool) -> String {
    if as_json {
        json!({"file": file.display().to_string(), "rows": s.rows, "bytes": s.bytes,
               "ts": s.ts, "seconds": s.seconds, "expired": s.expired})
        .to_string()
    } else {
        let expired = match s.expired {
            0 => String::new(),
            n => format!(" ({n} expired since the backup, not written)"),
        };
        format!(
            "{what}: {} rows{expired}, {:.1} MiB of keys and values, as of ts {}, in {:.2} s ({})",
            s.rows,
            s.bytes as f64 / (1 << 20) as f64,
            s.ts,
            s.seconds,
            file.display()
        )
    }
}
