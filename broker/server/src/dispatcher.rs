//! One consumer group on one topic: the actor that hands events to the
//! group's members and keeps its position.
//!
//! The dispatcher owns all of the group's delivery state, so there are no
//! locks: sessions send it commands (join, ack, nack, credit, leave) and
//! it answers on each member's bounded channel.
//!
//! - **Window.** It reads ahead of the group's acks at most
//!   `limits.group_window` events and `limits.group_window_bytes` of
//!   payload, and only while members are connected,
//!   so a stalled group costs a bounded amount of memory.
//! - **Credit.** A member never holds more unacked deliveries than its
//!   credit.
//! - **Keys.** Events with the same subject are delivered one at a time,
//!   in offset order: the next one only after the previous is acked or
//!   dead-lettered. A failing event therefore holds back its own key and no
//!   other.
//! - **Redelivery.** A nack, or an ack deadline that passes, makes the
//!   event ready again after exponential backoff; after
//!   `max_delivery_attempts` deliveries it goes to the dead-letter topic
//!   and counts as done once that append is durable.
//! - **Damage.** A corrupt record stops the group at its offset: every
//!   event before it is delivered, nothing from it on, each member is told
//!   once, and nothing is read again until a seek moves the group.
//! - **Position.** The committed offset is the lowest offset not yet done.
//!   It is written to storage every `commit_interval_ms` when it moved, when
//!   the last member leaves and at shutdown. After a crash, events acked
//!   since the last commit are delivered again (at-least-once).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use mesh_log::{CommitMode, LogError, Record, Storage};
use mesh_proto::{broker::v1 as pb, events::v1::StoredEvent};
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};

use crate::{
    config::BrokerConfig,
    convert, dlq,
    error::{BrokerError, Result},
};

/// Deliveries sent to a member in one message at most.
const MAX_BATCH: usize = 256;
/// Records read from storage in one go at most.
const READ_BATCH: usize = 1024;
/// Commands handled in a row before the dispatcher reads and pumps again.
const MAX_CMDS_PER_STEP: usize = 256;

/// Attribute that marks a redriven copy of a dead letter: only this group
/// receives it.
pub const REDRIVE_GROUP_ATTR: &str = "mesh.redrive.group";

/// What a member's session receives.
#[derive(Debug)]
pub enum Outbound {
    Deliveries(Vec<pb::Delivery>),
    CaughtUp(u64),
    Lag(pb::Lag),
    Error(pb::Error),
}

/// Where a new group starts.
#[derive(Clone, Copy, Debug)]
pub enum Start {
    Earliest,
    Latest,
    Offset(u64),
    TimeUs(i64),
}

pub struct JoinRequest {
    pub name: String,
    pub credit: u32,
    pub auto_ack: bool,
    pub start: Start,
    pub out: mpsc::Sender<Outbound>,
}

