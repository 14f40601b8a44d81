//! Server configuration: one struct, settable by TOML file (`--config`) and
//! by flags (flags win), every field with a documented default
//! (docs/operations.md).

use crate::machine::{Fit, Given, Machine, MemoryLimit};
use crate::slots::SlotMap;
use crate::tls::Tls;
use anyhow::{bail, Context};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tessera_engine::{Options, SyncMode, WalRecovery};
use tessera_protocol::frame::Limits;
use tessera_protocol::Token;

/// Flags of `tessera-server`; each overrides the same key in `--config`.
#[derive(Debug, Default, Clone, clap::Parser, Deserialize)]
#[command(
    name = "tessera-server",
    version,
    about = "Tessera: a thread-per-core key-value server"
)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Flags {
    /// TOML file with any of these settings (kebab-case keys).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./data].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Shared address every shard accepts on (SO_REUSEPORT) [default: 127.0.0.1:7878].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// First per-shard port; shard i listens on it + i [default: listen port + 1; 0 = any free port].
    #[arg(long)]
    pub shard_base_port: Option<u16>,
    /// Host (name or address) shard-aware clients are told to reach the
    /// shard ports at, as seen from where they run (behind NAT, such as a
    /// container's published ports) [default: the address --listen
    /// names; on 0.0.0.0 or ::, the address each client reached].
    #[arg(long)]
    pub advertise_host: Option<String>,
    /// Number of shards [default: the count the data directory was
    /// written with; for a new one, one per CPU in --cpus, or per CPU this
    /// process may run on].
    #[arg(long)]
    pub shards: Option<usize>,
    /// CPUs to pin shards to, e.g. "0-3" or "0,2"; "any" lets them float
    /// [default: the CPUs this process may run on (taskset, cpuset), in
    /// order, one shard each, wrapping around when there are more shards].
    #[arg(long)]
    pub cpus: Option<String>,
    /// Prometheus endpoint address, or "off" [default: 127.0.0.1:9187].
    #[arg(long)]
    pub metrics: Option<String>,
    /// WAL sync mode: always | interval:<ms> | none [default: always].
    #[arg(long)]
    pub wal_sync: Option<String>,
    /// What a start does with a WAL damaged before its end: strict
    /// (refuse to start, naming the segment and offset) or point-in-time
    /// (replay up to the damage and set the rest of the log aside, losing
    /// the writes after it) [default: strict].
    #[arg(long)]
    pub wal_recovery: Option<String>,
    /// Memtable size per shard in bytes [default: 64 MiB; less under a
    /// memory limit that the defaults would not fit in a third of].
    #[arg(long)]
    pub memtable_bytes: Option<usize>,
    /// Block cache per shard in bytes [default: 256 MiB; less under a
    /// memory limit, as --memtable-bytes].
    #[arg(long)]
    pub cache_bytes: Option<usize>,
    /// Row cache per shard in bytes: the newest version of recently read
    /// keys; 0 turns it off [default: 64 MiB; less under a memory limit,
    /// as --memtable-bytes].
    #[arg(long)]
    pub row_cache_bytes: Option<usize>,
    /// Touch each shard's memory budget (caches and memtables) at
    /// startup, so serving never waits on page faults [default: true].
    #[arg(long)]
    pub prefault_memory: Option<bool>,
    /// WAL segment size in bytes [default: 64 MiB].
    #[arg(long)]
    pub wal_segment_bytes: Option<u64>,
    /// Compaction write rate limit per shard [default: 200 MiB/s].
    #[arg(long)]
    pub compaction_bytes_per_sec: Option<u64>,
    /// How much of an input table compaction reads at once (the next
    /// window is read meanwhile) [default: 256 KiB].
    #[arg(long)]
    pub compaction_read_ahead_bytes: Option<usize>,
    /// Level-0 tables from which writes slow down: compaction gets a
    /// growing share of the shard [default: 14].
    #[arg(long)]
    pub l0_slowdown_tables: Option<usize>,
    /// Level-0 tables at which flushes, and so writes, wait for compaction
    /// [default: 36].
    #[arg(long)]
    pub l0_stop_tables: Option<usize>,
    /// Time-travel retention window in ms [default: 60000].
    #[arg(long)]
    pub retention_ms: Option<u64>,
    /// How long, in ms, after the last flush (and at least the retention
    /// window) compaction reclaims the space of overwritten and deleted
    /// versions [default: 10000].
    #[arg(long)]
    pub rest_after_ms: Option<u64>,
    /// How long a transaction or timestamped read waits for an older
    /// transaction's intent before failing with Conflict, in ms [default: 10000].
    #[arg(long)]
    pub txn_wait_ms: Option<u64>,
    /// Keys per shard whose latest read and write timestamps transactions
    /// remember, 32 bytes each; an evicted key can abort a transaction
    /// needlessly [default: 262144].
    #[arg(long)]
    pub txn_ts_cache_keys: Option<usize>,
    /// Open connections per shard before new ones are refused [default: 10000].
    #[arg(long)]
    pub connections_max: Option<usize>,
    /// Requests in flight per connection before reading pauses [default: 256].
    #[arg(long)]
    pub inflight_per_connection_max: Option<usize>,
    /// Largest frame in bytes [default: 2 MiB].
    #[arg(long)]
    pub frame_bytes_max: Option<usize>,
    /// Largest key in bytes [default: 1024].
    #[arg(long)]
    pub key_bytes_max: Option<usize>,
    /// Largest value in bytes [default: 1 MiB].
    #[arg(long)]
    pub value_bytes_max: Option<usize>,
    /// Most operations in one batch [default: 1024].
    #[arg(long)]
    pub batch_ops_max: Option<usize>,
    /// Key and value bytes one scan page carries at most; the page ends
    /// early and says where to go on [default: 4 MiB].
    #[arg(long)]
    pub scan_bytes_max: Option<usize>,
    /// File holding a shared secret (at least 16 bytes; a trailing newline
    /// is ignored) that every connection must send in its Hello before any
    /// other request [default: none, no token required].
    #[arg(long)]
    pub auth_token_file: Option<PathBuf>,
    /// PEM certificate chain (the server's certificate first); with
    /// --tls-key, every client port speaks TLS only [default: none, plain TCP].
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
}

