//! A history checker for transactions. Clients record every committed
//! transaction: its timestamp, the versions it read and the keys it wrote,
//! and when it started and ended on the client's clock. The checker then
//! builds the dependency graph (write-read, write-write and read-write
//! edges, as in Adya's serialization graph) and looks for a cycle: a
//! history is serializable iff there is none. It also checks real-time
//! order (a transaction that ended before another began has the smaller
//! timestamp: strict serializability, which makes single-key operations
//! linearizable), and that every read saw a version some committed
//! transaction wrote.
//!
//! Why not an existing checker: stateright's linearizability tester checks
//! a sequential specification operation by operation, which here would mean
//! modelling multi-key transactions as one register each; Elle is Clojure.
//! The graph below is small and exact because every read reports the
//! version (commit timestamp) it saw.

use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Committed {
    pub ts: u64,
    /// (key, version read; 0 = never written).
    pub reads: Vec<(Bytes, u64)>,
    pub writes: Vec<Bytes>,
    pub started: Instant,
    pub ended: Instant,
}

/// Checks the history; `Err` says what is wrong.
pub fn check(history: &[Committed]) -> Result<CheckReport, String> {
    let n = history.len();
    let mut by_ts: HashMap<u64, usize> = HashMap::new();
    for (i, t) in history.iter().enumerate() {
        if by_ts.insert(t.ts, i).is_some() {
            return Err(format!(
                "two committed transactions share timestamp {}",
                t.ts
            ));
        }
    }
    // Version order of each key: its writers in timestamp order.
    let mut writers: HashMap<&Bytes, BTreeMap<u64, usize>> = HashMap::new();
    for (i, t) in history.iter().enumerate() {
        for k in &t.writes {
            writers.entry(k).or_default().insert(t.ts, i);
        }
    }
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut edge_count = 0;
    let mut add = |from: usize, to: usize, edges: &mut Vec<Vec<usize>>| {
        if from != to {
            edges[from].push(to);
            edge_count += 1;
        }
    };
    for (i, t) in history.iter().enumerate() {
        for (key, version) in &t.reads {
            let versions = writers.get(key);
            if *version != 0 {
                // wr: the writer of the version read precedes the reader.
                match versions.and_then(|v| v.get(version)) {
                    Some(&w) => add(w, i, &mut edges),
                    None => {
                        return Err(format!(
                            "transaction {} read version {version} of {key:?}, which no committed transaction wrote",
                            t.ts
                        ))
                    }
                }
            }
            // rw: the reader precedes the writer of the next version.
            if let Some((_, &next)) = versions.and_then(|v| v.range(version + 1..).next()) {
                add(i, next, &mut edges);
            }
        }
    }
    for versions in writers.values() {
        // ww: consecutive versions.
        let order: Vec<usize> = versions.values().copied().collect();
        for pair in order.windows(2) {
            add(pair[0], pair[1], &mut edges);
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        let names: Vec<u64> = cycle.iter().map(|&i| history[i].ts).collect();
        return Err(format!("dependency cycle through transactions {names:?}"));
    }
    // Real time: sort by end; for each transaction, every one that ended
    // before it started must have a smaller timestamp.
    let mut ends: Vec<(Instant, u64)> = history.iter().map(|t| (t.ended, t.ts)).collect();
    ends.sort();
    let mut prefix_max = Vec::with_capacity(n);
    let mut best = (0u64, 0usize);
    for (j, &(_, ts)) in ends.iter().enumerate() {
        if ts >= best.0 {
            best = (ts, j);
        }
        prefix_max.push(best.0);
    }
    for t in history {
        let before = ends.partition_point(|&(end, _)| end < t.started);
        if before > 0 && prefix_max[before - 1] >= t.ts {
            return Err(format!(
                "transaction {} began after one with timestamp {} had ended (real-time order violated)",
                t.ts,
                prefix_max[before - 1]
            ));
        }
    }
    Ok(CheckReport {
        transactions: n,
        edges: edge_count,
    })
}

#[derive(Debug)]
pub struct CheckReport {
    pub transactions: usize,
    pub edges: usize,
}

/// A cycle in the graph, if any (iterative DFS with colours).
fn find_cycle(edges: &[Vec<usize>]) -> Option<Vec<usize>> {
    let n = edges.len();
    let mut colour = vec![0u8; n]; // 0 new, 1 on stack, 2 done
    let mut parent = vec![usize::MAX; n];
    for root in 0..n {
        if colour[root] != 0 {
            continue;
        }
        let mut stack = vec![(root, 0usize)];
        colour[root] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&to) = edges[node].get(*next) {
                *next += 1;
                match colour[to] {
                    0 => {
                        colour[to] = 1;
                        parent[to] = node;
                        stack.push((to, 0));
                    }
                    1 => {
                        let mut cycle = vec![to];
                        let mut at = node;
                        while at != to {
                            cycle.push(at);
                            at = parent[at];
                        }
                        cycle.reverse();
                        return Some(cycle);
                    }
                    _ => {}
                }
            } else {
                colour[node] = 2;
                stack.pop();
            }
        }
    }
    None
}

/// The checker must catch what it claims to catch.
pub fn self_test() {
    let now = Instant::now();
    let later = now + std::time::Duration::from_millis(1);
    let k = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    let t = |ts, reads: Vec<(Bytes, u64)>, writes: Vec<Bytes>| Committed {
        ts,
        reads,
        writes,
        started: now,
        ended: now,
    };
    // Write skew: each read the other's key at version 0 and wrote its own.
    let skew = vec![
        t(10, vec![(k("x"), 0), (k("y"), 0)], vec![k("x")]),
        t(20, vec![(k("x"), 0), (k("y"), 0)], vec![k("y")]),
    ];
    // T20 read x before T10's write? It read version 0 while T10 (ts 10)
    // wrote x: rw T20→T10, and T10 read y@0 while T20 wrote y: rw T10→T20.
    assert!(check(&skew).unwrap_err().contains("cycle"));
    // A read of a version nobody wrote.
    let phantom = vec![t(10, vec![(k("x"), 5)], vec![])];
    assert!(check(&phantom).unwrap_err().contains("no committed"));
    // Real time: the later transaction got the smaller timestamp.
    let mut a = t(20, vec![], vec![k("x")]);
    a.ended = now;
    let mut b = t(10, vec![], vec![k("z")]);
    b.started = later;
    b.ended = later;
    assert!(check(&[a, b]).unwrap_err().contains("real-time"));
    // A serial history passes.
    let ok = vec![
        t(10, vec![(k("x"), 0)], vec![k("x")]),
        t(20, vec![(k("x"), 10)], vec![k("x")]),
    ];
    check(&ok).unwrap();
}
