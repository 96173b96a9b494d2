//! A consumer group as a JetStream durable pull consumer.
//!
//! The group's dispatcher (the broker holding its lease) fetches the
//! group's events from the consumer and settles every one there: `+ACK`
//! when a member acks, `-NAK` with the broker's backoff as the delay when
//! a member nacks or misses its ack deadline (JetStream redelivers it then,
//! counting the delivery), `+TERM` once a dead letter is durable, `+WPI`
//! for events it holds back behind their key. JetStream therefore keeps
//! the group's acks, nack delays and delivery counts, and redelivers on
//! its own `ack_wait` what a dispatcher that vanished still held.
//!
//! A dispatcher starts by resetting the consumer to the group's position
//! (`CONSUMER.RESET`, nats-server 2.14+; a group's first dispatcher
//! creates it there): what a previous dispatcher held unacked comes again,
//! in stream order, so per-key order holds across a takeover (JetStream
//! would otherwise redeliver them whenever each one's `ack_wait` ran out,
//! in any order). It then reads through one long-lived pull, whose
//! delivery sequence it checks for gaps.

use std::{sync::Arc, time::Duration};

use async_nats::{
    Client,
    jetstream::{
        self,
        consumer::{PullConsumer, pull},
        context::ConsumerInfoErrorKind,
        stream::ConsumerResetErrorKind,
    },
};
use futures_util::{FutureExt, StreamExt};
use mesh_log::{LogError, Record, Result};
use tokio::sync::Mutex;

use crate::{error::backend, names, read};

/// How the dispatcher settles one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Done: a member acked it (or it is not for this group).
    Ack,
    /// Deliver it again after this delay.
    Nak(Duration),
    /// Still being worked on: restart its `ack_wait`.
    Progress,
    /// Dead-lettered: never deliver it again.
    Term,
}

impl Settle {
    fn payload(self) -> bytes::Bytes {
        use jetstream::AckKind;
        match self {
            Settle::Ack => AckKind::Ack,
            Settle::Nak(d) => AckKind::Nak(Some(d)),
            Settle::Progress => AckKind::Progress,
            Settle::Term => AckKind::Term,
        }
        .into()
    }
}

/// One event fetched from the group's consumer.
#[derive(Debug)]
pub struct Fetched {
    pub record: Record,
    /// Where its settlement goes (the message's ack subject).
    pub reply: Arc<str>,
    /// Deliveries so far, this one included (JetStream's count).
    pub delivered: u32,
}

/// How often the server tells a waiting pull it is alive.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// How long one pull request of the long-lived pull lasts before the
/// client asks again.
const PULL_EXPIRES: Duration = Duration::from_secs(30);

/// How long a pull that found no consumer leader waits before it says so.
const NO_LEADER_PAUSE: Duration = Duration::from_millis(100);

/// A long-lived pull and the delivery sequence it must bring next.
struct Pulling {
    s: pull::Stream,
    next_dseq: u64,
}

/// The settings of a group's consumer.
#[derive(Clone, Copy, Debug)]
pub struct ConsumerSettings {
    /// JetStream redelivers an event unsettled for this long.
    pub ack_wait: Duration,
    /// Unsettled events JetStream lets the consumer have at most.
    pub max_ack_pending: i64,
    /// Events the long-lived pull asks for at a time: what may be on its
    /// way to the dispatcher beyond what its window holds.
    pub prefetch: usize,
    /// Likewise, in payload bytes.
    pub prefetch_bytes: usize,
}

/// One group's durable consumer on its topic's stream.
pub struct GroupConsumer {
    client: Client,
    js: jetstream::Context,
    /// The topic's stream.
    stream: String,
    /// The consumer's (durable) name: the group as one token.
    name: String,
    /// The group, for its metadata.
    group: String,
    settings: ConsumerSettings,
    /// How long a fetch may wait for the server's answer.
    timeout: Duration,
    /// This epoch's long-lived pull, started by the first `pull` after a
    /// rewind.
    pulling: Mutex<Option<Pulling>>,
    /// The consumer once looked up or created.
    consumer: Mutex<Option<(jetstream::stream::Stream<()>, PullConsumer)>>,
}

/// The durable name of `group`'s consumer.
pub fn consumer_name(group: &str) -> String {
    names::token(group)
}

impl GroupConsumer {
    pub(crate) fn new(
        client: Client,
        js: jetstream::Context,
        stream: String,
        group: &str,
        settings: ConsumerSettings,
        timeout: Duration,
    ) -> Self {
        GroupConsumer {
            client,
            js,
            stream,
            name: consumer_name(group),
            group: group.to_string(),
            settings,
            timeout,
            consumer: Mutex::new(None),
            pulling: Mutex::new(None),
        }
    }

