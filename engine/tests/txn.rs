//! The participant side of transactions: timestamp-ordered admission,
//! conditions, one-phase commits, durable prepares and decisions, and
//! recovery of in-doubt transactions through crashes of the in-memory disk.

use bytes::Bytes;
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;
use tessera_engine::io::MemDisk;
use tessera_engine::{
    run_local, Condition, Engine, Error, Options, Phase, TxnPart, Vote, WriteBatch,
};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn open(disk: &MemDisk) -> Engine<MemDisk> {
    Engine::open_on(disk.clone(), "/db", Options::for_tests())
        .await
        .unwrap()
}

fn part(ts: u64, reads: &[&str], writes: &[(&str, &str)]) -> TxnPart {
    let mut batch = WriteBatch::new();
    for (k, v) in writes {
        batch.put(b(k), b(v));
    }
    TxnPart {
        ts,
        conditions: Vec::new(),
        reads: reads
            .iter()
            .enumerate()
            .map(|(i, k)| (i as u32, b(k)))
            .collect(),
        writes: batch,
    }
}

/// Prepares blind `writes` at a fresh timestamp (a participant that voted
/// yes and awaits its decision); returns the timestamp.
async fn prepare(engine: &Engine<MemDisk>, writes: &[(&str, &str)]) -> u64 {
    let ts = engine.clock().now();
    engine
        .txn(part(ts, &[], writes), Phase::Prepare)
        .await
        .unwrap();
    ts
}

/// A one-phase reader of `key` at `ts`, in its own task (it may wait).
fn spawn_reader(engine: &Engine<MemDisk>, ts: u64, key: &'static str) -> glommio::Task<Vote> {
    let engine = engine.clone();
    glommio::spawn_local(
        async move { engine.txn(part(ts, &[key], &[]), Phase::One).await.unwrap() },
    )
}

fn values(vote: &Vote) -> Vec<Option<Bytes>> {
    match vote {
        Vote::Yes(reads) => reads.iter().map(|r| r.value.clone()).collect(),
        other => panic!("expected a yes vote, got {other:?}"),
    }
}

#[test]
fn one_phase_commits_reads_and_checks_conditions() {
    run_local(|| async {
        let disk = MemDisk::new();
        let engine = open(&disk).await;
        let put_ts = engine.put(b("a"), b("1")).await.unwrap();
        let ts = engine.clock().now();
        let vote = engine
            .txn(part(ts, &["a", "b"], &[("b", "2")]), Phase::One)
            .await
            .unwrap();
        assert_eq!(values(&vote), vec![Some(b("1")), None]);
        let Vote::Yes(reads) = &vote else {
            unreachable!()
        };
        assert_eq!(reads[0].version, put_ts);
        assert_eq!(engine.get(b"b").await.unwrap(), Some(b("2")));
        assert_eq!(engine.read_at(b"b", ts).await.unwrap(), Some(b("2")));
        assert_eq!(engine.read_at(b"b", ts - 1).await.unwrap(), None);

        // A failed condition names itself and writes nothing.
        let mut p = part(engine.clock().now(), &[], &[("c", "3")]);
        p.conditions = vec![
            (0, Condition::Exists(b("a"))),
            (1, Condition::Equals(b("b"), b("wrong"))),
        ];
        let vote = engine.txn(p, Phase::One).await.unwrap();
        assert!(
            matches!(vote, Vote::ConditionFailed { index: 1, .. }),
            "{vote:?}"
        );
        assert_eq!(engine.get(b"c").await.unwrap(), None);

        // Version checks: compare-and-set on the version read.
        let mut p = part(engine.clock().now(), &[], &[("a", "4")]);
        p.conditions = vec![(0, Condition::VersionIs(b("a"), put_ts))];
        assert!(matches!(
            engine.txn(p, Phase::One).await.unwrap(),
            Vote::Yes(_)
        ));
        let mut p = part(engine.clock().now(), &[], &[("a", "5")]);
        p.conditions = vec![(0, Condition::VersionIs(b("a"), put_ts))];
        assert!(matches!(
            engine.txn(p, Phase::One).await.unwrap(),
            Vote::ConditionFailed { index: 0, .. }
        ));
        assert_eq!(engine.get(b"a").await.unwrap(), Some(b("4")));
        assert_eq!(engine.stats().txn_intents, 0);
    });
}

