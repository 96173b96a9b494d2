//! Keeping the cached topics fresh ([`crate::topics`]): listing the
//! streams, re-reading one, and the notifications brokers send each other
//! when a head moves or a topic comes or goes.

use std::sync::Arc;

use futures_util::StreamExt;
use mesh_log::{Result, TopicStats};
use tokio::time::Instant;

use crate::{error::backend, storage::Inner, topics::stats_of};

impl Inner {
    /// Re-reads one topic's stream; forgets the topic if it is gone.
    pub(crate) async fn refresh_one(&self, topic: &str) -> Result<Option<TopicStats>> {
        match self.js.get_stream(self.names.stream(topic)).await {
            Ok(mut s) => {
                let info = s.info().await.map_err(backend("stream info"))?;
                let stats = stats_of(&self.names, info);
                if let Some(st) = &stats {
                    self.topics.upsert(st.clone());
                }
                Ok(stats)
            }
            Err(e) if e.to_string().contains("not found") => {
                self.topics.remove(topic);
                Ok(None)
            }
            Err(e) => Err(backend("stream info")(e)),
        }
    }

    pub(crate) async fn refresh_all(&self) -> Result<()> {
        let started = Instant::now();
        let mut streams = self.js.streams();
        let mut listed = Vec::new();
        while let Some(info) = streams.next().await {
            let info = info.map_err(backend("list streams"))?;
            if let Some(st) = stats_of(&self.names, &info) {
                listed.push(st);
            }
        }
        self.topics.replace_all(listed, started);
        Ok(())
    }

    pub(crate) async fn refresh_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.opts.refresh_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.refresh_all().await {
                tracing::debug!(error = %e, "refreshing the topic list failed; retrying");
            }
        }
    }

    /// Follows other brokers' announcements of head moves and of created
    /// or deleted topics.
    pub(crate) async fn notifications(self: Arc<Self>) {
        loop {
            let subs = async {
                let heads = self.client.subscribe(self.names.notify_head("*")).await?;
                let topics = self.client.subscribe(self.names.notify_topic("*")).await?;
                Ok::<_, async_nats::SubscribeError>((heads, topics))
            };
            let (mut heads, mut topics) = match subs.await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to broker notifications; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    continue;
                }
            };
            loop {
                tokio::select! {
                    m = heads.next() => match m {
                        Some(m) => {
                            let topic = m.subject.rsplit('.').next().and_then(crate::names::untoken);
                            let head = std::str::from_utf8(&m.payload).ok().and_then(|s| s.parse().ok());
                            if let (Some(t), Some(h)) = (topic, head) {
                                self.topics.advance(&t, h);
                            }
                        }
                        None => break,
                    },
                    m = topics.next() => match m {
                        Some(m) => {
                            if let Some(t) = m.subject.rsplit('.').next().and_then(crate::names::untoken) {
                                let _ = self.refresh_one(&t).await;
                            }
                        }
                        None => break,
                    },
                }
            }
        }
    }

    pub(crate) async fn notify(&self, subject: String, payload: String) {
        if let Err(e) = self.client.publish(subject, payload.into()).await {
            tracing::debug!(error = %e, "broker notification not sent");
        }
    }
}
