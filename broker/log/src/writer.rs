//! Group commit: the single writer thread of a topic and its syncer.
//!
//! Appenders queue jobs on a bounded channel (that bound is the
//! backpressure). The writer takes every job waiting, up to
//! `max_batch_bytes`, assigns offsets and timestamps, checks the dedupe
//! window, and writes the whole batch with one `pwrite`. Under
//! `fsync = always` it then hands the batch to the syncer thread and goes
//! straight back to writing the next batch; the syncer takes every batch
//! waiting, issues one fdatasync for all of them, then publishes the new
//! head and answers their appenders. So writing batch N+1 overlaps syncing
//! batch N, and however many appenders there are, there is at most one
//! fdatasync in flight per topic.
//!
//! Readers only ever see offsets below the published head, so under
//! `always` a consumer never sees an event that a crash could take back.

use std::{
    sync::{Arc, mpsc as std_mpsc},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::{
    config::FsyncPolicy,
    dedupe::Dedupe,
    error::{LogError, Result},
    fsutil::sync_dir,
    index::{IdEntry, IndexEntry},
    record,
    segment::Segment,
    shared::Shared,
};

/// One record to append.
#[derive(Clone, Debug, Default)]
pub struct AppendRecord {
    /// Producer-chosen id for de-duplication; `None` disables it for this
    /// record.
    pub id: Option<String>,
    pub payload: Bytes,
}

/// Where an appended record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub offset: u64,
    pub timestamp_us: i64,
    /// The id was already in the dedupe window: `offset` and `timestamp_us`
    /// are the original's, and nothing new was written.
    pub duplicate: bool,
}

pub(crate) type Reply = oneshot::Sender<Result<Vec<Appended>>>;

pub(crate) struct Job {
    pub records: Vec<AppendRecord>,
    pub reply: Reply,
}

struct Pending {
    records: Vec<AppendRecord>,
    reply: Reply,
    results: Vec<Appended>,
}

struct SyncJob {
    seg: Arc<Segment>,
    end: u64,
    next_offset: u64,
    pending: Vec<Pending>,
}

/// Microseconds since the epoch: the clock record timestamps come from.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn fail_all(shared: &Shared, pending: Vec<Pending>, err: &LogError) {
    let reason = shared.poison(err);
    for p in pending {
        let _ = p.reply.send(Err(LogError::Poisoned {
            topic: shared.name.clone(),
            reason: reason.clone(),
        }));
    }
}

fn answer(pending: Vec<Pending>) {
    for p in pending {
        let _ = p.reply.send(Ok(p.results));
    }
}

/// State recovered at open that the writer continues from.
pub(crate) struct WriterStart {
    pub active: Arc<Segment>,
    pub ids: Vec<IdEntry>,
    pub dedupe: Dedupe,
    pub last_ts: i64,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    active: Arc<Segment>,
    len: u64,
    next_offset: u64,
    last_ts: i64,
    last_indexed: Option<u64>,
    ids: Vec<IdEntry>,
    dedupe: Dedupe,
    buf: Vec<u8>,
    batch_ts: Option<(i64, i64)>,
}

