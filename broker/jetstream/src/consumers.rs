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
//! (`CONSUMER.RESET`, nats-server 2.14+): what a previous dispatcher held
//! unacked comes again, in stream order, so per-key order holds across a
//! takeover (JetStream would otherwise redeliver them whenever each one's
//! `ack_wait` ran out, in any order).

use std::time::Duration;

use async_nats::{
    Client, StatusCode,
    jetstream::{
        self,
        consumer::{PullConsumer, pull},
    },
};
use futures_util::StreamExt;
use mesh_log::{LogError, Record, Result};
use serde_json::json;
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
    pub reply: String,
    /// Deliveries so far, this one included (JetStream's count).
    pub delivered: u32,
}

/// The settings of a group's consumer.
#[derive(Clone, Copy, Debug)]
pub struct ConsumerSettings {
    /// JetStream redelivers an event unsettled for this long.
    pub ack_wait: Duration,
    /// Unsettled events JetStream lets the consumer have at most.
    pub max_ack_pending: i64,
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
        }
    }

    fn config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(self.name.clone()),
            description: Some(format!("mesh consumer group {}", self.group)),
            // Any position is reachable by a reset (a seek backwards too).
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
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

    /// The stream and the consumer, created (or its settings updated) on
    /// first use.
    async fn open(&self) -> Result<(jetstream::stream::Stream<()>, PullConsumer)> {
        let mut cached = self.consumer.lock().await;
        if let Some(c) = cached.as_ref() {
            return Ok(c.clone());
        }
        let op = "open the group's consumer";
        let stream = self
            .js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(backend(op))?;
        let config = self.config();
        let c = match stream.create_consumer(config.clone()).await {
            Ok(c) => c,
            // It exists with other settings (a changed ack deadline):
            // update it; its state stays.
            Err(_) => stream.update_consumer(config).await.map_err(backend(op))?,
        };
        *cached = Some((stream.clone(), c.clone()));
        Ok((stream, c))
    }

    /// Resets the consumer so that its next delivery is the event at
    /// `position`, forgetting what it had delivered and not settled. A
    /// consumer just created, or one whose leader is being elected, does
    /// not answer for a moment: that is waited out, up to the request
    /// timeout.
    pub async fn rewind(&self, position: u64) -> Result<()> {
        let (stream, _) = self.open().await?;
        crate::connect::retrying("reset the group's consumer", self.timeout, || {
            stream.reset_consumer(&self.name, Some(position + 1))
        })
        .await
        .map_err(|e| LogError::Backend {
            op: "reset the group's consumer",
            reason: format!("consumer {} of stream {}: {e}", self.name, self.stream),
        })?;
        Ok(())
    }

    /// What the consumer has for the group now, up to `max` events and
    /// about `max_bytes`: redeliveries that are due first, then new events.
    /// All of one batch, or an error (the caller then rewinds).
    /// (A `no_wait` pull request by hand, as `read::batch` does for direct
    /// gets: the client library's fetch reports the server's normal
    /// end-of-batch status, `409 Batch Completed`, as an error.)
    pub async fn fetch(&self, max: usize, max_bytes: usize) -> Result<Vec<Fetched>> {
        self.open().await?;
        let op = "fetch the group's events";
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(backend(op))?;
        let req = json!({ "batch": max.max(1), "max_bytes": max_bytes.max(1), "no_wait": true });
        self.client
            .publish_with_reply(
                format!("$JS.API.CONSUMER.MSG.NEXT.{}.{}", self.stream, self.name),
                inbox,
                req.to_string().into(),
            )
            .await
            .map_err(backend(op))?;
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + self.timeout;
        while out.len() < max.max(1) {
            let msg = match tokio::time::timeout_at(deadline, sub.next()).await {
                Ok(Some(m)) => m,
                // Never a part of a batch: the rest would still reach the
                // consumer as delivered, and come back only after its
                // ack_wait, behind events the group has had since.
                Ok(None) => {
                    return Err(LogError::Backend {
                        op,
                        reason: "the connection closed during a fetch".into(),
                    });
                }
                Err(_) => {
                    return Err(LogError::Backend {
                        op,
                        reason: format!(
                            "consumer {} of stream {} did not answer within {:?}",
                            self.name, self.stream, self.timeout
                        ),
                    });
                }
            };
            match msg.status {
                None => out.push(self.fetched(msg)?),
                // The batch's count is fulfilled, so the rest of its
                // messages are on their way (the status can overtake
                // them): read on up to `max`.
                Some(s)
                    if s.as_u16() == 409
                        && msg.description.as_deref() == Some("Batch Completed") => {}
                // No messages (404), request expired (408), or a limit
                // reached (409): done.
                Some(s) if matches!(s.as_u16(), 404 | 408 | 409) => break,
                Some(s) if s == StatusCode::NO_RESPONDERS => {
                    return Err(LogError::Backend {
                        op,
                        reason: format!(
                            "no server answers for consumer {} of stream {} (electing a leader?)",
                            self.name, self.stream
                        ),
                    });
                }
                // Heartbeats and flow control: not for no_wait pulls.
                Some(_) => continue,
            }
        }
        let _ = sub.unsubscribe().await;
        Ok(out)
    }

    fn fetched(&self, message: async_nats::Message) -> Result<Fetched> {
        let op = "fetch the group's events";
        let m = jetstream::Message {
            message,
            context: self.js.clone(),
        };
        let info = m.info().map_err(backend(op))?;
        let (seq, delivered) = (info.stream_sequence, info.delivered);
        let timestamp_us = (info.published.unix_timestamp_nanos() / 1000) as i64;
        let reply = m
            .message
            .reply
            .as_ref()
            .map(|r| r.to_string())
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
    pub async fn settle(&self, batch: Vec<(String, Settle)>) -> Result<()> {
        for (reply, how) in batch {
            self.client
                .publish(reply, how.payload())
                .await
                .map_err(backend("settle a delivery"))?;
        }
        Ok(())
    }

    /// Settlements published so far, flushed to the server.
    pub async fn flush(&self) -> Result<()> {
        self.client
            .flush()
            .await
            .map_err(backend("settle a delivery"))
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
