//! One segment: a file of consecutive records, its sparse index, and the
//! recovery scan that validates it.
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
    fs::{self, File, OpenOptions},
    ops::ControlFlow,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        RwLock,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
};

use bytes::{Bytes, BytesMut};

use crate::{
    error::{LogError, Result, io_err},
    index::{self, IdEntry, IndexEntry, SegmentSummary},
    record::{self, Decoded, Record},
};

/// Bytes read from disk at a time by scans and reads.
const CHUNK: usize = 1 << 20;

pub fn log_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// Parses a segment file name back into its base offset.
pub fn parse_base(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".log")?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

#[derive(Debug)]
pub struct Segment {
    pub base: u64,
    pub path: PathBuf,
    file: File,
    index: RwLock<Vec<IndexEntry>>,
    /// Bytes of whole records that readers may see.
    readable_len: AtomicU64,
    /// One past the last record written to the file.
    next_offset: AtomicU64,
    min_ts: AtomicI64,
    max_ts: AtomicI64,
    sealed: AtomicBool,
    max_body: usize,
}

/// What recovery learned about the tail segment.
#[derive(Debug, Default)]
pub struct TailRecovery {
    pub ids: Vec<IdEntry>,
    /// Bytes of a torn final write that were cut off.
    pub truncated_bytes: u64,
}

struct Scan {
    entries: Vec<IndexEntry>,
    ids: Vec<IdEntry>,
    next_offset: u64,
    valid_len: u64,
    min_ts: i64,
    max_ts: i64,
    /// Where and why the scan stopped before the end of the file.
    stopped: Option<(u64, &'static str)>,
}

impl Segment {
    fn new(base: u64, path: PathBuf, file: File, max_body: usize) -> Self {
        Segment {
            base,
            path,
            file,
            index: RwLock::new(Vec::new()),
            readable_len: AtomicU64::new(0),
            next_offset: AtomicU64::new(base),
            min_ts: AtomicI64::new(i64::MAX),
            max_ts: AtomicI64::new(i64::MIN),
            sealed: AtomicBool::new(false),
            max_body,
        }
    }

    /// Creates a new, empty active segment. The caller fsyncs the directory.
    pub fn create(dir: &Path, base: u64, max_body: usize) -> Result<Self> {
        let path = log_path(dir, base);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(Self::new(base, path, file, max_body))
    }

    fn open_file(dir: &Path, base: u64, write: bool) -> Result<(PathBuf, File)> {
        let path = log_path(dir, base);
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok((path, file))
    }

