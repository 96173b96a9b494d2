//! Storage only: the broker's storage without gRPC, as a ceiling for
//! Publish in the same disk state.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use bytes::Bytes;
use mesh_log::{AppendRecord, LocalStorage, Storage, TopicConfig};
use prost::Message;
use tokio::{runtime::Runtime, sync::Semaphore};

use mesh_bench::{
    TOPIC,
    disk::{RunDir, payload},
    stats::histogram,
};

use crate::{
    Res,
    args::Args,
    broker::{broker_config, on_clients},
    err, event,
    publish::{Shape, streams_run},
    security::Security,
    stats::Run,
};

/// The broker's storage without gRPC: the same encoded events (with ids)
/// submitted with the same pipelining as a Publish stream.
pub fn baseline_run(rt: &Runtime, args: &Args, sec: &Security, shape: Shape) -> Res<Run> {
    let dir = RunDir::new(&args.dir, "baseline").map_err(err)?;
    let cfg = broker_config(args, sec, dir.0.clone());
    let storage: Arc<dyn Storage> =
        Arc::new(LocalStorage::open(&dir.0, cfg.log_config()).map_err(err)?);
    let limit = Duration::from_secs_f64(args.seconds);
    let max_events = args.events;
    let st = storage.clone();
    let run = on_clients(rt, async move {
        st.create_topic(TOPIC, TopicConfig::default())
            .await
            .map_err(err)?;
        let reqs = shape.requests_per_stream();
        streams_run(
            "baseline",
            shape.streams,
            limit,
            |s, claimed, start, deadline| {
                let st = st.clone();
                async move {
                    let data = payload();
                    let permits = Arc::new(Semaphore::new(reqs));
                    let mut seq = 0u64;
                    let mut acks = Vec::new();
                    loop {
                        let p = permits.clone().acquire_owned().await.map_err(err)?;
                        if Instant::now() >= deadline
                            || claimed.fetch_add(shape.batch as u64, Ordering::Relaxed)
                                >= max_events
                        {
                            break;
                        }
                        let records = (0..shape.batch)
                            .map(|i| {
                                let ev = event(format!("base-s{s}-{seq}-{i}"), data.clone());
                                AppendRecord {
                                    id: Some(ev.id.clone()),
                                    payload: Bytes::from(ev.encode_to_vec()),
                                }
                            })
                            .collect();
                        let pending = st.submit(TOPIC, records).await.map_err(err)?;
                        acks.push(tokio::spawn(async move {
                            let r = pending.await.map(|a| (a.len() as u64, Instant::now()));
                            drop(p);
                            r
                        }));
                        seq += 1;
                    }
                    let mut n = 0;
                    let mut last = start;
                    for a in acks {
                        let (k, t) = a.await.map_err(err)?.map_err(err)?;
                        n += k;
                        last = last.max(t);
                    }
                    // No latency: the baseline row shows none.
                    Ok((n, last, histogram()))
                }
            },
        )
        .await
    })?;
    rt.block_on(storage.close());
    Ok(run)
}
