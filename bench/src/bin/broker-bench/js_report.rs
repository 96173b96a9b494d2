//! The markdown report of `--vs-jetstream`: per replicas setting, the
//! throughput of A (JetStream directly) and B (the broker) per round, the
//! ratios B/A within each round, and the latencies side by side.

use std::fmt::Write as _;

use mesh_bench::stats::{fmt_list, median};

use crate::{
    args::Args,
    latency::Latency,
    stats::ms,
    vs_jetstream::{JsRun, PerReplicas, Results, b_shapes},
};

/// The aims: B at least this share of A's throughput ...
pub const AIM_RATIO: f64 = 0.8;
/// ... and B's p99 at most this many microseconds above A's.
pub const AIM_P99_US: f64 = 1000.0;

pub fn write(args: &Args, r: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "broker-bench --vs-jetstream{}: {} round(s), replicas {:?}, publish runs up to {} events or {} s, consume of all both streams hold, at least {} events (limit {} s), latency {} events/s for {} s; {} cores, {} tokio workers per runtime.\n",
        if args.quick { " --quick" } else { "" },
        args.rounds,
        args.replicas,
        args.events,
        args.seconds,
        args.prefill,
        args.consume_seconds,
        args.rate,
        args.latency_seconds,
        r.cores,
        r.workers,
    );
    for p in &r.per_replicas {
        section(&mut out, p);
    }
    out
}

fn section(out: &mut String, p: &PerReplicas) {
    let probes: Vec<String> = p
        .probes
        .iter()
        .map(|(s, mb)| format!("{s:.0} fdatasync/s {mb:.0} MB/s"))
        .collect();
    let _ = writeln!(
        out,
        "### R{}\n\nRaw disk probe per round: {}.\n",
        p.replicas,
        probes.join(" / ")
    );
    let _ = writeln!(
        out,
        "| workload | side | events/s per round | median | B/A per round (median) | ack p50 / p99 (ms) | CPU in process: broker / client | CPU nats-server |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---|---:|---:|---:|");
    for r in throughput_rows(p) {
        let Row {
            workload,
            side,
            rates,
            ratios,
            median_run,
        } = r;
        let ratio = ratios.map_or("".into(), |v| {
            let m = median(&v);
            let aim = if m >= AIM_RATIO { "" } else { " **below 0.8**" };
            format!("{} ({m:.2}){aim}", fmt_list(&v, 2))
        });
        let lat = if median_run.run.lat.p99 > 0 {
            format!(
                "{} / {}",
                ms(median_run.run.lat.p50),
                ms(median_run.run.lat.p99)
            )
        } else {
            "n/a".into()
        };
        let _ = writeln!(
            out,
            "| {workload} | {side} | {} | {:.0} | {ratio} | {lat} | {} | {:.2} |",
            fmt_list(&rates, 0),
            median(&rates),
            median_run.run.cpu.show(),
            median_run.nats,
        );
    }
    let _ = writeln!(
        out,
        "\nLatency at a fixed rate, corrected for coordinated omission (ms; the round with the median p99 of each side):\n"
    );
    let _ = writeln!(
        out,
        "| side | delivered / sent | publish→receipt p50 / p99 / p99.9 / max | publish→ack p50 / p99 | receipt p99 per round | B − A p99 per round (ms) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---|---|");
    for l in latency_rows(p) {
        let e = l.median.e2e;
        let delta = l.delta_p99_us.map_or(String::new(), |v| {
            let ms: Vec<f64> = v.iter().map(|d| d / 1e3).collect();
            let worst = v.iter().copied().fold(f64::MIN, f64::max);
            let aim = if worst <= AIM_P99_US {
                ""
            } else {
                " **above +1 ms**"
            };
            format!("{}{aim}", fmt_list(&ms, 2))
        });
        let _ = writeln!(
            out,
            "| {} | {} / {} | {} / {} / {} / {} | {} / {} | {} | {delta} |",
            l.side,
            l.median.delivered,
            l.median.sent,
            ms(e.p50),
            ms(e.p99),
            ms(e.p999),
            ms(e.max),
            ms(l.median.publish.p50),
            ms(l.median.publish.p99),
            l.p99s
                .iter()
                .map(|&u| ms(u))
                .collect::<Vec<_>>()
                .join(" / "),
        );
    }
    let _ = writeln!(out);
}

/// One throughput line: a workload on one side.
struct Row {
    workload: &'static str,
    side: String,
    /// Events/s in round order.
    rates: Vec<f64>,
    /// B/A within each round; `None` on A's line.
    ratios: Option<Vec<f64>>,
    /// The run with the median rate (its latency and CPU are shown).
    median_run: JsRun,
}

fn row(workload: &'static str, side: String, runs: &[JsRun], a: Option<&[JsRun]>) -> Row {
    let rate = |r: &JsRun| r.run.rate();
    let rates: Vec<f64> = runs.iter().map(rate).collect();
    let mut sorted = runs.to_vec();
    sorted.sort_by(|x, y| rate(x).total_cmp(&rate(y)));
    Row {
        workload,
        side,
        ratios: a.map(|a| runs.iter().zip(a).map(|(b, a)| rate(b) / rate(a)).collect()),
        median_run: sorted[sorted.len() / 2].clone(),
        rates,
    }
}

fn throughput_rows(p: &PerReplicas) -> Vec<Row> {
    let mut rows = vec![row(
        "streamed publish",
        "A: JetStream, 1000 acks in flight".into(),
        &p.a_publish,
        None,
    )];
    for (shape, runs) in b_shapes().iter().zip(&p.b_publish) {
        rows.push(row(
            "streamed publish",
            format!("B: broker, {}", shape.label()),
            runs,
            Some(&p.a_publish),
        ));
    }
    rows.push(row(
        "consume, ack each",
        "A: JetStream pull consumer, max_ack_pending 1000".into(),
        &p.a_consume,
        None,
    ));
    rows.push(row(
        "consume, ack each",
        "B: broker, 1 member, credit 1000".into(),
        &p.b_consume,
        Some(&p.a_consume),
    ));
    rows
}

/// One latency line.
struct LatencyRow {
    side: &'static str,
    /// The run with the median publish→receipt p99.
    median: Latency,
    /// publish→receipt p99 per round, us.
    p99s: Vec<u64>,
    /// B − A p99 per round, us; `None` on A's line.
    delta_p99_us: Option<Vec<f64>>,
}

fn latency_row(side: &'static str, runs: &[Latency], a: Option<&[Latency]>) -> LatencyRow {
    let p99s: Vec<u64> = runs.iter().map(|l| l.e2e.p99).collect();
    let mut idx: Vec<usize> = (0..runs.len()).collect();
    idx.sort_by_key(|&i| p99s[i]);
    let m = &runs[idx[idx.len() / 2]];
    LatencyRow {
        side,
        median: Latency {
            sent: m.sent,
            delivered: m.delivered,
            e2e: m.e2e,
            publish: m.publish,
        },
        delta_p99_us: a.map(|a| {
            runs.iter()
                .zip(a)
                .map(|(b, a)| b.e2e.p99 as f64 - a.e2e.p99 as f64)
                .collect()
        }),
        p99s,
    }
}

fn latency_rows(p: &PerReplicas) -> Vec<LatencyRow> {
    vec![
        latency_row("A: JetStream, pull consumer", &p.a_latency, None),
        latency_row("B: broker, 1 member", &p.b_latency, Some(&p.a_latency)),
    ]
}
