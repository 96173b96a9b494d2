//! Value parsers of the benchmarks' clap flags, and the off/on/both
//! switches they share.

/// A feature run off, on, or both side by side (`--tls`, `--encryption`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    Off,
    On,
    Both,
}

impl OnOff {
    /// The settings to run, off first.
    pub fn values(self) -> Vec<bool> {
        match self {
            OnOff::Off => vec![false],
            OnOff::On => vec![true],
            OnOff::Both => vec![false, true],
        }
    }
}

/// A number of seconds: finite and above zero.
pub fn positive_f64(v: &str) -> Result<f64, String> {
    let x: f64 = v.parse().map_err(|_| format!("not a number: {v}"))?;
    if x.is_finite() && x > 0.0 {
        Ok(x)
    } else {
        Err("must be positive".to_string())
    }
}

/// A count above zero.
pub fn positive<T: std::str::FromStr + Default + PartialEq>(v: &str) -> Result<T, String> {
    let x: T = v.parse().map_err(|_| format!("not a number: {v}"))?;
    if x == T::default() {
        Err("must be positive".to_string())
    } else {
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_nan_and_words_are_refused() {
        assert_eq!(positive_f64("1.5"), Ok(1.5));
        for v in ["0", "-1", "NaN", "inf", "x"] {
            assert!(positive_f64(v).is_err(), "{v}");
        }
        assert_eq!(positive::<u64>("7"), Ok(7));
        assert!(positive::<u64>("0").is_err());
        assert!(positive::<usize>("x").is_err());
    }
}
