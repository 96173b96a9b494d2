//! `--vs-jetstream`, side A: the same three workloads straight on
//! JetStream with async-nats, no broker in between. What the broker's
//! gateway is measured against.
//!
//! - publish: one connection, `send_publish` of 1 KiB payloads with a
//!   message id each (as the broker sets `Nats-Msg-Id`), `in_flight` acks
//!   outstanding.
//! - consume: a durable pull consumer (explicit acks, `max_ack_pending` =
//!   the credit) reads the stream from the start, acking every message.
//! - latency: the broker-bench pacer (`latency::pace`) publishes at a fixed
//!   rate; a pull consumer receives and acks; latencies count from the due
//!   time, as in `latency.rs`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::{
    Client, ServerAddr,
    jetstream::{
        self, Context,
        consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
        message::PublishMessage,
        stream,
    },
};
use bytes::Bytes;
use futures_util::{StreamExt, stream::FuturesUnordered};
use tokio::sync::mpsc;

use mesh_bench::{
    disk::payload,
    stats::{Percentiles, histogram},
};

use crate::{
    Res,
    cpu::{Cpu, cpu_now},
    err,
    latency::{Latency, pace},
    nanos_since,
    stats::Run,
};

/// How long a run may outlive its limit before it counts as stuck.
const GRACE: Duration = Duration::from_secs(30);

/// A new connection to the cluster (`urls` comma-separated) and its
/// JetStream context, with async-nats' defaults.
pub async fn connect(urls: &str) -> Res<(Client, Context)> {
    let addrs = urls
        .split(',')
        .map(|u| u.trim().parse::<ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let client = async_nats::ConnectOptions::new()
        .connect(addrs.as_slice())
        .await
        .map_err(err)?;
    let js = jetstream::new(client.clone());
    Ok((client, js))
}

/// A stream as the broker makes one for a topic: file storage, `replicas`
/// copies, direct gets, the broker's default duplicate window; its
/// subjects are `<name>.>`.
pub async fn create_stream(js: &Context, name: &str, replicas: usize) -> Res<()> {
    let dedupe = mesh_broker::BrokerConfig::default().storage.dedupe_window;
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![format!("{name}.>")],
        num_replicas: replicas,
        storage: stream::StorageType::File,
        allow_direct: true,
        duplicate_window: dedupe,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    })
    .await
    .map_err(err)?;
    Ok(())
}

/// Deletes every stream of the account (the direct runs' streams, and the
/// broker runs' topic streams and buckets), so each run starts on an empty
/// cluster and the disk does not fill up.
pub async fn delete_all_streams(js: &Context) -> Res<()> {
    let mut names = Vec::new();
    let mut list = js.stream_names();
    while let Some(n) = list.next().await {
        names.push(n.map_err(err)?);
    }
    for n in names {
        js.delete_stream(&n).await.map_err(err)?;
    }
    Ok(())
}

/// Publishes 1 KiB messages to `<stream>.e` with up to `in_flight` acks
/// outstanding, until `max_events` are acked or `limit` passes. Per
/// message latency: send to ack.
pub async fn publish_run(
    js: Context,
    stream: &str,
    tag: &str,
    in_flight: usize,
    max_events: u64,
    limit: Duration,
) -> Res<Run> {
    let subject = format!("{stream}.e");
    let data = payload();
    let cpu0 = cpu_now();
    let start = Instant::now();
    let deadline = start + limit;
    let mut pending = FuturesUnordered::new();
    let (mut sent, mut acked, mut last) = (0u64, 0u64, start);
    let mut lat = histogram();
    loop {
        while pending.len() < in_flight && sent < max_events && Instant::now() < deadline {
            let msg = PublishMessage::build()
                .payload(data.clone())
                .message_id(format!("{tag}-{sent}"));
            let ack = js.send_publish(subject.clone(), msg).await.map_err(err)?;
            let at = Instant::now();
            pending.push(async move { (ack.await, at) });
            sent += 1;
        }
        let next = tokio::time::timeout_at((deadline + GRACE).into(), pending.next())
            .await
            .map_err(|_| "direct publish run did not finish in time".to_string())?;
        let Some((ack, at)) = next else { break };
        ack.map_err(err)?;
        acked += 1;
        last = Instant::now();
        lat.saturating_record((last - at).as_micros() as u64);
    }
    let secs = (last - start).as_secs_f64();
    Ok(Run {
        events: acked,
        secs,
        lat: Percentiles::of(&lat),
        cpu: Cpu::between(cpu0, cpu_now(), secs),
    })
}

/// A durable pull consumer on `stream`: explicit acks, from `deliver`,
/// at most `credit` messages unacknowledged.
async fn consumer(
    js: &Context,
    stream: &str,
    durable: &str,
    credit: u32,
    deliver: DeliverPolicy,
) -> Res<PullConsumer> {
    let s = js.get_stream(stream).await.map_err(err)?;
    s.create_consumer(pull::Config {
        durable_name: Some(durable.into()),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: deliver,
        max_ack_pending: credit as i64,
        ..Default::default()
    })
    .await
    .map_err(err)
}

