//! [`JetStreamStorage`]: the log's [`Storage`] trait on a NATS JetStream
//! cluster, so every broker feature (groups, per-key order, DLQ, seek,
//! retention, admin) runs unchanged on it.
//!
//! - A topic is a stream ([`Names::stream`]) with `replicas` copies and
//!   direct gets allowed; its settings ride in the stream's metadata.
//! - An event is a message on `<namespace>.<topic>.<key token>`, its payload the
//!   broker's encoded envelope, `Nats-Msg-Id` its producer id, so
//!   JetStream's duplicate window de-duplicates it.
//! - offset = stream sequence − 1, so clients see the numbers the embedded
//!   log gives.
//! - A group's position is a key of the `<namespace>-positions` bucket.
//! - Retention by size is the stream's `max_bytes`; retention by age is
//!   run by the broker, as on the embedded log, because it waits for every
//!   group (JetStream's `max_age` would not).

use std::{collections::BTreeMap, sync::Arc};

use async_nats::{
    Client,
    jetstream::{self, context::PublishAckFuture, stream},
};
use async_trait::async_trait;
use futures_util::future::join_all;
use mesh_log::{
    AppendRecord, Appended, CommitMode, GroupPosition, LogError, PendingAppend, Record, Result,
    RetentionReport, Storage, TopicConfig, TopicStats, now_us,
};
use prost::Message as _;
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    Options, connect,
    error::backend,
    names::Names,
    positions::Positions,
    read,
    topics::{META_CONFIG, Topics, stats_of},
};

/// The part of an event envelope (`mesh.events.v1.Event`) the backend
/// reads: its key (`subject`, field 5), which names the message's subject.
/// Every other field is skipped undecoded.
#[derive(Clone, PartialEq, prost::Message)]
struct EnvelopeKey {
    #[prost(string, tag = "5")]
    subject: String,
}

pub struct JetStreamStorage {
    inner: Arc<Inner>,
    /// The background tasks (positions watch, notifications, refresh),
    /// stopped by `close`.
    tasks: Vec<JoinHandle<()>>,
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) js: jetstream::Context,
    pub(crate) opts: Options,
    pub(crate) names: Names,
    pub(crate) topics: Topics,
    pub(crate) positions: Arc<Positions>,
}

impl JetStreamStorage {
    /// Connects, checks the server, loads topics and group positions, and
    /// starts following them.
    pub async fn open(opts: Options) -> Result<Self> {
        if !crate::names::valid_namespace(&opts.namespace) {
            return Err(LogError::Config(format!(
                "JetStream namespace {:?} must be 1 to 32 ASCII letters, digits or '_'",
                opts.namespace
            )));
        }
        let names = Names::new(&opts.namespace);
        let (client, js) = connect::connect(&opts).await?;
        let (positions, follow) = Positions::open(
            &js,
            names.positions_bucket(),
            opts.replicas,
            opts.connect_timeout,
        )
        .await?;
        let inner = Arc::new(Inner {
            client,
            js,
            opts,
            names,
            topics: Topics::default(),
            positions,
        });
        let timeout = inner.opts.connect_timeout;
        crate::connect::retrying("list the topics", timeout, || inner.refresh_all()).await?;
        let notes = tokio::spawn(inner.clone().notifications());
        let refresh = tokio::spawn(inner.clone().refresh_loop());
        Ok(JetStreamStorage {
            inner,
            tasks: vec![follow, notes, refresh],
        })
    }

    /// `group`'s durable consumer on `topic`'s stream (created on first
    /// use), through which its dispatcher fetches and settles.
    pub fn group_consumer(
        &self,
        topic: &str,
        group: &str,
        settings: crate::consumers::ConsumerSettings,
    ) -> crate::consumers::GroupConsumer {
        let i = &self.inner;
        crate::consumers::GroupConsumer::new(
            i.client.clone(),
            i.js.clone(),
            i.names.stream(topic),
            group,
            settings,
            i.opts.request_timeout,
        )
    }

    /// Opens this mesh's group leases (`<namespace>-leases`), replicated
    /// like its streams.
    pub async fn leases(&self, ttl: std::time::Duration) -> Result<crate::lease::Leases> {
        let i = &self.inner;
        let within = i.opts.connect_timeout;
        crate::lease::Leases::open(&i.js, i.names.leases_bucket(), i.opts.replicas, ttl, within)
            .await
    }
}

