//! End-to-end latency at a fixed rate: one publisher, one group member.
//!
//! Latencies count from the time each event was *due* on the publisher's
//! schedule, not from when it left: if the publisher falls behind (a busy
//! runtime, a full stream), the delay counts against every event it held
//! up instead of vanishing from the figures (no coordinated omission).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use mesh_proto::broker::v1::{self as pb, subscribe_response::Response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use mesh_bench::{
    TOPIC,
    disk::payload,
    stats::{Percentiles, histogram},
};

use crate::{
    Res,
    broker::{Target, connect},
    consume::{ack, open_member},
    err, event, nanos_since,
};

/// What one latency run measured.
pub struct Latency {
    /// Events published.
    pub sent: u64,
    /// Events delivered to the member (and acked).
    pub delivered: u64,
    /// Due time to delivery received.
    pub e2e: Percentiles,
    /// Due time to the publish response received.
    pub publish: Percentiles,
}

/// The 1 ms tick at which event `i` is due when sending `rate` events/s:
/// tick k (at start + k ms) sends the events below `k * rate / 1000`
/// (rounded down), so event i goes with the first k where
/// `i + 1 <= k * rate / 1000`.
fn due_tick(i: u64, rate: u64) -> u64 {
    ((i + 1) * 1000).div_ceil(rate)
}

/// Sends `want` events, one per request, on the 1 ms tick schedule of
/// `rate` events/s from `start`, each carrying its due time (nanoseconds
/// since `base`) in the first 8 bytes of its data and in `due_at`. Runs on
/// a blocking-pool thread and sleeps with the OS timer, so ticks are not
/// rounded up to the tokio timer's millisecond. `send(i, data)` hands
/// event `i` to the publisher (the broker's Publish stream, or JetStream
/// directly in `--vs-jetstream`) without waiting for it. Returns the
/// events sent.
pub fn pace(
    mut send: impl FnMut(u64, Bytes) -> Res<()>,
    (base, start): (Instant, Instant),
    (rate, want, limit): (u64, u64, Duration),
    due_at: &[AtomicU64],
) -> Res<u64> {
    let mut payload = payload().to_vec();
    let stop = start + limit + Duration::from_secs(1);
    let mut sent = 0u64;
    let mut tick = 1u64;
    while sent < want {
        let now = Instant::now();
        if now >= stop {
            break;
        }
        let tick_at = start + Duration::from_millis(tick);
        if tick_at > now {
            std::thread::sleep(tick_at - now);
        }
        // Late by more than a tick: catch up with every event due by now.
        let tick_now = tick.max(start.elapsed().as_millis() as u64);
        let due = (tick_now * rate / 1000).min(want);
        while sent < due {
            let at = start + Duration::from_millis(due_tick(sent, rate));
            let at = at.duration_since(base).as_nanos() as u64;
            payload[..8].copy_from_slice(&at.to_le_bytes());
            due_at[sent as usize].store(at, Ordering::Relaxed);
            send(sent, Bytes::from(payload.clone()))?;
            sent += 1;
        }
        tick = tick_now + 1;
    }
    Ok(sent)
}

/// One untimed event (its data shorter than a due time), published and
/// received before the timed run, so the run times a group that is
/// delivering, not its start (on JetStream, the group's consumer is
/// created by its first read). The direct JetStream side does the same.
async fn warm_up(
    c: &mut crate::broker::Client,
    ack_tx: &mpsc::Sender<pb::SubscribeRequest>,
    sub_rx: &mut tonic::Streaming<pb::SubscribeResponse>,
) -> Res<()> {
    c.publish_unary(pb::PublishRequest {
        sequence: 0,
        topic: TOPIC.into(),
        events: vec![event("warm-up".into(), Bytes::from_static(b"warm"))],
    })
    .await
    .map_err(err)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = tokio::select! {
            m = sub_rx.message() => m.map_err(err)?,
            _ = tokio::time::sleep_until(deadline) => None,
        };
        match m.and_then(|m| m.response) {
            Some(Response::Deliveries(d)) => {
                let offsets = d
                    .deliveries
                    .iter()
                    .filter_map(|d| d.event.as_ref())
                    .map(|e| e.offset);
                ack_tx.send(ack(offsets.collect())).await.map_err(err)?;
                return Ok(());
            }
            Some(_) => {}
            None => return Err("the warm-up event was not delivered within 30 s".into()),
        }
    }
}

