//! What a Subscribe stream may hold in the broker before its client reads
//! it, counted in bytes.
//!
//! Every response to a subscriber (deliveries, heartbeats, errors) goes
//! through the stream's [`Outbox`]: a queue bounded per stream by
//! `limits.subscriber_buffer_bytes` and across the broker by
//! `limits.max_buffered_bytes`. A sender waits while either is full, so a
//! subscriber that stops reading pauses its own tail or group session
//! instead of growing broker memory, and a broker full of them pauses them
//! all and refuses new subscriptions (RESOURCE_EXHAUSTED) instead of
//! running out of memory.
//!
//! Bytes are released when tonic takes the response to encode it. Past that
//! point hyper's HTTP/2 send buffer (400 KiB per stream) and the client's
//! flow-control window bound what is still on its way, so a stalled stream
//! holds at most its outbox, one message being encoded and that send buffer.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use mesh_proto::broker::v1::SubscribeResponse;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::Stream;
use tonic::Status;

use crate::error::BrokerError;

pub type Item = std::result::Result<SubscribeResponse, Status>;

/// Messages one outbox may queue, whatever their size: heartbeats and
/// errors are tiny, so the byte bound alone would let millions queue.
const MAX_QUEUED: usize = 256;

/// The broker-wide byte budget shared by every outbox.
#[derive(Debug)]
pub struct Budget {
    /// One permit per byte of queued responses, broker-wide.
    bytes: Arc<Semaphore>,
    /// `limits.max_buffered_bytes`, for messages and the gauge.
    total: usize,
    /// `limits.subscriber_buffer_bytes`: one stream's share at most.
    per_stream: usize,
}

impl Budget {
    pub fn new(total: usize, per_stream: usize) -> Self {
        Budget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
            per_stream,
        }
    }

    /// Bytes queued in outboxes right now.
    pub fn used(&self) -> usize {
        self.total - self.bytes.available_permits()
    }

    /// A new outbox, or RESOURCE_EXHAUSTED when the budget could not hold
    /// one more full stream: the streams already open are paused by then,
    /// and one more would only wait with them.
    pub fn open(&self) -> crate::error::Result<(Outbox, OutboxStream)> {
        if self.bytes.available_permits() < self.per_stream {
            return Err(BrokerError::ResourceExhausted(format!(
                "limits.max_buffered_bytes = {} bytes of responses are already buffered for subscribers that are not reading; try again later",
                self.total
            )));
        }
        let (tx, rx) = mpsc::channel(MAX_QUEUED);
        let outbox = Outbox {
            tx,
            stream: Arc::new(Semaphore::new(self.per_stream)),
            broker: self.bytes.clone(),
            per_stream: self.per_stream,
        };
        Ok((outbox, OutboxStream { rx }))
    }
}

/// The sending side of one subscriber stream.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Queued>,
    /// This stream's bytes; `per_stream` permits.
    stream: Arc<Semaphore>,
    /// The broker-wide bytes ([`Budget`]).
    broker: Arc<Semaphore>,
    per_stream: usize,
}

/// The stream (or the whole connection) was closed by the client.
#[derive(Debug)]
pub struct Closed;

/// Room for one response, reserved by [`Outbox::reserve`].
pub struct Slot {
    bytes: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
    chan: mpsc::OwnedPermit<Queued>,
}

impl Slot {
    pub fn send(self, item: Item) {
        self.chan.send(Queued {
            item,
            _bytes: self.bytes,
        });
    }
}

/// What a response is charged: its encoded size.
pub fn size(item: &Item) -> usize {
    match item {
        Ok(r) => r.encoded_len(),
        Err(s) => s.message().len(),
    }
}

impl Outbox {
    /// Waits until this stream and the broker have room for a response of
    /// `size` bytes. A response larger than a stream's whole share is
    /// charged that share, so it still goes out, alone. Cancel-safe: a
    /// session can wait for room and for its client's requests at once.
    pub async fn reserve(&self, size: usize) -> Result<Slot, Closed> {
        let cost = self.cost(size);
        let stream = tokio::select! {
            p = self.stream.clone().acquire_many_owned(cost) => p.map_err(|_| Closed)?,
            _ = self.tx.closed() => return Err(Closed),
        };
        let broker = tokio::select! {
            p = self.broker.clone().acquire_many_owned(cost) => p.map_err(|_| Closed)?,
            _ = self.tx.closed() => return Err(Closed),
        };
        let chan = self.tx.clone().reserve_owned().await.map_err(|_| Closed)?;
        Ok(Slot {
            bytes: Some((stream, broker)),
            chan,
        })
    }

