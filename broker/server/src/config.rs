//! The broker's configuration: code defaults, then `broker.toml` (or the
//! file named by `--config`), then `BROKER__...` environment variables, for
//! example `BROKER__STORAGE__FSYNC=interval`. Validated at start; every
//! error names the key.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use mesh_log::{FsyncPolicy, LogConfig, TopicConfig};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid<T>(key: &'static str, reason: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid {
        key,
        reason: reason.into(),
    })
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address the gRPC server binds.
    pub listen: String,
    /// Address of the Prometheus metrics endpoint (HTTP); empty disables it.
    pub metrics_listen: String,
    pub data_dir: PathBuf,
    /// Create a topic on first publish or subscribe instead of NOT_FOUND.
    pub auto_create_topics: bool,
    /// After SIGTERM/SIGINT, how long in-flight work may take to finish.
    pub drain_deadline_ms: u64,
    /// "text" (default) or "json".
    pub log_format: String,
    pub storage: StorageConfig,
    pub limits: LimitsConfig,
    pub delivery: DeliveryConfig,
    pub topic_defaults: TopicDefaults,
    /// Topics created at start if missing.
    pub topics: Vec<TopicSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// "always" or "interval".
    pub fsync: String,
    pub fsync_interval_ms: u64,
    pub segment_bytes: u64,
    pub index_interval_bytes: u64,
    pub dedupe_window_ms: u64,
    pub dedupe_max_ids: usize,
    pub retention_check_interval_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest encoded event accepted.
    pub max_event_bytes: usize,
    /// Most events in one publish request.
    pub max_batch_events: usize,
    /// Largest gRPC message, in either direction.
    pub max_message_bytes: usize,
    /// Publish requests one stream may have in flight.
    pub max_publish_in_flight: usize,
    pub max_subscribers: usize,
    pub max_publishers: usize,
    /// The largest `max_in_flight` (credit) a subscriber may ask for.
    pub max_credit: u32,
    /// Events a group holds in memory ahead of its acks.
    pub group_window: usize,
    /// Payload bytes a group holds in memory ahead of its acks: with
    /// `group_window`, whichever is reached first stops the read-ahead, so
    /// large events cannot multiply a window counted in events.
    pub group_window_bytes: usize,
    /// Bytes of responses one Subscribe stream may have queued in the broker
    /// while its client does not read; past that its session pauses.
    pub subscriber_buffer_bytes: usize,
    /// Bytes of responses queued for all subscribers together. Past it the
    /// slow streams stay paused and new subscriptions get
    /// RESOURCE_EXHAUSTED, so readers that stall cannot exhaust memory.
    pub max_buffered_bytes: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    pub ack_deadline_ms: u64,
    pub max_delivery_attempts: u32,
    pub min_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// A subscriber that sends nothing for this long is disconnected and
    /// its in-flight events go back to the group.
    pub idle_timeout_ms: u64,
    pub lag_report_interval_ms: u64,
    pub commit_interval_ms: u64,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicDefaults {
    /// 0 means keep forever (unless the size cap applies).
    pub retention_ms: u64,
    /// 0 means no size cap.
    pub retention_bytes: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub max_delivery_attempts: Option<u32>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: "127.0.0.1:50051".into(),
            metrics_listen: "127.0.0.1:9090".into(),
            data_dir: "./data".into(),
            auto_create_topics: false,
            drain_deadline_ms: 10_000,
            log_format: "text".into(),
            storage: StorageConfig::default(),
            limits: LimitsConfig::default(),
            delivery: DeliveryConfig::default(),
            topic_defaults: TopicDefaults::default(),
            topics: Vec::new(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        let l = LogConfig::default();
        StorageConfig {
            fsync: "always".into(),
            fsync_interval_ms: 100,
            segment_bytes: l.segment_bytes,
            index_interval_bytes: l.index_interval_bytes,
            dedupe_window_ms: l.dedupe_window.as_millis() as u64,
            dedupe_max_ids: l.dedupe_max_ids,
            retention_check_interval_ms: 60_000,
        }
    }
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
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            ack_deadline_ms: 30_000,
            max_delivery_attempts: 5,
            min_backoff_ms: 100,
            max_backoff_ms: 60_000,
            heartbeat_interval_ms: 10_000,
            idle_timeout_ms: 60_000,
            lag_report_interval_ms: 5_000,
            commit_interval_ms: 100,
        }
    }
}

