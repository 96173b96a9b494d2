//! Every bad input gets a precise gRPC status whose message names the
//! offending field, and nothing that was accepted is lost along the way.
//!
//! Most tests run an in-process broker; the configuration tests run the
//! real binary, which must exit with status 2 and name the bad key.

mod common;

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use mesh_broker::BrokerConfig;
use mesh_proto::broker::v1::{
    self as pb, start_position::Position, subscribe_request::Request, subscribe_response::Response,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

// Generous: an upper bound only, for a loaded 2-core machine.
const T: Duration = Duration::from_secs(20);

fn req(seq: u64, topic: &str, events: Vec<mesh_proto::events::v1::Event>) -> pb::PublishRequest {
    pb::PublishRequest {
        sequence: seq,
        topic: topic.into(),
        events,
    }
}

/// Asserts a status: its code, and that its message starts with the field
/// it is about (`field: reason`).
#[track_caller]
fn assert_status(s: &Status, code: Code, field: &str) {
    assert_eq!(s.code(), code, "code of {s:?}");
    assert!(
        s.message().starts_with(&format!("{field}:")),
        "message of {s:?} should name `{field}`"
    );
}

/// The same for an in-stream `Error` message.
#[track_caller]
fn assert_error(e: &pb::Error, code: pb::Code, field: &str) {
    assert_eq!(e.code(), code, "code of {e:?}");
    assert!(
        e.message.starts_with(&format!("{field}:")),
        "message of {e:?} should name `{field}`"
    );
}

/// A Publish stream: requests in through `tx`, answers out of `rx`.
struct PubStream {
    tx: mpsc::Sender<pb::PublishRequest>,
    rx: Streaming<pb::PublishResponse>,
}

impl PubStream {
    async fn open(c: &mut Client) -> PubStream {
        let (tx, rx) = mpsc::channel(1024);
        let rx = c
            .publish(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        PubStream { tx, rx }
    }

    async fn send(&self, r: pb::PublishRequest) {
        self.tx.send(r).await.unwrap();
    }

    async fn answer(&mut self) -> pb::PublishResponse {
        tokio::time::timeout(T, self.rx.message())
            .await
            .expect("an answer in time")
            .expect("the stream goes on")
            .expect("the stream is not over")
    }

    /// Sends one request and waits for its answer.
    async fn call(&mut self, r: pb::PublishRequest) -> pb::PublishResponse {
        let seq = r.sequence;
        self.send(r).await;
        let a = self.answer().await;
        assert_eq!(a.sequence, seq);
        a
    }
}

async fn head(c: &mut Client, topic: &str) -> u64 {
    c.describe_topic(pb::DescribeTopicRequest { name: topic.into() })
        .await
        .unwrap()
        .into_inner()
        .head_offset
}

/// Opens a Subscribe stream whose first request is `first`, and returns
/// the status the broker refused it with.
async fn refused_subscribe(c: &mut Client, first: pb::SubscribeRequest) -> Status {
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.unwrap();
    let r = tokio::time::timeout(T, c.subscribe(ReceiverStream::new(rx)))
        .await
        .expect("answered in time");
    match r {
        Err(s) => s,
        Ok(resp) => {
            let mut rx = resp.into_inner();
            match tokio::time::timeout(T, rx.message())
                .await
                .expect("in time")
            {
                Err(s) => s,
                Ok(m) => panic!("the subscription was accepted: {m:?}"),
            }
        }
    }
}

fn open(o: pb::Open) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        request: Some(Request::Open(o)),
    }
}

fn ack_req(offsets: Vec<u64>) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        request: Some(Request::Ack(pb::Ack { offsets })),
    }
}

/// Next in-stream error on a subscription, skipping everything else.
async fn next_error(s: &mut Sub) -> pb::Error {
    let deadline = Instant::now() + T;
    for _ in 0..1000 {
        let left = deadline.saturating_duration_since(Instant::now());
        match s.next(left).await {
            Some(Response::Error(e)) => return e,
            Some(_) => {}
            None => break,
        }
    }
    panic!("no in-stream error within {T:?}")
}

