//! Loom models of what the transaction path does across threads.
//!
//! Inside a shard nothing is shared: one glommio executor owns the engine,
//! its [`Concurrency`] table (intents, read and write timestamps) and its
//! `HybridClock`, all `Rc`/`Cell`. What crosses threads is messages over
//! glommio's channel mesh: one FIFO queue per ordered pair of shards. These
//! models put each shard on a loom thread with the real `Concurrency` (and,
//! in `tests/models.rs`, the real `HybridClock`), model each mesh queue as a
//! loom channel (FIFO per pair, as the mesh guarantees), run the
//! coordinator's two-phase commit over them, and let loom try every
//! interleaving of deliveries, checking atomicity, timestamp order of
//! reads, the bank invariant and the absence of deadlock (a wait cycle
//! would leave every thread blocked, which loom reports).
//!
//! The models mirror `engine/src/txn.rs` (admission, waiting, reads at the
//! transaction's timestamp, prepare, commit, abort) and `net/src/txn.rs`
//! (prepare everywhere, all yes → commit writers, any no → abort yes
//! voters) without their I/O: logging is a no-op here because durability
//! is proven by the crash tests, not by interleavings.

use loom::sync::mpsc::{channel, Receiver, Sender};
use std::collections::{BTreeMap, HashMap};
use tessera_engine::cc::{key_hash, Admission, Concurrency};

/// A key and value of the model (small integers).
pub type Key = u8;
pub type Value = i64;

/// Every version of every key of a shard: key → (ts, value)*.
pub type Versions = BTreeMap<Key, Vec<(u64, Value)>>;

/// A participant's answer to a prepare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vote {
    /// The reads (key, value, version) at the transaction's timestamp.
    Yes(Vec<(Key, Value, u64)>),
    Conflict,
}

/// A mesh message to a shard.
pub enum Msg {
    Prepare {
        ts: u64,
        /// Keys read; every key in `deltas` must be read too (it is a
        /// read-modify-write).
        reads: Vec<Key>,
        /// Each written key gets `delta` added to its value at `ts`.
        deltas: Vec<(Key, Value)>,
        reply: Sender<Vote>,
    },
    /// One-way: the decision is durable; apply the prepared writes.
    Commit {
        ts: u64,
    },
    /// A read of the newest state (a plain get): waits for an intent on
    /// `key`, as `Engine::get` does.
    Get {
        key: Key,
        reply: Sender<Value>,
    },
    Abort {
        ts: u64,
    },
    Stop {
        reply: Sender<Versions>,
    },
}

/// One shard: versions, concurrency control, prepared writes, and
/// prepares waiting for an older intent.
pub struct ShardModel {
    versions: Versions,
    cc: Concurrency,
    prepared: HashMap<u64, Vec<(Key, Value)>>,
    waiting: Vec<Msg>,
}

impl ShardModel {
    pub fn new(initial: &[(Key, Value)]) -> Self {
        ShardModel {
            versions: initial.iter().map(|&(k, v)| (k, vec![(1, v)])).collect(),
            cc: Concurrency::new(64),
            prepared: HashMap::new(),
            waiting: Vec::new(),
        }
    }

    fn read_at(&self, key: Key, ts: u64) -> (Value, u64) {
        self.versions
            .get(&key)
            .and_then(|v| {
                v.iter()
                    .filter(|(vts, _)| *vts <= ts)
                    .max_by_key(|(vts, _)| *vts)
            })
            .map_or((0, 0), |&(vts, value)| (value, vts))
    }

