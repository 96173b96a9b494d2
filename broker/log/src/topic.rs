//! One topic's log: opening it (recovery is in `recovery`), appending
//! through the group-commit writer, reading, seeking by time, group
//! positions and retention.
//!
//! A topic is one log (no partitions). Per-key order is kept by the
//! broker's dispatcher, which holds back only the failing key, so a topic
//! does not need partitions for ordering; one log per topic also gives the
//! group commit the largest batches. Offsets and the wire format carry a
//! partition number (always 0) so partitions can be added later.

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex, RwLock},
    task::{Context, Poll},
    thread::JoinHandle,
};

use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    config::{LogConfig, TopicConfig},
    error::{LogError, Result, io_err},
    fsutil::{replace_file, sync_dir},
    keyring::Keyring,
    offsets::{CommitMode, GroupOffsets},
    record::Record,
    recovery::{self, Recovered},
    segment::Segment,
    shared::Shared,
    writer::{AppendRecord, Appended, Job, Writer},
};

const TOPIC_META: &str = "topic.json";

/// An append that has been queued: await it for the outcome.
pub struct PendingAppend(Pin<Box<dyn Future<Output = Result<Vec<Appended>>> + Send>>);

impl PendingAppend {
    pub fn ready(r: Result<Vec<Appended>>) -> Self {
        PendingAppend(Box::pin(std::future::ready(r)))
    }

    pub fn new(f: impl Future<Output = Result<Vec<Appended>>> + Send + 'static) -> Self {
        PendingAppend(Box::pin(f))
    }
}

impl Future for PendingAppend {
    type Output = Result<Vec<Appended>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

/// What [`TopicLog::enforce_retention`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    /// The earliest retained offset afterwards.
    pub earliest: u64,
    /// Groups that had not consumed events the size cap deleted, with how
    /// many they missed.
    pub groups_missed: BTreeMap<String, u64>,
}

/// A consumer group's position in a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPosition {
    pub group: String,
    pub committed: u64,
    /// Events retained after the committed offset that the group has yet
    /// to consume.
    pub lag: u64,
    /// Events the group never consumed because retention deleted them.
    pub missed: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicStats {
    pub name: String,
    pub config: TopicConfig,
    pub earliest: u64,
    pub head: u64,
    pub bytes: u64,
    pub segments: usize,
}

pub struct TopicLog {
    shared: Arc<Shared>,
    config: RwLock<TopicConfig>,
    offsets: GroupOffsets,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for TopicLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicLog")
            .field("name", &self.shared.name)
            .finish()
    }
}

fn write_meta(dir: &Path, cfg: &TopicConfig) -> Result<()> {
    let json = serde_json::to_vec_pretty(cfg).map_err(|e| LogError::Config(e.to_string()))?;
    replace_file(&dir.join(TOPIC_META), &json)?;
    sync_dir(dir)
}

pub(crate) fn read_meta(dir: &Path) -> Result<TopicConfig> {
    let path = dir.join(TOPIC_META);
    let data = fs::read(&path).map_err(io_err(&path))?;
    serde_json::from_slice(&data).map_err(|e| LogError::Config(format!("{}: {e}", path.display())))
}

impl TopicLog {
    /// Creates a new topic directory and opens it.
    ///
    /// With `encryption_key_file` set, this loads the key file itself but
    /// does not check it against the data directory's key verifiers:
    /// [`crate::LocalStorage`] does that, once, before opening any topic.
    pub fn create(
        name: &str,
        dir: &Path,
        cfg: Arc<LogConfig>,
        topic_cfg: TopicConfig,
    ) -> Result<Self> {
        let keys = cfg.load_keys()?;
        Self::create_with_keys(name, dir, cfg, topic_cfg, keys)
    }