    /// Opens a sealed segment from its `.idx` sidecar without reading its
    /// records. A missing or damaged sidecar (a crash during sealing) is
    /// rebuilt by one strict scan, where any bad record is corruption.
    pub fn open_sealed(dir: &Path, base: u64, max_body: usize, idx_interval: u64) -> Result<Self> {
        let (path, file) = Self::open_file(dir, base, false)?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        let seg = Self::new(base, path, file, max_body);
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
                tracing::warn!(segment = %seg.path.display(), "index sidecar missing or damaged; rebuilding it by scanning the segment");
                let scan = seg.scan(len, idx_interval)?;
                if let Some((position, reason)) = scan.stopped {
                    return Err(seg.corrupt(position, scan.next_offset, reason));
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
        seg.sealed.store(true, Ordering::Release);
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
        let (path, file) = Self::open_file(dir, base, true)?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        let seg = Self::new(base, path, file, max_body);
        let scan = seg.scan(len, idx_interval)?;
        let mut truncated_bytes = 0;
        if let Some((position, reason)) = scan.stopped {
            if let Some(later) = seg.find_valid_record_after(position, len, scan.next_offset)? {
                return Err(seg.corrupt(
                    position,
                    scan.next_offset,
                    &format!("{reason}, yet a valid record follows at byte {later}"),
                ));
            }
            truncated_bytes = len - scan.valid_len;
            tracing::warn!(segment = %seg.path.display(), position, truncated_bytes, reason, "cutting off a torn write at the tail of the log");
            seg.file
                .set_len(scan.valid_len)
                .map_err(io_err(&seg.path))?;
            seg.file.sync_all().map_err(io_err(&seg.path))?;
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

    fn corrupt(&self, position: u64, offset: u64, reason: &str) -> LogError {
        LogError::Corrupt {
            path: self.path.clone(),
            position,
            offset,
            reason: reason.to_string(),
        }
    }

    pub fn idx_path(&self) -> PathBuf {
        self.path.with_extension("idx")
    }

    pub fn ids_path(&self) -> PathBuf {
        self.path.with_extension("ids")
    }

    /// Reads `len` bytes at `pos`, or fewer at the end of the file.
    fn read_chunk(&self, pos: u64, len: usize) -> Result<Bytes> {
        let mut buf = BytesMut::zeroed(len);
        let mut done = 0;
        while done < len {
            let n = self
                .file
                .read_at(&mut buf[done..], pos + done as u64)
                .map_err(io_err(&self.path))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf.freeze())
    }

    /// Validates every record from the start, rebuilding the sparse index
    /// and the dedupe ids. Stops at the first bad record.
    fn scan(&self, len: u64, idx_interval: u64) -> Result<Scan> {
        let mut s = Scan {
            entries: Vec::new(),
            ids: Vec::new(),
            next_offset: self.base,
            valid_len: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            stopped: None,
        };
        let mut last_indexed: Option<u64> = None;
        let mut pos = 0u64;
        while pos < len {
            let want = ((len - pos) as usize).min(CHUNK.max(self.max_body + record::FRAME_HEADER));
            let buf = self.read_chunk(pos, want)?;
            let mut i = 0usize;
            while i < buf.len() {
                match record::decode(&buf.slice(i..), self.max_body) {
                    Decoded::Record(r, n) => {
                        if r.offset != s.next_offset {
                            s.stopped = Some((pos + i as u64, "offset out of sequence"));
                            return Ok(s);
                        }
                        let at = pos + i as u64;
                        if last_indexed.is_none_or(|p| at - p >= idx_interval) {
                            s.entries.push(IndexEntry {
                                offset: r.offset,
                                position: at,
                                timestamp_us: r.timestamp_us,
                            });
                            last_indexed = Some(at);
                        }
                        if r.id_hash != 0 {
                            s.ids.push(IdEntry {
                                hash: r.id_hash,
                                offset: r.offset,
                                timestamp_us: r.timestamp_us,
                            });
                        }
                        s.min_ts = s.min_ts.min(r.timestamp_us);
                        s.max_ts = s.max_ts.max(r.timestamp_us);
                        s.next_offset += 1;
                        i += n;
                        s.valid_len = pos + i as u64;
                    }
                    Decoded::Incomplete { need } => {
                        let end = pos + i as u64 + need.unwrap_or(record::FRAME_HEADER) as u64;
                        if end > len {
                            s.stopped =
                                Some((pos + i as u64, "record cut short by the end of the file"));
                            return Ok(s);
                        }
                        break; // the record continues in the next chunk
                    }
                    Decoded::Invalid(reason) => {
                        s.stopped = Some((pos + i as u64, reason));
                        return Ok(s);
                    }
                }
            }
            pos += i as u64;
        }
        Ok(s)
    }

    /// Looks for any well-formed record with an offset at or after
    /// `expected` starting somewhere after `bad`.
    fn find_valid_record_after(&self, bad: u64, len: u64, expected: u64) -> Result<Option<u64>> {
        let found = self.find_record(bad + 1, len, |o| {
            o >= expected && o - expected <= u32::MAX as u64
        })?;
        Ok(found.map(|(pos, _)| pos))
    }

    /// The first well-formed record (checksum included) starting at a byte
    /// in `start..end` and lying wholly before `end`, whose offset `accept`
    /// takes: its position and offset.
    fn find_record(
        &self,
        start: u64,
        end: u64,
        accept: impl Fn(u64) -> bool,
    ) -> Result<Option<(u64, u64)>> {
        if start >= end {
            return Ok(None);
        }
        let rest = self.read_chunk(start, (end - start) as usize)?;
        for i in 0..rest.len().saturating_sub(record::OVERHEAD) {
            let body_len = u32::from_le_bytes(rest[i..i + 4].try_into().expect("4 bytes")) as usize;
            if body_len < record::BODY_FIXED
                || body_len > self.max_body
                || i + record::FRAME_HEADER + body_len > rest.len()
            {
                continue;
            }
            let offset = u64::from_le_bytes(rest[i + 8..i + 16].try_into().expect("8 bytes"));
            if !accept(offset) {
                continue;
            }
            if let Decoded::Record(..) = record::decode(&rest.slice(i..), self.max_body) {
                return Ok(Some((start + i as u64, offset)));
            }
        }
        Ok(None)
    }

    /// Calls `f` for each record from `start` on, stopping before
    /// `end_offset`, at the end of the readable bytes, or when `f` breaks.
    /// `hint` sizes the first read.
    ///
    /// `skip` is `Some((from, scan_end))` when the caller only wants
    /// offsets from `from` on: a damaged record before `from` is then
    /// stepped over by looking for the next intact record below byte
    /// `scan_end` (the next index entry), so that the intact records
    /// after the damage stay readable (a group moved past the damage with
    /// SeekGroup resumes there). Damage at an offset the caller wants is
    /// always an error.
    fn for_each_from(
        &self,
        start: Option<IndexEntry>,
        end_offset: u64,
        hint: usize,
        skip: Option<(u64, u64)>,
        mut f: impl FnMut(Record) -> ControlFlow<()>,
    ) -> Result<()> {
        let limit = self.readable_len.load(Ordering::Acquire);
        let (mut pos, mut expected) = start.map_or((0, self.base), |e| (e.position, e.offset));
        let mut want = hint.clamp(64 << 10, CHUNK);
        'chunks: while pos < limit && expected < end_offset {
            let buf = self.read_chunk(pos, want.min((limit - pos) as usize))?;
            let mut i = 0usize;
            loop {
                if pos + i as u64 >= limit || expected >= end_offset {
                    return Ok(());
                }
                let reason = match record::decode(&buf.slice(i..), self.max_body) {
                    Decoded::Record(r, n) if r.offset == expected => {
                        expected += 1;
                        i += n;
                        if f(r).is_break() {
                            return Ok(());
                        }
                        continue;
                    }
                    Decoded::Record(..) => "offset out of sequence",
                    Decoded::Incomplete { need } => {
                        let need = need.unwrap_or(record::FRAME_HEADER);
                        if pos + (i + need) as u64 <= limit {
                            want = want.max(need);
                            break;
                        }
                        "record extends past the end of the written data"
                    }
                    Decoded::Invalid(reason) => reason,
                };
                let bad = pos + i as u64;
                if let Some((from, scan_end)) = skip
                    && expected < from
                    && let Some((p, o)) = self
                        .find_record(bad + 1, scan_end.min(limit), |o| o > expected && o <= from)?
                {
                    tracing::debug!(segment = %self.path.display(), position = bad, offset = expected, resumed_at = o, reason, "stepped over a damaged record before the requested offset");
                    pos = p;
                    expected = o;
                    continue 'chunks;
                }
                return Err(self.corrupt(bad, expected, reason));
            }
            pos += i as u64;
        }
        Ok(())
    }

    /// Appends to `out` the records from offset `from` (inclusive) up to
    /// `end_offset` (exclusive), at most `max_records` and, after the first
    /// record, at most `max_bytes` of payload. Returns the payload bytes.
    ///
    /// On an error, the records read before it are in `out` already.
    pub fn read(
        &self,
        from: u64,
        end_offset: u64,
        max_records: usize,
        max_bytes: usize,
        out: &mut Vec<Record>,
    ) -> Result<usize> {
        // The entry to start from, and where the next one begins (the end
        // of a search for an intact record past damage).
        let (start, next) =
            index::floor_and_next_by_offset(&self.index.read().expect("index lock"), from);
        let scan_end = next.map_or(u64::MAX, |e| e.position);
        let mut bytes = 0usize;
        let mut taken = 0usize;
        self.for_each_from(start, end_offset, max_bytes, Some((from, scan_end)), |r| {
            if r.offset < from {
                return ControlFlow::Continue(());
            }
            if taken > 0 && bytes + r.payload.len() > max_bytes {
                return ControlFlow::Break(());
            }
            bytes += r.payload.len();
            taken += 1;
            out.push(r);
            if taken >= max_records {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        Ok(bytes)
    }

    /// The first offset whose timestamp is at or after `timestamp_us`, if
    /// this segment has one before `end_offset`.
    pub fn offset_for_time(&self, timestamp_us: i64, end_offset: u64) -> Result<Option<u64>> {
        let start = index::floor_by_time(&self.index.read().expect("index lock"), timestamp_us);
        let mut found = None;
        self.for_each_from(start, end_offset, 0, None, |r| {
            if r.timestamp_us >= timestamp_us {
                found = Some(r.offset);
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        Ok(found)
    }

    // ---- writer side ----

    pub fn write_at(&self, buf: &[u8], pos: u64) -> Result<()> {
        self.file.write_all_at(buf, pos).map_err(io_err(&self.path))
    }

    pub fn sync_data(&self) -> Result<()> {
        self.file.sync_data().map_err(io_err(&self.path))
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
        index::write_ids(&self.ids_path(), ids)?;
        self.sealed.store(true, Ordering::Release);
        Ok(())
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

    pub fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    /// The dedupe ids of a sealed segment, from its sidecar or, failing
    /// that, a scan.
    pub fn load_ids(&self, idx_interval: u64) -> Result<Vec<IdEntry>> {
        if let Some(ids) = index::read_ids(&self.ids_path()) {
            return Ok(ids);
        }
        let scan = self.scan(self.len(), idx_interval)?;
        if let Some((position, reason)) = scan.stopped {
            return Err(self.corrupt(position, scan.next_offset, reason));
        }
        Ok(scan.ids)
    }

    /// Removes the segment's files. Readers holding the segment keep their
    /// open handle, so a read racing with retention still completes.
    pub fn remove_files(&self) -> Result<()> {
        for p in [self.path.clone(), self.idx_path(), self.ids_path()] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p)(e)),
            }
        }
        Ok(())
    }
}
