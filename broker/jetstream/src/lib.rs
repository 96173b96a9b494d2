//! The broker's NATS JetStream backend: the same [`mesh_log::Storage`]
//! the embedded log implements, on a replicated JetStream cluster, so a
//! broker holds no state of its own and any number of them can serve the
//! same topics and groups.
//!
//! - [`storage`]: [`JetStreamStorage`], topics as streams, events as
//!   messages, positions in a key-value bucket.
//! - [`topics`]: the cached view of the streams; `follow` keeps it fresh.
//! - [`positions`]: group positions in the `mesh-positions` bucket.
//! - [`read`]: batched direct gets (reads without consumers: tails).
//! - [`consumers`]: a group as a durable pull consumer.
//! - [`lease`]: which broker runs a (topic, group)'s dispatcher.
//! - [`connect`]: connecting, and refusing servers that are too old.
//! - [`names`]: topic, group and key encodings into JetStream names.
//! - [`options`]: [`Options`], what the backend is told.

pub mod connect;
pub mod consumers;
mod error;
mod follow;
pub mod lease;
pub mod names;
pub mod options;
pub mod positions;
pub mod read;
pub mod storage;
pub mod topics;

pub use connect::MIN_SERVER_VERSION;
pub use options::{NatsTls, Options};
pub use storage::JetStreamStorage;
