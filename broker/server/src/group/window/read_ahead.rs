//! The read-ahead: what to read next, what a read brought, and handing
//! ready events to members.

use mesh_proto::broker::v1 as pb;
use tokio::time::Instant;

use super::{
    Effect, GroupWindow, MAX_BATCH, READ_BATCH, READ_MAX_BYTES, READ_RETRY, ReadRequest,
    entry::{Blocked, Entry, State},
    settle::{NEW_EVENT_POLL, REDELIVERY_POLL},
};
use crate::{
    error::BrokerError,
    group::{
        Outbound,
        store::{ReadError, Settle, StoredRecord},
    },
};

impl GroupWindow {
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

    /// Whether there is something to read now: events up to the head not
    /// yet read that the window has room for, or redeliveries a settling
    /// store owes.
    pub fn has_unread(&self) -> bool {
        (!self.window_full() && self.next_read < self.read_limit()) || self.redelivery_due()
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
        let due = self.redelivery_due();
        if (self.window_full() || self.next_read >= limit) && !due {
            return None;
        }
        let l = &self.cfg.limits;
        let room_events = l.group_window.saturating_sub(self.pending.len());
        let room_bytes = l.group_window_bytes.saturating_sub(self.pending_bytes);
        let readable = usize::try_from(limit.saturating_sub(self.next_read)).unwrap_or(usize::MAX);
        // Redeliveries a settling store owes come first in its answer.
        let owed = if due { self.awaited.len() } else { 0 };
        self.reading = true;
        Some(ReadRequest {
            epoch: self.epoch,
            from: self.next_read,
            max_records: room_events
                .min(READ_BATCH)
                .min(readable)
                .max(owed.min(READ_BATCH)),
            max_bytes: room_bytes.clamp(1, READ_MAX_BYTES),
            rewind: self.needs_rewind(),
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
            Ok(records) if self.settles => {
                self.rewound = Some(epoch);
                if records.is_empty() {
                    // Nothing yet: the consumer has not applied an event
                    // the head already shows (at R3 its leader may be
                    // another node than the stream's), or a redelivery is
                    // not due at the store yet. Ask again soon, without
                    // spinning.
                    let wait = if self.next_read < self.head {
                        NEW_EVENT_POLL
                    } else {
                        REDELIVERY_POLL
                    };
                    self.read_backoff_until = Some(now + wait);
                }
                for r in records {
                    self.arrive(r);
                }
            }
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
                if self.settles {
                    // Part of what the store sent may be lost on the way,
                    // and it would come back only after its ack_wait,
                    // behind later events of its key: start over from the
                    // first event not done, rewinding the store.
                    self.reset_window(self.position());
                }
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

    pub(super) fn insert(&mut self, record: StoredRecord) {
        let delivery = record.delivery.clone();
        let Some(mut entry) = Entry::read(&self.topic, &self.group, record) else {
            if let Some(d) = delivery {
                // Not for this group: done at the store too.
                self.effects.push(Effect::Settle(d.reply, Settle::Ack));
            }
            return;
        };
        // Deliveries the store counted before this one.
        entry.attempt = delivery.map_or(0, |d| d.delivered.saturating_sub(1));
        let offset = entry.record.offset;
        let first_of_key = entry.key.as_ref().is_none_or(|k| self.keys.push(k, offset));
        if first_of_key {
            entry.state = State::Ready;
            self.ready.insert(offset);
        }
        self.pending_bytes += entry.record.payload.len();
        self.pending.insert(offset, Box::new(entry));
    }

    /// Hands ready events to members with credit, round-robin.
    pub fn pump(&mut self, now: Instant, now_us: i64) {
        let deadline = now + self.cfg.delivery.ack_deadline;
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

    pub(super) fn send_error(&mut self, member: u64, e: &BrokerError) {
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

    /// Tells every member once when everything up to the head is handed out.
    pub fn report_caught_up(&mut self) {
        // Events held behind their key have not been handed out either:
        // without them, a keyed backlog reported CaughtUp as soon as the
        // first event of each key was out.
        let caught_up = self.next_read >= self.head
            && self.ready.is_empty()
            && self.delayed.is_empty()
            && self.awaited.is_empty()
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
}
