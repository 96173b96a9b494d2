//! What a run measured, latency percentiles, and the number formats of
//! the report.

use hdrhistogram::Histogram;

use crate::{PAYLOAD, cpu::Cpu};

/// An empty latency histogram in microseconds: 3 significant digits, up
/// to an hour (larger samples count as an hour with `saturating_record`).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_max(3_600_000_000, 3).expect("constant bounds are valid")
}

/// Latency percentiles of one run, in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile (progress output only; the tables keep their columns).
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    /// "p50 us p99 us p99.9 us max us", for the progress lines.
    pub fn show_us(&self) -> String {
        format!(
            "p50 {} us p99 {} us p99.9 {} us max {} us",
            self.p50, self.p99, self.p999, self.max
        )
    }
}

/// One load run.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// Events acknowledged (publish) or delivered and acked (consume).
    pub events: u64,
    /// From the start to the last answer.
    pub secs: f64,
    /// Per-request latency; zero where the scenario does not measure it.
    pub lat: Percentiles,
    /// CPU split over `secs`.
    pub cpu: Cpu,
}

impl Run {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.secs
    }
    pub fn mb_s(&self) -> f64 {
        self.rate() * PAYLOAD as f64 / 1e6
    }
}

/// Median run by rate, and the per-round rates.
pub fn summarize(runs: &[Run]) -> (Run, Vec<f64>) {
    let rates: Vec<f64> = runs.iter().map(Run::rate).collect();
    let mut v = runs.to_vec();
    v.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    (v[v.len() / 2].clone(), rates)
}

/// Per-round rate ratios of two scenarios, and their median.
pub fn ratios(a: &[Run], b: &[Run]) -> String {
    let v: Vec<f64> = a.iter().zip(b).map(|(x, y)| x.rate() / y.rate()).collect();
    format!("{} (median {:.2})", fmt_list(&v, 2), median(&v))
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

pub fn fmt_list(v: &[f64], prec: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.prec$}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Microseconds as milliseconds with two decimals.
pub fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1e3)
}
