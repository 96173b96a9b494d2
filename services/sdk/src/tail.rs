//! Reading a topic without a consumer group: replaying it to rebuild state
//! at start, or following it. Nothing is stored in the broker; the reader
//! keeps its own position and resumes from it after a reconnect.

use mesh_proto::broker::v1::{
    self as pb, start_position::Position, subscribe_request::Request, subscribe_response::Response,
};
use mesh_runtime::backoff::Backoff;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::{consumer::delivered, error::SdkError, events::Delivered, link::Broker};

/// What the callback of [`tail`] sees.
pub enum TailEvent {
    Event(Box<Delivered>),
    /// Everything up to `head` has been passed on.
    CaughtUp {
        head: u64,
    },
}

/// Reads `topic` from offset `from` and calls `f` for every event and every
/// caught-up marker, reconnecting with backoff, until `f` returns false or
/// `shutdown` is cancelled. Returns the next offset to read.
pub async fn tail(
    broker: &Broker,
    topic: &str,
    from: u64,
    shutdown: &CancellationToken,
    mut f: impl FnMut(TailEvent) -> bool,
) -> Result<u64, SdkError> {
    let metered = crate::metrics::HandlerMetrics::new(topic, "");
    let mut next = from;
    let mut backoff = Backoff::default();
    loop {
        let session = async {
            let client = broker.connect().await?;
            let open = pb::Open {
                topic: topic.to_string(),
                auto_ack: true,
                max_in_flight: 256,
                start: Some(pb::StartPosition {
                    position: Some(Position::Offset(next)),
                }),
                ..Default::default()
            };
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let _ = tx
                .send(pb::SubscribeRequest {
                    request: Some(Request::Open(open)),
                })
                .await;
            let mut stream = client
                .max_decoding_message_size(64 << 20)
                .subscribe(ReceiverStream::new(rx))
                .await?
                .into_inner();
            // Keep our side open so the stream is not half-closed.
            let _keep = tx;
            while let Some(m) = stream.message().await? {
                match m.response {
                    Some(Response::Deliveries(ds)) => {
                        for d in ds.deliveries.into_iter().filter_map(delivered) {
                            next = d.offset + 1;
                            let started = std::time::Instant::now();
                            let more = f(TailEvent::Event(Box::new(d)));
                            metered.done(true, started);
                            if !more {
                                return Ok::<bool, SdkError>(true);
                            }
                        }
                    }
                    Some(Response::CaughtUp(c)) if !f(TailEvent::CaughtUp { head: c.head }) => {
                        return Ok(true);
                    }
                    Some(Response::Opened(_)) => backoff.reset(),
                    _ => {}
                }
            }
            Ok(false)
        };
        let r = tokio::select! {
            r = session => r,
            _ = shutdown.cancelled() => return Ok(next),
        };
        match r {
            Ok(true) => return Ok(next),
            Ok(false) => tracing::warn!(topic, "tail ended; reconnecting"),
            Err(SdkError::Status(s)) if s.code() == tonic::Code::NotFound => {
                tracing::info!(topic, "topic does not exist yet; waiting");
            }
            Err(e) => tracing::warn!(topic, error = %e, "tail failed; reconnecting"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.cancelled() => return Ok(next),
        }
    }
}

/// Replays `topic` from the beginning up to its head at the time of the
/// call, calling `f` for each event. Returns the next offset to read.
pub async fn replay(
    broker: &Broker,
    topic: &str,
    shutdown: &CancellationToken,
    mut f: impl FnMut(Delivered),
) -> Result<u64, SdkError> {
    tail(broker, topic, 0, shutdown, |e| match e {
        TailEvent::Event(d) => {
            f(*d);
            true
        }
        TailEvent::CaughtUp { .. } => false,
    })
    .await
}
