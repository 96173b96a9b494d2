//! The broker's embedded, crash-safe event log. No gRPC in here.
//!
//! - [`storage`]: the [`Storage`] trait the broker talks to, and
//!   [`LocalStorage`], which keeps topics in directories on local disk.
//! - [`topic`]: one topic's log: append, read, seek by time,
//!   consumer-group positions, retention.
//! - `recovery`: opening a topic's segments at start (the loader).
//! - [`writer`]: the group-commit writer and syncer threads.
//! - `shared`: the state a topic, its writer and its syncer share.
//! - [`segment`]: one segment: its file, sparse index and published length.
//! - `segfile`: a segment file read by position, and its recovery scan.
//! - [`record`]: the on-disk framing of one record (CRC-32C checksummed;
//!   sealed with AES-256-GCM-SIV when encryption at rest is on).
//! - [`keyring`]: the encryption key file, its keys, and the AEAD.
//! - `keycheck`: the data directory's key verifiers (`ENCRYPTION`), so a
//!   wrong key fails the start.
//! - [`index`]: sparse offset/time index entries and the sealed-segment
//!   sidecar files.
//! - [`dedupe`]: the producer de-duplication window.
//! - [`offsets`]: durable committed positions of consumer groups.
//! - [`config`]: [`LogConfig`] (fsync policy, segment size, limits) and
//!   per-topic [`TopicConfig`] (retention).
//! - [`names`]: topic and group name rules.
//! - [`format`]: the data directory's format version stamp (`FORMAT`).
//! - `fsutil`: directory fsync and atomic file replacement.
//! - [`error`]: [`LogError`], the one error type.

pub mod config;
pub mod dedupe;
pub mod error;
pub mod format;
mod fsutil;
pub mod index;
mod keycheck;
pub mod keyring;
pub mod names;
pub mod offsets;
pub mod record;
mod recovery;
mod segfile;
pub mod segment;
mod shared;
pub mod storage;
pub mod topic;
pub mod writer;

pub use config::{FsyncPolicy, LogConfig, TopicConfig};
pub use error::{LogError, Result};
pub use format::FORMAT_VERSION;
pub use keycheck::ENCRYPTION_FILE;
pub use keyring::Keyring;
pub use offsets::CommitMode;
pub use record::Record;
pub use storage::{LocalStorage, Storage};
pub use topic::{GroupPosition, PendingAppend, RetentionReport, TopicLog, TopicStats};
pub use writer::{AppendRecord, Appended, now_us};
