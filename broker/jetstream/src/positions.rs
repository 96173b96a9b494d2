//! Consumer-group positions in a JetStream key-value bucket
//! (`<namespace>-positions`, replicated like the streams), one key per (topic, group)
//! holding the committed offset as decimal text.
//!
//! Every broker keeps the whole bucket in memory and follows it with a
//! watch, so `committed` answers without a round trip and a group taken
//! over from another broker starts where that one committed. The watch
//! starts with every key's last value; the start waits until it has
//! caught up.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use async_nats::jetstream::{
    self,
    kv::{self, Operation},
};
use bytes::Bytes;
use futures_util::StreamExt;
use mesh_log::{CommitMode, LogError, Result};
use tokio::{sync::oneshot, task::JoinHandle};

use crate::{error::backend, names};

type Key = (String, String);

pub struct Positions {
    kv: kv::Store,
    /// Every group's committed offset and the bucket revision it was
    /// written at, as last written here or seen by the watch. A change
    /// applies only over an older revision, so the watch catching up on
    /// this broker's own writes never moves a position back.
    cache: RwLock<HashMap<Key, (u64, u64)>>,
}

impl Positions {
    /// Opens (creating if needed) the bucket and loads it; the returned
    /// task follows it until aborted.
    pub async fn open(
        js: &jetstream::Context,
        bucket: String,
        replicas: usize,
        timeout: Duration,
    ) -> Result<(Arc<Positions>, JoinHandle<()>)> {
        let config = kv::Config {
            bucket: bucket.clone(),
            description: "mesh: consumer-group positions, <topic>.<group> = offset".into(),
            history: 1,
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let kv = crate::connect::retrying("open the group positions bucket", timeout, || {
            js.create_or_update_key_value(config.clone())
        })
        .await?;
        let positions = Arc::new(Positions {
            kv,
            cache: RwLock::new(HashMap::new()),
        });
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(positions.clone().follow(ready_tx));
        match tokio::time::timeout(timeout, ready_rx).await {
            Ok(Ok(())) => Ok((positions, task)),
            _ => {
                task.abort();
                Err(LogError::Backend {
                    op: "load group positions",
                    reason: format!("bucket {bucket} did not load within {timeout:?}"),
                })
            }
        }
    }

    /// Applies every change to the bucket, re-watching after a failure.
    /// Signals `ready` once the first watch has caught up.
    async fn follow(self: Arc<Self>, ready: oneshot::Sender<()>) {
        let mut ready = Some(ready);
        loop {
            let empty = match self.kv.status().await {
                Ok(s) => s.info.state.messages == 0,
                Err(e) => {
                    tracing::warn!(error = %e, "group positions: status failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let mut watch = match self.kv.watch_with_history(">").await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "group positions: watch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if empty && let Some(r) = ready.take() {
                let _ = r.send(());
            }
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else {
                    break;
                };
                self.apply(&entry);
                if entry.delta == 0
                    && let Some(r) = ready.take()
                {
                    let _ = r.send(());
                }
            }
            tracing::info!("group positions: watch ended; watching again");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn apply(&self, entry: &kv::Entry) {
        let Some(key) = names::parse_group_key(&entry.key) else {
            return;
        };
        let mut cache = self.cache.write().expect("positions lock");
        if cache
            .get(&key)
            .is_some_and(|&(_, rev)| rev >= entry.revision)
        {
            return;
        }
        match entry.operation {
            Operation::Put => {
                if let Some(v) = std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                {
                    cache.insert(key, (v, entry.revision));
                }
            }
            Operation::Delete | Operation::Purge => {
                cache.remove(&key);
            }
        }
    }

    pub fn get(&self, topic: &str, group: &str) -> Option<u64> {
        let cache = self.cache.read().expect("positions lock");
        cache
            .get(&(topic.to_string(), group.to_string()))
            .map(|&(o, _)| o)
    }

    /// Every group of `topic` and its position.
    pub fn of_topic(&self, topic: &str) -> Vec<(String, u64)> {
        let cache = self.cache.read().expect("positions lock");
        let mut v: Vec<_> = cache
            .iter()
            .filter(|((t, _), _)| t == topic)
            .map(|((_, g), &(o, _))| (g.clone(), o))
            .collect();
        v.sort();
        v
    }

    /// Stores a position durably (the bucket's replicas acknowledged it).
    /// `Forward` refuses to move it back, as the embedded log does.
    pub async fn commit(
        &self,
        topic: &str,
        group: &str,
        offset: u64,
        mode: CommitMode,
    ) -> Result<bool> {
        match self.get(topic, group) {
            Some(cur) if cur == offset => return Ok(false),
            Some(cur) if cur > offset && mode == CommitMode::Forward => {
                return Err(LogError::OffsetRegression {
                    topic: topic.into(),
                    group: group.into(),
                    current: cur,
                    requested: offset,
                });
            }
            _ => {}
        }
        let rev = self
            .kv
            .put(
                names::group_key(topic, group),
                Bytes::from(offset.to_string()),
            )
            .await
            .map_err(backend("commit a group position"))?;
        let mut cache = self.cache.write().expect("positions lock");
        let key = (topic.to_string(), group.to_string());
        if cache.get(&key).is_none_or(|&(_, r)| r < rev) {
            cache.insert(key, (offset, rev));
        }
        Ok(true)
    }

    /// Forgets a group's position; `false` if it had none.
    pub async fn delete(&self, topic: &str, group: &str) -> Result<bool> {
        if self.get(topic, group).is_none() {
            return Ok(false);
        }
        self.kv
            .purge(names::group_key(topic, group))
            .await
            .map_err(backend("delete a group position"))?;
        let mut cache = self.cache.write().expect("positions lock");
        cache.remove(&(topic.to_string(), group.to_string()));
        Ok(true)
    }
}