/// Shortest token `--auth-token-file` may hold.
pub const AUTH_TOKEN_BYTES_MIN: usize = 16;

/// Where shards run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Pinned(Vec<usize>),
    Floating,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data: PathBuf,
    pub listen: SocketAddr,
    pub shard_base_port: u16,
    /// What shard-aware clients are told the shards' host is
    /// (`--advertise-host`).
    pub advertise_host: Option<String>,
    pub shards: usize,
    /// The shard count came from the data directory's slot map, and
    /// differs from what `--shards`, `--cpus` or the CPUs would give.
    pub shards_from_data: bool,
    pub placement: Placement,
    pub metrics: Option<SocketAddr>,
    pub engine: Options,
    pub limits: Limits,
    pub connections_max: usize,
    pub inflight_per_connection_max: usize,
    pub prefault_memory: bool,
    /// The memory the server may use (the machine's, or its cgroup's).
    pub memory_limit: Option<MemoryLimit>,
    /// What sizing the memory settings to `memory_limit` did.
    pub memory_fit: Fit,
    /// The token connections must present and the TLS certificate they
    /// are served with, reloadable (SIGHUP).
    pub credentials: Arc<CredentialSource>,
}

/// What a connection is authenticated and encrypted with.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The token connections must present (`--auth-token-file`).
    pub token: Option<Token>,
    /// TLS for client connections (`--tls-cert`, `--tls-key`).
    pub tls: Option<Tls>,
}

/// Where the credentials come from, and the latest loaded. A reload
/// (SIGHUP, [`CredentialSource::request_reload`]) reads the same files
/// again and, only if all of them check out, replaces the credentials and
/// bumps the generation; each shard keeps its own copy and takes the new
/// one when it sees the generation change (it looks every 20 ms), so
/// connections read no shared state. Connections already open keep what
/// they started with.
#[derive(Debug)]
pub struct CredentialSource {
    token_file: Option<PathBuf>,
    tls_files: Option<(PathBuf, PathBuf)>,
    latest: Mutex<Credentials>,
    generation: AtomicU64,
    /// Set by the SIGHUP handler; shard 0 performs the reload.
    pub reload_requested: Arc<AtomicBool>,
}

