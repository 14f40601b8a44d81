#!/usr/bin/env bash
# Online backup and restore, Tessera (1 shard) against Redis: the server on
# core 0, the tool on core 1, 1M keys of 100-byte values (KEYS), loaded
# into both by tessera-bench --preload.
# - backup: `tessera backup FILE` (a scan at one timestamp) against
#   `redis-cli --rdb FILE` (Redis's dump of a running server, sent over
#   its socket; with --repl-diskless-sync-delay 0, since by default Redis
#   waits 5 s for more replicas before it starts sending).
# - restore into an empty server: `tessera restore FILE` against
#   `redis-cli --pipe` of the same rows as SET commands (Redis's mass
#   insertion), first without durability (Tessera --wal-sync none, Redis
#   without AOF), then durable (--wal-sync always against
#   --appendonly yes --appendfsync always).
# Prints the median of RUNS runs (default 3) of each, and the ratios.
# Usage: bench/compare-backup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
keys=${KEYS:-1000000}
if ! command -v redis-server >/dev/null; then
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
cargo build --release -q -p tessera-bench -p tessera-net -p tessera-tools
bin=target/release
source bench/servers.sh
preload() { # target
  taskset -c 1 $bin/tessera-bench --target "$1" --workload set --keys "$keys" --value-size 100 \
    --preload --requests 1 --connections 50 --pipeline 16 --cpus 1 --quiet >/dev/null
}
seconds() { # command...: wall time of the command on core 1
  local t0 t1
  t0=$(date +%s.%N)
  taskset -c 1 "$@" >/dev/null 2>"$work/tool.err" || { cat "$work/tool.err" >&2; exit 1; }
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f\n", b - a }'
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "loading $keys keys into each server..." >&2
start_redis --repl-diskless-sync-delay 0
preload "redis://127.0.0.1:$port"
start_tessera none
preload "tessera://127.0.0.1:$tport"
# Let the load's flushes and compactions finish before timing.
sleep 5

declare -a rb tb
for r in $(seq "$runs"); do
  rb+=("$(seconds redis-cli -p "$port" --rdb "$work/redis.rdb")")
  tb+=("$(seconds $bin/tessera --addr "127.0.0.1:$tport" backup "$work/tessera.tbk")")
done
stop_redis
stop_tessera

# The same rows as SET commands in RESP, from Tessera's backup.
python3 - "$work/tessera.tbk" "$work/redis.resp" <<'EOF'
import struct, sys
data = open(sys.argv[1], "rb").read()
out = open(sys.argv[2], "wb")
at, rows = 28, 0
while True:
    klen, vlen = struct.unpack_from("<II", data, at)
    if klen == 0xFFFFFFFF:
        break
    key = data[at + 8 : at + 8 + klen]
    value = data[at + 8 + klen : at + 8 + klen + vlen]
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (klen, key, vlen, value))
    at += 8 + klen + vlen + 4
    rows += 1
print(rows, "rows", file=sys.stderr)
EOF

declare -a rr tr rrd trd
for r in $(seq "$runs"); do
  start_redis --appendonly no
  rr+=("$(seconds sh -c "redis-cli -p $port --pipe < $work/redis.resp")")
  stop_redis
  start_tessera none
  tr+=("$(seconds $bin/tessera --addr "127.0.0.1:$tport" restore "$work/tessera.tbk")")
  stop_tessera
  start_redis --appendonly yes --appendfsync always
  rrd+=("$(seconds sh -c "redis-cli -p $port --pipe < $work/redis.resp")")
  stop_redis
  start_tessera always
  trd+=("$(seconds $bin/tessera --addr "127.0.0.1:$tport" restore "$work/tessera.tbk")")
  stop_tessera
done

div() { awk -v a="$1" -v b="$2" -v f="$3" 'BEGIN { printf f "\n", a / b }'; }
row() { # name redis-times tessera-times
  local name=$1 r t
  r=$(median $2)
  t=$(median $3)
  printf '| %s | %.2f s (%s rows/s) | %.2f s (%s rows/s) | %.2f |\n' "$name" "$r" \
    "$(div "$keys" "$r" %d)" "$t" "$(div "$keys" "$t" %d)" "$(div "$r" "$t" %.6f)"
}
echo "| $keys keys, 100-byte values | Redis | Tessera | Tessera speed / Redis |"
echo "|---|---|---|---|"
row "backup of a running server" "${rb[*]}" "${tb[*]}"
row "restore into an empty server" "${rr[*]}" "${tr[*]}"
row "restore, durable" "${rrd[*]}" "${trd[*]}"
echo "runs: redis backup ${rb[*]} / tessera ${tb[*]}; restore ${rr[*]} / ${tr[*]}; durable ${rrd[*]} / ${trd[*]}" >&2
