//! Timers (redelivery, ack deadlines, lag reports), the committed
//! position, seeks, and what DescribeGroup shows.

use std::time::Duration;

use mesh_proto::broker::v1 as pb;
use tokio::time::Instant;

use super::{Effect, GroupWindow, entry::State};
use crate::{
    convert,
    error::Result,
    group::{Outbound, SeekOutcome, Snapshot, member_id},
};

impl GroupWindow {
    /// When the next timer is due (a redelivery, an ack deadline, a read
    /// retry, a lag report or a commit).
    pub fn next_wake(&self) -> Instant {
        let mut wake = self.next_lag;
        for t in [
            self.delayed.first().map(|&(t, _)| t),
            self.deadlines.first().map(|&(t, _)| t),
            self.read_backoff_until,
            self.commit_due(),
            self.progress_due(),
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
            if self
                .pending
                .get(&off)
                .is_some_and(|e| e.state == State::Delayed(t))
            {
                self.delay_ended(off, now);
            }
        }
        self.refresh_held(now);
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
        self.next_lag = now + self.cfg.delivery.lag_report_interval;
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
        moved.then(|| self.last_commit + self.cfg.delivery.commit_interval)
    }

    /// The position to commit now, if one is due (`force`: at shutdown).
    /// Report the result with [`GroupWindow::commit_done`].
    pub fn poll_commit(&mut self, now: Instant, force: bool) -> Option<u64> {
        if self.committing.is_some() || self.seeking {
            return None;
        }
        let force = force || std::mem::take(&mut self.commit_now);
        let committed = self.committed?;
        let interval = self.cfg.delivery.commit_interval;
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

    /// The commit of `pos` finished; on success `pos` is durable.
    pub fn commit_done(&mut self, pos: u64, result: Result<()>) {
        if self.committing != Some(pos) {
            return; // not the commit this window started
        }
        self.committing = None;
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

    /// What DescribeGroup shows.
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
}
