//! The window's parts: an event read ahead, a member, the per-key queues
//! and the blocked state.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
};

use mesh_proto::{broker::v1 as pb, events::v1::StoredEvent};
use tokio::time::Instant;

use crate::{convert, dlq::REDRIVE_GROUP_ATTR, group::store::StoredRecord};

/// Where an event read ahead is in its life.
#[derive(Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting behind an earlier event with the same key (or, for a
    /// moment, for the caller to decide what comes next).
    Waiting,
    /// May be handed out now (it is in `ready`).
    Ready,
    /// Waiting for its redelivery backoff to end at this instant.
    Delayed(Instant),
    /// Delivered to `member`, unacked; redelivered after `deadline`.
    InFlight { member: u64, deadline: Instant },
    /// Its dead-letter append is under way.
    DeadLettering,
}

/// An event in the read-ahead.
pub struct Entry {
    /// The decoded event, until its first delivery takes it (a clone per
    /// delivery was most of the dispatcher's per-event cost); redeliveries
    /// and dead-lettering decode `record` again.
    pub event: Option<StoredEvent>,
    /// The event as stored; its payload shares the read buffer.
    pub record: StoredRecord,
    /// Its subject, which orders it behind earlier events of the same
    /// subject; `None` for an event without one.
    pub key: Option<Arc<str>>,
    /// Deliveries so far.
    pub attempt: u32,
    /// When it was first delivered (wall clock, µs), for its dead letter.
    pub first_delivered_us: i64,
    /// Why its last delivery failed, for its dead letter.
    pub last_reason: String,
    /// Where it is in its life.
    pub state: State,
}

impl Entry {
    /// An entry for a record the group delivers: `None` for a record that
    /// is not an event, or a redriven dead letter of another group.
    /// Starts `Waiting`; the window decides if it is ready.
    pub fn read(topic: &str, group: &str, record: StoredRecord) -> Option<Entry> {
        let event = match decode(topic, &record) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::error!(topic = %topic, offset = record.offset, error = %e, "skipping a record that is not an event");
                return None;
            }
        };
        let env = event.event.as_ref();
        if env
            .and_then(|ev| ev.attributes.get(REDRIVE_GROUP_ATTR))
            .is_some_and(|g| g != group)
        {
            return None; // a redriven dead letter of another group
        }
        let key = env
            .map(|ev| ev.subject.as_str())
            .filter(|s| !s.is_empty())
            .map(Arc::from);
        Some(Entry {
            event: Some(event),
            record,
            key,
            attempt: 0,
            first_delivered_us: 0,
            last_reason: String::new(),
            state: State::Waiting,
        })
    }

    fn decode(&self, topic: &str) -> StoredEvent {
        decode(topic, &self.record).expect("the same bytes decoded when the record was read")
    }

    /// The event to deliver: the decoded one the first time.
    pub fn take_event(&mut self, topic: &str) -> StoredEvent {
        match self.event.take() {
            Some(ev) => ev,
            None => self.decode(topic),
        }
    }

    pub fn event(&self, topic: &str) -> StoredEvent {
        match &self.event {
            Some(ev) => ev.clone(),
            None => self.decode(topic),
        }
    }
}

fn decode(topic: &str, r: &StoredRecord) -> crate::error::Result<StoredEvent> {
    convert::stored_event(topic, r)
}

/// A connected member, as the window sees it.
pub struct Member {
    /// The client's name for itself.
    pub name: String,
    /// Deliveries it may still be handed before it acks.
    pub credit: u32,
    /// It acks by reading (no ack deadline).
    pub auto_ack: bool,
    /// Offsets delivered to it and not acked.
    pub in_flight: HashSet<u64>,
}

impl Member {
    pub fn new(name: String, credit: u32, auto_ack: bool) -> Self {
        Member {
            name,
            credit,
            auto_ack,
            in_flight: HashSet::new(),
        }
    }
}

/// Per-key queues of pending offsets, in offset order: only the front of
/// each is handed out, the rest wait behind it.
#[derive(Default)]
pub struct Keys {
    /// The pending offsets of each key, front first.
    queues: HashMap<Arc<str>, VecDeque<u64>>,
    /// Events waiting behind an earlier unfinished event of their key (all
    /// but the front of each queue): read, but not handed out yet.
    held: usize,
}

impl Keys {
    /// Queues `offset` behind its key; true if it is the key's front (free
    /// to be handed out).
    pub fn push(&mut self, key: &Arc<str>, offset: u64) -> bool {
        let q = self.queues.entry(key.clone()).or_default();
        q.push_back(offset);
        if q.len() > 1 {
            self.held += 1;
            return false;
        }
        true
    }

    /// `offset` of `key` is done: the key's front now, if any (the next
    /// event of the key, free to go).
    pub fn release(&mut self, key: &Arc<str>, offset: u64) -> Option<u64> {
        let q = self.queues.get_mut(key)?;
        debug_assert_eq!(q.front(), Some(&offset));
        let waiting_before = q.len() - 1;
        q.retain(|&o| o != offset);
        let waiting_now = q.len().saturating_sub(1);
        self.held -= waiting_before - waiting_now;
        let front = q.front().copied();
        if front.is_none() {
            self.queues.remove(key);
        }
        front
    }

    /// Events waiting behind their key.
    pub fn held(&self) -> usize {
        self.held
    }

    pub fn clear(&mut self) {
        self.queues.clear();
        self.held = 0;
    }
}

/// The group reached a record it cannot read (a corrupt record in the
/// log). It delivers everything before it and nothing from it on, until a
/// SeekGroup moves it.
pub struct Blocked {
    /// The first offset the group could not read.
    pub offset: u64,
    /// The read error, naming the file, byte and offset of the damage.
    pub reason: String,
    /// What members get in-stream, once each: the error does not change,
    /// so repeating it (the read used to be retried every second) only
    /// buried it.
    pub error: pb::Error,
}
