//! `[limits]`: what one request, stream, connection, group or principal
//! may hold or do. Every refusal names its key (docs/security.md
//! "Limits against abuse").

use std::time::Duration;

use mesh_runtime::config as rc;
use serde::Deserialize;

use super::{ConfigError, invalid};

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest encoded event accepted.
    #[serde(deserialize_with = "rc::size")]
    pub max_event_bytes: usize,
    /// Most events in one publish request.
    pub max_batch_events: usize,
    /// Largest gRPC message, in either direction.
    #[serde(deserialize_with = "rc::size")]
    pub max_message_bytes: usize,
    /// Publish requests one stream may have in flight.
    pub max_publish_in_flight: usize,
    /// Open Subscribe streams.
    pub max_subscribers: usize,
    /// Open Publish streams.
    pub max_publishers: usize,
    /// The largest `max_in_flight` (credit) a subscriber may ask for.
    pub max_credit: u32,
    /// Events a group holds in memory ahead of its acks.
    pub group_window: usize,
    /// Payload bytes a group holds in memory ahead of its acks: with
    /// `group_window`, whichever is reached first stops the read-ahead, so
    /// large events cannot multiply a window counted in events.
    #[serde(deserialize_with = "rc::size")]
    pub group_window_bytes: usize,
    /// Bytes of responses one Subscribe stream may have queued in the broker
    /// while its client does not read; past that its session pauses.
    #[serde(deserialize_with = "rc::size")]
    pub subscriber_buffer_bytes: usize,
    /// Bytes of responses queued for all subscribers together. Past it the
    /// slow streams stay paused and new subscriptions get
    /// RESOURCE_EXHAUSTED, so readers that stall cannot exhaust memory.
    #[serde(deserialize_with = "rc::size")]
    pub max_buffered_bytes: usize,
    /// Publish and Subscribe streams one client connection may hold open;
    /// a client that opens more gets RESOURCE_EXHAUSTED.
    pub max_streams_per_connection: usize,
    /// HTTP/2 streams (calls of any kind) one connection may have at once;
    /// past it the client's further calls wait for one to end.
    pub max_concurrent_requests_per_connection: u32,
    /// Members one consumer group may have connected at once.
    pub max_group_members: usize,
    /// Events per second one principal may publish (0: no limit); past
    /// it, requests get RESOURCE_EXHAUSTED and nothing of them is written.
    pub publish_rate_per_principal: u32,
    /// Events a principal may publish at once above its rate (0: one
    /// second's worth).
    pub publish_burst: u32,
    /// Largest HTTP/2 header list (metadata) of a request.
    #[serde(deserialize_with = "rc::size")]
    pub max_header_bytes: u32,
    /// A connection whose HTTP/2 keepalive ping (sent every
    /// `delivery.heartbeat_interval`) is not answered within this is
    /// closed.
    #[serde(deserialize_with = "rc::duration")]
    pub keepalive_timeout: Duration,
    /// A TLS handshake not finished within this is dropped, so that
    /// connections that never speak cannot pile up.
    #[serde(deserialize_with = "rc::duration")]
    pub tls_handshake_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_event_bytes: 1 << 20,
            max_batch_events: 1000,
            max_message_bytes: 16 << 20,
            max_publish_in_flight: 1024,
            max_subscribers: 1024,
            max_publishers: 1024,
            max_credit: 10_000,
            group_window: 20_000,
            group_window_bytes: 64 << 20,
            subscriber_buffer_bytes: 1 << 20,
            max_buffered_bytes: 256 << 20,
            max_streams_per_connection: 64,
            max_concurrent_requests_per_connection: 256,
            max_group_members: 256,
            publish_rate_per_principal: 0,
            publish_burst: 0,
            max_header_bytes: 16 << 10,
            keepalive_timeout: Duration::from_secs(20),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl LimitsConfig {
    /// Ranges and how the limits relate; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = self;
        for (key, v) in [
            ("limits.max_event_bytes", l.max_event_bytes),
            ("limits.max_batch_events", l.max_batch_events),
            ("limits.max_publish_in_flight", l.max_publish_in_flight),
            ("limits.max_subscribers", l.max_subscribers),
            ("limits.max_publishers", l.max_publishers),
            ("limits.max_credit", l.max_credit as usize),
            ("limits.subscriber_buffer_bytes", l.subscriber_buffer_bytes),
            (
                "limits.max_streams_per_connection",
                l.max_streams_per_connection,
            ),
            (
                "limits.max_concurrent_requests_per_connection",
                l.max_concurrent_requests_per_connection as usize,
            ),
            ("limits.max_group_members", l.max_group_members),
            ("limits.max_header_bytes", l.max_header_bytes as usize),
        ] {
            if v == 0 {
                return invalid(key, "must be greater than 0");
            }
        }
        if l.max_message_bytes < l.max_event_bytes + 1024 {
            return invalid(
                "limits.max_message_bytes",
                "must exceed limits.max_event_bytes by at least 1024",
            );
        }
        if (l.max_concurrent_requests_per_connection as usize) <= l.max_streams_per_connection {
            return invalid(
                "limits.max_concurrent_requests_per_connection",
                "must be greater than limits.max_streams_per_connection, so that unary calls still get through",
            );
        }
        if l.keepalive_timeout.is_zero() || l.tls_handshake_timeout.is_zero() {
            return invalid(
                "limits.keepalive_timeout",
                "limits.keepalive_timeout and limits.tls_handshake_timeout must be greater than 0",
            );
        }
        if l.group_window < l.max_credit as usize {
            return invalid("limits.group_window", "must be at least limits.max_credit");
        }
        if l.group_window_bytes < l.max_event_bytes {
            return invalid(
                "limits.group_window_bytes",
                "must be at least limits.max_event_bytes",
            );
        }
        // The outbox counts bytes with a semaphore, whose permits are u32.
        if l.subscriber_buffer_bytes > u32::MAX as usize {
            return invalid(
                "limits.subscriber_buffer_bytes",
                format!("must be at most {}", u32::MAX),
            );
        }
        if l.max_buffered_bytes < l.subscriber_buffer_bytes {
            return invalid(
                "limits.max_buffered_bytes",
                "must be at least limits.subscriber_buffer_bytes",
            );
        }
        Ok(())
    }
}
