//! The markdown report on stdout: the run, then each security variant's
//! tables, then (with several variants) their comparison (`compare.rs`).

use std::fmt::Write as _;

use mesh_bench::stats::fmt_list;

use crate::{
    args::Args,
    compare,
    publish::Shape,
    rounds::{Results, Runs},
    security::Variant,
    stats::{Run, ms, ratios, summarize},
};

pub fn write(args: &Args, r: &Results) -> String {
    let mut out = String::new();
    let (workers, cores) = (r.workers, r.cores);
    let _ = writeln!(
        out,
        "broker-bench{}: mesh_broker::run in-process on 127.0.0.1, default BrokerConfig with \
         fsync = {}, {} round(s); tokio runtimes: broker {workers} workers, clients {workers} \
         workers, on {cores} cores shared by both; 1 KiB events (data 1024 B, unique id, no \
         subject); dir {}\n",
        if args.quick { " --quick" } else { "" },
        args.fsync.name(),
        args.rounds,
        args.dir.display()
    );
    let _ = writeln!(
        out,
        "Raw disk probe at the start of each round (272 KiB pwrite + fdatasync in a loop): \
         {} fdatasync/s, {} MB/s.\n",
        fmt_list(&r.probes.iter().map(|p| p.0).collect::<Vec<_>>(), 0),
        fmt_list(&r.probes.iter().map(|p| p.1).collect::<Vec<_>>(), 0)
    );
    let several = r.variants.len() > 1;
    if several || r.variants[0] != Variant::PLAIN {
        let _ = writeln!(
            out,
            "Security variants, in this order back to back within every scenario of a round: {}. \
             TLS on: mutual TLS with a development PKI (mesh-certs), auth = \"mtls\", \
             acl_file = deploy/mesh/acl.toml, every client connecting as `admin` over https \
             (each stream its own TCP connection and TLS session); off: plaintext, auth = \
             \"none\". Encryption on: storage.encryption_key_file = the PKI's log.key.\n",
            r.variants
                .iter()
                .map(Variant::label)
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    for (variant, v) in r.variants.iter().zip(&r.runs) {
        if several {
            let _ = writeln!(out, "## {}\n", variant.label());
        }
        if v.publish.iter().any(|x| !x.is_empty())
            || v.baseline.iter().any(|x| !x.is_empty())
            || !v.unary.is_empty()
        {
            publish(&mut out, args, r, v);
        }
        if !v.prefill.is_empty() {
            consume(&mut out, args, r, v);
        }
        if !v.latency.is_empty() {
            latency(&mut out, args, v);
        }
    }
    if several {
        compare::write(&mut out, r);
    }
    out
}

fn publish(out: &mut String, args: &Args, r: &Results, v: &Runs) {
    let _ = writeln!(
        out,
        "### Publish\n\nEach run: a fresh broker and topic; stop at {} events or {} s. \
         Median of the rounds; per round in order. Latency: request sent to its \
         response received. CPU in cores (of {}), broker / clients.\n",
        args.events, args.seconds, r.cores
    );
    let _ = writeln!(
        out,
        "| API | streams × events per request × requests in flight per stream | events in flight | events/s (median) | MB/s | per round, events/s | ack p50 / p99 (ms) | CPU broker / client |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---|---:|---:|");
    for (i, s) in r.publish_shapes.iter().enumerate() {
        if v.publish[i].is_empty() {
            continue;
        }
        let in_flight = s.streams * s.batch * s.requests_per_stream();
        grpc_row(out, "Publish stream", &s.label(), in_flight, &v.publish[i]);
    }
    if !v.unary.is_empty() {
        grpc_row(out, "PublishUnary, sequential", "1 × 1 × 1", 1, &v.unary);
    }
    for (i, s) in r.baseline_shapes.iter().enumerate() {
        if v.baseline[i].is_empty() {
            continue;
        }
        let (m, rates) = summarize(&v.baseline[i]);
        let c = m.cpu.broker + m.cpu.client;
        let _ = writeln!(
            out,
            "| storage only, no gRPC (baseline) | {} | {} | {} | | {c:.2} total |",
            s.label(),
            s.streams * s.batch * s.requests_per_stream(),
            rate_cells(&m, &rates),
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Ratios within each round (same disk state):\n");
    let find = |shapes: &[Shape], s: (usize, usize, usize)| {
        shapes
            .iter()
            .position(|x| (x.streams, x.batch, x.in_flight) == s)
    };
    let pairs = [
        ((4, 100, 1000), (1, 1, 1024), "4 × 100 vs 1 × 1 (batching)"),
        (
            (4, 100, 1000),
            (1, 100, 1000),
            "4 streams vs 1, 100 per request",
        ),
        ((4, 1, 1024), (1, 1, 1024), "4 streams vs 1, 1 per request"),
        (
            (4, 100, 4000),
            (4, 100, 1000),
            "4 × 100, 4000 vs 1000 in flight",
        ),
    ];
    for (a, b, text) in pairs {
        if let (Some(a), Some(b)) = (find(&r.publish_shapes, a), find(&r.publish_shapes, b))
            && !v.publish[a].is_empty()
            && !v.publish[b].is_empty()
        {
            let _ = writeln!(out, "- {text}: {}", ratios(&v.publish[a], &v.publish[b]));
        }
    }
    for (bs, ps) in [
        ((1, 100, 1000), (1, 100, 1000)),
        ((1, 1, 1024), (1, 1, 1024)),
    ] {
        if let (Some(a), Some(b)) = (find(&r.publish_shapes, ps), find(&r.baseline_shapes, bs))
            && !v.publish[a].is_empty()
            && !v.baseline[b].is_empty()
        {
            let _ = writeln!(
                out,
                "- gRPC vs storage only, {} per request: {}",
                ps.1,
                ratios(&v.publish[a], &v.baseline[b])
            );
        }
    }
    let best = v
        .publish
        .iter()
        .filter(|r| !r.is_empty())
        .map(|r| summarize(r).0.rate())
        .fold(0.0, f64::max);
    if best > 0.0 {
        let _ = writeln!(
            out,
            "- target >= 300000 events/s streamed publish, fsync = {}: {} (best median {:.0})",
            args.fsync.name(),
            if best >= 300_000.0 { "met" } else { "NOT met" },
            best
        );
    }
    let _ = writeln!(out);
}

/// The cells "events/s (median) | MB/s | per round, events/s" of every
/// throughput table.
fn rate_cells(m: &Run, rates: &[f64]) -> String {
    format!("{:.0} | {:.1} | {}", m.rate(), m.mb_s(), fmt_list(rates, 0))
}

/// One gRPC row of the publish table: the median of `runs`, the per-round
/// rates, ack latency and CPU.
fn grpc_row(out: &mut String, api: &str, shape: &str, in_flight: usize, runs: &[Run]) {
    let (m, rates) = summarize(runs);
    let _ = writeln!(
        out,
        "| {api} | {shape} | {in_flight} | {} | {} / {} | {} |",
        rate_cells(&m, &rates),
        ms(m.lat.p50),
        ms(m.lat.p99),
        m.cpu.show()
    );
}

fn consume(out: &mut String, args: &Args, r: &Results, v: &Runs) {
    let (pm, _) = summarize(&v.prefill);
    let _ = writeln!(
        out,
        "### Consume\n\nThe topic is filled with up to {} events by 4 Publish streams \
         of 100 events per request ({} events/s, per round {}); then each run is a new \
         group reading it from the start (events in the page cache), every Deliveries \
         message acked with one Ack. A run ends when all events were delivered or after \
         {} s, and counts only if the group then commits every acked event.\n",
        args.prefill,
        pm.rate() as u64,
        fmt_list(&v.prefill.iter().map(Run::rate).collect::<Vec<_>>(), 0),
        args.consume_seconds
    );
    let _ = writeln!(
        out,
        "| members | credit per member | events | events/s consumed + acked (median) | MB/s | per round, events/s | CPU broker / client |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---|---:|");
    for (i, (members, credit)) in r.consume_shapes.iter().enumerate() {
        let (m, rates) = summarize(&v.consume[i]);
        let _ = writeln!(
            out,
            "| {members} | {credit} | {} | {} | {} |",
            m.events,
            rate_cells(&m, &rates),
            m.cpu.show()
        );
    }
    let best = v
        .consume
        .iter()
        .map(|r| summarize(r).0.rate())
        .fold(0.0, f64::max);
    let _ = writeln!(
        out,
        "\n- target >= 370000 events/s consumed + acked: {} (best median {:.0})\n",
        if best >= 370_000.0 { "met" } else { "NOT met" },
        best
    );
}

fn latency(out: &mut String, args: &Args, v: &Runs) {
    let _ = writeln!(
        out,
        "### End-to-end latency\n\nOne Publish stream sends {} events/s (one event per \
         request, paced every 1 ms) for {} s while one group member (credit 1000) \
         receives and acks them. Publish → deliver = delivery received minus the time \
         the event was due on the 1 ms schedule (carried in its data), so a publisher \
         that falls behind counts the delay against every event it held up.\n",
        args.rate, args.latency_seconds
    );
    let _ = writeln!(
        out,
        "| round | sent | delivered | publish → deliver p50 / p99 / max (ms) | publish → ack p50 / p99 (ms) |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|");
    for (i, l) in v.latency.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} / {} / {} | {} / {} |",
            i + 1,
            l.sent,
            l.delivered,
            ms(l.e2e.p50),
            ms(l.e2e.p99),
            ms(l.e2e.max),
            ms(l.publish.p50),
            ms(l.publish.p99)
        );
    }
}
