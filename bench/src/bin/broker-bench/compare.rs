//! The side-by-side of the security variants: per workload, each
//! variant's events/s and the per-round ratio on/off of runs that ran back
//! to back, for TLS (at each encryption setting) and for encryption at
//! rest (at each TLS setting).

use std::fmt::Write as _;

use mesh_bench::stats::{fmt_list, median};

use crate::{
    rounds::{Results, Runs},
    security::Variant,
    stats::{Run, summarize},
};

/// The aim of issue 11: TLS may cost streamed publish and consume at most
/// this fraction of their throughput.
pub const TLS_AIM: f64 = 0.15;

/// What one workload measured under the "off" and the "on" variant.
struct Row<'a> {
    /// The workload, as in the variants' own tables.
    name: String,
    /// Whether the aim applies (streamed publish or consume).
    kind: Kind,
    off: &'a [Run],
    on: &'a [Run],
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Publish,
    Consume,
    Other,
}

/// The per-round ratios on / off, in round order.
fn round_ratios(row: &Row) -> Vec<f64> {
    row.on
        .iter()
        .zip(row.off)
        .map(|(on, off)| on.rate() / off.rate())
        .collect()
}

/// Every workload both variants ran, in the order of the report.
fn rows<'a>(r: &Results, off: &'a Runs, on: &'a Runs) -> Vec<Row<'a>> {
    let mut v = Vec::new();
    let mut push = |name: String, kind, off: &'a [Run], on: &'a [Run]| {
        if !off.is_empty() && off.len() == on.len() {
            v.push(Row {
                name,
                kind,
                off,
                on,
            });
        }
    };
    for (i, s) in r.publish_shapes.iter().enumerate() {
        let name = format!("Publish stream {}", s.label());
        push(name, Kind::Publish, &off.publish[i], &on.publish[i]);
    }
    push(
        "PublishUnary, sequential".into(),
        Kind::Other,
        &off.unary,
        &on.unary,
    );
    for (i, s) in r.baseline_shapes.iter().enumerate() {
        let name = format!("storage only {}", s.label());
        push(name, Kind::Other, &off.baseline[i], &on.baseline[i]);
    }
    push(
        "consume prefill (Publish 4 × 100 events × 10 req)".into(),
        Kind::Publish,
        &off.prefill,
        &on.prefill,
    );
    for (i, (members, credit)) in r.consume_shapes.iter().enumerate() {
        let name = format!("consume, {members} member(s), credit {credit}");
        push(name, Kind::Consume, &off.consume[i], &on.consume[i]);
    }
    v
}

/// `1 - ratio` in whole percent, without a "-0".
fn cost_pct(ratio: f64) -> f64 {
    let c = ((1.0 - ratio) * 100.0).round();
    if c == 0.0 { 0.0 } else { c }
}

/// Microseconds of CPU per event: `cores` busy at `rate` events/s.
fn us_per_event(cores: f64, rate: f64) -> f64 {
    cores * 1e6 / rate
}

/// One table: `on` against `off` for every workload; returns the rows'
/// (kind, name, off median rate, median ratio) for the verdicts.
fn table(
    out: &mut String,
    r: &Results,
    title: &str,
    pair: (usize, usize),
) -> Vec<(Kind, String, f64, f64)> {
    let (off, on) = (&r.runs[pair.0], &r.runs[pair.1]);
    let _ = writeln!(
        out,
        "#### {title}\n\n{} → {}\n\n\
         | workload | off: events/s (median) | on: events/s (median) | on / off per round | median on / off | cost | broker CPU µs/event off → on | client CPU µs/event off → on |\n\
         |---|---:|---:|---|---:|---:|---:|---:|",
        r.variants[pair.0].label(),
        r.variants[pair.1].label()
    );
    let mut summary = Vec::new();
    for row in rows(r, off, on) {
        let (m_off, _) = summarize(row.off);
        let (m_on, _) = summarize(row.on);
        let ratios = round_ratios(&row);
        let med = median(&ratios);
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {} | {med:.2} | {}% | {:.1} → {:.1} | {:.1} → {:.1} |",
            row.name,
            m_off.rate(),
            m_on.rate(),
            fmt_list(&ratios, 2),
            cost_pct(med),
            us_per_event(m_off.cpu.broker, m_off.rate()),
            us_per_event(m_on.cpu.broker, m_on.rate()),
            us_per_event(m_off.cpu.client, m_off.rate()),
            us_per_event(m_on.cpu.client, m_on.rate()),
        );
        summary.push((row.kind, row.name, m_off.rate(), med));
    }
    let _ = writeln!(out);
    summary
}

