//! What readers of a topic need from storage, as two traits.
//!
//! [`TopicStore`] is what every reader of one topic needs (bounds, the
//! head, reads, time to offset): ephemeral tails use only it.
//! [`GroupStore`] adds what one consumer group needs (its position, its
//! dead-letter queue). They are the seam between the broker's readers and
//! whatever keeps the events and positions: [`LogTopic`] and [`LogStore`]
//! implement them on the embedded log ([`mesh_log::Storage`]) and the
//! dead-letter topics of [`crate::dlq`]. The signatures use neutral types
//! ([`StoredRecord`], [`ReadError`]), not the log's.
//!
//! On JetStream ([`crate::group::consumer::ConsumerStore`]) a group reads
//! through its own durable consumer, which also tracks every delivery:
//! [`GroupStore::settles`] says so, and the window then settles each event
//! there ([`Settle`]). Tails read the stream directly, through the same
//! [`TopicStore`] as on the log.
//!
//! Every async method may be slow (a disk, a network): the dispatcher
//! runs them as spawned futures and never awaits one inside its loop.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use mesh_log::{CommitMode, LogError, Storage};
use tokio::sync::watch;

use super::{Start, window::ReadRequest};
pub use crate::convert::{Delivery, StoredRecord};
use crate::{
    config::BrokerConfig,
    dlq,
    error::{BrokerError, Result},
};

/// Why a read returned no records.
#[derive(Debug)]
pub enum ReadError {
    /// Retention deleted the events from the requested offset on up to
    /// `earliest`: read on from there.
    Truncated { earliest: u64 },
    /// The record at the requested offset cannot be read (corrupt); every
    /// record before it was returned by earlier reads.
    Damaged(BrokerError),
    /// Anything else; worth retrying later.
    Failed(BrokerError),
}

/// How the window settles one delivery with a store that tracks them
/// (a JetStream consumer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Done: acked, or not an event for this group.
    Ack,
    /// Deliver it again after this delay (the broker's backoff).
    Nak(Duration),
    /// Still held (behind its key, or waiting for credit): do not
    /// redeliver it yet.
    Progress,
    /// Dead-lettered: never deliver it again.
    Term,
}

/// The topic's oldest stored offset and its head (one past the newest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub earliest: u64,
    pub head: u64,
}

/// Storage as every reader of one topic sees it.
#[async_trait]
pub trait TopicStore: Send + Sync + 'static {
    /// The topic's name, for messages.
    fn topic(&self) -> &str;
    /// The topic's offsets now; cheap (cached in memory).
    fn bounds(&self) -> Result<Bounds>;
    /// Changes whenever the topic's head moves; closes when the topic is
    /// deleted.
    fn watch_head(&self) -> Result<watch::Receiver<u64>>;
    /// Up to `max_records` records from `from` on, and about `max_bytes`
    /// of payload (always at least one record if there is one).
    async fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> std::result::Result<Vec<StoredRecord>, ReadError>;
    /// The first offset published at or after `timestamp_us`.
    async fn offset_for_time(&self, timestamp_us: i64) -> Result<u64>;
}

/// Storage as one (topic, group) sees it: the topic's, plus the group's
/// position and dead-letter queue.
#[async_trait]
pub trait GroupStore: Send + Sync + 'static {
    /// The topic the group reads.
    fn topic_store(&self) -> &dyn TopicStore;
    /// The topic's own `max_delivery_attempts`, if it sets one.
    fn max_delivery_attempts(&self) -> Result<Option<u32>>;
    /// The group's durable position: `None` if the group has none yet.
    fn load_committed(&self) -> Result<Option<u64>>;
    /// Durably moves the group's position forward to `position`.
    async fn commit(&self, position: u64) -> Result<()>;
    /// Durably sets the group's position to `position`, backwards too
    /// (a seek).
    async fn reset(&self, position: u64) -> Result<()>;
    /// Durably appends a dead letter to the group's dead-letter queue.
    async fn dead_letter(&self, letter: dlq::Letter) -> Result<()>;
    /// How long ago the event at `offset` was published (zero if there is
    /// none or it cannot be read).
    async fn age_at(&self, offset: u64) -> Duration;

    /// Whether the store tracks every delivery (a JetStream consumer): the
    /// window then settles each event with [`GroupStore::settle`] and
    /// leaves redelivery after a nack's delay to the store.
    fn settles(&self) -> bool {
        false
    }
    /// The group's next events. On the log, those from `r.from` on; a
    /// store that [`settles`](GroupStore::settles) answers from its own
    /// cursor instead (due redeliveries first), rewound to `r.from`
    /// first when `r.rewind` is set.
    async fn read_group(
        &self,
        r: ReadRequest,
    ) -> std::result::Result<Vec<StoredRecord>, ReadError> {
        self.topic_store()
            .read(r.from, r.max_records, r.max_bytes)
            .await
    }
    /// Settles deliveries, in order, by their [`Delivery::reply`].
    async fn settle(&self, _batch: Vec<(Arc<str>, Settle)>) -> Result<()> {
        Ok(())
    }
}

