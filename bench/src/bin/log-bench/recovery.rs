//! Recovery time: `TopicLog::open` of closed logs, warm and cold.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use mesh_log::{AppendRecord, LogConfig, TopicConfig, TopicLog, record};
use tokio::runtime::Runtime;

use mesh_bench::{
    PAYLOAD, TOPIC,
    disk::{RunDir, evict, payload},
    stats::{fmt_list, median},
};

use crate::{INTERVAL, args::Args, config};

/// One row of the recovery table.
pub struct Recovery {
    /// What was reopened, e.g. "1024 MiB + 1 record".
    pub label: String,
    /// Size of the `.log` files on disk.
    pub bytes: u64,
    /// Records written, which the reopened head must equal.
    pub records: u64,
    /// `.log` files of the topic.
    pub segments: usize,
    /// Size of the last (unsealed) segment, the one recovery scans.
    pub tail_bytes: u64,
    /// Open times with the files in the page cache.
    pub warm_ms: Vec<f64>,
    /// Open times after evicting the files from the page cache.
    pub cold_ms: Vec<f64>,
}

/// Appends `records` records with `tasks` tasks of `batch` records per
/// call, stopping early at `limit`; with `ids`, every record carries a
/// unique producer id. Returns the records written.
async fn fill(
    log: &Arc<TopicLog>,
    records: u64,
    (tasks, batch): (usize, u64),
    ids: bool,
    limit: Duration,
) -> Result<u64, String> {
    let payload = payload();
    let claimed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + limit;
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (log, payload, claimed) = (log.clone(), payload.clone(), claimed.clone());
        handles.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let from = claimed.fetch_add(batch, Ordering::Relaxed);
                if from >= records {
                    break;
                }
                let n = batch.min(records - from);
                let recs = (from..from + n)
                    .map(|i| AppendRecord {
                        id: ids.then(|| format!("producer-{i}")),
                        payload: payload.clone(),
                    })
                    .collect();
                log.append(recs).await.map_err(|e| e.to_string())?;
                done += n;
            }
            Ok::<_, String>(done)
        }));
    }
    let mut done = 0;
    for h in handles {
        done += h.await.map_err(|e| e.to_string())??;
    }
    Ok(done)
}

/// Times `TopicLog::open` of a closed log `reps` times warm and cold, and
/// checks that it recovers `records` records.
fn time_open(
    dir: &Path,
    cfg: &Arc<LogConfig>,
    label: String,
    records: u64,
    reps: usize,
) -> Result<Recovery, String> {
    let mut logs: Vec<(PathBuf, u64)> = fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| {
            let len = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            (p, len)
        })
        .collect();
    logs.sort();
    let open = |cold: bool| -> Result<f64, String> {
        if cold {
            evict(dir).map_err(|e| e.to_string())?;
        }
        let t = Instant::now();
        let log = TopicLog::open(TOPIC, dir, cfg.clone()).map_err(|e| e.to_string())?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if log.head() != records {
            return Err(format!(
                "reopened head {} but {records} records were written",
                log.head()
            ));
        }
        log.close();
        Ok(ms)
    };
    let mut warm_ms = Vec::new();
    let mut cold_ms = Vec::new();
    for _ in 0..reps {
        warm_ms.push(open(false)?);
        cold_ms.push(open(true)?);
    }
    Ok(Recovery {
        label,
        bytes: logs.iter().map(|l| l.1).sum(),
        records,
        segments: logs.len(),
        tail_bytes: logs.last().map_or(0, |l| l.1),
        warm_ms,
        cold_ms,
    })
}