impl CredentialSource {
    fn load(
        token_file: Option<PathBuf>,
        tls_files: Option<(PathBuf, PathBuf)>,
    ) -> anyhow::Result<CredentialSource> {
        let source = CredentialSource {
            token_file,
            tls_files,
            latest: Mutex::default(),
            generation: AtomicU64::new(0),
            reload_requested: Arc::default(),
        };
        *source.latest.lock().expect("not poisoned") = source.read()?;
        Ok(source)
    }

    /// Reads and checks every file.
    fn read(&self) -> anyhow::Result<Credentials> {
        Ok(Credentials {
            token: self
                .token_file
                .as_deref()
                .map(read_auth_token)
                .transpose()?,
            tls: match &self.tls_files {
                Some((cert, key)) => Some(Tls::load(cert, key)?),
                None => None,
            },
        })
    }

    /// Reads the files again; on any error the credentials stay as they
    /// were.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = self.read()?;
        *self.latest.lock().expect("not poisoned") = fresh;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Asks the running server to reload (what SIGHUP does).
    pub fn request_reload(&self) {
        self.reload_requested.store(true, Ordering::SeqCst);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The latest credentials and their generation.
    pub fn current(&self) -> (u64, Credentials) {
        let latest = self.latest.lock().expect("not poisoned");
        (self.generation(), latest.clone())
    }
}

/// `--advertise-host` is a name or an address, without a port (each
/// shard's port is added to it).
fn check_advertise_host(host: String) -> anyhow::Result<String> {
    let is_v6 = host.parse::<std::net::Ipv6Addr>().is_ok();
    if host.is_empty() || host.contains(char::is_whitespace) || (host.contains(':') && !is_v6) {
        bail!("--advertise-host {host:?}: give a host name or address without a port");
    }
    Ok(host)
}

fn parse_cpus(s: &str) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse()?, b.parse()?);
                if a > b {
                    bail!("bad CPU range {part}");
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse()?),
        }
    }
    if cpus.is_empty() {
        bail!("empty CPU list");
    }
    Ok(cpus)
}

impl Flags {
    /// A server beside other work on this machine: data in `data`, every
    /// port on 127.0.0.1 picked free, `shards` floating shards, no metrics
    /// endpoint, and the memory budget not touched at startup. What tests
    /// and programs embedding a server (`runtime::Embedded`) start from.
    pub fn local(data: PathBuf, shards: usize) -> Flags {
        Flags {
            data: Some(data),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            shard_base_port: Some(0),
            shards: Some(shards),
            cpus: Some("any".into()),
            metrics: Some("off".into()),
            prefault_memory: Some(false),
            ..Flags::default()
        }
    }
}

impl Config {
    /// Resolves flags over the `--config` file over defaults, for this
    /// machine: shards pinned among the CPUs the process may run on, the
    /// memory settings not given sized to its (or its cgroup's) memory.
    pub fn resolve(flags: Flags) -> anyhow::Result<Config> {
        Self::resolve_on(flags, &Machine::read())
    }

