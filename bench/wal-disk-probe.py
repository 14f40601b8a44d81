#!/usr/bin/env python3
"""What one WAL group commit costs on this disk, both ways Tessera could do it.

Zero-fills and syncs a 64 MiB file (as Tessera prepares WAL segments), then
writes N blocks of SIZE bytes with O_DIRECT, either each followed by
fdatasync or through an O_DSYNC descriptor (what `--wal-sync always` does),
and prints the median and 90th percentile of each step.

Usage: bench/wal-disk-probe.py [--dsync] [N=2000] [SIZE=8192] [DIR=/var/tmp]
"""
import mmap
import os
import statistics
import sys
import time

args = [a for a in sys.argv[1:] if a != "--dsync"]
dsync = "--dsync" in sys.argv[1:]
n = int(args[0]) if len(args) > 0 else 2000
size = int(args[1]) if len(args) > 1 else 8192
path = os.path.join(args[2] if len(args) > 2 else "/var/tmp", "tessera-wal-probe.dat")
span = 64 << 20

fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
zeros = mmap.mmap(-1, 1 << 20)
for off in range(0, span, 1 << 20):
    os.pwrite(fd, zeros, off)
os.fsync(fd)
os.close(fd)

fd = os.open(path, os.O_RDWR | os.O_DIRECT | (os.O_DSYNC if dsync else 0))
block = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT needs
block.write(b"x" * size)
writes, syncs = [], []
off = 0
try:
    for _ in range(n):
        t0 = time.perf_counter()
        os.pwrite(fd, block, off)
        t1 = time.perf_counter()
        if not dsync:
            os.fdatasync(fd)
        t2 = time.perf_counter()
        writes.append(t1 - t0)
        syncs.append(t2 - t1)
        off = (off + size) % (span - size)
finally:
    os.close(fd)
    os.unlink(path)


def us(xs, q):
    return sorted(xs)[int(q * (len(xs) - 1))] * 1e6


mode = "O_DIRECT|O_DSYNC write" if dsync else "O_DIRECT write + fdatasync"
print(f"{mode}, {n} x {size} bytes")
print(f"  write      median {statistics.median(writes) * 1e6:6.0f} us  p90 {us(writes, 0.9):6.0f} us")
if not dsync:
    print(f"  fdatasync  median {statistics.median(syncs) * 1e6:6.0f} us  p90 {us(syncs, 0.9):6.0f} us")
total = [w + s for w, s in zip(writes, syncs)]
print(f"  total      median {statistics.median(total) * 1e6:6.0f} us  p90 {us(total, 0.9):6.0f} us")
