//! Streamed publish: `streams` Publish streams, each keeping a fixed number
//! of requests in flight.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use mesh_proto::broker::v1 as pb;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use mesh_bench::{
    disk::payload,
    stats::{Percentiles, histogram},
};

use crate::{
    Res,
    broker::{Target, connect},
    cpu::{Cpu, cpu_now},
    err, event, nanos_since,
    stats::Run,
};

/// The load shape of a publish (or storage-only) run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Publish streams, each on its own connection.
    pub streams: usize,
    /// Events per request.
    pub batch: usize,
    /// Events in flight over all streams.
    pub in_flight: usize,
}

impl Shape {
    pub fn requests_per_stream(&self) -> usize {
        (self.in_flight / self.streams / self.batch).clamp(1, 1024)
    }
    pub fn label(&self) -> String {
        format!(
            "{} × {} events × {} req",
            self.streams,
            self.batch,
            self.requests_per_stream()
        )
    }
}

/// One Publish stream on its own connection: keeps up to `reqs` requests
/// of `batch` events in flight until `claimed` reaches `max_events` or the
/// deadline passes. Returns (events acknowledged, time of the last answer,
/// per-request ack latencies in us).
async fn publish_stream(
    target: Target,
    topic: String,
    tag: String,
    (batch, reqs): (usize, usize),
    claimed: Arc<AtomicU64>,
    max_events: u64,
    deadline: Instant,
) -> Res<(u64, Instant, Histogram<u64>)> {
    let mut client = connect(&target).await?;
    let (tx, rx) = mpsc::channel::<pb::PublishRequest>(reqs);
    let mut answers = client
        .publish(ReceiverStream::new(rx))
        .await
        .map_err(err)?
        .into_inner();
    let permits = Arc::new(Semaphore::new(reqs));
    let ring = 2 * reqs;
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..ring).map(|_| AtomicU64::new(0)).collect());
    let base = Instant::now();
    let sender = {
        let (permits, sent_at) = (permits.clone(), sent_at.clone());
        tokio::spawn(async move {
            let data = payload();
            let mut seq = 0u64;
            loop {
                let p = permits.acquire().await.map_err(err)?;
                p.forget();
                if Instant::now() >= deadline
                    || claimed.fetch_add(batch as u64, Ordering::Relaxed) >= max_events
                {
                    break;
                }
                let events = (0..batch)
                    .map(|i| event(format!("{tag}-{seq}-{i}"), data.clone()))
                    .collect();
                sent_at[seq as usize % ring].store(nanos_since(base), Ordering::Relaxed);
                let req = pb::PublishRequest {
                    sequence: seq,
                    topic: topic.clone(),
                    events,
                };
                if tx.send(req).await.is_err() {
                    return Err("the publish stream closed".to_string());
                }
                seq += 1;
            }
            Ok::<_, String>(())
        })
    };
    let mut acked = 0u64;
    let mut last = Instant::now();
    let mut lat = histogram();
    while let Some(r) = answers.message().await.map_err(err)? {
        if let Some(e) = r.error {
            return Err(format!("publish failed: {} {}", e.code, e.message));
        }
        let sent = sent_at[r.sequence as usize % ring].load(Ordering::Relaxed);
        lat.saturating_record(nanos_since(base).saturating_sub(sent) / 1000);
        acked += r.results.len() as u64;
        last = Instant::now();
        permits.add_permits(1);
    }
    sender.await.map_err(err)??;
    Ok((acked, last, lat))
}

/// Streamed publish of `shape` into `topic` until `max_events` or `limit`.
pub async fn publish_run(
    target: Target,
    topic: &str,
    shape: Shape,
    max_events: u64,
    limit: Duration,
) -> Res<Run> {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    streams_run(
        "publish",
        shape.streams,
        limit,
        |s, claimed, _start, deadline| {
            publish_stream(
                target.clone(),
                topic.to_string(),
                format!("r{run}-s{s}"),
                (shape.batch, shape.requests_per_stream()),
                claimed,
                max_events,
                deadline,
            )
        },
    )
    .await
}

/// What one load stream returns: events acknowledged, the time of its last
/// answer, and its per-request ack latencies in us.
pub type StreamResult = Res<(u64, Instant, Histogram<u64>)>;

/// Spawns `streams` load streams (`stream(index, claimed, start,
/// deadline)`) that share one counter of claimed events and a deadline
/// `limit` from now, and joins them: the Run from the start to the last
/// answer of any stream, over all their events, with the CPU split. Shared
/// by Publish and the storage-only baseline; `what` names the run in the
/// error of a stream that outlives its deadline by 30 s.
pub async fn streams_run<F, Fut>(what: &str, streams: usize, limit: Duration, stream: F) -> Res<Run>
where
    F: Fn(usize, Arc<AtomicU64>, Instant, Instant) -> Fut,
    Fut: Future<Output = StreamResult> + Send + 'static,
{
    let claimed = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_now();
    let start = Instant::now();
    let deadline = start + limit;
    let tasks: Vec<_> = (0..streams)
        .map(|s| tokio::spawn(stream(s, claimed.clone(), start, deadline)))
        .collect();
    let mut events = 0;
    let mut last = start;
    let mut lat = histogram();
    for t in tasks {
        let (n, l, h) = tokio::time::timeout(limit + Duration::from_secs(30), t)
            .await
            .map_err(|_| format!("{what} run did not finish in time"))?
            .map_err(err)??;
        events += n;
        last = last.max(l);
        lat.add(h).map_err(err)?;
    }
    let secs = (last - start).as_secs_f64();
    Ok(Run {
        events,
        secs,
        lat: Percentiles::of(&lat),
        cpu: Cpu::between(cpu0, cpu_now(), secs),
    })
}
