//! A read model that follows a topic for as long as the service runs, so
//! that every replica of a service builds the same state from the log and
//! answers its read API alike: the state changes only by applying the
//! topic's events, in log order, never from a handler's own writes.
//!
//! [`View::follow`] tails the topic from its earliest offset (reconnecting,
//! see [`crate::tail`]) and applies each event to the service's state.
//! What a replica may then rely on:
//!
//! - [`View::caught_up`]: the first caught-up marker has been applied; the
//!   state holds the whole topic as it was at start. A service serves its
//!   API only after this.
//! - [`View::sync`]: the state holds every event published before the
//!   call (the topic's head is read from the broker, then awaited). A
//!   handler that must not act twice syncs before it decides.
//! - [`View::include`]: the state holds the event at an offset, such as
//!   the one a handler has just published, so its ack (and the next event
//!   of the same key, which the broker holds until then) sees it.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use mesh_proto::broker::v1::DescribeTopicRequest;
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    error::SdkError,
    events::Delivered,
    link::{Broker, BrokerClient},
    tail::{TailEvent, tail},
};

/// How far a view has applied its topic.
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    /// Every event before this offset is in the state.
    next: u64,
    /// The head of the last caught-up marker; `None` before the first.
    head: Option<u64>,
}

/// A handle on a read model following one topic. Cheap to clone.
#[derive(Clone)]
pub struct View {
    inner: Arc<Inner>,
    /// The longest a sync or include waits before it fails.
    timeout: Duration,
}

struct Inner {
    broker: Broker,
    topic: String,
    /// Written by the following task after each applied event.
    progress: watch::Receiver<Progress>,
    /// A client for DescribeTopic, kept between syncs so a sync costs one
    /// call and not a connection; dropped after a failed call.
    client: Mutex<Option<BrokerClient>>,
}

impl View {
    /// Starts following `topic` from its earliest offset, applying every
    /// event to `state` with `apply`, until `shutdown` is cancelled. The
    /// returned task is the service's to await (`serve_until`).
    pub fn follow<S, F>(
        broker: &Broker,
        topic: &str,
        state: Arc<Mutex<S>>,
        mut apply: F,
        shutdown: &CancellationToken,
    ) -> (View, JoinHandle<Result<(), SdkError>>)
    where
        S: Send + 'static,
        F: FnMut(&mut S, &Delivered) + Send + 'static,
    {
        let (tx, rx) = watch::channel(Progress::default());
        let (link, name, stop) = (broker.clone(), topic.to_string(), shutdown.clone());
        let task = tokio::spawn(async move {
            tail(&link, &name, 0, &stop, |e| {
                match e {
                    TailEvent::Event(d) => {
                        let span = crate::events::process_span(&d, "");
                        let _in = span.enter();
                        apply(&mut state.lock().expect("view state lock"), &d);
                        tx.send_modify(|p| p.next = p.next.max(d.offset + 1));
                    }
                    TailEvent::CaughtUp { head } => tx.send_modify(|p| {
                        p.next = p.next.max(head);
                        p.head = Some(p.head.unwrap_or(0).max(head));
                    }),
                }
                true
            })
            .await
            .map(|_| ())
        });
        let view = View {
            inner: Arc::new(Inner {
                broker: broker.clone(),
                topic: topic.to_string(),
                progress: rx,
                client: Mutex::new(None),
            }),
            timeout: Duration::from_secs(10),
        };
        (view, task)
    }

    /// The longest [`View::sync`] and [`View::include`] wait (default
    /// 10 s): a handler that cannot see the log fails, and its event comes
    /// back later, rather than holding its key forever.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// The next offset to apply: every event before it is in the state.
    pub fn position(&self) -> u64 {
        self.inner.progress.borrow().next
    }

    /// The topic's head at the last caught-up marker, 0 before the first.
    pub fn head(&self) -> u64 {
        self.inner.progress.borrow().head.unwrap_or(0)
    }

    /// Whether the state has caught up with the topic once.
    pub fn is_caught_up(&self) -> bool {
        self.inner.progress.borrow().head.is_some()
    }

    /// Waits for the first caught-up marker: then the state holds the
    /// topic as it was when the service started. False if the view stopped
    /// first (the service is shutting down).
    pub async fn caught_up(&self) -> bool {
        let mut rx = self.inner.progress.clone();
        rx.wait_for(|p| p.head.is_some()).await.is_ok()
    }

    /// Waits until the state holds every event published before this call:
    /// reads the topic's head from the broker, then waits for the view to
    /// reach it. Fails if the broker cannot be asked or the view does not
    /// get there within the timeout.
    pub async fn sync(&self) -> Result<(), SdkError> {
        let started = tokio::time::Instant::now();
        let head = tokio::time::timeout(self.timeout, self.broker_head())
            .await
            .map_err(|_| self.behind(None, started))??;
        self.reach(head, started).await
    }

    /// Waits until the state holds the event at `offset` (one this service
    /// published, say).
    pub async fn include(&self, offset: u64) -> Result<(), SdkError> {
        self.reach(offset + 1, tokio::time::Instant::now()).await
    }

    async fn reach(&self, next: u64, started: tokio::time::Instant) -> Result<(), SdkError> {
        let mut rx = self.inner.progress.clone();
        let left = self.timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, rx.wait_for(|p| p.next >= next)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(SdkError::ViewStopped {
                topic: self.inner.topic.clone(),
            }),
            Err(_) => Err(self.behind(Some(next), started)),
        }
    }

    fn behind(&self, target: Option<u64>, started: tokio::time::Instant) -> SdkError {
        SdkError::Behind {
            topic: self.inner.topic.clone(),
            position: self.position(),
            target,
            waited: started.elapsed(),
        }
    }

    /// The topic's head now, from DescribeTopic ("one past the newest
    /// offset", so every event published before the call is below it).
    async fn broker_head(&self) -> Result<u64, SdkError> {
        let cached = self.inner.client.lock().expect("client lock").clone();
        let mut client = match cached {
            Some(c) => c,
            None => self.inner.broker.connect().await?,
        };
        let r = client
            .describe_topic(DescribeTopicRequest {
                name: self.inner.topic.clone(),
            })
            .await;
        let mut slot = self.inner.client.lock().expect("client lock");
        match r {
            Ok(info) => {
                *slot = Some(client);
                Ok(info.into_inner().head_offset)
            }
            Err(s) => {
                *slot = None;
                Err(SdkError::Status(s))
            }
        }
    }
}