impl Writer {
    /// Starts the writer (and, per policy, syncer) threads.
    pub(crate) fn spawn(
        shared: Arc<Shared>,
        start: WriterStart,
        rx: mpsc::Receiver<Job>,
    ) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
        let len = start.active.len();
        // Resume index spacing as if the tail's last entry were just taken.
        let last_indexed = (len > 0).then_some(len);
        let writer = Writer {
            next_offset: start.active.next_offset(),
            active: start.active,
            len,
            last_ts: start.last_ts,
            last_indexed,
            ids: start.ids,
            dedupe: start.dedupe,
            buf: Vec::with_capacity(shared.cfg.max_batch_bytes + record::SEALED_OVERHEAD),
            batch_ts: None,
            shared: shared.clone(),
        };
        let (sync_tx, sync_rx) = std_mpsc::channel::<SyncJob>();
        let name = shared.name.clone();
        let mut threads = Vec::new();
        let policy = shared.cfg.fsync;
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("sync-{name}"))
                .spawn(move || match policy {
                    FsyncPolicy::Always => sync_always(s, sync_rx),
                    FsyncPolicy::Interval(every) => sync_interval(s, sync_rx, every),
                })?,
        );
        threads.push(
            std::thread::Builder::new()
                .name(format!("write-{name}"))
                .spawn(move || writer.run(rx, sync_tx))?,
        );
        Ok(threads)
    }

    fn run(mut self, mut rx: mpsc::Receiver<Job>, sync_tx: std_mpsc::Sender<SyncJob>) {
        let max = self.shared.cfg.max_batch_bytes;
        while let Some(first) = rx.blocking_recv() {
            let size = |j: &Job| {
                j.records
                    .iter()
                    .map(|r| r.payload.len() + record::OVERHEAD)
                    .sum::<usize>()
            };
            let mut bytes = size(&first);
            let mut pending = vec![first];
            while bytes < max {
                match rx.try_recv() {
                    Ok(j) => {
                        bytes += size(&j);
                        pending.push(j);
                    }
                    Err(_) => break,
                }
            }
            let mut pending: Vec<Pending> = pending
                .into_iter()
                .map(|j| Pending {
                    results: Vec::with_capacity(j.records.len()),
                    records: j.records,
                    reply: j.reply,
                })
                .collect();
            if let Some(reason) = self.shared.poisoned() {
                fail_all(
                    &self.shared,
                    pending,
                    &LogError::Poisoned {
                        topic: self.shared.name.clone(),
                        reason,
                    },
                );
                continue;
            }
            if let Err(e) = self.write_batch(&mut pending) {
                fail_all(&self.shared, pending, &e);
                continue;
            }
            let job = SyncJob {
                seg: self.active.clone(),
                end: self.len,
                next_offset: self.next_offset,
                pending,
            };
            match self.shared.cfg.fsync {
                FsyncPolicy::Always => {
                    if let Err(std_mpsc::SendError(job)) = sync_tx.send(job) {
                        fail_all(
                            &self.shared,
                            job.pending,
                            &LogError::Closed(self.shared.name.clone()),
                        );
                    }
                }
                FsyncPolicy::Interval(_) => {
                    self.shared.publish(&job.seg, job.end, job.next_offset);
                    answer(job.pending);
                }
            }
        }
        // Dropping sync_tx lets the syncer drain and make a final sync.
    }

    fn write_batch(&mut self, pending: &mut [Pending]) -> Result<()> {
        let cfg = self.shared.cfg.clone();
        for p in pending.iter_mut() {
            for rec in std::mem::take(&mut p.records) {
                let now = now_us().max(self.last_ts);
                self.last_ts = now;
                let hash = rec.id.as_deref().map_or(0, record::id_hash);
                if hash != 0
                    && let Some((offset, timestamp_us)) = self.dedupe.lookup(hash, now)
                {
                    p.results.push(Appended {
                        offset,
                        timestamp_us,
                        duplicate: true,
                    });
                    continue;
                }
                let size = self.shared.record_len(rec.payload.len()) as u64;
                let used = self.len + self.buf.len() as u64;
                if used > 0 && used + size > cfg.segment_bytes {
                    self.flush()?;
                    self.roll()?;
                }
                let pos = self.len + self.buf.len() as u64;
                let offset = self.next_offset;
                if self
                    .last_indexed
                    .is_none_or(|p| pos - p >= cfg.index_interval_bytes)
                {
                    self.active.push_index(IndexEntry {
                        offset,
                        position: pos,
                        timestamp_us: now,
                    });
                    self.last_indexed = Some(pos);
                }
                match &self.shared.keys {
                    Some(keys) => {
                        // Only the OS random source can fail here: no
                        // record is written without a fresh nonce.
                        record::encode_sealed(&mut self.buf, offset, now, hash, &rec.payload, keys)
                            .map_err(|e| LogError::Io {
                                path: self.active.path().to_path_buf(),
                                source: std::io::Error::other(e.to_string()),
                            })?;
                    }
                    None => record::encode(&mut self.buf, offset, now, hash, &rec.payload),
                }
                if hash != 0 {
                    let e = IdEntry {
                        hash,
                        offset,
                        timestamp_us: now,
                    };
                    self.dedupe.insert(e);
                    self.ids.push(e);
                }
                self.batch_ts = Some(self.batch_ts.map_or((now, now), |(lo, _)| (lo, now)));
                self.next_offset += 1;
                p.results.push(Appended {
                    offset,
                    timestamp_us: now,
                    duplicate: false,
                });
            }
        }
        self.flush()
    }

    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.active.write_at(&self.buf, self.len)?;
        self.len += self.buf.len() as u64;
        self.buf.clear();
        let (lo, hi) = self.batch_ts.take().unwrap_or((self.last_ts, self.last_ts));
        self.active.note_written(self.next_offset, lo, hi);
        Ok(())
    }

    /// Seals the active segment and starts the next one. The old segment is
    /// synced first, so everything in a sealed segment is durable.
    fn roll(&mut self) -> Result<()> {
        self.active.sync_data()?;
        self.active.publish(self.len);
        self.active.seal(&self.ids)?;
        let seg = Arc::new(Segment::create(
            &self.shared.dir,
            self.next_offset,
            self.shared.cfg.max_body(),
        )?);
        // The new file's directory entry must be durable before any record
        // in it is acknowledged.
        sync_dir(&self.shared.dir)?;
        self.shared
            .segments
            .write()
            .expect("segments lock")
            .push(seg.clone());
        tracing::debug!(topic = %self.shared.name, base = self.next_offset, "rolled to a new segment");
        self.active = seg;
        self.len = 0;
        self.ids.clear();
        self.last_indexed = None;
        Ok(())
    }
}

