//! Prometheus metrics of the broker binary, scraped over real HTTP: the
//! counters move by exactly the workload, a stalled group's lag gauge rises
//! and falls once it acks, connection gauges follow the streams, and a
//! metrics port that is taken stops the broker naming the key.

mod common;

use std::{
    io::Read,
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{BrokerProcess, Client, Sub, connect, event, offset, publish, unused_port};
use mesh_proto::broker::v1 as pb;
use mesh_test_support::prometheus::{Sample, scrape, value};
use tokio_stream::wrappers::ReceiverStream;

/// The broker's metrics address: a port outside the ephemeral range, which
/// nothing else takes between the check and the broker's bind (nor between
/// the two brokers of the restart test).
fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], unused_port()))
}

/// Scrapes until `f` holds, for at most 30 s; the last scrape either way.
/// `f` checks everything the caller then asserts on that scrape: counters
/// and gauges are updated apart from the RPC answers (gauges on a timer).
async fn until(addr: SocketAddr, f: impl Fn(&[Sample]) -> bool) -> (bool, Vec<Sample>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        if let Ok(s) = scrape(addr) {
            if f(&s) {
                return (true, s);
            }
            last = s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (false, last)
}

fn dump(samples: &[Sample], topic: &str) -> String {
    samples
        .iter()
        .filter(|(n, l, _)| l.get("topic").is_none_or(|t| t == topic) && !n.ends_with("_bucket"))
        .map(|(n, l, v)| format!("{n}{l:?} {v}\n"))
        .collect()
}

async fn create_topic(c: &mut Client, name: &str, attempts: Option<u32>) {
    c.create_topic(pb::CreateTopicRequest {
        name: name.into(),
        max_delivery_attempts: attempts,
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_a_known_workload_and_a_stalled_groups_lag_rises_then_falls() {
    let dir = tempfile::tempdir().unwrap();
    let maddr = free_addr();
    let listen = maddr.to_string();
    let broker = BrokerProcess::spawn(
        dir.path(),
        &[
            ("BROKER__METRICS_LISTEN", &listen),
            ("BROKER__DELIVERY__LAG_REPORT_INTERVAL_MS", "100"),
            // The stalled member must not lose its events to a deadline.
            ("BROKER__DELIVERY__ACK_DEADLINE_MS", "60000"),
            ("BROKER__DELIVERY__MIN_BACKOFF_MS", "20"),
        ],
    );
    let (up, _) = until(maddr, |_| true).await;
    assert!(up, "no metrics endpoint on {maddr}");
    let mut c = connect(broker.addr).await.unwrap();
    let (t, g) = ("metered", "billing");
    create_topic(&mut c, t, None).await;
    let before = scrape(maddr).unwrap();
    let base = |name: &str| value(&before, name, &[("topic", t)]);
    assert_eq!(base("mesh_broker_events_published_total"), 0.0);
    // This broker runs with auth = "none" (the harness's default): every
    // scrape says so.
    assert_eq!(value(&before, "mesh_broker_auth_disabled", &[]), 1.0);

    // 30 events in two unary requests, 10 more on a Publish stream.
    let ev = |i: usize| event(&format!("e{i}"), &format!("k{i}"), "{}");
    publish(&mut c, t, (0..15).map(ev).collect()).await;
    publish(&mut c, t, (15..30).map(ev).collect()).await;
    let (req_tx, req_rx) = tokio::sync::mpsc::channel(4);
    let mut responses = c
        .publish(ReceiverStream::new(req_rx))
        .await
        .unwrap()
        .into_inner();
    req_tx
        .send(pb::PublishRequest {
            sequence: 1,
            topic: t.into(),
            events: (30..40).map(ev).collect(),
        })
        .await
        .unwrap();
    let r = responses.message().await.unwrap().unwrap();
    assert!(r.error.is_none(), "{r:?}");
    // A duplicate id stores nothing and is counted apart.
    publish(&mut c, t, vec![ev(0)]).await;
    let n = 40.0;

    let tl = [("topic", t)];
    let (ok, s) = until(maddr, |s| {
        value(s, "mesh_broker_connected_publishers", &[]) == 1.0
            && value(s, "mesh_broker_topic_bytes", &tl) > 0.0
            && value(s, "mesh_broker_events_published_total", &tl) == n
            && value(s, "mesh_broker_events_duplicate_total", &tl) == 1.0
            && value(s, "mesh_broker_append_duration_seconds_count", &tl)
                - base("mesh_broker_append_duration_seconds_count")
                == 4.0
            && value(s, "mesh_broker_fsync_duration_seconds_count", &tl) >= 1.0
            && value(
                s,
                "mesh_broker_append_duration_seconds_bucket",
                &[("topic", t), ("le", "+Inf")],
            ) >= 4.0
    })
    .await;
    assert!(ok, "publisher gauge or topic bytes:\n{}", dump(&s, t));
    assert_eq!(value(&s, "mesh_broker_events_published_total", &tl), n);
    assert_eq!(value(&s, "mesh_broker_events_duplicate_total", &tl), 1.0);
    // Four requests: two unary, one streamed, the duplicate.
    assert_eq!(
        value(&s, "mesh_broker_append_duration_seconds_count", &tl)
            - base("mesh_broker_append_duration_seconds_count"),
        4.0
    );
    assert!(value(&s, "mesh_broker_fsync_duration_seconds_count", &tl) >= 1.0);
    assert!(
        value(
            &s,
            "mesh_broker_append_duration_seconds_bucket",
            &[("topic", t), ("le", "+Inf")]
        ) >= 4.0
    );
    drop(req_tx);
    drop(responses);
    let (ok, s) = until(maddr, |s| {
        value(s, "mesh_broker_connected_publishers", &[]) == 0.0
    })
    .await;
    assert!(
        ok,
        "publisher gauge after the stream ended:\n{}",
        dump(&s, t)
    );

    // A member takes everything and stalls: the lag is all 40 events.
    let mut sub = Sub::open(&mut c, t, g, 100).await;
    let got = sub.take(40, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 40);
    let gl = [("topic", t), ("group", g)];
    let (ok, s) = until(maddr, |s| {
        value(s, "mesh_broker_group_lag_events", &gl) == n
            && value(s, "mesh_broker_group_oldest_unacked_age_seconds", &gl) > 0.0
            && value(s, "mesh_broker_connected_subscribers", &[]) == 1.0
            && value(s, "mesh_broker_events_delivered_total", &gl) == n
    })
    .await;
    assert!(ok, "lag of the stalled group:\n{}", dump(&s, t));
    assert_eq!(value(&s, "mesh_broker_connected_subscribers", &[]), 1.0);
    assert_eq!(value(&s, "mesh_broker_events_delivered_total", &gl), n);
    assert_eq!(value(&s, "mesh_broker_events_acked_total", &gl), 0.0);

    // It resumes: acks half, then the rest; the lag falls to 0.
    let offsets: Vec<u64> = got.iter().map(offset).collect();
    sub.ack(offsets[..20].to_vec()).await;
    let (ok, s) = until(maddr, |s| {
        value(s, "mesh_broker_group_lag_events", &gl) == 20.0
    })
    .await;
    assert!(ok, "lag after 20 acks:\n{}", dump(&s, t));
    sub.ack(offsets[20..].to_vec()).await;
    let (ok, s) = until(maddr, |s| {
        value(s, "mesh_broker_group_lag_events", &gl) == 0.0
            && value(s, "mesh_broker_group_oldest_unacked_age_seconds", &gl) == 0.0
            && value(s, "mesh_broker_events_acked_total", &gl) == n
    })
    .await;
    assert!(ok, "lag after every ack:\n{}", dump(&s, t));
    assert_eq!(value(&s, "mesh_broker_events_delivered_total", &gl), n);
    assert_eq!(value(&s, "mesh_broker_events_acked_total", &gl), n);
    assert_eq!(value(&s, "mesh_broker_events_nacked_total", &gl), 0.0);
    assert_eq!(value(&s, "mesh_broker_events_redelivered_total", &gl), 0.0);
    assert_eq!(
        value(&s, "mesh_broker_events_dead_lettered_total", &gl),
        0.0
    );
    drop(sub);

    // Nack, redelivery and dead-lettering on a topic with 2 attempts.
    let (t2, g2) = ("failing", "workers");
    create_topic(&mut c, t2, Some(2)).await;
    publish(&mut c, t2, vec![event("f0", "k", "{}")]).await;
    let mut sub = Sub::open(&mut c, t2, g2, 10).await;
    for attempt in 1..=2 {
        let d = sub.take(1, Duration::from_secs(10)).await;
        assert_eq!(d.len(), 1, "delivery {attempt}");
        assert_eq!(d[0].delivery_attempt, attempt);
        sub.nack(vec![offset(&d[0])], Duration::ZERO, "no").await;
    }
    let gl2 = [("topic", t2), ("group", g2)];
    let (ok, s) = until(maddr, |s| {
        value(s, "mesh_broker_events_dead_lettered_total", &gl2) == 1.0
            && value(s, "mesh_broker_group_lag_events", &gl2) == 0.0
            && value(s, "mesh_broker_events_delivered_total", &gl2) == 2.0
            && value(s, "mesh_broker_events_nacked_total", &gl2) == 2.0
            && value(s, "mesh_broker_events_redelivered_total", &gl2) == 1.0
    })
    .await;
    assert!(ok, "dead letter counted:\n{}", dump(&s, t2));
    assert_eq!(value(&s, "mesh_broker_events_delivered_total", &gl2), 2.0);
    assert_eq!(value(&s, "mesh_broker_events_nacked_total", &gl2), 2.0);
    assert_eq!(value(&s, "mesh_broker_events_redelivered_total", &gl2), 1.0);
    assert_eq!(value(&s, "mesh_broker_events_acked_total", &gl2), 0.0);
    // The first group is untouched by the second.
    assert_eq!(value(&s, "mesh_broker_events_acked_total", &gl), n);
    drop(sub);
    let (ok, s) = until(maddr, |s| {
        value(s, "mesh_broker_connected_subscribers", &[]) == 0.0
    })
    .await;
    assert!(
        ok,
        "subscriber gauge after the streams ended:\n{}",
        dump(&s, t)
    );
    assert!(broker.sigterm().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_without_members_shows_its_lag_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let maddr = free_addr();
    let listen = maddr.to_string();
    let env = [
        ("BROKER__METRICS_LISTEN", listen.as_str()),
        ("BROKER__DELIVERY__LAG_REPORT_INTERVAL_MS", "100"),
    ];
    let broker = BrokerProcess::spawn(dir.path(), &env);
    let mut c = connect(broker.addr).await.unwrap();
    create_topic(&mut c, "t", None).await;
    publish(
        &mut c,
        "t",
        (0..5).map(|i| event(&format!("a{i}"), "", "x")).collect(),
    )
    .await;
    // The group starts and takes 2 of the 5 events.
    let mut sub = Sub::open(&mut c, "t", "g", 10).await;
    let d = sub.take(5, Duration::from_secs(10)).await;
    sub.ack(d[..2].iter().map(offset).collect()).await;
    common::wait_committed(&c, "t", "g", 2).await;
    drop(sub);
    // Its dispatcher runs on without members and still shows the lag.
    let gl = [("topic", "t"), ("group", "g")];
    let shows_the_lag = |s: &[Sample]| {
        value(s, "mesh_broker_group_lag_events", &gl) == 3.0
            && value(s, "mesh_broker_group_oldest_unacked_age_seconds", &gl) > 0.0
    };
    let (ok, s) = until(maddr, shows_the_lag).await;
    assert!(ok, "lag of the group without members:\n{}", dump(&s, "t"));
    drop(c);
    // (sigterm blocks this thread; the client's connection runs on the other.)
    assert!(broker.sigterm().success());

    // After a restart no dispatcher runs for the group until a member joins.
    let broker = BrokerProcess::spawn(dir.path(), &env);
    let (ok, s) = until(maddr, shows_the_lag).await;
    assert!(ok, "lag of the idle group:\n{}", dump(&s, "t"));
    assert!(broker.sigterm().success());
}

#[test]
fn the_operations_doc_lists_every_metric() {
    let doc = mesh_test_support::doc("docs/operations.md");
    let section = doc.section("## Metrics");
    for name in mesh_broker::metrics::ALL {
        assert!(section.contains(&format!("| `{name}` |")), "{name}");
    }
}

#[test]
fn a_metrics_port_in_use_stops_the_broker_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_broker"))
        .current_dir(dir.path())
        .env("BROKER__LISTEN", "127.0.0.1:0")
        .env("BROKER__AUTH", "none")
        .env("BROKER__DATA_DIR", dir.path().join("data"))
        .env(
            "BROKER__METRICS_LISTEN",
            taken.local_addr().unwrap().to_string(),
        )
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the broker kept running with its metrics port taken");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    assert!(err.contains("metrics_listen"), "{err}");
}
