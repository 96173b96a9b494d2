//! The files a run touches: fresh run directories, the payload, the raw
//! disk probe and page-cache eviction.

use std::{
    ffi::OsStr,
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
    /// `<base>/<program>-<pid>-<n>-<label>`, where `<program>` is the
    /// running binary's name (`log-bench`, `broker-bench`), so leftovers of
    /// a killed run say whose they are.
    pub fn new(base: &Path, label: &str) -> std::io::Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let argv0 = std::env::args_os().next().unwrap_or_default();
        let program = Path::new(&argv0)
            .file_name()
            .and_then(OsStr::to_str)
            .unwrap_or("mesh-bench");
        let path = base.join(format!("{program}-{}-{n}-{label}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
        fs::create_dir_all(&path)?;
        Ok(RunDir(path))
    }

    /// The topic directory of a `TopicLog` in this run directory.
    pub fn topic(&self) -> PathBuf {
        self.0.join(TOPIC)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// [`PAYLOAD`] bytes of record payload (log-bench) or event data
/// (broker-bench).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dirs_are_fresh_and_removed_and_the_probe_syncs() {
        let base = std::env::temp_dir();
        let a = RunDir::new(&base, "t").unwrap();
        let b = RunDir::new(&base, "t").unwrap();
        assert_ne!(a.0, b.0);
        assert!(a.0.is_dir() && fs::read_dir(&a.0).unwrap().next().is_none());
        let path = a.0.clone();
        drop(a);
        assert!(!path.exists());
        assert_eq!(payload().len(), PAYLOAD);
        assert!(raw_sync_probe(&base, Duration::from_millis(20)).unwrap().0 > 0.0);
        fs::write(b.0.join("f"), b"x").unwrap();
        evict(&b.0).unwrap();
    }
}
