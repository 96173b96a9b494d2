//! The Publish stream and its unary twin.
//!
//! Requests on one stream are validated and queued to the log in the order
//! they arrive, so per-key order holds across a publisher's batches; their
//! appends then complete concurrently and share group-commit fsyncs with
//! every other stream. At most `limits.max_publish_in_flight` requests of a
//! stream wait for their fsync at once; past that the broker stops reading
//! the stream, which pushes back on the client through HTTP/2 flow control.

use std::sync::Arc;

use bytes::Bytes;
use mesh_log::{AppendRecord, PendingAppend};
use mesh_proto::broker::v1::{PublishRequest, PublishResponse, PublishResult};
use prost::Message;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::{
    auth::{Caller, Verb},
    error::{BrokerError, Result, to_proto},
    limits::StreamSlot,
    state::Shared,
};

pub type PublishStream = ReceiverStream<Result<PublishResponse, Status>>;

/// Spans of traced events in a request, by their index in it.
type Spans = Vec<(usize, tracing::Span)>;

/// The broker's span for one traced event: a child of the producer's
/// context, and the parent that consumers continue from, because its
/// context replaces the event's `traceparent` before the event is stored.
fn publish_span(topic: &str, ev: &mut mesh_proto::events::v1::Event) -> tracing::Span {
    let span = tracing::info_span!(
        "publish",
        otel.name = %format!("publish {topic}"),
        otel.kind = "server",
        messaging.system = "mesh",
        messaging.destination.name = %topic,
        messaging.operation.type = "receive",
        messaging.message.id = %ev.id,
        messaging.mesh.offset = tracing::field::Empty,
    );
    mesh_telemetry::continue_from(&span, &ev.attributes);
    mesh_telemetry::inject(&span, &mut ev.attributes);
    span
}

/// Checks a request and turns its events into log records.
fn encode(broker: &Shared, req: PublishRequest) -> Result<(String, Vec<AppendRecord>, Spans)> {
    let limits = &broker.cfg.limits;
    if req.events.is_empty() {
        return Err(BrokerError::invalid(
            "events",
            "must contain at least one event",
        ));
    }
    if req.events.len() > limits.max_batch_events {
        return Err(BrokerError::invalid(
            "events",
            format!(
                "{} events exceed limits.max_batch_events = {}",
                req.events.len(),
                limits.max_batch_events
            ),
        ));
    }
    let mut records = Vec::with_capacity(req.events.len());
    let mut spans = Vec::new();
    // Per-event spans cost only when spans are exported at all.
    let traced = mesh_telemetry::enabled();
    for (i, mut ev) in req.events.into_iter().enumerate() {
        if ev.id.is_empty() {
            return Err(BrokerError::invalid(
                format!("events[{i}].id"),
                "must not be empty",
            ));
        }
        if ev.spec_version.is_empty() {
            ev.spec_version = "1.0".into();
        }
        if traced && ev.attributes.contains_key("traceparent") {
            spans.push((i, publish_span(&req.topic, &mut ev)));
        }
        let size = ev.encoded_len();
        if size > limits.max_event_bytes {
            return Err(BrokerError::invalid(
                format!("events[{i}]"),
                format!(
                    "encoded size {size} bytes exceeds limits.max_event_bytes = {}",
                    limits.max_event_bytes
                ),
            ));
        }
        records.push(AppendRecord {
            id: Some(ev.id.clone()),
            payload: Bytes::from(ev.encode_to_vec()),
        });
    }
    Ok((req.topic, records, spans))
}

/// Validates and queues one request; the returned future resolves when it
/// is durable.
async fn submit(broker: &Shared, who: &Caller, req: PublishRequest) -> Result<PendingAppend> {
    // Before anything else: a denied request must not even auto-create
    // its topic.
    broker.auth.check(who, Verb::Publish, &req.topic, None)?;
    broker.publish_rate.take(&who.principal, req.events.len())?;
    broker.ensure_topic("topic", &req.topic).await?;
    let (topic, records, spans) = encode(broker, req)?;
    let pending = broker.storage.submit(&topic, records).await?;
    if spans.is_empty() {
        return Ok(pending);
    }
    // The publish spans end when the events are durable, so they show the
    // fsync wait, and carry the offsets assigned.
    Ok(PendingAppend::new(async move {
        let r = pending.await;
        if let Ok(acks) = &r {
            for (i, span) in &spans {
                if let Some(a) = acks.get(*i) {
                    span.record("messaging.mesh.offset", a.offset);
                }
            }
        }
        r
    }))
}

