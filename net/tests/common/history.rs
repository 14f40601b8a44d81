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

/// A single-key operation outside transactions: a put that returned its
/// commit timestamp, or a get that returned a value. Values written to a
/// key are unique, so a read names the write it saw.
#[derive(Debug, Clone)]
pub enum RegisterOp {
    Put {
        key: Bytes,
        value: Bytes,
        ts: u64,
        started: Instant,
        ended: Instant,
    },
    Get {
        key: Bytes,
        value: Option<Bytes>,
        started: Instant,
        ended: Instant,
    },
}

/// Checks that single-key puts and gets are linearizable, key by key.
/// Puts are ordered by their timestamps; that order must follow real time,
/// and every get must fit in it: it saw a put that began before the get
/// ended (no read from the future), no later put had ended before the get
/// began (no stale read), and gets that follow each other in real time see
/// puts in timestamp order (no going back). For a register with unique
/// values and a known write order these conditions are also sufficient.
pub fn check_registers(ops: &[RegisterOp]) -> Result<usize, String> {
    let mut keys: HashMap<&Bytes, (Vec<&RegisterOp>, Vec<&RegisterOp>)> = HashMap::new();
    for op in ops {
        match op {
            RegisterOp::Put { key, .. } => keys.entry(key).or_default().0.push(op),
            RegisterOp::Get { key, .. } => keys.entry(key).or_default().1.push(op),
        }
    }
    for (key, (puts, gets)) in keys {
        let mut by_value: HashMap<&Bytes, (u64, Instant)> = HashMap::new();
        let mut ends: Vec<(Instant, u64)> = Vec::new();
        for p in &puts {
            if let RegisterOp::Put {
                value,
                ts,
                started,
                ended,
                ..
            } = p
            {
                by_value.insert(value, (*ts, *started));
                ends.push((*ended, *ts));
            }
        }
        ends.sort();
        let mut prefix_max = Vec::with_capacity(ends.len());
        let mut best = 0;
        for &(_, ts) in &ends {
            best = best.max(ts);
            prefix_max.push(best);
        }
        let newest_ended_before = |t: Instant| {
            let n = ends.partition_point(|&(end, _)| end < t);
            if n == 0 {
                0
            } else {
                prefix_max[n - 1]
            }
        };
        for p in &puts {
            if let RegisterOp::Put { ts, started, .. } = p {
                let before = newest_ended_before(*started);
                if before >= *ts {
                    return Err(format!(
                        "{key:?}: a put at {ts} began after a put at {before} had ended"
                    ));
                }
            }
        }
        let mut seen: Vec<(Instant, Instant, u64)> = Vec::new();
        for g in &gets {
            let RegisterOp::Get {
                value,
                started,
                ended,
                ..
            } = g
            else {
                continue;
            };
            let saw = match value {
                None => 0,
                Some(v) => match by_value.get(v) {
                    None => return Err(format!("{key:?}: a get returned {v:?}, never put")),
                    Some(&(ts, put_started)) => {
                        if put_started >= *ended {
                            return Err(format!(
                                "{key:?}: a get saw the put at {ts} before it began"
                            ));
                        }
                        ts
                    }
                },
            };
            let newest = newest_ended_before(*started);
            if newest > saw {
                return Err(format!(
                    "{key:?}: stale get: saw the put at {saw} after the put at {newest} had ended"
                ));
            }
            seen.push((*ended, *started, saw));
        }
        // Gets in real-time order never go back in timestamp order.
        seen.sort();
        let mut best = 0u64;
        let mut maxes = Vec::with_capacity(seen.len());
        for &(_, _, saw) in &seen {
            best = best.max(saw);
            maxes.push(best);
        }
        for &(_, started, saw) in &seen {
            let n = seen.partition_point(|&(end, _, _)| end < started);
            if n > 0 && maxes[n - 1] > saw {
                return Err(format!(
                    "{key:?}: a get saw the put at {saw} after an earlier get had seen the put at {}",
                    maxes[n - 1]
                ));
            }
        }
    }
    Ok(ops.len())
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

    // Registers: a stale get, a get from the future, a get going back.
    let put = |v: &str, ts, s: Instant, e: Instant| RegisterOp::Put {
        key: k("r"),
        value: k(v),
        ts,
        started: s,
        ended: e,
    };
    let get = |v: Option<&str>, s: Instant, e: Instant| RegisterOp::Get {
        key: k("r"),
        value: v.map(k),
        started: s,
        ended: e,
    };
    let t = |ms| now + std::time::Duration::from_millis(ms);
    let stale = [
        put("a", 10, t(0), t(1)),
        put("b", 20, t(2), t(3)),
        get(Some("a"), t(4), t(5)),
    ];
    assert!(check_registers(&stale).unwrap_err().contains("stale"));
    let future = [get(Some("a"), t(0), t(1)), put("a", 10, t(2), t(3))];
    assert!(check_registers(&future)
        .unwrap_err()
        .contains("before it began"));
    let back = [
        put("a", 10, t(0), t(1)),
        put("b", 20, t(2), t(10)),
        get(Some("b"), t(3), t(4)),
        get(Some("a"), t(5), t(6)),
    ];
    assert!(check_registers(&back).unwrap_err().contains("earlier get"));
    let fine = [
        put("a", 10, t(0), t(1)),
        put("b", 20, t(2), t(10)),
        get(Some("a"), t(3), t(4)),
        get(Some("b"), t(5), t(6)),
    ];
    check_registers(&fine).unwrap();
}
