//! The process-wide Prometheus recorder and its HTTP endpoint
//! (`metrics_listen`, served by `metrics-exporter-prometheus`). What is
//! recorded, and its names, stays with the broker and the SDK.
//!
//! Everything is recorded through the `metrics` facade, which is a no-op
//! until a recorder is installed, so a process with metrics disabled (or a
//! test, a tool) pays next to nothing.

use std::{net::SocketAddr, sync::Mutex};

use metrics_exporter_prometheus::PrometheusBuilder;

use crate::RuntimeError;

/// Histogram buckets (seconds) for every latency histogram: 100 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The endpoint this process serves, once one is installed.
static INSTALLED: Mutex<Option<SocketAddr>> = Mutex::new(None);

/// Installs the process-wide Prometheus recorder and serves it on `listen`
/// (`GET /metrics`, or any path); `None` does nothing. Returns whether
/// this call installed it, so the caller describes its metrics once. The
/// recorder is global: a second install in the same process (tests)
/// records into the endpoint of the first one. Must run inside a Tokio
/// runtime.
pub fn install(listen: Option<SocketAddr>) -> Result<bool, RuntimeError> {
    let Some(addr) = listen else {
        return Ok(false);
    };
    let err = |e: &dyn std::fmt::Display| RuntimeError::Metrics {
        addr,
        reason: e.to_string(),
    };
    // A poisoned lock only means another install panicked; the slot is
    // still a plain Option.
    let mut installed = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(running) = *installed {
        tracing::warn!(%running, requested = %addr, "metrics are already served by this process; recording there");
        return Ok(false);
    }
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&LATENCY_BUCKETS)
        .map_err(|e| err(&e))?
        .build()
        .map_err(|e| err(&e))?;
    metrics::set_global_recorder(recorder).map_err(|e| err(&e))?;
    tokio::spawn(async move {
        if let Err(e) = exporter.await {
            tracing::error!(error = ?e, "the metrics endpoint stopped");
        }
    });
    *installed = Some(addr);
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(true)
}
