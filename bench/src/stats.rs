//! Formatting helpers of the markdown report, and latency percentiles.

use hdrhistogram::Histogram;
use mesh_log::FsyncPolicy;

pub fn policy_name(p: FsyncPolicy) -> String {
    match p {
        FsyncPolicy::Always => "always".to_string(),
        FsyncPolicy::Interval(d) => format!("interval {} ms", d.as_millis()),
    }
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

/// Latency percentiles of one run, in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile (progress output only; the tables show p50 / p99).
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl Percentiles {
    /// Percentiles of latency samples in microseconds (3 significant
    /// digits; samples above an hour count as an hour).
    pub fn of(samples_us: impl IntoIterator<Item = u64>) -> Percentiles {
        let mut h =
            Histogram::<u64>::new_with_max(3_600_000_000, 3).expect("constant bounds are valid");
        for v in samples_us {
            h.saturating_record(v);
        }
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
}