/// A broker (test settings, then `tweak`) with a topic `orders`, and a
/// client of it.
async fn with_orders(dir: &Path, tweak: impl FnOnce(&mut BrokerConfig)) -> (TestBroker, Client) {
    let b = TestBroker::start(dir, tweak).await;
    let mut c = b.client().await;
    create_topic(&mut c, "orders").await;
    (b, c)
}

/// A broker with small limits (events up to 1 KiB, messages up to 64 KiB,
/// `max_batch_events` per request) and a topic `orders`; a client of it.
async fn small_limits(dir: &Path, max_batch_events: usize) -> (TestBroker, Client) {
    with_orders(dir, |c| {
        c.limits.max_event_bytes = 1024;
        c.limits.max_message_bytes = 64 << 10;
        c.limits.max_batch_events = max_batch_events;
    })
    .await
}

/// CreateTopic of `name`, which must be refused: the status.
async fn refused_create_topic(c: &mut Client, name: &str) -> Status {
    c.create_topic(pb::CreateTopicRequest {
        name: name.into(),
        ..Default::default()
    })
    .await
    .unwrap_err()
}

/// DeleteGroup of `group` in topic `orders`.
async fn delete_group(c: &mut Client, group: &str) -> Result<(), Status> {
    c.delete_group(pb::DeleteGroupRequest {
        topic: "orders".into(),
        group: group.into(),
    })
    .await
    .map(drop)
}

/// SeekGroup of group `g` in topic `orders`, for seeks that must be refused.
async fn seek_group(c: &mut Client, position: Option<pb::StartPosition>) -> Result<(), Status> {
    c.seek_group(pb::SeekGroupRequest {
        topic: "orders".into(),
        group: "g".into(),
        position,
        dry_run: false,
    })
    .await
    .map(drop)
}

// ---------------------------------------------------------------- publish

#[tokio::test]
async fn publish_stream_reports_bad_requests_in_stream_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (b, mut c) = small_limits(dir.path(), 3).await;
    let mut s = PubStream::open(&mut c).await;

    let big = event("big", "k", &"x".repeat(2000));
    let no_id = event("", "k", "no id");
    let ok = |n: &str| event(n, "k", n);
    // (request, expected code, field the message must name)
    let cases = [
        (
            req(1, "bad/topic", vec![ok("a")]),
            pb::Code::InvalidArgument,
            "topic",
        ),
        (
            req(2, "", vec![ok("a")]),
            pb::Code::InvalidArgument,
            "topic",
        ),
        (
            req(3, "no-such-topic", vec![ok("a")]),
            pb::Code::NotFound,
            "topic",
        ),
        (
            req(4, "orders", vec![ok("a"), big.clone()]),
            pb::Code::InvalidArgument,
            "events[1]",
        ),
        (
            req(5, "orders", vec![]),
            pb::Code::InvalidArgument,
            "events",
        ),
        (
            req(6, "orders", vec![ok("a"), ok("b"), ok("c"), ok("d")]),
            pb::Code::InvalidArgument,
            "events",
        ),
        (
            req(7, "orders", vec![ok("a"), ok("b"), no_id.clone()]),
            pb::Code::InvalidArgument,
            "events[2].id",
        ),
    ];
    for (i, (r, code, field)) in cases.into_iter().enumerate() {
        let a = s.call(r).await;
        let e = a
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("case {i}: {a:?}"));
        assert_error(e, code, field);
        assert!(a.results.is_empty(), "case {i}: nothing stored: {a:?}");
        // The stream goes on: a valid request right after succeeds.
        let seq = 100 + i as u64;
        let good = s
            .call(req(seq, "orders", vec![ok(&format!("good-{i}"))]))
            .await;
        assert!(good.error.is_none(), "case {i}: {good:?}");
        assert_eq!(good.results.len(), 1);
        assert_eq!(good.results[0].offset, i as u64, "case {i}");
    }
    // Nothing of the refused requests was stored, nor any topic created.
    assert_eq!(head(&mut c, "orders").await, 7);
    let topics = c.list_topics(pb::ListTopicsRequest {}).await.unwrap();
    let names: Vec<_> = topics
        .into_inner()
        .topics
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, vec!["orders".to_string()]);

    // Many requests in flight, bad ones among them: each gets its own
    // answer, and exactly the good ones are stored.
    for seq in 200..260u64 {
        let r = if seq % 3 == 0 {
            req(seq, "orders", vec![big.clone()])
        } else {
            req(seq, "orders", vec![ok(&format!("many-{seq}"))])
        };
        s.send(r).await;
    }
    let mut answers = BTreeMap::new();
    for _ in 200..260u64 {
        let a = s.answer().await;
        answers.insert(a.sequence, a);
    }
    assert_eq!(answers.len(), 60);
    for (seq, a) in &answers {
        if seq % 3 == 0 {
            assert_error(
                a.error.as_ref().unwrap(),
                pb::Code::InvalidArgument,
                "events[0]",
            );
        } else {
            assert!(a.error.is_none(), "{a:?}");
        }
    }
    assert_eq!(head(&mut c, "orders").await, 7 + 40);
    drop(s);
    b.stop().await;
}

