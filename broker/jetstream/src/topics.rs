//! The broker's view of the topics' streams: their settings and bounds,
//! cached in memory because the broker asks for them on every call, and
//! kept fresh three ways:
//!
//! - this broker's own appends move the head as their acks arrive;
//! - other brokers announce head moves, creations and deletions on core
//!   NATS subjects ([`Names::notify_head`], [`Names::notify_topic`]), so a
//!   group served here sees an event published through another broker at
//!   once;
//! - every `refresh_interval` all streams are listed again, in case a
//!   notification was lost (they are not stored).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use async_nats::jetstream::stream;
use mesh_log::{TopicConfig, TopicStats};
use tokio::{sync::watch, time::Instant};

use crate::names::Names;

/// Metadata key of the stream config holding the topic's [`TopicConfig`]
/// as JSON.
pub const META_CONFIG: &str = "mesh.topic_config";

/// One topic as last seen.
struct Entry {
    stats: TopicStats,
    /// Receivers wake when the head moves; dropped (closing them) when the
    /// topic is deleted.
    head: watch::Sender<u64>,
    /// When it was last taken from the servers or created here: a listing
    /// started before that does not remove it.
    updated: Instant,
}

/// Every topic's stream, by topic name.
#[derive(Default)]
pub struct Topics {
    map: RwLock<HashMap<String, Entry>>,
}

/// A topic's bounds from its stream's state: offset = sequence − 1.
pub fn stats_of(names: &Names, info: &stream::Info) -> Option<TopicStats> {
    let name = names.topic_of_stream(&info.config.name)?;
    let config: TopicConfig = info
        .config
        .metadata
        .get(META_CONFIG)
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default();
    let s = &info.state;
    let head = s.last_sequence;
    let earliest = if s.messages == 0 {
        head
    } else {
        s.first_sequence.saturating_sub(1)
    };
    Some(TopicStats {
        name,
        config,
        earliest,
        head,
        bytes: s.bytes,
        segments: 0,
    })
}

impl Topics {
    pub fn get(&self, topic: &str) -> Option<TopicStats> {
        let map = self.map.read().expect("topics lock");
        Self::get_locked(&map, topic)
    }

    pub fn all(&self) -> Vec<TopicStats> {
        let map = self.map.read().expect("topics lock");
        let mut v: Vec<_> = map
            .keys()
            .filter_map(|k| Self::get_locked(&map, k))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn get_locked(map: &HashMap<String, Entry>, topic: &str) -> Option<TopicStats> {
        map.get(topic).map(|e| {
            let mut s = e.stats.clone();
            s.head = s.head.max(*e.head.borrow());
            s
        })
    }

    pub fn watch(&self, topic: &str) -> Option<watch::Receiver<u64>> {
        let map = self.map.read().expect("topics lock");
        map.get(topic).map(|e| e.head.subscribe())
    }

    /// Takes a stream's state as read from the servers. The head never
    /// moves back (a stale listing must not undo a newer ack).
    pub fn upsert(&self, stats: TopicStats) {
        let mut map = self.map.write().expect("topics lock");
        match map.get_mut(&stats.name) {
            Some(e) => {
                let head = stats.head.max(*e.head.borrow());
                e.stats = TopicStats { head, ..stats };
                e.updated = Instant::now();
                raise(&e.head, head);
            }
            None => {
                let (tx, _) = watch::channel(stats.head);
                let updated = Instant::now();
                map.insert(
                    stats.name.clone(),
                    Entry {
                        stats,
                        head: tx,
                        updated,
                    },
                );
            }
        }
    }

    /// The head moved to at least `head` (an ack, a notification).
    pub fn advance(&self, topic: &str, head: u64) {
        let map = self.map.read().expect("topics lock");
        if let Some(e) = map.get(topic) {
            raise(&e.head, head);
        }
    }

    /// Forgets a deleted topic, closing its head watchers.
    pub fn remove(&self, topic: &str) {
        self.map.write().expect("topics lock").remove(topic);
    }

    /// Replaces the whole set from a full listing that started at
    /// `started`: topics not in it are gone, unless seen since.
    pub fn replace_all(&self, listed: Vec<TopicStats>, started: Instant) {
        let names: std::collections::HashSet<String> =
            listed.iter().map(|s| s.name.clone()).collect();
        for s in listed {
            self.upsert(s);
        }
        let mut map = self.map.write().expect("topics lock");
        map.retain(|k, e| names.contains(k) || e.updated > started);
    }
}

/// Moves a head watch up to `head` (never down), waking its receivers only
/// if it moved.
fn raise(tx: &watch::Sender<u64>, head: u64) {
    tx.send_if_modified(|h| {
        let moved = head > *h;
        *h = head.max(*h);
        moved
    });
}

/// Shared by the storage and its background tasks.
pub type SharedTopics = Arc<Topics>;
