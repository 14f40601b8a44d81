#!/usr/bin/env bash
# Tessera (1 shard) against Redis with the same load generator: server on
# core 0, tessera-bench on core 1, 50 connections, 100-byte values, 1M keys
# preloaded. PING (the request path alone), GET and SET, each
# unpipelined and 16-deep; then durable SET (Redis
# appendfsync always vs Tessera --wal-sync always). Prints one table with
# medians of RUNS runs (default 3) and the ratios. With PLOTS=DIR, the last
# run of each scenario also draws DIR/<server>-<scenario>.svg (latency by
# percentile and throughput over time).
# The two servers run side by side and the runs alternate (Redis, then
# Tessera, per run), so a drift in the machine's speed lands on both: run
# all of Redis's scenarios and then all of Tessera's, Redis's own speed
# swung 20-40% between passes and the ratios with it. Before each run
# the script waits until Tessera's process has used under 2% of a core
# for a second, so its flushes and compactions do not run beside Redis's
# runs; the table reports the most CPU Tessera used during any Redis run.
# Tessera runs with a 256 MiB row cache (ROW_CACHE bytes; the default is 64
# MiB): enough for the rows of 1M keys (~230 bytes each), as Redis holds the
# whole data set in memory. ROW_CACHE=0 measures the tables' read path.
# With TLS=1 both servers speak only TLS (certificates from `tessera
# cert`; Redis on --tls-port) and the load generator too. With TTL_MS=N
# every measured write carries a TTL of N ms (Tessera's Put.ttl_ms,
# Redis's SET .. PX); the preload's do not.
# KEYS=N preloads N keys instead of 1M (KEYS=20000: every row of both
# servers in the CPU's caches, where Redis no longer waits on memory).
# Usage: bench/compare-redis.sh [seconds per run, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
runs=${RUNS:-3}
keys=${KEYS:-1000000}
row_cache=${ROW_CACHE:-268435456}
if ! command -v redis-server >/dev/null; then
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
cargo build --release -q -p tessera-bench -p tessera-net -p tessera-tools
bench=target/release/tessera-bench
source bench/servers.sh
client_args=()
if [ -n "${TTL_MS:-}" ]; then
  client_args+=(--ttl-ms "$TTL_MS")
fi
if [ "${TLS:-0}" = 1 ]; then
  tls_dir="$work/certs"
  target/release/tessera cert "$tls_dir" --host 127.0.0.1 >/dev/null
  client_args+=(--tls-ca "$tls_dir/ca.pem")
fi

# run NAME TARGET WORKLOAD PIPELINE RUN -> appends
# "name ops p99_ms saturated load_generator_cores"
run() {
  local name=$1 target=$2 workload=$3 pipeline=$4 plot=()
  local i=$5
  if [ -n "${PLOTS:-}" ] && [ "$i" = "$runs" ]; then
    mkdir -p "$PLOTS"
    plot=(--plot "$PLOTS/$name.svg")
  fi
  taskset -c 1 "$bench" --target "$target" --workload "$workload" --keys "$keys" \
    --connections 50 --pipeline "$pipeline" --duration "$secs" --warmup 1 --value-size 100 \
    --cpus 1 --json --quiet "${plot[@]}" "${client_args[@]}" >"$work/run.json"
  python3 - "$name" "$work/run.json" >>"$work/results" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
op = next(iter(r["operations"].values()))
print(sys.argv[1], round(r["ops_per_sec"]), op["p99_us"] / 1000.0, int(r["load_generator_saturated"]),
      round(r["load_generator_cpu_cores"], 2))
PY
}

# both SCENARIO WORKLOAD PIPELINE: RUNS runs on each server, alternating.
both() {
  local scenario=$1 workload=$2 pipeline=$3 before after
  for i in $(seq "$runs"); do
    tessera_idle
    before=$(tessera_ticks)
    run "redis-$scenario" "redis://127.0.0.1:$port" "$workload" "$pipeline" "$i"
    after=$(tessera_ticks)
    echo $((after - before)) >>"$work/beside"
    tessera_idle
    run "tessera-$scenario" "tessera://127.0.0.1:$tport" "$workload" "$pipeline" "$i"
  done
}

: >"$work/results"
: >"$work/beside"
start_redis --appendonly no
start_tessera none --row-cache-bytes "$row_cache"
preload "redis://127.0.0.1:$port"
preload "tessera://127.0.0.1:$tport"
# Reads first: run after the SET scenarios, Tessera's reads met the
# compaction of the ~2M writes those had just made (GET p16 fell from
# ~330k/s to ~240k/s, with a 8 ms p99), and each scenario is meant to
# measure the operation it names against the preloaded store.
# PING first: the request path alone (no data touched), the ceiling over
# the GET and SET rows at the same depth.
for p in 1 16; do both "ping-p$p" ping $p; done
for p in 1 16; do both "get-p$p" get $p; done
for p in 1 16; do both "set-p$p" set $p; done
stop_redis
stop_tessera
start_redis --appendonly yes --appendfsync always
start_tessera always --row-cache-bytes "$row_cache"
for p in 1 16; do both "durable-set-p$p" set $p; done
stop_redis
stop_tessera

tls_note=""
[ -n "$tls_dir" ] && tls_note="; TLS"
[ -n "${TTL_MS:-}" ] && tls_note="$tls_note; writes with a TTL of $TTL_MS ms"
python3 - "$work/results" "$runs" "$secs" "$tls_note" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, ops, p99, sat, cores = line.split()
    rows.setdefault(name, []).append((float(ops), float(p99), int(sat), float(cores)))
def med(name):
    v = rows[name]
    return (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v),
            max(r[2] for r in v), statistics.median(r[3] for r in v))
print(f"{'scenario':<16} {'redis ops/s':>12} {'p99 ms':>7} {'load':>5} "
      f"{'tessera ops/s':>14} {'p99 ms':>7} {'load':>5} {'ratio':>6}")
for s in ["ping-p1", "get-p1", "set-p1", "ping-p16", "get-p16", "set-p16", "durable-set-p1", "durable-set-p16"]:
    ro, rp, rs, rc = med("redis-" + s)
    to, tp, ts, tc = med("tessera-" + s)
    flag = "  (load generator saturated)" if rs or ts else ""
    print(f"{s:<16} {ro:>12,.0f} {rp:>7.2f} {rc:>5.2f} {to:>14,.0f} {tp:>7.2f} {tc:>5.2f} {to / ro:>6.2f}{flag}")
print(f"(medians of {sys.argv[2]} runs of {sys.argv[3]} s, the servers alternating; 50 connections, 100-byte values, "
      f"server on cpu 0, load on cpu 1{sys.argv[4]}; load: the load generator's CPU, in cores)")
PY
hz=$(getconf CLK_TCK)
most=$(sort -n "$work/beside" | tail -1)
echo "tessera-server's CPU during any one Redis run: at most $((most * 1000 / hz)) ms"
