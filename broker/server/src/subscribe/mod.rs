//! The Subscribe stream: one session per stream.
//!
//! A group session joins the group's dispatcher and relays between it and
//! the client. A session with no group (auto_ack only) is an ephemeral
//! tail that reads the log directly and keeps no state in the broker.
//!
//! Dead streams: the server sends a heartbeat every
//! `delivery.heartbeat_interval`; a group member that sends nothing for
//! `delivery.idle_timeout` is disconnected, and when a session ends for
//! any reason its in-flight events go back to the group at once. A client
//! that half-closes its side keeps receiving (so a grpcurl command with
//! its requests in -d still works); it just cannot ack any more.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use mesh_proto::broker::v1::{
    self as pb, SubscribeRequest, SubscribeResponse, subscribe_request::Request,
    subscribe_response::Response,
};
use tokio::{sync::mpsc, time::Instant};
use tonic::{Status, Streaming};

use crate::{
    auth::{Caller, Verb},
    cluster::Claim,
    convert,
    error::{BrokerError, Result},
    group::{
        Cmd, GroupHandle, JoinRequest, LogTopic, Outbound, ReadError, TopicStore, member_id,
        resolve_start,
    },
    limits::StreamSlot,
    outbox::{self, Outbox, OutboxStream},
    state::Shared,
};

pub type SubscribeStream = OutboxStream;

mod forward;
mod open;

pub use open::parse_start;
use open::{Opened, validate_open};
static TAILS: AtomicU64 = AtomicU64::new(1);

fn msg(r: Response) -> Result<SubscribeResponse, Status> {
    Ok(SubscribeResponse { response: Some(r) })
}