/// Name of the fsync latency histogram (seconds, label `topic`), recorded
/// through the `metrics` facade: a no-op unless the process installed a
/// recorder (the broker does when `metrics_listen` is set).
pub const FSYNC_SECONDS: &str = "mesh_broker_fsync_duration_seconds";

/// `fdatasync` of a segment, timed.
fn timed_sync(shared: &Shared, seg: &Segment) -> Result<()> {
    let start = std::time::Instant::now();
    let r = seg.sync_data();
    metrics::histogram!(FSYNC_SECONDS, "topic" => shared.name.clone()).record(start.elapsed());
    r
}

fn sync_always(shared: Arc<Shared>, rx: std_mpsc::Receiver<SyncJob>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        let last = jobs.last().expect("one job");
        let (seg, end, next) = (last.seg.clone(), last.end, last.next_offset);
        let pending: Vec<Pending> = jobs.into_iter().flat_map(|j| j.pending).collect();
        if let Some(reason) = shared.poisoned() {
            fail_all(
                &shared,
                pending,
                &LogError::Poisoned {
                    topic: shared.name.clone(),
                    reason,
                },
            );
            continue;
        }
        // Earlier segments of this group were synced when they were sealed.
        match timed_sync(&shared, &seg) {
            Ok(()) => {
                shared.publish(&seg, end, next);
                answer(pending);
            }
            Err(e) => fail_all(&shared, pending, &e),
        }
    }
}

fn sync_interval(shared: Arc<Shared>, rx: std_mpsc::Receiver<SyncJob>, every: Duration) {
    loop {
        let stop = matches!(
            rx.recv_timeout(every),
            Err(std_mpsc::RecvTimeoutError::Disconnected)
        );
        let active = shared
            .segments
            .read()
            .expect("segments lock")
            .last()
            .cloned();
        if let Some(seg) = active
            && let Err(e) = timed_sync(&shared, &seg)
        {
            shared.poison(&e);
        }
        if stop {
            return;
        }
    }
}
