//! The bank test against the real server with 2 shards: clients move money
//! between accounts on different shards with conditional transactions,
//! auditors check with read-only transactions that the total never changes
//! and no balance goes negative, and every committed transaction goes into
//! a history that must be serializable (no dependency cycle) and respect
//! real-time order. The crash variant SIGKILLs the server at random moments:
//! after each restart no intent is left, the total holds, and every
//! acknowledged transfer is there at its timestamp.
//! `TESSERA_BANK_CRASH_CYCLES` sets the crash cycles (default 3).

mod common;

use bytes::Bytes;
use common::history::{self, Committed, RegisterOp};
use common::Server;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_client::{Client, Error, ErrorCode, Retry, Txn, TxnOutcome};

const ACCOUNTS: usize = 12;
const START: u64 = 100;
const TOTAL: u64 = ACCOUNTS as u64 * START;

fn account(i: usize) -> Bytes {
    Bytes::from(format!("acct-{i:02}"))
}

fn amount_of(v: &Option<Bytes>) -> u64 {
    let v = v.as_ref().expect("accounts always exist");
    std::str::from_utf8(v).unwrap().parse().unwrap()
}

/// A transfer's timestamp and the (key, value) pairs it wrote.
type Transfer = (u64, Vec<(Bytes, Bytes)>);

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    history: Mutex<Vec<Committed>>,
    /// Acknowledged transfers.
    acked: Mutex<Vec<Transfer>>,
    violations: Mutex<Vec<String>>,
    /// Plain single-key puts and gets on the register keys.
    registers: Mutex<Vec<RegisterOp>>,
    transfers: AtomicU64,
    audits: AtomicU64,
    conditions_failed: AtomicU64,
}

impl Shared {
    fn violation(&self, v: String) {
        self.violations.lock().unwrap().push(v);
    }

    fn record(&self, outcome: &TxnOutcome, writes: Vec<Bytes>, started: Instant) {
        self.history.lock().unwrap().push(Committed {
            ts: outcome.ts,
            reads: outcome
                .reads
                .iter()
                .map(|r| (r.key.clone(), r.version))
                .collect(),
            writes,
            started,
            ended: Instant::now(),
        });
    }
}

/// Whether an error means the server went away (expected when crashing).
fn server_gone(e: &Error) -> bool {
    matches!(e, Error::Io(_) | Error::Timeout)
        || matches!(
            e,
            Error::Server {
                code: ErrorCode::Unavailable,
                ..
            }
        )
}

fn retry() -> Retry {
    Retry {
        attempts: 200,
        ..Retry::default()
    }
}