#[tokio::test]
async fn publish_unary_refuses_bad_requests_with_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let (b, mut c) = small_limits(dir.path(), 2).await;
    let ok = |n: &str| event(n, "k", n);
    let cases = [
        (
            req(1, "bad topic", vec![ok("a")]),
            Code::InvalidArgument,
            "topic",
        ),
        (req(2, "..", vec![ok("a")]), Code::InvalidArgument, "topic"),
        (req(3, "missing", vec![ok("a")]), Code::NotFound, "topic"),
        (
            req(4, "orders", vec![event("big", "k", &"x".repeat(2000))]),
            Code::InvalidArgument,
            "events[0]",
        ),
        (req(5, "orders", vec![]), Code::InvalidArgument, "events"),
        (
            req(6, "orders", vec![ok("a"), ok("b"), ok("c")]),
            Code::InvalidArgument,
            "events",
        ),
        (
            req(7, "orders", vec![ok("a"), event("", "k", "x")]),
            Code::InvalidArgument,
            "events[1].id",
        ),
    ];
    for (r, code, field) in cases {
        let s = c.publish_unary(r).await.unwrap_err();
        assert_status(&s, code, field);
    }
    assert_eq!(head(&mut c, "orders").await, 0, "nothing was stored");
    publish(&mut c, "orders", vec![ok("fine")]).await;
    assert_eq!(head(&mut c, "orders").await, 1);
    b.stop().await;
}

#[tokio::test]
async fn unknown_topics_are_created_only_when_auto_create_is_on() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path(), |c| c.auto_create_topics = true).await;
    let mut c = b.client().await;
    // Unary, stream and subscribe each create their topic.
    publish(&mut c, "auto-unary", vec![event("a", "k", "1")]).await;
    let mut s = PubStream::open(&mut c).await;
    let a = s
        .call(req(1, "auto-stream", vec![event("b", "k", "2")]))
        .await;
    assert!(a.error.is_none(), "{a:?}");
    let sub = Sub::open(&mut c, "auto-sub", "g", 10).await;
    assert_eq!(sub.opened.topic, "auto-sub");
    // A bad name is still refused, not created.
    let e = s.call(req(2, "bad/name", vec![event("c", "k", "3")])).await;
    assert_error(
        e.error.as_ref().unwrap(),
        pb::Code::InvalidArgument,
        "topic",
    );
    for t in ["auto-unary", "auto-stream", "auto-sub"] {
        let info = c
            .describe_topic(pb::DescribeTopicRequest { name: t.into() })
            .await
            .unwrap_or_else(|e| panic!("{t} was created: {e}"))
            .into_inner();
        assert_eq!(info.head_offset, u64::from(t != "auto-sub"), "{t}");
    }
    let n = c
        .list_topics(pb::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner()
        .topics
        .len();
    assert_eq!(n, 3);
    drop((s, sub));
    b.stop().await;
}