/// Where a start position is in the topic: the one resolution used by
/// groups (their first join, a seek) and by ephemeral tails.
pub async fn resolve_start(store: &dyn TopicStore, start: Start) -> Result<u64> {
    let b = store.bounds()?;
    Ok(match start {
        Start::Earliest => b.earliest,
        Start::Latest => b.head,
        Start::Offset(o) if o > b.head => {
            return Err(BrokerError::invalid(
                "open.start.offset",
                format!(
                    "offset {o} is beyond the head {} of topic {:?}",
                    b.head,
                    store.topic()
                ),
            ));
        }
        Start::Offset(o) => o.max(b.earliest),
        Start::TimeUs(us) => store.offset_for_time(us).await?,
    })
}

/// [`TopicStore`] on the embedded log.
pub struct LogTopic {
    /// The log holding the topic.
    storage: Arc<dyn Storage>,
    /// The topic read.
    topic: String,
}

impl LogTopic {
    pub fn new(storage: Arc<dyn Storage>, topic: &str) -> Self {
        LogTopic {
            storage,
            topic: topic.to_string(),
        }
    }
}

#[async_trait]
impl TopicStore for LogTopic {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn bounds(&self) -> Result<Bounds> {
        let t = self.storage.topic(&self.topic)?;
        Ok(Bounds {
            earliest: t.earliest,
            head: t.head,
        })
    }

    fn watch_head(&self) -> Result<watch::Receiver<u64>> {
        Ok(self.storage.watch_head(&self.topic)?)
    }

    async fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> std::result::Result<Vec<StoredRecord>, ReadError> {
        match self
            .storage
            .read(&self.topic, from, max_records, max_bytes)
            .await
        {
            Ok(records) => Ok(records.into_iter().map(StoredRecord::from).collect()),
            Err(LogError::OffsetTruncated { earliest, .. }) => {
                Err(ReadError::Truncated { earliest })
            }
            Err(e @ LogError::Corrupt { .. }) => Err(ReadError::Damaged(e.into())),
            Err(e) => Err(ReadError::Failed(e.into())),
        }
    }

    async fn offset_for_time(&self, timestamp_us: i64) -> Result<u64> {
        Ok(self
            .storage
            .offset_for_time(&self.topic, timestamp_us)
            .await?)
    }
}

/// [`GroupStore`] on the embedded log.
pub struct LogStore {
    /// The topic the group reads, on the log that also holds the group's
    /// position and its DLQ.
    log: LogTopic,
    /// For the dead-letter topic's settings.
    cfg: Arc<BrokerConfig>,
    /// The group whose position and DLQ this is.
    group: String,
}

impl LogStore {
    pub fn new(
        storage: Arc<dyn Storage>,
        cfg: Arc<BrokerConfig>,
        topic: &str,
        group: &str,
    ) -> Self {
        LogStore {
            log: LogTopic::new(storage, topic),
            cfg,
            group: group.to_string(),
        }
    }
}

#[async_trait]
impl GroupStore for LogStore {
    fn topic_store(&self) -> &dyn TopicStore {
        &self.log
    }

    fn max_delivery_attempts(&self) -> Result<Option<u32>> {
        Ok(self
            .log
            .storage
            .topic(&self.log.topic)?
            .config
            .max_delivery_attempts)
    }

    fn load_committed(&self) -> Result<Option<u64>> {
        Ok(self.log.storage.committed(&self.log.topic, &self.group)?)
    }

    async fn commit(&self, position: u64) -> Result<()> {
        self.log
            .storage
            .commit(&self.log.topic, &self.group, position, CommitMode::Forward)
            .await?;
        Ok(())
    }

    async fn reset(&self, position: u64) -> Result<()> {
        self.log
            .storage
            .commit(&self.log.topic, &self.group, position, CommitMode::Reset)
            .await?;
        Ok(())
    }

    async fn dead_letter(&self, letter: dlq::Letter) -> Result<()> {
        let (storage, topic) = (&*self.log.storage, &self.log.topic);
        dlq::dead_letter(storage, &self.cfg, topic, &self.group, letter).await
    }

    async fn age_at(&self, offset: u64) -> Duration {
        age_at(&*self.log.storage, &self.log.topic, offset).await
    }
}

/// How long ago the event at `offset` of `topic` was published (zero if
/// there is none, or it cannot be read). Also used for the lag of groups
/// that have no running actor (`upkeep::refresh_loop`).
pub async fn age_at(storage: &dyn Storage, topic: &str, offset: u64) -> Duration {
    match storage.read(topic, offset, 1, 1 << 20).await {
        Ok(r) => r.first().map_or(Duration::ZERO, |r| {
            Duration::from_micros((mesh_log::now_us() - r.timestamp_us).max(0) as u64)
        }),
        Err(_) => Duration::ZERO,
    }
}
