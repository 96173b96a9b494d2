//! Subscribers that stop reading cannot grow the broker's memory.
//!
//! The broker binary holds a backlog of 1M events of 1 KiB; 16 subscribers
//! open streams and never read them: 8 ephemeral tails, 4 members of a
//! group that never acks and 4 auto-ack members of another group, each on
//! its own connection. The broker's RSS, read from /proc, must level off
//! under a stated bound. A second test fills a small broker-wide budget:
//! the next subscription gets RESOURCE_EXHAUSTED naming the limit, and the
//! paused streams lose nothing once they read again.
//!
//! BENCHMARKS.md's figures come from the first test, run with
//! `MEMORY_TEST_TAILS`, `MEMORY_TEST_NEVER_ACK` and `MEMORY_TEST_AUTO_ACK`
//! (how many subscribers of each kind; 8, 4 and 4 by default) and
//! `MEMORY_TEST_BROKER` (another broker binary, to measure an older one in
//! the same run).

mod common;

use std::{net::SocketAddr, path::Path, time::Duration};

use bytes::Bytes;
use common::{
    BrokerProcess, Client, Sub, TestBroker, connect, create_topic, eventually, offset, publish,
};
use mesh_log::{AppendRecord, FsyncPolicy, LocalStorage, LogConfig, Storage, TopicConfig};
use mesh_proto::broker::v1 as pb;
use prost::Message;

const TOPIC: &str = "backlog";
const EVENTS: u64 = 1_000_000;
const DATA_BYTES: usize = 1024;

/// Stalled subscribers may add at most this much to the broker's RSS
/// (measured: see BENCHMARKS.md, "A broker with readers that stall"). It
/// covers both groups' read-ahead windows (`limits.group_window`, 20,000
/// events each) and 16 stalled streams of a few MiB each; before the outbox
/// was bounded in bytes, one stalled tail alone added about 74 MiB.
const MAX_GROWTH_MIB: u64 = 300;

fn payload(i: u64) -> Bytes {
    let e = mesh_proto::events::v1::Event {
        id: format!("event-{i}"),
        source: "/tests/memory".into(),
        r#type: "test.Backlog".into(),
        // No ordering key: keys would cap what the groups hand out at
        // one event per key.
        data: Bytes::from(vec![b'x'; DATA_BYTES]),
        ..Default::default()
    };
    e.encode_to_vec().into()
}

/// Writes the backlog with the log library directly (the broker is not
/// running yet), which is much faster than publishing it over gRPC.
async fn write_backlog(dir: &Path) {
    let cfg = LogConfig {
        fsync: FsyncPolicy::Interval(Duration::from_secs(1)),
        // No dedupe ids: their window is not what this test measures.
        dedupe_window: Duration::ZERO,
        ..LogConfig::default()
    };
    let log = LocalStorage::open(dir, cfg).unwrap();
    log.create_topic(TOPIC, TopicConfig::default())
        .await
        .unwrap();
    let mut pending = std::collections::VecDeque::new();
    for start in (0..EVENTS).step_by(1000) {
        let batch = (start..start + 1000)
            .map(|i| AppendRecord {
                id: None,
                payload: payload(i),
            })
            .collect();
        pending.push_back(log.submit(TOPIC, batch).await.unwrap());
        if pending.len() >= 32 {
            pending.pop_front().unwrap().await.unwrap();
        }
    }
    for p in pending {
        p.await.unwrap();
    }
    log.close().await;
}

/// The broker binary on the data dir (`MEMORY_TEST_BROKER` may name another
/// build of it, to measure an older broker side by side).
fn spawn_broker(dir: &Path) -> BrokerProcess {
    let bin = std::env::var("MEMORY_TEST_BROKER")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_broker").to_string());
    // The never-acking group must keep its events in flight.
    let env = [("BROKER__DELIVERY__ACK_DEADLINE_MS", "600000")];
    BrokerProcess::spawn_bin(bin.as_ref(), dir, &env)
}

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib / 1024
}

fn open(group: &str, credit: u32, auto_ack: bool) -> pb::SubscribeRequest {
    open_on(TOPIC, group, credit, auto_ack)
}

fn open_on(topic: &str, group: &str, credit: u32, auto_ack: bool) -> pb::SubscribeRequest {
    let earliest = pb::start_position::Position::Earliest(pb::Empty {});
    common::open_from(topic, group, credit, auto_ack, Some(earliest))
}

