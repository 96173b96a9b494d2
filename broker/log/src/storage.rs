//! The storage seam between the broker and whatever keeps its events.
//!
//! The gRPC layer talks only to [`Storage`]. [`LocalStorage`] implements it
//! with this crate's segmented log; a NATS JetStream or Kafka backend can
//! implement the same trait later without touching the broker's API code.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{
    config::{LogConfig, TopicConfig},
    error::{LogError, Result, io_err},
    format,
    fsutil::sync_dir,
    keycheck,
    keyring::Keyring,
    names,
    offsets::CommitMode,
    record::Record,
    topic::{GroupPosition, PendingAppend, RetentionReport, TopicLog, TopicStats},
    writer::{AppendRecord, Appended, now_us},
};

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicStats>;
    async fn delete_topic(&self, name: &str) -> Result<()>;
    fn topics(&self) -> Vec<TopicStats>;
    fn topic(&self, name: &str) -> Result<TopicStats>;

    /// Resolves once the records are durable under the fsync policy.
    async fn append(&self, topic: &str, records: Vec<AppendRecord>) -> Result<Vec<Appended>> {
        self.submit(topic, records).await?.await
    }
    /// Queues records and returns once they are queued; the returned
    /// future resolves when they are durable. Submissions made one after
    /// another are appended in that order.
    async fn submit(&self, topic: &str, records: Vec<AppendRecord>) -> Result<PendingAppend>;
    async fn read(
        &self,
        topic: &str,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>>;
    /// Changes whenever the topic's head moves.
    fn watch_head(&self, topic: &str) -> Result<watch::Receiver<u64>>;
    async fn offset_for_time(&self, topic: &str, timestamp_us: i64) -> Result<u64>;

    fn committed(&self, topic: &str, group: &str) -> Result<Option<u64>>;
    async fn commit(&self, topic: &str, group: &str, offset: u64, mode: CommitMode)
    -> Result<bool>;
    fn groups(&self, topic: &str) -> Result<Vec<GroupPosition>>;
    async fn delete_group(&self, topic: &str, group: &str) -> Result<()>;

    async fn enforce_retention(&self) -> Result<BTreeMap<String, RetentionReport>>;
    /// Writes and syncs everything queued, then stops accepting writes.
    async fn close(&self);
}

/// Topics in directories under `<data_dir>/topics/`, each a [`TopicLog`].
#[derive(Debug)]
pub struct LocalStorage {
    root: PathBuf,
    cfg: Arc<LogConfig>,
    /// The encryption keys, loaded and checked once at open and shared by
    /// every topic; `None` when encryption at rest is off.
    keys: Option<Arc<Keyring>>,
    topics: RwLock<HashMap<String, Arc<TopicLog>>>,
    /// Serializes creating and deleting topics. Without it two concurrent
    /// CreateTopic calls for one name both pass the "does it exist" check;
    /// the second then removes the first one's directory while the first
    /// keeps writing to the unlinked files, and a restart finds the topic
    /// empty. (Services create their topics at start, concurrently.)
    admin: tokio::sync::Mutex<()>,
    /// Held for the life of the storage so a second broker cannot open the
    /// same data directory and interleave writes.
    _lock: fs::File,
}

/// Runs file work off the async threads; `op` names it in the error if
/// the task panics or is cancelled.
async fn blocking<T: Send + 'static>(
    op: &'static str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|source| Err(LogError::Background { op, source }))
}