#[test]
fn writes_below_later_reads_and_writes_conflict() {
    run_local(|| async {
        let disk = MemDisk::new();
        let engine = open(&disk).await;
        let old = engine.clock().now();
        // A read at a later timestamp forbids writing below it.
        let read_ts = engine.clock().now();
        assert_eq!(engine.read_at(b"k", read_ts).await.unwrap(), None);
        let vote = engine
            .txn(part(old, &[], &[("k", "x")]), Phase::One)
            .await
            .unwrap();
        assert!(matches!(vote, Vote::Conflict(_)), "{vote:?}");
        // So does a plain write after the transaction's timestamp.
        let old = engine.clock().now();
        engine.put(b("j"), b("1")).await.unwrap();
        let vote = engine
            .txn(part(old, &[], &[("j", "x")]), Phase::One)
            .await
            .unwrap();
        assert!(matches!(vote, Vote::Conflict(_)), "{vote:?}");
        assert_eq!(engine.get(b"k").await.unwrap(), None);
        assert_eq!(engine.get(b"j").await.unwrap(), Some(b("1")));
        // A scan at a timestamp forbids writes below it anywhere.
        let old = engine.clock().now();
        let scan_ts = engine.clock().now();
        engine.scan(b"", None, 10, Some(scan_ts)).await.unwrap();
        let vote = engine
            .txn(part(old, &[], &[("z", "x")]), Phase::One)
            .await
            .unwrap();
        assert!(matches!(vote, Vote::Conflict(_)), "{vote:?}");
    });
}

#[test]
fn younger_transactions_wait_for_older_intents_and_older_ones_abort() {
    run_local(|| async {
        let disk = MemDisk::new();
        let engine = open(&disk).await;
        let older = engine.clock().now();
        let vote = engine
            .txn(part(older, &[], &[("k", "old")]), Phase::Prepare)
            .await
            .unwrap();
        assert_eq!(vote, Vote::Yes(vec![]));
        assert_eq!(engine.stats().txn_intents, 1);

        // An even older writer aborts rather than wait for a younger one.
        let oldest = older - 256;
        let vote = engine
            .txn(part(oldest, &[], &[("k", "x")]), Phase::One)
            .await
            .unwrap();
        assert!(matches!(vote, Vote::Conflict(_)), "{vote:?}");

        // A younger reader waits until the older one commits, then sees it.
        let younger = engine.clock().now();
        let reader = spawn_reader(&engine, younger, "k");
        glommio::timer::sleep(Duration::from_millis(20)).await;
        engine.commit_prepared(older).await.unwrap();
        assert_eq!(values(&reader.await), vec![Some(b("old"))]);
        assert_eq!(engine.stats().txn_intents, 0);
        assert_eq!(engine.get(b"k").await.unwrap(), Some(b("old")));
    });
}

/// A plain read of `key` in its own task; `done` says whether it returned.
fn spawn_get(
    engine: &Engine<MemDisk>,
    key: &'static str,
) -> (glommio::Task<Option<Bytes>>, Rc<Cell<bool>>) {
    let engine = engine.clone();
    let done = Rc::new(Cell::new(false));
    let flag = done.clone();
    let task = glommio::spawn_local(async move {
        let value = engine.get(key.as_bytes()).await.unwrap();
        flag.set(true);
        value
    });
    (task, done)
}

