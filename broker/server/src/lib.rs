//! The mesh's event broker, as a library; `main.rs` only parses config and
//! calls [`run`].
//!
//! - [`server`]: [`run`]: storage, gRPC server (with `mesh_runtime`'s
//!   health and reflection), retention, graceful drain.
//! - [`service`]: the gRPC edge (the generated `Broker` trait, implemented by `GrpcService`).
//! - [`auth`]: who is calling (client certificate or bearer token) and
//!   what the access-control list lets them do, per verb, topic and group.
//! - [`publish`]: the Publish stream and PublishUnary.
//! - [`subscribe`]: Subscribe sessions: group members and ephemeral tails.
//! - [`outbox`]: what a Subscribe stream may queue, bounded in bytes per
//!   stream and broker-wide.
//! - [`group`]: one consumer group: credit, per-key order, acks,
//!   redelivery with backoff, dead-lettering, committed position; a pure
//!   state machine ([`group::window`]), the actor that runs it
//!   ([`group::actor`]) and the storage seam ([`group::store`]).
//! - [`groups`]: the running group actors.
//! - [`cluster`]: several brokers on one JetStream cluster: group leases,
//!   forwarding members to the broker that holds their group; [`peers`]:
//!   this broker's leases and its clients of the others.
//! - [`limits`]: streams per connection and the publish rate per
//!   principal.
//! - [`dlq`]: dead-letter topics: append, list, redrive, purge.
//! - [`admin`]: topic, group and dead-letter administration.
//! - [`state`]: what all handlers share.
//! - [`config`]: `broker.toml` plus `BROKER__*` environment overrides.
//! - [`metrics`]: Prometheus metrics: names, descriptions, connection and
//!   group gauges (the endpoint is `mesh_runtime::metrics`).
//! - [`convert`]: record-to-event conversion (and the shared time helpers).
//! - [`error`]: [`BrokerError`] and its mapping to gRPC status codes.

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod convert;
pub mod dlq;
pub mod error;
pub mod group;
pub mod groups;
pub mod limits;
pub mod metrics;
pub mod outbox;
pub mod peers;
pub mod publish;
pub mod server;
pub mod service;
pub mod state;
pub mod subscribe;
pub mod upkeep;

pub use config::BrokerConfig;
pub use error::BrokerError;
pub use server::run;
