//! Recovery at open (the log's loader): finds a topic's segments, opens
//! the sealed ones from their sidecars and scans the tail, checks that
//! they follow each other, and rebuilds what the writer continues from
//! (the dedupe window and the last timestamp).

use std::{fs, path::Path, sync::Arc};

use crate::{
    config::LogConfig,
    dedupe::Dedupe,
    error::{LogError, Result, io_err},
    fsutil::sync_dir,
    index::IdEntry,
    keyring::Keyring,
    segfile,
    segment::{Segment, TailRecovery},
    writer::{WriterStart, now_us},
};

/// A recovered topic log, ready for its writer.
pub(crate) struct Recovered {
    /// Every segment in offset order; the last one is the active one.
    pub segments: Vec<Arc<Segment>>,
    /// What the writer continues from.
    pub start: WriterStart,
}

/// Recovers the segments in `dir`. Only the tail segment is scanned;
/// sealed segments load from their sidecars. Leftover `.tmp` files of an
/// interrupted atomic write are removed; an empty topic gets its first
/// segment.
///
/// Recovery never decrypts: the checksum tells a torn write from damage
/// without a key, so a wrong or missing key can never make it cut off
/// data. It only checks that the tail's sealed records name keys that
/// `keys` holds (and that an encrypted log holds no plaintext record), so
/// a missing key stops the start instead of the first read.
pub(crate) fn recover(
    name: &str,
    dir: &Path,
    cfg: &LogConfig,
    keys: Option<&Keyring>,
) -> Result<Recovered> {
    let bases = list_segments(dir)?;
    let interval = cfg.index_interval_bytes;
    let max_body = cfg.max_body();
    let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len().max(1));
    let tail_ids = match bases.split_last() {
        None => {
            segments.push(Arc::new(Segment::create(dir, 0, max_body)?));
            sync_dir(dir)?;
            Vec::new()
        }
        Some((&last, sealed)) => {
            for &b in sealed {
                segments.push(Arc::new(Segment::open_sealed(dir, b, max_body, interval)?));
            }
            let (tail, rec) = Segment::open_tail(dir, last, max_body, interval)?;
            if rec.truncated_bytes > 0 {
                tracing::warn!(
                    topic = name,
                    bytes = rec.truncated_bytes,
                    "recovered from a torn write"
                );
            }
            check_keys(&tail, &rec, keys)?;
            segments.push(Arc::new(tail));
            rec.ids
        }
    };
    check_contiguous(&segments)?;
    let dedupe = rebuild_dedupe(cfg, &segments, &tail_ids)?;
    let last_ts = segments
        .iter()
        .map(|s| s.max_timestamp_us())
        .max()
        .unwrap_or(i64::MIN);
    let active = segments[segments.len() - 1].clone();
    Ok(Recovered {
        segments,
        start: WriterStart {
            active,
            ids: tail_ids,
            dedupe,
            last_ts,
        },
    })
}

/// Base offsets of the segment files in `dir`, sorted; removes `.tmp`
/// leftovers on the way.
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let fname = entry.file_name();
        let fname = fname.to_string_lossy();
        if let Some(base) = segfile::parse_base(&fname) {
            bases.push(base);
        } else if fname.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// The tail's records must be readable with `keys`: every key id in the
/// key file, no sealed record without keys, no plaintext record in an
/// encrypted log.
fn check_keys(tail: &Segment, rec: &TailRecovery, keys: Option<&Keyring>) -> Result<()> {
    let path = tail.path().display();
    let problem = match keys {
        None => rec.key_ids.first().map(|&(id, offset)| {
            format!(
                "segment {path} holds records encrypted with key id {id} (the first at offset {offset}), but storage.encryption_key_file is not set"
            )
        }),
        Some(k) => rec
            .key_ids
            .iter()
            .find(|(id, _)| !k.contains(*id))
            .map(|&(id, offset)| {
                format!(
                    "segment {path} holds records encrypted with key id {id} (the first at offset {offset}), which is not in the encryption key file {}; add that key line back",
                    k.path().display()
                )
            })
            .or_else(|| {
                rec.first_plain.map(|offset| {
                    format!(
                        "segment {path} holds an unencrypted record at offset {offset}, but the log is encrypted (storage.encryption_key_file is set)"
                    )
                })
            }),
    };
    match problem {
        Some(p) => Err(LogError::Config(p)),
        None => Ok(()),
    }
}

/// Each segment must start where the previous one ends: a gap means a
/// segment file went missing.
fn check_contiguous(segments: &[Arc<Segment>]) -> Result<()> {
    for pair in segments.windows(2) {
        if pair[0].next_offset() != pair[1].base() {
            return Err(LogError::Corrupt {
                path: pair[1].path().to_path_buf(),
                position: 0,
                offset: pair[0].next_offset(),
                reason: format!(
                    "segment starts at offset {} but the previous one ends at {}",
                    pair[1].base(),
                    pair[0].next_offset()
                ),
            });
        }
    }
    Ok(())
}

/// Rebuilds the dedupe window from the ids of recent segments only.
fn rebuild_dedupe(
    cfg: &LogConfig,
    segments: &[Arc<Segment>],
    tail_ids: &[IdEntry],
) -> Result<Dedupe> {
    let now = now_us();
    let window_us = cfg.dedupe_window.as_micros() as i64;
    let mut dedupe = Dedupe::new(window_us, cfg.dedupe_max_ids);
    if !dedupe.enabled() {
        return Ok(dedupe);
    }
    // Newest first, stopping once the cap is reached: older ids would be
    // evicted at once, so reading them only slows the start (1M ids in the
    // window took 175 ms to load).
    let mut recent: Vec<Vec<IdEntry>> = Vec::new();
    let mut count = tail_ids.len();
    for seg in segments[..segments.len() - 1].iter().rev() {
        if count >= cfg.dedupe_max_ids || seg.max_timestamp_us() < now.saturating_sub(window_us) {
            break;
        }
        let ids = seg.load_ids(cfg.index_interval_bytes)?;
        count += ids.len();
        recent.push(ids);
    }
    for ids in recent.iter().rev() {
        for &e in ids {
            dedupe.insert(e);
        }
    }
    for &e in tail_ids {
        dedupe.insert(e);
    }
    Ok(dedupe)
}