/// The coordinator answers before a participant applies the commit, so
/// reads of the newest state wait for the intents on what they read.
#[test]
fn reads_of_the_newest_state_wait_for_intents_on_what_they_read() {
    run_local(|| async {
        let disk = MemDisk::new();
        let engine = open(&disk).await;
        let mut batch = WriteBatch::new();
        batch.put(b("a"), b("a0")).put(b("k"), b("k0"));
        engine.write(batch).await.unwrap();
        let ts = prepare(&engine, &[("k", "k1")]).await;

        let (get, get_done) = spawn_get(&engine, "k");
        let scan_done = Rc::new(Cell::new(false));
        let scan = {
            let engine = engine.clone();
            let flag = scan_done.clone();
            glommio::spawn_local(async move {
                let rows = engine.scan(b"", None, 10, None).await.unwrap();
                flag.set(true);
                rows
            })
        };
        // A key without an intent is read at once.
        assert_eq!(engine.get(b"a").await.unwrap(), Some(b("a0")));
        glommio::timer::sleep(Duration::from_millis(20)).await;
        assert!(!get_done.get(), "a read of k waits for the intent on k");
        assert!(!scan_done.get(), "a scan waits for every intent");

        engine.commit_prepared(ts).await.unwrap();
        assert_eq!(get.await, Some(b("k1")));
        assert_eq!(scan.await, vec![(b("a"), b("a0")), (b("k"), b("k1"))]);

        // An aborted intent releases its readers, who see the old state.
        let ts = prepare(&engine, &[("k", "k2")]).await;
        let (get, get_done) = spawn_get(&engine, "k");
        glommio::timer::sleep(Duration::from_millis(20)).await;
        assert!(!get_done.get());
        engine.abort_prepared(ts);
        assert_eq!(get.await, Some(b("k1")));
    });
}

#[test]
fn a_wait_for_an_undecided_intent_gives_up_with_a_clear_error() {
    run_local(|| async {
        let disk = MemDisk::new();
        let opts = Options {
            txn_wait_ms: 50,
            ..Options::for_tests()
        };
        let engine = Engine::open_on(disk.clone(), "/db", opts).await.unwrap();
        let ts = prepare(&engine, &[("k", "v")]).await;
        let later = engine.clock().now();
        match engine.read_at(b"k", later).await {
            Err(Error::WaitTimeout { holder, .. }) => assert_eq!(holder, ts),
            other => panic!("expected a wait timeout, got {other:?}"),
        }
        engine.abort_prepared(ts);
        assert_eq!(engine.read_at(b"k", later).await.unwrap(), None);
    });
}

/// Enough writes and flushes that every WAL segment written so far is
/// recycled.
async fn recycle_every_segment(engine: &Engine<MemDisk>) {
    let value = Bytes::from(vec![b'x'; 2000]);
    for round in 0..6 {
        for i in 0..200 {
            engine
                .put(Bytes::from(format!("fill-{round}-{i}")), value.clone())
                .await
                .unwrap();
        }
        engine.flush().await.unwrap();
    }
}

/// Prepares a transaction, crashes, and checks it comes back in doubt with
/// its intent blocking readers, for `resolve` to decide.
async fn crash_while_prepared(commit: bool) {
    let disk = MemDisk::new();
    let engine = open(&disk).await;
    engine.put(b("other"), b("1")).await.unwrap();
    let ts = prepare(&engine, &[("k", "v"), ("k2", "v2")]).await;
    let disk = disk.crash();
    let engine = open(&disk).await;
    assert_eq!(engine.in_doubt(), vec![ts]);
    assert_eq!(engine.stats().txn_intents, 2);
    // A reader above it waits for the in-doubt intent to be resolved.
    let later = engine.clock().now();
    let reader = spawn_reader(&engine, later, "k");
    glommio::timer::sleep(Duration::from_millis(20)).await;
    if commit {
        engine.commit_prepared(ts).await.unwrap();
    } else {
        engine.abort_prepared(ts);
    }
    let expected = commit.then(|| b("v"));
    assert_eq!(values(&reader.await), vec![expected.clone()]);
    assert_eq!(engine.get(b"k").await.unwrap(), expected);
    assert_eq!(engine.in_doubt(), Vec::<u64>::new());
    // Committed data and the commit record survive the next crash; an
    // abort leaves the prepare, so it comes back in doubt to abort again.
    let engine = open(&disk.crash()).await;
    assert_eq!(engine.get(b"other").await.unwrap(), Some(b("1")));
    if commit {
        assert!(engine.in_doubt().is_empty());
    } else {
        assert_eq!(engine.in_doubt(), vec![ts]);
        engine.abort_prepared(ts);
    }
    assert_eq!(engine.get(b"k").await.unwrap(), expected);
    assert_eq!(engine.get(b"k2").await.unwrap(), commit.then(|| b("v2")));
}