impl BrokerConfig {
    /// Loads defaults, then the file (required only if `path` is given),
    /// then `BROKER__*` environment variables, and validates the result.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let mut b = config::Config::builder();
        b = match path {
            Some(p) => b.add_source(config::File::from(p).required(true)),
            None => b.add_source(config::File::with_name("broker.toml").required(false)),
        };
        let cfg: BrokerConfig = b
            .add_source(
                config::Environment::with_prefix("BROKER")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.parse::<SocketAddr>().is_err() {
            return invalid(
                "listen",
                format!("{:?} is not an address like 0.0.0.0:50051", self.listen),
            );
        }
        if !self.metrics_listen.is_empty() && self.metrics_listen.parse::<SocketAddr>().is_err() {
            return invalid(
                "metrics_listen",
                format!(
                    "{:?} is not an address like 0.0.0.0:9090 (or \"\" to disable metrics)",
                    self.metrics_listen
                ),
            );
        }
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty");
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return invalid("log_format", "must be \"text\" or \"json\"");
        }
        if !matches!(self.storage.fsync.as_str(), "always" | "interval") {
            return invalid("storage.fsync", "must be \"always\" or \"interval\"");
        }
        let positive: [(&'static str, u64); 9] = [
            ("storage.fsync_interval_ms", self.storage.fsync_interval_ms),
            (
                "storage.retention_check_interval_ms",
                self.storage.retention_check_interval_ms,
            ),
            ("delivery.ack_deadline_ms", self.delivery.ack_deadline_ms),
            (
                "delivery.max_delivery_attempts",
                self.delivery.max_delivery_attempts as u64,
            ),
            ("delivery.min_backoff_ms", self.delivery.min_backoff_ms),
            (
                "delivery.heartbeat_interval_ms",
                self.delivery.heartbeat_interval_ms,
            ),
            ("delivery.idle_timeout_ms", self.delivery.idle_timeout_ms),
            (
                "delivery.lag_report_interval_ms",
                self.delivery.lag_report_interval_ms,
            ),
            (
                "delivery.commit_interval_ms",
                self.delivery.commit_interval_ms,
            ),
        ];
        for (key, v) in positive {
            if v == 0 {
                return invalid(key, "must be greater than 0");
            }
        }
        if self.delivery.max_backoff_ms < self.delivery.min_backoff_ms {
            return invalid(
                "delivery.max_backoff_ms",
                "must be at least delivery.min_backoff_ms",
            );
        }
        if self.delivery.idle_timeout_ms <= self.delivery.heartbeat_interval_ms {
            return invalid(
                "delivery.idle_timeout_ms",
                "must be longer than delivery.heartbeat_interval_ms",
            );
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_event_bytes", l.max_event_bytes),
            ("limits.max_batch_events", l.max_batch_events),
            ("limits.max_publish_in_flight", l.max_publish_in_flight),
            ("limits.max_subscribers", l.max_subscribers),
            ("limits.max_publishers", l.max_publishers),
            ("limits.max_credit", l.max_credit as usize),
            ("limits.subscriber_buffer_bytes", l.subscriber_buffer_bytes),
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
        for (i, t) in self.topics.iter().enumerate() {
            if let Err(e) = mesh_log::names::validate("topic", &t.name) {
                return invalid("topics", format!("entry {i}: {e}"));
            }
        }
        self.log_config()
            .validate()
            .or_else(|e| invalid("storage", e.to_string()))
    }

    pub fn log_config(&self) -> LogConfig {
        let s = &self.storage;
        LogConfig {
            fsync: match s.fsync.as_str() {
                "interval" => FsyncPolicy::Interval(Duration::from_millis(s.fsync_interval_ms)),
                _ => FsyncPolicy::Always,
            },
            segment_bytes: s.segment_bytes,
            index_interval_bytes: s.index_interval_bytes,
            max_record_bytes: self.limits.max_event_bytes,
            dedupe_window: Duration::from_millis(s.dedupe_window_ms),
            dedupe_max_ids: s.dedupe_max_ids,
            max_batch_bytes: (4 << 20).max(self.limits.max_event_bytes),
            ..LogConfig::default()
        }
    }

    /// The topic settings for a topic created without explicit ones.
    pub fn topic_config(
        &self,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
        attempts: Option<u32>,
    ) -> TopicConfig {
        let nz = |v: u64| (v > 0).then_some(v);
        TopicConfig {
            retention_ms: retention_ms.map_or(nz(self.topic_defaults.retention_ms), nz),
            retention_bytes: retention_bytes.map_or(nz(self.topic_defaults.retention_bytes), nz),
            max_delivery_attempts: attempts,
        }
    }

    pub fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commented_config_file_parses_and_matches_the_code_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../broker.toml");
        let file: BrokerConfig = config::Config::builder()
            .add_source(config::File::from(path))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        file.validate().unwrap();
        let d = BrokerConfig::default();
        assert_eq!(format!("{file:?}"), format!("{d:?}"));
    }

    #[test]
    fn errors_name_the_key() {
        let mut c = BrokerConfig::default();
        c.storage.fsync = "sometimes".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("storage.fsync")
        );
        let mut c = BrokerConfig::default();
        c.delivery.ack_deadline_ms = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("delivery.ack_deadline_ms")
        );
        let c = BrokerConfig {
            listen: "nowhere".into(),
            ..BrokerConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("listen"));
        let c = BrokerConfig {
            metrics_listen: "9090".into(),
            ..BrokerConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("metrics_listen")
        );
        let c = BrokerConfig {
            metrics_listen: String::new(),
            ..BrokerConfig::default()
        };
        c.validate().unwrap();
    }
}