#[tokio::test]
async fn a_publish_stream_dropped_mid_batch_stores_whole_requests_only() {
    const REQUESTS: u64 = 200;
    const PER: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let (b, mut c) = with_orders(dir.path(), |_| {}).await;
    for round in 0..3u64 {
        let mut c2 = b.client().await; // its own connection, dropped with it
        let s = PubStream::open(&mut c2).await;
        for r in 0..REQUESTS {
            let events = (0..PER)
                .map(|i| event(&format!("r{round}-{r}-{i}"), &format!("k{i}"), "x"))
                .collect();
            s.send(req(r, "orders", events)).await;
        }
        // Gone without reading a single answer or half-closing.
        drop(s);
        drop(c2);
    }
    // The broker keeps serving ...
    publish(&mut c, "orders", vec![event("after", "k", "after")]).await;
    // ... and once the head is stable, each request is all there or absent.
    let mut last = u64::MAX;
    let mut stable = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    for _ in 0..100 {
        let h = head(&mut c, "orders").await;
        if h == last {
            stable = true;
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        last = h;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(stable, "the head settled");
    let h = head(&mut c, "orders").await;
    let mut tail = Sub::open_with(
        &mut c,
        open(pb::Open {
            topic: "orders".into(),
            auto_ack: true,
            max_in_flight: 1000,
            ..Default::default()
        }),
    )
    .await;
    let got = tail.take(h as usize, Duration::from_secs(20)).await;
    assert_eq!(got.len() as u64, h);
    let mut per_request: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for d in &got {
        let id = id(d);
        if id == "after" {
            continue;
        }
        let (req, i) = id.rsplit_once('-').unwrap();
        per_request
            .entry(req.to_string())
            .or_default()
            .push(i.parse().unwrap());
    }
    for (r, idx) in &per_request {
        assert_eq!(
            idx,
            &(0..PER).collect::<Vec<_>>(),
            "request {r} was stored partially or out of order"
        );
    }
    println!(
        "{} of {} requests of the dropped streams were stored",
        per_request.len(),
        3 * REQUESTS
    );
    drop(tail);
    b.stop().await;
}

// -------------------------------------------------------------- subscribe

#[tokio::test]
async fn subscribe_refuses_bad_opens_with_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let (b, mut c) = with_orders(dir.path(), |c| c.limits.max_credit = 100).await;
    publish(
        &mut c,
        "orders",
        vec![event("a", "k", "1"), event("b", "k", "2")],
    )
    .await;
    let o = |topic: &str, group: &str| pb::Open {
        topic: topic.into(),
        group: group.into(),
        ..Default::default()
    };
    let beyond = Some(pb::StartPosition {
        position: Some(Position::Offset(1000)),
    });
    let cases = [
        (ack_req(vec![0]), Code::InvalidArgument, "open"),
        (
            pb::SubscribeRequest { request: None },
            Code::InvalidArgument,
            "open",
        ),
        (
            open(o("bad/topic", "g")),
            Code::InvalidArgument,
            "open.topic",
        ),
        (
            open(o("orders", "bad group")),
            Code::InvalidArgument,
            "open.group",
        ),
        (open(o("missing", "g")), Code::NotFound, "open.topic"),
        (open(o("orders", "")), Code::InvalidArgument, "open.group"),
        (
            open(pb::Open {
                max_in_flight: 101,
                ..o("orders", "g")
            }),
            Code::InvalidArgument,
            "open.max_in_flight",
        ),
        (
            open(pb::Open {
                start: beyond,
                ..o("orders", "fresh")
            }),
            Code::InvalidArgument,
            "open.start.offset",
        ),
        (
            open(pb::Open {
                start: beyond,
                auto_ack: true,
                ..o("orders", "")
            }),
            Code::InvalidArgument,
            "open.start.offset",
        ),
        (
            open(pb::Open {
                start: Some(pb::StartPosition {
                    position: Some(Position::Time(prost_types::Timestamp {
                        seconds: 0,
                        nanos: -1,
                    })),
                }),
                ..o("orders", "g")
            }),
            Code::InvalidArgument,
            "open.start.time",
        ),
    ];
    for (first, code, field) in cases {
        let s = refused_subscribe(&mut c, first.clone()).await;
        assert_status(&s, code, field);
    }
    // A refused group open left no group behind.
    let s = try_describe(&mut c, "orders", "fresh").await.unwrap_err();
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    // The broker still serves, at the limit exactly.
    let mut sub = Sub::open(&mut c, "orders", "g", 100).await;
    assert_eq!(sub.take(2, T).await.len(), 2);
    drop(sub);
    b.stop().await;
}

#[tokio::test]
async fn a_second_open_on_a_stream_is_a_failed_precondition() {
    let dir = tempfile::tempdir().unwrap();
    let (b, mut c) = with_orders(dir.path(), |_| {}).await;
    // A group member, and an ephemeral tail.
    for group in ["g", ""] {
        let mut sub = Sub::open_with(
            &mut c,
            open(pb::Open {
                topic: "orders".into(),
                group: group.into(),
                auto_ack: group.is_empty(),
                ..Default::default()
            }),
        )
        .await;
        sub.tx.send(open_req("orders", "g", 10)).await.unwrap();
        let deadline = Instant::now() + T;
        let status = loop {
            assert!(Instant::now() < deadline, "no answer to the second open");
            match tokio::time::timeout(T, sub.rx.message())
                .await
                .expect("in time")
            {
                Ok(Some(_)) => continue, // caught-up, heartbeat
                Ok(None) => panic!("the stream ended without a status"),
                Err(s) => break s,
            }
        };
        assert_status(&status, Code::FailedPrecondition, "open");
    }
    // The group is not left with a phantom member.
    wait_group(&c, "orders", "g", "a phantom member is left", |i| {
        i.members.is_empty()
    })
    .await;
    b.stop().await;
}

#[tokio::test]
async fn bad_acks_get_in_stream_errors_and_harm_no_other_member() {
    let dir = tempfile::tempdir().unwrap();
    // It asserts no redelivery and no disconnect: neither may come from a
    // deadline passing while a slow machine runs the test.
    let (b, mut c) = with_orders(dir.path(), no_deadlines).await;
    publish(
        &mut c,
        "orders",
        vec![event("a", "k1", "1"), event("b", "k2", "2")],
    )
    .await;
    let mut a = Sub::open(&mut c, "orders", "g", 1).await;
    let da = a.take(1, T).await;
    assert_eq!(da.iter().map(offset).collect::<Vec<_>>(), vec![0]);
    let mut b2 = Sub::open(&mut c, "orders", "g", 1).await;
    let db = b2.take(1, T).await;
    assert_eq!(db.iter().map(offset).collect::<Vec<_>>(), vec![1]);

    // Never delivered.
    a.tx.send(ack_req(vec![99])).await.unwrap();
    let e = next_error(&mut a).await;
    assert_eq!(e.code(), pb::Code::FailedPrecondition, "{e:?}");
    assert!(e.message.contains("offset 99"), "{e:?}");
    // Delivered, but to the other member.
    a.tx.send(ack_req(vec![1])).await.unwrap();
    let e = next_error(&mut a).await;
    assert_eq!(e.code(), pb::Code::FailedPrecondition, "{e:?}");
    assert!(e.message.contains("offset 1"), "{e:?}");
    // Nack of an offset not held: the same.
    a.nack(vec![1], Duration::ZERO, "not mine").await;
    let e = next_error(&mut a).await;
    assert_eq!(e.code(), pb::Code::FailedPrecondition, "{e:?}");
    // A nack of its own delivery with a negative delay is refused as a
    // whole: in-stream, naming the field, and the delivery stays held.
    a.tx.send(pb::SubscribeRequest {
        request: Some(Request::Nack(pb::Nack {
            offsets: vec![0],
            delay: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            reason: "bad delay".into(),
        })),
    })
    .await
    .unwrap();
    assert_error(
        &next_error(&mut a).await,
        pb::Code::InvalidArgument,
        "nack.delay",
    );
    // So is a request with nothing in it.
    a.tx.send(pb::SubscribeRequest { request: None })
        .await
        .unwrap();
    assert_error(
        &next_error(&mut a).await,
        pb::Code::InvalidArgument,
        "request",
    );

    // Both streams go on: each acks its own, and the group commits both.
    b2.ack(vec![1]).await;
    a.ack(vec![0]).await;
    wait_group(&c, "orders", "g", "both acks counted", |i| {
        i.committed_offset == 2
    })
    .await;
    // Both members still receive (one new event each: credit 1 apiece).
    publish(
        &mut c,
        "orders",
        vec![event("c", "k3", "3"), event("d", "k4", "4")],
    )
    .await;
    let (ma, mb) = (a.take(1, T).await, b2.take(1, T).await);
    assert_eq!((ma.len(), mb.len()), (1, 1), "{ma:?} {mb:?}");
    let info = describe(&mut c, "orders", "g").await;
    assert_eq!(info.members.len(), 2, "nobody was disconnected: {info:?}");
    assert_eq!(info.redelivered, 0, "{info:?}");
    b.stop().await;
}

#[tokio::test]
async fn subscribers_past_the_limit_are_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let (b, mut c) = with_orders(dir.path(), |c| c.limits.max_subscribers = 2).await;
    let s1 = Sub::open(&mut c, "orders", "g1", 10).await;
    let s2 = Sub::open_with(
        &mut c,
        open(pb::Open {
            topic: "orders".into(),
            auto_ack: true,
            ..Default::default()
        }),
    )
    .await;
    for _ in 0..3 {
        let s = refused_subscribe(&mut c, open_req("orders", "g2", 10)).await;
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("limits.max_subscribers"), "{s:?}");
    }
    // A slot frees up when a subscriber leaves.
    drop(s1);
    let mut reopened = None;
    let deadline = Instant::now() + T;
    for _ in 0..100 {
        if Instant::now() > deadline {
            break;
        }
        let (tx, rx) = mpsc::channel(8);
        tx.send(open_req("orders", "g2", 10)).await.unwrap();
        match c.subscribe(ReceiverStream::new(rx)).await {
            Ok(r) => {
                reopened = Some((tx, r.into_inner()));
                break;
            }
            Err(s) => assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reopened.is_some(),
        "a slot came free after a subscriber left"
    );
    drop((s2, reopened));
    b.stop().await;
}

