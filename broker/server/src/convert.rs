//! Conversions between stored records and the API's messages. The
//! time conversions are `mesh_runtime::time`'s and the clock is the log's
//! (`mesh_log::now_us`, the clock record timestamps come from), re-exported
//! here for the handlers.

use std::time::Duration;

use bytes::Bytes;
use mesh_log::Record;
use mesh_proto::events::v1::{Event, StoredEvent};
use prost::Message;

use crate::error::{BrokerError, Result};

pub use mesh_log::now_us;
pub use mesh_runtime::time::{duration, micros, timestamp};

/// A protobuf duration as a std one; negative or malformed is an error
/// naming `field`.
pub fn std_duration(d: &prost_types::Duration, field: &str) -> Result<Duration> {
    mesh_runtime::time::std_duration(d)
        .ok_or_else(|| BrokerError::invalid(field, "must be a non-negative duration"))
}

/// One stored event, as read: its payload is the encoded event envelope.
#[derive(Clone, Debug)]
pub struct StoredRecord {
    /// Its position in the topic.
    pub offset: u64,
    /// When it was published (wall clock, microseconds since the epoch).
    pub timestamp_us: i64,
    /// The encoded `Event`; shares the read buffer.
    pub payload: Bytes,
    /// How the group's consumer handed it over (JetStream backend);
    /// `None` for a read from the topic itself.
    pub delivery: Option<Delivery>,
}

/// One delivery of an event by a group's JetStream consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Where its settlement (ack, nak, progress, term) goes.
    pub reply: std::sync::Arc<str>,
    /// Deliveries so far, this one included, as JetStream counts them.
    pub delivered: u32,
}

impl From<Record> for StoredRecord {
    fn from(r: mesh_log::Record) -> Self {
        StoredRecord {
            offset: r.offset,
            timestamp_us: r.timestamp_us,
            payload: r.payload,
            delivery: None,
        }
    }
}

/// Decodes a stored record back into the event the API delivers.
pub fn stored_event(topic: &str, r: &StoredRecord) -> Result<StoredEvent> {
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
