//! Prometheus metrics: the metric names, their descriptions, and small
//! typed handles for the ones recorded on hot paths. The recorder and its
//! HTTP endpoint (`metrics_listen`) are `mesh_runtime::metrics`; the gauges
//! refreshed on a timer are `upkeep::refresh_loop`. This module depends on
//! nothing else in the crate, so every other module may use it.
//!
//! Everything is recorded through the `metrics` facade, which is a no-op
//! until a recorder is installed, so a broker with `metrics_listen = ""`
//! pays next to nothing. docs/operations.md ("Metrics") lists every metric.

use std::{net::SocketAddr, time::Duration};

use metrics::{
    Counter, Gauge, Unit, counter, describe_counter, describe_gauge, describe_histogram,
};

pub const PUBLISHED: &str = "mesh_broker_events_published_total";
pub const DUPLICATES: &str = "mesh_broker_events_duplicate_total";
pub const DELIVERED: &str = "mesh_broker_events_delivered_total";
pub const ACKED: &str = "mesh_broker_events_acked_total";
pub const NACKED: &str = "mesh_broker_events_nacked_total";
pub const REDELIVERED: &str = "mesh_broker_events_redelivered_total";
pub const DEAD_LETTERED: &str = "mesh_broker_events_dead_lettered_total";
pub const LAG: &str = "mesh_broker_group_lag_events";
pub const OLDEST_UNACKED: &str = "mesh_broker_group_oldest_unacked_age_seconds";
pub const BLOCKED: &str = "mesh_broker_group_blocked";
pub const APPEND_SECONDS: &str = "mesh_broker_append_duration_seconds";
pub const FSYNC_SECONDS: &str = mesh_log::writer::FSYNC_SECONDS;
pub const TOPIC_BYTES: &str = "mesh_broker_topic_bytes";
pub const PUBLISHERS: &str = "mesh_broker_connected_publishers";
pub const SUBSCRIBERS: &str = "mesh_broker_connected_subscribers";
pub const BUFFERED: &str = "mesh_broker_subscriber_buffered_bytes";
pub const AUTH_DISABLED: &str = "mesh_broker_auth_disabled";
pub const DENIED: &str = "mesh_broker_requests_denied_total";

/// Every metric the broker records (docs/operations.md lists them all).
pub const ALL: [&str; 18] = [
    PUBLISHED,
    DUPLICATES,
    DELIVERED,
    ACKED,
    NACKED,
    REDELIVERED,
    DEAD_LETTERED,
    LAG,
    OLDEST_UNACKED,
    BLOCKED,
    APPEND_SECONDS,
    FSYNC_SECONDS,
    TOPIC_BYTES,
    PUBLISHERS,
    SUBSCRIBERS,
    BUFFERED,
    AUTH_DISABLED,
    DENIED,
];

/// Installs the process-wide Prometheus recorder and its endpoint on
/// `listen` (`None` does nothing; see `mesh_runtime::metrics::install`),
/// then describes the broker's metrics. `auth_disabled` (`auth = "none"`)
/// sets a gauge every scrape shows, so an open broker cannot go unnoticed.
pub fn install(
    listen: Option<SocketAddr>,
    auth_disabled: bool,
) -> Result<(), mesh_runtime::RuntimeError> {
    if mesh_runtime::metrics::install(listen)? {
        describe();
        // Present from the start, not only after the first connection.
        metrics::gauge!(PUBLISHERS).set(0.0);
        metrics::gauge!(SUBSCRIBERS).set(0.0);
    }
    metrics::gauge!(AUTH_DISABLED).set(if auth_disabled { 1.0 } else { 0.0 });
    Ok(())
}

/// A call refused with PERMISSION_DENIED, by the verb it needed.
pub fn denied(verb: impl std::fmt::Display) {
    counter!(DENIED, "verb" => verb.to_string()).increment(1);
}