#[test]
fn a_prepared_transaction_survives_a_crash_in_doubt_and_commits() {
    run_local(|| crash_while_prepared(true));
}

#[test]
fn a_prepared_transaction_survives_a_crash_in_doubt_and_aborts() {
    run_local(|| crash_while_prepared(false));
}

#[test]
fn undecided_prepares_and_decisions_outlive_flushes_and_recycled_segments() {
    run_local(|| async {
        let disk = MemDisk::new();
        let engine = open(&disk).await;
        let prepared = prepare(&engine, &[("k", "v")]).await;
        let decided = engine.clock().now();
        engine
            .log_decision(decided, true, vec![0, 1])
            .await
            .unwrap();
        let aborted = engine.clock().now();
        engine
            .log_decision(aborted, false, vec![0, 1])
            .await
            .unwrap();
        recycle_every_segment(&engine).await;
        assert!(engine.stats().flushes >= 6);
        let engine = Rc::new(open(&disk.crash()).await);
        assert_eq!(engine.in_doubt(), vec![prepared]);
        assert!(engine.committed(decided));
        assert!(!engine.committed(aborted));
        engine.forget_recovered_decisions();
        assert!(!engine.committed(decided));
        engine.commit_prepared(prepared).await.unwrap();
        assert_eq!(engine.get(b"k").await.unwrap(), Some(b("v")));
    });
}

/// A participant's commit record names the transaction; replay takes its
/// writes from the prepare, wherever the two records sit.
#[test]
fn committed_writes_survive_crashes_with_the_commit_record_naming_its_prepare() {
    run_local(|| async {
        let disk = MemDisk::new();
        let engine = open(&disk).await;
        // Prepare and commit in the same segment.
        let first = prepare(&engine, &[("k1", "v1")]).await;
        engine.commit_prepared(first).await.unwrap();
        let disk = disk.crash();
        let engine = open(&disk).await;
        assert_eq!(engine.get(b"k1").await.unwrap(), Some(b("v1")));
        // A flush between them: the prepare is logged again past it.
        let second = prepare(&engine, &[("k2", "v2")]).await;
        engine.put(b("other"), b("1")).await.unwrap();
        engine.flush().await.unwrap();
        engine.commit_prepared(second).await.unwrap();
        let disk = disk.crash();
        let engine = open(&disk).await;
        assert!(engine.in_doubt().is_empty());
        assert_eq!(engine.get(b"k2").await.unwrap(), Some(b("v2")));
        // Every segment holding either prepare recycled: the writes come
        // from tables.
        recycle_every_segment(&engine).await;
        let engine = open(&disk.crash()).await;
        assert!(engine.in_doubt().is_empty());
        assert_eq!(engine.get(b"k1").await.unwrap(), Some(b("v1")));
        assert_eq!(engine.get(b"k2").await.unwrap(), Some(b("v2")));
    });
}