    /// The permits a response of `size` bytes takes: at most a stream's
    /// whole share, at least one. (Semaphores count in u32; the config
    /// keeps `per_stream` below that.)
    fn cost(&self, size: usize) -> u32 {
        size.clamp(1, self.per_stream) as u32
    }

    /// Queues `item` once there is room for it.
    pub async fn send(&self, item: Item) -> Result<(), Closed> {
        self.reserve(size(&item)).await?.send(item);
        Ok(())
    }

    /// Queues `item` only if there is room now (a heartbeat to a client
    /// that is not reading would only wait behind its backlog).
    pub fn try_send(&self, item: Item) -> Result<(), Closed> {
        let cost = self.cost(size(&item));
        let (Ok(stream), Ok(broker)) = (
            self.stream.clone().try_acquire_many_owned(cost),
            self.broker.clone().try_acquire_many_owned(cost),
        ) else {
            return if self.tx.is_closed() {
                Err(Closed)
            } else {
                Ok(())
            };
        };
        match self.tx.clone().try_reserve_owned() {
            Ok(chan) => {
                Slot {
                    bytes: Some((stream, broker)),
                    chan,
                }
                .send(item);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Closed),
            Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
        }
    }

    /// Ends the stream with `status`, without waiting: a session that ends
    /// must not hang on a client that stopped reading. The status is small
    /// and sent once, so it is not charged; if even the message queue is
    /// full, the client is not reading and would not see it either.
    pub fn finish(&self, status: Status) {
        if let Ok(chan) = self.tx.clone().try_reserve_owned() {
            Slot { bytes: None, chan }.send(Err(status));
        }
    }

    /// Resolves when the client has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// A queued response and the bytes it holds until tonic takes it.
struct Queued {
    item: Item,
    _bytes: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

/// The receiving side, handed to tonic as the response stream.
#[derive(Debug)]
pub struct OutboxStream {
    rx: mpsc::Receiver<Queued>,
}

impl Stream for OutboxStream {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        // Dropping the permits here is what releases the bytes.
        self.rx.poll_recv(cx).map(|q| q.map(|q| q.item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::broker::v1::{Heartbeat, subscribe_response::Response};
    use tokio_stream::StreamExt;

    fn heartbeat() -> Item {
        Ok(SubscribeResponse {
            response: Some(Response::Heartbeat(Heartbeat {})),
        })
    }

    fn padded(bytes: usize) -> Item {
        Ok(SubscribeResponse {
            response: Some(Response::Opened(mesh_proto::broker::v1::Opened {
                member_id: "x".repeat(bytes),
                ..Default::default()
            })),
        })
    }

    #[tokio::test]
    async fn a_stream_waits_when_its_share_is_full_and_resumes_when_read() {
        let budget = Budget::new(1 << 20, 1000);
        let (out, mut rx) = budget.open().unwrap();
        out.send(padded(900)).await.unwrap();
        let second = tokio::spawn({
            let out = out.clone();
            async move { out.send(padded(900)).await }
        });
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "the second message must wait");
        assert!(budget.used() >= 900);
        rx.next().await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        rx.next().await.unwrap().unwrap();
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_message_larger_than_a_share_still_goes_out() {
        let budget = Budget::new(1 << 20, 100);
        let (out, mut rx) = budget.open().unwrap();
        out.send(padded(10_000)).await.unwrap();
        assert_eq!(budget.used(), 100);
        assert!(rx.next().await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_full_budget_refuses_new_streams_and_reopens_when_drained() {
        let budget = Budget::new(2000, 1000);
        let (a, mut ra) = budget.open().unwrap();
        let (b, _rb) = budget.open().unwrap();
        a.send(padded(990)).await.unwrap();
        b.send(padded(990)).await.unwrap();
        let e = budget.open().unwrap_err();
        assert!(e.to_string().contains("limits.max_buffered_bytes"), "{e}");
        ra.next().await.unwrap().unwrap();
        budget.open().expect("room again once a stream was read");
    }

    #[tokio::test]
    async fn sending_to_a_closed_stream_fails_instead_of_waiting() {
        let budget = Budget::new(1000, 1000);
        let (out, rx) = budget.open().unwrap();
        out.send(padded(990)).await.unwrap();
        drop(rx);
        assert!(out.send(heartbeat()).await.is_err());
    }
}
