# Sourced by bench/compare-redis.sh and bench/compare-backup.sh: a work
# directory removed on exit, ports, and Redis and a 1-shard Tessera started
# and stopped on core 0. Tessera's binary is target/release/tessera-server.
# With tls_dir set (a directory `tessera cert` wrote), both servers speak
# only TLS, with its certificates.
work=$(mktemp -d -p "${TMPDIR:-/var/tmp}")
# Below Linux's ephemeral range (32768-60999): a load generator's own
# connections can hold any port in it.
port=$((20000 + RANDOM % 12000))
tport=$((port + 10))
tls_dir=${tls_dir:-}
redis_cli() {
  if [ -n "$tls_dir" ]; then
    redis-cli -p "$port" --tls --cacert "$tls_dir/ca.pem" "$@"
  else
    redis-cli -p "$port" "$@"
  fi
}
cleanup() {
  redis_cli shutdown nosave >/dev/null 2>&1 || true
  pkill -TERM -f "tessera-server --data $work" 2>/dev/null || true
  sleep 1
  rm -rf "$work"
}
trap cleanup EXIT

start_redis() { # extra args...
  rm -rf "$work/redis" && mkdir -p "$work/redis"
  local listen=(--port "$port")
  if [ -n "$tls_dir" ]; then
    listen=(--port 0 --tls-port "$port" --tls-cert-file "$tls_dir/server.pem"
      --tls-key-file "$tls_dir/server.key" --tls-ca-cert-file "$tls_dir/ca.pem" --tls-auth-clients no)
  fi
  taskset -c 0 redis-server "${listen[@]}" --dir "$work/redis" --save "" "$@" >/dev/null 2>&1 &
  for _ in $(seq 50); do redis_cli ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "redis-server did not start" >&2; exit 1
}
stop_redis() { redis_cli shutdown nosave >/dev/null 2>&1 || true; sleep 0.5; }
start_tessera() { # sync mode, extra args...: sets tpid
  local sync=$1
  shift
  if [ -n "$tls_dir" ]; then
    set -- "$@" --tls-cert "$tls_dir/server.pem" --tls-key "$tls_dir/server.key"
  fi
  rm -rf "$work/tessera"
  taskset -c 0 target/release/tessera-server --data "$work/tessera" --listen "127.0.0.1:$tport" \
    --shards 1 --cpus 0 --metrics off --wal-sync "$sync" "$@" >"$work/tessera.out" 2>"$work/tessera.err" &
  tpid=$!
  for _ in $(seq 100); do grep -q ready "$work/tessera.out" 2>/dev/null && return; sleep 0.1; done
  cat "$work/tessera.err" >&2; exit 1
}
stop_tessera() { pkill -TERM -f "tessera-server --data $work" || true; sleep 1; }
# CPU time (clock ticks) Tessera's process has used so far.
tessera_ticks() { awk '{print $14 + $15}' "/proc/$tpid/stat"; }
# Waits (up to 60 s) until Tessera uses under 2% of a core over a second.
tessera_idle() {
  local hz before after
  hz=$(getconf CLK_TCK)
  for _ in $(seq 60); do
    before=$(tessera_ticks); sleep 1; after=$(tessera_ticks)
    [ $((after - before)) -le $((hz / 50)) ] && return
  done
  echo "note: tessera-server still busy after 60 s" >&2
}
# preload TARGET: writes each of $keys keys once (needs $bench, and
# client_args, possibly empty).
preload() {
  taskset -c 1 "$bench" --target "$1" --workload set --keys "$keys" --preload --requests 1 \
    --connections 50 --pipeline 16 --cpus 1 --quiet "${client_args[@]}" >/dev/null
}
