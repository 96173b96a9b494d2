//! A typed producer over the broker's streaming Publish RPC.
//!
//! One background task keeps one Publish stream open (reconnecting with
//! backoff) and pipelines every publish call on it. Calls made at the same
//! moment for the same topic are coalesced into one request (batching). A
//! request the broker has not answered when the stream breaks is sent again
//! on the next stream; that is safe because events carry deterministic ids
//! and the broker drops duplicates within its dedupe window. A call gives
//! up after `timeout`, so a dead broker turns into an error the caller can
//! act on (a consumer handler nacks and the event comes back later).

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use mesh_proto::{
    DomainEvent,
    broker::v1::{PublishRequest, PublishResponse, PublishResult},
    events::v1::Event,
};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use mesh_runtime::backoff::Backoff;
use tonic::Code;

use crate::{error::SdkError, events::envelope, link::Broker};

/// Events merged into one request at most.
const MAX_MERGED_EVENTS: usize = 500;

type Reply = oneshot::Sender<Result<Vec<PublishResult>, SdkError>>;

struct Job {
    topic: String,
    events: Vec<Event>,
    reply: Reply,
    deadline: Instant,
    /// Sent on its own: a merged request failed and one job in it may be
    /// the bad one.
    alone: bool,
}

#[derive(Clone)]
pub struct Producer {
    tx: mpsc::Sender<Job>,
    source: String,
    timeout: Duration,
}

impl Producer {
    /// A producer for `broker`; `source` is the CloudEvents source of
    /// what it publishes. Connects lazily.
    pub fn new(broker: &Broker, source: &str) -> Result<Self, SdkError> {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run(broker.clone(), rx));
        Ok(Producer {
            tx,
            source: source.to_string(),
            timeout: Duration::from_secs(30),
        })
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Publishes events to `topic`; resolves once they are durable.
    pub async fn publish(
        &self,
        topic: &str,
        events: Vec<Event>,
    ) -> Result<Vec<PublishResult>, SdkError> {
        let mut events = events;
        let span = tracing::info_span!(
            "send",
            otel.name = %format!("send {topic}"),
            otel.kind = "producer",
            messaging.system = "mesh",
            messaging.destination.name = %topic,
            messaging.operation.type = "send",
            messaging.batch.message_count = events.len(),
            messaging.message.id = tracing::field::Empty,
        );
        if let [one] = events.as_slice() {
            span.record("messaging.message.id", one.id.as_str());
        }
        if mesh_telemetry::enabled() {
            // The trace travels inside the event; an event that already
            // carries a context (set by its author) keeps it.
            for ev in &mut events {
                if !ev.attributes.contains_key("traceparent") {
                    mesh_telemetry::inject(&span, &mut ev.attributes);
                }
            }
        }
        let (reply, rx) = oneshot::channel();
        let job = Job {
            topic: topic.to_string(),
            events,
            reply,
            deadline: Instant::now() + self.timeout,
            alone: false,
        };
        async {
            self.tx.send(job).await.map_err(|_| SdkError::Closed)?;
            rx.await.map_err(|_| SdkError::Closed)?
        }
        .instrument(span)
        .await
    }

    /// Publishes one domain event to its topic with the given id and
    /// ordering key.
    pub async fn publish_event<E: DomainEvent>(
        &self,
        id: impl Into<String>,
        subject: &str,
        msg: &E,
    ) -> Result<PublishResult, SdkError> {
        let ev = envelope(id, &self.source, subject, msg);
        let mut r = self.publish(E::TOPIC, vec![ev]).await?;
        r.pop().ok_or(SdkError::Closed)
    }
}

/// Requests sent and not yet answered, by sequence number.
type InFlight = BTreeMap<u64, Vec<Job>>;

fn expire(queue: &mut VecDeque<Job>, in_flight: &mut InFlight) {
    let now = Instant::now();
    let fail = |j: Job| {
        let _ = j.reply.send(Err(SdkError::PublishTimeout {
            topic: j.topic.clone(),
        }));
    };
    let (keep, gone): (VecDeque<Job>, VecDeque<Job>) =
        queue.drain(..).partition(|j| j.deadline > now);
    *queue = keep;
    gone.into_iter().for_each(fail);
    in_flight.retain(|_, jobs| {
        if jobs.iter().all(|j| j.deadline <= now) {
            std::mem::take(jobs).into_iter().for_each(fail);
            false
        } else {
            true
        }
    });
}

/// Takes the next request's jobs from the queue: the first job plus, unless
/// it must go alone, following jobs for the same topic.
fn next_request(queue: &mut VecDeque<Job>) -> Option<Vec<Job>> {
    let first = queue.pop_front()?;
    let mut n = first.events.len();
    let mut jobs = vec![first];
    if jobs[0].alone {
        return Some(jobs);
    }
    while let Some(j) = queue.front() {
        if j.alone || j.topic != jobs[0].topic || n + j.events.len() > MAX_MERGED_EVENTS {
            break;
        }
        n += j.events.len();
        jobs.push(queue.pop_front().expect("front exists"));
    }
    Some(jobs)
}