fn describe() {
    describe_gauge!(
        AUTH_DISABLED,
        "1 when the broker runs with auth = \"none\": every client may do everything. 0 otherwise."
    );
    describe_counter!(
        DENIED,
        Unit::Count,
        "Calls refused with PERMISSION_DENIED by the access-control list, per verb."
    );
    describe_counter!(
        PUBLISHED,
        Unit::Count,
        "Events stored by Publish, per topic."
    );
    describe_counter!(
        DUPLICATES,
        Unit::Count,
        "Published events dropped as duplicates of an id in the dedupe window, per topic."
    );
    describe_counter!(
        DELIVERED,
        Unit::Count,
        "Deliveries to group members (redeliveries included), per topic and group."
    );
    describe_counter!(ACKED, Unit::Count, "Events acked, per topic and group.");
    describe_counter!(NACKED, Unit::Count, "Events nacked, per topic and group.");
    describe_counter!(
        REDELIVERED,
        Unit::Count,
        "Events scheduled for another delivery after a nack or a missed ack deadline, per topic and group."
    );
    describe_counter!(
        DEAD_LETTERED,
        Unit::Count,
        "Events moved to the dead-letter topic, per topic and group."
    );
    describe_gauge!(
        LAG,
        Unit::Count,
        "Events between the group's position and the topic's head, per topic and group."
    );
    describe_gauge!(
        OLDEST_UNACKED,
        Unit::Seconds,
        "Age of the oldest event the group has not finished, per topic and group."
    );
    describe_gauge!(
        BLOCKED,
        Unit::Count,
        "1 while the group is stopped at a damaged record (see DescribeGroup's blocked_at), else 0, per topic and group."
    );
    describe_histogram!(
        APPEND_SECONDS,
        Unit::Seconds,
        "Publish request latency from receipt to durable (fsynced with fsync = always), per topic."
    );
    describe_histogram!(
        FSYNC_SECONDS,
        Unit::Seconds,
        "Latency of one fdatasync of a topic's log (one per group commit), per topic."
    );
    describe_gauge!(
        TOPIC_BYTES,
        Unit::Bytes,
        "Bytes of the topic's segments on disk, per topic."
    );
    describe_gauge!(PUBLISHERS, Unit::Count, "Open Publish streams.");
    describe_gauge!(SUBSCRIBERS, Unit::Count, "Open Subscribe streams.");
    describe_gauge!(
        BUFFERED,
        Unit::Bytes,
        "Bytes of responses queued in the broker for subscribers that have not read them yet (limits.max_buffered_bytes)."
    );
}

/// Counts one publish request's outcome.
pub fn record_append(
    topic: &str,
    started: std::time::Instant,
    r: &mesh_log::Result<Vec<mesh_log::Appended>>,
) {
    let Ok(acks) = r else { return };
    let topic = topic.to_string();
    metrics::histogram!(APPEND_SECONDS, "topic" => topic.clone()).record(started.elapsed());
    let dup = acks.iter().filter(|a| a.duplicate).count() as u64;
    counter!(PUBLISHED, "topic" => topic.clone()).increment(acks.len() as u64 - dup);
    if dup > 0 {
        counter!(DUPLICATES, "topic" => topic).increment(dup);
    }
}

/// Keeps the gauge of open publish or subscribe streams: +1 now, -1 on drop.
pub struct Connected(Gauge);

impl Connected {
    pub fn publisher() -> Self {
        Self::new(PUBLISHERS)
    }

    pub fn subscriber() -> Self {
        Self::new(SUBSCRIBERS)
    }

    fn new(name: &'static str) -> Self {
        let g = metrics::gauge!(name);
        g.increment(1.0);
        Connected(g)
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// One group's metrics, resolved once when its dispatcher starts.
pub struct GroupMetrics {
    pub delivered: Counter,
    pub acked: Counter,
    pub nacked: Counter,
    pub redelivered: Counter,
    pub dead_lettered: Counter,
    pub lag: Gauge,
    pub oldest_unacked: Gauge,
    /// 1 while the dispatcher is stopped at damage: lag alone cannot tell
    /// a blocked group from a slow one.
    pub blocked: Gauge,
}

impl GroupMetrics {
    pub fn new(topic: &str, group: &str) -> Self {
        let l = [("topic", topic.to_string()), ("group", group.to_string())];
        GroupMetrics {
            delivered: counter!(DELIVERED, &l),
            acked: counter!(ACKED, &l),
            nacked: counter!(NACKED, &l),
            redelivered: counter!(REDELIVERED, &l),
            dead_lettered: counter!(DEAD_LETTERED, &l),
            lag: metrics::gauge!(LAG, &l),
            oldest_unacked: metrics::gauge!(OLDEST_UNACKED, &l),
            blocked: metrics::gauge!(BLOCKED, &l),
        }
    }

    pub fn set_lag(&self, events: u64, oldest_unacked: Duration) {
        self.lag.set(events as f64);
        self.oldest_unacked.set(oldest_unacked.as_secs_f64());
    }
}