/// One member subscribes; one publisher sends `rate` events/s, one event
/// per request, for `secs`. Latency = delivery time - due time (carried
/// in the data). All in one process, so both use the same clock.
pub async fn latency_run(target: Target, rate: u64, secs: f64) -> Res<Latency> {
    let base = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    let want = (rate as f64 * secs) as u64;
    let (ack_tx, mut sub_rx) = open_member(&target, TOPIC, "latency", 1000).await?;
    let mut c = connect(&target).await?;
    warm_up(&mut c, &ack_tx, &mut sub_rx).await?;
    let receiver = tokio::spawn(async move {
        let mut lat = histogram();
        let deadline = tokio::time::Instant::now() + limit + Duration::from_secs(10);
        while lat.len() < want {
            let m = tokio::select! {
                m = sub_rx.message() => m.map_err(err)?,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            if let Some(Response::Deliveries(d)) = m.and_then(|m| m.response) {
                let now = nanos_since(base);
                let mut offsets = Vec::with_capacity(d.deliveries.len());
                for d in &d.deliveries {
                    let Some(e) = &d.event else { continue };
                    offsets.push(e.offset);
                    if let Some(ev) = &e.event
                        && ev.data.len() >= 8
                    {
                        let due = u64::from_le_bytes(ev.data[..8].try_into().expect("8 bytes"));
                        lat.saturating_record(now.saturating_sub(due) / 1000);
                    }
                }
                ack_tx.send(ack(offsets)).await.map_err(err)?;
            }
        }
        Ok::<_, String>((lat, ack_tx, sub_rx))
    });

    let (tx, rx) = mpsc::channel::<pb::PublishRequest>(1024);
    let mut answers = c
        .publish(ReceiverStream::new(rx))
        .await
        .map_err(err)?
        .into_inner();
    let due_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..want.max(1)).map(|_| AtomicU64::new(0)).collect());
    let acks = {
        let due_at = due_at.clone();
        tokio::spawn(async move {
            let mut lat = histogram();
            while let Some(r) = answers.message().await.map_err(err)? {
                if let Some(e) = r.error {
                    return Err(format!("publish failed: {} {}", e.code, e.message));
                }
                let due = due_at[r.sequence as usize].load(Ordering::Relaxed);
                lat.saturating_record(nanos_since(base).saturating_sub(due) / 1000);
            }
            Ok::<_, String>(lat)
        })
    };
    let start = Instant::now();
    let send = move |sequence, data| {
        let req = pb::PublishRequest {
            sequence,
            topic: TOPIC.into(),
            events: vec![event(format!("lat-{sequence}"), data)],
        };
        tx.blocking_send(req).map_err(err)
    };
    let sent = tokio::task::spawn_blocking(move || {
        pace(send, (base, start), (rate, want, limit), &due_at)
    })
    .await
    .map_err(err)??;
    let publish_lat = acks.await.map_err(err)??;
    let (lat, ack_tx, sub_rx) = receiver.await.map_err(err)??;
    drop((ack_tx, sub_rx));
    Ok(Latency {
        sent,
        delivered: lat.len(),
        e2e: Percentiles::of(&lat),
        publish: Percentiles::of(&publish_lat),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_ticks_match_what_each_tick_sends() {
        for rate in [1, 999, 1000, 3000, 5000, 12_345] {
            for tick in 1..50u64 {
                let (from, to) = ((tick - 1) * rate / 1000, tick * rate / 1000);
                for i in from..to {
                    assert_eq!(due_tick(i, rate), tick, "rate {rate} event {i}");
                }
            }
        }
    }
}
