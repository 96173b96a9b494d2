//! Conversions between the log's records and the API's messages.

use std::time::Duration;

use mesh_log::Record;
use mesh_proto::events::v1::{Event, StoredEvent};
use prost::Message;

use crate::error::{BrokerError, Result};

pub fn timestamp(us: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1000) as i32,
    }
}

pub fn micros(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1_000_000)
        .saturating_add(ts.nanos as i64 / 1000)
}

pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A protobuf duration as a std one; negative or malformed is an error
/// naming `field`.
pub fn std_duration(d: &prost_types::Duration, field: &str) -> Result<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(BrokerError::invalid(
            field,
            "must be a non-negative duration",
        ));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// Decodes a stored record back into the event the API delivers.
pub fn stored_event(topic: &str, r: &Record) -> Result<StoredEvent> {
    let event = Event::decode(r.payload.clone()).map_err(|e| {
        BrokerError::FailedPrecondition(format!(
            "record at offset {} of topic {topic:?} is not an event envelope: {e}",
            r.offset
        ))
    })?;
    Ok(StoredEvent {
        topic: topic.to_string(),
        partition: 0,
        offset: r.offset,
        publish_time: Some(timestamp(r.timestamp_us)),
        event: Some(event),
    })
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
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
}
