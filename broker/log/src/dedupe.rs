//! The producer de-duplication window, as in NATS JetStream's Nats-Msg-Id.
//!
//! Keyed by a 128-bit hash of the producer's id rather than the id itself,
//! so that an entry costs a fixed 32 bytes whatever the id length; an
//! accidental collision needs about 2^64 ids. The window is bounded by time
//! and by a count, so a producer that floods unique ids cannot grow memory
//! without bound: past the count, the oldest ids leave the window early.
//!
//! With encryption at rest the hashes stay unkeyed xxh3 (in each record's
//! header and in the `.ids` sidecars), by decision: keyed with the
//! encryption key, a rotation would change every id's hash, and a producer
//! retrying across the restart that rotated the key would store its event
//! twice. An unkeyed hash reveals only whether two records share an id, or
//! confirms a guessed id; it never holds payload bytes. Keying them with a
//! separate, never-rotated dedupe key would close that too (not done).

use std::collections::{HashMap, VecDeque};

use crate::index::IdEntry;

#[derive(Debug)]
pub struct Dedupe {
    window_us: i64,
    max_ids: usize,
    map: HashMap<u128, (u64, i64)>,
    order: VecDeque<IdEntry>,
}

impl Dedupe {
    pub fn new(window_us: i64, max_ids: usize) -> Self {
        Dedupe {
            window_us,
            max_ids,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.window_us > 0 && self.max_ids > 0
    }

    fn expire(&mut self, now_us: i64) {
        let cutoff = now_us.saturating_sub(self.window_us);
        while let Some(front) = self.order.front() {
            if front.timestamp_us >= cutoff && self.order.len() <= self.max_ids {
                break;
            }
            let e = self.order.pop_front().expect("front exists");
            // A later copy of the same hash may have replaced this entry.
            if self
                .map
                .get(&e.hash)
                .is_some_and(|&(off, _)| off == e.offset)
            {
                self.map.remove(&e.hash);
            }
        }
    }

    /// The offset and timestamp of an earlier record with this id, if it is
    /// still inside the window.
    pub fn lookup(&mut self, hash: u128, now_us: i64) -> Option<(u64, i64)> {
        if !self.enabled() {
            return None;
        }
        self.expire(now_us);
        self.map.get(&hash).copied()
    }

    pub fn insert(&mut self, e: IdEntry) {
        if !self.enabled() {
            return;
        }
        self.map.insert(e.hash, (e.offset, e.timestamp_us));
        self.order.push_back(e);
        if self.order.len() > self.max_ids {
            self.expire(i64::MIN);
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(hash: u128, offset: u64, ts: i64) -> IdEntry {
        IdEntry {
            hash,
            offset,
            timestamp_us: ts,
        }
    }

    #[test]
    fn finds_within_window_and_forgets_after() {
        let mut d = Dedupe::new(1_000, 10);
        d.insert(e(1, 0, 100));
        assert_eq!(d.lookup(1, 1_100), Some((0, 100)));
        assert_eq!(d.lookup(1, 1_101), None);
        assert!(d.is_empty());
    }

    #[test]
    fn count_cap_evicts_oldest() {
        let mut d = Dedupe::new(1_000_000, 2);
        d.insert(e(1, 0, 1));
        d.insert(e(2, 1, 2));
        d.insert(e(3, 2, 3));
        assert_eq!(d.len(), 2);
        assert_eq!(d.lookup(1, 4), None);
        assert_eq!(d.lookup(3, 4), Some((2, 3)));
    }
}