/// A subscriber on a connection of its own (so that one stalled stream
/// cannot hold back another through a shared connection window) that reads
/// nothing after `opened`.
async fn stalled(addr: SocketAddr, req: pb::SubscribeRequest) -> (Client, Sub) {
    let mut c = connect(addr).await.unwrap();
    let sub = Sub::open_with(&mut c, req).await;
    (c, sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_subscribers_that_never_read_leave_broker_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    write_backlog(dir.path()).await;
    let broker = spawn_broker(dir.path());
    let (addr, pid) = (broker.addr, broker.child.id());
    let mut c = connect(addr).await.unwrap();
    let info = c
        .describe_topic(pb::DescribeTopicRequest { name: TOPIC.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.head_offset, EVENTS);
    let baseline = rss_mib(pid);

    let mut subs = Vec::new();
    let n = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    for _ in 0..n("MEMORY_TEST_TAILS", 8) {
        subs.push(stalled(addr, open("", 10_000, true)).await);
    }
    for _ in 0..n("MEMORY_TEST_NEVER_ACK", 4) {
        subs.push(stalled(addr, open("never-acks", 1000, false)).await);
    }
    for _ in 0..n("MEMORY_TEST_AUTO_ACK", 4) {
        subs.push(stalled(addr, open("auto-ack", 10_000, true)).await);
    }

    // The never-acking group hands out exactly its members' credit.
    let full = n("MEMORY_TEST_NEVER_ACK", 4) == 0
        || eventually(Duration::from_secs(60), || {
            let mut c = c.clone();
            async move {
                common::describe(&mut c, TOPIC, "never-acks")
                    .await
                    .in_flight
                    == 1000 * n("MEMORY_TEST_NEVER_ACK", 4) as u64
            }
        })
        .await;
    assert!(
        full,
        "the never-acking group did not fill its members' credit"
    );

    // Then wait until the broker stops growing: no sample in the last 3 s
    // more than 2 MiB above the one before them. Whatever the broker
    // buffers for the stalled readers is in place by then.
    let mut samples = vec![rss_mib(pid)];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        samples.push(rss_mib(pid));
        let n = samples.len();
        if n > 12 {
            let window = &samples[n - 12..];
            if window.iter().all(|&s| s <= window[0] + 2) {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "broker RSS still growing after 90 s: {samples:?} MiB"
        );
    }
    let peak = *samples.iter().max().unwrap();
    eprintln!(
        "broker RSS: {baseline} MiB with the backlog alone, {peak} MiB peak with 16 stalled subscribers (+{} MiB)",
        peak - baseline
    );
    assert!(
        peak <= baseline + MAX_GROWTH_MIB,
        "16 stalled subscribers grew the broker from {baseline} MiB to {peak} MiB (bound +{MAX_GROWTH_MIB} MiB)"
    );

    // Paused, not dropped: a stalled tail that starts reading gets every
    // event from the start, in order.
    let (_conn, mut tail) = subs.swap_remove(0);
    let mut next = 0u64;
    while next < 20_000 {
        let d = tail.take(1, Duration::from_secs(30)).await;
        assert!(!d.is_empty(), "the tail stopped at offset {next}");
        for d in d {
            assert_eq!(
                offset(&d),
                next,
                "the resumed tail skipped or repeated an event"
            );
            next += 1;
        }
    }
    drop(subs);
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_budget_refuses_new_subscribers_and_paused_ones_resume() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), |c| {
        c.limits.subscriber_buffer_bytes = 64 << 10;
        c.limits.max_buffered_bytes = 128 << 10;
    })
    .await;
    let mut c = broker.client().await;
    create_topic(&mut c, "t").await;
    // Enough to fill both a client's flow-control windows and its stream's
    // share in the broker: 4,000 events of 2 KiB is about 8 MiB.
    let data = "y".repeat(2048);
    for b in 0..40 {
        let events = (0..100)
            .map(|i| common::event(&format!("e-{b}-{i}"), "", &data))
            .collect();
        publish(&mut c, "t", events).await;
    }
    let total = 4000u64;

    // Two tails that never read: together they take the whole budget.
    let mut a = stalled(broker.addr, open_on("t", "", 10_000, true)).await;
    let mut b = stalled(broker.addr, open_on("t", "", 10_000, true)).await;

    // A third is refused once both outboxes are full, naming the limit.
    // (Until then a third is let in, and dropped at once.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let s = loop {
        let mut c = connect(broker.addr).await.unwrap();
        if let Err(s) = Sub::try_open_with(&mut c, open_on("t", "", 10, true)).await {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a third subscriber was never refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("limits.max_buffered_bytes"), "{s:?}");

    // The paused tails lose nothing: each reads every event, in order.
    for sub in [&mut a.1, &mut b.1] {
        let mut next = 0;
        while next < total {
            let d = sub.take(1, Duration::from_secs(30)).await;
            assert!(!d.is_empty(), "a paused tail stopped at offset {next}");
            for d in d {
                assert_eq!(offset(&d), next);
                next += 1;
            }
        }
    }
    // And with the budget free again, a new subscriber is let in.
    let mut c2 = connect(broker.addr).await.unwrap();
    Sub::try_open_with(&mut c2, open_on("t", "", 10, true))
        .await
        .expect("room again once the paused tails have read");
    broker.stop().await;
}