// ------------------------------------------------------------------ admin

#[tokio::test]
async fn admin_errors_have_precise_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (b, mut c) = with_orders(dir.path(), |_| {}).await;

    let s = refused_create_topic(&mut c, "orders").await;
    assert_eq!(s.code(), Code::AlreadyExists, "{s:?}");
    assert!(s.message().contains("orders"), "{s:?}");
    let s = refused_create_topic(&mut c, "bad/name").await;
    assert_status(&s, Code::InvalidArgument, "name");

    let s = try_describe(&mut c, "orders", "nobody").await.unwrap_err();
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    assert!(s.message().contains("nobody"), "{s:?}");
    let s = try_describe(&mut c, "orders", "bad group")
        .await
        .unwrap_err();
    assert_status(&s, Code::InvalidArgument, "group");

    for position in [None, Some(pb::StartPosition { position: None })] {
        let s = seek_group(&mut c, position).await.unwrap_err();
        assert_status(&s, Code::InvalidArgument, "position");
    }
    let beyond = pb::StartPosition {
        position: Some(Position::Offset(5)),
    };
    let s = seek_group(&mut c, Some(beyond)).await.unwrap_err();
    assert_status(&s, Code::InvalidArgument, "position.offset");

    // DeleteGroup with a member connected, then without.
    let sub = Sub::open(&mut c, "orders", "g", 10).await;
    let s = delete_group(&mut c, "g").await.unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("member"), "{s:?}");
    // The refused delete did not disturb the member.
    publish(&mut c, "orders", vec![event("a", "k", "1")]).await;
    let mut sub = sub;
    assert_eq!(sub.take(1, T).await.len(), 1);
    drop(sub);
    let deleted = eventually(T, || {
        let mut c = c.clone();
        async move { delete_group(&mut c, "g").await.is_ok() }
    })
    .await;
    assert!(deleted, "the group could be deleted once its member left");
    let s = delete_group(&mut c, "g").await.unwrap_err();
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    b.stop().await;
}