/// Writes a log of about `mib` MiB of 1 KiB records (rounded down to whole
/// segments, so that the unsealed tail is full: the longest tail scan),
/// closes it and times reopening it. With `plus_one`, then appends one
/// more record, which rolls to a new tail segment, and times again. With
/// `ids`, every record carries a producer id, so recovery also reloads the
/// dedupe window from the sealed segments' `.ids` sidecars.
/// Returns the rows and the batched fill rate in records/s.
pub fn recovery_run(
    rt: &Runtime,
    base: &Path,
    mib: u64,
    (plus_one, ids): (bool, bool),
    reps: usize,
    limit: Duration,
) -> Result<(Vec<Recovery>, f64), String> {
    let dir = RunDir::new(base, &format!("rec{mib}")).map_err(|e| e.to_string())?;
    let cfg = config(INTERVAL, None);
    let enc = record::encoded_len(PAYLOAD) as u64;
    let per_segment = cfg.segment_bytes / enc;
    let mut want = (mib << 20) / enc;
    if want >= per_segment {
        want -= want % per_segment;
    }
    let log = Arc::new(
        TopicLog::create(TOPIC, &dir.topic(), cfg.clone(), TopicConfig::default())
            .map_err(|e| e.to_string())?,
    );
    let t = Instant::now();
    let written = rt.block_on(fill(&log, want, (4, 256), ids, limit))?;
    let fill_rate = written as f64 / t.elapsed().as_secs_f64();
    log.close();
    drop(log);
    let label = if ids {
        format!("{mib} MiB, every record with a producer id")
    } else {
        format!("{mib} MiB")
    };
    let mut rows = vec![time_open(&dir.topic(), &cfg, label, written, reps)?];
    if plus_one {
        let log = TopicLog::open(TOPIC, &dir.topic(), cfg.clone()).map_err(|e| e.to_string())?;
        rt.block_on(log.append(vec![AppendRecord {
            id: None,
            payload: payload(),
        }]))
        .map_err(|e| e.to_string())?;
        log.close();
        rows.push(time_open(
            &dir.topic(),
            &cfg,
            format!("{mib} MiB + 1 record"),
            written + 1,
            reps,
        )?);
    }
    Ok((rows, fill_rate))
}

/// The large log (and + 1 record), the small log, and the large log with
/// producer ids; appends the section to `out`.
pub fn section(rt: &Runtime, args: &Args, out: &mut String) -> Result<(), String> {
    let reps = 3;
    let fill_limit = Duration::from_secs(if args.quick { 20 } else { 120 });
    let mut rows = Vec::new();
    let mut fills = Vec::new();
    for (mib, plus_one, ids) in [
        (args.recovery_mib, true, false),
        (args.small_mib, false, false),
        (args.recovery_mib, false, true),
    ] {
        eprintln!("recovery: writing a {mib} MiB log (ids: {ids})");
        let (r, fill_rate) = recovery_run(rt, &args.dir, mib, (plus_one, ids), reps, fill_limit)?;
        for r in &r {
            eprintln!(
                "recovery {}: {} records, {} segments, tail {} B, warm {:?} ms, cold {:?} ms",
                r.label, r.records, r.segments, r.tail_bytes, r.warm_ms, r.cold_ms
            );
        }
        rows.extend(r);
        fills.push(fill_rate);
    }
    let _ = writeln!(
        out,
        "### Recovery (`TopicLog::open` after `close()`)\n\n\
         Logs written with fsync = interval 100 ms by 4 tasks appending 256 records \
         per call ({} records/s, {} MB/s payload), rounded down to whole segments so \
         that the unsealed tail segment is full and recovery scans all 64 MiB of it; \
         \"+ 1 record\" appends one more record, which rolls to a new tail segment. \
         Records carry no producer id except in the last row, where all of them are \
         inside the dedupe window (120 s) at reopen. \
         Open timed {reps} times each: warm = files in the page cache (broker restart), \
         cold = after fdatasync + posix_fadvise(DONTNEED) on every file of the topic.\n",
        fmt_list(&fills, 0),
        fmt_list(
            &fills
                .iter()
                .map(|r| r * PAYLOAD as f64 / 1e6)
                .collect::<Vec<_>>(),
            0
        ),
    );
    let _ = writeln!(
        out,
        "| log | size on disk | records | segments | tail segment | open warm, ms (median; all) | open cold, ms (median; all) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---|---|");
    for r in &rows {
        let tail = if r.tail_bytes >= 1 << 20 {
            format!("{:.1} MiB", r.tail_bytes as f64 / (1 << 20) as f64)
        } else {
            format!("{} B", r.tail_bytes)
        };
        let _ = writeln!(
            out,
            "| {} | {:.1} MiB | {} | {} | {tail} | {:.1}; {} | {:.1}; {} |",
            r.label,
            r.bytes as f64 / (1 << 20) as f64,
            r.records,
            r.segments,
            median(&r.warm_ms),
            fmt_list(&r.warm_ms, 1),
            median(&r.cold_ms),
            fmt_list(&r.cold_ms, 1)
        );
    }
    if let [large, _, small, ..] = &rows[..] {
        let _ = writeln!(
            out,
            "\n{} vs {}: open takes {:.2}x (warm) and {:.2}x (cold) as long for {:.1}x the data.",
            large.label,
            small.label,
            median(&large.warm_ms) / median(&small.warm_ms),
            median(&large.cold_ms) / median(&small.cold_ms),
            large.bytes as f64 / small.bytes as f64
        );
    }
    Ok(())
}
