//! Exponential backoff with jitter, for reconnects and retries.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    /// The next delay: doubles up to the cap, with up to 25% jitter so that
    /// many clients do not reconnect in lockstep.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.subsec_nanos())
            .unwrap_or(0);
        d + d.mul_f64((nanos % 250) as f64 / 1000.0)
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
        let d: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(10) && d[0] < Duration::from_millis(13));
        assert!(d[3] >= Duration::from_millis(80));
        assert!(d[5] < Duration::from_millis(101));
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(13));
    }
}
