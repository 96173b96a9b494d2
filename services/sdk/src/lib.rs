//! What every mesh service would otherwise write itself.
//!
//! - [`config`]: settings from code defaults, a TOML file and
//!   `PREFIX__KEY` environment overrides, validated with errors naming the
//!   key.
//! - [`server`]: the gRPC server of a service: its own API plus
//!   `mesh_runtime`'s health and reflection, graceful shutdown.
//! - [`producer`]: a typed producer: pipelined, batched, retried across
//!   reconnects, with deterministic ids.
//! - [`consumer`]: a typed consumer group member: `Ok` acks, `Err` nacks,
//!   bounded concurrency, reconnect with backoff.
//! - [`link`]: the [`Broker`] link: URL, TLS and bearer token in one
//!   value every producer, consumer and reader takes.
//! - [`ensure_topics`]: waiting for the topics a service needs.
//! - [`tail`]: replaying or following a topic without a group.
//! - [`view`]: a read model that follows its topic for as long as the
//!   service runs, the same on every replica, with `sync` to the head.
//! - [`events`]: typed events in the envelope, [`Delivered`],
//!   [`HandlerError`], [`derive_id`].
//! - [`app`]: a service's whole `main` (command line, config, telemetry,
//!   metrics endpoint, listener, signals).
//! - [`metrics`]: Prometheus metrics (events handled and failed, handler
//!   latency) and their HTTP endpoint.
//! - [`error`]: [`SdkError`], the one error type.

pub mod app;
pub mod config;
pub mod consumer;
pub mod error;
pub mod events;
pub mod link;
pub mod metrics;
pub mod producer;
pub mod server;
pub mod tail;
mod topics;
pub mod view;

pub use config::{BasicConfig, ServiceConfig};
pub use consumer::{Consumer, Start};
pub use error::SdkError;
pub use events::{Delivered, HandlerError, derive_id, envelope};
pub use link::Broker;
pub use mesh_proto;
pub use mesh_runtime;
pub use mesh_telemetry;
pub use producer::Producer;
pub use tokio_util::sync::CancellationToken;
pub use topics::ensure_topics;
pub use view::View;

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    // Registered here, before the task runs: see `shutdown_signal`.
    let signal = mesh_runtime::shutdown_signal();
    tokio::spawn(async move {
        signal.await;
        t.cancel();
    });
    token
}
