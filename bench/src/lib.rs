//! What the benchmark binaries share: flag validators ([`args`]), run
//! directories, the payload and the raw disk probe ([`disk`]), and latency
//! percentiles and number formats ([`stats`]). The binaries themselves are
//! `src/bin/log-bench/` (mesh-log alone) and `src/bin/broker-bench/` (the
//! broker over gRPC); BENCHMARKS.md has their results.

pub mod args;
pub mod disk;
pub mod stats;

/// Payload (log-bench) or event data (broker-bench) size of every record, in bytes.
pub const PAYLOAD: usize = 1024;

/// The one topic every run writes to.
pub const TOPIC: &str = "bench";