pub struct Joined {
    pub member_id: u64,
    pub committed: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub committed: u64,
    pub position: u64,
    pub in_flight: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
    pub oldest_unacked_us: Option<i64>,
    pub members: Vec<pb::Member>,
    /// Events held in memory (`pending`): bounded by `limits.group_window`.
    pub buffered: u64,
    /// The damaged offset the group is stopped at, and why.
    pub blocked: Option<(u64, String)>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeekOutcome {
    pub previous: u64,
    pub target: u64,
    pub to_redeliver: u64,
    pub to_skip: u64,
}

pub enum Cmd {
    Join(JoinRequest, oneshot::Sender<Result<Joined>>),
    Leave(u64),
    Ack(u64, Vec<u64>),
    Nack {
        member: u64,
        offsets: Vec<u64>,
        delay: Duration,
        reason: String,
    },
    Credit(u64, u32),
    /// Deliveries to an auto-ack member reached its stream's outbox: they
    /// count as acked now, not when they were handed to the session, so a
    /// reader that stalls holds at most its credit (and the window keeps
    /// the events until then).
    Sent(u64, Vec<u64>),
    Describe(oneshot::Sender<Snapshot>),
    Seek {
        target: u64,
        dry_run: bool,
        reply: oneshot::Sender<Result<SeekOutcome>>,
    },
    DeadLettered(u64, std::result::Result<(), String>),
    Stop(oneshot::Sender<()>),
}

#[derive(Clone, Debug)]
pub struct GroupHandle {
    pub tx: mpsc::Sender<Cmd>,
}

impl GroupHandle {
    pub async fn send(&self, cmd: Cmd) -> Result<()> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| BrokerError::ShuttingDown)
    }

    pub async fn describe(&self) -> Result<Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Describe(tx)).await?;
        rx.await.map_err(|_| BrokerError::ShuttingDown)
    }

    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The group reached a record it cannot read (a corrupt record in the
/// log). It delivers everything before it and nothing from it on, until a
/// SeekGroup moves it.
struct Blocked {
    /// The first offset the group could not read.
    offset: u64,
    /// The read error, naming the file, byte and offset of the damage.
    reason: String,
    /// What members get in-stream, once each: the error does not change,
    /// so repeating it (the read used to be retried every second) only
    /// buried it.
    error: pb::Error,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Waiting behind an earlier event with the same key.
    Blocked,
    Ready,
    Delayed(Instant),
    InFlight {
        member: u64,
        deadline: Instant,
    },
    DeadLettering,
}

struct Entry {
    /// The decoded event, until its first delivery takes it (a clone per
    /// delivery was most of the dispatcher's per-event cost); redeliveries
    /// and dead-lettering decode `record` again.
    event: Option<StoredEvent>,
    /// The event as stored; its payload shares the read buffer.
    record: Record,
    key: Option<Arc<str>>,
    attempt: u32,
    first_delivered_us: i64,
    last_reason: String,
    state: State,
}

impl Entry {
    fn decode(&self, topic: &str) -> StoredEvent {
        convert::stored_event(topic, &self.record)
            .expect("the same bytes decoded when the record was read")
    }

    /// The event to deliver: the decoded one the first time.
    fn take_event(&mut self, topic: &str) -> StoredEvent {
        match self.event.take() {
            Some(ev) => ev,
            None => self.decode(topic),
        }
    }

    fn event(&self, topic: &str) -> StoredEvent {
        match &self.event {
            Some(ev) => ev.clone(),
            None => self.decode(topic),
        }
    }
}

struct Member {
    name: String,
    credit: u32,
    auto_ack: bool,
    in_flight: HashSet<u64>,
    out: mpsc::Sender<Outbound>,
}

pub struct Dispatcher {
    topic: String,
    group: String,
    storage: Arc<dyn Storage>,
    cfg: Arc<BrokerConfig>,
    max_attempts: u32,
    /// Durably committed position; `None` until the group's first member
    /// chose where it starts.
    committed: Option<u64>,
    next_read: u64,
    pending: BTreeMap<u64, Entry>,
    /// Payload bytes of the records in `pending`, against
    /// `limits.group_window_bytes`.
    pending_bytes: usize,
    keys: HashMap<Arc<str>, VecDeque<u64>>,
    /// Events waiting behind an earlier unfinished event of their key (all
    /// but the front of each `keys` queue): read, but not handed out yet.
    held: usize,
    ready: BTreeSet<u64>,
    delayed: BTreeSet<(Instant, u64)>,
    deadlines: BTreeSet<(Instant, u64)>,
    members: BTreeMap<u64, Member>,
    rr: u64,
    next_member: u64,
    redelivered: u64,
    dead_lettered: u64,
    caught_up_sent: bool,
    read_backoff_until: Option<Instant>,
    /// Set when the read-ahead hit damage: nothing at or after it is read
    /// again until a seek clears it.
    blocked: Option<Blocked>,
    last_commit: Instant,
    next_lag: Instant,
    /// The topic's head as last seen on its watch channel.
    head: u64,
    /// To report dead-letter results back to this actor; weak so that the
    /// actor stops when every handle is gone.
    me: mpsc::WeakSender<Cmd>,
    metrics: crate::metrics::GroupMetrics,
}

impl Dispatcher {
    /// Starts the actor for `group` on `topic`.
    pub fn spawn(
        topic: &str,
        group: &str,
        storage: Arc<dyn Storage>,
        cfg: Arc<BrokerConfig>,
    ) -> Result<GroupHandle> {
        let committed = storage.committed(topic, group)?;
        let max_attempts = storage
            .topic(topic)?
            .config
            .max_delivery_attempts
            .unwrap_or(cfg.delivery.max_delivery_attempts)
            .max(1);
        let head_rx = storage.watch_head(topic)?;
        let (tx, rx) = mpsc::channel(1024);
        let now = Instant::now();
        let d = Dispatcher {
            topic: topic.to_string(),
            group: group.to_string(),
            storage,
            max_attempts,
            committed,
            next_read: committed.unwrap_or(0),
            pending: BTreeMap::new(),
            pending_bytes: 0,
            keys: HashMap::new(),
            held: 0,
            ready: BTreeSet::new(),
            delayed: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            members: BTreeMap::new(),
            rr: 0,
            next_member: 1,
            redelivered: 0,
            dead_lettered: 0,
            caught_up_sent: false,
            read_backoff_until: None,
            blocked: None,
            last_commit: now,
            next_lag: now + BrokerConfig::ms(cfg.delivery.lag_report_interval_ms),
            head: *head_rx.borrow(),
            me: tx.downgrade(),
            metrics: crate::metrics::GroupMetrics::new(topic, group),
            cfg,
        };
        d.metrics.blocked.set(0.0);
        tokio::spawn(d.run(rx, head_rx));
        Ok(GroupHandle { tx })
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>, mut head_rx: watch::Receiver<u64>) {
        let mut stop_reply = None;
        loop {
            // Cached: head() is needed on every step of the hot path.
            self.head = *head_rx.borrow_and_update();
            // Hand out what is ready before waiting for the read-ahead, then
            // whatever the read made ready.
            self.pump();
            self.fill().await;
            self.pump();
            self.report_caught_up();
            let wake = self.next_wake();
            tokio::select! {
                biased;
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(Cmd::Stop(reply)) => { stop_reply = Some(reply); break; }
                    Some(cmd) => {
                        // A new member is handed its events before any
                        // command queued behind its join: a client that
                        // acks at once (grpcurl with its requests in -d)
                        // acks an offset it already holds.
                        let joined = matches!(cmd, Cmd::Join(..));
                        self.handle(cmd).await;
                        // Take every command already queued (mostly acks)
                        // before the next read and pump: one read-ahead per
                        // burst of acks instead of one per ack.
                        let mut stop = false;
                        let burst = if joined { 0 } else { MAX_CMDS_PER_STEP };
                        for _ in 0..burst {
                            match rx.try_recv() {
                                Ok(Cmd::Stop(reply)) => { stop_reply = Some(reply); stop = true; break; }
                                Ok(Cmd::Join(req, reply)) => {
                                    self.handle(Cmd::Join(req, reply)).await;
                                    break;
                                }
                                Ok(cmd) => self.handle(cmd).await,
                                Err(mpsc::error::TryRecvError::Empty) => break,
                                Err(mpsc::error::TryRecvError::Disconnected) => { stop = true; break; }
                            }
                        }
                        if stop { break; }
                    }
                },
                changed = head_rx.changed() => {
                    if changed.is_err() {
                        // The topic was deleted.
                        self.broadcast_error(&BrokerError::NotFound(format!("topic {:?} was deleted", self.topic)));
                        break;
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
            self.on_timers().await;
        }
        self.commit(true).await;
        // A deleted group has no lag; a stopped one is measured by
        // `metrics::refresh_loop` from here on.
        self.metrics.set_lag(0, Duration::ZERO);
        self.metrics.blocked.set(0.0);
        if let Some(r) = stop_reply {
            let _ = r.send(());
        }
    }

    fn head(&self) -> u64 {
        self.head
    }

    /// One past the last offset the read-ahead may read: the head, or the
    /// damaged offset the group is blocked at.
    fn read_limit(&self) -> u64 {
        match &self.blocked {
            Some(b) => b.offset.min(self.head),
            None => self.head,
        }
    }

    /// Lowest offset not yet done.
    fn position(&self) -> u64 {
        self.pending
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_read)
    }

    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let more = !self.members.is_empty()
            && !self.window_full()
            && self.next_read < self.read_limit()
            && self.read_backoff_until.is_none_or(|t| t <= now);
        if more {
            return now;
        }
        let mut wake = self.next_lag;
        if let Some(&(t, _)) = self.delayed.first() {
            wake = wake.min(t);
        }
        if let Some(&(t, _)) = self.deadlines.first() {
            wake = wake.min(t);
        }
        if let Some(t) = self.read_backoff_until {
            wake = wake.min(t);
        }
        if self.committed.is_some_and(|c| self.position() > c) {
            wake =
                wake.min(self.last_commit + BrokerConfig::ms(self.cfg.delivery.commit_interval_ms));
        }
        wake
    }

    async fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Join(req, reply) => {
                let r = self.join(req).await;
                let _ = reply.send(r);
            }
            Cmd::Leave(id) => {
                self.leave(id);
                if self.members.is_empty() {
                    self.commit(true).await;
                }
            }
            Cmd::Ack(id, offsets) => {
                for off in offsets {
                    if let Err(e) = self.ack(id, off) {
                        self.send_error(id, &e);
                    }
                }
            }
            Cmd::Nack {
                member,
                offsets,
                delay,
                reason,
            } => {
                for off in offsets {
                    if let Err(e) = self.nack(member, off, delay, &reason) {
                        self.send_error(member, &e);
                    }
                }
            }
            Cmd::Credit(id, add) => {
                let cap = self.cfg.limits.max_credit;
                if let Some(m) = self.members.get_mut(&id) {
                    let total = m.credit.saturating_add(add);
                    m.credit = total.min(cap.saturating_sub(m.in_flight.len() as u32));
                    if total > m.credit {
                        let e = BrokerError::ResourceExhausted(format!(
                            "credit.add: credit is capped at limits.max_credit = {cap} in flight"
                        ));
                        self.send_error(id, &e);
                    }
                }
            }
            Cmd::Sent(id, offsets) => {
                for off in offsets {
                    // Not in flight any more (a seek reset it, or the
                    // member's events went back): nothing to ack, and the
                    // member asked for nothing.
                    let _ = self.ack(id, off);
                }
            }
            Cmd::Describe(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Cmd::Seek {
                target,
                dry_run,
                reply,
            } => {
                let r = self.seek(target, dry_run).await;
                let _ = reply.send(r);
            }
            Cmd::DeadLettered(off, result) => self.dead_lettered(off, result),
            Cmd::Stop(_) => unreachable!("handled in run"),
        }
    }

    async fn join(&mut self, req: JoinRequest) -> Result<Joined> {
        if self.committed.is_none() {
            let start = match req.start {
                Start::Earliest => self.storage.topic(&self.topic)?.earliest,
                Start::Latest => self.head(),
                Start::Offset(o) => {
                    let t = self.storage.topic(&self.topic)?;
                    if o > t.head {
                        return Err(BrokerError::invalid(
                            "open.start.offset",
                            format!(
                                "offset {o} is beyond the head {} of topic {:?}",
                                t.head, self.topic
                            ),
                        ));
                    }
                    o.max(t.earliest)
                }
                Start::TimeUs(us) => self.storage.offset_for_time(&self.topic, us).await?,
            };
            self.storage
                .commit(&self.topic, &self.group, start, CommitMode::Forward)
                .await?;
            self.committed = Some(start);
            self.next_read = start;
        }
        let id = self.next_member;
        self.next_member += 1;
        self.members.insert(
            id,
            Member {
                name: req.name,
                credit: req.credit,
                auto_ack: req.auto_ack,
                in_flight: HashSet::new(),
                out: req.out,
            },
        );
        // Let the new member hear "caught up" too.
        self.caught_up_sent = false;
        // And why nothing comes, if the group is blocked: once, now.
        if let Some(b) = &self.blocked {
            let _ = self.members[&id]
                .out
                .try_send(Outbound::Error(b.error.clone()));
        }
        tracing::info!(topic = %self.topic, group = %self.group, member = id, "member joined");
        Ok(Joined {
            member_id: id,
            committed: self.committed.unwrap_or(0),
        })
    }

    /// A member is gone: its in-flight events go back to the group now.
    fn leave(&mut self, id: u64) {
        let Some(m) = self.members.remove(&id) else {
            return;
        };
        let returned = m.in_flight.len();
        for off in m.in_flight {
            if let Some(e) = self.pending.get_mut(&off)
                && let State::InFlight { deadline, .. } = e.state
            {
                self.deadlines.remove(&(deadline, off));
                e.state = State::Ready;
                self.ready.insert(off);
            }
        }
        tracing::info!(topic = %self.topic, group = %self.group, member = id, returned, "member left");
        if self.members.is_empty() {
            // Nothing is in flight now; drop the read-ahead (it is only a
            // cache of the log) so an idle group holds no events, and read
            // again from the first event not yet done.
            self.next_read = self.position();
            self.pending.clear();
            self.pending_bytes = 0;
            self.keys.clear();
            self.held = 0;
            self.ready.clear();
            self.delayed.clear();
            self.deadlines.clear();
        }
    }

    fn take_in_flight(&mut self, member: u64, off: u64) -> Result<()> {
        let held = self
            .members
            .get(&member)
            .is_some_and(|m| m.in_flight.contains(&off));
        if !held {
            return Err(BrokerError::FailedPrecondition(format!(
                "offset {off} is not in flight to this subscriber (never delivered, already acked, redelivered elsewhere after its ack deadline, or reset by a seek)"
            )));
        }
        let m = self.members.get_mut(&member).expect("member exists");
        m.in_flight.remove(&off);
        m.credit += 1;
        if let Some(e) = self.pending.get_mut(&off)
            && let State::InFlight { deadline, .. } = e.state
        {
            self.deadlines.remove(&(deadline, off));
            e.state = State::Blocked; // transient: the caller decides
        }
        Ok(())
    }

    fn ack(&mut self, member: u64, off: u64) -> Result<()> {
        self.take_in_flight(member, off)?;
        self.metrics.acked.increment(1);
        self.complete(off);
        Ok(())
    }

    /// The event is done (acked or dead-lettered): release its key.
    fn complete(&mut self, off: u64) {
        let Some(e) = self.pending.remove(&off) else {
            return;
        };
        self.pending_bytes -= e.record.payload.len();
        if let Some(k) = e.key
            && let Some(q) = self.keys.get_mut(&k)
        {
            debug_assert_eq!(q.front(), Some(&off));
            let before = q.len();
            q.retain(|&o| o != off);
            // The key's next event, if any, is no longer held behind it.
            self.held -= (before - 1) - q.len().saturating_sub(1);
            match q.front().copied() {
                Some(next) => self.make_ready(next),
                None => {
                    self.keys.remove(&k);
                }
            }
        }
    }

    fn make_ready(&mut self, off: u64) {
        if let Some(e) = self.pending.get_mut(&off)
            && e.state == State::Blocked
        {
            e.state = State::Ready;
            self.ready.insert(off);
        }
    }

    fn nack(&mut self, member: u64, off: u64, delay: Duration, reason: &str) -> Result<()> {
        self.take_in_flight(member, off)?;
        self.metrics.nacked.increment(1);
        self.retry(off, delay, reason);
        Ok(())
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let d = &self.cfg.delivery;
        let exp = attempt.saturating_sub(1).min(30);
        let ms = d
            .min_backoff_ms
            .saturating_mul(1u64 << exp)
            .min(d.max_backoff_ms);
        Duration::from_millis(ms)
    }

    /// Schedules a redelivery, or dead-letters after the last attempt.
    fn retry(&mut self, off: u64, delay: Duration, reason: &str) {
        let backoff = self.pending.get(&off).map(|e| self.backoff(e.attempt));
        let Some(e) = self.pending.get_mut(&off) else {
            return;
        };
        e.last_reason = reason.to_string();
        if e.attempt >= self.max_attempts {
            e.state = State::DeadLettering;
            self.spawn_dead_letter(off);
            return;
        }
        self.redelivered += 1;
        self.metrics.redelivered.increment(1);
        let at = Instant::now() + delay.max(backoff.unwrap_or_default());
        e.state = State::Delayed(at);
        self.delayed.insert((at, off));
    }

    fn spawn_dead_letter(&self, off: u64) {
        let Some(e) = self.pending.get(&off) else {
            return;
        };
        let letter = dlq::Letter {
            event: e.event(&self.topic),
            attempts: e.attempt,
            reason: e.last_reason.clone(),
            first_delivered_us: e.first_delivered_us,
        };
        let (storage, cfg, topic, group, me) = (
            self.storage.clone(),
            self.cfg.clone(),
            self.topic.clone(),
            self.group.clone(),
            self.me.clone(),
        );
        tokio::spawn(async move {
            let r = dlq::dead_letter(&*storage, &cfg, &topic, &group, letter)
                .await
                .map_err(|e| e.to_string());
            if let Some(tx) = me.upgrade() {
                let _ = tx.send(Cmd::DeadLettered(off, r)).await;
            }
        });
    }

    fn dead_lettered(&mut self, off: u64, result: std::result::Result<(), String>) {
        // The append ran outside the actor. If a seek or the last member
        // leaving dropped the window meanwhile, `off` may since have been
        // read again as a fresh entry that is ready or in flight: completing
        // (or delaying) that one would silently skip a delivery.
        let current = self
            .pending
            .get(&off)
            .is_some_and(|e| e.state == State::DeadLettering);
        match result {
            Ok(()) => {
                self.dead_lettered += 1;
                self.metrics.dead_lettered.increment(1);
                tracing::warn!(topic = %self.topic, group = %self.group, offset = off, "event dead-lettered after the last delivery attempt");
                if current {
                    self.complete(off);
                }
            }
            Err(_) if !current => {}
            Err(e) => {
                // Keep the event; try the dead-letter append again later.
                tracing::error!(topic = %self.topic, group = %self.group, offset = off, error = %e, "dead-lettering failed; will retry");
                if let Some(entry) = self.pending.get_mut(&off) {
                    let at = Instant::now() + BrokerConfig::ms(self.cfg.delivery.max_backoff_ms);
                    entry.attempt = self.max_attempts.saturating_sub(1);
                    entry.state = State::Delayed(at);
                    self.delayed.insert((at, off));
                }
            }
        }
    }

    /// The read-ahead holds `limits.group_window` events or
    /// `limits.group_window_bytes` of payload, whichever comes first.
    fn window_full(&self) -> bool {
        let l = &self.cfg.limits;
        self.pending.len() >= l.group_window || self.pending_bytes >= l.group_window_bytes
    }

    /// Reads ahead from the log into the window.
    async fn fill(&mut self) {
        let now = Instant::now();
        if self.members.is_empty() || self.read_backoff_until.is_some_and(|t| t > now) {
            return;
        }
        self.read_backoff_until = None;
        let limit = self.read_limit();
        if self.window_full() || self.next_read >= limit {
            return;
        }
        let l = &self.cfg.limits;
        let n = (l.group_window - self.pending.len())
            .min(READ_BATCH)
            .min(usize::try_from(limit - self.next_read).unwrap_or(usize::MAX));
        // A read returns at least one record whatever this says, so an
        // event larger than the room left still gets in.
        let bytes = (l.group_window_bytes - self.pending_bytes).min(4 << 20);
        match self
            .storage
            .read(&self.topic, self.next_read, n, bytes)
            .await
        {
            Ok(records) => {
                for r in records {
                    self.next_read = r.offset + 1;
                    let event = match convert::stored_event(&self.topic, &r) {
                        Ok(ev) => ev,
                        Err(e) => {
                            tracing::error!(topic = %self.topic, offset = r.offset, error = %e, "skipping a record that is not an event");
                            continue;
                        }
                    };
                    let env = event.event.as_ref();
                    if env
                        .and_then(|ev| ev.attributes.get(REDRIVE_GROUP_ATTR))
                        .is_some_and(|g| g != &self.group)
                    {
                        continue; // a redriven dead letter of another group
                    }
                    let key = env
                        .map(|ev| ev.subject.as_str())
                        .filter(|s| !s.is_empty())
                        .map(Arc::from);
                    self.insert(r, key, event);
                }
            }
            Err(LogError::OffsetTruncated { earliest, .. }) => {
                tracing::warn!(topic = %self.topic, group = %self.group, from = self.next_read, earliest, "events were deleted by retention before this group read them");
                self.next_read = earliest;
            }
            Err(e @ LogError::Corrupt { .. }) => self.block(e),
            Err(e) => {
                let e = BrokerError::from(e);
                tracing::error!(topic = %self.topic, group = %self.group, offset = self.next_read, error = %e, "read failed");
                self.broadcast_error(&e);
                self.read_backoff_until = Some(now + Duration::from_secs(1));
            }
        }
    }

    /// The read at `next_read` hit damage. The log returns the records
    /// before damage without an error, so everything before `next_read`
    /// has been read: stop here, tell every member once, and wait for an
    /// operator's SeekGroup.
    fn block(&mut self, e: LogError) {
        let offset = self.next_read;
        let reason = e.to_string();
        let mut error = crate::error::to_proto(&BrokerError::from(e));
        error.message = format!(
            "group {:?} of topic {:?} is blocked at offset {offset}: {reason}; every event before it was delivered, none from it on will be until SeekGroup moves the group to offset {} or later",
            self.group,
            self.topic,
            offset + 1
        );
        tracing::error!(topic = %self.topic, group = %self.group, offset, error = %reason, "consumer group blocked at a damaged record; SeekGroup past it to go on");
        self.metrics.blocked.set(1.0);
        for m in self.members.values() {
            let _ = m.out.try_send(Outbound::Error(error.clone()));
        }
        self.blocked = Some(Blocked {
            offset,
            reason,
            error,
        });
    }

    fn insert(&mut self, record: Record, key: Option<Arc<str>>, event: StoredEvent) {
        let offset = record.offset;
        let mut state = State::Ready;
        if let Some(k) = &key {
            let q = self.keys.entry(k.clone()).or_default();
            q.push_back(offset);
            if q.len() > 1 {
                state = State::Blocked;
                self.held += 1;
            }
        }
        if state == State::Ready {
            self.ready.insert(offset);
        }
        self.pending_bytes += record.payload.len();
        self.pending.insert(
            offset,
            Entry {
                event: Some(event),
                record,
                key,
                attempt: 0,
                first_delivered_us: 0,
                last_reason: String::new(),
                state,
            },
        );
    }

    /// Hands ready events to members with credit, round-robin.
    fn pump(&mut self) {
        let deadline_after = BrokerConfig::ms(self.cfg.delivery.ack_deadline_ms);
        while !self.ready.is_empty() {
            let ids: Vec<u64> = self
                .members
                .iter()
                .filter(|(_, m)| m.credit > 0)
                .map(|(&id, _)| id)
                .collect();
            if ids.is_empty() {
                return;
            }
            let per = self.ready.len().div_ceil(ids.len()).clamp(1, MAX_BATCH);
            let start = (self.rr as usize) % ids.len();
            self.rr = self.rr.wrapping_add(1);
            for &id in ids[start..].iter().chain(&ids[..start]) {
                let credit = self.members[&id].credit as usize;
                let n = credit.min(per).min(self.ready.len());
                if n == 0 {
                    continue;
                }
                let now = Instant::now();
                let now_us = convert::now_us();
                let deadline = now + deadline_after;
                // An auto-ack member acks by reading (Cmd::Sent): no
                // deadline, or a reader that stalls would have its events
                // redelivered to itself until they were dead-lettered.
                let auto_ack = self.members[&id].auto_ack;
                let mut batch = Vec::with_capacity(n);
                for _ in 0..n {
                    let off = self.ready.pop_first().expect("ready is not empty");
                    let e = self
                        .pending
                        .get_mut(&off)
                        .expect("ready entries are pending");
                    e.attempt += 1;
                    if e.first_delivered_us == 0 {
                        e.first_delivered_us = now_us;
                    }
                    e.state = State::InFlight {
                        member: id,
                        deadline,
                    };
                    if !auto_ack {
                        self.deadlines.insert((deadline, off));
                    }
                    batch.push(pb::Delivery {
                        event: Some(e.take_event(&self.topic)),
                        delivery_attempt: e.attempt,
                    });
                }
                let m = self.members.get_mut(&id).expect("member exists");
                m.credit -= n as u32;
                let offsets: Vec<u64> = batch
                    .iter()
                    .filter_map(|d| d.event.as_ref().map(|e| e.offset))
                    .collect();
                m.in_flight.extend(&offsets);
                if m.out.try_send(Outbound::Deliveries(batch)).is_err() {
                    // Credit bounds what a member can have queued, so a full
                    // channel means the session is gone.
                    self.leave(id);
                    continue;
                }
                self.metrics.delivered.increment(n as u64);
            }
        }
    }

    fn report_caught_up(&mut self) {
        let head = self.head();
        // Events held behind their key have not been handed out either:
        // without `held`, a keyed backlog reported CaughtUp as soon as the
        // first event of each key was out.
        let caught_up = self.next_read >= head
            && self.ready.is_empty()
            && self.delayed.is_empty()
            && self.held == 0;
        if !caught_up {
            self.caught_up_sent = false;
            return;
        }
        if !self.caught_up_sent && !self.members.is_empty() {
            for m in self.members.values() {
                let _ = m.out.try_send(Outbound::CaughtUp(head));
            }
            self.caught_up_sent = true;
        }
    }

    async fn on_timers(&mut self) {
        let now = Instant::now();
        while let Some(&(t, off)) = self.delayed.first() {
            if t > now {
                break;
            }
            self.delayed.pop_first();
            if let Some(e) = self.pending.get_mut(&off)
                && e.state == State::Delayed(t)
            {
                e.state = State::Ready;
                self.ready.insert(off);
            }
        }
        let mut expired = Vec::new();
        while let Some(&(t, off)) = self.deadlines.first() {
            if t > now {
                break;
            }
            self.deadlines.pop_first();
            expired.push(off);
        }
        for off in expired {
            let member = match self.pending.get(&off).map(|e| &e.state) {
                Some(State::InFlight { member, .. }) => *member,
                _ => continue,
            };
            if let Some(m) = self.members.get_mut(&member) {
                m.in_flight.remove(&off);
                m.credit += 1;
            }
            tracing::debug!(topic = %self.topic, group = %self.group, offset = off, "ack deadline passed");
            if let Some(e) = self.pending.get_mut(&off) {
                e.state = State::Blocked;
            }
            self.retry(off, Duration::ZERO, "ack deadline exceeded");
        }
        if now >= self.next_lag {
            self.next_lag = now + BrokerConfig::ms(self.cfg.delivery.lag_report_interval_ms);
            let lag = self.lag();
            let age = lag.oldest_unacked_age.unwrap_or_default();
            let mut age = Duration::new(age.seconds.max(0) as u64, age.nanos.max(0) as u32);
            if self.pending.is_empty() && lag.events > 0 {
                // No member, so nothing read ahead: the oldest is in the log.
                age = crate::metrics::age_at(&*self.storage, &self.topic, self.position()).await;
            }
            self.metrics.set_lag(lag.events, age);
            for m in self.members.values() {
                let _ = m.out.try_send(Outbound::Lag(lag));
            }
        }
        if now >= self.last_commit + BrokerConfig::ms(self.cfg.delivery.commit_interval_ms) {
            self.commit(false).await;
        }
    }

    fn lag(&self) -> pb::Lag {
        let head = self.head();
        let earliest = self
            .storage
            .topic(&self.topic)
            .map(|t| t.earliest)
            .unwrap_or(0);
        let pos = self.position();
        let age = self
            .pending
            .values()
            .next()
            .map(|e| {
                Duration::from_micros((convert::now_us() - e.record.timestamp_us).max(0) as u64)
            })
            .unwrap_or_default();
        pb::Lag {
            events: head.saturating_sub(pos.max(earliest)),
            oldest_unacked_age: Some(convert::duration(age)),
            missed: earliest.saturating_sub(self.committed.unwrap_or(pos)),
        }
    }

    async fn commit(&mut self, force: bool) {
        let Some(committed) = self.committed else {
            return;
        };
        let pos = self.position();
        self.last_commit = Instant::now();
        if pos <= committed && !force {
            return;
        }
        if pos == committed {
            return;
        }
        match self
            .storage
            .commit(&self.topic, &self.group, pos, CommitMode::Forward)
            .await
        {
            Ok(_) => self.committed = Some(pos),
            Err(e) => {
                tracing::error!(topic = %self.topic, group = %self.group, offset = pos, error = %e, "committing the group position failed")
            }
        }
    }

    async fn seek(&mut self, target: u64, dry_run: bool) -> Result<SeekOutcome> {
        let previous = self.position();
        let consumed_after = if target < self.next_read {
            (self.next_read - target) - self.pending.range(target..).count() as u64
        } else {
            0
        };
        let unconsumed_before =
            self.pending.range(..target).count() as u64 + target.saturating_sub(self.next_read);
        let outcome = SeekOutcome {
            previous,
            target,
            to_redeliver: consumed_after,
            to_skip: unconsumed_before,
        };
        if dry_run {
            return Ok(outcome);
        }
        self.storage
            .commit(&self.topic, &self.group, target, CommitMode::Reset)
            .await?;
        for m in self.members.values_mut() {
            m.credit += m.in_flight.len() as u32;
            m.in_flight.clear();
        }
        self.pending.clear();
        self.pending_bytes = 0;
        self.keys.clear();
        self.held = 0;
        self.ready.clear();
        self.delayed.clear();
        self.deadlines.clear();
        self.committed = Some(target);
        self.next_read = target;
        self.caught_up_sent = false;
        // Reading from the new position finds out afresh whether there is
        // damage (a seek back to before it blocks the group again).
        if let Some(b) = self.blocked.take() {
            self.metrics.blocked.set(0.0);
            tracing::info!(topic = %self.topic, group = %self.group, blocked_at = b.offset, target, "group unblocked by a seek");
        }
        tracing::info!(topic = %self.topic, group = %self.group, previous, target, "group position reset");
        Ok(outcome)
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            committed: self.committed.unwrap_or(0),
            position: self.position(),
            in_flight: self
                .members
                .values()
                .map(|m| m.in_flight.len() as u64)
                .sum(),
            redelivered: self.redelivered,
            dead_lettered: self.dead_lettered,
            oldest_unacked_us: self.pending.values().next().map(|e| e.record.timestamp_us),
            buffered: self.pending.len() as u64,
            blocked: self.blocked.as_ref().map(|b| (b.offset, b.reason.clone())),
            members: self
                .members
                .iter()
                .map(|(id, m)| pb::Member {
                    member_id: member_id(&self.group, *id),
                    name: m.name.clone(),
                    in_flight: m.in_flight.len() as u64,
                    credit: m.credit as u64,
                })
                .collect(),
        }
    }

    fn send_error(&self, member: u64, e: &BrokerError) {
        if let Some(m) = self.members.get(&member) {
            let _ = m.out.try_send(Outbound::Error(crate::error::to_proto(e)));
        }
    }

    fn broadcast_error(&self, e: &BrokerError) {
        for m in self.members.values() {
            let _ = m.out.try_send(Outbound::Error(crate::error::to_proto(e)));
        }
    }
}

pub fn member_id(group: &str, id: u64) -> String {
    format!("{group}-{id}")
}