    /// [`Config::resolve`] for the machine given.
    pub fn resolve_on(flags: Flags, machine: &Machine) -> anyhow::Result<Config> {
        let file: Flags = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => Flags::default(),
        };
        macro_rules! pick {
            ($field:ident) => {
                flags.$field.clone().or(file.$field.clone())
            };
        }
        let listen: SocketAddr =
            pick!(listen).unwrap_or_else(|| "127.0.0.1:7878".parse().expect("valid"));
        let data = pick!(data).unwrap_or_else(|| PathBuf::from("./data"));
        let cpus = pick!(cpus);
        let available = machine.parallelism;
        // A data directory keeps the shard count it was written with
        // (its slot map), whatever CPUs it is started on next.
        let saved = match (pick!(shards), cpus.as_deref()) {
            (None, None | Some("any")) => SlotMap::saved(&data)?.map(|map| map.shards()),
            _ => None,
        };
        let (placement, shards) = match cpus.as_deref() {
            Some("any") => (
                Placement::Floating,
                pick!(shards).or(saved).unwrap_or(available),
            ),
            Some(list) => {
                let cpus = parse_cpus(list).with_context(|| format!("--cpus {list:?}"))?;
                if let Some(cpu) = cpus.iter().find(|c| !machine.cpus.contains(c)) {
                    bail!(
                        "--cpus {list}: CPU {cpu} is not one this process may run on ({}; see taskset or the container's cpuset)",
                        crate::machine::cpu_ranges(&machine.cpus)
                    );
                }
                let shards = pick!(shards).unwrap_or(cpus.len());
                if shards != cpus.len() {
                    bail!(
                        "--shards {shards} does not match the {} CPUs in --cpus {list}",
                        cpus.len()
                    );
                }
                (Placement::Pinned(cpus), shards)
            }
            None => {
                let shards = pick!(shards).or(saved).unwrap_or(available);
                (
                    Placement::Pinned(
                        (0..shards)
                            .map(|i| machine.cpus[i % machine.cpus.len()])
                            .collect(),
                    ),
                    shards,
                )
            }
        };
        if shards == 0 || shards > 256 {
            bail!("--shards must be between 1 and 256 (got {shards})");
        }
        let metrics = match pick!(metrics).as_deref() {
            None => Some("127.0.0.1:9187".parse().expect("valid")),
            Some("off") => None,
            Some(addr) => Some(
                addr.parse()
                    .with_context(|| format!("--metrics {addr:?}"))?,
            ),
        };
        let wal_sync: SyncMode = pick!(wal_sync).as_deref().unwrap_or("always").parse()?;
        let wal_recovery: WalRecovery =
            pick!(wal_recovery).as_deref().unwrap_or("strict").parse()?;
        let defaults = Options::default();
        let limits_default = Limits::default();
        let limits = Limits {
            frame_bytes_max: pick!(frame_bytes_max).unwrap_or(limits_default.frame_bytes_max),
            key_bytes_max: pick!(key_bytes_max).unwrap_or(limits_default.key_bytes_max),
            value_bytes_max: pick!(value_bytes_max).unwrap_or(limits_default.value_bytes_max),
            batch_ops_max: pick!(batch_ops_max).unwrap_or(limits_default.batch_ops_max),
            scan_bytes_max: pick!(scan_bytes_max).unwrap_or(limits_default.scan_bytes_max),
            ..limits_default
        };
        if limits.key_bytes_max + limits.value_bytes_max + 256 > limits.frame_bytes_max {
            bail!("frame-bytes-max must exceed key-bytes-max + value-bytes-max");
        }
        let mut engine = Options {
            wal_sync,
            wal_recovery,
            memtable_bytes_max: pick!(memtable_bytes).unwrap_or(defaults.memtable_bytes_max),
            block_cache_bytes: pick!(cache_bytes).unwrap_or(defaults.block_cache_bytes),
            row_cache_bytes: pick!(row_cache_bytes).unwrap_or(defaults.row_cache_bytes),
            wal_segment_bytes: pick!(wal_segment_bytes).unwrap_or(defaults.wal_segment_bytes),
            compaction_bytes_per_sec: pick!(compaction_bytes_per_sec)
                .unwrap_or(defaults.compaction_bytes_per_sec),
            compaction_read_ahead_bytes: pick!(compaction_read_ahead_bytes)
                .unwrap_or(defaults.compaction_read_ahead_bytes),
            l0_slowdown_trigger: pick!(l0_slowdown_tables).unwrap_or(defaults.l0_slowdown_trigger),
            l0_stop_trigger: pick!(l0_stop_tables).unwrap_or(defaults.l0_stop_trigger),
            retention_ms: pick!(retention_ms).unwrap_or(defaults.retention_ms),
            rest_after_ms: pick!(rest_after_ms).unwrap_or(defaults.rest_after_ms),
            txn_wait_ms: pick!(txn_wait_ms).unwrap_or(defaults.txn_wait_ms),
            txn_ts_cache_keys: pick!(txn_ts_cache_keys).unwrap_or(defaults.txn_ts_cache_keys),
            key_bytes_max: limits.key_bytes_max,
            value_bytes_max: limits.value_bytes_max,
            wal_group_bytes_max: defaults.wal_group_bytes_max.max(limits.frame_bytes_max),
            ..defaults
        };
        let given = Given {
            memtable: pick!(memtable_bytes).is_some(),
            block_cache: pick!(cache_bytes).is_some(),
            row_cache: pick!(row_cache_bytes).is_some(),
        };
        let memory_limit = machine.memory;
        let memory_fit = match memory_limit {
            Some(limit) => crate::machine::fit(&mut engine, given, shards, limit.bytes),
            None => Fit::Fits,
        };
        engine.validate()?;
        let shard_base_port = pick!(shard_base_port).unwrap_or(if listen.port() == 0 {
            0
        } else {
            listen.port() + 1
        });
        check_ports_distinct(listen, shard_base_port, shards, metrics)?;
        let connections_max = pick!(connections_max).unwrap_or(10_000);
        let inflight_per_connection_max = pick!(inflight_per_connection_max).unwrap_or(256);
        // Zero would start a server that refuses every connection, never
        // answers a write, or refuses every batch.
        for (flag, value) in [
            ("--connections-max", connections_max),
            ("--inflight-per-connection-max", inflight_per_connection_max),
            ("--batch-ops-max", limits.batch_ops_max),
        ] {
            if value == 0 {
                bail!("{flag} must be at least 1");
            }
        }
        Ok(Config {
            data,
            shard_base_port,
            advertise_host: match pick!(advertise_host) {
                Some(host) => Some(check_advertise_host(host)?),
                None => None,
            },
            listen,
            shards,
            shards_from_data: saved.is_some_and(|n| n != available),
            placement,
            metrics,
            engine,
            limits,
            connections_max,
            inflight_per_connection_max,
            prefault_memory: pick!(prefault_memory).unwrap_or(true),
            memory_limit,
            memory_fit,
            credentials: Arc::new(CredentialSource::load(
                pick!(auth_token_file),
                match (pick!(tls_cert), pick!(tls_key)) {
                    (Some(cert), Some(key)) => Some((cert, key)),
                    (None, None) => None,
                    _ => bail!("--tls-cert and --tls-key go together"),
                },
            )?),
        })
    }
}

