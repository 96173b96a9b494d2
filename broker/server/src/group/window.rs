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

use tokio::time::Instant;

use super::{Outbound, store::Settle};
use crate::{
    config::BrokerConfig,
    dlq,
    error::{BrokerError, Result},
    metrics::GroupMetrics,
};

mod entry;
#[cfg(test)]
mod props;
mod read_ahead;
mod settle;
#[cfg(test)]
mod settle_tests;
#[cfg(test)]
mod tests;
mod timers;

use entry::{Blocked, Entry, Keys, Member, State};
pub use settle::ack_wait;
use settle::backoff;

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
    /// Settle this delivery at the store ([`GroupStore::settle`]).
    ///
    /// [`GroupStore::settle`]: crate::group::GroupStore::settle
    Settle(Arc<str>, Settle),
    /// Append this event to the group's dead-letter queue, then report
    /// with [`GroupWindow::dead_lettered`].
    DeadLetter(u64, Box<dlq::Letter>),
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
    /// A store that settles (a JetStream consumer) first moves its cursor
    /// back to `from`: the first read of each epoch.
    pub rewind: bool,
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
    /// Boxed: an entry is a few hundred bytes, and the map's inserts and
    /// removes shift whole nodes of them (a tenth of the dispatcher's
    /// time in memmove before).
    pending: BTreeMap<u64, Box<Entry>>,
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
    /// The store tracks every delivery (a JetStream consumer): each event
    /// is settled there, and a nacked one comes back from the store after
    /// its delay instead of from `delayed` (see `settle`).
    settles: bool,
    /// With `settles`: events whose redelivery delay has ended, waiting
    /// for the store to hand them over again, and since when.
    awaited: BTreeMap<u64, Instant>,
    /// With `settles`: the epoch whose first read rewound the store.
    rewound: Option<u64>,
    /// With `settles`: when the events held here are next refreshed at
    /// the store, so it does not redeliver them meanwhile.
    next_progress: Instant,
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
            next_lag: now + cfg.delivery.lag_report_interval,
            head,
            settles: false,
            awaited: BTreeMap::new(),
            rewound: None,
            next_progress: now,
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

    /// A read is in flight.
    pub fn reading(&self) -> bool {
        self.reading
    }

    /// Bumped whenever the read-ahead is dropped.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Members connected now.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
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
        self.awaited.clear();
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
            self.complete(off, Settle::Ack);
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
                self.complete(off, Settle::Ack);
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

    /// The event is done (acked, or dead-lettered: `how`): release its key.
    fn complete(&mut self, off: u64, how: Settle) {
        let Some(e) = self.pending.remove(&off) else {
            return;
        };
        self.settle(&e.record, how);
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
            self.effects.push(Effect::DeadLetter(off, Box::new(letter)));
            return;
        }
        self.redelivered += 1;
        self.metrics.redelivered.increment(1);
        let at = now + delay.max(backoff(&self.cfg, e.attempt));
        e.state = State::Delayed(at);
        self.delayed.insert((at, off));
        self.settle_at(off, Settle::Nak(at - now));
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
                    self.complete(off, Settle::Term);
                }
            }
            Err(_) if !current => {}
            Err(e) => {
                // Keep the event; try the dead-letter append again later.
                tracing::error!(topic = %self.topic, group = %self.group, offset = off, error = %e, "dead-lettering failed; will retry");
                if let Some(entry) = self.pending.get_mut(&off) {
                    let at = now + self.cfg.delivery.max_backoff;
                    entry.attempt = self.max_attempts.saturating_sub(1);
                    entry.state = State::Delayed(at);
                    self.delayed.insert((at, off));
                    self.settle_at(off, Settle::Nak(at - now));
                }
            }
        }
    }

    /// The group stops (shutdown, topic deleted): clear its gauges.
    pub fn stopped(&self) {
        // A deleted group has no lag; a stopped one is measured by
        // `metrics::refresh_loop` from here on.
        self.metrics.set_lag(0, Duration::ZERO);
        self.metrics.blocked.set(0.0);
    }
}
