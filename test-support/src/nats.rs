//! Real nats-server processes for the JetStream backend's tests: the pinned
//! nats-server 2.15.1 binary (found on `PATH` or installed into
//! `target/tools`), and [`NatsCluster`], 1 or 3 JetStream nodes on free
//! loopback ports that a test can kill and restart. Only std, tokio and
//! serde_json: the harness reads each node's HTTP monitor and speaks no NATS.

mod binary;
mod cluster;
mod monitor;
mod node;
mod shared;

pub use binary::nats_server;
pub use cluster::NatsCluster;
pub use shared::shared_cluster;
