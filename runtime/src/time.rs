//! Protobuf well-known time types to and from what Rust code uses:
//! microseconds since the epoch (the broker log's timestamps) and std
//! `Duration`/`SystemTime`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since the epoch (negative before it) as a Timestamp.
pub fn timestamp(us: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// A Timestamp as microseconds since the epoch, saturating.
pub fn micros(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1_000_000)
        .saturating_add(ts.nanos as i64 / 1000)
}

/// A point in time as a Timestamp; before the epoch counts as the epoch.
pub fn system_time(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Now, as a Timestamp.
pub fn now() -> prost_types::Timestamp {
    system_time(SystemTime::now())
}

pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A protobuf duration as a std one; `None` if negative or malformed.
pub fn std_duration(d: &prost_types::Duration) -> Option<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return None;
    }
    Some(Duration::new(d.seconds as u64, d.nanos as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_including_before_the_epoch() {
        for us in [0, 1, 1_700_000_000_123_456, -1, -1_500_000] {
            assert_eq!(micros(&timestamp(us)), us);
        }
    }

    #[test]
    fn durations_round_trip_and_negative_ones_are_refused() {
        let d = Duration::new(3, 5_000);
        assert_eq!(std_duration(&duration(d)), Some(d));
        let neg = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(std_duration(&neg), None);
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(micros(&system_time(t)), 1_700_000_000_123_456);
    }
}
