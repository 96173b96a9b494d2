//! What every RPC handler shares: storage, config, the running groups and
//! the shutdown signal.

use std::sync::Arc;

use mesh_log::{LogError, Storage};
use tokio::sync::{Semaphore, watch};

use crate::{
    auth::Auth,
    config::BrokerConfig,
    error::{BrokerError, Result},
    groups::Groups,
    limits::{PublishRate, StreamsPerConnection},
    outbox::Budget,
    peers::Cluster,
};

pub struct Shared {
    pub storage: Arc<dyn Storage>,
    /// Who is calling and what they may do; every Broker RPC asks it
    /// first.
    pub auth: Auth,
    pub cfg: Arc<BrokerConfig>,
    pub groups: Groups,
    /// Becomes true when shutdown starts.
    pub stopping: watch::Receiver<bool>,
    pub subscribers: Arc<Semaphore>,
    pub publishers: Arc<Semaphore>,
    /// Bytes of responses queued for subscribers, broker-wide
    /// (`limits.max_buffered_bytes`); every Subscribe stream's outbox
    /// draws on it.
    pub buffers: Budget,
    /// Publish and Subscribe streams per connection
    /// (`limits.max_streams_per_connection`).
    pub streams: StreamsPerConnection,
    /// Events per second per principal
    /// (`limits.publish_rate_per_principal`).
    pub publish_rate: PublishRate,
    /// The other brokers and this one's group leases, with the JetStream
    /// backend; `None` on the embedded log, where this broker is alone.
    pub cluster: Option<Cluster>,
}

impl Shared {
    pub fn new(
        storage: Arc<dyn Storage>,
        cfg: Arc<BrokerConfig>,
        auth: Auth,
        stopping: watch::Receiver<bool>,
        cluster: Option<Cluster>,
    ) -> Self {
        Shared {
            cluster,
            auth,
            subscribers: Arc::new(Semaphore::new(cfg.limits.max_subscribers)),
            publishers: Arc::new(Semaphore::new(cfg.limits.max_publishers)),
            buffers: Budget::new(
                cfg.limits.max_buffered_bytes,
                cfg.limits.subscriber_buffer_bytes,
            ),
            streams: StreamsPerConnection::new(cfg.limits.max_streams_per_connection),
            publish_rate: PublishRate::new(
                cfg.limits.publish_rate_per_principal,
                cfg.limits.publish_burst,
            ),
            storage,
            cfg,
            groups: Groups::default(),
            stopping,
        }
    }

    /// Checks that a topic exists, creating it if the config allows.
    pub async fn ensure_topic(&self, field: &str, name: &str) -> Result<()> {
        mesh_log::names::validate("topic", name)
            .map_err(|e| BrokerError::invalid(field, e.to_string()))?;
        match self.storage.topic(name) {
            Ok(_) => Ok(()),
            Err(LogError::TopicNotFound(_)) if self.cfg.auto_create_topics => {
                match self
                    .storage
                    .create_topic(name, self.cfg.topic_config(None, None, None))
                    .await
                {
                    Ok(_) | Err(LogError::TopicExists(_)) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            Err(LogError::TopicNotFound(_)) => Err(BrokerError::NotFound(format!(
                "{field}: topic {name:?} not found (auto_create_topics is off; create it with CreateTopic)"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// No Subscribe or Publish stream is open.
    pub fn idle(&self) -> bool {
        self.subscribers.available_permits() == self.cfg.limits.max_subscribers
            && self.publishers.available_permits() == self.cfg.limits.max_publishers
    }

    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }
}

/// Resolves once shutdown has started. (The guard `wait_for` returns is not
/// `Send`, so it must not live across an await in a spawned task.)
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