/// Moves random amounts between accounts on different shards until told
/// to stop or the server dies.
fn transferrer(addr: String, seed: u64, shared: Arc<Shared>, crashing: bool) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let Ok(mut client) = Client::connect(addr.as_str()) else {
        return;
    };
    while !shared.stop.load(Ordering::Relaxed) {
        let a = rng.gen_range(0..ACCOUNTS);
        let b = rng.gen_range(0..ACCOUNTS);
        let (ka, kb) = (account(a), account(b));
        if a == b || client.shard_of(&ka) == client.shard_of(&kb) {
            continue;
        }
        let started = Instant::now();
        let read = Txn::new().read(ka.clone()).read(kb.clone());
        let seen = match client.txn_with_retry(&read, retry()) {
            Ok(o) => o,
            Err(e) if crashing && server_gone(&e) => return,
            Err(e) => return shared.violation(format!("read-only transaction failed: {e}")),
        };
        shared.record(&seen, Vec::new(), started);
        let (ba, bb) = (
            amount_of(&seen.reads[0].value),
            amount_of(&seen.reads[1].value),
        );
        let amount = rng.gen_range(1..=20);
        if ba < amount {
            continue;
        }
        let (na, nb) = (
            Bytes::from((ba - amount).to_string()),
            Bytes::from((bb + amount).to_string()),
        );
        let transfer = Txn::new()
            .version_is(ka.clone(), seen.reads[0].version)
            .version_is(kb.clone(), seen.reads[1].version)
            .read(ka.clone())
            .read(kb.clone())
            .put(ka.clone(), na.clone())
            .put(kb.clone(), nb.clone());
        let started = Instant::now();
        match client.txn_with_retry(&transfer, retry()) {
            Ok(o) if o.committed => {
                if amount_of(&o.reads[0].value) != ba || amount_of(&o.reads[1].value) != bb {
                    shared.violation(format!(
                        "transfer {} passed its version checks but read other balances",
                        o.ts
                    ));
                }
                shared.record(&o, vec![ka.clone(), kb.clone()], started);
                shared
                    .acked
                    .lock()
                    .unwrap()
                    .push((o.ts, vec![(ka, na), (kb, nb)]));
                shared.transfers.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {
                shared.conditions_failed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if crashing && server_gone(&e) => return,
            Err(e) => return shared.violation(format!("transfer failed: {e}")),
        }
    }
}

/// Reads every account in one transaction and checks the invariant.
fn audit(client: &mut Client, shared: &Shared) -> Result<(), Error> {
    let txn = (0..ACCOUNTS).fold(Txn::new(), |t, i| t.read(account(i)));
    let started = Instant::now();
    let o = client.txn_with_retry(&txn, retry())?;
    let total: u64 = o.reads.iter().map(|r| amount_of(&r.value)).sum();
    if total != TOTAL {
        shared.violation(format!(
            "audit at {} saw a total of {total}, not {TOTAL}",
            o.ts
        ));
    }
    shared.record(&o, Vec::new(), started);
    shared.audits.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn auditor(addr: String, shared: Arc<Shared>, crashing: bool) {
    let Ok(mut client) = Client::connect(addr.as_str()) else {
        return;
    };
    while !shared.stop.load(Ordering::Relaxed) {
        match audit(&mut client, &shared) {
            Ok(()) => {}
            Err(e) if crashing && server_gone(&e) => return,
            Err(e) => return shared.violation(format!("audit failed: {e}")),
        }
    }
}

/// Plain puts (unique values) and gets on a few register keys, beside the
/// transactions, for the single-key linearizability check.
fn register_client(addr: String, seed: u64, shared: Arc<Shared>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut client = match Client::connect(addr.as_str()) {
        Ok(c) => c,
        Err(e) => return shared.violation(format!("register client cannot connect: {e}")),
    };
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let key = Bytes::from(format!("reg-{}", rng.gen_range(0..4)));
        let started = Instant::now();
        let op = if rng.gen_bool(0.5) {
            n += 1;
            let value = Bytes::from(format!("{seed}-{n}"));
            match client.put(key.clone(), value.clone()) {
                Ok(ts) => RegisterOp::Put {
                    key,
                    value,
                    ts,
                    started,
                    ended: Instant::now(),
                },
                Err(e) => return shared.violation(format!("register put failed: {e}")),
            }
        } else {
            match client.get(key.clone()) {
                Ok(value) => RegisterOp::Get {
                    key,
                    value,
                    started,
                    ended: Instant::now(),
                },
                Err(e) => return shared.violation(format!("register get failed: {e}")),
            }
        };
        shared.registers.lock().unwrap().push(op);
    }
}

/// Opens the accounts in one atomic cross-shard batch.
fn open_accounts(addr: &str, shared: &Shared) {
    let mut client = Client::connect(addr).unwrap();
    let started = Instant::now();
    let txn = (0..ACCOUNTS).fold(Txn::new(), |t, i| {
        t.missing(account(i)).put(account(i), START.to_string())
    });
    let o = client.txn(&txn).unwrap();
    assert!(o.committed, "{o:?}");
    shared.record(&o, (0..ACCOUNTS).map(account).collect(), started);
}

/// Runs transferrers and auditors for `run`, or until `kill` fires.
fn run_load(
    addr: &str,
    shared: &Arc<Shared>,
    seed: u64,
    crashing: bool,
    run: Duration,
    kill: impl FnOnce(),
) {
    shared.stop.store(false, Ordering::Relaxed);
    let mut threads = Vec::new();
    for t in 0..4 {
        let (addr, shared) = (addr.to_string(), shared.clone());
        threads.push(std::thread::spawn(move || {
            transferrer(addr, seed * 100 + t, shared, crashing)
        }));
    }
    for _ in 0..2 {
        let (addr, shared) = (addr.to_string(), shared.clone());
        threads.push(std::thread::spawn(move || auditor(addr, shared, crashing)));
    }
    std::thread::sleep(run);
    kill();
    shared.stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
}

fn metric(client: &mut Client, name: &str) -> f64 {
    client
        .stats()
        .unwrap()
        .iter()
        .filter(|m| m.name == name)
        .map(|m| m.value)
        .sum()
}

#[test]
fn the_history_checker_catches_what_it_claims_to() {
    history::self_test();
}

#[test]
fn transfers_across_shards_keep_the_total_and_are_serializable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2, &[]);
    let shared = Arc::new(Shared::default());
    open_accounts(&server.listen, &shared);
    let registers: Vec<_> = (0..2)
        .map(|i| {
            let (addr, shared) = (server.listen.clone(), shared.clone());
            std::thread::spawn(move || register_client(addr, 1000 + i, shared))
        })
        .collect();
    run_load(
        &server.listen,
        &shared,
        1,
        false,
        Duration::from_secs(3),
        || {},
    );
    for r in registers {
        r.join().unwrap();
    }
    let violations = shared.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:#?}");
    let mut client = Client::connect(server.listen.as_str()).unwrap();
    audit(&mut client, &shared).unwrap();
    let history = shared.history.lock().unwrap().clone();
    let report = history::check(&history).unwrap_or_else(|e| panic!("history: {e}"));
    let register_ops = shared.registers.lock().unwrap().clone();
    let checked = history::check_registers(&register_ops)
        .unwrap_or_else(|e| panic!("single-key operations: {e}"));
    assert!(checked > 100, "only {checked} single-key operations");
    let transfers = shared.transfers.load(Ordering::Relaxed);
    eprintln!("{checked} single-key puts and gets: linearizable");
    eprintln!(
        "{transfers} transfers, {} audits, {} failed conditions; history of {} transactions, {} dependency edges: serializable",
        shared.audits.load(Ordering::Relaxed),
        shared.conditions_failed.load(Ordering::Relaxed),
        report.transactions,
        report.edges
    );
    assert!(transfers > 20, "only {transfers} transfers committed");
    assert!(shared.audits.load(Ordering::Relaxed) > 5);
    assert!(metric(&mut client, "txn_two_phase_total") >= transfers as f64);
    assert_eq!(metric(&mut client, "txn_intents"), 0.0);
    assert!(server.stop());
}

