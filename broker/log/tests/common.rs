//! Helpers shared by the log's integration tests.
#![allow(dead_code)]

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use mesh_log::{AppendRecord, Appended, LogConfig, LogError, Record, TopicConfig, TopicLog};

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Small segments so that a few hundred records roll several times.
pub fn small_cfg() -> LogConfig {
    LogConfig {
        segment_bytes: 8 << 10,
        index_interval_bytes: 512,
        ..LogConfig::default()
    }
}

pub fn create(dir: &Path, cfg: LogConfig, tc: TopicConfig) -> TopicLog {
    TopicLog::create("t", &dir.join("t"), Arc::new(cfg), tc).unwrap()
}

pub fn open(dir: &Path, cfg: LogConfig) -> mesh_log::Result<TopicLog> {
    TopicLog::open("t", &dir.join("t"), Arc::new(cfg))
}

pub fn rec(payload: impl Into<Vec<u8>>) -> AppendRecord {
    AppendRecord {
        id: None,
        payload: Bytes::from(payload.into()),
    }
}

pub fn rec_id(id: &str, payload: impl Into<Vec<u8>>) -> AppendRecord {
    AppendRecord {
        id: Some(id.to_string()),
        payload: Bytes::from(payload.into()),
    }
}

pub fn append(
    rt: &tokio::runtime::Runtime,
    log: &TopicLog,
    recs: Vec<AppendRecord>,
) -> Vec<Appended> {
    rt.block_on(log.append(recs)).unwrap()
}

pub fn read_all(log: &TopicLog) -> mesh_log::Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut from = log.earliest();
    loop {
        let batch = log.read(from, 100, 1 << 20)?;
        let Some(last) = batch.last() else {
            return Ok(out);
        };
        from = last.offset + 1;
        out.extend(batch);
    }
}

pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("t"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// Bytes one record of [`log_of_100_byte_records`] takes on disk: a 40-byte
/// header and its 100-byte payload.
pub const RECORD_BYTES: u64 = 140;

/// A new log in small segments holding `n` records of exactly 100 bytes
/// each (`0000…0`, `0000…1`, …), so a test can compute where a record lies.
pub fn log_of_100_byte_records(rt: &tokio::runtime::Runtime, dir: &Path, n: u32) -> TopicLog {
    let log = create(dir, small_cfg(), TopicConfig::default());
    for i in 0..n {
        append(rt, &log, vec![rec(format!("{i:0>100}"))]);
    }
    log
}

/// The first offset a segment file holds (its name).
pub fn base_offset(segment: &Path) -> u64 {
    segment
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{segment:?} is not named by its base offset"))
}

/// The offsets of `records`, in order.
pub fn offsets(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.offset).collect()
}

/// Asserts that `r` reports corruption in file `path` at byte `position`,
/// record `offset`.
#[track_caller]
pub fn assert_corrupt<T: std::fmt::Debug>(
    r: Result<T, LogError>,
    path: &Path,
    position: u64,
    offset: u64,
) {
    match r {
        Err(LogError::Corrupt {
            path: p,
            position: pos,
            offset: o,
            ..
        }) => assert_eq!(
            (p.as_path(), pos, o),
            (path, position, offset),
            "where the corruption was reported"
        ),
        other => panic!("expected corruption to be reported, got {other:?}"),
    }
}

pub const SHORT: Duration = Duration::from_millis(50);

/// A key file line `<id> <64 hex chars>` whose key is `byte` repeated.
pub fn key_line(id: u32, byte: u8) -> String {
    format!("{id} {}\n", format!("{byte:02x}").repeat(32))
}
