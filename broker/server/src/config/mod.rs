//! The broker's configuration: code defaults, then `broker.toml` (or the
//! file named by `--config`), then `BROKER__...` environment variables, for
//! example `BROKER__STORAGE__FSYNC=interval`. Validated at start; every
//! error names the key.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use mesh_log::{FsyncPolicy, LogConfig, TopicConfig};
use mesh_runtime::{
    config::{self as rc, LogFormat},
    tls::{ClientAuth, TlsConfig},
};

/// The broker's `tls.client_auth` when unset.
pub const BROKER_CLIENT_AUTH: ClientAuth = ClientAuth::Optional;
use serde::Deserialize;

mod backend;
mod limits;

pub use backend::{Backend, JetStreamConfig, NatsTlsConfig};
pub use limits::LimitsConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or the environment could not be read or does not parse
    /// (unknown key, wrong type, bad value); names the key.
    #[error(transparent)]
    Load(#[from] mesh_runtime::RuntimeError),
    /// A `[tls]` file or setting cannot be used; names the key and file.
    #[error(transparent)]
    Tls(#[from] mesh_runtime::tls::TlsError),
    /// The values parse but do not fit together; names the key.
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid<T>(key: &'static str, reason: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid {
        key,
        reason: reason.into(),
    })
}

/// How clients prove who they are (the `auth` key). There is no default:
/// a broker without it refuses to start (`auth::Auth::from_config`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum AuthMode {
    /// By a client certificate signed by `tls.ca`; the principal is its
    /// subject's common name (or first DNS name).
    Mtls,
    /// By `authorization: Bearer <token>` over TLS; the principal is the
    /// token's name in `token_file`.
    Token,
    /// Nobody is asked; every call is allowed. Only on purpose: logged at
    /// start and reported by the `mesh_broker_auth_disabled` gauge.
    None,
}

impl TryFrom<String> for AuthMode {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "mtls" => Ok(AuthMode::Mtls),
            "token" => Ok(AuthMode::Token),
            "none" => Ok(AuthMode::None),
            _ => Err(format!("{s:?} is not \"mtls\", \"token\" or \"none\"")),
        }
    }
}

/// How appends reach the disk before they are acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Fsync {
    /// Acknowledged only after fdatasync (shared by concurrent appends).
    #[default]
    Always,
    /// Acknowledged once written to the OS, synced every `fsync_interval`.
    Interval,
}

