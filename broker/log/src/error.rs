//! The one error type of the log. Every variant carries enough context
//! (topic, file, byte position, offsets) to act on without a debugger.

use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },

    /// A record failed its checksum or framing checks. Never served as
    /// data: the reader stops here and reports where.
    #[error("corrupt record in {path} at byte {position} (expected offset {offset}): {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        offset: u64,
        reason: String,
    },

    #[error("topic {0:?} not found")]
    TopicNotFound(String),

    #[error("topic {0:?} already exists")]
    TopicExists(String),

    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },

    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge { size: usize, limit: usize },

    #[error(
        "offset {requested} of topic {topic:?} was deleted by retention; the earliest retained offset is {earliest}"
    )]
    OffsetTruncated {
        topic: String,
        requested: u64,
        earliest: u64,
    },

    #[error("offset {requested} of topic {topic:?} is beyond the head {head}")]
    OffsetBeyondHead {
        topic: String,
        requested: u64,
        head: u64,
    },

    #[error(
        "group {group:?} of topic {topic:?} has committed offset {current}; refusing to move it back to {requested} without an explicit reset"
    )]
    OffsetRegression {
        topic: String,
        group: String,
        current: u64,
        requested: u64,
    },

    #[error("group {group:?} of topic {topic:?} not found")]
    GroupNotFound { topic: String, group: String },

    /// After a failed write or fsync the page cache can no longer be trusted
    /// to match the disk (the PostgreSQL "fsyncgate" lesson), so the topic
    /// refuses writes until the broker restarts and recovers from disk.
    #[error("topic {topic:?} stopped accepting writes after an I/O failure: {reason}")]
    Poisoned { topic: String, reason: String },

    #[error("topic {0:?} is closed")]
    Closed(String),

    #[error("invalid configuration: {0}")]
    Config(String),

    /// A remote storage backend (NATS JetStream) failed or did not answer
    /// in time: worth retrying, the servers may be electing a leader.
    #[error("storage backend {op} failed: {reason}")]
    Backend { op: &'static str, reason: String },

    /// A blocking storage task panicked or was cancelled before it
    /// answered (a bug or a shutdown, not bad input).
    #[error("storage task {op} failed: {source}")]
    Background {
        op: &'static str,
        source: tokio::task::JoinError,
    },

    /// The data directory was written by a newer broker. Reading it could
    /// misread or damage data, so opening stops; run a broker that
    /// supports that format.
    #[error(
        "data directory {dir} has format {found}, newer than format {supported} that this broker reads; run a newer broker"
    )]
    FormatTooNew {
        dir: PathBuf,
        found: u32,
        supported: u32,
    },

    #[error("format stamp {path} is unreadable (holds {content:?}, expected a version number)")]
    FormatUnreadable { path: PathBuf, content: String },
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// Attaches the path to an `io::Error`, for `map_err`.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> LogError {
    let path = path.into();
    move |source| LogError::Io { path, source }
}

/// Key file and key check failures are configuration errors: the broker
/// refuses to start, naming the key file, its line or the key id (never
/// key bytes). (A variant of their own would need every exhaustive match
/// on `LogError`, the broker's status mapping among them, to learn it.)
impl From<crate::keyring::KeyError> for LogError {
    fn from(e: crate::keyring::KeyError) -> Self {
        LogError::Config(e.to_string())
    }
}
