//! A segment file read by position: chunked `pread`s, the validating scan
//! that recovery runs, the search for the next intact record past damage,
//! and the record iterator that reads and seeks build on.
//!
//! A `Segment` (module `segment`) owns one of these and adds what changes
//! while the log runs (sparse index, readable length, timestamps).

use std::{
    fs::{File, OpenOptions},
    ops::ControlFlow,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use bytes::{Bytes, BytesMut};

use crate::{
    error::{LogError, Result, io_err},
    index::{IdEntry, IndexEntry},
    record::{self, Decoded, Frame},
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

/// What a scan from the start of a segment found.
pub(crate) struct Scan {
    /// The sparse index rebuilt from the records.
    pub entries: Vec<IndexEntry>,
    /// The dedupe ids of the records.
    pub ids: Vec<IdEntry>,
    /// One past the last valid record.
    pub next_offset: u64,
    /// Bytes of valid records from the start.
    pub valid_len: u64,
    /// Oldest publish time of the valid records (`i64::MAX` if none).
    pub min_ts: i64,
    /// Newest publish time of the valid records (`i64::MIN` if none).
    pub max_ts: i64,
    /// Where and why the scan stopped before the end of the file.
    pub stopped: Option<(u64, &'static str)>,
    /// The key ids of the sealed records (each once), and the offset of
    /// the first record with it: recovery checks the key file has them.
    pub key_ids: Vec<(u32, u64)>,
    /// The offset of the first plaintext record, if any.
    pub first_plain: Option<u64>,
}

/// The file of one segment.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    /// Offset of the first record; names the file.
    pub base: u64,
    /// Named in every error about the file.
    pub path: PathBuf,
    /// Shared by the writer (`pwrite`) and readers (`pread`): no cursor.
    file: File,
    /// Largest record body accepted: a larger length is damage, not a
    /// reason to allocate.
    max_body: usize,
}

impl SegmentFile {
    /// Creates a new, empty segment file. The caller fsyncs the directory.
    pub fn create(dir: &Path, base: u64, max_body: usize) -> Result<Self> {
        Self::open_with(
            dir,
            base,
            max_body,
            OpenOptions::new().write(true).create_new(true),
        )
    }

    /// Opens an existing segment file, writable only if `write`.
    pub fn open(dir: &Path, base: u64, write: bool, max_body: usize) -> Result<Self> {
        Self::open_with(dir, base, max_body, OpenOptions::new().write(write))
    }

    /// Opens the file of segment `base` in `dir` for reading, and as `opts`
    /// say for the rest.
    fn open_with(dir: &Path, base: u64, max_body: usize, opts: &mut OpenOptions) -> Result<Self> {
        let path = log_path(dir, base);
        let file = opts.read(true).open(&path).map_err(io_err(&path))?;
        Ok(SegmentFile {
            base,
            path,
            file,
            max_body,
        })
    }

    /// The file's length on disk.
    pub fn disk_len(&self) -> Result<u64> {
        Ok(self.file.metadata().map_err(io_err(&self.path))?.len())
    }

    /// Cuts the file to `len` bytes, durably.
    pub fn truncate(&self, len: u64) -> Result<()> {
        self.file.set_len(len).map_err(io_err(&self.path))?;
        self.file.sync_all().map_err(io_err(&self.path))
    }

    pub fn write_at(&self, buf: &[u8], pos: u64) -> Result<()> {
        self.file.write_all_at(buf, pos).map_err(io_err(&self.path))
    }

    pub fn sync_data(&self) -> Result<()> {
        self.file.sync_data().map_err(io_err(&self.path))
    }

    pub fn corrupt(&self, position: u64, offset: u64, reason: &str) -> LogError {
        LogError::Corrupt {
            path: self.path.clone(),
            position,
            offset,
            reason: reason.to_string(),
        }
    }

    /// Reads `len` bytes at `pos`, or fewer at the end of the file.
    pub fn read_chunk(&self, pos: u64, len: usize) -> Result<Bytes> {
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
    pub fn scan(&self, len: u64, idx_interval: u64) -> Result<Scan> {
        let mut s = Scan {
            entries: Vec::new(),
            ids: Vec::new(),
            next_offset: self.base,
            valid_len: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            stopped: None,
            key_ids: Vec::new(),
            first_plain: None,
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
                        match r.key_id {
                            Some(k) if !s.key_ids.iter().any(|&(id, _)| id == k) => {
                                s.key_ids.push((k, r.offset));
                            }
                            Some(_) => {}
                            None => {
                                s.first_plain.get_or_insert(r.offset);
                            }
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
    pub fn find_valid_record_after(
        &self,
        bad: u64,
        len: u64,
        expected: u64,
    ) -> Result<Option<u64>> {
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
            let field = u32::from_le_bytes(rest[i..i + 4].try_into().expect("4 bytes"));
            let Some((body_len, _)) = record::body_len(field, self.max_body) else {
                continue;
            };
            if i + record::FRAME_HEADER + body_len > rest.len() {
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

    /// Calls `f` with each stored record and its byte position from
    /// `start` on, stopping before `end_offset`, at byte `limit` (the end
    /// of the readable bytes), or when `f` breaks or fails. A sealed
    /// record reaches `f` still sealed: only the ones it keeps are
    /// decrypted.
    /// `hint` sizes the first read.
    ///
    /// `skip` is `Some((from, scan_end))` when the caller only wants
    /// offsets from `from` on: a damaged record before `from` is then
    /// stepped over by looking for the next intact record below byte
    /// `scan_end` (the next index entry), so that the intact records
    /// after the damage stay readable (a group moved past the damage with
    /// SeekGroup resumes there). Damage at an offset the caller wants is
    /// always an error.
    pub fn for_each_from(
        &self,
        limit: u64,
        start: Option<IndexEntry>,
        end_offset: u64,
        hint: usize,
        skip: Option<(u64, u64)>,
        mut f: impl FnMut(Frame, u64) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
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
                        let at = pos + i as u64;
                        expected += 1;
                        i += n;
                        if f(r, at)?.is_break() {
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
}
