//! NATS errors as the log's error type, so the broker maps them to gRPC
//! statuses in one place.

use mesh_log::LogError;

/// A failed NATS or JetStream call as [`LogError::Backend`], naming the
/// operation (`map_err(backend("publish"))`).
pub fn backend<E: std::fmt::Display>(op: &'static str) -> impl FnOnce(E) -> LogError {
    move |e| LogError::Backend {
        op,
        reason: e.to_string(),
    }
}
