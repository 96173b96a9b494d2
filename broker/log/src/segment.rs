//! One segment: a file of consecutive records, its sparse index, and
//! opening it (from its sidecars, or by the recovery scan of
//! `segfile`).
//!
//! Files are named by the segment's first offset, zero-padded so that a
//! directory listing sorts in log order: `00000000000000000000.log`.
//!
//! Only the writer thread appends (with `pwrite`, so readers and the
//! writer never share a file cursor); readers use `pread` on the same
//! handle and are bounded by `readable_len`, which only ever covers whole,
//! published records. A checksum failure inside that bound is therefore
//! corruption, never a race with the writer.

use std::{
    fs,
    ops::ControlFlow,
    path::{Path, PathBuf},
    sync::{
        RwLock,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
};

use crate::{
    error::{Result, io_err},
    index::{self, IdEntry, IndexEntry, SegmentSummary},
    keyring::Keyring,
    record::{Frame, Record},
    segfile::SegmentFile,
};

#[derive(Debug)]
pub struct Segment {
    /// The file, read and written by position.
    file: SegmentFile,
    /// Sparse offset/time index: where reads and seeks start scanning.
    index: RwLock<Vec<IndexEntry>>,
    /// Bytes of whole records that readers may see.
    readable_len: AtomicU64,
    /// One past the last record written to the file.
    next_offset: AtomicU64,
    /// Oldest publish time in the segment (`i64::MAX` while empty).
    min_ts: AtomicI64,
    /// Newest publish time, for retention by age and seeks by time
    /// (`i64::MIN` while empty).
    max_ts: AtomicI64,
}

/// What recovery learned about the tail segment.
#[derive(Debug, Default)]
pub struct TailRecovery {
    /// Dedupe ids of the records kept, for the writer's window.
    pub ids: Vec<IdEntry>,
    /// Bytes of a torn final write that were cut off.
    pub truncated_bytes: u64,
    /// Key ids of the sealed records kept, with the first offset of each.
    pub key_ids: Vec<(u32, u64)>,
    /// The first plaintext record kept, if any.
    pub first_plain: Option<u64>,
}

impl Segment {
    fn new(file: SegmentFile) -> Self {
        Segment {
            index: RwLock::new(Vec::new()),
            readable_len: AtomicU64::new(0),
            next_offset: AtomicU64::new(file.base),
            min_ts: AtomicI64::new(i64::MAX),
            max_ts: AtomicI64::new(i64::MIN),
            file,
        }
    }

    /// Creates a new, empty active segment. The caller fsyncs the directory.
    pub fn create(dir: &Path, base: u64, max_body: usize) -> Result<Self> {
        Ok(Self::new(SegmentFile::create(dir, base, max_body)?))
    }

    /// Opens a sealed segment from its `.idx` sidecar without reading its
    /// records. A missing or damaged sidecar (a crash during sealing) is
    /// rebuilt by one strict scan, where any bad record is corruption.
    pub fn open_sealed(dir: &Path, base: u64, max_body: usize, idx_interval: u64) -> Result<Self> {
        let seg = Self::new(SegmentFile::open(dir, base, false, max_body)?);
        let len = seg.file.disk_len()?;
        match index::read_idx(&seg.idx_path()) {
            Some((s, entries)) if s.size == len => {
                seg.install(
                    entries,
                    s.next_offset,
                    len,
                    s.min_timestamp_us,
                    s.max_timestamp_us,
                );
            }
            _ => {
                tracing::warn!(segment = %seg.path().display(), "index sidecar missing or damaged; rebuilding it by scanning the segment");
                let scan = seg.file.scan(len, idx_interval)?;
                if let Some((position, reason)) = scan.stopped {
                    return Err(seg.file.corrupt(position, scan.next_offset, reason));
                }
                seg.install(
                    scan.entries,
                    scan.next_offset,
                    len,
                    scan.min_ts,
                    scan.max_ts,
                );
                seg.seal(&scan.ids)?;
            }
        }
        Ok(seg)
    }

    /// Opens the last segment of a log. It is always scanned, because it is
    /// the only one a crash can have left half-written.
    ///
    /// A bad record followed by nothing valid is a torn final write: it was
    /// never acknowledged (acks wait for the fsync that would have covered
    /// it), so it is cut off. A bad record followed by valid ones is damage
    /// to data that may have been acknowledged, so opening fails and names
    /// the file and byte position instead of silently dropping the rest.
    pub fn open_tail(
        dir: &Path,
        base: u64,
        max_body: usize,
        idx_interval: u64,
    ) -> Result<(Self, TailRecovery)> {
        let seg = Self::new(SegmentFile::open(dir, base, true, max_body)?);
        let len = seg.file.disk_len()?;
        let scan = seg.file.scan(len, idx_interval)?;
        let mut truncated_bytes = 0;
        if let Some((position, reason)) = scan.stopped {
            if let Some(later) =
                seg.file
                    .find_valid_record_after(position, len, scan.next_offset)?
            {
                return Err(seg.file.corrupt(
                    position,
                    scan.next_offset,
                    &format!("{reason}, yet a valid record follows at byte {later}"),
                ));
            }
            truncated_bytes = len - scan.valid_len;
            tracing::warn!(segment = %seg.path().display(), position, truncated_bytes, reason, "cutting off a torn write at the tail of the log");
            seg.file.truncate(scan.valid_len)?;
        }
        seg.install(
            scan.entries,
            scan.next_offset,
            scan.valid_len,
            scan.min_ts,
            scan.max_ts,
        );
        Ok((
            seg,
            TailRecovery {
                ids: scan.ids,
                truncated_bytes,
                key_ids: scan.key_ids,
                first_plain: scan.first_plain,
            },
        ))
    }

    fn install(
        &self,
        entries: Vec<IndexEntry>,
        next_offset: u64,
        len: u64,
        min_ts: i64,
        max_ts: i64,
    ) {
        *self.index.write().expect("index lock") = entries;
        self.next_offset.store(next_offset, Ordering::Release);
        self.readable_len.store(len, Ordering::Release);
        self.min_ts.store(min_ts, Ordering::Release);
        self.max_ts.store(max_ts, Ordering::Release);
    }

    /// Offset of the segment's first record.
    pub fn base(&self) -> u64 {
        self.file.base
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    pub fn idx_path(&self) -> PathBuf {
        self.path().with_extension("idx")
    }

    pub fn ids_path(&self) -> PathBuf {
        self.path().with_extension("ids")
    }

    /// [`SegmentFile::for_each_from`], bounded by the readable bytes.
    fn for_each_from(
        &self,
        start: Option<IndexEntry>,
        end_offset: u64,
        hint: usize,
        skip: Option<(u64, u64)>,
        f: impl FnMut(Frame, u64) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        let limit = self.readable_len.load(Ordering::Acquire);
        self.file
            .for_each_from(limit, start, end_offset, hint, skip, f)
    }

    /// Appends to `out` the records from offset `from` (inclusive) up to
    /// `end_offset` (exclusive), at most `max_records` and, after the first
    /// record, at most `max_bytes` of payload. Returns the payload bytes.
    /// Sealed records are decrypted with `keys`; one that does not
    /// authenticate is reported as corrupt, like a failed checksum.
    ///
    /// On an error, the records read before it are in `out` already.
    pub fn read(
        &self,
        from: u64,
        end_offset: u64,
        max_records: usize,
        max_bytes: usize,
        keys: Option<&Keyring>,
        out: &mut Vec<Record>,
    ) -> Result<usize> {
        // The entry to start from, and where the next one begins (the end
        // of a search for an intact record past damage).
        let (start, next) =
            index::floor_and_next_by_offset(&self.index.read().expect("index lock"), from);
        let scan_end = next.map_or(u64::MAX, |e| e.position);
        let mut bytes = 0usize;
        let mut taken = 0usize;
        self.for_each_from(
            start,
            end_offset,
            max_bytes,
            Some((from, scan_end)),
            |f, at| {
                if f.offset < from {
                    return Ok(ControlFlow::Continue(()));
                }
                let offset = f.offset;
                let r = f
                    .open(keys)
                    .map_err(|reason| self.file.corrupt(at, offset, &reason))?;
                if taken > 0 && bytes + r.payload.len() > max_bytes {
                    return Ok(ControlFlow::Break(()));
                }
                bytes += r.payload.len();
                taken += 1;
                out.push(r);
                Ok(if taken >= max_records {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            },
        )?;
        Ok(bytes)
    }

    /// The first offset whose timestamp is at or after `timestamp_us`, if
    /// this segment has one before `end_offset`.
    pub fn offset_for_time(&self, timestamp_us: i64, end_offset: u64) -> Result<Option<u64>> {
        let start = index::floor_by_time(&self.index.read().expect("index lock"), timestamp_us);
        let mut found = None;
        self.for_each_from(start, end_offset, 0, None, |r, _| {
            Ok(if r.timestamp_us >= timestamp_us {
                found = Some(r.offset);
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        })?;
        Ok(found)
    }

    // ---- writer side ----

    pub fn write_at(&self, buf: &[u8], pos: u64) -> Result<()> {
        self.file.write_at(buf, pos)
    }

    pub fn sync_data(&self) -> Result<()> {
        self.file.sync_data()
    }

    pub fn push_index(&self, entry: IndexEntry) {
        self.index.write().expect("index lock").push(entry);
    }

    /// Records that offsets up to `next_offset` are written, ending at byte
    /// `len`. Called by the writer before the bytes become readable.
    pub fn note_written(&self, next_offset: u64, min_ts: i64, max_ts: i64) {
        self.next_offset.store(next_offset, Ordering::Release);
        self.min_ts.fetch_min(min_ts, Ordering::AcqRel);
        self.max_ts.fetch_max(max_ts, Ordering::AcqRel);
    }

    /// Makes bytes up to `len` visible to readers.
    pub fn publish(&self, len: u64) {
        self.readable_len.fetch_max(len, Ordering::AcqRel);
    }

    /// Writes and fsyncs the sidecars so that reopening skips the scan.
    /// The segment's data must already be synced.
    pub fn seal(&self, ids: &[IdEntry]) -> Result<()> {
        let summary = self.summary();
        index::write_idx(
            &self.idx_path(),
            &summary,
            &self.index.read().expect("index lock"),
        )?;
        index::write_ids(&self.ids_path(), ids)
    }

    pub fn summary(&self) -> SegmentSummary {
        SegmentSummary {
            next_offset: self.next_offset(),
            size: self.len(),
            min_timestamp_us: self.min_ts.load(Ordering::Acquire),
            max_timestamp_us: self.max_ts.load(Ordering::Acquire),
        }
    }

    // ---- accessors ----

    pub fn len(&self) -> u64 {
        self.readable_len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }

    /// Newest publish time in the segment; `i64::MIN` when empty.
    pub fn max_timestamp_us(&self) -> i64 {
        self.max_ts.load(Ordering::Acquire)
    }

    /// The dedupe ids of a sealed segment, from its sidecar or, failing
    /// that, a scan.
    pub fn load_ids(&self, idx_interval: u64) -> Result<Vec<IdEntry>> {
        if let Some(ids) = index::read_ids(&self.ids_path()) {
            return Ok(ids);
        }
        let scan = self.file.scan(self.len(), idx_interval)?;
        if let Some((position, reason)) = scan.stopped {
            return Err(self.file.corrupt(position, scan.next_offset, reason));
        }
        Ok(scan.ids)
    }

    /// Removes the segment's files. Readers holding the segment keep their
    /// open handle, so a read racing with retention still completes.
    pub fn remove_files(&self) -> Result<()> {
        for p in [self.path().to_path_buf(), self.idx_path(), self.ids_path()] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p)(e)),
            }
        }
        Ok(())
    }
}
