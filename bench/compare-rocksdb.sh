#!/usr/bin/env bash
# Runs RocksDB's db_bench and tessera-engine-bench back to back, both pinned
# to the same core, with db_bench's vocabulary, and prints the ratios.
# Usage: bench/compare-rocksdb.sh [num] [runs] [cpu]   (defaults 1000000 3 1)
set -euo pipefail
num=${1:-1000000}
runs=${2:-3}
cpu=${3:-1}
cd "$(dirname "$0")/.."
if ! command -v db_bench >/dev/null; then
  apt-get update -qq && apt-get install -y -qq rocksdb-tools >/dev/null
fi
cargo build --release -q -p tessera-bench
work=$(mktemp -d -p "${TMPDIR:-/var/tmp}")
trap 'rm -rf "$work"' EXIT
common="--num=$num --key_size=16 --value_size=100"
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Each engine starts from the same memory state: the previous run's files
# and page cache are dropped (as root; skipped otherwise). Without this,
# whichever engine ran second met the page cache the first one filled and
# paid for reclaiming it on every first touch of fresh memory (on this VM
# ~20% of a fill is the kernel zeroing first-touched pages).
settle() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; fi
}
for i in $(seq "$runs"); do
  rm -rf "$work"/rocks "$work"/tess
  settle
  taskset -c "$cpu" db_bench --benchmarks=fillrandom,readrandom,seekrandom,overwrite $common \
    --compression_type=none --seek_nexts=10 --cache_size=268435456 --threads=1 \
    --db="$work/rocks" 2>/dev/null | grep -E '^(fillrandom|readrandom|seekrandom|overwrite) ' >"$work/rocks.$i"
  rm -rf "$work"/rocks
  settle
  mkdir -p "$work/tess"
  taskset -c "$cpu" target/release/tessera-engine-bench --benchmarks=fillrandom,readrandom,seekrandom,overwrite \
    $common --seek_nexts=10 --cache_size=268435456 --db="$work/tess" 2>/dev/null \
    | grep -E '^(fillrandom|readrandom|seekrandom|overwrite) ' >"$work/tess.$i"
done
printf '%-12s %14s %14s %8s\n' benchmark "rocksdb ops/s" "tessera ops/s" ratio
for b in fillrandom readrandom seekrandom overwrite; do
  r=$(cat "$work"/rocks.* | awk -v b="$b" '$1==b {for (i=1;i<=NF;i++) if ($(i+1) ~ /^ops\/sec;?$/) print $i}' | median)
  t=$(cat "$work"/tess.* | awk -v b="$b" '$1==b {for (i=1;i<=NF;i++) if ($(i+1) ~ /^ops\/sec;?$/) print $i}' | median)
  printf '%-12s %14s %14s %8.2f\n' "$b" "$r" "$t" "$(awk -v t="$t" -v r="$r" 'BEGIN { print t / r }')"
done
echo "($runs runs each, medians; num=$num, 16-byte keys, 100-byte values, no compression, cpu $cpu)"
