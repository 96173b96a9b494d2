//! What the broker and every service do the same way before and around
//! their own work, in one copy.
//!
//! - [`cli`]: the command line (`[--config FILE]`, `healthcheck [ADDR]`).
//! - [`config`]: loading settings (code defaults, a TOML file, then
//!   `PREFIX__KEY` environment overrides) and the typed values they use:
//!   durations (`"30s"`, or a number of milliseconds), sizes (`"64MiB"`, or
//!   a number of bytes), optional addresses, [`config::LogFormat`].
//! - [`grpc`]: grpc.health.v1 plus server reflection (v1 and v1alpha) for a
//!   server, and the `healthcheck` client that probes one.
//! - [`signal`]: [`shutdown_signal`], which resolves on SIGTERM or SIGINT.
//! - [`metrics`]: the process-wide Prometheus recorder and its HTTP
//!   endpoint (the metric names stay with whoever records them).
//! - [`backoff`]: exponential backoff, plain and with jitter.
//! - [`tls`]: the `[tls]` section (CA, certificate, key, client auth) as
//!   tonic server and client TLS, the principal of a client certificate,
//!   tokens from files and their constant-time check.
//! - [`time`]: protobuf `Timestamp`/`Duration` to and from micros and std
//!   types.
//!
//! No tracing setup here: that is `mesh-telemetry`.

pub mod backoff;
pub mod cli;
pub mod config;
pub mod grpc;
pub mod metrics;
pub mod signal;
pub mod time;
pub mod tls;

pub use signal::shutdown_signal;

/// Errors of the bootstrap. Each caller maps them into its own error type.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Reading or deserializing the settings failed; the message names the
    /// key where the config crate knows it.
    #[error("configuration: {0}")]
    Config(#[from] ::config::ConfigError),
    /// The metrics endpoint could not be set up on the configured address.
    #[error("configuration key `metrics_listen`: cannot serve metrics on {addr}: {reason}")]
    Metrics {
        addr: std::net::SocketAddr,
        reason: String,
    },
    /// The reflection service could not be built from the descriptors.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}
