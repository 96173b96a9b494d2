//! [`GroupWindow`]: one group's delivery state as a plain state machine.
//!
//! It does no I/O and reads no clock. Each method takes the time (`now`,
//! and the wall clock `now_us` where an event's age or first delivery is
//! recorded) and leaves what must happen in [`GroupWindow::take_effects`]
//! (messages to members, dead-letter appends) or returns it (a read to
//! start, a position to commit). The actor does those and reports their
//! results back through the `*_done` methods.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use mesh_proto::broker::v1 as pb;
use tokio::time::Instant;

use super::{
    Outbound, SeekOutcome, Snapshot, member_id,
    store::{ReadError, StoredRecord},
};
use crate::{
    config::BrokerConfig,
    convert, dlq,
    error::{BrokerError, Result},
    metrics::GroupMetrics,
};

mod entry;
#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

use entry::{Blocked, Entry, Keys, Member, State};

/// Deliveries sent to a member in one message at most.
const MAX_BATCH: usize = 256;
/// Records read from storage in one go at most.
const READ_BATCH: usize = 1024;
/// Payload asked for by one read at most.
const READ_MAX_BYTES: usize = 4 << 20;
/// How long the read-ahead waits after a failed read.
const READ_RETRY: Duration = Duration::from_secs(1);

/// Something the actor must do for the window.
#[derive(Debug)]
pub enum Effect {
    /// Send this to the member (its channel is bounded by its credit, so a
    /// full one means the session is gone: call [`GroupWindow::leave`]).
    Send(u64, Outbound),
    /// Append this event to the group's dead-letter queue, then report
    /// with [`GroupWindow::dead_lettered`].
    DeadLetter(u64, dlq::Letter),
}

/// A read the actor must start, then report with
/// [`GroupWindow::read_done`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    /// The window's epoch when asked: a result of an older epoch is stale.
    pub epoch: u64,
    /// The first offset to read.
    pub from: u64,
    /// Records wanted at most.
    pub max_records: usize,
    /// Payload wanted at most (a read returns at least one record anyway).
    pub max_bytes: usize,
}

/// One consumer group's delivery state.
pub struct GroupWindow {
    /// The topic, named in events and messages.
    topic: String,
    /// The group, named in member ids, messages and dead letters.
    group: String,
    /// Window sizes, credit cap, deadlines, backoff and timer intervals.
    cfg: Arc<BrokerConfig>,
    /// Deliveries an event gets before it is dead-lettered.
    max_attempts: u32,
    /// Durably committed position; `None` until the group's first member
    /// chose where it starts.
    committed: Option<u64>,
    /// A position being committed now: one commit at a time, or two could
    /// land out of order.
    committing: Option<u64>,
    /// A seek's reset is being made durable: no commit may start until it
    /// is applied, or a late forward commit would undo it.
    seeking: bool,
    /// The last member left: commit at once, not on the timer.
    commit_now: bool,
    /// When a commit was last considered; the next is due an interval on.
    last_commit: Instant,
    /// The next offset the read-ahead reads.
    next_read: u64,
    /// A read is in flight: one at a time keeps records in offset order.
    reading: bool,
    /// Bumped whenever the window is dropped (a seek, the last member
    /// leaving), so records of a read started before are not inserted.
    epoch: u64,
    /// No read before this, after a read failed.
    read_backoff_until: Option<Instant>,
    /// The read-ahead: events read and not done (acked or dead-lettered).
    pending: BTreeMap<u64, Entry>,
    /// Payload bytes of the records in `pending`, against
    /// `limits.group_window_bytes`.
    pending_bytes: usize,
    /// Per-key queues of pending offsets: only the front is handed out.
    keys: Keys,
    /// Pending events that may be handed out now, lowest offset first.
    ready: BTreeSet<u64>,
    /// Events waiting for their redelivery backoff, by when it ends.
    delayed: BTreeSet<(Instant, u64)>,
    /// Unacked deliveries to members that ack, by ack deadline.
    deadlines: BTreeSet<(Instant, u64)>,
    /// The connected members, by id.
    members: BTreeMap<u64, Member>,
    /// Round-robin counter: which member the next pump serves first.
    rr: u64,
    /// The id the next member gets.
    next_member: u64,
    /// Redeliveries scheduled, for DescribeGroup.
    redelivered: u64,
    /// Events dead-lettered, for DescribeGroup.
    dead_lettered: u64,
    /// CaughtUp was sent for the current idle spell: send it once.
    caught_up_sent: bool,
    /// Set when the read-ahead hit damage: nothing at or after it is read
    /// again until a seek clears it.
    blocked: Option<Blocked>,
    /// When the next Lag report is due.
    next_lag: Instant,
    /// The topic's head as last seen.
    head: u64,
    /// The group's Prometheus counters and gauges.
    metrics: GroupMetrics,
    /// What the actor must do next, in order.
    effects: Vec<Effect>,
}

