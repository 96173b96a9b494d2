//! The files a run touches: fresh run directories, the payload, the raw
//! disk probe and page-cache eviction.

use std::{
    fs,
    os::{fd::AsRawFd, unix::fs::FileExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use bytes::Bytes;
use mesh_log::record;

use crate::{PAYLOAD, TOPIC};

/// A fresh, empty directory under the base dir, removed on drop.
pub struct RunDir(
    /// The directory; unique per process and run.
    pub PathBuf,
);

impl RunDir {
    pub fn new(base: &Path, label: &str) -> std::io::Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("log-bench-{}-{n}-{label}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
        fs::create_dir_all(&path)?;
        Ok(RunDir(path))
    }

    pub fn topic(&self) -> PathBuf {
        self.0.join(TOPIC)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn payload() -> Bytes {
    // Not all zeroes, not compressible; the content does not matter to the
    // log, but it keeps any transparent compression out of the picture.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..PAYLOAD)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// The disk without the log: pwrite 256 records' worth (272 KiB) and
/// fdatasync, in a loop, for `limit` or 10000 syncs. Returns (syncs/s, MB/s).
pub fn raw_sync_probe(base: &Path, limit: Duration) -> std::io::Result<(f64, f64)> {
    let dir = RunDir::new(base, "probe")?;
    let f = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(dir.0.join("probe.dat"))?;
    let buf = vec![0x5au8; 256 * record::encoded_len(PAYLOAD)];
    let start = Instant::now();
    let (mut n, mut pos) = (0u64, 0u64);
    while start.elapsed() < limit && n < 10_000 {
        f.write_all_at(&buf, pos)?;
        f.sync_data()?;
        pos += buf.len() as u64;
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((n as f64 / secs, pos as f64 / 1e6 / secs))
}

/// Drops the (clean) page-cache pages of every file in `dir`.
pub fn evict(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        let f = fs::File::open(&path)?;
        f.sync_all()?;
        // SAFETY: a valid open descriptor; the call only gives advice.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}
