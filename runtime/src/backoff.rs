//! Exponential backoff: the plain formula (the broker's redelivery delay)
//! and a stateful [`Backoff`] with jitter for reconnects and retries.

use std::time::Duration;

/// The delay before attempt `attempt` (1-based): `base` for the first,
/// doubling each time, never more than `max`.
pub fn exponential(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    base.saturating_mul(1u32 << exp).min(max)
}

/// Reconnect and retry delays: [`exponential`] from `min` to `max`, plus up
/// to 25% jitter so that many clients do not reconnect in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    /// The attempt the next delay is for (1 after a reset).
    attempt: u32,
    /// The first delay, and the base of the doubling.
    min: Duration,
    /// The cap of the doubling (before jitter).
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
            attempt: 1,
            min,
            max,
        }
    }

    /// The next delay: doubles up to the cap, with up to 25% jitter.
    pub fn next_delay(&mut self) -> Duration {
        let d = exponential(self.min, self.max, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.subsec_nanos())
            .unwrap_or(0);
        d + d.mul_f64((nanos % 250) as f64 / 1000.0)
    }

    pub fn reset(&mut self) {
        self.attempt = 1;
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

    #[test]
    fn exponential_doubles_from_the_first_attempt_and_saturates() {
        let ms = Duration::from_millis;
        assert_eq!(exponential(ms(100), ms(60_000), 0), ms(100));
        assert_eq!(exponential(ms(100), ms(60_000), 1), ms(100));
        assert_eq!(exponential(ms(100), ms(60_000), 3), ms(400));
        assert_eq!(exponential(ms(100), ms(60_000), 40), ms(60_000));
        assert_eq!(exponential(Duration::MAX, Duration::MAX, 40), Duration::MAX);
    }
}