fn answer(jobs: Vec<Job>, resp: PublishResponse, queue: &mut VecDeque<Job>) {
    if let Some(err) = resp.error {
        let code = err.status_code();
        if matches!(code, Code::Unavailable | Code::ResourceExhausted) {
            // Transient: try again.
            for j in jobs.into_iter().rev() {
                queue.push_front(j);
            }
        } else if jobs.len() > 1 {
            // Find the bad job by sending each on its own.
            for mut j in jobs.into_iter().rev() {
                j.alone = true;
                queue.push_front(j);
            }
        } else {
            for j in jobs {
                let _ = j.reply.send(Err(SdkError::Refused {
                    topic: j.topic.clone(),
                    code,
                    message: err.message.clone(),
                }));
            }
        }
        return;
    }
    let mut results = resp.results.into_iter();
    for j in jobs {
        let mine: Vec<_> = results.by_ref().take(j.events.len()).collect();
        let _ = j.reply.send(Ok(mine));
    }
}

/// The code of an error that means the broker will not take this
/// service's publishes (who it is, or what it may do), as opposed to the
/// broker being away.
fn refused_code(e: &SdkError) -> Option<Code> {
    match e {
        SdkError::Status(s)
            if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied) =>
        {
            Some(s.code())
        }
        _ => None,
    }
}

/// Fails every queued call with the broker's refusal.
fn fail_all(queue: &mut VecDeque<Job>, code: Code, message: &str) {
    for j in queue.drain(..) {
        let _ = j.reply.send(Err(SdkError::Refused {
            topic: j.topic.clone(),
            code,
            message: message.to_string(),
        }));
    }
}

async fn run(broker: Broker, mut rx: mpsc::Receiver<Job>) {
    let mut queue: VecDeque<Job> = VecDeque::new();
    let mut in_flight: InFlight = BTreeMap::new();
    let mut seq = 0u64;
    let mut backoff = Backoff::default();
    let mut closed = false;
    let tick = Duration::from_millis(250);
    while !(closed && queue.is_empty() && in_flight.is_empty()) {
        // Unanswered requests go first, in their original order.
        for (_, jobs) in std::mem::take(&mut in_flight).into_iter().rev() {
            for j in jobs.into_iter().rev() {
                queue.push_front(j);
            }
        }
        let stream = async {
            let mut client = broker.connect().await?;
            let (req_tx, req_rx) = mpsc::channel::<PublishRequest>(1024);
            let resp = client
                .publish(ReceiverStream::new(req_rx))
                .await?
                .into_inner();
            Ok::<_, SdkError>((req_tx, resp))
        };
        let opened = match tokio::time::timeout(Duration::from_secs(5), stream).await {
            Ok(r) => r,
            Err(_) => Err(SdkError::Connect {
                url: broker.url().to_string(),
                reason: "no Publish stream within 5 s".into(),
            }),
        };
        let (req_tx, mut resp) = match opened {
            Ok(s) => s,
            Err(e) => {
                let refused = refused_code(&e);
                if let Some(code) = refused {
                    // Not the network: waiting will not help the calls
                    // made so far, so they fail now and later calls try
                    // again (a token or grant may be fixed meanwhile).
                    tracing::warn!(broker = broker.url(), error = %e, "the broker refuses this service's publishes");
                    fail_all(&mut queue, code, &e.to_string());
                }
                let delay = backoff.next_delay();
                let until = Instant::now() + delay;
                // Keep accepting (and expiring) work while the broker is away.
                while Instant::now() < until {
                    tokio::select! {
                        j = rx.recv(), if !closed => match j { Some(j) => queue.push_back(j), None => closed = true },
                        _ = tokio::time::sleep_until(until) => {}
                    }
                }
                expire(&mut queue, &mut in_flight);
                if !queue.is_empty() && refused.is_none() {
                    tracing::warn!(
                        broker = broker.url(),
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "broker unreachable; publishes are waiting"
                    );
                }
                continue;
            }
        };
        backoff.reset();
        loop {
            while let Some(jobs) = next_request(&mut queue) {
                seq += 1;
                let req = PublishRequest {
                    sequence: seq,
                    topic: jobs[0].topic.clone(),
                    events: jobs.iter().flat_map(|j| j.events.iter().cloned()).collect(),
                };
                in_flight.insert(seq, jobs);
                if req_tx.send(req).await.is_err() {
                    break;
                }
            }
            tokio::select! {
                j = rx.recv(), if !closed => match j {
                    Some(j) => {
                        queue.push_back(j);
                        while let Ok(j) = rx.try_recv() {
                            queue.push_back(j);
                        }
                    }
                    None => closed = true,
                },
                m = resp.message() => match m {
                    Ok(Some(r)) => {
                        if let Some(jobs) = in_flight.remove(&r.sequence) {
                            answer(jobs, r, &mut queue);
                        }
                    }
                    _ => break, // the stream broke: reconnect and resend
                },
                _ = tokio::time::sleep(tick) => expire(&mut queue, &mut in_flight),
            }
            if closed && queue.is_empty() && in_flight.is_empty() {
                return;
            }
        }
    }
}