    /// [`Self::create`] with the keys already loaded (and checked).
    pub(crate) fn create_with_keys(
        name: &str,
        dir: &Path,
        cfg: Arc<LogConfig>,
        topic_cfg: TopicConfig,
        keys: Option<Arc<Keyring>>,
    ) -> Result<Self> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_meta(dir, &topic_cfg)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        Self::open_with_keys(name, dir, cfg, keys)
    }

    /// Opens and recovers an existing topic directory (see
    /// [`crate::recovery`]). Keys as in [`Self::create`].
    pub fn open(name: &str, dir: &Path, cfg: Arc<LogConfig>) -> Result<Self> {
        let keys = cfg.load_keys()?;
        Self::open_with_keys(name, dir, cfg, keys)
    }

    /// [`Self::open`] with the keys already loaded (and checked).
    pub(crate) fn open_with_keys(
        name: &str,
        dir: &Path,
        cfg: Arc<LogConfig>,
        keys: Option<Arc<Keyring>>,
    ) -> Result<Self> {
        cfg.validate()?;
        let topic_cfg = read_meta(dir)?;
        let Recovered { segments, start } = recovery::recover(name, dir, &cfg, keys.as_deref())?;
        let head = start.active.next_offset();
        let shared = Arc::new(Shared::new(
            name,
            dir.to_path_buf(),
            cfg.clone(),
            keys,
            segments,
            head,
        ));
        let offsets = GroupOffsets::open(name, dir)?;
        let (tx, rx) = mpsc::channel(cfg.queue_depth);
        let threads = Writer::spawn(shared.clone(), start, rx).map_err(io_err(dir))?;
        Ok(TopicLog {
            shared,
            config: RwLock::new(topic_cfg),
            offsets,
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(threads),
        })
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Appends records and resolves once they are durable under the
    /// configured fsync policy. Records of one call get consecutive offsets
    /// unless some are duplicates.
    pub async fn append(&self, records: Vec<AppendRecord>) -> Result<Vec<Appended>> {
        self.submit(records).await?.await
    }

    /// Queues records for appending and returns once they are queued, with
    /// a future that resolves when they are durable. Calls that are queued
    /// in order are appended in that order, so a publisher can keep many
    /// batches in flight without reordering them.
    pub async fn submit(&self, records: Vec<AppendRecord>) -> Result<PendingAppend> {
        let limit = self.shared.cfg.max_record_bytes;
        if let Some(r) = records.iter().find(|r| r.payload.len() > limit) {
            return Err(LogError::RecordTooLarge {
                size: r.payload.len(),
                limit,
            });
        }
        let name = self.shared.name.clone();
        if records.is_empty() {
            return Ok(PendingAppend::ready(Ok(Vec::new())));
        }
        if let Some(reason) = self.shared.poisoned() {
            return Err(LogError::Poisoned {
                topic: name,
                reason,
            });
        }
        let tx = self
            .tx
            .lock()
            .expect("tx lock")
            .clone()
            .ok_or_else(|| LogError::Closed(name.clone()))?;
        let (reply, rx) = oneshot::channel();
        tx.send(Job { records, reply })
            .await
            .map_err(|_| LogError::Closed(name.clone()))?;
        Ok(PendingAppend(Box::pin(async move {
            rx.await.map_err(|_| LogError::Closed(name))?
        })))
    }

    /// One past the last readable offset.
    pub fn head(&self) -> u64 {
        *self.shared.head.borrow()
    }

    /// The earliest offset still retained.
    pub fn earliest(&self) -> u64 {
        self.shared.segments.read().expect("segments lock")[0].base()
    }

    /// A receiver that changes whenever the head moves; consumers wait on
    /// it instead of polling.
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.shared.head.subscribe()
    }

    /// Reads up to `max_records` records from `from`, stopping after
    /// `max_bytes` of payload (but always returning at least one record if
    /// one is available). Empty when `from` is at the head.
    ///
    /// A read that reaches a damaged record returns the records before
    /// it; a read starting at the damaged record fails with
    /// [`LogError::Corrupt`]. Damage before `from` does not hide the
    /// intact records from `from` on.
    pub fn read(&self, from: u64, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
        let head = self.head();
        let segs: Vec<Arc<Segment>> = {
            let all = self.shared.segments.read().expect("segments lock");
            let earliest = all[0].base();
            if from < earliest {
                return Err(LogError::OffsetTruncated {
                    topic: self.shared.name.clone(),
                    requested: from,
                    earliest,
                });
            }
            if from >= head || max_records == 0 {
                return Ok(Vec::new());
            }
            let i = all.partition_point(|s| s.base() <= from) - 1;
            all[i..].to_vec()
        };
        let mut out = Vec::with_capacity(max_records.min(1024));
        let mut bytes = 0;
        for seg in segs {
            if seg.base() >= head
                || out.len() >= max_records
                || (bytes >= max_bytes && !out.is_empty())
            {
                break;
            }
            // The previous segment stopped short of its end (its next
            // record would have passed max_bytes): going on here would skip
            // the rest of it.
            if out
                .last()
                .is_some_and(|r: &Record| r.offset + 1 != seg.base())
            {
                break;
            }
            let budget = if out.is_empty() {
                max_bytes
            } else {
                max_bytes - bytes
            };
            match seg.read(
                from.max(seg.base()),
                head,
                max_records - out.len(),
                budget,
                self.shared.keys.as_deref(),
                &mut out,
            ) {
                Ok(n) => bytes += n,
                // The records before the damage are intact: hand them out.
                // The next read, starting at the damaged offset, reports
                // the error (dropping them made a consumer lose every
                // good event read in the same call as the damage).
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The first offset published at or after `timestamp_us`, or the head
    /// if there is none yet.
    pub fn offset_for_time(&self, timestamp_us: i64) -> Result<u64> {
        let head = self.head();
        let segs = self.shared.segments.read().expect("segments lock").clone();
        for seg in segs {
            if seg.base() >= head {
                break;
            }
            if seg.max_timestamp_us() >= timestamp_us
                && let Some(o) = seg.offset_for_time(timestamp_us, head)?
            {
                return Ok(o);
            }
        }
        Ok(head)
    }

    pub fn config(&self) -> TopicConfig {
        self.config.read().expect("config lock").clone()
    }

    pub fn stats(&self) -> TopicStats {
        let segs = self.shared.segments.read().expect("segments lock");
        TopicStats {
            name: self.shared.name.clone(),
            config: self.config(),
            earliest: segs[0].base(),
            head: self.head(),
            bytes: segs.iter().map(|s| s.len()).sum(),
            segments: segs.len(),
        }
    }

    // ---- consumer groups ----

    pub fn committed(&self, group: &str) -> Option<u64> {
        self.offsets.get(group)
    }

    /// Durably stores a group's position. `Forward` refuses to move it
    /// back; an offset beyond the head is refused either way.
    pub fn commit(&self, group: &str, offset: u64, mode: CommitMode) -> Result<bool> {
        crate::names::validate("group", group)?;
        let head = self.head();
        if offset > head {
            return Err(LogError::OffsetBeyondHead {
                topic: self.shared.name.clone(),
                requested: offset,
                head,
            });
        }
        self.offsets.commit(group, offset, mode)
    }

    pub fn delete_group(&self, group: &str) -> Result<()> {
        if !self.offsets.delete(group)? {
            return Err(LogError::GroupNotFound {
                topic: self.shared.name.clone(),
                group: group.to_string(),
            });
        }
        Ok(())
    }

    pub fn group_position(&self, group: &str) -> Option<GroupPosition> {
        let committed = self.offsets.get(group)?;
        Some(self.position(group, committed))
    }

    fn position(&self, group: &str, committed: u64) -> GroupPosition {
        let earliest = self.earliest();
        let head = self.head();
        GroupPosition {
            group: group.to_string(),
            committed,
            lag: head.saturating_sub(committed.max(earliest)),
            missed: earliest.saturating_sub(committed),
        }
    }

    pub fn groups(&self) -> Vec<GroupPosition> {
        self.offsets
            .all()
            .into_iter()
            .map(|(g, c)| self.position(&g, c))
            .collect()
    }

    // ---- retention ----

    /// Deletes whole sealed segments from the front of the log: by age
    /// only once every group has consumed them, by size regardless (and
    /// reports who missed what). The active segment is never deleted.
    pub fn enforce_retention(&self, now_us: i64) -> Result<RetentionReport> {
        let cfg = self.config();
        let floor = self.offsets.floor().unwrap_or(u64::MAX);
        let doomed: Vec<Arc<Segment>> = {
            let mut segs = self.shared.segments.write().expect("segments lock");
            let sealed = segs.len() - 1;
            let mut total: u64 = segs.iter().map(|s| s.len()).sum();
            let mut n = 0;
            while n < sealed {
                let s = &segs[n];
                let by_size = cfg.retention_bytes.is_some_and(|max| total > max);
                let by_age = cfg.retention_ms.is_some_and(|ms| {
                    s.max_timestamp_us() < now_us.saturating_sub(ms as i64 * 1000)
                        && s.next_offset() <= floor
                });
                if !(by_size || by_age) {
                    break;
                }
                total -= s.len();
                n += 1;
            }
            segs.drain(..n).collect()
        };
        let mut report = RetentionReport {
            earliest: self.earliest(),
            ..Default::default()
        };
        for seg in &doomed {
            report.segments_deleted += 1;
            report.bytes_deleted += seg.len();
            seg.remove_files()?;
        }
        if !doomed.is_empty() {
            for (g, c) in self.offsets.all() {
                if c < report.earliest {
                    report.groups_missed.insert(g, report.earliest - c);
                }
            }
            tracing::info!(topic = %self.shared.name, segments = report.segments_deleted, bytes = report.bytes_deleted, earliest = report.earliest, "retention deleted segments");
            for (g, n) in &report.groups_missed {
                tracing::warn!(topic = %self.shared.name, group = %g, missed = n, "size retention deleted events this group had not consumed");
            }
        }
        Ok(report)
    }

    /// Stops the writer after it has written and synced everything queued.
    pub fn close(&self) {
        self.tx.lock().expect("tx lock").take();
        let threads = std::mem::take(&mut *self.threads.lock().expect("threads lock"));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for TopicLog {
    fn drop(&mut self) {
        self.close();
    }
}
