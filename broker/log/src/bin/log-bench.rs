//! `log-bench`: append throughput and recovery time of mesh-log.
//!
//! ```text
//! cargo run --release -p mesh-log --bin log-bench -- [--quick] [--dir PATH]
//!     [--seconds N] [--records N] [--rounds N] [--recovery-mib N]
//!     [--small-mib N] [--no-throughput] [--no-recovery]
//! ```
//!
//! Throughput: N appenders (tokio tasks on a multi-thread runtime) each call
//! `TopicLog::append(vec![one 1 KiB record])` in a loop and await it, so
//! any batching comes from the log's group commit across appenders. Every
//! run stops after `--records` records or `--seconds` seconds, whichever
//! comes first, and uses a fresh directory that is removed afterwards. The
//! scenarios are interleaved and repeated `--rounds` times, because the
//! disk of the benchmark machine alternates between a fast and a throttled
//! state: comparisons are made within a round.
//!
//! fdatasyncs under `fsync = always` are counted without touching the
//! library: the syncer publishes the head once per fdatasync, so the number
//! of distinct head values the appenders see right after their acks is a
//! lower bound of the syncs (exact for one appender). Segment rolls add one
//! fdatasync each.
//!
//! Recovery: a log of `--recovery-mib` MiB (default 1 GiB) and one of
//! `--small-mib` MiB (default 64 MiB, one segment) are written with
//! batched appends, closed, and reopened; `TopicLog::open` is timed with
//! the files in the page cache (a broker restart) and after evicting them
//! with `posix_fadvise(DONTNEED)` (closer to a machine restart).
//!
//! Output is a markdown report on stdout; progress goes to stderr.

use std::{
    fmt::Write as _,
    fs,
    os::{fd::AsRawFd, unix::fs::FileExt},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use mesh_log::{AppendRecord, FsyncPolicy, LogConfig, TopicConfig, TopicLog, record};

const PAYLOAD: usize = 1024;
const TOPIC: &str = "bench";
const INTERVAL: FsyncPolicy = FsyncPolicy::Interval(Duration::from_millis(100));

struct Args {
    quick: bool,
    dir: PathBuf,
    seconds: f64,
    records: u64,
    rounds: usize,
    appenders: Vec<usize>,
    fsync: Vec<FsyncPolicy>,
    probe_seconds: f64,
    recovery_mib: u64,
    small_mib: u64,
    throughput: bool,
    recovery: bool,
}

const USAGE: &str = "usage: log-bench [--quick] [--dir PATH] [--seconds N] [--records N] \
[--rounds N] [--appenders 1,16,256] [--fsync always|interval|both] [--recovery-mib N] \
[--small-mib N] [--no-throughput] [--no-recovery]";

fn parse_args() -> Result<Args, String> {
    let mut raw: Vec<String> = std::env::args().skip(1).collect();
    let quick = raw.iter().any(|a| a == "--quick");
    raw.retain(|a| a != "--quick");
    let mut a = Args {
        quick,
        dir: std::env::temp_dir(),
        seconds: if quick { 0.4 } else { 5.0 },
        records: if quick { 20_000 } else { 2_000_000 },
        rounds: if quick { 1 } else { 3 },
        appenders: vec![1, 16, 256],
        fsync: vec![FsyncPolicy::Always, INTERVAL],
        probe_seconds: if quick { 0.2 } else { 1.0 },
        recovery_mib: if quick { 128 } else { 1024 },
        small_mib: if quick { 16 } else { 64 },
        throughput: true,
        recovery: true,
    };
    let mut it = raw.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("{flag}: not a number: {v}"))
        }
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(value()?),
            "--seconds" => a.seconds = num(&flag, value()?)?,
            "--records" => a.records = num(&flag, value()?)?,
            "--rounds" => a.rounds = num(&flag, value()?)?,
            "--appenders" => {
                a.appenders = value()?
                    .split(',')
                    .map(|v| num(&flag, v.to_string()))
                    .collect::<Result<_, _>>()?
            }
            "--fsync" => {
                a.fsync = match value()?.as_str() {
                    "always" => vec![FsyncPolicy::Always],
                    "interval" => vec![INTERVAL],
                    "both" => vec![FsyncPolicy::Always, INTERVAL],
                    v => return Err(format!("--fsync: always, interval or both, not {v}")),
                }
            }
            "--recovery-mib" => a.recovery_mib = num(&flag, value()?)?,
            "--small-mib" => a.small_mib = num(&flag, value()?)?,
            "--no-throughput" => a.throughput = false,
            "--no-recovery" => a.recovery = false,
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if a.seconds <= 0.0 || a.records == 0 || a.rounds == 0 || a.appenders.contains(&0) {
        return Err("--seconds, --records, --rounds and --appenders must be positive".to_string());
    }
    if a.small_mib == 0 || a.recovery_mib == 0 {
        return Err("--recovery-mib and --small-mib must be positive".to_string());
    }
    Ok(a)
}