/// How the call reached this broker, for forwarding it to the broker that
/// holds its group.
pub struct Via {
    /// Another broker forwarded it (never forwarded again).
    pub forwarded: bool,
    /// The client's `authorization` header, passed on when forwarding.
    pub authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

pub async fn subscribe(
    broker: Arc<Shared>,
    who: Caller,
    conn_slot: StreamSlot,
    via: Via,
    mut inbound: Streaming<SubscribeRequest>,
) -> Result<SubscribeStream> {
    if broker.is_stopping() {
        return Err(BrokerError::ShuttingDown);
    }
    let slot = broker
        .subscribers
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            BrokerError::ResourceExhausted(format!(
                "limits.max_subscribers = {} subscriber streams are already open",
                broker.cfg.limits.max_subscribers
            ))
        })?;
    let (tx, rx) = broker.buffers.open()?;
    let idle = broker.cfg.delivery.idle_timeout;
    // Wait for `open`, but not past the start of a shutdown: the server's
    // graceful drain waits for every stream, so a client that connected
    // and has not sent `open` yet would otherwise hold the shutdown up
    // until the drain deadline.
    let mut stopping = broker.stopping.clone();
    let first = tokio::select! {
        r = tokio::time::timeout(idle, inbound.message()) => r,
        _ = crate::state::stopped(&mut stopping) => return Err(BrokerError::ShuttingDown),
    };
    let first = match first {
        Ok(Ok(Some(req))) => req,
        Ok(Ok(None)) => {
            return Err(BrokerError::invalid(
                "open",
                "the stream ended before the open request",
            ));
        }
        Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
            return Err(BrokerError::Malformed(status.message().to_string()));
        }
        Ok(Err(status)) if status.code() == tonic::Code::OutOfRange => {
            let s = crate::limits::name_message_limit(status, broker.cfg.limits.max_message_bytes);
            return Err(BrokerError::ResourceExhausted(s.message().to_string()));
        }
        Ok(Err(status)) => {
            return Err(BrokerError::FailedPrecondition(format!(
                "stream failed before open: {}",
                status.message()
            )));
        }
        Err(_) => {
            return Err(BrokerError::invalid(
                "open",
                "no open request within delivery.idle_timeout",
            ));
        }
    };
    let Some(Request::Open(open)) = first.request else {
        return Err(BrokerError::invalid(
            "open",
            "the first request on a Subscribe stream must be `open`",
        ));
    };
    let raw_open = open.clone();
    let open = validate_open(&broker, open)?;
    let group = (!open.group.is_empty()).then_some(open.group.as_str());
    broker
        .auth
        .check(&who, Verb::Subscribe, &open.topic, group)?;
    broker.ensure_topic("open.topic", &open.topic).await?;
    if open.group.is_empty() {
        let store = LogTopic::new(broker.storage.clone(), &open.topic);
        let start = resolve_start(&store, open.start).await?;
        tokio::spawn(async move {
            let _slot = (slot, conn_slot, crate::metrics::Connected::subscriber());
            tail(broker, &store, open, start, inbound, tx).await;
        });
    } else {
        let handle =
            match crate::cluster::claim(&broker, &open.topic, &open.group, via.forwarded).await? {
                Claim::Local(h) => h,
                Claim::Remote(url) => {
                    let hold = (slot, conn_slot, crate::metrics::Connected::subscriber());
                    forward::forward(
                        &broker,
                        &url,
                        raw_open,
                        via.authorization,
                        inbound,
                        tx,
                        hold,
                    )
                    .await?;
                    return Ok(rx);
                }
            };
        // Deliveries are bounded by the member's credit (an auto-ack
        // member's too: its session acks them only once they are in the
        // outbox), so this channel never holds more than that many events.
        let (out_tx, out_rx) = mpsc::channel(broker.cfg.limits.max_credit as usize + 64);
        let (reply, joined) = tokio::sync::oneshot::channel();
        handle
            .send(Cmd::Join(
                JoinRequest {
                    name: open.name.clone(),
                    credit: open.credit,
                    auto_ack: open.auto_ack,
                    start: open.start,
                    out: out_tx,
                    max_members: broker.cfg.limits.max_group_members,
                },
                reply,
            ))
            .await?;
        let joined = joined.await.map_err(|_| BrokerError::ShuttingDown)??;
        let _ = tx
            .send(msg(Response::Opened(pb::Opened {
                member_id: member_id(&open.group, joined.member_id),
                topic: open.topic.clone(),
                group: open.group.clone(),
                committed: joined.committed,
            })))
            .await;
        tokio::spawn(async move {
            let _slot = (slot, conn_slot, crate::metrics::Connected::subscriber());
            let member = joined.member_id;
            group_session(&broker, &handle, member, open.auto_ack, inbound, out_rx, tx).await;
            let _ = handle.send(Cmd::Leave(member)).await;
        });
    }
    Ok(rx)
}

fn outbound(o: Outbound) -> Response {
    match o {
        Outbound::Deliveries(d) => Response::Deliveries(pb::Deliveries { deliveries: d }),
        Outbound::CaughtUp(head) => Response::CaughtUp(pb::CaughtUp { head }),
        Outbound::Lag(l) => Response::Lag(l),
        Outbound::Error(e) => Response::Error(e),
    }
}

/// Replies a session may queue while its client is not reading, before it
/// stops reading the client's requests too (each request can add one).
const MAX_QUEUED_REPLIES: usize = 16;

