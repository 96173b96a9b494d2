//! What a run measured, and the report's summaries of runs; percentiles,
//! `median` and `fmt_list` are the mesh-bench library's.

use mesh_bench::{
    PAYLOAD,
    stats::{Percentiles, fmt_list, median},
};

use crate::cpu::Cpu;

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

/// Microseconds as milliseconds with two decimals.
pub fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1e3)
}