/// Reads and checks the token file of `--auth-token-file`.
fn read_auth_token(path: &std::path::Path) -> anyhow::Result<Token> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --auth-token-file {}", path.display()))?;
    let token = text.trim_end_matches(['\n', '\r']);
    if token.len() < AUTH_TOKEN_BYTES_MIN {
        bail!(
            "--auth-token-file {} holds {} bytes; a token needs at least {AUTH_TOKEN_BYTES_MIN} (e.g. `openssl rand -hex 32`)",
            path.display(),
            token.len()
        );
    }
    if token.contains(['\n', '\r']) {
        bail!(
            "--auth-token-file {} holds more than one line",
            path.display()
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", mode & 0o777),
            "the auth token file is readable by other users; chmod 600 it"
        );
    }
    Ok(Token(token.to_string()))
}

/// Refuses a metrics or shard port that another listener of this server
/// also takes. The listeners set `SO_REUSEPORT`, so the kernel would not
/// refuse the second bind: it would split incoming connections between the
/// two, and clients would send requests to the metrics endpoint.
fn check_ports_distinct(
    listen: SocketAddr,
    shard_base_port: u16,
    shards: usize,
    metrics: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let shard_ports = match shard_base_port {
        0 => 0..0,
        base => u32::from(base)..u32::from(base) + shards as u32,
    };
    if listen.port() != 0 && shard_ports.contains(&u32::from(listen.port())) {
        bail!(
            "listen port {} is also a shard port (shard ports start at {shard_base_port}, one per shard)",
            listen.port()
        );
    }
    if let Some(m) = metrics {
        let same_host =
            m.ip() == listen.ip() || m.ip().is_unspecified() || listen.ip().is_unspecified();
        let taken = m.port() == listen.port() || shard_ports.contains(&u32::from(m.port()));
        if m.port() != 0 && same_host && taken {
            bail!(
                "metrics port {} is also taken by the client listener or a shard (listen {listen}, shard ports from {shard_base_port})",
                m.port()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "shards = 3\ncpus = \"any\"\nwal-sync = \"none\"\nmetrics = \"off\"\ntxn-ts-cache-keys = 1024\nrest-after-ms = 2500\n",
        )
        .unwrap();
        let flags = Flags::parse_from([
            "tessera-server",
            "--config",
            path.to_str().unwrap(),
            "--wal-sync",
            "interval:5",
        ]);
        let c = Config::resolve(flags).unwrap();
        assert_eq!(c.shards, 3);
        assert_eq!(c.placement, Placement::Floating);
        assert_eq!(c.engine.wal_sync.to_string(), "interval:5");
        assert_eq!(c.metrics, None);
        assert_eq!(c.data, PathBuf::from("./data"));
        assert_eq!(c.listen.port(), 7878);
        assert_eq!(c.shard_base_port, 7879);
        assert_eq!(c.engine.txn_ts_cache_keys, 1024);
        assert_eq!(c.engine.rest_after_ms, 2500);
        let flags = Flags::parse_from(["tessera-server", "--txn-ts-cache-keys", "4096"]);
        assert_eq!(
            Config::resolve(flags).unwrap().engine.txn_ts_cache_keys,
            4096
        );
        let defaults = Config::resolve(Flags::parse_from(["tessera-server"])).unwrap();
        assert_eq!(
            defaults.engine.txn_ts_cache_keys,
            Options::default().txn_ts_cache_keys
        );
        assert_eq!(defaults.engine.wal_recovery, WalRecovery::Strict);
        let flags = Flags::parse_from(["tessera-server", "--wal-recovery", "point-in-time"]);
        assert_eq!(
            Config::resolve(flags).unwrap().engine.wal_recovery,
            WalRecovery::PointInTime
        );
        let flags = Flags::parse_from(["tessera-server", "--wal-recovery", "lenient"]);
        let err = Config::resolve(flags).unwrap_err().to_string();
        assert!(err.contains("expected strict or point-in-time"), "{err}");
    }

    #[test]
    fn level_0_limits_reach_the_engine_and_must_be_ordered() {
        let defaults = Config::resolve(Flags::parse_from(["tessera-server"])).unwrap();
        assert_eq!(defaults.engine.l0_slowdown_trigger, 14);
        assert_eq!(defaults.engine.l0_stop_trigger, 36);
        let flags = Flags::parse_from([
            "tessera-server",
            "--l0-slowdown-tables",
            "8",
            "--l0-stop-tables",
            "12",
            "--compaction-read-ahead-bytes",
            "65536",
        ]);
        let c = Config::resolve(flags).unwrap();
        assert_eq!(c.engine.l0_slowdown_trigger, 8);
        assert_eq!(c.engine.l0_stop_trigger, 12);
        assert_eq!(c.engine.compaction_read_ahead_bytes, 65536);
        let flags = Flags::parse_from(["tessera-server", "--l0-stop-tables", "10"]);
        let err = Config::resolve(flags).unwrap_err().to_string();
        assert!(err.contains("slowdown (14) <= stop (10)"), "{err}");
    }

    /// `--help` states the engine's defaults, which it cannot take from
    /// them (the flags are options, so a config file can fill them).
    #[test]
    fn the_help_states_the_engines_defaults() {
        use clap::CommandFactory;
        let help = Flags::command().render_long_help().to_string();
        let d = Options::default();
        let size = |bytes: usize| match bytes {
            b if b >= 1 << 20 => format!("{} MiB", b >> 20),
            b => format!("{} KiB", b >> 10),
        };
        let stated = [
            ("--memtable-bytes", size(d.memtable_bytes_max)),
            ("--cache-bytes", size(d.block_cache_bytes)),
            ("--row-cache-bytes", size(d.row_cache_bytes)),
            ("--wal-segment-bytes", size(d.wal_segment_bytes as usize)),
            (
                "--compaction-bytes-per-sec",
                format!("{}/s", size(d.compaction_bytes_per_sec as usize)),
            ),
            (
                "--compaction-read-ahead-bytes",
                size(d.compaction_read_ahead_bytes),
            ),
            ("--l0-slowdown-tables", d.l0_slowdown_trigger.to_string()),
            ("--l0-stop-tables", d.l0_stop_trigger.to_string()),
            ("--retention-ms", d.retention_ms.to_string()),
            ("--rest-after-ms", d.rest_after_ms.to_string()),
            ("--txn-wait-ms", d.txn_wait_ms.to_string()),
            ("--txn-ts-cache-keys", d.txn_ts_cache_keys.to_string()),
        ];
        for (flag, default) in stated {
            let start = help.find(&format!("{flag} <")).expect(flag);
            let end = help[start + 2..]
                .find("\n      --")
                .map_or(help.len(), |e| start + 2 + e);
            let text = help[start..end]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            assert!(
                text.contains(&format!("[default: {default}")),
                "{flag} should state [default: {default}]: {text}"
            );
        }
    }

    #[test]
    fn memory_is_prefaulted_unless_turned_off() {
        let machine = Machine {
            memory: None,
            ..Machine::read()
        };
        let on = Config::resolve_on(Flags::parse_from(["tessera-server"]), &machine).unwrap();
        assert!(on.prefault_memory);
        assert_eq!(
            on.engine.memory_budget(),
            (256 << 20) + (64 << 20) + 3 * (64 << 20)
        );
        let off = Flags::parse_from(["tessera-server", "--prefault-memory", "false"]);
        assert!(!Config::resolve(off).unwrap().prefault_memory);
    }

    #[test]
    fn an_advertised_host_has_no_port() {
        for good in ["db.example.com", "10.0.0.7", "::1", "fe80::1"] {
            assert_eq!(check_advertise_host(good.into()).unwrap(), good);
        }
        for bad in ["", "db:7878", "10.0.0.7:7878", "[::1]:7878", "a b"] {
            let err = check_advertise_host(bad.into()).unwrap_err().to_string();
            assert!(err.contains("without a port"), "{bad}: {err}");
        }
    }

    #[test]
    fn limits_that_would_serve_nothing_are_refused() {
        for flag in [
            "--connections-max",
            "--inflight-per-connection-max",
            "--batch-ops-max",
        ] {
            let flags = Flags::parse_from(["tessera-server", flag, "0"]);
            let err = Config::resolve(flags).unwrap_err().to_string();
            assert_eq!(err, format!("{flag} must be at least 1"));
            let flags = Flags::parse_from(["tessera-server", flag, "1"]);
            assert!(Config::resolve(flags).is_ok(), "{flag} 1");
        }
    }

    #[test]
    fn cpu_lists_parse_and_must_match_the_shard_count() {
        assert_eq!(parse_cpus("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        let flags = Flags::parse_from(["tessera-server", "--cpus", "0,1", "--shards", "3"]);
        assert!(Config::resolve(flags).is_err());
    }

    /// Shards are pinned among the CPUs the process may run on (as under
    /// `taskset -c 2,3,6`), and a `--cpus` outside them is refused.
    #[test]
    fn shards_are_pinned_among_the_cpus_this_process_may_run_on() {
        let machine = Machine {
            memory: None,
            cpus: vec![2, 3, 6],
            parallelism: 3,
        };
        let resolve = |args: &[&str]| {
            let all = [&["tessera-server"][..], args].concat();
            Config::resolve_on(Flags::parse_from(all), &machine)
        };
        let c = resolve(&[]).unwrap();
        assert_eq!(
            (c.shards, c.placement),
            (3, Placement::Pinned(vec![2, 3, 6]))
        );
        let c = resolve(&["--shards", "5"]).unwrap();
        assert_eq!(c.placement, Placement::Pinned(vec![2, 3, 6, 2, 3]));
        let c = resolve(&["--cpus", "3,6"]).unwrap();
        assert_eq!(c.placement, Placement::Pinned(vec![3, 6]));
        let err = resolve(&["--cpus", "0-1"]).unwrap_err().to_string();
        assert!(
            err.contains("CPU 0 is not one this process may run on (2-3,6"),
            "{err}"
        );
        // A CPU quota below the CPUs (a container's --cpus 1.5): fewer shards.
        let quota = Machine {
            parallelism: 1,
            ..machine.clone()
        };
        let c = Config::resolve_on(Flags::parse_from(["tessera-server"]), &quota).unwrap();
        assert_eq!((c.shards, c.placement), (1, Placement::Pinned(vec![2])));
    }

    /// A data directory keeps its shard count on a machine with other
    /// CPUs; `--shards` or a `--cpus` list still say what is asked (and a
    /// count other than the directory's is then refused at startup).
    #[test]
    fn a_data_directory_keeps_the_shard_count_it_was_written_with() {
        let dir = tempfile::tempdir().unwrap();
        SlotMap::load_or_create(dir.path(), 3).unwrap();
        let machine = Machine {
            memory: None,
            cpus: vec![0, 1],
            parallelism: 2,
        };
        let data = dir.path().to_str().unwrap();
        let resolve = |args: &[&str]| {
            let all = [&["tessera-server", "--data", data][..], args].concat();
            Config::resolve_on(Flags::parse_from(all), &machine).unwrap()
        };
        let c = resolve(&[]);
        assert_eq!(
            (c.shards, c.shards_from_data, c.placement),
            (3, true, Placement::Pinned(vec![0, 1, 0]))
        );
        let c = resolve(&["--cpus", "any"]);
        assert_eq!((c.shards, c.placement), (3, Placement::Floating));
        let c = resolve(&["--shards", "2"]);
        assert_eq!((c.shards, c.shards_from_data), (2, false));
        let c = resolve(&["--cpus", "1"]);
        assert_eq!((c.shards, c.shards_from_data), (1, false));
        let err = SlotMap::load_or_create(dir.path(), 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("back it up and restore"), "{err}");
        // A new directory: one shard per CPU.
        let empty = tempfile::tempdir().unwrap();
        let flags = Flags::parse_from(["tessera-server", "--data", empty.path().to_str().unwrap()]);
        let c = Config::resolve_on(flags, &machine).unwrap();
        assert_eq!((c.shards, c.shards_from_data), (2, false));
    }

    #[test]
    fn a_metrics_or_listen_port_that_a_shard_also_takes_is_refused() {
        let resolve = |args: &[&str]| {
            let mut all = vec!["tessera-server", "--shards", "2", "--cpus", "any"];
            all.extend_from_slice(args);
            Config::resolve(Flags::parse_from(all))
        };
        // Shards take 7001 and 7002 after the listen port 7000.
        let taken = resolve(&["--listen", "127.0.0.1:7000", "--metrics", "127.0.0.1:7002"]);
        assert!(taken.unwrap_err().to_string().contains("metrics port 7002"));
        let listen = resolve(&["--listen", "127.0.0.1:7000", "--metrics", "0.0.0.0:7000"]);
        assert!(listen.is_err());
        let overlap = resolve(&["--listen", "127.0.0.1:7001", "--shard-base-port", "7000"]);
        assert!(overlap
            .unwrap_err()
            .to_string()
            .contains("listen port 7001"));
        let apart = resolve(&["--listen", "127.0.0.1:7000", "--metrics", "127.0.0.1:7003"]);
        assert_eq!(apart.unwrap().shard_base_port, 7001);
        // Port 0 everywhere (tests): the kernel picks distinct ports.
        assert!(resolve(&["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]).is_ok());
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "shard = 3\n").unwrap();
        let flags = Flags::parse_from(["tessera-server", "--config", path.to_str().unwrap()]);
        assert!(Config::resolve(flags).is_err());
    }
}
