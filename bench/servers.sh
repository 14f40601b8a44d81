# Sourced by bench/compare-redis.sh and bench/compare-backup.sh: a work
# directory removed on exit, ports, and Redis and a 1-shard Tessera started
# and stopped on core 0. Tessera's binary is target/release/tessera-server.
work=$(mktemp -d -p "${TMPDIR:-/var/tmp}")
# Below Linux's ephemeral range (32768-60999): a load generator's own
# connections can hold any port in it.
port=$((20000 + RANDOM % 12000))
tport=$((port + 10))
cleanup() {
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  pkill -TERM -f "tessera-server --data $work" 2>/dev/null || true
  sleep 1
  rm -rf "$work"
}
trap cleanup EXIT

start_redis() { # extra args...
  rm -rf "$work/redis" && mkdir -p "$work/redis"
  taskset -c 0 redis-server --port "$port" --dir "$work/redis" --save "" "$@" >/dev/null 2>&1 &
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "redis-server did not start" >&2; exit 1
}
stop_redis() { redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; sleep 0.5; }
start_tessera() { # sync mode, extra args...: sets tpid
  local sync=$1
  shift
  rm -rf "$work/tessera"
  taskset -c 0 target/release/tessera-server --data "$work/tessera" --listen "127.0.0.1:$tport" \
    --shards 1 --cpus 0 --metrics off --wal-sync "$sync" "$@" >"$work/tessera.out" 2>"$work/tessera.err" &
  tpid=$!
  for _ in $(seq 100); do grep -q ready "$work/tessera.out" 2>/dev/null && return; sleep 0.1; done
  cat "$work/tessera.err" >&2; exit 1
}
stop_tessera() { pkill -TERM -f "tessera-server --data $work" || true; sleep 1; }
