//! Prometheus metrics of a service: events handled and failed, and handler
//! latency, per topic and group, served over HTTP on `metrics_listen` by
//! `metrics-exporter-prometheus` (started by [`crate::app::main`]).
//!
//! Everything is recorded through the `metrics` facade, so a process that
//! never calls [`install`] (a test, a tool) records nothing. Readers without
//! a group ([`crate::tail`]) are counted with `group=""`.

use std::{
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use metrics::{Counter, Histogram, Unit, counter, describe_counter, describe_histogram};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::error::{SdkError, config_err};

pub const HANDLED: &str = "mesh_service_events_handled_total";
pub const FAILED: &str = "mesh_service_events_failed_total";
pub const HANDLER_SECONDS: &str = "mesh_service_handler_duration_seconds";

/// Histogram buckets (seconds) for handler latency: 100 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

static INSTALLED: Mutex<Option<SocketAddr>> = Mutex::new(None);

/// Installs the process-wide Prometheus recorder and serves it on `listen`
/// (`GET /metrics`). Empty `listen` does nothing. Must run inside a Tokio
/// runtime; errors name the key `metrics_listen`.
pub fn install(listen: &str) -> Result<(), SdkError> {
    if listen.is_empty() {
        return Ok(());
    }
    let err = |e: &dyn std::fmt::Display| {
        config_err(
            "metrics_listen",
            format!("cannot serve metrics on {listen}: {e}"),
        )
    };
    let addr: SocketAddr = listen.parse().map_err(|e| err(&e))?;
    let mut installed = INSTALLED.lock().expect("metrics lock");
    if let Some(running) = *installed {
        tracing::warn!(%running, requested = %addr, "metrics are already served by this process; recording there");
        return Ok(());
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
    describe_counter!(
        HANDLED,
        Unit::Count,
        "Events the service's handler finished successfully (acked), per topic and group."
    );
    describe_counter!(
        FAILED,
        Unit::Count,
        "Events the service's handler failed (nacked for redelivery), per topic and group."
    );
    describe_histogram!(
        HANDLER_SECONDS,
        Unit::Seconds,
        "Time the handler took per event, successful or not, per topic and group."
    );
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(())
}

/// The handler metrics of one topic and group, resolved once.
pub struct HandlerMetrics {
    handled: Counter,
    failed: Counter,
    latency: Histogram,
}

impl HandlerMetrics {
    pub fn new(topic: &str, group: &str) -> Self {
        let l = [("topic", topic.to_string()), ("group", group.to_string())];
        HandlerMetrics {
            handled: counter!(HANDLED, &l),
            failed: counter!(FAILED, &l),
            latency: metrics::histogram!(HANDLER_SECONDS, &l),
        }
    }

    /// Counts one event whose handling started at `started`.
    pub fn done(&self, ok: bool, started: Instant) {
        self.observe(ok, started.elapsed());
    }

    pub fn observe(&self, ok: bool, took: Duration) {
        self.latency.record(took);
        if ok {
            self.handled.increment(1);
        } else {
            self.failed.increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Validate;

    #[test]
    fn handler_metrics_are_counted_per_topic_and_group() {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BUCKETS)
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let m = HandlerMetrics::new("orders", "billing");
            m.observe(true, Duration::from_millis(3));
            m.observe(true, Duration::from_millis(3));
            m.observe(false, Duration::from_secs(1));
        });
        let text = handle.render();
        let l = r#"{topic="orders",group="billing"}"#;
        for line in [
            format!("{HANDLED}{l} 2"),
            format!("{FAILED}{l} 1"),
            format!("{HANDLER_SECONDS}_count{l} 3"),
        ] {
            assert!(text.lines().any(|x| x == line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn metrics_listen_is_an_address_or_empty() {
        let mut c = crate::BasicConfig::default();
        c.validate().unwrap();
        c.metrics_listen = String::new();
        c.validate().unwrap();
        c.metrics_listen = "9095".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("metrics_listen"), "{e}");
    }
}
