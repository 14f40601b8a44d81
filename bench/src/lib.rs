//! `tessera-bench`: Tessera's benchmarks. `tessera-bench` is the load
//! generator (YCSB-style workloads against Tessera's native protocol or
//! Redis, closed or open loop, HdrHistogram percentiles, SVG plots);
//! `tessera-engine-bench` benchmarks the engine with db_bench's vocabulary.
//! Nothing here is needed at run time.

pub mod driver;
pub mod report;
pub mod runner;
pub mod workload;
