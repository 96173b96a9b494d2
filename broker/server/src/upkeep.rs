//! The broker's background loops, each running until shutdown: retention,
//! and the metrics gauges that no request path keeps current.

use std::{sync::Arc, time::Duration};

use mesh_log::Storage;
use tokio::sync::watch;

use crate::{
    config::BrokerConfig,
    group::store::age_at,
    metrics::{self, GroupMetrics},
    state::Shared,
};

/// Every `storage.retention_check_interval` until shutdown: deletes the
/// segments retention no longer keeps.
pub async fn retention_loop(
    storage: Arc<dyn Storage>,
    cfg: Arc<BrokerConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let every = cfg.storage.retention_check_interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = storage.enforce_retention().await {
            tracing::error!(error = %e, "retention failed");
        }
    }
}

/// Every `delivery.lag_report_interval` until shutdown: bytes buffered for
/// subscribers, bytes on disk per topic, and lag of the groups no actor is
/// running for (after a restart, before their first member joins; running
/// actors set their own on the same timer).
pub async fn refresh_loop(broker: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let every = broker.cfg.delivery.lag_report_interval;
    loop {
        ::metrics::gauge!(metrics::BUFFERED).set(broker.buffers.used() as f64);
        for t in broker.storage.topics() {
            ::metrics::gauge!(metrics::TOPIC_BYTES, "topic" => t.name.clone()).set(t.bytes as f64);
            let Ok(groups) = broker.storage.groups(&t.name) else {
                continue;
            };
            for g in groups {
                if broker.groups.get(&t.name, &g.group).is_some() {
                    continue;
                }
                let age = if g.lag == 0 {
                    Duration::ZERO
                } else {
                    age_at(&*broker.storage, &t.name, g.committed.max(t.earliest)).await
                };
                GroupMetrics::new(&t.name, &g.group).set_lag(g.lag, age);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = crate::state::stopped(&mut stop) => return,
        }
    }
}
