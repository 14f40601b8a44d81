#!/usr/bin/env bash
# Runs RocksDB's db_bench and tessera-engine-bench back to back, both pinned
# to the same core, with db_bench's vocabulary, and prints the ratios.
# Usage: bench/compare-rocksdb.sh [num] [runs] [cpu]   (defaults 1000000 3 1)
set -euo pipefail
num=${1:-1000000}
runs=${2:-3}
cpu=${3:-1}
cd "$(dirname "$0")/.."
. bench/db-bench.sh
common="--num=$num --key_size=16 --value_size=100"
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
  r=$(cat "$work"/rocks.* | awk -v b="$b" '$1==b' | ops | median)
  t=$(cat "$work"/tess.* | awk -v b="$b" '$1==b' | ops | median)
  printf '%-12s %14s %14s %8.2f\n' "$b" "$r" "$t" "$(awk -v t="$t" -v r="$r" 'BEGIN { print t / r }')"
done
echo "($runs runs each, medians; num=$num, 16-byte keys, 100-byte values, no compression, cpu $cpu)"