impl TryFrom<String> for Fsync {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for Fsync {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Fsync::Always),
            "interval" => Ok(Fsync::Interval),
            _ => Err(format!("{s:?} is not \"always\" or \"interval\"")),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address the gRPC server binds.
    pub listen: SocketAddr,
    /// Address of the Prometheus metrics endpoint (HTTP); `""` in the file
    /// or environment disables it.
    #[serde(deserialize_with = "rc::opt_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// Where topics, segments and group offsets live.
    pub data_dir: PathBuf,
    /// Create a topic on first publish or subscribe instead of NOT_FOUND.
    pub auto_create_topics: bool,
    /// After SIGTERM/SIGINT, how long in-flight work may take to finish.
    #[serde(deserialize_with = "rc::duration")]
    pub drain_deadline: Duration,
    /// Lines for people or for log pipelines.
    pub log_format: LogFormat,
    /// How clients authenticate: "mtls", "token" or "none". No default:
    /// unset, the broker refuses to start, so that running open is a
    /// decision someone wrote down.
    pub auth: Option<AuthMode>,
    /// TLS of the gRPC server (`[tls]`): its certificate and key, and the
    /// CA that signs client certificates. `client_auth` defaults to
    /// "optional" here ([`BROKER_CLIENT_AUTH`]): the handshake verifies any
    /// certificate presented, and a call without one gets UNAUTHENTICATED
    /// (health checks stay open).
    pub tls: TlsConfig,
    /// With auth = "token": each principal and the SHA-256 of its token.
    #[serde(deserialize_with = "rc::opt_path")]
    pub token_file: Option<PathBuf>,
    /// Who may do what (`[[grant]]` entries, see `auth::acl`); unset, every
    /// call but health checks is denied (unless auth = "none").
    #[serde(deserialize_with = "rc::opt_path")]
    pub acl_file: Option<PathBuf>,
    /// Serve gRPC server reflection: the API's schema (no data), so that
    /// grpcurl needs no .proto files. Off hides the schema.
    pub reflection: bool,
    /// How the log stores and syncs (`[storage]`).
    pub storage: StorageConfig,
    /// The NATS JetStream cluster, with `storage.backend = "jetstream"`.
    pub jetstream: JetStreamConfig,
    /// What one request, stream or group may hold (`[limits]`).
    pub limits: LimitsConfig,
    /// Acks, redelivery and liveness of subscribers (`[delivery]`).
    pub delivery: DeliveryConfig,
    /// Retention of topics created without their own (`[topic_defaults]`).
    pub topic_defaults: TopicDefaults,
    /// Topics created at start if missing.
    pub topics: Vec<TopicSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Where topics and group positions live: "log" (the embedded log in
    /// `data_dir`) or "jetstream" (a NATS JetStream cluster, `[jetstream]`).
    pub backend: Backend,
    /// When an append counts as durable (the embedded log; JetStream syncs
    /// as its servers' `sync_interval` says).
    pub fsync: Fsync,
    /// With `fsync = "interval"`, how often the log syncs.
    #[serde(deserialize_with = "rc::duration")]
    pub fsync_interval: Duration,
    /// A segment is sealed past this size; retention deletes whole ones.
    #[serde(deserialize_with = "rc::size")]
    pub segment_bytes: u64,
    /// One sparse index entry per this many bytes of records.
    #[serde(deserialize_with = "rc::size")]
    pub index_interval_bytes: u64,
    /// A producer id seen again within this window is a duplicate.
    #[serde(deserialize_with = "rc::duration")]
    pub dedupe_window: Duration,
    /// Ids remembered per topic, so unique ids cannot exhaust memory.
    pub dedupe_max_ids: usize,
    /// How often retention runs.
    #[serde(deserialize_with = "rc::duration")]
    pub retention_check_interval: Duration,
    /// Encryption at rest of the events in the log: a file of
    /// `<key-id> <64 hex chars>` lines, the last one encrypting new
    /// records. A path and never the key itself, so the key stays out of
    /// config files, the environment's listing and command lines; `""` or
    /// absent stores events in plaintext.
    #[serde(deserialize_with = "rc::opt_path")]
    pub encryption_key_file: Option<PathBuf>,
}

/// The keys are durations (`ack_deadline = "30s"`; the old `*_ms` keys
/// are aliases). The fields hold whole milliseconds, the unit the
/// dispatcher and the subscribe sessions compute with.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// An event not acked within this time is redelivered.
    #[serde(deserialize_with = "rc::duration")]
    pub ack_deadline: Duration,
    /// Deliveries of one event before it is dead-lettered.
    pub max_delivery_attempts: u32,
    /// The first redelivery delay, doubled per attempt.
    #[serde(deserialize_with = "rc::duration")]
    pub min_backoff: Duration,
    /// The cap of the redelivery delay.
    #[serde(deserialize_with = "rc::duration")]
    pub max_backoff: Duration,
    /// How often every stream gets a heartbeat (and HTTP/2 keepalive).
    #[serde(deserialize_with = "rc::duration")]
    pub heartbeat_interval: Duration,
    /// A subscriber that sends nothing for this long is disconnected and
    /// its in-flight events go back to the group.
    #[serde(deserialize_with = "rc::duration")]
    pub idle_timeout: Duration,
    /// How often each subscriber is told its group's lag.
    #[serde(deserialize_with = "rc::duration")]
    pub lag_report_interval: Duration,
    /// How often a group's moved position is written to disk.
    #[serde(deserialize_with = "rc::duration")]
    pub commit_interval: Duration,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicDefaults {
    /// Age after which segments go; 0 means keep forever (unless the size
    /// cap applies).
    #[serde(deserialize_with = "rc::duration")]
    pub retention: Duration,
    /// 0 means no size cap.
    #[serde(deserialize_with = "rc::size")]
    pub retention_bytes: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// The topic's name.
    pub name: String,
    /// Its age retention, instead of `topic_defaults.retention`.
    #[serde(default, deserialize_with = "rc::opt_duration")]
    pub retention: Option<Duration>,
    /// Its size retention, instead of `topic_defaults.retention_bytes`.
    #[serde(default, deserialize_with = "rc::opt_size")]
    pub retention_bytes: Option<u64>,
    /// Its deliveries before dead-lettering, instead of the broker's.
    pub max_delivery_attempts: Option<u32>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            data_dir: "./data".into(),
            auto_create_topics: false,
            drain_deadline: Duration::from_secs(10),
            log_format: LogFormat::Text,
            auth: None,
            tls: TlsConfig::default(),
            token_file: None,
            acl_file: None,
            reflection: true,
            storage: StorageConfig::default(),
            jetstream: JetStreamConfig::default(),
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
            backend: Backend::Log,
            fsync: Fsync::Always,
            fsync_interval: Duration::from_millis(100),
            segment_bytes: l.segment_bytes,
            index_interval_bytes: l.index_interval_bytes,
            dedupe_window: l.dedupe_window,
            dedupe_max_ids: l.dedupe_max_ids,
            retention_check_interval: Duration::from_secs(60),
            encryption_key_file: None,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            ack_deadline: Duration::from_millis(30_000),
            max_delivery_attempts: 5,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(60_000),
            heartbeat_interval: Duration::from_millis(10_000),
            idle_timeout: Duration::from_millis(60_000),
            lag_report_interval: Duration::from_millis(5_000),
            commit_interval: Duration::from_millis(100),
        }
    }
}