/// [`submit`], counted and timed for the metrics (receipt to durable).
async fn submit_metered(
    broker: &Shared,
    who: &Caller,
    req: PublishRequest,
) -> Result<PendingAppend> {
    let (started, topic) = (std::time::Instant::now(), req.topic.clone());
    let pending = submit(broker, who, req).await?;
    Ok(PendingAppend::new(async move {
        let r = pending.await;
        crate::metrics::record_append(&topic, started, &r);
        r
    }))
}

fn response(sequence: u64, r: Result<Vec<mesh_log::Appended>>) -> PublishResponse {
    match r {
        Ok(acks) => PublishResponse {
            sequence,
            results: acks
                .into_iter()
                .map(|a| PublishResult {
                    partition: 0,
                    offset: a.offset,
                    duplicate: a.duplicate,
                })
                .collect(),
            error: None,
        },
        Err(e) => PublishResponse {
            sequence,
            results: Vec::new(),
            error: Some(to_proto(&e)),
        },
    }
}

pub async fn publish_unary(
    broker: &Shared,
    who: &Caller,
    req: PublishRequest,
) -> Result<PublishResponse> {
    if broker.is_stopping() {
        return Err(BrokerError::ShuttingDown);
    }
    let seq = req.sequence;
    let pending = submit_metered(broker, who, req).await?;
    let acks = pending.await?;
    Ok(response(seq, Ok(acks)))
}

pub fn publish_stream(
    broker: Arc<Shared>,
    who: Caller,
    conn_slot: StreamSlot,
    mut inbound: Streaming<PublishRequest>,
) -> Result<PublishStream> {
    let slot = broker.publishers.clone().try_acquire_owned().map_err(|_| {
        BrokerError::ResourceExhausted(format!(
            "limits.max_publishers = {} publish streams are already open",
            broker.cfg.limits.max_publishers
        ))
    })?;
    let max = broker.cfg.limits.max_publish_in_flight;
    let (tx, rx) = mpsc::channel(max.min(1024));
    tokio::spawn(async move {
        let _slot = (slot, conn_slot, crate::metrics::Connected::publisher());
        let in_flight = Arc::new(Semaphore::new(max));
        let mut stopping = broker.stopping.clone();
        let mut shutting_down = false;
        // A request that was not valid protobuf ends the stream with its
        // INVALID_ARGUMENT, once the requests before it are answered.
        let mut malformed = None;
        loop {
            let permit = tokio::select! {
                p = in_flight.clone().acquire_owned() => p.expect("semaphore is never closed"),
                _ = crate::state::stopped(&mut stopping) => { shutting_down = true; break; }
            };
            let msg = tokio::select! {
                m = inbound.message() => m,
                _ = crate::state::stopped(&mut stopping) => { shutting_down = true; break; }
            };
            let req = match msg {
                Ok(Some(req)) => req,
                // The client finished, the stream broke, or a request did
                // not decode: requests already queued still complete and
                // stay durable.
                Ok(None) => break,
                Err(s) => {
                    let s =
                        crate::limits::name_message_limit(s, broker.cfg.limits.max_message_bytes);
                    if matches!(
                        s.code(),
                        tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted
                    ) {
                        malformed = Some(s);
                    }
                    break;
                }
            };
            let seq = req.sequence;
            match submit_metered(&broker, &who, req).await {
                Err(e) => {
                    let _ = tx.send(Ok(response(seq, Err(e)))).await;
                }
                Ok(pending) => {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let r = pending.await.map_err(BrokerError::from);
                        let _ = tx.send(Ok(response(seq, r))).await;
                        drop(permit);
                    });
                }
            }
        }
        // Answer everything in flight before ending the stream.
        let _ = in_flight.acquire_many(max as u32).await;
        if shutting_down {
            let _ = tx.send(Err(Status::from(BrokerError::ShuttingDown))).await;
        } else if let Some(s) = malformed {
            let _ = tx.send(Err(s)).await;
        }
    });
    Ok(ReceiverStream::new(rx))
}
