#!/usr/bin/env bash
# Cross-shard transactions against single-key writes on the same server,
# alternating:
# tessera-server with 2 shards on cores 0-1 (`--wal-sync always`), the load
# generator floating; 2-key transactions whose keys sit on two shards
# (workload `txn`) and single-key writes (workload `set`), 100-byte values,
# 64 connections, PIPELINE-deep pipelines (default 4), THREADS load
# generator threads (default 2, one per core it floats over). Prints medians
# of RUNS runs (default 3) and the ratio txn/s : write/s.
#
# Runs last 20 s by default: at this load a shard flushes every ~4.5 s and
# merges its 4 level-0 tables into level 1 every ~18 s, a 1-2 s burst of
# CPU on that shard. A run shorter than that cycle measures where the
# bursts happened to fall: with 5-s runs the first one fell in the second
# round's transaction run, the lowest round (or tied for it) of each of
# seven passes, and transactions (which wait on both shards) lose more to
# a burst than writes do.
# Usage: bench/compare-txn.sh [seconds per run, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
runs=${RUNS:-3}
keys=${KEYS:-100000}
sync=${SYNC:-always}
cargo build --release -q -p tessera-bench -p tessera-net
bench=target/release/tessera-bench
work=$(mktemp -d -p "${TMPDIR:-/var/tmp}")
# Below Linux's ephemeral range (32768-60999): the load generator's own
# connections can hold any port in it.
port=$((20000 + RANDOM % 12000))
cleanup() {
  pkill -TERM -f "tessera-server --data $work" 2>/dev/null || true
  sleep 1
  rm -rf "$work"
}
trap cleanup EXIT
target/release/tessera-server --data "$work/tessera" --listen "127.0.0.1:$port" \
  --shards 2 --cpus 0,1 --metrics off --wal-sync "$sync" >"$work/out" 2>"$work/err" &
for _ in $(seq 100); do grep -q ready "$work/out" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$work/out" || { cat "$work/err" >&2; exit 1; }

# The workloads alternate, so both meet the same amount of data and the
# same background work (flushes, compactions): run back to back, the later
# one ran against every byte the earlier one wrote.
for _ in $(seq "$runs"); do
  for workload in set txn; do
    "$bench" --target "tessera://127.0.0.1:$port" --workload "$workload" --keys "$keys" \
      --connections 64 --pipeline "${PIPELINE:-4}" --threads "${THREADS:-2}" --duration "$secs" --warmup 1 --value-size 100 \
      --json --quiet >"$work/run.json"
    python3 - "$workload" "$work/run.json" >>"$work/results" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
op = next(iter(r["operations"].values()))
print(sys.argv[1], round(r["ops_per_sec"]), op["p99_us"] / 1000.0, sum(r.get("errors", {}).values()) if isinstance(r.get("errors"), dict) else 0)
PY
  done
done
python3 - "$work/results" "$sync" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {}
for name in ("set", "txn"):
    runs = [r for r in rows if r[0] == name]
    med[name] = (statistics.median(float(r[1]) for r in runs),
                 statistics.median(float(r[2]) for r in runs),
                 sum(int(r[3]) for r in runs))
print(f"wal-sync {sys.argv[2]}, 2 shards, medians of {len(rows)//2} runs")
print(f"{'workload':<28}{'ops/s':>10}{'p99 ms':>10}{'errors':>8}")
for name, label in (("set", "single-key write"), ("txn", "2-key cross-shard txn")):
    ops, p99, errors = med[name]
    print(f"{label:<28}{ops:>10.0f}{p99:>10.2f}{errors:>8}")
# Each round's own ratio (its write run, then its transaction run): on a
# noisy machine the spread says how far to trust the median.
sets = [float(r[1]) for r in rows if r[0] == "set"]
txns = [float(r[1]) for r in rows if r[0] == "txn"]
print("per round: " + " ".join(f"{t / w:.2f}" for w, t in zip(sets, txns)))
print(f"txn/s : write/s = {med['txn'][0] / med['set'][0]:.2f} (target >= 0.5)")
print(f"txn/s : write/s per shard = {2 * med['txn'][0] / med['set'][0]:.2f}")
PY
