//! On the JetStream backend a consumer group is a durable pull consumer,
//! and JetStream, not the broker, keeps the group's acks, nack delays and
//! delivery counts: checked on the consumer itself, with a NATS client,
//! while a member acks and nacks through the broker over gRPC. A second
//! broker then takes the group over after the first one stops, and its
//! first delivery comes from where JetStream's ack floor stands. A seek
//! below where a consumer began recreates it there.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use common::*;
use mesh_test_support::eventually;

const WAIT: Duration = Duration::from_secs(20);

/// The group's consumer, as JetStream reports it now.
async fn consumer_info(
    js: &jetstream::Context,
    stream: &str,
    group: &str,
) -> jetstream::consumer::Info {
    let stream = js.get_stream(stream).await.expect("the topic's stream");
    let mut c: PullConsumer = stream
        .get_consumer(group)
        .await
        .expect("the group's consumer");
    c.info().await.expect("consumer info").clone()
}

/// A NATS client of the cluster at `urls`, and the stream of `topic` of a
/// test broker on `dir` (its namespace is the directory's name).
async fn nats_view(urls: &str, dir: &std::path::Path, topic: &str) -> (jetstream::Context, String) {
    let ns: String = dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let first = urls.split(',').next().expect("a server URL");
    let js = jetstream::new(async_nats::connect(first).await.unwrap());
    (js, format!("{ns}-{topic}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_is_a_durable_consumer_that_keeps_acks_and_delivery_counts() {
    let nats = mesh_test_support::nats::shared_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_on(Backend::Jetstream, dir.path(), no_deadlines).await;
    let mut c = b.client().await;
    let (js, stream) = nats_view(&nats.urls(), dir.path(), "orders").await;

    create_topic(&mut c, "orders").await;
    let events = (0..4)
        .map(|i| event(&format!("e{i}"), &format!("key-{i}"), "x"))
        .collect();
    publish(&mut c, "orders", events).await;
    let mut sub = Sub::open(&mut c, "orders", "billing", 10).await;
    let first = sub.take(4, WAIT).await;
    assert_eq!(first.iter().map(offset).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert!(first.iter().all(|d| d.delivery_attempt == 1));

    // JetStream holds the four deliveries: durable, explicit acks, its
    // ack_wait twice the broker's ack deadline.
    let info = consumer_info(&js, &stream, "billing").await;
    assert_eq!(info.config.durable_name.as_deref(), Some("billing"));
    assert_eq!(
        info.config.ack_policy,
        jetstream::consumer::AckPolicy::Explicit
    );
    assert_eq!(info.config.ack_wait, Duration::from_secs(120));
    assert_eq!(info.num_ack_pending, 4, "{info:?}");

    // Acks and a nack through the broker land on the consumer: offset 0
    // acked moves its ack floor; the nacked offset 1 comes back when the
    // nack's delay ends, as JetStream's second delivery of it.
    sub.ack(vec![0, 2]).await;
    sub.nack(vec![1], Duration::from_millis(300), "try again")
        .await;
    let again = sub.take(1, WAIT).await;
    assert_eq!(offset(&again[0]), 1);
    assert_eq!(again[0].delivery_attempt, 2);
    let redelivered = eventually(WAIT, || async {
        let i = consumer_info(&js, &stream, "billing").await;
        i.ack_floor.stream_sequence == 1 && i.num_redelivered == 1 && i.num_ack_pending == 2
    })
    .await;
    let info = consumer_info(&js, &stream, "billing").await;
    assert!(redelivered, "{info:?}");

    // Everything acked: nothing pending, the floor at the last event.
    sub.ack(vec![1, 3]).await;
    let settled = eventually(WAIT, || async {
        let i = consumer_info(&js, &stream, "billing").await;
        i.ack_floor.stream_sequence == 4 && i.num_ack_pending == 0
    })
    .await;
    let info = consumer_info(&js, &stream, "billing").await;
    assert!(settled, "{info:?}");

    // Another broker takes the group over once this one stops: it starts
    // at the new event, nothing acked comes again.
    drop(sub);
    b.stop().await;
    let b2 = TestBroker::start_on(Backend::Jetstream, dir.path(), no_deadlines).await;
    let mut c2 = b2.client().await;
    publish(&mut c2, "orders", vec![event("e4", "key-4", "x")]).await;
    let mut sub = Sub::open(&mut c2, "orders", "billing", 10).await;
    let next = sub.take(1, WAIT).await;
    assert_eq!(offset(&next[0]), 4);
    assert_eq!(next[0].delivery_attempt, 1);
    drop(sub);
    b2.stop().await;
}

/// A reset cannot move a consumer below the sequence it was created at: a
/// group that started at an offset, then seeks below it, gets a new
/// consumer created there, and every event from the new position comes
/// in order, as first deliveries.
#[tokio::test(flavor = "multi_thread")]
async fn a_seek_below_where_the_consumer_began_recreates_it() {
    use mesh_proto::broker::v1::{self as pb, start_position::Position};

    let nats = mesh_test_support::nats::shared_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_on(Backend::Jetstream, dir.path(), no_deadlines).await;
    let mut c = b.client().await;
    let (js, stream) = nats_view(&nats.urls(), dir.path(), "audit").await;

    create_topic(&mut c, "audit").await;
    let events = (0..6)
        .map(|i| event(&format!("a{i}"), &format!("key-{i}"), "x"))
        .collect();
    publish(&mut c, "audit", events).await;

    // The group starts at offset 4: its consumer begins at sequence 5.
    let mut sub = Sub::open_with(
        &mut c,
        open_from("audit", "late", 10, false, Some(Position::Offset(4))),
    )
    .await;
    let d = sub.take(2, WAIT).await;
    assert_eq!(d.iter().map(offset).collect::<Vec<_>>(), [4, 5]);
    sub.ack(vec![4, 5]).await;
    wait_committed(&c, "audit", "late", 6).await;
    let begins = |i: &jetstream::consumer::Info| match i.config.deliver_policy {
        jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence } => start_sequence,
        ref other => panic!("unexpected deliver policy {other:?}"),
    };
    assert_eq!(begins(&consumer_info(&js, &stream, "late").await), 5);

    // Seek to offset 1, below where the consumer began.
    let r = c
        .seek_group(pb::SeekGroupRequest {
            topic: "audit".into(),
            group: "late".into(),
            position: Some(pb::StartPosition {
                position: Some(Position::Offset(1)),
            }),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.applied);
    assert_eq!(
        (r.previous_offset, r.new_offset, r.events_to_redeliver),
        (6, 1, 5)
    );

    let again = sub.take(5, WAIT).await;
    assert_eq!(
        again.iter().map(offset).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(again.iter().all(|d| d.delivery_attempt == 1), "{again:?}");
    assert_eq!(begins(&consumer_info(&js, &stream, "late").await), 2);
    sub.ack(vec![1, 2, 3, 4, 5]).await;
    wait_committed(&c, "audit", "late", 6).await;
    let settled = eventually(WAIT, || async {
        let i = consumer_info(&js, &stream, "late").await;
        i.ack_floor.stream_sequence == 6 && i.num_ack_pending == 0
    })
    .await;
    assert!(settled, "{:?}", consumer_info(&js, &stream, "late").await);
    drop(sub);
    b.stop().await;
}
