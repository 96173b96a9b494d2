//! Typed domain events in the broker's envelope.

use bytes::Bytes;
use mesh_proto::{DomainEvent, events::v1::Event};

/// One event as a consumer receives it.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub topic: String,
    pub offset: u64,
    /// 1 on first delivery.
    pub attempt: u32,
    pub publish_time_us: i64,
    pub event: Event,
}

/// Why a handler failed; the event is nacked with this reason and
/// redelivered (after `delay`, if set, or the broker's backoff).
#[derive(Clone, Debug)]
pub struct HandlerError {
    pub reason: String,
    pub delay: Option<std::time::Duration>,
}

impl HandlerError {
    pub fn new(reason: impl Into<String>) -> Self {
        HandlerError {
            reason: reason.into(),
            delay: None,
        }
    }

    pub fn retry_after(reason: impl Into<String>, delay: std::time::Duration) -> Self {
        HandlerError {
            reason: reason.into(),
            delay: Some(delay),
        }
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl From<crate::SdkError> for HandlerError {
    fn from(e: crate::SdkError) -> Self {
        HandlerError::new(e.to_string())
    }
}

impl Delivered {
    /// Whether the event is of type `E`.
    pub fn is<E: DomainEvent>(&self) -> bool {
        self.event.r#type == E::TYPE
    }

    /// Decodes the payload as `E`, checking the event type first.
    pub fn decode<E: DomainEvent>(&self) -> Result<E, HandlerError> {
        if !self.is::<E>() {
            return Err(HandlerError::new(format!(
                "event {} is a {:?}, not a {}",
                self.event.id,
                self.event.r#type,
                E::TYPE
            )));
        }
        E::decode(self.event.data.clone()).map_err(|e| {
            HandlerError::new(format!(
                "event {} does not decode as {}: {e}",
                self.event.id,
                E::TYPE
            ))
        })
    }
}

/// Wraps a domain event in the envelope: `type` and content type are set
/// from `E`, `subject` is the ordering key.
pub fn envelope<E: DomainEvent>(
    id: impl Into<String>,
    source: &str,
    subject: &str,
    msg: &E,
) -> Event {
    Event {
        id: id.into(),
        source: source.to_string(),
        spec_version: "1.0".into(),
        r#type: E::TYPE.into(),
        subject: subject.to_string(),
        time: Some(mesh_runtime::time::now()),
        datacontenttype: "application/protobuf".into(),
        data: Bytes::from(msg.encode_to_vec()),
        attributes: Default::default(),
    }
}

/// The id of an event published in reaction to another: the same input
/// always gives the same id, so a handler that crashes after publishing
/// and runs again publishes a duplicate the broker drops.
pub fn derive_id(what: &str, input_event_id: &str) -> String {
    format!("{what}/{input_event_id}")
}

/// The span of handling one delivered event: a child of the context the
/// event carries (the broker's publish span), so that one order is one
/// trace across every service. A span link would fit handlers that take
/// batches of unrelated events; ours take one event at a time, and a
/// child keeps the whole path in one trace a tracing UI can show.
pub fn process_span(d: &Delivered, group: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "process",
        otel.name = %format!("process {}", d.topic),
        otel.kind = "consumer",
        messaging.system = "mesh",
        messaging.destination.name = %d.topic,
        messaging.operation.type = "process",
        messaging.message.id = %d.event.id,
        messaging.consumer.group.name = %group,
        messaging.mesh.offset = d.offset,
        messaging.mesh.delivery_attempt = d.attempt,
        trace_id = tracing::field::Empty,
    );
    if mesh_telemetry::enabled() {
        mesh_telemetry::continue_from(&span, &d.event.attributes);
        span.record("trace_id", mesh_telemetry::trace_id(&span));
    }
    span
}

#[cfg(test)]
mod tests {
    use mesh_proto::shipping::v1::{Shipment, ShipmentScheduled};

    use super::*;

    #[test]
    fn envelope_round_trip_and_type_check() {
        let msg = ShipmentScheduled {
            shipment: Some(Shipment {
                order_id: "o1".into(),
                ..Default::default()
            }),
        };
        let ev = envelope("id-1", "/test", "o1", &msg);
        let d = Delivered {
            topic: "shipments".into(),
            offset: 0,
            attempt: 1,
            publish_time_us: 0,
            event: ev,
        };
        assert_eq!(d.decode::<ShipmentScheduled>().unwrap(), msg);
        assert!(
            d.decode::<mesh_proto::billing::v1::PaymentAuthorized>()
                .is_err()
        );
        assert_eq!(
            derive_id("payment", "order-1"),
            derive_id("payment", "order-1")
        );
    }
}