// ----------------------------------------------------------------- config

/// Runs the broker binary with `env` (and `args`), which must refuse to
/// start: exit status 2, stderr naming `key`, nothing listening.
fn assert_config_refused(dir: &Path, args: &[&str], env: &[(&str, &str)], key: &str) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_broker"));
    cmd.args(args)
        .current_dir(dir)
        .env("BROKER__LISTEN", "127.0.0.1:0")
        .env("BROKER__AUTH", "none")
        .env("BROKER__DATA_DIR", dir.join("data"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    // Timeout guard: a broker that wrongly starts would run forever.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut exited = false;
    for _ in 0..2_000 {
        if child.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        exited,
        "{env:?}: the broker started anyway; stdout {stdout:?}"
    );
    assert_eq!(out.status.code(), Some(2), "{env:?}: stderr {stderr:?}");
    assert!(
        stderr.contains(key),
        "{env:?} {args:?}: stderr should name `{key}`: {stderr:?}"
    );
    assert!(!stdout.contains("listening"), "{stdout:?}");
}

#[test]
fn bad_configuration_stops_the_binary_with_status_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let env_cases: &[(&str, &str, &str)] = &[
        ("BROKER__STORAGE__FSYNC", "sometimes", "storage.fsync"),
        // The old `_ms` spelling is still read (as milliseconds).
        (
            "BROKER__DELIVERY__ACK_DEADLINE_MS",
            "0",
            "delivery.ack_deadline",
        ),
        (
            "BROKER__DELIVERY__ACK_DEADLINE_MS",
            "soon",
            "delivery.ack_deadline",
        ),
        (
            "BROKER__DELIVERY__ACK_DEADLINE",
            "0s",
            "delivery.ack_deadline",
        ),
        (
            "BROKER__DELIVERY__ACK_DEADLINE",
            "soon",
            "delivery.ack_deadline",
        ),
        (
            "BROKER__LIMITS__MAX_EVENT_BYTES",
            "huge",
            "limits.max_event_bytes",
        ),
        ("BROKER__LIMITS__MAX_CREDIT", "-1", "limits.max_credit"),
        ("BROKER__LISTEN", "nowhere", "listen"),
        ("BROKER__METRICS_LISTEN", "9090", "metrics_listen"),
        ("BROKER__LOG_FORMAT", "xml", "log_format"),
        ("BROKER__STORAGE__NO_SUCH_KEY", "1", "no_such_key"),
    ];
    for &(k, v, key) in env_cases {
        assert_config_refused(d, &[], &[(k, v)], key);
    }
    let toml_cases: &[(&str, &str)] = &[
        ("bogus_key = 1\n", "bogus_key"),
        ("[delivery]\nack_deadline_secs = 5\n", "ack_deadline_secs"),
        ("[storage]\nfsync = \"sometimes\"\n", "storage.fsync"),
        ("[limits]\nmax_credit = 0\n", "limits.max_credit"),
    ];
    for (i, &(text, key)) in toml_cases.iter().enumerate() {
        let path = d.join(format!("broker-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        assert_config_refused(d, &["--config", path.to_str().unwrap()], &[], key);
        // The library says the same.
        let e = mesh_broker::BrokerConfig::load(Some(&path)).unwrap_err();
        assert!(e.to_string().contains(key), "{e}");
    }
    // Old and new spellings mix across the file and the environment (the
    // one set later wins, no "duplicate field"), and the zero that wins is
    // refused: the repo's broker.toml (new keys) under an old env key, an
    // old file key under a new env key. Both spellings in one file are an
    // error naming the key.
    let repo_toml = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../broker.toml");
    assert_config_refused(
        d,
        &["--config", repo_toml.to_str().unwrap()],
        &[("BROKER__DELIVERY__ACK_DEADLINE_MS", "0")],
        "`delivery.ack_deadline`: must be greater than 0",
    );
    let old_file = d.join("old.toml");
    std::fs::write(&old_file, "[delivery]\nack_deadline_ms = 3000\n").unwrap();
    assert_config_refused(
        d,
        &["--config", old_file.to_str().unwrap()],
        &[("BROKER__DELIVERY__ACK_DEADLINE", "0s")],
        "`delivery.ack_deadline`: must be greater than 0",
    );
    let both = d.join("both.toml");
    std::fs::write(
        &both,
        "[delivery]\nack_deadline_ms = 3000\nack_deadline = \"3s\"\n",
    )
    .unwrap();
    assert_config_refused(
        d,
        &["--config", both.to_str().unwrap()],
        &[],
        "`ack_deadline` is set twice",
    );
    // A nested unknown key names its section too.
    let path = d.join("nested.toml");
    std::fs::write(&path, "[delivery]\nack_deadline_secs = 5\n").unwrap();
    let e = mesh_broker::BrokerConfig::load(Some(&path)).unwrap_err();
    assert!(e.to_string().contains("delivery"), "{e}");
}
