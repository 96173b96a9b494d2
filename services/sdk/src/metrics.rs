//! Prometheus metrics of a service: events handled and failed, and handler
//! latency, per topic and group, served over HTTP on `metrics_listen` by
//! `mesh_runtime::metrics` (started by [`crate::app::main`]).
//!
//! Everything is recorded through the `metrics` facade, so a process that
//! never calls [`install`] (a test, a tool) records nothing. Readers without
//! a group ([`crate::tail`]) are counted with `group=""`.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use metrics::{Counter, Histogram, Unit, counter, describe_counter, describe_histogram};

use crate::error::SdkError;

pub const HANDLED: &str = "mesh_service_events_handled_total";
pub const FAILED: &str = "mesh_service_events_failed_total";
pub const HANDLER_SECONDS: &str = "mesh_service_handler_duration_seconds";

/// Installs the process-wide Prometheus recorder and its endpoint on
/// `listen` (`None` does nothing; see `mesh_runtime::metrics::install`),
/// then describes the handler metrics. Must run inside a Tokio runtime;
/// errors name the key `metrics_listen`.
pub fn install(listen: Option<SocketAddr>) -> Result<(), SdkError> {
    if !mesh_runtime::metrics::install(listen)? {
        return Ok(());
    }
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
    use mesh_runtime::metrics::LATENCY_BUCKETS;
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

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
}
