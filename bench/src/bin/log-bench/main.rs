//! `log-bench`: append throughput and recovery time of mesh-log.
//!
//! ```text
//! cargo run --release -p mesh-bench --bin log-bench -- [--quick] [--dir PATH]
//!     [--seconds N] [--records N] [--rounds N] [--appenders 1,16,256]
//!     [--fsync always|interval|both] [--encryption off|on|both]
//!     [--recovery-mib N] [--small-mib N] [--no-throughput] [--no-recovery]
//! ```
//!
//! Throughput (`throughput.rs`): N appenders (tokio tasks on a multi-thread
//! runtime) each call `TopicLog::append(vec![one 1 KiB record])` in a loop
//! and await it, so any batching comes from the log's group commit across
//! appenders. Every run stops after `--records` records or `--seconds`
//! seconds, whichever comes first, and uses a fresh directory that is
//! removed afterwards. The scenarios are interleaved and repeated
//! `--rounds` times, because the disk of the benchmark machine alternates
//! between a fast and a throttled state: comparisons are made within a
//! round.
//!
//! `--encryption on|both` runs the throughput scenarios with encryption at
//! rest (a key file with one key, written next to the run directories and
//! removed afterwards); with `both` every scenario runs plain and then
//! encrypted back to back in each round, and the report gives the ratio
//! per round. Recovery always runs plain: it never decrypts (the checksum
//! covers the stored bytes), so only the 32 bytes more per record differ.
//!
//! fdatasyncs under `fsync = always` are counted without touching the
//! library: the syncer publishes the head once per fdatasync, so the number
//! of distinct head values the appenders see right after their acks is a
//! lower bound of the syncs (exact for one appender). Segment rolls add one
//! fdatasync each.
//!
//! Recovery (`recovery.rs`): a log of `--recovery-mib` MiB (default 1 GiB)
//! and one of `--small-mib` MiB (default 64 MiB, one segment) are written
//! with batched appends, closed, and reopened; `TopicLog::open` is timed
//! with the files in the page cache (a broker restart) and after evicting
//! them with `posix_fadvise(DONTNEED)` (closer to a machine restart).
//!
//! Output is a markdown report on stdout; progress goes to stderr. Run
//! directories, the payload, the raw disk probe and the percentiles come
//! from the mesh-bench library, shared with broker-bench.

mod args;
mod recovery;
mod throughput;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use mesh_bench::PAYLOAD;
use mesh_log::{FsyncPolicy, LogConfig, record};

use crate::args::Args;

const INTERVAL: FsyncPolicy = FsyncPolicy::Interval(Duration::from_millis(100));

fn config(fsync: FsyncPolicy, key_file: Option<&Path>) -> Arc<LogConfig> {
    Arc::new(LogConfig {
        fsync,
        encryption_key_file: key_file.map(Path::to_path_buf),
        ..LogConfig::default()
    })
}

/// The key file of the encrypted runs: one fixed key (a benchmark protects
/// nothing), removed when dropped.
pub struct BenchKeys(PathBuf);

impl BenchKeys {
    pub fn new(base: &Path) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let path = base.join(format!("log-bench-{}.keys", std::process::id()));
        let line = format!("1 {}\n", "b7".repeat(32));
        std::fs::write(&path, line).map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(BenchKeys(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for BenchKeys {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How the report names a policy.
fn policy_name(p: FsyncPolicy) -> String {
    match p {
        FsyncPolicy::Always => "always".to_string(),
        FsyncPolicy::Interval(d) => format!("interval {} ms", d.as_millis()),
    }
}

fn main() {
    let args = Args::from_env();
    if let Err(e) = run(&args) {
        eprintln!("log-bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let workers = rt.metrics().num_workers();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "log-bench{}: 1 KiB payloads ({} B on disk per record, {} B encrypted), default LogConfig \
         (64 MiB segments, 4 MiB max batch, queue depth 4096), tokio multi-thread \
         runtime with {workers} workers, dir {}\n",
        if args.quick { " --quick" } else { "" },
        record::encoded_len(PAYLOAD),
        record::sealed_len(PAYLOAD),
        args.dir.display()
    );
    if args.throughput {
        throughput::section(&rt, args, &mut out)?;
    }
    if args.recovery {
        recovery::section(&rt, args, &mut out)?;
    }
    println!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps the benchmark from rotting: a tiny run of each kind.
    #[test]
    fn tiny_runs_complete() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let base = std::env::temp_dir();
        let keys = BenchKeys::new(&base).unwrap();
        for (policy, key) in [
            (FsyncPolicy::Always, None),
            (INTERVAL, None),
            (FsyncPolicy::Always, Some(keys.path())),
        ] {
            let r = rt
                .block_on(throughput::throughput_run(
                    &base,
                    policy,
                    8,
                    200,
                    Duration::from_secs(10),
                    key,
                ))
                .unwrap();
            assert_eq!(r.records, 200);
            assert!(r.latency_us.p50 <= r.latency_us.p99 && r.latency_us.p99 <= r.latency_us.max);
            if policy == FsyncPolicy::Always {
                let syncs = r.syncs.unwrap();
                assert!((1..=200).contains(&syncs), "{syncs}");
            }
        }
        let (rows, _) =
            recovery::recovery_run(&rt, &base, 1, (true, true), 1, Duration::from_secs(10))
                .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].records, rows[0].records + 1);
        assert!(
            mesh_bench::disk::raw_sync_probe(&base, Duration::from_millis(20))
                .unwrap()
                .0
                > 0.0
        );
    }
}
