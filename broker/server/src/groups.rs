//! The running group dispatchers, one per (topic, group), started when a
//! group's first member joins.

use std::{collections::HashMap, sync::Mutex};

use crate::{error::Result, group::GroupHandle};

#[derive(Default)]
pub struct Groups {
    map: Mutex<HashMap<(String, String), GroupHandle>>,
}

impl Groups {
    pub fn get(&self, topic: &str, group: &str) -> Option<GroupHandle> {
        let map = self.map.lock().expect("groups lock");
        map.get(&(topic.to_string(), group.to_string()))
            .filter(|h| !h.tx.is_closed())
            .cloned()
    }

    /// The group's running dispatcher, or a new one from `spawn`.
    pub fn get_or_spawn(
        &self,
        topic: &str,
        group: &str,
        spawn: impl FnOnce() -> Result<GroupHandle>,
    ) -> Result<GroupHandle> {
        let mut map = self.map.lock().expect("groups lock");
        let key = (topic.to_string(), group.to_string());
        if let Some(h) = map.get(&key).filter(|h| !h.tx.is_closed()) {
            return Ok(h.clone());
        }
        let h = spawn()?;
        map.insert(key, h.clone());
        Ok(h)
    }

    /// Removes and returns the dispatchers of a topic, or of every topic.
    pub fn take(&self, topic: Option<&str>) -> Vec<GroupHandle> {
        let mut map = self.map.lock().expect("groups lock");
        let keys: Vec<_> = map
            .keys()
            .filter(|(t, _)| topic.is_none_or(|x| x == t))
            .cloned()
            .collect();
        keys.into_iter().filter_map(|k| map.remove(&k)).collect()
    }

    /// Puts back a dispatcher taken by mistake (`cluster::stop`).
    pub fn put_back(&self, topic: &str, group: &str, h: GroupHandle) {
        let mut map = self.map.lock().expect("groups lock");
        map.entry((topic.to_string(), group.to_string()))
            .or_insert(h);
    }

    pub fn take_one(&self, topic: &str, group: &str) -> Option<GroupHandle> {
        self.map
            .lock()
            .expect("groups lock")
            .remove(&(topic.to_string(), group.to_string()))
    }
}
