//! Loom runs of the transaction protocol and the clock. Every interleaving
//! of mesh deliveries up to the preemption bound (`LOOM_MAX_PREEMPTIONS`,
//! default 3 here) is tried.

use loom::sync::mpsc::channel;
use loom::thread;
use std::collections::BTreeMap;
use tessera_engine::clock::HybridClock;
use tessera_loom_tests::{
    coordinate, deliver, stop, Decided, Key, Msg, ShardModel, TxnModel, Value, Versions,
};

const X: Key = 1; // lives on shard 0
const Y: Key = 2; // lives on shard 1

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b
}

/// Moves `amount` from X to Y (negative: Y to X), reading both.
fn transfer(ts: u64, amount: Value) -> TxnModel {
    TxnModel {
        ts,
        parts: vec![
            (0, vec![X], vec![(X, -amount)]),
            (1, vec![Y], vec![(Y, amount)]),
        ],
    }
}

fn audit(ts: u64) -> TxnModel {
    TxnModel {
        ts,
        parts: vec![(0, vec![X], vec![]), (1, vec![Y], vec![])],
    }
}

/// Replays the committed transactions in timestamp order from the initial
/// state: each one's reads must match, and the final versions too.
fn check_serial(txns: &[(&TxnModel, &Decided)], versions: &Versions) {
    let mut state: BTreeMap<Key, Value> = [(X, 5), (Y, 5)].into();
    let mut committed: Vec<_> = txns.iter().filter(|(_, d)| d.committed).collect();
    committed.sort_by_key(|(t, _)| t.ts);
    for (txn, decided) in committed {
        for &(k, v, _) in &decided.reads {
            assert_eq!(
                state[&k], v,
                "transaction {} read {k} out of timestamp order",
                txn.ts
            );
        }
        for (_, _, deltas) in &txn.parts {
            for &(k, d) in deltas {
                *state.get_mut(&k).unwrap() += d;
            }
        }
    }
    for (k, v) in &state {
        let newest = versions[k].iter().max_by_key(|(ts, _)| *ts).unwrap().1;
        assert_eq!(newest, *v, "key {k}: half-applied or lost write");
    }
    assert_eq!(state[&X] + state[&Y], 10, "the total changed");
}

/// Two coordinators (this thread and one more) run `a` and `b` against two
/// shard threads.
fn run_pair(a: TxnModel, b: TxnModel) {
    builder().check(move || {
        let (s0, r0) = channel();
        let (s1, r1) = channel();
        let h0 = thread::spawn(move || ShardModel::new(&[(X, 5)]).run(r0));
        let h1 = thread::spawn(move || ShardModel::new(&[(Y, 5)]).run(r1));
        let shards = vec![s0, s1];
        let other = shards.clone();
        let b2 = b.clone();
        let hb = thread::spawn(move || {
            let (decided, commits) = coordinate(&other, &b2);
            deliver(&other, commits);
            decided
        });
        let (da, commits) = coordinate(&shards, &a);
        deliver(&shards, commits);
        let db = hb.join().unwrap();
        let versions = stop(&shards);
        h0.join().unwrap();
        h1.join().unwrap();
        check_serial(&[(&a, &da), (&b, &db)], &versions);
    });
}

#[test]
fn conflicting_transfers_commit_atomically_in_timestamp_order() {
    run_pair(transfer(10 << 8, 3), transfer(20 << 8 | 1, -4));
}

#[test]
fn an_older_audit_sees_the_state_before_a_younger_transfer() {
    run_pair(transfer(20 << 8, 3), audit(10 << 8 | 1));
}

#[test]
fn a_younger_audit_sees_an_older_transfer_whole_or_not_at_all() {
    run_pair(transfer(10 << 8, 3), audit(20 << 8 | 1));
}

/// The coordinator answers before its one-way commit messages arrive:
/// a read of the newest state that starts after the answer still sees the
/// transaction, whenever the commit is delivered.
#[test]
fn a_read_after_the_answer_sees_the_commit_however_late_it_arrives() {
    builder().check(|| {
        let (s0, r0) = channel();
        let (s1, r1) = channel();
        let h0 = thread::spawn(move || ShardModel::new(&[(X, 5)]).run(r0));
        let h1 = thread::spawn(move || ShardModel::new(&[(Y, 5)]).run(r1));
        let shards = vec![s0, s1];
        let (decided, commits) = coordinate(&shards, &transfer(10 << 8, 3));
        assert!(decided.committed);
        let mesh = shards.clone();
        let late = thread::spawn(move || deliver(&mesh, commits));
        for (shard, key, expected) in [(1, Y, 8), (0, X, 2)] {
            let (tx, rx) = channel();
            shards[shard].send(Msg::Get { key, reply: tx }).unwrap();
            assert_eq!(
                rx.recv().unwrap(),
                expected,
                "key {key} read before the commit"
            );
        }
        late.join().unwrap();
        stop(&shards);
        h0.join().unwrap();
        h1.join().unwrap();
    });
}

#[test]
fn clocks_exchanging_timestamps_stay_unique_and_causal() {
    builder().check(|| {
        let (to_b, from_a) = channel::<u64>();
        let (to_a, from_b) = channel::<u64>();
        let hb = thread::spawn(move || {
            let clock = HybridClock::new(1);
            let mine = clock.now();
            to_a.send(mine).unwrap();
            let seen = from_a.recv().unwrap();
            clock.observe(seen);
            let after = clock.now();
            assert!(after > seen && after > mine);
            vec![mine, after]
        });
        let clock = HybridClock::new(0);
        let mine = clock.now();
        to_b.send(mine).unwrap();
        let seen = from_b.recv().unwrap();
        clock.observe(seen);
        let after = clock.now();
        assert!(after > seen && after > mine);
        let mut all = hb.join().unwrap();
        all.extend([mine, after]);
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "two timestamps collided");
    });
}