    /// The consumer's settings, its first delivery the event at `start`.
    fn config(&self, start: u64) -> pull::Config {
        pull::Config {
            durable_name: Some(self.name.clone()),
            description: Some(format!("mesh consumer group {}", self.group)),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start + 1,
            },
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.settings.ack_wait,
            // The broker dead-letters after its own attempt limit.
            max_deliver: -1,
            max_ack_pending: self.settings.max_ack_pending,
            metadata: [("mesh.group".to_string(), self.group.clone())]
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    /// Creates the consumer with its first delivery at `start`.
    async fn create(
        &self,
        stream: &jetstream::stream::Stream<()>,
        start: u64,
    ) -> Result<PullConsumer> {
        stream
            .create_consumer(self.config(start))
            .await
            .map_err(backend("create the group's consumer"))
    }

    /// The stream and the consumer (cached after the first call); `true`
    /// when the consumer was created now, at `start`. An existing one
    /// whose settings differ (a changed ack deadline) is updated; its
    /// state stays.
    async fn open(
        &self,
        start: u64,
    ) -> Result<(jetstream::stream::Stream<()>, PullConsumer, bool)> {
        let mut cached = self.consumer.lock().await;
        if let Some((s, c)) = cached.as_ref() {
            return Ok((s.clone(), c.clone(), false));
        }
        let op = "open the group's consumer";
        let stream = self
            .js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(backend(op))?;
        let (c, created) = match stream.consumer_info(&self.name).await {
            Ok(info) => {
                let mut config = self.config(start);
                // Fixed at creation; a reset moves it.
                config.deliver_policy = info.config.deliver_policy;
                let same = info.config.ack_wait == config.ack_wait
                    && info.config.max_ack_pending == config.max_ack_pending;
                let c = if same {
                    stream.get_consumer(&self.name).await.map_err(backend(op))?
                } else {
                    stream.update_consumer(config).await.map_err(backend(op))?
                };
                (c, false)
            }
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {
                (self.create(&stream, start).await?, true)
            }
            Err(e) => return Err(backend(op)(e)),
        };
        *cached = Some((stream.clone(), c.clone()));
        Ok((stream, c, created))
    }

    /// Moves the consumer so that its next delivery is the event at
    /// `position`, forgetting what it had delivered and not settled: a
    /// `CONSUMER.RESET`, or a new consumer where there is none yet (or
    /// where `position` is before the one it was created at, which a reset
    /// cannot go below; the group's position is in its bucket, so the
    /// consumer holds nothing else worth keeping). A consumer whose leader
    /// is being elected does not answer for a moment: that is waited out,
    /// up to the request timeout.
    pub async fn rewind(&self, position: u64) -> Result<()> {
        let op = "reset the group's consumer";
        // What the old pull holds or still gets is of the old epoch.
        *self.pulling.lock().await = None;
        let (stream, _, created) = self.open(position).await?;
        if created {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let e = match stream.reset_consumer(&self.name, Some(position + 1)).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            match e.kind() {
                ConsumerResetErrorKind::InvalidReset | ConsumerResetErrorKind::NotFound => {
                    let _ = stream.delete_consumer(&self.name).await;
                    let c = self.create(&stream, position).await?;
                    *self.consumer.lock().await = Some((stream.clone(), c));
                    return Ok(());
                }
                _ if tokio::time::Instant::now() < deadline => {
                    tracing::info!(error = %e, "{op}: not yet; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ => {
                    return Err(LogError::Backend {
                        op,
                        reason: format!(
                            "consumer {} of stream {}: {e} (for {:?})",
                            self.name, self.stream, self.timeout
                        ),
                    });
                }
            }
        }
    }

    /// What the consumer has for the group, up to `max` events and about
    /// `max_bytes` (at least one event, if any comes): those
    /// already pushed into this epoch's long-lived pull, or the first to
    /// come within `wait` (none if nothing comes). Redeliveries that are
    /// due come first, then new events.
    ///
    /// The pull (async-nats' pull stream: the server pushes into it as
    /// events come, and it asks for more as they are taken) saves a round
    /// trip per read, and keeps at most [`ConsumerSettings::prefetch`]
    /// events on their way. Every delivery has the consumer's next
    /// delivery sequence; a gap means deliveries were lost on the way (a
    /// reconnect), which would come back only after their `ack_wait`,
    /// behind later events of their keys: that is an error, after which
    /// the caller rewinds.
    pub async fn pull(&self, max: usize, max_bytes: usize, wait: Duration) -> Result<Vec<Fetched>> {
        let (_, c, _) = self.open(0).await?;
        let op = "fetch the group's events";
        let mut pulling = self.pulling.lock().await;
        if pulling.is_none() {
            let s = c
                .stream()
                .max_messages_per_batch(self.settings.prefetch.max(1))
                .max_bytes_per_batch(self.settings.prefetch_bytes.max(1))
                .heartbeat(PULL_HEARTBEAT)
                .expires(PULL_EXPIRES)
                .messages()
                .await
                .map_err(backend(op))?;
            *pulling = Some(Pulling { s, next_dseq: 1 });
        }
        let p = pulling.as_mut().expect("just opened");
        let (mut out, mut bytes) = (Vec::new(), 0);
        let first = match tokio::time::timeout(wait, p.s.next()).await {
            Err(_) => return Ok(out),
            Ok(m) => m,
        };
        let mut next = Some(first);
        while let Some(m) = next {
            let fetched = match m {
                Some(Ok(m)) => self.fetched(m, &mut p.next_dseq),
                // No consumer leader yet (just created, or being elected)
                // and nothing delivered: nothing lost. Ask again shortly
                // with a new pull.
                Some(Err(e))
                    if e.kind() == pull::MessagesErrorKind::NoResponders
                        && out.is_empty()
                        && p.next_dseq == 1 =>
                {
                    *pulling = None;
                    drop(pulling);
                    tokio::time::sleep(NO_LEADER_PAUSE).await;
                    return Ok(out);
                }
                Some(Err(e)) => Err(backend(op)(e)),
                None => Err(LogError::Backend {
                    op,
                    reason: "the pull ended".into(),
                }),
            };
            match fetched {
                Ok(f) => {
                    bytes += f.record.payload.len();
                    out.push(f);
                }
                Err(e) => {
                    // What the pull had is taken for lost: the caller
                    // rewinds, and a new pull starts.
                    *pulling = None;
                    return Err(e);
                }
            }
            if out.len() >= max || bytes >= max_bytes {
                break;
            }
            next = p.s.next().now_or_never();
        }
        Ok(out)
    }

    /// One delivery, checked to be the pull's next (`next_dseq`).
    fn fetched(&self, m: jetstream::Message, next_dseq: &mut u64) -> Result<Fetched> {
        let op = "fetch the group's events";
        let info = m.info().map_err(backend(op))?;
        if info.consumer_sequence != *next_dseq {
            return Err(LogError::Backend {
                op,
                reason: format!(
                    "consumer {} of stream {} skipped deliveries {} to {} (lost on the way)",
                    self.name,
                    self.stream,
                    *next_dseq,
                    info.consumer_sequence.saturating_sub(1)
                ),
            });
        }
        *next_dseq += 1;
        let (seq, delivered) = (info.stream_sequence, info.delivered);
        let timestamp_us = (info.published.unix_timestamp_nanos() / 1000) as i64;
        let reply = m
            .message
            .reply
            .as_ref()
            .map(|r| Arc::<str>::from(r.as_str()))
            .ok_or_else(|| LogError::Backend {
                op,
                reason: "a fetched message has no ack subject".into(),
            })?;
        let id_hash = m.message.headers.as_ref().map_or(0, read::id_hash);
        Ok(Fetched {
            record: Record {
                offset: seq.saturating_sub(1),
                timestamp_us,
                id_hash,
                payload: m.message.payload.clone(),
            },
            reply,
            delivered: delivered.clamp(1, u32::MAX as i64) as u32,
        })
    }

    /// Sends settlements; they are acked by the stream's leader in order.
    pub async fn settle(&self, batch: Vec<(Arc<str>, Settle)>) -> Result<()> {
        for (reply, how) in batch {
            self.client
                .publish(reply.to_string(), how.payload())
                .await
                .map_err(backend("settle a delivery"))?;
        }
        Ok(())
    }
}

/// Deletes `group`'s consumer on `stream`, if there is one.
pub(crate) async fn delete(js: &jetstream::Context, stream: &str, group: &str) -> Result<()> {
    let op = "delete the group's consumer";
    let s = match js.get_stream_no_info(stream).await {
        Ok(s) => s,
        Err(e) if e.to_string().contains("not found") => return Ok(()),
        Err(e) => return Err(backend(op)(e)),
    };
    match s.delete_consumer(&consumer_name(group)).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("not found") => Ok(()),
        Err(e) => Err(backend(op)(e)),
    }
}
