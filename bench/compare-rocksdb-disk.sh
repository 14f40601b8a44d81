#!/usr/bin/env bash
# Point reads from disk: RocksDB's db_bench and tessera-engine-bench each
# fill a database ~10x their 256 MiB block cache once, then read it at
# random with one reader and with 32 at once, both with direct I/O (no page
# cache: the same memory budget), both pinned to the same core, runs
# alternating. Prints the medians and ratios.
# Usage: bench/compare-rocksdb-disk.sh [num] [runs] [cpu] [reads]
#   (defaults 20000000 3 1 200000; the 32-reader runs read 4x as many)
set -euo pipefail
num=${1:-20000000}
runs=${2:-3}
cpu=${3:-1}
reads=${4:-200000}
cd "$(dirname "$0")/.."
. bench/db-bench.sh
common="--num=$num --key_size=16 --value_size=100 --cache_size=268435456"
rocks="$common --compression_type=none --use_direct_reads=true --use_direct_io_for_flush_and_compaction=true --db=$work/rocks"
tess="$common --db=$work/tess"
tessera() { taskset -c "$cpu" target/release/tessera-engine-bench "$@" $tess 2>/dev/null; }
rocksdb() { taskset -c "$cpu" db_bench "$@" $rocks 2>/dev/null; }

settle
tessera --benchmarks=fillrandom | grep '^fillrandom' | ops >"$work/fill.tess"
settle
rocksdb --benchmarks=fillrandom --threads=1 | grep '^fillrandom' | ops >"$work/fill.rocks"
echo "filled $num keys: tessera $(du -sh "$work/tess" | cut -f1) at $(cat "$work/fill.tess") ops/s," \
  "rocksdb $(du -sh "$work/rocks" | cut -f1) at $(cat "$work/fill.rocks") ops/s"
# Both settle what the fill left to compaction, so no run pays for it.
tessera --benchmarks=compact | grep '^compact' | awk '{print $3}' >"$work/compact.tess"
rocksdb --benchmarks=compact --use_existing_db=1 | grep '^compact' | awk '{print $3 / 1e6}' >"$work/compact.rocks"
echo "compacted: tessera $(du -sh "$work/tess" | cut -f1) in $(cat "$work/compact.tess") s," \
  "rocksdb $(du -sh "$work/rocks" | cut -f1) in $(cat "$work/compact.rocks") s"
for i in $(seq "$runs"); do
  for t in 1 32; do
    n=$((t == 1 ? reads : 4 * reads))
    settle
    tessera --benchmarks=readrandom --reads="$n" --threads="$t" | grep '^readrandom' | ops >>"$work/tess.$t"
    settle
    rocksdb --benchmarks=readrandom --use_existing_db=1 --reads=$((n / t)) --threads="$t" \
      | grep '^readrandom' | ops >>"$work/rocks.$t"
  done
done
printf '%-22s %14s %14s %8s\n' benchmark "rocksdb ops/s" "tessera ops/s" ratio
for t in 1 32; do
  r=$(median <"$work/rocks.$t")
  s=$(median <"$work/tess.$t")
  printf '%-22s %14s %14s %8.2f\n' "readrandom, $t reader(s)" "$r" "$s" "$(awk -v s="$s" -v r="$r" 'BEGIN { print s / r }')"
done
echo "($runs runs each, medians; num=$num, 16-byte keys, 100-byte values, no compression,"
echo " 256 MiB block cache, direct reads, cpu $cpu; RocksDB's readers are threads, Tessera's tasks)"