/// The TLS aim for one kind of workload: its fastest shape (by the off
/// median, the shape the throughput targets are read from) and the worst
/// cost over all its shapes.
fn verdict(out: &mut String, rows: &[(Kind, String, f64, f64)], kind: Kind, what: &str) {
    let of_kind: Vec<_> = rows.iter().filter(|x| x.0 == kind).collect();
    let Some(best) = of_kind.iter().max_by(|a, b| a.2.total_cmp(&b.2)) else {
        return;
    };
    let worst = of_kind
        .iter()
        .min_by(|a, b| a.3.total_cmp(&b.3))
        .expect("of_kind is not empty");
    let cost = 1.0 - best.3;
    let _ = writeln!(
        out,
        "- aim: TLS costs {what} under {:.0}%: {} — {}% on the fastest shape ({}); \
         worst shape {}% ({})",
        TLS_AIM * 100.0,
        if cost < TLS_AIM { "met" } else { "NOT met" },
        cost_pct(best.3),
        best.1,
        cost_pct(worst.3),
        worst.1
    );
}

pub fn write(out: &mut String, r: &Results) {
    let _ = writeln!(
        out,
        "### Security: on / off side by side\n\n\
         Events/s are medians over the rounds; \"on / off per round\" divides runs made \
         back to back in the same round (the same disk state), and cost = 1 − the median \
         of those ratios. CPU per event: cores used (broker / clients, as in the tables \
         above) over events/s, of the median run; clients and broker share the same \
         cores, so client-side TLS work slows the broker too.\n"
    );
    let find = |v: Variant| r.variants.iter().position(|&x| x == v);
    for enc in [false, true] {
        let pair = (
            find(Variant { tls: false, enc }),
            find(Variant { tls: true, enc }),
        );
        if let (Some(a), Some(b)) = pair {
            let title = format!(
                "TLS on / off, encryption {}",
                if enc { "on" } else { "off" }
            );
            let rows = table(out, r, &title, (a, b));
            verdict(out, &rows, Kind::Publish, "streamed publish");
            verdict(out, &rows, Kind::Consume, "consume");
            let _ = writeln!(out);
        }
    }
    for tls in [false, true] {
        let pair = (
            find(Variant { tls, enc: false }),
            find(Variant { tls, enc: true }),
        );
        if let (Some(a), Some(b)) = pair {
            let title = format!(
                "Encryption at rest on / off, TLS {}",
                if tls { "on" } else { "off" }
            );
            table(out, r, &title, (a, b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_whole_percent_without_minus_zero() {
        assert_eq!(cost_pct(1.004).to_string(), "0");
        assert_eq!(cost_pct(0.85), 15.0);
        assert_eq!(cost_pct(1.06), -6.0);
    }

    #[test]
    fn ratios_pair_runs_of_the_same_round() {
        let run = |events| Run {
            events,
            secs: 1.0,
            ..Run::default()
        };
        let (off, on) = (vec![run(100), run(200)], vec![run(90), run(100)]);
        let row = Row {
            name: "x".into(),
            kind: Kind::Other,
            off: &off,
            on: &on,
        };
        assert_eq!(round_ratios(&row), [0.9, 0.5]);
    }
}
