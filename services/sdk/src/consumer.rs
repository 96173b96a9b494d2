//! A typed consumer: one consumer group on one topic.
//!
//! The handler's `Ok` acks the event, `Err` nacks it with the error's
//! reason (and delay). At most `concurrency` handlers run at once, which is
//! also the credit the consumer asks the broker for, so the broker never
//! sends more than the consumer can hold. The broker keeps per-subject order
//! by having at most one event per subject in flight, so concurrent handlers
//! never see two events of one key at once. If the stream breaks (broker
//! restart, network), the consumer reconnects with backoff; events whose
//! acks were lost come back, so handlers must be idempotent.

use std::{future::Future, sync::Arc, time::Duration};

use mesh_proto::broker::v1::{
    self as pb, start_position::Position, subscribe_request::Request, subscribe_response::Response,
};
use mesh_runtime::backoff::Backoff;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    error::SdkError,
    events::{Delivered, HandlerError},
    link::Broker,
};

/// Where a group that does not exist yet starts.
#[derive(Clone, Copy, Debug)]
pub enum Start {
    Earliest,
    Latest,
}

pub struct Consumer {
    broker: Broker,
    topic: String,
    group: String,
    concurrency: u32,
    start: Start,
    name: String,
    drain: Duration,
}

pub(crate) fn delivered(d: pb::Delivery) -> Option<Delivered> {
    let stored = d.event?;
    Some(Delivered {
        topic: stored.topic,
        offset: stored.offset,
        attempt: d.delivery_attempt,
        publish_time_us: stored
            .publish_time
            .map_or(0, |t| mesh_runtime::time::micros(&t)),
        event: stored.event.unwrap_or_default(),
    })
}

impl Consumer {
    /// A member of `group` on `topic` of `broker`. Connects when run.
    pub fn new(broker: &Broker, topic: &str, group: &str) -> Result<Self, SdkError> {
        Ok(Consumer {
            broker: broker.clone(),
            topic: topic.to_string(),
            group: group.to_string(),
            concurrency: 16,
            start: Start::Earliest,
            name: String::new(),
            drain: Duration::from_secs(5),
        })
    }

    /// Handlers running at once (and the broker credit). Default 16.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n.max(1);
        self
    }

    pub fn start(mut self, s: Start) -> Self {
        self.start = s;
        self
    }

    /// Shown as this member's name by the broker's DescribeGroup.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Runs until `shutdown` is cancelled, then lets running handlers finish
    /// (up to 5 s) and acks them before closing.
    pub async fn run<H, Fut>(self, handler: H, shutdown: CancellationToken) -> Result<(), SdkError>
    where
        H: Fn(Delivered) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let slots = Arc::new(Semaphore::new(self.concurrency as usize));
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            match self
                .session(&handler, &slots, &shutdown, &mut backoff)
                .await
            {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(topic = %self.topic, group = %self.group, error = %e, "subscription ended; reconnecting")
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        // Let handlers of the last session finish so their acks go out.
        let _ = tokio::time::timeout(self.drain, slots.acquire_many(self.concurrency)).await;
        Ok(())
    }

    async fn session<H, Fut>(
        &self,
        handler: &Arc<H>,
        slots: &Arc<Semaphore>,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), SdkError>
    where
        H: Fn(Delivered) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let mut client = tokio::select! {
            c = self.broker.connect() => c?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let (tx, rx) = mpsc::channel::<pb::SubscribeRequest>(self.concurrency as usize * 2 + 16);
        let start = match self.start {
            Start::Earliest => Position::Earliest(pb::Empty {}),
            Start::Latest => Position::Latest(pb::Empty {}),
        };
        let open = pb::Open {
            topic: self.topic.clone(),
            group: self.group.clone(),
            start: Some(pb::StartPosition {
                position: Some(start),
            }),
            max_in_flight: self.concurrency,
            auto_ack: false,
            member_name: self.name.clone(),
        };
        let _ = tx
            .send(pb::SubscribeRequest {
                request: Some(Request::Open(open)),
            })
            .await;
        let mut stream = client
            .subscribe(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let metered = Arc::new(crate::metrics::HandlerMetrics::new(
            &self.topic,
            &self.group,
        ));
        loop {
            let msg = tokio::select! {
                m = stream.message() => m?,
                _ = shutdown.cancelled() => {
                    // Finish what is running; its acks still go out on this stream.
                    let _ = tokio::time::timeout(self.drain, slots.acquire_many(self.concurrency)).await;
                    return Ok(());
                }
            };
            let Some(resp) = msg.and_then(|m| m.response) else {
                return Ok(());
            };
            match resp {
                Response::Opened(o) => {
                    backoff.reset();
                    tracing::info!(topic = %self.topic, group = %self.group, member = %o.member_id, committed = o.committed, "subscribed");
                }
                Response::Deliveries(ds) => {
                    for d in ds.deliveries {
                        let Some(d) = delivered(d) else { continue };
                        let permit = slots
                            .clone()
                            .acquire_owned()
                            .await
                            .expect("semaphore is never closed");
                        let metered = metered.clone();
                        let (h, tx) = (handler.clone(), tx.clone());
                        let span = crate::events::process_span(&d, &self.group);
                        tokio::spawn(async move {
                            let offset = d.offset;
                            let started = std::time::Instant::now();
                            let req = match h(d).instrument(span).await {
                                Ok(()) => Request::Ack(pb::Ack {
                                    offsets: vec![offset],
                                }),
                                Err(e) => {
                                    tracing::warn!(offset, reason = %e.reason, "handler failed; nacking");
                                    Request::Nack(pb::Nack {
                                        offsets: vec![offset],
                                        delay: e.delay.map(mesh_runtime::time::duration),
                                        reason: e.reason,
                                    })
                                }
                            };
                            metered.done(matches!(req, Request::Ack(_)), started);
                            // If the stream is gone the event comes back later.
                            let _ = tx.send(pb::SubscribeRequest { request: Some(req) }).await;
                            drop(permit);
                        });
                    }
                }
                Response::Heartbeat(_) => {
                    // Answer, so the broker knows this member is alive.
                    let _ = tx
                        .send(pb::SubscribeRequest {
                            request: Some(Request::Heartbeat(pb::Heartbeat {})),
                        })
                        .await;
                }
                Response::Error(e) => {
                    tracing::warn!(topic = %self.topic, group = %self.group, code = ?e.status_code(), message = %e.message, "broker refused a request")
                }
                Response::CaughtUp(_) | Response::Lag(_) => {}
            }
        }
    }
}
