# Sourced by bench/compare-rocksdb.sh and bench/compare-rocksdb-disk.sh
# (from the repository's root): db_bench installed if missing,
# tessera-engine-bench built, a work directory removed on exit, and the
# helpers both use.
if ! command -v db_bench >/dev/null; then
  apt-get update -qq && apt-get install -y -qq rocksdb-tools >/dev/null
fi
cargo build --release -q -p tessera-bench
work=$(mktemp -d -p "${TMPDIR:-/var/tmp}")
trap 'rm -rf "$work"' EXIT
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# The ops/s figure of a db_bench-style line on standard input.
ops() { awk '{for (i=1;i<=NF;i++) if ($(i+1) ~ /^ops\/sec;?$/) print $i}'; }
# Each engine starts from the same memory state: the previous run's files
# and page cache are dropped (as root; skipped otherwise). Without this,
# whichever engine ran second met the page cache the first one filled and
# paid for reclaiming it on every first touch of fresh memory (on this VM
# ~20% of a fill is the kernel zeroing first-touched pages).
settle() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches; fi
}
