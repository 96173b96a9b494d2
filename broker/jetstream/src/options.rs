//! What the JetStream backend needs to know, as plain values (the broker's
//! `[jetstream]` config section maps onto it).

use std::{path::PathBuf, time::Duration};

/// How to reach and use the NATS cluster.
#[derive(Clone, Debug)]
pub struct Options {
    /// NATS server URLs, comma separated (`nats://n1:4222,nats://n2:4222`);
    /// the client fails over between them.
    pub servers: String,
    /// Copies of every stream and bucket (JetStream replicas: 1, 3 or 5).
    pub replicas: usize,
    /// TLS towards NATS: the CA that signs the servers' certificates, and
    /// this broker's client certificate and key if the servers ask for one.
    pub tls: Option<NatsTls>,
    /// How long one JetStream request (a publish ack, a read, a commit)
    /// may take. A stream leader election stalls requests for some
    /// seconds, so this is longer than that.
    pub request_timeout: Duration,
    /// How long the start may wait for the servers to answer.
    pub connect_timeout: Duration,
    /// How often every topic's bounds are re-read from the servers, in
    /// case a notification from another broker was missed.
    pub refresh_interval: Duration,
    /// A message id seen again within this window is a duplicate (the
    /// streams' `duplicate_window`).
    pub dedupe_window: Duration,
    /// The largest record accepted.
    pub max_record_bytes: usize,
    /// This client's name, shown by the NATS server's monitoring.
    pub client_name: String,
    /// Prefix of every stream, subject and bucket name
    /// ([`crate::names::Names`]): meshes with different namespaces share a
    /// NATS account without seeing each other.
    pub namespace: String,
}

/// TLS files for the NATS connection.
#[derive(Clone, Debug)]
pub struct NatsTls {
    /// PEM CA certificates the servers' certificates must chain to.
    pub ca: PathBuf,
    /// PEM client certificate and key, for servers that verify clients.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            servers: "nats://127.0.0.1:4222".into(),
            replicas: 1,
            tls: None,
            request_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(1),
            dedupe_window: Duration::from_secs(120),
            max_record_bytes: 1 << 20,
            client_name: "mesh-broker".into(),
            namespace: "mesh".into(),
        }
    }
}
