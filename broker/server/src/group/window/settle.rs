//! The window with a store that settles deliveries (a JetStream durable
//! consumer): what the consumer hands over, and what the window tells it.
//!
//! - Every event the group is done with is settled: `Ack` when acked (or
//!   when it is not an event for this group), `Term` once its dead letter
//!   is durable.
//! - A nack, or a missed ack deadline, is a `Nak` with the backoff as its
//!   delay: the consumer hands the event over again when the delay ends,
//!   counting the delivery. The window keeps the event in place (it still
//!   holds back its key) and, once the delay has ended, asks the consumer
//!   for it until it comes.
//! - Events the window holds (behind their key, waiting for credit, or in
//!   flight) are refreshed with `Progress` every half ack deadline, so the
//!   consumer's `ack_wait` (twice the deadline) runs out only for a
//!   dispatcher that stopped.
//! - The first read of each epoch (a new dispatcher, a seek, the last
//!   member leaving) rewinds the consumer to the window's start, so what
//!   an earlier epoch held comes again in stream order.

use std::time::Duration;

use tokio::time::Instant;

use super::{Effect, GroupWindow, entry::State};
use crate::{
    config::BrokerConfig,
    group::store::{Settle, StoredRecord},
};

/// How soon the window asks the store again for an event whose
/// redelivery delay has ended but that has not come yet, or after a read
/// that brought nothing.
pub(super) const REDELIVERY_POLL: Duration = Duration::from_millis(50);

/// How soon the window asks again after a read that brought nothing while
/// the head shows events it has not read.
pub(super) const NEW_EVENT_POLL: Duration = Duration::from_millis(2);

impl GroupWindow {
    /// The store settles every delivery ([`crate::group::GroupStore::settles`]):
    /// call before the first read.
    pub fn settled_by_store(&mut self) {
        self.settles = true;
    }

    /// Whether the next read must rewind the store first.
    pub(super) fn needs_rewind(&self) -> bool {
        self.settles && self.rewound != Some(self.epoch)
    }

    /// Whether a read is wanted for redeliveries, new events aside.
    pub(super) fn redelivery_due(&self) -> bool {
        self.settles && !self.awaited.is_empty()
    }

    /// Settles the delivery `record` came with, if the store gave one.
    pub(super) fn settle(&mut self, record: &StoredRecord, how: Settle) {
        if let Some(d) = &record.delivery {
            self.effects.push(Effect::Settle(d.reply.clone(), how));
        }
    }

    /// Settles the latest delivery of the pending event at `off`.
    pub(super) fn settle_at(&mut self, off: u64, how: Settle) {
        if let Some(d) = self
            .pending
            .get(&off)
            .and_then(|e| e.record.delivery.as_ref())
        {
            self.effects.push(Effect::Settle(d.reply.clone(), how));
        }
    }

    /// A record from the store's cursor: a new event, or one it delivers
    /// again (after a nak's delay, or after its `ack_wait`).
    pub(super) fn arrive(&mut self, record: StoredRecord) {
        let off = record.offset;
        if let Some(e) = self.pending.get_mut(&off) {
            // The newest delivery is the one to settle from now on.
            let delivered = record.delivery.as_ref().map_or(1, |d| d.delivered);
            e.record.delivery = record.delivery;
            e.attempt = e.attempt.max(delivered.saturating_sub(1));
            if let State::Delayed(t) = e.state {
                self.delayed.remove(&(t, off));
                self.awaited.remove(&off);
                e.state = State::Ready;
                self.ready.insert(off);
            }
            return;
        }
        if off < self.next_read {
            // Done here, its settlement not yet applied: settle it again.
            self.settle(&record, Settle::Ack);
            return;
        }
        self.next_read = off + 1;
        self.insert(record);
    }

    /// A redelivery delay ended: with a settling store, the event comes
    /// from the store; otherwise it is ready now.
    pub(super) fn delay_ended(&mut self, off: u64, now: Instant) {
        if self.settles {
            self.awaited.insert(off, now);
            return;
        }
        if let Some(e) = self.pending.get_mut(&off) {
            e.state = State::Ready;
            self.ready.insert(off);
        }
    }

    /// Refreshes, at the store, every event the window holds that is not
    /// waiting for a redelivery, once every half ack deadline.
    pub(super) fn refresh_held(&mut self, now: Instant) {
        if !self.settles || now < self.next_progress {
            return;
        }
        self.next_progress = now + self.cfg.delivery.ack_deadline / 2;
        self.give_up_awaiting(now);
        let held: Vec<_> = self
            .pending
            .values()
            .filter(|e| !matches!(e.state, State::Delayed(_)))
            .filter_map(|e| e.record.delivery.as_ref().map(|d| d.reply.clone()))
            .collect();
        for reply in held {
            self.effects.push(Effect::Settle(reply, Settle::Progress));
        }
    }

    /// An awaited redelivery that has not come within twice the store's
    /// `ack_wait` never will: the store no longer holds the event, which
    /// only an ack or a term does. (A dispatcher of an earlier epoch, or
    /// one that lost the group's lease, can have an ack land after this
    /// epoch's rewind: the store then takes this epoch's delivery of the
    /// event as acked.) A member did ack it, so it is done here too, and
    /// its key goes on.
    fn give_up_awaiting(&mut self, now: Instant) {
        let limit = ack_wait(&self.cfg) * 2;
        let lost: Vec<u64> = self
            .awaited
            .iter()
            .filter(|&(_, &since)| now.duration_since(since) >= limit)
            .map(|(&off, _)| off)
            .collect();
        for off in lost {
            self.awaited.remove(&off);
            tracing::warn!(topic = %self.topic, group = %self.group, offset = off, "the consumer no longer holds a nacked event (acked by an earlier dispatcher); counting it done");
            self.complete(off, Settle::Ack);
        }
    }

    /// When `refresh_held` is next due, if the window settles.
    pub(super) fn progress_due(&self) -> Option<Instant> {
        (self.settles && !self.pending.is_empty()).then_some(self.next_progress)
    }
}

/// The consumer's `ack_wait`: twice the members' ack deadline, so the
/// window's own deadline always runs out first.
pub fn ack_wait(cfg: &BrokerConfig) -> Duration {
    cfg.delivery.ack_deadline * 2
}

/// How long a redelivery waits after delivery `attempt`: doubling from
/// `delivery.min_backoff`, at most `delivery.max_backoff`.
pub(super) fn backoff(cfg: &BrokerConfig, attempt: u32) -> Duration {
    let d = &cfg.delivery;
    mesh_runtime::backoff::exponential(d.min_backoff, d.max_backoff, attempt)
}