/// A fresh, empty directory under the base dir, removed on drop.
struct RunDir(PathBuf);

impl RunDir {
    fn new(base: &Path, label: &str) -> std::io::Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("log-bench-{}-{n}-{label}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
        fs::create_dir_all(&path)?;
        Ok(RunDir(path))
    }

    fn topic(&self) -> PathBuf {
        self.0.join(TOPIC)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn config(fsync: FsyncPolicy) -> Arc<LogConfig> {
    Arc::new(LogConfig {
        fsync,
        ..LogConfig::default()
    })
}

fn payload() -> Bytes {
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

fn policy_name(p: FsyncPolicy) -> String {
    match p {
        FsyncPolicy::Always => "always".to_string(),
        FsyncPolicy::Interval(d) => format!("interval {} ms", d.as_millis()),
    }
}

#[derive(Clone, Debug)]
struct RunResult {
    records: u64,
    elapsed: Duration,
    p50_us: u32,
    p99_us: u32,
    /// Lower bound of the fdatasyncs that acknowledged appends (`always`).
    syncs: Option<u64>,
    segments: usize,
}

impl RunResult {
    fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
    fn mb_s(&self) -> f64 {
        self.rate() * PAYLOAD as f64 / 1e6
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// `appenders` tasks, one record per `append` call, until `max_records`
/// records were issued or `limit` has passed.
async fn throughput_run(
    base: &Path,
    fsync: FsyncPolicy,
    appenders: usize,
    max_records: u64,
    limit: Duration,
) -> Result<RunResult, String> {
    let dir = RunDir::new(base, &format!("tp{appenders}")).map_err(|e| e.to_string())?;
    let log = Arc::new(
        TopicLog::create(TOPIC, &dir.topic(), config(fsync), TopicConfig::default())
            .map_err(|e| e.to_string())?,
    );
    let payload = payload();
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + limit;
    let mut tasks = Vec::with_capacity(appenders);
    for _ in 0..appenders {
        let (log, payload, issued) = (log.clone(), payload.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat_us: Vec<u32> = Vec::new();
            let mut heads: Vec<u64> = Vec::new();
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max_records
            {
                let t = Instant::now();
                log.append(vec![AppendRecord {
                    id: None,
                    payload: payload.clone(),
                }])
                .await
                .map_err(|e| e.to_string())?;
                lat_us.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                heads.push(log.head());
            }
            Ok::<_, String>((lat_us, heads))
        }));
    }
    let mut lat = Vec::new();
    let mut heads = Vec::new();
    for t in tasks {
        let (l, h) = t.await.map_err(|e| e.to_string())??;
        lat.extend(l);
        heads.extend(h);
    }
    let elapsed = start.elapsed();
    let stats = log.stats();
    // On the block_on thread, not a runtime worker, so joining is fine.
    log.close();
    lat.sort_unstable();
    heads.sort_unstable();
    heads.dedup();
    let rolls = stats.segments as u64 - 1;
    Ok(RunResult {
        records: lat.len() as u64,
        elapsed,
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
        syncs: matches!(fsync, FsyncPolicy::Always).then_some(heads.len() as u64 + rolls),
        segments: stats.segments,
    })
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

/// The disk without the log: pwrite 256 records' worth (272 KiB) and
/// fdatasync, in a loop, for `limit` or 10000 syncs. Returns (syncs/s, MB/s).
fn raw_sync_probe(base: &Path, limit: Duration) -> std::io::Result<(f64, f64)> {
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

// SAFETY of use: the declaration matches glibc/musl on 64-bit Linux
// (`off_t` is 64 bits), and std already links the C library.
unsafe extern "C" {
    fn posix_fadvise(fd: i32, offset: i64, len: i64, advice: i32) -> i32;
}
const POSIX_FADV_DONTNEED: i32 = 4;

/// Drops the (clean) page-cache pages of every file in `dir`.
fn evict(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        let f = fs::File::open(&path)?;
        f.sync_all()?;
        // SAFETY: a valid open descriptor; the call only gives advice.
        let rc = unsafe { posix_fadvise(f.as_raw_fd(), 0, 0, POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

struct Recovery {
    label: String,
    bytes: u64,
    records: u64,
    segments: usize,
    tail_bytes: u64,
    warm_ms: Vec<f64>,
    cold_ms: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
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
fn recovery_run(
    rt: &tokio::runtime::Runtime,
    base: &Path,
    mib: u64,
    (plus_one, ids): (bool, bool),
    reps: usize,
    limit: Duration,
) -> Result<(Vec<Recovery>, f64), String> {
    let dir = RunDir::new(base, &format!("rec{mib}")).map_err(|e| e.to_string())?;
    let cfg = config(INTERVAL);
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

fn fmt_list(v: &[f64], prec: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.prec$}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn main() {
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("log-bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let workers = rt.metrics().num_workers();
    let mut out = String::new();
    let limit = Duration::from_secs_f64(args.seconds);
    let _ = writeln!(
        out,
        "log-bench{}: 1 KiB payloads ({} B on disk per record), default LogConfig \
         (64 MiB segments, 4 MiB max batch, queue depth 4096), tokio multi-thread \
         runtime with {workers} workers, dir {}\n",
        if args.quick { " --quick" } else { "" },
        record::encoded_len(PAYLOAD),
        args.dir.display()
    );

    if args.throughput {
        let scenarios: Vec<(FsyncPolicy, usize)> = args
            .fsync
            .iter()
            .flat_map(|&p| args.appenders.iter().map(move |&n| (p, n)))
            .collect();
        // results[scenario][round]
        let mut results: Vec<Vec<RunResult>> = vec![Vec::new(); scenarios.len()];
        let mut probes = Vec::new();
        for round in 0..args.rounds {
            let probe = raw_sync_probe(&args.dir, Duration::from_secs_f64(args.probe_seconds))
                .map_err(|e| e.to_string())?;
            eprintln!(
                "round {} raw probe: {:.0} fdatasync/s of 256 records, {:.0} MB/s",
                round + 1,
                probe.0,
                probe.1
            );
            probes.push(probe);
            for (i, &(policy, n)) in scenarios.iter().enumerate() {
                let r = rt.block_on(throughput_run(&args.dir, policy, n, args.records, limit))?;
                eprintln!(
                    "round {} fsync={} appenders={n}: {} records in {:.2?} = {:.0}/s, p50 {} us, p99 {} us, syncs {:?}, segments {}",
                    round + 1,
                    policy_name(policy),
                    r.records,
                    r.elapsed,
                    r.rate(),
                    r.p50_us,
                    r.p99_us,
                    r.syncs,
                    r.segments
                );
                results[i].push(r);
            }
        }
        let _ = writeln!(
            out,
            "### Append throughput, one record per call\n\n\
             Each run: stop at {} records or {} s, whichever first; fresh directory. \
             Median of {} interleaved round(s); the per-round column lists every round in order.\n",
            args.records, args.seconds, args.rounds
        );
        let _ = writeln!(
            out,
            "| fsync | appenders | records/s (median) | MB/s payload | per round, records/s | p50 / p99 latency (us) | fdatasyncs/s | records per fdatasync |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---|---:|---:|---:|");
        let med = |rs: &[RunResult]| -> RunResult {
            let mut v = rs.to_vec();
            v.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
            v[v.len() / 2].clone()
        };
        for (i, &(policy, n)) in scenarios.iter().enumerate() {
            let m = med(&results[i]);
            let rounds: Vec<f64> = results[i].iter().map(RunResult::rate).collect();
            let (syncs_s, per_sync) = match m.syncs {
                Some(s) if s > 0 => (
                    format!("{:.0}", s as f64 / m.elapsed.as_secs_f64()),
                    format!("{:.1}", m.records as f64 / s as f64),
                ),
                _ => ("10 (timer)".to_string(), "n/a".to_string()),
            };
            let _ = writeln!(
                out,
                "| {} | {n} | {:.0} | {:.1} | {} | {} / {} | {syncs_s} | {per_sync} |",
                policy_name(policy),
                m.rate(),
                m.mb_s(),
                fmt_list(&rounds, 0),
                m.p50_us,
                m.p99_us
            );
        }
        let _ = writeln!(
            out,
            "\nRaw disk probe at the start of each round (272 KiB pwrite + fdatasync in a loop, \
             i.e. 256 records per sync, no log code): {} fdatasync/s, {} MB/s.\n",
            fmt_list(&probes.iter().map(|p| p.0).collect::<Vec<_>>(), 0),
            fmt_list(&probes.iter().map(|p| p.1).collect::<Vec<_>>(), 0)
        );
        let _ = writeln!(out, "Ratios within each round (same disk state):\n");
        let idx = |p: FsyncPolicy, n: usize| scenarios.iter().position(|&s| s == (p, n));
        let ratio = |a: Option<usize>, b: Option<usize>| -> Option<String> {
            let (a, b) = (a?, b?);
            let v: Vec<f64> = results[a]
                .iter()
                .zip(&results[b])
                .map(|(x, y)| x.rate() / y.rate())
                .collect();
            Some(format!("{} (median {:.2})", fmt_list(&v, 2), median(&v)))
        };
        let (al, iv) = (FsyncPolicy::Always, INTERVAL);
        let ivn = policy_name(iv);
        for (text, r) in [
            (
                "always, 256 vs 1 appenders (group commit gain)".to_string(),
                ratio(idx(al, 256), idx(al, 1)),
            ),
            (
                "always, 16 vs 1 appenders".to_string(),
                ratio(idx(al, 16), idx(al, 1)),
            ),
            (
                format!("{ivn} vs always, 256 appenders"),
                ratio(idx(iv, 256), idx(al, 256)),
            ),
            (
                format!("{ivn} vs always, 1 appender"),
                ratio(idx(iv, 1), idx(al, 1)),
            ),
        ] {
            if let Some(r) = r {
                let _ = writeln!(out, "- {text}: {r}");
            }
        }
        if let Some(a256) = idx(al, 256) {
            let target = 300_000.0;
            let rates: Vec<f64> = results[a256].iter().map(RunResult::rate).collect();
            let met = rates.iter().filter(|&&r| r >= target).count();
            let _ = writeln!(
                out,
                "- target >= 300000 records/s with fsync = always and 256 appenders: {} \
                 (median {:.0}; met in {met} of {} rounds)",
                if med(&results[a256]).rate() >= target {
                    "met"
                } else {
                    "NOT met"
                },
                med(&results[a256]).rate(),
                rates.len()
            );
        }
        let _ = writeln!(out);
    }

    if args.recovery {
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
            let (r, fill_rate) =
                recovery_run(&rt, &args.dir, mib, (plus_one, ids), reps, fill_limit)?;
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
    }
    println!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps the benchmark from rotting: a tiny run of each kind.
    #[test]
    fn tiny_runs_complete() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let base = std::env::temp_dir();
        for policy in [FsyncPolicy::Always, INTERVAL] {
            let r = rt
                .block_on(throughput_run(
                    &base,
                    policy,
                    8,
                    200,
                    Duration::from_secs(10),
                ))
                .unwrap();
            assert_eq!(r.records, 200);
            if policy == FsyncPolicy::Always {
                let syncs = r.syncs.unwrap();
                assert!((1..=200).contains(&syncs), "{syncs}");
            }
        }
        let (rows, _) =
            recovery_run(&rt, &base, 1, (true, true), 1, Duration::from_secs(10)).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].records, rows[0].records + 1);
        assert!(raw_sync_probe(&base, Duration::from_millis(20)).unwrap().0 > 0.0);
    }
}