async fn group_session(
    broker: &Shared,
    handle: &GroupHandle,
    member: u64,
    auto_ack: bool,
    mut inbound: Streaming<SubscribeRequest>,
    mut out_rx: mpsc::Receiver<Outbound>,
    tx: Outbox,
) {
    let d = &broker.cfg.delivery;
    let idle = d.idle_timeout;
    let mut heartbeat = tokio::time::interval(d.heartbeat_interval);
    heartbeat.tick().await;
    let mut last_seen = Instant::now();
    let mut inbound_open = true;
    let mut stopping = broker.stopping.clone();
    // Responses waiting for room in the outbox, each with the offsets it
    // delivers to an auto-ack member (acked once it is in the outbox).
    // While it is not empty the session takes nothing more from the
    // dispatcher, but it goes on reading acks and watching the idle timer.
    let mut queue: VecDeque<(outbox::Item, Vec<u64>)> = VecDeque::new();
    loop {
        let front = queue.front().map(|(item, _)| outbox::size(item));
        tokio::select! {
            _ = crate::state::stopped(&mut stopping) => {
                tx.finish(Status::from(BrokerError::ShuttingDown));
                return;
            }
            out = out_rx.recv(), if queue.is_empty() => {
                let Some(o) = out else {
                    tx.finish(BrokerError::GroupStopped.into());
                    return;
                };
                let sent = match &o {
                    Outbound::Deliveries(d) if auto_ack => d
                        .iter()
                        .filter_map(|d| d.event.as_ref().map(|e| e.offset))
                        .collect(),
                    _ => Vec::new(),
                };
                queue.push_back((msg(outbound(o)), sent));
            }
            slot = tx.reserve(front.unwrap_or(0)), if front.is_some() => {
                let Ok(slot) = slot else { return };
                let (item, sent) = queue.pop_front().expect("front is some");
                slot.send(item);
                if !sent.is_empty() && handle.send(Cmd::Sent(member, sent)).await.is_err() {
                    tx.finish(BrokerError::GroupStopped.into());
                    return;
                }
            }
            req = inbound.message(), if inbound_open && queue.len() < MAX_QUEUED_REPLIES => {
                match req {
                    Ok(Some(req)) => {
                        last_seen = Instant::now();
                        match handle_request(handle, member, req).await {
                            Ok(()) => {}
                            Err(Refusal::Fatal(e)) => {
                                tx.finish(e.into());
                                return;
                            }
                            Err(Refusal::Refused(e)) => {
                                let e = Response::Error(crate::error::to_proto(&e));
                                queue.push_back((msg(e), Vec::new()));
                            }
                        }
                    }
                    Ok(None) => inbound_open = false,
                    Err(s) => {
                        finish_malformed(&tx, s, broker.cfg.limits.max_message_bytes);
                        return;
                    }
                }
            }
            // The client went away (cancelled or disconnected).
            _ = tx.closed() => return,
            _ = heartbeat.tick() => {
                if !auto_ack && last_seen.elapsed() > idle {
                    tx.finish(BrokerError::IdleTimeout { idle_ms: idle.as_millis() }.into());
                    return;
                }
                if queue.is_empty() && tx.try_send(msg(Response::Heartbeat(pb::Heartbeat {}))).is_err() {
                    return;
                }
            }
        }
    }
}

/// Why a request on an open subscription was not carried out.
enum Refusal {
    /// The stream cannot go on: a second open, or the group stopped.
    Fatal(BrokerError),
    /// Only this request is refused. Like an ack of an offset the member
    /// does not hold, it gets an in-stream error and the stream goes on;
    /// ending the stream would send every delivery the member holds back
    /// to the group for a malformed field.
    Refused(BrokerError),
}

async fn handle_request(
    handle: &GroupHandle,
    member: u64,
    req: SubscribeRequest,
) -> std::result::Result<(), Refusal> {
    let gone = |_| Refusal::Fatal(BrokerError::GroupStopped);
    match req.request {
        Some(Request::Open(_)) => Err(Refusal::Fatal(BrokerError::AlreadyOpen)),
        Some(Request::Ack(a)) => handle.send(Cmd::Ack(member, a.offsets)).await.map_err(gone),
        Some(Request::Nack(n)) => {
            let delay = match n
                .delay
                .as_ref()
                .map(|d| convert::std_duration(d, "nack.delay"))
            {
                None => Duration::ZERO,
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(Refusal::Refused(e)),
            };
            handle
                .send(Cmd::Nack {
                    member,
                    offsets: n.offsets,
                    delay,
                    reason: n.reason,
                })
                .await
                .map_err(gone)
        }
        Some(Request::Credit(c)) => handle.send(Cmd::Credit(member, c.add)).await.map_err(gone),
        Some(Request::Heartbeat(_)) => Ok(()),
        None => Err(Refusal::Refused(BrokerError::invalid(
            "request",
            "must be one of open, ack, nack, credit, heartbeat",
        ))),
    }
}