/// A new durable consumer reads `total` messages of `stream` from the
/// start, acking each one; stops at `total` or `limit`. Then checks that
/// the server has every ack (ack floor), as broker-bench checks the
/// group's commit.
pub async fn consume_run(
    js: Context,
    stream: &str,
    credit: u32,
    total: u64,
    limit: Duration,
) -> Res<Run> {
    // The clock starts before the consumer exists, as broker-bench's
    // starts before its member connects and its group is made: both time
    // a new group reading the backlog.
    let cpu0 = cpu_now();
    let start = Instant::now();
    let c = consumer(&js, stream, "bench", credit, DeliverPolicy::All).await?;
    let deadline = tokio::time::Instant::from_std(start + limit);
    let mut msgs = c
        .stream()
        .max_messages_per_batch(credit as usize)
        .messages()
        .await
        .map_err(err)?;
    let (mut got, mut last) = (0u64, start);
    while got < total {
        let m = match tokio::time::timeout_at(deadline, msgs.next()).await {
            Ok(Some(m)) => m.map_err(err)?,
            Ok(None) | Err(_) => break,
        };
        m.ack().await.map_err(err)?;
        got += 1;
        last = Instant::now();
    }
    let secs = (last - start).as_secs_f64();
    let cpu = Cpu::between(cpu0, cpu_now(), secs);
    drop(msgs);
    let check = Instant::now() + Duration::from_secs(10);
    let mut c = c;
    loop {
        let floor = c.info().await.map_err(err)?.ack_floor.stream_sequence;
        if floor >= got {
            break;
        }
        if Instant::now() > check {
            return Err(format!("ack floor {floor} after {got} messages were acked"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Run {
        events: got,
        secs,
        cpu,
        ..Default::default()
    })
}

/// One pull consumer on the (empty) `stream`; the pacer publishes `rate`
/// messages/s for `secs`, each with its due time in its first 8 bytes.
/// Latency = receipt (or publish ack) - due time.
pub async fn latency_run(js: Context, stream: &str, rate: u64, secs: f64) -> Res<Latency> {
    let base = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    let want = (rate as f64 * secs) as u64;
    let c = consumer(&js, stream, "latency", 1000, DeliverPolicy::New).await?;
    let mut msgs = c
        .stream()
        .max_messages_per_batch(1000)
        .messages()
        .await
        .map_err(err)?;
    // One untimed message first, as the broker's side does: the run then
    // times a consumer that is delivering, not its start.
    let warm = js
        .publish(format!("{stream}.e"), Bytes::from_static(b"warm"))
        .await
        .map_err(err)?;
    warm.await.map_err(err)?;
    match tokio::time::timeout(Duration::from_secs(30), msgs.next()).await {
        Ok(Some(m)) => m.map_err(err)?.ack().await.map_err(err)?,
        _ => return Err("the warm-up message did not arrive within 30 s".into()),
    }
    let receiver = tokio::spawn(async move {
        let mut lat = histogram();
        let deadline = tokio::time::Instant::now() + limit + Duration::from_secs(10);
        while lat.len() < want {
            let m = match tokio::time::timeout_at(deadline, msgs.next()).await {
                Ok(Some(m)) => m.map_err(err)?,
                Ok(None) | Err(_) => break,
            };
            let now = nanos_since(base);
            if m.payload.len() >= 8 {
                let due = u64::from_le_bytes(m.payload[..8].try_into().expect("8 bytes"));
                lat.saturating_record(now.saturating_sub(due) / 1000);
            }
            m.ack().await.map_err(err)?;
        }
        Ok::<_, String>(lat)
    });

    let (tx, mut rx) = mpsc::channel::<(u64, Bytes)>(1024);
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let due_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..want.max(1)).map(|_| AtomicU64::new(0)).collect());
    let subject = format!("{stream}.e");
    let publisher = tokio::spawn(async move {
        while let Some((seq, data)) = rx.recv().await {
            let msg = PublishMessage::build()
                .payload(data)
                .message_id(format!("lat-{seq}"));
            let ack = js.send_publish(subject.clone(), msg).await.map_err(err)?;
            let _ = ack_tx.send((seq, ack));
        }
        Ok::<_, String>(())
    });
    let acks = {
        let due_at = due_at.clone();
        tokio::spawn(async move {
            let mut lat = histogram();
            while let Some((seq, ack)) = ack_rx.recv().await {
                ack.await.map_err(err)?;
                let due = due_at[seq as usize].load(Ordering::Relaxed);
                lat.saturating_record(nanos_since(base).saturating_sub(due) / 1000);
            }
            Ok::<_, String>(lat)
        })
    };
    let start = Instant::now();
    let send = move |seq, data| tx.blocking_send((seq, data)).map_err(err);
    let sent = tokio::task::spawn_blocking(move || {
        pace(send, (base, start), (rate, want, limit), &due_at)
    })
    .await
    .map_err(err)??;
    publisher.await.map_err(err)??;
    let publish_lat = acks.await.map_err(err)??;
    let lat = receiver.await.map_err(err)??;
    Ok(Latency {
        sent,
        delivered: lat.len(),
        e2e: Percentiles::of(&lat),
        publish: Percentiles::of(&publish_lat),
    })
}
