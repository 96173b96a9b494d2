//! Which broker runs a (topic, group)'s dispatcher: a lease in a JetStream
//! key-value bucket (`<namespace>-leases`), one key per group.
//!
//! Per-key order and member credit are decided by one dispatcher, so with
//! several brokers each group must have exactly one at a time. A broker
//! takes a group by creating its key (which fails while another holds
//! it), keeps it by updating the key at the revision it last wrote (which
//! fails if anyone else wrote since), and gives it back by deleting it.
//! The bucket's `max_age` is the lease's time to live: a broker that dies
//! stops renewing, its keys expire, and another broker can take the
//! group.
//!
//! Safety against a holder that cannot reach the servers: it must stop
//! dispatching once `ttl / 2` has passed since its last successful
//! renewal ([`Lease::expired`]), which is before the servers can expire
//! the key and hand the group to someone else.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    kv::{self, CreateErrorKind, Operation, UpdateErrorKind},
};
use bytes::Bytes;
use mesh_log::{LogError, Result};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::{error::backend, names};

/// Who holds a lease: stored as the key's value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The broker process (random per start).
    pub id: String,
    /// Its gRPC URL, where other brokers forward the group's members.
    pub url: String,
}

/// The leases of one mesh.
#[derive(Clone)]
pub struct Leases {
    kv: kv::Store,
    ttl: Duration,
}

/// A lease this broker holds.
#[derive(Debug)]
pub struct Lease {
    key: String,
    /// The revision of the key this broker last wrote.
    revision: u64,
    /// When the last successful write was sent.
    renewed: Instant,
    ttl: Duration,
}

/// The answer to [`Leases::acquire`].
#[derive(Debug)]
pub enum Acquire {
    /// This broker holds the group now.
    Held(Lease),
    /// Another broker holds it.
    Taken(Holder),
}

impl Leases {
    /// Opens (creating if needed) the lease bucket with `ttl` as its
    /// `max_age`.
    pub async fn open(
        js: &jetstream::Context,
        bucket: String,
        replicas: usize,
        ttl: Duration,
        within: Duration,
    ) -> Result<Leases> {
        let config = kv::Config {
            bucket,
            description: "mesh: which broker dispatches each consumer group".into(),
            history: 1,
            max_age: ttl,
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let kv = crate::connect::retrying("open the group leases bucket", within, || {
            js.create_or_update_key_value(config.clone())
        })
        .await?;
        Ok(Leases { kv, ttl })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes the (topic, group) lease for `me` if nobody holds it.
    pub async fn acquire(&self, topic: &str, group: &str, me: &Holder) -> Result<Acquire> {
        let key = names::group_key(topic, group);
        let value = Bytes::from(serde_json::to_vec(me).map_err(backend("acquire a lease"))?);
        // Twice: a key can expire between a failed create and the read.
        for _ in 0..2 {
            let sent = Instant::now();
            match self.kv.create(&key, value.clone()).await {
                Ok(revision) => {
                    return Ok(Acquire::Held(Lease {
                        key,
                        revision,
                        renewed: sent,
                        ttl: self.ttl,
                    }));
                }
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(backend("acquire a lease")(e)),
            }
            let entry = self.kv.entry(&key).await.map_err(backend("read a lease"))?;
            if let Some(e) = entry.filter(|e| e.operation == Operation::Put)
                && let Ok(holder) = serde_json::from_slice::<Holder>(&e.value)
            {
                return Ok(Acquire::Taken(holder));
            }
        }
        Err(LogError::Backend {
            op: "acquire a lease",
            reason: format!(
                "the lease of group {group:?} of topic {topic:?} changes hands too fast"
            ),
        })
    }

    /// Renews a held lease: `false` if someone else wrote it since (it is
    /// lost). An error means it may be lost: stop dispatching if
    /// [`Lease::expired`] says so.
    pub async fn renew(&self, lease: &mut Lease, me: &Holder) -> Result<bool> {
        let value = Bytes::from(serde_json::to_vec(me).map_err(backend("renew a lease"))?);
        let sent = Instant::now();
        match self.kv.update(&lease.key, value, lease.revision).await {
            Ok(revision) => {
                lease.revision = revision;
                lease.renewed = sent;
                Ok(true)
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(backend("renew a lease")(e)),
        }
    }

    /// Who holds the (topic, group) lease now, if anyone.
    pub async fn holder(&self, topic: &str, group: &str) -> Result<Option<Holder>> {
        let entry = self
            .kv
            .entry(names::group_key(topic, group))
            .await
            .map_err(backend("read a lease"))?;
        Ok(entry
            .filter(|e| e.operation == Operation::Put)
            .and_then(|e| serde_json::from_slice(&e.value).ok()))
    }

    /// Gives a lease back, so another broker can take the group at once.
    pub async fn release(&self, lease: Lease) {
        if let Err(e) = self
            .kv
            .delete_expect_revision(&lease.key, Some(lease.revision))
            .await
        {
            tracing::debug!(key = %lease.key, error = %e, "lease not released; it expires instead");
        }
    }
}

impl Lease {
    /// Past half its time to live since the last renewal: the servers may
    /// expire it soon, so its holder must stop dispatching.
    pub fn expired(&self) -> bool {
        self.renewed.elapsed() >= self.ttl / 2
    }

    /// How often to renew: three times per half-life.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 6
    }
}