#[test]
fn a_coordinators_held_part_is_durable_exactly_with_its_decision() {
    run_local(|| async {
        let disk = MemDisk::new();
        let engine = open(&disk).await;
        // Held but undecided at the crash: gone, and nothing in doubt.
        let lost = engine.clock().now();
        engine
            .txn(part(lost, &[], &[("a", "lost")]), Phase::Hold)
            .await
            .unwrap();
        assert_eq!(engine.stats().txn_intents, 1);
        let disk = disk.crash();
        let engine = open(&disk).await;
        assert!(engine.in_doubt().is_empty());
        assert_eq!(engine.stats().txn_intents, 0);
        assert_eq!(engine.get(b"a").await.unwrap(), None);
        // Held, then decided: visible once the decision is durable, and
        // recovered from the decision record alone.
        let ts = engine.clock().now();
        engine
            .txn(part(ts, &[], &[("a", "kept")]), Phase::Hold)
            .await
            .unwrap();
        engine.log_decision(ts, true, vec![0, 1]).await.unwrap();
        assert_eq!(engine.get(b"a").await.unwrap(), Some(b("kept")));
        assert_eq!(engine.stats().txn_intents, 0);
        let engine = open(&disk.crash()).await;
        assert_eq!(engine.read_at(b"a", ts).await.unwrap(), Some(b("kept")));
        assert!(engine.committed(ts));
        // A held part that is aborted leaves nothing behind.
        let aborted = engine.clock().now();
        engine
            .txn(part(aborted, &[], &[("b", "x")]), Phase::Hold)
            .await
            .unwrap();
        engine.abort_prepared(aborted);
        assert_eq!(engine.stats().txn_intents, 0);
        assert_eq!(engine.get(b"b").await.unwrap(), None);
    });
}

/// A read answered from memory at once (`get_in_memory`, which a server
/// uses to answer a get without a future) gives what the waiting read
/// gives, for a live, an expiring, a deleted and an absent key in the
/// memtable and for a key the row cache learned; and it declines when
/// only the tables know the key or while a transaction's intent is
/// pending, where the waiting read may have to wait.
#[test]
fn a_read_from_memory_agrees_with_the_waiting_read_or_declines() {
    run_local(|| async {
        let engine = open(&MemDisk::new()).await;
        // The engine's turn-taking (background work, the executor's
        // preemption) may decline any one read: three tries.
        let now = |key: &str| (0..3).find_map(|_| engine.get_in_memory(key.as_bytes()));
        engine.put(b("flushed"), b("old")).await.unwrap();
        engine.flush().await.unwrap();
        assert_eq!(now("flushed"), None, "only the tables know it");
        let waited = engine.get_with_expiry(b"flushed").await.unwrap();
        assert_eq!(waited.as_ref().map(|(v, _)| v.clone()), Some(b("old")));
        assert_eq!(now("flushed"), Some(waited), "the row cache knows it");
        let mut batch = WriteBatch::new();
        batch.put(b("live"), b("v"));
        batch.put_with_ttl(b("expiring"), b("e"), 60_000);
        batch.put_with_ttl(b("expired"), b("x"), 1);
        batch.put(b("deleted"), b("d"));
        engine.write(batch).await.unwrap();
        engine.delete(b("deleted")).await.unwrap();
        glommio::timer::sleep(Duration::from_millis(5)).await;
        for key in ["live", "expiring", "expired", "deleted", "absent"] {
            let waited = engine.get_with_expiry(key.as_bytes()).await.unwrap();
            assert_eq!(now(key), Some(waited), "{key}");
        }
        assert!(now("live")
            .unwrap()
            .is_some_and(|(v, at)| v == b("v") && at.is_none()));
        assert!(now("expiring")
            .unwrap()
            .is_some_and(|(v, at)| v == b("e") && at.is_some()));
        assert_eq!(now("expired"), Some(None));
        let ts = prepare(&engine, &[("other", "o")]).await;
        assert_eq!(now("live"), None, "an intent is pending");
        engine.abort_prepared(ts);
        assert!(now("live").is_some());
        engine.close().await.unwrap();
    });
}
