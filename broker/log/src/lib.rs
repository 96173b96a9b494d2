//! The broker's embedded, crash-safe event log. No gRPC in here.
//!
//! - [`storage`]: the [`Storage`] trait the broker talks to, and
//!   [`LocalStorage`], which keeps topics in directories on local disk.
//! - [`topic`]: one topic's log: recovery at open, append, read, seek by
//!   time, consumer-group positions, retention.
//! - [`writer`]: the group-commit writer and syncer threads.
//! - [`segment`]: one segment file, its sparse index and its recovery scan.
//! - [`record`]: the on-disk framing of one record (CRC-32C checksummed).
//! - [`index`]: sparse offset/time index entries and the sealed-segment
//!   sidecar files.
//! - [`dedupe`]: the producer de-duplication window.
//! - [`offsets`]: durable committed positions of consumer groups.
//! - [`config`]: [`LogConfig`] (fsync policy, segment size, limits) and
//!   per-topic [`TopicConfig`] (retention).
//! - [`names`]: topic and group name rules.
//! - [`error`]: [`LogError`], the one error type.

pub mod config;
pub mod dedupe;
pub mod error;
pub mod index;
pub mod names;
pub mod offsets;
pub mod record;
pub mod segment;
pub mod storage;
pub mod topic;
pub mod writer;

pub use config::{FsyncPolicy, LogConfig, TopicConfig};
pub use error::{LogError, Result};
pub use offsets::CommitMode;
pub use record::Record;
pub use storage::{LocalStorage, Storage};
pub use topic::{GroupPosition, PendingAppend, RetentionReport, TopicLog, TopicStats};
pub use writer::{AppendRecord, Appended, now_us};
