//! `tessera-bench`: benchmarks for Tessera. Today it holds
//! `tessera-engine-bench`, an engine benchmark that speaks RocksDB
//! `db_bench`'s vocabulary so the two can run back to back
//! (`bench/compare-rocksdb.sh`). Nothing here is needed at run time.