impl Drop for JetStreamStorage {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Inner {
    fn topic(&self, name: &str) -> Result<TopicStats> {
        self.topics
            .get(name)
            .ok_or_else(|| LogError::TopicNotFound(name.to_string()))
    }
}

fn event_key(payload: &[u8]) -> String {
    EnvelopeKey::decode(payload)
        .map(|k| k.subject)
        .unwrap_or_default()
}

#[async_trait]
impl Storage for JetStreamStorage {
    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicStats> {
        mesh_log::names::validate("topic", name)?;
        let i = &self.inner;
        let meta = serde_json::to_string(&config).map_err(backend("create topic"))?;
        let cfg = stream::Config {
            name: i.names.stream(name),
            description: Some(format!("mesh topic {name}")),
            subjects: vec![i.names.stream_subjects(name)],
            num_replicas: i.opts.replicas,
            max_bytes: config.retention_bytes.map_or(-1, |b| b as i64),
            duplicate_window: i.opts.dedupe_window,
            allow_direct: true,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            metadata: [(META_CONFIG.to_string(), meta)].into_iter().collect(),
            ..Default::default()
        };
        if i.refresh_one(name).await?.is_some() {
            return Err(LogError::TopicExists(name.to_string()));
        }
        match i.js.create_stream(cfg).await {
            Ok(mut s) => {
                let info = s.info().await.map_err(backend("create topic"))?;
                let stats = stats_of(&i.names, info).ok_or_else(|| LogError::Backend {
                    op: "create topic",
                    reason: "the created stream has an unexpected name".into(),
                })?;
                i.topics.upsert(stats.clone());
                i.notify(i.names.notify_topic(name), String::new()).await;
                Ok(stats)
            }
            // Another broker created it first.
            Err(e) if e.to_string().contains("already in use") => {
                i.refresh_one(name).await?;
                Err(LogError::TopicExists(name.to_string()))
            }
            Err(e) => Err(backend("create topic")(e)),
        }
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        let i = &self.inner;
        i.topic(name)?;
        match i.js.delete_stream(i.names.stream(name)).await {
            Ok(_) => {}
            Err(e) if e.to_string().contains("not found") => {}
            Err(e) => return Err(backend("delete topic")(e)),
        }
        for (g, _) in i.positions.of_topic(name) {
            i.positions.delete(name, &g).await?;
        }
        i.topics.remove(name);
        i.notify(i.names.notify_topic(name), String::new()).await;
        Ok(())
    }

    fn topics(&self) -> Vec<TopicStats> {
        self.inner.topics.all()
    }

    fn topic(&self, name: &str) -> Result<TopicStats> {
        self.inner.topic(name)
    }

    async fn submit(&self, topic: &str, records: Vec<AppendRecord>) -> Result<PendingAppend> {
        let i = self.inner.clone();
        i.topic(topic)?;
        let limit = i.opts.max_record_bytes;
        if let Some(r) = records.iter().find(|r| r.payload.len() > limit) {
            return Err(LogError::RecordTooLarge {
                size: r.payload.len(),
                limit,
            });
        }
        // Sent one after another on one connection, so the stream stores
        // them in this order; the acks are awaited together.
        let mut acks: Vec<PublishAckFuture> = Vec::with_capacity(records.len());
        for r in records {
            let subject = i.names.subject(topic, &event_key(&r.payload));
            let mut p = jetstream::message::PublishMessage::build().payload(r.payload);
            if let Some(id) = r.id {
                p = p.message_id(id);
            }
            let ack =
                i.js.send_publish(subject, p)
                    .await
                    .map_err(backend("publish"))?;
            acks.push(ack);
        }
        let topic = topic.to_string();
        Ok(PendingAppend::new(async move {
            let mut out = Vec::with_capacity(acks.len());
            for a in join_all(acks.into_iter().map(|a| a.into_future())).await {
                let ack = a.map_err(backend("publish"))?;
                out.push(Appended {
                    offset: ack.sequence.saturating_sub(1),
                    timestamp_us: now_us(),
                    duplicate: ack.duplicate,
                });
            }
            if let Some(head) = out.iter().map(|a| a.offset + 1).max() {
                i.topics.advance(&topic, head);
                i.notify(i.names.notify_head(&topic), head.to_string())
                    .await;
            }
            Ok(out)
        }))
    }

