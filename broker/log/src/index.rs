//! The sparse index of a segment and the sidecar files that persist it.
//!
//! One [`IndexEntry`] is kept for the first record of a segment and then for
//! the first record after every `index_interval_bytes` of data. Because
//! publish timestamps never decrease within a topic, the same entries serve
//! seeks by offset and by time.
//!
//! When a segment is sealed, two sidecars are written next to it and
//! fsynced, so that opening the log never has to scan sealed segments:
//! - `<base>.idx`: the sparse entries plus the segment's summary;
//! - `<base>.ids`: the dedupe id hashes it holds, read only for segments
//!   still inside the dedupe window.
//!
//! Both carry a CRC-32C; a sidecar that is missing or fails its check is
//! rebuilt by scanning its segment once.

use std::{fs, path::Path};

use crate::{error::Result, fsutil::replace_file};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub position: u64,
    pub timestamp_us: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdEntry {
    pub hash: u128,
    pub offset: u64,
    pub timestamp_us: i64,
}

/// What a sealed segment's `.idx` records about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    /// One past the last offset in the segment.
    pub next_offset: u64,
    pub size: u64,
    pub min_timestamp_us: i64,
    pub max_timestamp_us: i64,
}

const IDX_MAGIC: &[u8; 8] = b"MESHIDX1";
const IDS_MAGIC: &[u8; 8] = b"MESHIDS1";

/// Index of the entry to start a scan from when looking for `offset`:
/// the last entry at or before it.
pub fn floor_by_offset(entries: &[IndexEntry], offset: u64) -> Option<IndexEntry> {
    floor_and_next_by_offset(entries, offset).0
}

/// [`floor_by_offset`], and the entry after it (where a scan from the
/// floor crosses the next index point), from one search.
pub fn floor_and_next_by_offset(
    entries: &[IndexEntry],
    offset: u64,
) -> (Option<IndexEntry>, Option<IndexEntry>) {
    let i = entries.partition_point(|e| e.offset <= offset);
    (
        i.checked_sub(1).map(|i| entries[i]),
        entries.get(i).copied(),
    )
}

/// The last entry strictly before `timestamp_us`: every record before it is
/// older too, so a scan for the first record at or after the time starts
/// there.
pub fn floor_by_time(entries: &[IndexEntry], timestamp_us: i64) -> Option<IndexEntry> {
    let i = entries.partition_point(|e| e.timestamp_us < timestamp_us);
    i.checked_sub(1).map(|i| entries[i])
}

fn write_sidecar(path: &Path, magic: &[u8; 8], body: &[u8]) -> Result<()> {
    let mut out = Vec::with_capacity(body.len() + 12);
    out.extend_from_slice(magic);
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
    replace_file(path, &out)
}

/// Reads a sidecar's body; `None` when it is missing or fails its checks.
fn read_sidecar(path: &Path, magic: &[u8; 8]) -> Option<Vec<u8>> {
    let data = fs::read(path).ok()?;
    if data.len() < 12 || &data[..8] != magic {
        return None;
    }
    let crc = u32::from_le_bytes(data[8..12].try_into().ok()?);
    let body = &data[12..];
    (crc32c::crc32c(body) == crc).then(|| body.to_vec())
}

pub fn write_idx(path: &Path, summary: &SegmentSummary, entries: &[IndexEntry]) -> Result<()> {
    let mut body = Vec::with_capacity(32 + entries.len() * 24);
    body.extend_from_slice(&summary.next_offset.to_le_bytes());
    body.extend_from_slice(&summary.size.to_le_bytes());
    body.extend_from_slice(&summary.min_timestamp_us.to_le_bytes());
    body.extend_from_slice(&summary.max_timestamp_us.to_le_bytes());
    for e in entries {
        body.extend_from_slice(&e.offset.to_le_bytes());
        body.extend_from_slice(&e.position.to_le_bytes());
        body.extend_from_slice(&e.timestamp_us.to_le_bytes());
    }
    write_sidecar(path, IDX_MAGIC, &body)
}

pub fn read_idx(path: &Path) -> Option<(SegmentSummary, Vec<IndexEntry>)> {
    let body = read_sidecar(path, IDX_MAGIC)?;
    if body.len() < 32 || (body.len() - 32) % 24 != 0 {
        return None;
    }
    let u = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().expect("8 bytes"));
    let summary = SegmentSummary {
        next_offset: u(0),
        size: u(8),
        min_timestamp_us: u(16) as i64,
        max_timestamp_us: u(24) as i64,
    };
    let entries = (32..body.len())
        .step_by(24)
        .map(|i| IndexEntry {
            offset: u(i),
            position: u(i + 8),
            timestamp_us: u(i + 16) as i64,
        })
        .collect();
    Some((summary, entries))
}

pub fn write_ids(path: &Path, ids: &[IdEntry]) -> Result<()> {
    let mut body = Vec::with_capacity(ids.len() * 32);
    for e in ids {
        body.extend_from_slice(&e.hash.to_le_bytes());
        body.extend_from_slice(&e.offset.to_le_bytes());
        body.extend_from_slice(&e.timestamp_us.to_le_bytes());
    }
    write_sidecar(path, IDS_MAGIC, &body)
}

pub fn read_ids(path: &Path) -> Option<Vec<IdEntry>> {
    let body = read_sidecar(path, IDS_MAGIC)?;
    if body.len() % 32 != 0 {
        return None;
    }
    Some(
        body.chunks_exact(32)
            .map(|c| IdEntry {
                hash: u128::from_le_bytes(c[0..16].try_into().expect("16 bytes")),
                offset: u64::from_le_bytes(c[16..24].try_into().expect("8 bytes")),
                timestamp_us: i64::from_le_bytes(c[24..32].try_into().expect("8 bytes")),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecars_round_trip_and_reject_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.idx");
        let s = SegmentSummary {
            next_offset: 10,
            size: 999,
            min_timestamp_us: 5,
            max_timestamp_us: 9,
        };
        let e = vec![
            IndexEntry {
                offset: 0,
                position: 0,
                timestamp_us: 5,
            },
            IndexEntry {
                offset: 4,
                position: 400,
                timestamp_us: 7,
            },
        ];
        write_idx(&p, &s, &e).unwrap();
        assert_eq!(read_idx(&p), Some((s, e)));
        let mut raw = fs::read(&p).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 0x10;
        fs::write(&p, raw).unwrap();
        assert_eq!(read_idx(&p), None);

        let q = dir.path().join("0.ids");
        let ids = vec![IdEntry {
            hash: 77,
            offset: 3,
            timestamp_us: 8,
        }];
        write_ids(&q, &ids).unwrap();
        assert_eq!(read_ids(&q), Some(ids));
    }

    #[test]
    fn floors() {
        let e = [
            IndexEntry {
                offset: 0,
                position: 0,
                timestamp_us: 10,
            },
            IndexEntry {
                offset: 5,
                position: 50,
                timestamp_us: 20,
            },
            IndexEntry {
                offset: 9,
                position: 90,
                timestamp_us: 20,
            },
        ];
        assert_eq!(floor_by_offset(&e, 4).unwrap().offset, 0);
        assert_eq!(floor_by_offset(&e, 5).unwrap().offset, 5);
        assert_eq!(floor_by_offset(&e, 100).unwrap().offset, 9);
        assert_eq!(floor_by_time(&e, 20).unwrap().offset, 0);
        assert_eq!(floor_by_time(&e, 21).unwrap().offset, 9);
        assert!(floor_by_time(&e, 10).is_none());
    }
}
