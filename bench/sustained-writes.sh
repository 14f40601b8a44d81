#!/usr/bin/env bash
# Sustained writes: 16-deep SETs of 100-byte values over 1M preloaded keys
# for SECONDS (default 120), against Redis (no persistence) and then
# Tessera (1 shard, --wal-sync none), server on core 0 and tessera-bench
# on core 1, 50 connections. Five-second runs (bench/compare-redis.sh)
# end before a write-heavy load has to pay for its compactions; this one
# does not: Tessera's level 0 is sampled every 5 s (its slowdown starts at
# 14 tables, writes stop at 36), and the table gives the rates, latencies
# and the ratio to Redis, plus the slowest and fastest second.
# KEYS=N preloads N keys instead.
# Usage: bench/sustained-writes.sh [seconds, default 120]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-120}
keys=${KEYS:-1000000}
if ! command -v redis-server >/dev/null; then
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
cargo build --release -q -p tessera-bench -p tessera-net -p tessera-tools
bench=target/release/tessera-bench
client_args=()
source bench/servers.sh

# run NAME TARGET: SECONDS of 16-deep SETs; the report in $work/NAME.json.
run() {
  taskset -c 1 "$bench" --target "$2" --workload set --keys "$keys" --connections 50 \
    --pipeline 16 --duration "$secs" --warmup 0 --value-size 100 --cpus 1 --json --quiet \
    >"$work/$1.json"
}

start_redis --appendonly no
preload "redis://127.0.0.1:$port"
run redis "redis://127.0.0.1:$port"
stop_redis

start_tessera none --row-cache-bytes 268435456
preload "tessera://127.0.0.1:$tport"
tessera_idle
: >"$work/level0"
(
  while sleep 5; do
    target/release/tessera --addr "127.0.0.1:$tport" stats 2>/dev/null |
      awk '/level_tables\{level="0"\}/ {print $4}' >>"$work/level0" || true
  done
) &
sampler=$!
run tessera "tessera://127.0.0.1:$tport"
kill "$sampler" 2>/dev/null || true
target/release/tessera --addr "127.0.0.1:$tport" stats >"$work/stats"
stop_tessera

python3 - "$work" "$secs" <<'PY'
import json, sys
work, secs = sys.argv[1], sys.argv[2]
def load(name):
    r = json.load(open(f"{work}/{name}.json"))
    op = next(iter(r["operations"].values()))
    per_sec = [t["ops_per_sec"] for t in r["timeline"]] or [r["ops_per_sec"]]
    return r["ops_per_sec"], op["p99_us"] / 1000, op["max_us"] / 1000, min(per_sec), max(per_sec)
stat = {}
for line in open(f"{work}/stats"):
    parts = line.split()
    if len(parts) == 4:
        stat[parts[2]] = float(parts[3])
level0 = [int(x) for x in open(f"{work}/level0").read().split()]
print(f"{secs} s of 16-deep SETs, 1M keys, 100-byte values")
print(f"{'server':<8} {'ops/s':>10} {'p99 ms':>7} {'max ms':>8} {'slowest s':>10} {'fastest s':>10}")
rows = {name: load(name) for name in ["redis", "tessera"]}
for name, (ops, p99, mx, lo, hi) in rows.items():
    print(f"{name:<8} {ops:>10,.0f} {p99:>7.2f} {mx:>8.1f} {lo:>10,.0f} {hi:>10,.0f}")
print(f"ratio    {rows['tessera'][0] / rows['redis'][0]:>10.2f}")
print(f"tessera level 0: {min(level0, default=0)}-{max(level0, default=0)} tables "
      f"(sampled every 5 s); flushes stopped for level 0 {stat.get('l0_stops_total', 0):.0f} times, "
      f"write stalls {stat.get('write_stalls_total', 0):.0f}, compactions {stat.get('compactions_total', 0):.0f}")
PY
