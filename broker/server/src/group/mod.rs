//! One consumer group on one topic: a state machine that decides what
//! each member gets, and an actor that runs it and does the I/O.
//!
//! - [`window`]: [`GroupWindow`], the group's delivery state. Plain and
//!   synchronous: its methods take the time and return what to send, read,
//!   commit or dead-letter; it does no I/O and reads no clock.
//! - [`actor`]: the tokio task around it: commands from sessions,
//!   storage calls as spawned futures that report back by message, so a
//!   slow disk never delays an ack or a credit.
//! - [`consumer`]: [`consumer::ConsumerStore`], the [`GroupStore`] of a
//!   group on JetStream: its durable pull consumer keeps acks, nack
//!   delays and delivery counts.
//! - [`store`]: [`TopicStore`] (what every reader of a topic, tails too,
//!   needs from storage) and [`GroupStore`] (a group's position and
//!   dead letters on top), and their implementation on the embedded log.
//!
//! The rules the two keep:
//!
//! - **Window.** The group reads ahead of its acks at most
//!   `limits.group_window` events and `limits.group_window_bytes` of
//!   payload, and only while members are connected, so a stalled group
//!   costs a bounded amount of memory.
//! - **Credit.** A member never holds more unacked deliveries than its
//!   credit.
//! - **Keys.** Events with the same subject are delivered one at a time,
//!   in offset order: the next one only after the previous is acked or
//!   dead-lettered. A failing event therefore holds back its own key and no
//!   other.
//! - **Redelivery.** A nack, or an ack deadline that passes, makes the
//!   event ready again after exponential backoff; after
//!   `max_delivery_attempts` deliveries it goes to the dead-letter topic
//!   and counts as done once that append is durable.
//! - **Damage.** A corrupt record stops the group at its offset: every
//!   event before it is delivered, nothing from it on, each member is told
//!   once, and nothing is read again until a seek moves the group.
//! - **Position.** The committed offset is the lowest offset not yet done.
//!   It is written to storage every `delivery.commit_interval` when it moved, when
//!   the last member leaves and at shutdown. After a crash, events acked
//!   since the last commit are delivered again (at-least-once).

pub mod actor;
pub mod consumer;
pub mod store;
pub mod window;

use std::sync::Arc;

use mesh_log::Storage;
use mesh_proto::broker::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use crate::{
    config::BrokerConfig,
    error::{BrokerError, Result},
};

pub use actor::{Cmd, spawn_on};
pub use store::{GroupStore, LogStore, LogTopic, ReadError, TopicStore, resolve_start};
pub use window::GroupWindow;

/// Starts the actor for `group` on `topic`, on the embedded log.
pub fn spawn(
    topic: &str,
    group: &str,
    storage: Arc<dyn Storage>,
    cfg: Arc<BrokerConfig>,
) -> Result<GroupHandle> {
    let store = Arc::new(LogStore::new(storage, cfg.clone(), topic, group));
    actor::spawn_on(store, topic, group, cfg)
}

/// What a member's session receives.
#[derive(Debug)]
pub enum Outbound {
    Deliveries(Vec<pb::Delivery>),
    CaughtUp(u64),
    Lag(pb::Lag),
    Error(pb::Error),
}

/// Where a new group (or a tail, or a seek) starts.
#[derive(Clone, Copy, Debug)]
pub enum Start {
    Earliest,
    Latest,
    Offset(u64),
    TimeUs(i64),
}

/// A session asking to become a member.
pub struct JoinRequest {
    /// The client's name for itself, shown by DescribeGroup.
    pub name: String,
    /// Deliveries it may hold unacked at first.
    pub credit: u32,
    /// It acks by reading: deliveries count as acked once in its outbox.
    pub auto_ack: bool,
    /// Where the group starts if this is its first member ever.
    pub start: Start,
    /// Where the member's deliveries and in-stream messages go.
    pub out: mpsc::Sender<Outbound>,
    /// The join is refused (RESOURCE_EXHAUSTED) when the group already
    /// has this many members (`limits.max_group_members`).
    pub max_members: usize,
}

/// A join's answer.
pub struct Joined {
    /// The member's id within the group.
    pub member_id: u64,
    /// The group's durable position when it joined.
    pub committed: u64,
}

/// What DescribeGroup shows of a running group.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The durable position.
    pub committed: u64,
    /// The lowest offset not yet done.
    pub position: u64,
    /// Deliveries held by members, unacked.
    pub in_flight: u64,
    /// Redeliveries scheduled since the group started.
    pub redelivered: u64,
    /// Events dead-lettered since the group started.
    pub dead_lettered: u64,
    /// Publish time of the oldest event not yet done, if read.
    pub oldest_unacked_us: Option<i64>,
    /// The connected members.
    pub members: Vec<pb::Member>,
    /// Events held in memory (`pending`): bounded by `limits.group_window`.
    pub buffered: u64,
    /// The damaged offset the group is stopped at, and why.
    pub blocked: Option<(u64, String)>,
}

/// What a seek does (or would do, dry-run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeekOutcome {
    /// The position before.
    pub previous: u64,
    /// The position after.
    pub target: u64,
    /// Events already done that will be delivered again.
    pub to_redeliver: u64,
    /// Events not done yet that will be skipped.
    pub to_skip: u64,
}

/// A member's id as clients see it.
pub fn member_id(group: &str, id: u64) -> String {
    format!("{group}-{id}")
}

/// How sessions and admin calls reach a running group's actor.
#[derive(Clone, Debug)]
pub struct GroupHandle {
    /// The actor's command channel (bounded: senders wait when it is full).
    pub tx: mpsc::Sender<Cmd>,
}

impl GroupHandle {
    pub async fn send(&self, cmd: Cmd) -> Result<()> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| BrokerError::ShuttingDown)
    }

    pub async fn describe(&self) -> Result<Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Describe(tx)).await?;
        rx.await.map_err(|_| BrokerError::ShuttingDown)
    }

    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}
