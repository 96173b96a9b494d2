//! PublishUnary: one event per call, one call at a time.

use std::time::{Duration, Instant};

use mesh_proto::broker::v1 as pb;

use mesh_bench::{
    TOPIC,
    disk::payload,
    stats::{Percentiles, histogram},
};

use crate::{
    Res,
    broker::{Target, connect},
    cpu::{Cpu, cpu_now},
    err, event,
    stats::Run,
};

/// PublishUnary, one event per call, sequentially.
pub async fn unary_run(target: Target, max_events: u64, limit: Duration) -> Res<Run> {
    let mut c = connect(&target).await?;
    let data = payload();
    let cpu0 = cpu_now();
    let start = Instant::now();
    let mut lat = histogram();
    let mut n = 0u64;
    while n < max_events && start.elapsed() < limit {
        let t = Instant::now();
        let r = c
            .publish_unary(pb::PublishRequest {
                sequence: n,
                topic: TOPIC.into(),
                events: vec![event(format!("unary-{n}"), data.clone())],
            })
            .await
            .map_err(err)?
            .into_inner();
        if let Some(e) = r.error {
            return Err(format!("publish failed: {} {}", e.code, e.message));
        }
        lat.saturating_record(t.elapsed().as_micros() as u64);
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Run {
        events: n,
        secs,
        lat: Percentiles::of(&lat),
        cpu: Cpu::between(cpu0, cpu_now(), secs),
    })
}
