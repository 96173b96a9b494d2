//! Fresh data directories and the raw disk probe.

use std::{
    fs,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use crate::{PAYLOAD, Res, err};

/// A fresh, empty directory under the base dir, removed on drop.
pub struct RunDir(
    /// The directory; unique per process and run.
    pub PathBuf,
);

impl RunDir {
    pub fn new(base: &Path, label: &str) -> Res<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("broker-bench-{}-{n}-{label}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).map_err(err)?;
        }
        fs::create_dir_all(&path).map_err(err)?;
        Ok(RunDir(path))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The disk without the log: pwrite 256 records' worth (272 KiB) and
/// fdatasync, in a loop. Returns (syncs/s, MB/s). As in log-bench.
pub fn raw_sync_probe(base: &Path, limit: Duration) -> Res<(f64, f64)> {
    let dir = RunDir::new(base, "probe")?;
    let f = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(dir.0.join("probe.dat"))
        .map_err(err)?;
    let buf = vec![0x5au8; 256 * mesh_log::record::encoded_len(PAYLOAD)];
    let start = Instant::now();
    let (mut n, mut pos) = (0u64, 0u64);
    while start.elapsed() < limit && n < 10_000 {
        f.write_all_at(&buf, pos).map_err(err)?;
        f.sync_data().map_err(err)?;
        pos += buf.len() as u64;
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((n as f64 / secs, pos as f64 / 1e6 / secs))
}
