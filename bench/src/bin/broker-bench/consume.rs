//! Consume: a new group reads a prefilled topic from the start, acking
//! every Deliveries message.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use mesh_proto::broker::v1::{
    self as pb, subscribe_request::Request, subscribe_response::Response,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use mesh_bench::TOPIC;

use crate::{
    Res,
    broker::{Target, connect},
    cpu::{Cpu, cpu_now},
    err,
    stats::Run,
};

/// Opens a Subscribe stream as a member of `group` with `credit`; returns
/// the request sender and the response stream, after `Opened`.
pub async fn open_member(
    target: &Target,
    topic: &str,
    group: &str,
    credit: u32,
) -> Res<(
    mpsc::Sender<pb::SubscribeRequest>,
    tonic::Streaming<pb::SubscribeResponse>,
)> {
    let mut c = connect(target).await?;
    let (tx, rx) = mpsc::channel(1024);
    tx.send(pb::SubscribeRequest {
        request: Some(Request::Open(pb::Open {
            topic: topic.into(),
            group: group.into(),
            max_in_flight: credit,
            member_name: "bench".into(),
            ..Default::default()
        })),
    })
    .await
    .map_err(err)?;
    let mut rx = c
        .subscribe(ReceiverStream::new(rx))
        .await
        .map_err(err)?
        .into_inner();
    match rx.message().await.map_err(err)?.and_then(|m| m.response) {
        Some(Response::Opened(_)) => Ok((tx, rx)),
        other => Err(format!("expected opened, got {other:?}")),
    }
}

pub fn ack(offsets: Vec<u64>) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        request: Some(Request::Ack(pb::Ack { offsets })),
    }
}

/// A new group with `members` members, each with `credit`, reads `total`
/// events from the start of `topic`, acking every Deliveries message at
/// once. Stops at `total` or `limit`; then checks that the group committed
/// everything it acked (with the streams still open).
pub async fn consume_run(
    target: Target,
    group: String,
    members: usize,
    credit: u32,
    total: u64,
    limit: Duration,
) -> Res<Run> {
    let got = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = watch::channel(false);
    let done_tx = Arc::new(done_tx);
    let cpu0 = cpu_now();
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + limit);
    let mut tasks = Vec::new();
    for _ in 0..members {
        let (got, done_tx, mut done_rx, group, target) = (
            got.clone(),
            done_tx.clone(),
            done_rx.clone(),
            group.clone(),
            target.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (tx, mut rx) = open_member(&target, TOPIC, &group, credit).await?;
            let mut last = Instant::now();
            loop {
                let m = tokio::select! {
                    m = rx.message() => m.map_err(err)?,
                    _ = done_rx.wait_for(|d| *d) => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                };
                match m.and_then(|m| m.response) {
                    Some(Response::Deliveries(d)) => {
                        let offsets: Vec<u64> = d
                            .deliveries
                            .iter()
                            .filter_map(|d| d.event.as_ref().map(|e| e.offset))
                            .collect();
                        let n = offsets.len() as u64;
                        tx.send(ack(offsets)).await.map_err(err)?;
                        last = Instant::now();
                        if got.fetch_add(n, Ordering::Relaxed) + n >= total {
                            let _ = done_tx.send(true);
                        }
                    }
                    Some(Response::Error(e)) => {
                        return Err(format!("subscriber error: {} {}", e.code, e.message));
                    }
                    Some(_) => {}
                    None => return Err("the subscribe stream ended".to_string()),
                }
            }
            Ok::<_, String>((last, tx, rx))
        }));
    }
    let mut last = start;
    let mut streams = Vec::new();
    for t in tasks {
        let (l, tx, rx) = t.await.map_err(err)??;
        last = last.max(l);
        streams.push((tx, rx));
    }
    let secs = (last - start).as_secs_f64();
    let cpu = Cpu::between(cpu0, cpu_now(), secs);
    let events = got.load(Ordering::Relaxed);
    // Every delivered event was acked: the group must commit past them.
    let mut c = connect(&target).await?;
    let check = Instant::now() + Duration::from_secs(10);
    loop {
        let g = c
            .describe_group(pb::DescribeGroupRequest {
                topic: TOPIC.into(),
                group: group.clone(),
            })
            .await
            .map_err(err)?
            .into_inner();
        if g.committed_offset >= events {
            break;
        }
        if Instant::now() > check {
            return Err(format!(
                "group {group} committed {} after {events} events were acked",
                g.committed_offset
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(streams);
    Ok(Run {
        events,
        secs,
        cpu,
        ..Default::default()
    })
}
