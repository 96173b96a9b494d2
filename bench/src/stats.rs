//! Latency percentiles and the number formats of the markdown reports.

use hdrhistogram::Histogram;

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
    /// The percentiles of `h`; all zero if it is empty.
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

/// The middle value (the upper one of an even count); `v` must not be empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// `v` with `prec` decimals, joined by " / " (the per-round columns).
pub fn fmt_list(v: &[f64], prec: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.prec$}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_median_and_lists() {
        assert_eq!(Percentiles::of(&histogram()).max, 0);
        let mut h = histogram();
        for v in 1..=1000 {
            h.saturating_record(v);
        }
        h.saturating_record(u64::MAX);
        let p = Percentiles::of(&h);
        assert!(p.p50 <= p.p99 && p.p99 <= p.p999 && p.p999 <= p.max);
        assert!(p.max >= 3_000_000_000);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 4.0);
        assert_eq!(fmt_list(&[1.0, 2.26], 1), "1.0 / 2.3");
    }
}
