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
//! - [`tail`]: replaying or following a topic without a group.
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
pub mod metrics;
pub mod producer;
pub mod server;
pub mod tail;

pub use config::BasicConfig;
pub use consumer::{Consumer, Start};
pub use error::SdkError;
pub use events::{Delivered, HandlerError, derive_id, envelope};
pub use mesh_proto;
pub use mesh_runtime;
pub use mesh_telemetry;
pub use producer::Producer;
pub use tokio_util::sync::CancellationToken;

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        mesh_runtime::shutdown_signal().await;
        t.cancel();
    });
    token
}

/// Creates topics that do not exist yet, waiting (with backoff) for the
/// broker to be reachable. Returns early if `shutdown` is cancelled.
pub async fn ensure_topics(
    broker: &str,
    topics: &[&str],
    shutdown: &CancellationToken,
) -> Result<(), SdkError> {
    use mesh_proto::broker::v1::{CreateTopicRequest, broker_client::BrokerClient};
    let ep = producer::endpoint(broker)?;
    let mut backoff = mesh_runtime::backoff::Backoff::default();
    loop {
        let attempt = async {
            let mut c = BrokerClient::new(ep.connect().await?);
            for t in topics {
                let r = c
                    .create_topic(CreateTopicRequest {
                        name: t.to_string(),
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(_) => tracing::info!(topic = t, "created topic"),
                    Err(s) if s.code() == tonic::Code::AlreadyExists => {}
                    Err(s) => return Err(SdkError::Status(s)),
                }
            }
            Ok::<(), SdkError>(())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) => tracing::warn!(broker, error = %e, "broker not ready; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}