impl LocalStorage {
    /// Opens every topic under `data_dir`, recovering each.
    pub fn open(data_dir: &Path, cfg: LogConfig) -> Result<Self> {
        cfg.validate()?;
        let cfg = Arc::new(cfg);
        fs::create_dir_all(data_dir).map_err(io_err(data_dir))?;
        let lock_path = data_dir.join("LOCK");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        lock.try_lock().map_err(|e| {
            LogError::Config(format!(
                "data directory {} is in use by another process ({e})",
                data_dir.display()
            ))
        })?;
        // Before anything else is read or written: a newer format is
        // refused untouched.
        let stamped = format::check(data_dir)?;
        // Then the keys: a wrong key stops here, before recovery touches a
        // topic (see `keycheck` for the rules on turning encryption on or
        // off).
        let keys = cfg.load_keys()?;
        keycheck::check(data_dir, keys.as_deref())?;
        let root = data_dir.join("topics");
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        let mut topics = HashMap::new();
        for entry in fs::read_dir(&root).map_err(io_err(&root))? {
            let entry = entry.map_err(io_err(&root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if names::validate("topic", &name).is_err() || !entry.path().join("topic.json").exists()
            {
                // A topic whose creation never completed, or a stray file.
                continue;
            }
            let log = TopicLog::open_with_keys(&name, &entry.path(), cfg.clone(), keys.clone())?;
            topics.insert(name, Arc::new(log));
        }
        if stamped != Some(format::FORMAT_VERSION) {
            // New, or an older format (format 1, before the stamp or
            // stamped): it opened as it is, and format 2 only adds sealed
            // records, so stamp it before anything new is written.
            format::stamp(data_dir)?;
        }
        Ok(LocalStorage {
            root,
            cfg,
            keys,
            topics: RwLock::new(topics),
            admin: tokio::sync::Mutex::new(()),
            _lock: lock,
        })
    }

    /// Every open topic, as of now.
    fn all(&self) -> Vec<Arc<TopicLog>> {
        self.topics
            .read()
            .expect("topics lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn get(&self, name: &str) -> Result<Arc<TopicLog>> {
        self.topics
            .read()
            .expect("topics lock")
            .get(name)
            .cloned()
            .ok_or_else(|| LogError::TopicNotFound(name.to_string()))
    }

    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }
}

#[async_trait]
impl Storage for LocalStorage {
    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicStats> {
        names::validate("topic", name)?;
        let _admin = self.admin.lock().await;
        if self.topics.read().expect("topics lock").contains_key(name) {
            return Err(LogError::TopicExists(name.to_string()));
        }
        let dir = self.root.join(name);
        let (n, cfg, keys) = (name.to_string(), self.cfg.clone(), self.keys.clone());
        let log = blocking("create_topic", move || {
            // A leftover directory from a failed create or delete.
            if dir.exists() {
                fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
            }
            TopicLog::create_with_keys(&n, &dir, cfg, config, keys)
        })
        .await?;
        let stats = log.stats();
        let mut topics = self.topics.write().expect("topics lock");
        if topics.contains_key(name) {
            return Err(LogError::TopicExists(name.to_string()));
        }
        topics.insert(name.to_string(), Arc::new(log));
        Ok(stats)
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        let _admin = self.admin.lock().await;
        let log = self
            .topics
            .write()
            .expect("topics lock")
            .remove(name)
            .ok_or_else(|| LogError::TopicNotFound(name.to_string()))?;
        let root = self.root.clone();
        blocking("delete_topic", move || {
            log.close();
            let dir = log.dir().to_path_buf();
            fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
            sync_dir(&root)
        })
        .await
    }

    fn topics(&self) -> Vec<TopicStats> {
        let mut v: Vec<_> = self
            .topics
            .read()
            .expect("topics lock")
            .values()
            .map(|t| t.stats())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn topic(&self, name: &str) -> Result<TopicStats> {
        Ok(self.get(name)?.stats())
    }

    async fn submit(&self, topic: &str, records: Vec<AppendRecord>) -> Result<PendingAppend> {
        self.get(topic)?.submit(records).await
    }

    async fn read(
        &self,
        topic: &str,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>> {
        let log = self.get(topic)?;
        blocking("read", move || log.read(from, max_records, max_bytes)).await
    }

    fn watch_head(&self, topic: &str) -> Result<watch::Receiver<u64>> {
        Ok(self.get(topic)?.watch_head())
    }

    async fn offset_for_time(&self, topic: &str, timestamp_us: i64) -> Result<u64> {
        let log = self.get(topic)?;
        blocking("offset_for_time", move || log.offset_for_time(timestamp_us)).await
    }

    fn committed(&self, topic: &str, group: &str) -> Result<Option<u64>> {
        Ok(self.get(topic)?.committed(group))
    }

    async fn commit(
        &self,
        topic: &str,
        group: &str,
        offset: u64,
        mode: CommitMode,
    ) -> Result<bool> {
        let log = self.get(topic)?;
        let group = group.to_string();
        blocking("commit", move || log.commit(&group, offset, mode)).await
    }

    fn groups(&self, topic: &str) -> Result<Vec<GroupPosition>> {
        Ok(self.get(topic)?.groups())
    }

    async fn delete_group(&self, topic: &str, group: &str) -> Result<()> {
        let log = self.get(topic)?;
        let group = group.to_string();
        blocking("delete_group", move || log.delete_group(&group)).await
    }

    async fn enforce_retention(&self) -> Result<BTreeMap<String, RetentionReport>> {
        let logs = self.all();
        blocking("enforce_retention", move || {
            let now = now_us();
            let mut out = BTreeMap::new();
            for log in logs {
                out.insert(log.name().to_string(), log.enforce_retention(now)?);
            }
            Ok(out)
        })
        .await
    }

    async fn close(&self) {
        let logs = self.all();
        let _ = blocking("close", move || {
            for log in logs {
                log.close();
            }
            Ok(())
        })
        .await;
    }
}
