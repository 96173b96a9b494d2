//! [`ConsumerStore`]: a group on the JetStream backend, read through its
//! durable pull consumer ([`mesh_jetstream::consumers`]).
//!
//! JetStream keeps what it is good at: which events are settled (acks,
//! terms), when a nacked event comes again (the nak's delay, which is the
//! broker's backoff), how often each was delivered, and redelivery of
//! whatever a dispatcher that vanished still held (`ack_wait`). The window
//! keeps what JetStream does not do: per-key order, member credit, the
//! backoff schedule, members' ack deadlines, dead-lettering, seeks, lag
//! and caught-up. The group's position and its DLQ are as on the log
//! (the position in the positions bucket, the DLQ a topic), through
//! [`LogStore`].

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use mesh_jetstream::{
    JetStreamStorage,
    consumers::{self, ConsumerSettings, GroupConsumer},
};
use mesh_log::{LogError, Storage};
use tokio::sync::mpsc;

use super::{
    store::{Delivery, GroupStore, LogStore, ReadError, Settle, StoredRecord, TopicStore},
    window::ReadRequest,
};
use crate::{config::BrokerConfig, dlq, error::Result};

/// How long a read waits for the consumer's next event. The window asks
/// when the head is ahead of it or a redelivery is due, so one is coming;
/// a read waiting holds up a seek's rewind at most this long.
const PULL_WAIT: Duration = Duration::from_millis(100);

/// A group on JetStream: its consumer, and the log-like rest.
pub struct ConsumerStore {
    /// Topic reads (tails, ages), the position and the DLQ.
    log: LogStore,
    /// The group's durable consumer.
    consumer: GroupConsumer,
}

impl ConsumerStore {
    pub fn new(
        js: &Arc<JetStreamStorage>,
        cfg: Arc<BrokerConfig>,
        topic: &str,
        group: &str,
    ) -> Self {
        let settings = settings(&cfg);
        let storage: Arc<dyn Storage> = js.clone();
        ConsumerStore {
            consumer: js.group_consumer(topic, group, settings),
            log: LogStore::new(storage, cfg, topic, group),
        }
    }
}

/// The consumer's settings for this broker's configuration.
fn settings(cfg: &BrokerConfig) -> ConsumerSettings {
    ConsumerSettings {
        // Twice the members' ack deadline: the window redelivers (by a
        // nak) when a member misses it, and refreshes what it holds back
        // every half deadline, so JetStream redelivers on its own only
        // what a dispatcher that stopped without handing over held.
        ack_wait: super::window::ack_wait(cfg),
        // The window holds at most `group_window` events; settlements in
        // flight to the server add some more for a moment.
        max_ack_pending: (cfg.limits.group_window as i64).saturating_mul(2),
        // What may be on its way beyond the window: at most half of it.
        prefetch: (cfg.limits.group_window / 2).clamp(1, 1024),
        prefetch_bytes: (cfg.limits.group_window_bytes / 2).clamp(1, 8 << 20),
    }
}

fn read_error(e: LogError) -> ReadError {
    ReadError::Failed(e.into())
}

#[async_trait]
impl GroupStore for ConsumerStore {
    fn topic_store(&self) -> &dyn TopicStore {
        self.log.topic_store()
    }

    fn max_delivery_attempts(&self) -> Result<Option<u32>> {
        self.log.max_delivery_attempts()
    }

    fn load_committed(&self) -> Result<Option<u64>> {
        self.log.load_committed()
    }

    async fn commit(&self, position: u64) -> Result<()> {
        self.log.commit(position).await
    }

    async fn reset(&self, position: u64) -> Result<()> {
        // The window drops its read-ahead after a seek, and its next read
        // rewinds the consumer to the new position.
        self.log.reset(position).await
    }

    async fn dead_letter(&self, letter: dlq::Letter) -> Result<()> {
        self.log.dead_letter(letter).await
    }

    async fn age_at(&self, offset: u64) -> Duration {
        self.log.age_at(offset).await
    }

    fn settles(&self) -> bool {
        true
    }

    async fn read_group(
        &self,
        r: ReadRequest,
    ) -> std::result::Result<Vec<StoredRecord>, ReadError> {
        if r.rewind {
            self.consumer.rewind(r.from).await.map_err(read_error)?;
        }
        let fetched = self
            .consumer
            .pull(r.max_records, r.max_bytes, PULL_WAIT)
            .await
            .map_err(read_error)?;
        Ok(fetched
            .into_iter()
            .map(|f| {
                let mut rec = StoredRecord::from(f.record);
                rec.delivery = Some(Delivery {
                    reply: f.reply,
                    delivered: f.delivered,
                });
                rec
            })
            .collect())
    }

    async fn settle(&self, batch: Vec<(Arc<str>, Settle)>) -> Result<()> {
        let batch = batch
            .into_iter()
            .map(|(reply, how)| {
                let how = match how {
                    Settle::Ack => consumers::Settle::Ack,
                    Settle::Nak(d) => consumers::Settle::Nak(d),
                    Settle::Progress => consumers::Settle::Progress,
                    Settle::Term => consumers::Settle::Term,
                };
                (reply, how)
            })
            .collect();
        self.consumer.settle(batch).await?;
        Ok(())
    }
}

/// Batches of settlements, by ack subject, on their way to the store.
pub type Settler = mpsc::UnboundedSender<Vec<(Arc<str>, Settle)>>;

/// Starts the task that sends a settling store its settlements, batch by
/// batch in the window's order (one task, so a later settlement never
/// overtakes an earlier one). It ends when the actor drops its sender,
/// after sending what was queued.
pub fn spawn_settler(store: Arc<dyn GroupStore>) -> Settler {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<(Arc<str>, Settle)>>();
    tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            if let Err(e) = store.settle(batch).await {
                // Unsettled deliveries come again after the consumer's
                // ack_wait, or at the next dispatcher's rewind.
                tracing::warn!(topic = %store.topic_store().topic(), error = %e, "settling deliveries failed");
            }
        }
    });
    tx
}
