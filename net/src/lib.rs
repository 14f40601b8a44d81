//! `tessera-net`: the shard runtime and the `tessera-server` binary. It
//! owns executor placement and startup ([`runtime`]), the slot map
//! ([`slots`]), routing and the cross-shard mesh ([`shard`]), the TCP
//! server and `/metrics` ([`server`], [`metrics`]), TLS ([`tls`]) and configuration
//! ([`config`]). It contains no storage format code: every byte on disk
//! belongs to `tessera-engine`.

pub mod config;
pub mod machine;
pub mod metrics;
pub mod runtime;
pub mod server;
pub mod shard;
pub mod slots;
pub mod tls;
pub mod txn;