    async fn read(
        &self,
        topic: &str,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>> {
        let i = &self.inner;
        let t = i.topic(topic)?;
        if from < t.earliest {
            return Err(LogError::OffsetTruncated {
                topic: topic.into(),
                requested: from,
                earliest: t.earliest,
            });
        }
        if from >= t.head {
            return Ok(Vec::new());
        }
        let stream = i.names.stream(topic);
        let records = read::batch(
            &i.client,
            &stream,
            from + 1,
            max_records,
            max_bytes,
            i.opts.request_timeout,
        )
        .await?;
        // A direct get may be answered by a replica that has not applied
        // the newest messages yet, which answers with nothing: ask the
        // stream's leader for the one message instead, so a reader never
        // spins on a lagging replica.
        if records.is_empty() {
            let stream =
                i.js.get_stream_no_info(i.names.stream(topic))
                    .await
                    .map_err(backend("read"))?;
            return match stream.get_raw_message(from + 1).await {
                Ok(m) => Ok(vec![Record {
                    offset: m.sequence.saturating_sub(1),
                    timestamp_us: (m.time.unix_timestamp_nanos() / 1000) as i64,
                    id_hash: read::id_hash(&m.headers),
                    payload: m.payload,
                }]),
                Err(e) => {
                    tracing::debug!(%topic, from, error = %e, "no message at the stream leader either");
                    Ok(Vec::new())
                }
            };
        }
        // Retention removed the front since the bounds were cached.
        if records.first().is_some_and(|r| r.offset > from)
            && let Some(t) = i.refresh_one(topic).await?
            && from < t.earliest
        {
            return Err(LogError::OffsetTruncated {
                topic: topic.into(),
                requested: from,
                earliest: t.earliest,
            });
        }
        Ok(records)
    }

    fn watch_head(&self, topic: &str) -> Result<watch::Receiver<u64>> {
        self.inner
            .topics
            .watch(topic)
            .ok_or_else(|| LogError::TopicNotFound(topic.to_string()))
    }

    async fn offset_for_time(&self, topic: &str, timestamp_us: i64) -> Result<u64> {
        let i = &self.inner;
        let t = i.topic(topic)?;
        let seq = read::first_at_or_after(&i.client, &i.names.stream(topic), timestamp_us).await?;
        Ok(seq.map_or(t.head, |s| s.saturating_sub(1).max(t.earliest)))
    }

    fn committed(&self, topic: &str, group: &str) -> Result<Option<u64>> {
        self.inner.topic(topic)?;
        Ok(self.inner.positions.get(topic, group))
    }

    async fn commit(
        &self,
        topic: &str,
        group: &str,
        offset: u64,
        mode: CommitMode,
    ) -> Result<bool> {
        mesh_log::names::validate("group", group)?;
        let t = self.inner.topic(topic)?;
        if offset > t.head {
            return Err(LogError::OffsetBeyondHead {
                topic: topic.into(),
                requested: offset,
                head: t.head,
            });
        }
        self.inner
            .positions
            .commit(topic, group, offset, mode)
            .await
    }

    fn groups(&self, topic: &str) -> Result<Vec<GroupPosition>> {
        let t = self.inner.topic(topic)?;
        Ok(self
            .inner
            .positions
            .of_topic(topic)
            .into_iter()
            .map(|(group, committed)| GroupPosition {
                group,
                committed,
                lag: t.head.saturating_sub(committed.max(t.earliest)),
                missed: t.earliest.saturating_sub(committed),
            })
            .collect())
    }

    async fn delete_group(&self, topic: &str, group: &str) -> Result<()> {
        let i = &self.inner;
        i.topic(topic)?;
        crate::consumers::delete(&i.js, &i.names.stream(topic), group).await?;
        if !i.positions.delete(topic, group).await? {
            return Err(LogError::GroupNotFound {
                topic: topic.into(),
                group: group.into(),
            });
        }
        Ok(())
    }

    /// Age retention: purges events older than `retention_ms` that every
    /// group has consumed (size retention is the stream's own
    /// `max_bytes`).
    async fn enforce_retention(&self) -> Result<BTreeMap<String, RetentionReport>> {
        let i = &self.inner;
        let mut out = BTreeMap::new();
        for t in i.topics.all() {
            let Some(ms) = t.config.retention_ms else {
                continue;
            };
            let cutoff = now_us().saturating_sub(ms as i64 * 1000);
            let by_age = self.offset_for_time(&t.name, cutoff).await?;
            let floor = i
                .positions
                .of_topic(&t.name)
                .iter()
                .map(|(_, c)| *c)
                .min()
                .unwrap_or(u64::MAX);
            let upto = by_age.min(floor);
            if upto <= t.earliest {
                continue;
            }
            let stream =
                i.js.get_stream_no_info(i.names.stream(&t.name))
                    .await
                    .map_err(backend("retention"))?;
            let purged = stream
                .purge()
                .sequence(upto + 1)
                .await
                .map_err(backend("retention"))?;
            let earliest = i.refresh_one(&t.name).await?.map_or(upto, |s| s.earliest);
            tracing::info!(topic = %t.name, events = purged.purged, earliest, "retention purged events");
            out.insert(
                t.name.clone(),
                RetentionReport {
                    segments_deleted: 0,
                    bytes_deleted: 0,
                    earliest,
                    groups_missed: BTreeMap::new(),
                },
            );
        }
        Ok(out)
    }

    async fn close(&self) {
        if let Err(e) = self.inner.client.flush().await {
            tracing::warn!(error = %e, "flushing the NATS connection at close failed");
        }
    }
}