impl BrokerConfig {
    /// Loads defaults, then the file (required only if `path` is given),
    /// then `BROKER__*` environment variables, and validates the result.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let cfg: BrokerConfig = rc::load("BROKER", path, "broker.toml", &[])?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges and how the fields relate; parsing (addresses, enums,
    /// durations, sizes) already happened while loading.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty");
        }
        // `auth` itself is checked when the broker starts
        // (`auth::Auth::from_config`), with the files it names.
        self.tls.validate("tls.")?;
        let d = &self.delivery;
        let positive: [(&'static str, bool); 9] = [
            (
                "storage.fsync_interval",
                self.storage.fsync_interval.is_zero(),
            ),
            (
                "storage.retention_check_interval",
                self.storage.retention_check_interval.is_zero(),
            ),
            ("delivery.ack_deadline", d.ack_deadline.is_zero()),
            (
                "delivery.max_delivery_attempts",
                d.max_delivery_attempts == 0,
            ),
            ("delivery.min_backoff", d.min_backoff.is_zero()),
            (
                "delivery.heartbeat_interval",
                d.heartbeat_interval.is_zero(),
            ),
            ("delivery.idle_timeout", d.idle_timeout.is_zero()),
            (
                "delivery.lag_report_interval",
                d.lag_report_interval.is_zero(),
            ),
            ("delivery.commit_interval", d.commit_interval.is_zero()),
        ];
        for (key, zero) in positive {
            if zero {
                return invalid(key, "must be greater than 0");
            }
        }
        if d.max_backoff < d.min_backoff {
            return invalid(
                "delivery.max_backoff",
                "must be at least delivery.min_backoff",
            );
        }
        if d.idle_timeout <= d.heartbeat_interval {
            return invalid(
                "delivery.idle_timeout",
                "must be longer than delivery.heartbeat_interval",
            );
        }
        self.limits.validate()?;
        self.validate_backend()?;
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
            fsync: match s.fsync {
                Fsync::Interval => FsyncPolicy::Interval(s.fsync_interval),
                Fsync::Always => FsyncPolicy::Always,
            },
            segment_bytes: s.segment_bytes,
            index_interval_bytes: s.index_interval_bytes,
            max_record_bytes: self.limits.max_event_bytes,
            dedupe_window: s.dedupe_window,
            dedupe_max_ids: s.dedupe_max_ids,
            max_batch_bytes: (4 << 20).max(self.limits.max_event_bytes),
            encryption_key_file: s
                .encryption_key_file
                .clone()
                .filter(|p| !p.as_os_str().is_empty()),
            ..LogConfig::default()
        }
    }

    /// The topic settings for a topic created with the given ones (`None`
    /// takes the default; 0 means unlimited).
    pub fn topic_config(
        &self,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
        attempts: Option<u32>,
    ) -> TopicConfig {
        let nz = |v: u64| (v > 0).then_some(v);
        let default_ms = self.topic_defaults.retention.as_millis() as u64;
        TopicConfig {
            retention_ms: retention_ms.map_or(nz(default_ms), nz),
            retention_bytes: retention_bytes.map_or(nz(self.topic_defaults.retention_bytes), nz),
            max_delivery_attempts: attempts,
        }
    }

    /// The settings of a `[[topics]]` entry, as [`Self::topic_config`].
    pub fn topic_spec_config(&self, t: &TopicSpec) -> TopicConfig {
        let ms = t.retention.map(|d| d.as_millis() as u64);
        self.topic_config(ms, t.retention_bytes, t.max_delivery_attempts)
    }
}