    /// Serves messages until `Stop`.
    pub fn run(mut self, rx: Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            if !self.handle(msg) {
                return;
            }
        }
    }

    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Prepare {
                ts,
                reads,
                deltas,
                reply,
            } => {
                let read_hashes: Vec<u64> = reads.iter().map(|&k| key_hash(&[k])).collect();
                let write_hashes: Vec<u64> = deltas.iter().map(|&(k, _)| key_hash(&[k])).collect();
                match self.cc.admit(ts, &read_hashes, &write_hashes) {
                    Admission::Admitted => {
                        let read_values: Vec<(Key, Value, u64)> = reads
                            .iter()
                            .map(|&k| {
                                let (v, version) = self.read_at(k, ts);
                                (k, v, version)
                            })
                            .collect();
                        if !deltas.is_empty() {
                            let writes = deltas
                                .iter()
                                .map(|&(k, d)| (k, self.read_at(k, ts).0 + d))
                                .collect();
                            self.prepared.insert(ts, writes);
                        }
                        let _ = reply.send(Vote::Yes(read_values));
                    }
                    Admission::WaitFor(_) => self.waiting.push(Msg::Prepare {
                        ts,
                        reads,
                        deltas,
                        reply,
                    }),
                    Admission::Abort(_) => {
                        let _ = reply.send(Vote::Conflict);
                    }
                }
            }
            Msg::Commit { ts } => {
                for (k, v) in self.prepared.remove(&ts).unwrap_or_default() {
                    self.versions.entry(k).or_default().push((ts, v));
                }
                self.cc.release(ts);
                self.retry_waiting();
            }
            Msg::Get { key, reply } => match self.cc.intent_on(key_hash(&[key])) {
                Some(_) => self.waiting.push(Msg::Get { key, reply }),
                None => {
                    let _ = reply.send(self.read_at(key, u64::MAX).0);
                }
            },
            Msg::Abort { ts } => {
                self.prepared.remove(&ts);
                self.cc.release(ts);
                self.retry_waiting();
            }
            Msg::Stop { reply } => {
                assert!(self.waiting.is_empty(), "a prepare is still waiting");
                assert_eq!(
                    self.cc.intent_count(),
                    0,
                    "an intent outlived its transaction"
                );
                let _ = reply.send(std::mem::take(&mut self.versions));
                return false;
            }
        }
        true
    }

    /// An intent was released: waiting prepares try admission again (the
    /// engine's waiters wake on the same event).
    fn retry_waiting(&mut self) {
        for msg in std::mem::take(&mut self.waiting) {
            self.handle(msg);
        }
    }
}

/// One shard's part of a model transaction: (shard, keys read, deltas).
pub type Part = (usize, Vec<Key>, Vec<(Key, Value)>);

/// A transaction of the model: per shard, keys read and deltas written.
#[derive(Debug, Clone)]
pub struct TxnModel {
    pub ts: u64,
    pub parts: Vec<Part>,
}

/// What the coordinator decided and the reads it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub ts: u64,
    pub committed: bool,
    pub reads: Vec<(Key, Value, u64)>,
}

/// The coordinator: prepare everywhere; if every vote is yes, answer with
/// the commit messages for the writers still to deliver (one-way: the
/// caller delivers them, at once or late, as the mesh may), else abort the
/// yes voters.
pub fn coordinate(shards: &[Sender<Msg>], txn: &TxnModel) -> (Decided, Vec<(usize, Msg)>) {
    let mut votes = Vec::new();
    for (shard, reads, deltas) in &txn.parts {
        let (tx, rx) = channel();
        shards[*shard]
            .send(Msg::Prepare {
                ts: txn.ts,
                reads: reads.clone(),
                deltas: deltas.clone(),
                reply: tx,
            })
            .unwrap();
        votes.push((*shard, !deltas.is_empty(), rx));
    }
    let mut reads = Vec::new();
    let mut yes = Vec::new();
    let mut all_yes = true;
    for (shard, writes, rx) in votes {
        match rx.recv().unwrap() {
            Vote::Yes(r) => {
                reads.extend(r);
                if writes {
                    yes.push(shard);
                }
            }
            Vote::Conflict => all_yes = false,
        }
    }
    let mut commits = Vec::new();
    if all_yes {
        // (The decision is logged here, durably, before the answer.)
        commits = yes
            .iter()
            .map(|&s| (s, Msg::Commit { ts: txn.ts }))
            .collect();
    } else {
        for &s in &yes {
            shards[s].send(Msg::Abort { ts: txn.ts }).unwrap();
        }
    }
    let decided = Decided {
        ts: txn.ts,
        committed: all_yes,
        reads: if all_yes { reads } else { Vec::new() },
    };
    (decided, commits)
}

/// Delivers one-way messages now.
pub fn deliver(shards: &[Sender<Msg>], messages: Vec<(usize, Msg)>) {
    for (s, msg) in messages {
        shards[s].send(msg).unwrap();
    }
}

/// Stops the shards and returns every key's versions.
pub fn stop(shards: &[Sender<Msg>]) -> Versions {
    let mut all = BTreeMap::new();
    for s in shards {
        let (tx, rx) = channel();
        s.send(Msg::Stop { reply: tx }).unwrap();
        all.extend(rx.recv().unwrap());
    }
    all
}