/// An ephemeral, auto-acking reader: no group, nothing stored.
async fn tail(
    broker: Arc<Shared>,
    store: &dyn TopicStore,
    open: Opened,
    start: u64,
    mut inbound: Streaming<SubscribeRequest>,
    tx: Outbox,
) {
    let id = format!("tail-{}", TAILS.fetch_add(1, Ordering::Relaxed));
    let _ = tx
        .send(msg(Response::Opened(pb::Opened {
            member_id: id,
            topic: open.topic.clone(),
            group: String::new(),
            committed: start,
        })))
        .await;
    let Ok(mut head) = store.watch_head() else {
        return;
    };
    let mut heartbeat = tokio::time::interval(broker.cfg.delivery.heartbeat_interval);
    heartbeat.tick().await;
    let mut stopping = broker.stopping.clone();
    let mut pos = start;
    let mut caught_up_sent = false;
    let mut inbound_open = true;
    let batch = open.credit.clamp(1, 256) as usize;
    // A quarter of the stream's share per read: the outbox then holds a few
    // reads, and a stalled tail holds little more than its outbox.
    let read_bytes = (broker.cfg.limits.subscriber_buffer_bytes / 4).clamp(1, 1 << 20);
    loop {
        let records = match store.read(pos, batch, read_bytes).await {
            Ok(r) => r,
            Err(ReadError::Truncated { earliest }) => {
                pos = earliest;
                continue;
            }
            Err(ReadError::Damaged(e) | ReadError::Failed(e)) => {
                tx.finish(Status::from(e));
                return;
            }
        };
        if let Some(last) = records.last() {
            pos = last.offset + 1;
            caught_up_sent = false;
            let deliveries = records
                .iter()
                .filter_map(|r| convert::stored_event(&open.topic, r).ok())
                .map(|e| pb::Delivery {
                    event: Some(e),
                    delivery_attempt: 1,
                })
                .collect();
            let deliveries = msg(Response::Deliveries(pb::Deliveries { deliveries }));
            if !send_or_stop(&tx, deliveries, &mut stopping).await {
                return;
            }
            continue;
        }
        if !caught_up_sent {
            caught_up_sent = true;
            let caught_up = msg(Response::CaughtUp(pb::CaughtUp { head: pos }));
            if !send_or_stop(&tx, caught_up, &mut stopping).await {
                return;
            }
        }
        tokio::select! {
            _ = crate::state::stopped(&mut stopping) => {
                tx.finish(Status::from(BrokerError::ShuttingDown));
                return;
            }
            changed = head.changed() => if changed.is_err() {
                tx.finish(BrokerError::NotFound(format!("topic {:?} was deleted", open.topic)).into());
                return;
            },
            req = inbound.message(), if inbound_open => match req {
                Ok(Some(SubscribeRequest { request: Some(Request::Open(_)) })) => {
                    tx.finish(BrokerError::AlreadyOpen.into());
                    return;
                }
                Ok(Some(_)) => {}
                Ok(None) => inbound_open = false,
                Err(s) => {
                    finish_malformed(&tx, s, broker.cfg.limits.max_message_bytes);
                    return;
                }
            },
            _ = tx.closed() => return,
            _ = heartbeat.tick() => {
                if tx.try_send(msg(Response::Heartbeat(pb::Heartbeat {}))).is_err() {
                    return;
                }
            }
        }
    }
}

/// Queues `item`, waiting for room unless shutdown starts first; false
/// means the session ends.
async fn send_or_stop(
    tx: &Outbox,
    item: outbox::Item,
    stopping: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        r = tx.send(item) => r.is_ok(),
        _ = crate::state::stopped(stopping) => {
            tx.finish(Status::from(BrokerError::ShuttingDown));
            false
        }
    }
}

/// Ends a session whose inbound stream failed: with the codec's
/// INVALID_ARGUMENT if a request was not valid protobuf, or
/// RESOURCE_EXHAUSTED naming `limits.max_message_bytes` if it was too
/// large, so the client learns why; any other failure means the client is
/// gone.
fn finish_malformed(tx: &Outbox, s: Status, max_message_bytes: usize) {
    let s = crate::limits::name_message_limit(s, max_message_bytes);
    if matches!(
        s.code(),
        tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted
    ) {
        tx.finish(s);
    }
}