impl GroupWindow {
    pub fn new(
        topic: &str,
        group: &str,
        cfg: Arc<BrokerConfig>,
        max_attempts: u32,
        committed: Option<u64>,
        head: u64,
        now: Instant,
    ) -> Self {
        let metrics = GroupMetrics::new(topic, group);
        metrics.blocked.set(0.0);
        GroupWindow {
            topic: topic.to_string(),
            group: group.to_string(),
            max_attempts: max_attempts.max(1),
            committed,
            committing: None,
            seeking: false,
            commit_now: false,
            last_commit: now,
            next_read: committed.unwrap_or(0),
            reading: false,
            epoch: 0,
            read_backoff_until: None,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            keys: Keys::default(),
            ready: BTreeSet::new(),
            delayed: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            members: BTreeMap::new(),
            rr: 0,
            next_member: 1,
            redelivered: 0,
            dead_lettered: 0,
            caught_up_sent: false,
            blocked: None,
            next_lag: now + BrokerConfig::ms(cfg.delivery.lag_report_interval_ms),
            head,
            metrics,
            effects: Vec::new(),
            cfg,
        }
    }

    /// What the actor must do, in the order it arose.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    pub fn set_head(&mut self, head: u64) {
        self.head = head;
    }

    /// The group has no position yet: a join must resolve and commit one
    /// first ([`GroupWindow::started`]).
    pub fn needs_start(&self) -> bool {
        self.committed.is_none()
    }

    /// The group's first position is durable.
    pub fn started(&mut self, start: u64) {
        self.committed = Some(start);
        self.next_read = start;
    }

    /// Lowest offset not yet done.
    pub fn position(&self) -> u64 {
        self.pending
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_read)
    }

    pub fn has_members(&self) -> bool {
        !self.members.is_empty()
    }

    /// A read is in flight.
    pub fn reading(&self) -> bool {
        self.reading
    }

    /// Bumped whenever the read-ahead is dropped.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A new member; it hears why nothing comes if the group is blocked.
    pub fn join(&mut self, name: String, credit: u32, auto_ack: bool) -> super::Joined {
        let id = self.next_member;
        self.next_member += 1;
        self.members.insert(id, Member::new(name, credit, auto_ack));
        // Let the new member hear "caught up" too.
        self.caught_up_sent = false;
        if let Some(b) = &self.blocked {
            self.effects
                .push(Effect::Send(id, Outbound::Error(b.error.clone())));
        }
        tracing::info!(topic = %self.topic, group = %self.group, member = id, "member joined");
        super::Joined {
            member_id: id,
            committed: self.committed.unwrap_or(0),
        }
    }

    /// A member is gone: its in-flight events go back to the group now.
    pub fn leave(&mut self, id: u64) {
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
            self.reset_window(self.position());
            self.commit_now = true;
        }
    }

    /// Drops the read-ahead and reads again from `from`.
    fn reset_window(&mut self, from: u64) {
        for m in self.members.values_mut() {
            m.credit += m.in_flight.len() as u32;
            m.in_flight.clear();
        }
        self.pending.clear();
        self.pending_bytes = 0;
        self.keys.clear();
        self.ready.clear();
        self.delayed.clear();
        self.deadlines.clear();
        self.next_read = from;
        self.epoch += 1;
        self.caught_up_sent = false;
    }

    pub fn ack(&mut self, member: u64, offsets: Vec<u64>) {
        for off in offsets {
            if let Err(e) = self.take_in_flight(member, off) {
                self.send_error(member, &e);
                continue;
            }
            self.metrics.acked.increment(1);
            self.complete(off);
        }
    }

    /// An auto-ack member's deliveries reached its outbox: they are acked.
    pub fn sent(&mut self, member: u64, offsets: Vec<u64>) {
        for off in offsets {
            // Not in flight any more (a seek reset it, or the member's
            // events went back): nothing to ack, and the member asked for
            // nothing.
            if self.take_in_flight(member, off).is_ok() {
                self.metrics.acked.increment(1);
                self.complete(off);
            }
        }
    }

    pub fn nack(
        &mut self,
        member: u64,
        offsets: Vec<u64>,
        delay: Duration,
        reason: &str,
        now: Instant,
    ) {
        for off in offsets {
            if let Err(e) = self.take_in_flight(member, off) {
                self.send_error(member, &e);
                continue;
            }
            self.metrics.nacked.increment(1);
            self.retry(off, delay, reason, now);
        }
    }

    pub fn credit(&mut self, member: u64, add: u32) {
        let cap = self.cfg.limits.max_credit;
        let Some(m) = self.members.get_mut(&member) else {
            return;
        };
        let asked = m.credit.saturating_add(add);
        let room = cap.saturating_sub(m.in_flight.len() as u32);
        m.credit = asked.min(room);
        if asked > m.credit {
            let e = BrokerError::ResourceExhausted(format!(
                "credit.add: credit is capped at limits.max_credit = {cap} in flight"
            ));
            self.send_error(member, &e);
        }
    }

    fn take_in_flight(&mut self, member: u64, off: u64) -> Result<()> {
        let held = self
            .members
            .get_mut(&member)
            .is_some_and(|m| m.in_flight.remove(&off));
        if !held {
            return Err(BrokerError::FailedPrecondition(format!(
                "offset {off} is not in flight to this subscriber (never delivered, already acked, redelivered elsewhere after its ack deadline, or reset by a seek)"
            )));
        }
        self.members.get_mut(&member).expect("held").credit += 1;
        if let Some(e) = self.pending.get_mut(&off)
            && let State::InFlight { deadline, .. } = e.state
        {
            self.deadlines.remove(&(deadline, off));
            e.state = State::Waiting; // transient: the caller decides
        }
        Ok(())
    }

    /// The event is done (acked or dead-lettered): release its key.
    fn complete(&mut self, off: u64) {
        let Some(e) = self.pending.remove(&off) else {
            return;
        };
        self.pending_bytes -= e.record.payload.len();
        if let Some(next) = e.key.and_then(|k| self.keys.release(&k, off))
            && let Some(e) = self.pending.get_mut(&next)
            && e.state == State::Waiting
        {
            e.state = State::Ready;
            self.ready.insert(next);
        }
    }

    /// Schedules a redelivery, or dead-letters after the last attempt.
    fn retry(&mut self, off: u64, delay: Duration, reason: &str, now: Instant) {
        let Some(e) = self.pending.get_mut(&off) else {
            return;
        };
        e.last_reason = reason.to_string();
        if e.attempt >= self.max_attempts {
            e.state = State::DeadLettering;
            let letter = dlq::Letter {
                event: e.event(&self.topic),
                attempts: e.attempt,
                reason: e.last_reason.clone(),
                first_delivered_us: e.first_delivered_us,
            };
            self.effects.push(Effect::DeadLetter(off, letter));
            return;
        }
        self.redelivered += 1;
        self.metrics.redelivered.increment(1);
        let at = now + delay.max(backoff(&self.cfg, e.attempt));
        e.state = State::Delayed(at);
        self.delayed.insert((at, off));
    }

    /// The dead-letter append for `off` finished.
    pub fn dead_lettered(
        &mut self,
        off: u64,
        result: std::result::Result<(), String>,
        now: Instant,
    ) {
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
                    let at = now + BrokerConfig::ms(self.cfg.delivery.max_backoff_ms);
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

    /// One past the last offset the read-ahead may read: the head, or the
    /// damaged offset the group is blocked at.
    fn read_limit(&self) -> u64 {
        match &self.blocked {
            Some(b) => b.offset.min(self.head),
            None => self.head,
        }
    }

    /// The read to start now, if the read-ahead has room and there is
    /// something to read (and someone to read it for).
    pub fn poll_read(&mut self, now: Instant) -> Option<ReadRequest> {
        if self.reading
            || self.members.is_empty()
            || self.read_backoff_until.is_some_and(|t| t > now)
        {
            return None;
        }
        self.read_backoff_until = None;
        let limit = self.read_limit();
        if self.window_full() || self.next_read >= limit {
            return None;
        }
        let l = &self.cfg.limits;
        let room_events = l.group_window - self.pending.len();
        let room_bytes = l.group_window_bytes - self.pending_bytes;
        let readable = usize::try_from(limit - self.next_read).unwrap_or(usize::MAX);
        self.reading = true;
        Some(ReadRequest {
            epoch: self.epoch,
            from: self.next_read,
            max_records: room_events.min(READ_BATCH).min(readable),
            max_bytes: room_bytes.min(READ_MAX_BYTES),
        })
    }

    /// The read started for `epoch` finished.
    pub fn read_done(
        &mut self,
        epoch: u64,
        result: std::result::Result<Vec<StoredRecord>, ReadError>,
        now: Instant,
    ) {
        self.reading = false;
        if epoch != self.epoch {
            return; // the window was dropped since: read again from its new start
        }
        match result {
            Ok(records) => {
                for r in records {
                    self.next_read = r.offset + 1;
                    self.insert(r);
                }
            }
            Err(ReadError::Truncated { earliest }) => {
                tracing::warn!(topic = %self.topic, group = %self.group, from = self.next_read, earliest, "events were deleted by retention before this group read them");
                self.next_read = earliest;
            }
            Err(ReadError::Damaged(e)) => self.block(e),
            Err(ReadError::Failed(e)) => {
                tracing::error!(topic = %self.topic, group = %self.group, offset = self.next_read, error = %e, "read failed");
                self.broadcast_error(&e);
                self.read_backoff_until = Some(now + READ_RETRY);
            }
        }
    }

    /// The read at `next_read` hit damage. The store returns the records
    /// before damage without an error, so everything before `next_read`
    /// has been read: stop here, tell every member once, and wait for an
    /// operator's SeekGroup.
    fn block(&mut self, e: BrokerError) {
        let offset = self.next_read;
        let reason = e.to_string();
        let mut error = crate::error::to_proto(&e);
        error.message = format!(
            "group {:?} of topic {:?} is blocked at offset {offset}: {reason}; every event before it was delivered, none from it on will be until SeekGroup moves the group to offset {} or later",
            self.group,
            self.topic,
            offset + 1
        );
        tracing::error!(topic = %self.topic, group = %self.group, offset, error = %reason, "consumer group blocked at a damaged record; SeekGroup past it to go on");
        self.metrics.blocked.set(1.0);
        for &id in self.members.keys() {
            self.effects
                .push(Effect::Send(id, Outbound::Error(error.clone())));
        }
        self.blocked = Some(Blocked {
            offset,
            reason,
            error,
        });
    }

    fn insert(&mut self, record: StoredRecord) {
        let Some(entry) = Entry::read(&self.topic, &self.group, record) else {
            return;
        };
        let offset = entry.record.offset;
        let first_of_key = entry.key.as_ref().is_none_or(|k| self.keys.push(k, offset));
        let mut entry = entry;
        if first_of_key {
            entry.state = State::Ready;
            self.ready.insert(offset);
        }
        self.pending_bytes += entry.record.payload.len();
        self.pending.insert(offset, entry);
    }

    /// Hands ready events to members with credit, round-robin.
    pub fn pump(&mut self, now: Instant, now_us: i64) {
        let deadline = now + BrokerConfig::ms(self.cfg.delivery.ack_deadline_ms);
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
                let m = self.members.get_mut(&id).expect("member exists");
                let n = (m.credit as usize).min(per).min(self.ready.len());
                if n == 0 {
                    continue;
                }
                m.credit -= n as u32;
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
                    // An auto-ack member acks by reading (`sent`): no
                    // deadline, or a reader that stalls would have its
                    // events redelivered to itself until dead-lettered.
                    if !m.auto_ack {
                        self.deadlines.insert((deadline, off));
                    }
                    m.in_flight.insert(off);
                    batch.push(pb::Delivery {
                        event: Some(e.take_event(&self.topic)),
                        delivery_attempt: e.attempt,
                    });
                }
                self.metrics.delivered.increment(n as u64);
                self.effects
                    .push(Effect::Send(id, Outbound::Deliveries(batch)));
            }
        }
    }

    /// Tells every member once when everything up to the head is handed out.
    pub fn report_caught_up(&mut self) {
        // Events held behind their key have not been handed out either:
        // without them, a keyed backlog reported CaughtUp as soon as the
        // first event of each key was out.
        let caught_up = self.next_read >= self.head
            && self.ready.is_empty()
            && self.delayed.is_empty()
            && self.keys.held() == 0;
        if !caught_up {
            self.caught_up_sent = false;
            return;
        }
        if !self.caught_up_sent && !self.members.is_empty() {
            for &id in self.members.keys() {
                self.effects
                    .push(Effect::Send(id, Outbound::CaughtUp(self.head)));
            }
            self.caught_up_sent = true;
        }
    }

    /// When the next timer is due (a redelivery, an ack deadline, a read
    /// retry, a lag report or a commit).
    pub fn next_wake(&self) -> Instant {
        let mut wake = self.next_lag;
        for t in [
            self.delayed.first().map(|&(t, _)| t),
            self.deadlines.first().map(|&(t, _)| t),
            self.read_backoff_until,
            self.commit_due(),
        ]
        .into_iter()
        .flatten()
        {
            wake = wake.min(t);
        }
        wake
    }

    /// Runs the timers due at `now`. Returns `Some((events, offset))` when a
    /// lag report needs the age of the event at `offset` from storage (no
    /// member, so nothing was read): measure it and call
    /// [`GroupWindow::set_lag_metric`].
    /// `earliest` gives the topic's earliest offset, asked only when a lag
    /// report is due.
    pub fn on_timers(
        &mut self,
        now: Instant,
        now_us: i64,
        earliest: impl FnOnce() -> u64,
    ) -> Option<(u64, u64)> {
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
        while let Some(&(t, off)) = self.deadlines.first() {
            if t > now {
                break;
            }
            self.deadlines.pop_first();
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
                e.state = State::Waiting;
            }
            self.retry(off, Duration::ZERO, "ack deadline exceeded", now);
        }
        if now < self.next_lag {
            return None;
        }
        self.next_lag = now + BrokerConfig::ms(self.cfg.delivery.lag_report_interval_ms);
        let lag = self.lag(now_us, earliest());
        for &id in self.members.keys() {
            self.effects.push(Effect::Send(id, Outbound::Lag(lag)));
        }
        if self.pending.is_empty() && lag.events > 0 {
            // No member, so nothing read ahead: the oldest is in the log.
            return Some((lag.events, self.position()));
        }
        let age = lag.oldest_unacked_age.unwrap_or_default();
        let age = Duration::new(age.seconds.max(0) as u64, age.nanos.max(0) as u32);
        self.metrics.set_lag(lag.events, age);
        None
    }

    pub fn set_lag_metric(&self, events: u64, age: Duration) {
        self.metrics.set_lag(events, age);
    }

    fn lag(&self, now_us: i64, earliest: u64) -> pb::Lag {
        let pos = self.position();
        let age = self
            .pending
            .values()
            .next()
            .map(|e| Duration::from_micros((now_us - e.record.timestamp_us).max(0) as u64))
            .unwrap_or_default();
        pb::Lag {
            events: self.head.saturating_sub(pos.max(earliest)),
            oldest_unacked_age: Some(convert::duration(age)),
            missed: earliest.saturating_sub(self.committed.unwrap_or(pos)),
        }
    }

    /// When the commit timer fires, if a commit could start then.
    fn commit_due(&self) -> Option<Instant> {
        if self.committing.is_some() || self.seeking || self.committed.is_none() {
            return None;
        }
        if self.commit_now {
            return Some(self.last_commit);
        }
        let moved = self.committed.is_some_and(|c| self.position() > c);
        moved.then(|| self.last_commit + BrokerConfig::ms(self.cfg.delivery.commit_interval_ms))
    }

    /// The position to commit now, if one is due (`force`: at shutdown).
    /// Report the result with [`GroupWindow::commit_done`].
    pub fn poll_commit(&mut self, now: Instant, force: bool) -> Option<u64> {
        if self.committing.is_some() || self.seeking {
            return None;
        }
        let force = force || std::mem::take(&mut self.commit_now);
        let committed = self.committed?;
        let interval = BrokerConfig::ms(self.cfg.delivery.commit_interval_ms);
        if !force && now < self.last_commit + interval {
            return None;
        }
        self.last_commit = now;
        let pos = self.position();
        if pos == committed || (pos < committed && !force) {
            return None;
        }
        self.committing = Some(pos);
        Some(pos)
    }

    pub fn commit_in_flight(&self) -> bool {
        self.committing.is_some()
    }

    pub fn commit_done(&mut self, result: Result<()>) {
        let Some(pos) = self.committing.take() else {
            return;
        };
        match result {
            Ok(()) => self.committed = Some(pos),
            Err(e) => {
                tracing::error!(topic = %self.topic, group = %self.group, offset = pos, error = %e, "committing the group position failed")
            }
        }
    }

    /// What a seek to `target` does; it changes nothing.
    pub fn seek_outcome(&self, target: u64) -> SeekOutcome {
        // Every offset in target..next_read was read; those not pending
        // any more are done, and the seek delivers them again.
        let read_since_target = self.next_read.saturating_sub(target);
        let pending_since_target = self.pending.range(target..).count() as u64;
        // Offsets before target not done yet: pending ones, and those not
        // even read.
        let pending_before_target = self.pending.range(..target).count() as u64;
        let unread_before_target = target.saturating_sub(self.next_read);
        SeekOutcome {
            previous: self.position(),
            target,
            to_redeliver: read_since_target - pending_since_target,
            to_skip: pending_before_target + unread_before_target,
        }
    }

    /// A seek is under way: no commit starts until it is applied or failed.
    pub fn begin_seek(&mut self) {
        self.seeking = true;
    }

    /// The seek's reset failed: nothing changed.
    pub fn seek_failed(&mut self) {
        self.seeking = false;
    }

    /// The seek's reset to `target` is durable: start over from there.
    pub fn seek_applied(&mut self, target: u64) {
        self.seeking = false;
        let previous = self.position();
        self.reset_window(target);
        self.committed = Some(target);
        // Reading from the new position finds out afresh whether there is
        // damage (a seek back to before it blocks the group again).
        if let Some(b) = self.blocked.take() {
            self.metrics.blocked.set(0.0);
            tracing::info!(topic = %self.topic, group = %self.group, blocked_at = b.offset, target, "group unblocked by a seek");
        }
        tracing::info!(topic = %self.topic, group = %self.group, previous, target, "group position reset");
    }

    pub fn snapshot(&self) -> Snapshot {
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

    /// The group stops (shutdown, topic deleted): clear its gauges.
    pub fn stopped(&self) {
        // A deleted group has no lag; a stopped one is measured by
        // `metrics::refresh_loop` from here on.
        self.metrics.set_lag(0, Duration::ZERO);
        self.metrics.blocked.set(0.0);
    }

    fn send_error(&mut self, member: u64, e: &BrokerError) {
        if self.members.contains_key(&member) {
            self.effects.push(Effect::Send(
                member,
                Outbound::Error(crate::error::to_proto(e)),
            ));
        }
    }

    pub fn broadcast_error(&mut self, e: &BrokerError) {
        for &id in self.members.keys() {
            self.effects
                .push(Effect::Send(id, Outbound::Error(crate::error::to_proto(e))));
        }
    }
}

/// How long a redelivery waits after delivery `attempt`: doubling from
/// `min_backoff_ms`, at most `max_backoff_ms`.
fn backoff(cfg: &BrokerConfig, attempt: u32) -> Duration {
    let d = &cfg.delivery;
    let exp = attempt.saturating_sub(1).min(30);
    let ms = d
        .min_backoff_ms
        .saturating_mul(1u64 << exp)
        .min(d.max_backoff_ms);
    Duration::from_millis(ms)
}