#[test]
fn transfers_survive_sigkill_without_half_applied_transactions() {
    transfers_through_sigkills("always");
}

/// `none` acknowledges single-key writes from memory, but a cross-shard
/// transaction still waits for its prepares' and its decision's WAL
/// writes: acknowledged transfers survive a process crash there too.
#[test]
fn transfers_in_none_mode_survive_sigkill_without_half_applied_transactions() {
    transfers_through_sigkills("none");
}

/// Cycles of transfers, SIGKILL and restart with `--wal-sync sync`: after
/// each restart nothing is left in doubt, the total holds, and every
/// acknowledged transfer's writes read back at its timestamp.
fn transfers_through_sigkills(sync: &str) {
    let cycles: u64 = std::env::var("TESSERA_BANK_CRASH_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let shared = Arc::new(Shared::default());
    let mut rng = rand::thread_rng();
    let mut checked = 0;
    let mut in_doubt = 0;
    for cycle in 0..=cycles {
        let server = match cycle {
            // The last start logs at info, to check what it says of the
            // transactions the crash left in doubt.
            c if c == cycles => {
                let mut command = Server::command(dir.path(), 2, &["--wal-sync", sync]);
                command.env("RUST_LOG", "info");
                Server::spawn(command).unwrap()
            }
            _ => Server::start(dir.path(), 2, &["--wal-sync", sync]),
        };
        let mut client = Client::connect(server.listen.as_str()).unwrap();
        if cycle == 0 {
            open_accounts(&server.listen, &shared);
        } else {
            // Recovery resolved every in-doubt transaction before serving.
            for name in ["txn_intents", "txn_prepared"] {
                assert_eq!(metric(&mut client, name), 0.0, "cycle {cycle}: {name}");
            }
            // The total holds, so no transfer is half-applied.
            audit(&mut client, &shared).unwrap();
            for (ts, writes) in shared.acked.lock().unwrap().drain(..) {
                for (key, value) in writes {
                    assert_eq!(
                        client.read_at(key.clone(), ts).unwrap(),
                        Some(value),
                        "cycle {cycle}: acknowledged transfer {ts} lost its write to {key:?}"
                    );
                    checked += 1;
                }
            }
        }
        let violations = shared.violations.lock().unwrap().clone();
        assert!(violations.is_empty(), "cycle {cycle}: {violations:#?}");
        if cycle == cycles {
            let (stopped, log) = server.stop_with_stderr();
            assert!(stopped, "{log}");
            in_doubt = resolved_in_one_line_per_shard(&log);
            break;
        }
        let run = Duration::from_millis(rng.gen_range(300..1500));
        let listen = server.listen.clone();
        run_load(&listen, &shared, cycle + 7, true, run, move || {
            server.kill9()
        });
    }
    assert!(checked > 0, "no transfer was acknowledged");
    eprintln!(
        "--wal-sync {sync}: {cycles} crash cycles, {checked} acknowledged transfer writes \
         present, {in_doubt} transactions in doubt at the last start"
    );
}

/// Checks a server's log at start: each shard that opened with
/// transactions in doubt (`in_doubt=N` on its "engine opened" line) says
/// in one line how it resolved them, `committed` and `aborted` adding up
/// to N, and no line per transaction (a crash under contended
/// transactions leaves tens of thousands). Returns the transactions in doubt.
fn resolved_in_one_line_per_shard(log: &str) -> u64 {
    let field = |line: &str, name: &str| -> u64 {
        let at = line
            .find(&format!(" {name}="))
            .unwrap_or_else(|| panic!("{name} in {line}"));
        let rest = &line[at + name.len() + 2..];
        rest[..rest.find(' ').unwrap_or(rest.len())]
            .parse()
            .unwrap()
    };
    let mut total = 0;
    for opened in log.lines().filter(|l| l.contains("engine opened")) {
        let n = field(opened, "in_doubt");
        let dir = opened
            .split(" dir=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        let shard = dir.rsplit("shard-").next().unwrap();
        let resolved: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("resolved in-doubt") && l.contains(&format!(" shard={shard} ")))
            .collect();
        match n {
            0 => assert!(resolved.is_empty(), "{resolved:?}"),
            n => {
                assert_eq!(resolved.len(), 1, "shard {shard}: {resolved:#?}");
                let line = resolved[0];
                assert_eq!(
                    field(line, "committed") + field(line, "aborted"),
                    n,
                    "{line}"
                );
            }
        }
        total += n;
    }
    total
}
