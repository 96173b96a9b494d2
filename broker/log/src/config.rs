//! Settings of the log. The broker's config file maps onto these; the
//! defaults are the safe ones.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::error::{LogError, Result};

/// When an append is acknowledged relative to fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Acknowledge only after the data is on disk (fdatasync). Concurrent
    /// appends share one fdatasync (group commit).
    Always,
    /// Acknowledge once written to the OS; fdatasync every interval. A
    /// machine crash or power loss can lose up to one interval of
    /// acknowledged events. A broker process crash alone loses nothing,
    /// because the data is already in the kernel's page cache.
    Interval(Duration),
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub fsync: FsyncPolicy,
    /// A segment is sealed and a new one started past this size.
    pub segment_bytes: u64,
    /// Bytes of records between two sparse index entries.
    pub index_interval_bytes: u64,
    /// Largest payload (encoded event) accepted.
    pub max_record_bytes: usize,
    /// How long a producer id is remembered for de-duplication; zero
    /// disables it.
    pub dedupe_window: Duration,
    /// At most this many ids per topic are remembered; older ones leave the
    /// window early.
    pub dedupe_max_ids: usize,
    /// The writer takes up to this many bytes of queued appends into one
    /// write and one fsync.
    pub max_batch_bytes: usize,
    /// Appends queued per topic before appenders wait (backpressure).
    pub queue_depth: usize,
    /// Encryption at rest: the key file (format in [`crate::keyring`]).
    /// `None` stores payloads in plaintext. A path, never the key: keys
    /// stay out of config files, command lines and logs.
    pub encryption_key_file: Option<PathBuf>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            fsync: FsyncPolicy::Always,
            segment_bytes: 64 << 20,
            index_interval_bytes: 16 << 10,
            max_record_bytes: 1 << 20,
            dedupe_window: Duration::from_secs(120),
            dedupe_max_ids: 1_000_000,
            max_batch_bytes: 4 << 20,
            queue_depth: 4096,
            encryption_key_file: None,
        }
    }
}

impl LogConfig {
    /// Checks the settings; each error names the offending key.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: &str| Err(LogError::Config(m.to_string()));
        if self.segment_bytes < 4096 {
            return fail("storage.segment_bytes must be at least 4096");
        }
        if self.segment_bytes > u32::MAX as u64 * 16 {
            return fail("storage.segment_bytes must be at most 64 GiB");
        }
        if self.index_interval_bytes == 0 {
            return fail("storage.index_interval_bytes must be greater than 0");
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > 64 << 20 {
            return fail("storage.max_record_bytes must be between 1 and 67108864");
        }
        if self.max_batch_bytes < self.max_record_bytes {
            return fail("storage.max_batch_bytes must be at least storage.max_record_bytes");
        }
        if self.queue_depth == 0 {
            return fail("storage.queue_depth must be greater than 0");
        }
        if self
            .encryption_key_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return fail(
                "storage.encryption_key_file must not be empty (leave it out to turn encryption off)",
            );
        }
        if let FsyncPolicy::Interval(d) = self.fsync
            && d.is_zero()
        {
            return fail("storage.fsync_interval_ms must be greater than 0");
        }
        Ok(())
    }

    /// Largest record body the reader accepts from disk.
    pub(crate) fn max_body(&self) -> usize {
        self.max_record_bytes + crate::record::SEALED_FIXED
    }

    /// Loads the key file, if encryption is on.
    pub(crate) fn load_keys(&self) -> Result<Option<std::sync::Arc<crate::keyring::Keyring>>> {
        self.encryption_key_file
            .as_deref()
            .map(|p| crate::keyring::Keyring::load(p).map(std::sync::Arc::new))
            .transpose()
            .map_err(LogError::from)
    }
}

/// Per-topic settings, persisted in the topic's `topic.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TopicConfig {
    /// Delete sealed segments whose newest event is older than this, once
    /// every group has consumed them.
    pub retention_ms: Option<u64>,
    /// Delete the oldest sealed segments while the topic is larger than
    /// this, even if a group still needs them (the group's lag then shows
    /// the events it missed).
    pub retention_bytes: Option<u64>,
    /// Deliveries of one event to a group before it is dead-lettered;
    /// `None` means the broker's default. The log only stores it.
    pub max_delivery_attempts: Option<u32>,
}
