//! `storage.backend` and `[jetstream]`: where topics and group positions
//! live. The embedded log (the default) keeps them in `data_dir`; the
//! JetStream backend keeps them in a NATS JetStream cluster, so the broker
//! itself holds nothing and several brokers can serve the same topics.

use std::{path::PathBuf, time::Duration};

use mesh_jetstream::{NatsTls, Options};
use mesh_runtime::config as rc;
use serde::Deserialize;

use super::{BrokerConfig, ConfigError, invalid};

/// Which storage holds the topics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Backend {
    /// The embedded, crash-safe log in `data_dir`.
    #[default]
    Log,
    /// Streams and a key-value bucket on NATS JetStream (`[jetstream]`).
    Jetstream,
}

impl TryFrom<String> for Backend {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "log" => Ok(Backend::Log),
            "jetstream" => Ok(Backend::Jetstream),
            _ => Err(format!("{s:?} is not \"log\" or \"jetstream\"")),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JetStreamConfig {
    /// NATS server URLs, comma separated; the client fails over between
    /// them.
    pub servers: String,
    /// Prefix of every stream, subject and bucket this mesh uses, so
    /// several meshes can share one NATS account: ASCII letters, digits
    /// and `_`.
    pub namespace: String,
    /// Copies of every topic's stream and of the positions bucket: 3 on a
    /// three-node cluster survives the loss of any one node.
    pub replicas: usize,
    /// TLS towards NATS (`[jetstream.tls]`): `ca` turns it on; `cert` and
    /// `key` are this broker's client certificate, for servers that verify
    /// clients.
    pub tls: NatsTlsConfig,
    /// How long one JetStream request may take (a publish ack, a read, a
    /// commit). A stream leader election stalls requests for a few
    /// seconds, so keep this well above that.
    #[serde(deserialize_with = "rc::duration")]
    pub request_timeout: Duration,
    /// How long the start waits for the servers.
    #[serde(deserialize_with = "rc::duration")]
    pub connect_timeout: Duration,
    /// How often every topic's bounds are re-read, in case a notification
    /// from another broker was missed.
    #[serde(deserialize_with = "rc::duration")]
    pub refresh_interval: Duration,
    /// How long a broker's hold on a group's dispatcher lasts without
    /// renewal: after a broker dies, another takes its groups over within
    /// this time.
    #[serde(deserialize_with = "rc::duration")]
    pub lease_ttl: Duration,
    /// This broker's gRPC URL as the other brokers reach it, for members
    /// of a group whose dispatcher runs here; `""` takes this host's
    /// address towards NATS and the `listen` port.
    pub advertise_url: String,
    /// The name the brokers' certificates carry, checked when one broker
    /// forwards to another by address.
    pub peer_tls_name: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsTlsConfig {
    /// PEM CA certificates of the NATS servers; unset means plaintext.
    #[serde(deserialize_with = "rc::opt_path")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate.
    #[serde(deserialize_with = "rc::opt_path")]
    pub cert: Option<PathBuf>,
    /// PEM client key.
    #[serde(deserialize_with = "rc::opt_path")]
    pub key: Option<PathBuf>,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        let o = Options::default();
        JetStreamConfig {
            servers: o.servers,
            namespace: o.namespace,
            replicas: o.replicas,
            tls: NatsTlsConfig::default(),
            request_timeout: o.request_timeout,
            connect_timeout: o.connect_timeout,
            refresh_interval: o.refresh_interval,
            lease_ttl: Duration::from_secs(10),
            advertise_url: String::new(),
            peer_tls_name: "broker".into(),
        }
    }
}

impl BrokerConfig {
    /// Checks `[jetstream]` when it is the backend.
    pub(super) fn validate_backend(&self) -> Result<(), ConfigError> {
        if self.storage.backend != Backend::Jetstream {
            return Ok(());
        }
        let j = &self.jetstream;
        if j.servers.trim().is_empty() {
            return invalid("jetstream.servers", "must name at least one NATS server");
        }
        if !mesh_jetstream::names::valid_namespace(&j.namespace) {
            return invalid(
                "jetstream.namespace",
                "must be 1 to 32 ASCII letters, digits or '_'",
            );
        }
        if !matches!(j.replicas, 1..=5) {
            return invalid("jetstream.replicas", "must be 1 to 5");
        }
        for (key, d) in [
            ("jetstream.request_timeout", j.request_timeout),
            ("jetstream.connect_timeout", j.connect_timeout),
            ("jetstream.refresh_interval", j.refresh_interval),
        ] {
            if d.is_zero() {
                return invalid(key, "must be greater than 0");
            }
        }
        if j.lease_ttl < Duration::from_secs(1) {
            return invalid("jetstream.lease_ttl", "must be at least 1s");
        }
        if j.tls.ca.is_none() && (j.tls.cert.is_some() || j.tls.key.is_some()) {
            return invalid(
                "jetstream.tls.ca",
                "is needed when jetstream.tls.cert or key is set",
            );
        }
        if j.tls.cert.is_some() != j.tls.key.is_some() {
            return invalid("jetstream.tls.cert", "and jetstream.tls.key go together");
        }
        if self.storage.encryption_key_file.is_some() {
            return invalid(
                "storage.encryption_key_file",
                "applies to the embedded log only; with storage.backend = \"jetstream\", encrypt at rest in nats-server (jetstream { cipher, key })",
            );
        }
        Ok(())
    }

    /// The JetStream backend's options.
    pub fn jetstream_options(&self) -> Options {
        let j = &self.jetstream;
        Options {
            servers: j.servers.clone(),
            replicas: j.replicas,
            tls: j.tls.ca.clone().map(|ca| NatsTls {
                ca,
                client: j.tls.cert.clone().zip(j.tls.key.clone()),
            }),
            request_timeout: j.request_timeout,
            connect_timeout: j.connect_timeout,
            refresh_interval: j.refresh_interval,
            dedupe_window: self.storage.dedupe_window,
            max_record_bytes: self.limits.max_event_bytes,
            client_name: format!("mesh-broker {}", self.listen),
            namespace: j.namespace.clone(),
        }
    }
}
