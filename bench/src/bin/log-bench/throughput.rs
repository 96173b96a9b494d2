//! Append throughput: N appenders, one record per `append` call, under each
//! fsync policy, in interleaved rounds.

use std::{
    fmt::Write as _,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use mesh_log::{AppendRecord, FsyncPolicy, TopicConfig, TopicLog};
use tokio::runtime::Runtime;

use mesh_bench::{
    PAYLOAD, TOPIC,
    disk::{RunDir, payload, raw_sync_probe},
    stats::{Percentiles, fmt_list, histogram, median},
};

use crate::{BenchKeys, INTERVAL, args::Args, config, policy_name};

#[derive(Clone, Debug)]
pub struct RunResult {
    /// Records appended and acknowledged.
    pub records: u64,
    /// From the start of the run to the last acknowledgement.
    pub elapsed: Duration,
    /// Per-append latency, from the call to its acknowledgement.
    pub latency_us: Percentiles,
    /// Lower bound of the fdatasyncs that acknowledged appends (`always`).
    pub syncs: Option<u64>,
    /// Segments of the log at the end of the run.
    pub segments: usize,
}

impl RunResult {
    fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
    fn mb_s(&self) -> f64 {
        self.rate() * PAYLOAD as f64 / 1e6
    }
}

/// `appenders` tasks, one record per `append` call, until `max_records`
/// records were issued or `limit` has passed; encrypted at rest with the
/// key file `key_file` if given.
pub async fn throughput_run(
    base: &Path,
    fsync: FsyncPolicy,
    appenders: usize,
    max_records: u64,
    limit: Duration,
    key_file: Option<&Path>,
) -> Result<RunResult, String> {
    let dir = RunDir::new(base, &format!("tp{appenders}")).map_err(|e| e.to_string())?;
    let log = Arc::new(
        TopicLog::create(
            TOPIC,
            &dir.topic(),
            config(fsync, key_file),
            TopicConfig::default(),
        )
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
            // Plain vectors in the loop; the histogram is built afterwards.
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
    let mut h = histogram();
    for &v in &lat {
        h.saturating_record(u64::from(v));
    }
    heads.sort_unstable();
    heads.dedup();
    let rolls = stats.segments as u64 - 1;
    Ok(RunResult {
        records: lat.len() as u64,
        elapsed,
        latency_us: Percentiles::of(&h),
        syncs: matches!(fsync, FsyncPolicy::Always).then_some(heads.len() as u64 + rolls),
        segments: stats.segments,
    })
}

/// Every throughput scenario, `args.rounds` times interleaved, each round
/// after a raw disk probe; appends the section to `out`.
pub fn section(rt: &Runtime, args: &Args, out: &mut String) -> Result<(), String> {
    let limit = Duration::from_secs_f64(args.seconds);
    // Plain and encrypted of one scenario run back to back (same disk
    // state) when both are asked for.
    let scenarios: Vec<(FsyncPolicy, usize, bool)> = args
        .fsync
        .iter()
        .flat_map(|&p| {
            args.appenders
                .iter()
                .flat_map(move |&n| args.encryption.iter().map(move |&e| (p, n, e)))
        })
        .collect();
    let keys = if args.encryption.contains(&true) {
        Some(BenchKeys::new(&args.dir)?)
    } else {
        None
    };
    let key_file = |enc: bool| keys.as_ref().filter(|_| enc).map(BenchKeys::path);
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
        for (i, &(policy, n, enc)) in scenarios.iter().enumerate() {
            let r = rt.block_on(throughput_run(
                &args.dir,
                policy,
                n,
                args.records,
                limit,
                key_file(enc),
            ))?;
            let l = r.latency_us;
            eprintln!(
                "round {} fsync={} appenders={n} encrypted={enc}: {} records in {:.2?} = {:.0}/s, p50 {} us, p99 {} us, p99.9 {} us, max {} us, syncs {:?}, segments {}",
                round + 1,
                policy_name(policy),
                r.records,
                r.elapsed,
                r.rate(),
                l.p50,
                l.p99,
                l.p999,
                l.max,
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
        "| fsync | appenders | encrypted | records/s (median) | MB/s payload | per round, records/s | p50 / p99 latency (us) | fdatasyncs/s | records per fdatasync |"
    );
    let _ = writeln!(out, "|---|---:|---|---:|---:|---|---:|---:|---:|");
    let med = |rs: &[RunResult]| -> RunResult {
        let mut v = rs.to_vec();
        v.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        v[v.len() / 2].clone()
    };
    for (i, &(policy, n, enc)) in scenarios.iter().enumerate() {
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
            "| {} | {n} | {} | {:.0} | {:.1} | {} | {} / {} | {syncs_s} | {per_sync} |",
            policy_name(policy),
            if enc { "yes" } else { "no" },
            m.rate(),
            m.mb_s(),
            fmt_list(&rounds, 0),
            m.latency_us.p50,
            m.latency_us.p99
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
    // The plain runs when there are any, else the encrypted ones.
    let base_enc = !args.encryption.contains(&false);
    let idx = |p: FsyncPolicy, n: usize| scenarios.iter().position(|&s| s == (p, n, base_enc));
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
    if args.encryption.len() == 2 {
        for &(p, n, enc) in &scenarios {
            if enc {
                let plain = scenarios.iter().position(|&s| s == (p, n, false));
                let sealed = scenarios.iter().position(|&s| s == (p, n, true));
                if let Some(r) = ratio(sealed, plain) {
                    let _ = writeln!(
                        out,
                        "- encrypted vs plain, {}, {n} appenders: {r}",
                        policy_name(p)
                    );
                }
            }
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
    Ok(())
}
