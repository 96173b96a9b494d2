//! The state a topic's handle, its writer thread and its syncer thread
//! share: the segment list, the published head, and the poison flag that
//! stops writes after an I/O failure.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
};

use tokio::sync::watch;

use crate::{config::LogConfig, error::LogError, keyring::Keyring, record, segment::Segment};

#[derive(Debug)]
pub(crate) struct Shared {
    /// The topic's name, for errors and logs.
    pub name: String,
    /// The topic's directory: new segments are created here.
    pub dir: PathBuf,
    /// The log's settings (fsync policy, segment size, limits).
    pub cfg: Arc<LogConfig>,
    /// The encryption keys when encryption at rest is on: the writer seals
    /// new records with the active one, readers open any of them.
    pub keys: Option<Arc<Keyring>>,
    /// The segments in offset order; the last one is the active one.
    pub segments: RwLock<Vec<Arc<Segment>>>,
    /// One past the last offset readers may see.
    pub head: watch::Sender<u64>,
    /// The first write failure's reason, once one happened: the topic then
    /// refuses writes until restart.
    poisoned: Mutex<Option<String>>,
}

impl Shared {
    /// State for a recovered topic whose head is `head`.
    pub fn new(
        name: &str,
        dir: PathBuf,
        cfg: Arc<LogConfig>,
        keys: Option<Arc<Keyring>>,
        segments: Vec<Arc<Segment>>,
        head: u64,
    ) -> Self {
        Shared {
            name: name.to_string(),
            dir,
            cfg,
            keys,
            segments: RwLock::new(segments),
            head: watch::channel(head).0,
            poisoned: Mutex::new(None),
        }
    }

    /// Bytes a record with a payload of `len` bytes takes on disk.
    pub fn record_len(&self, len: usize) -> usize {
        if self.keys.is_some() {
            record::sealed_len(len)
        } else {
            record::encoded_len(len)
        }
    }

    pub fn poisoned(&self) -> Option<String> {
        self.poisoned.lock().expect("poison lock").clone()
    }

    /// Marks the topic failed and returns the first failure's reason.
    pub fn poison(&self, err: &LogError) -> String {
        let mut p = self.poisoned.lock().expect("poison lock");
        if p.is_none() {
            tracing::error!(topic = %self.name, error = %err, "log write failed; the topic refuses writes until restart");
            *p = Some(err.to_string());
        }
        p.clone().unwrap_or_default()
    }

    /// Makes records up to `next_offset` (ending at byte `end` of `seg`)
    /// visible to readers.
    pub fn publish(&self, seg: &Segment, end: u64, next_offset: u64) {
        seg.publish(end);
        self.head.send_if_modified(|h| {
            let changed = next_offset > *h;
            *h = (*h).max(next_offset);
            changed
        });
    }
}
