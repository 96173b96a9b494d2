//! Delivery semantics of the broker, end to end: a real broker in this
//! process on an ephemeral port, real tonic clients over TCP, no mocks.
//!
//! Every wait is bounded. Timing assertions are only lower bounds ("not
//! before") or orderings with wide margins, so the tests hold on a loaded
//! machine; what is asserted is behaviour (what was delivered, what the
//! admin API reports), not speed.

mod common;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use common::*;
use mesh_broker::BrokerConfig;
use mesh_proto::{
    broker::v1::{
        self as pb, start_position::Position, subscribe_request::Request,
        subscribe_response::Response,
    },
    events::v1::Event,
};
use mesh_runtime::time::{micros, std_duration, system_time};
use tokio::time::Instant;

/// Upper bound for anything that should happen "soon".
const WAIT: Duration = Duration::from_secs(20);
/// How long to listen when asserting that something does NOT arrive.
const QUIET: Duration = Duration::from_millis(600);

// ------------------------------------------------------------------ helpers

async fn create_topic_with_attempts(c: &mut Client, name: &str, attempts: u32) {
    let t = c
        .create_topic(pb::CreateTopicRequest {
            name: name.into(),
            max_delivery_attempts: Some(attempts),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.max_delivery_attempts, attempts);
}

/// `n` events `<prefix>-<i>` without an ordering key.
fn evs(prefix: &str, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| event(&format!("{prefix}-{i}"), "", "x"))
        .collect()
}

/// Publishes in batches the broker accepts.
async fn publish_many(c: &mut Client, topic: &str, events: Vec<Event>) -> Vec<u64> {
    let mut offsets = Vec::new();
    let mut it = events.into_iter().peekable();
    while it.peek().is_some() {
        let batch: Vec<Event> = it.by_ref().take(1000).collect();
        offsets.extend(publish(c, topic, batch).await.iter().map(|r| r.offset));
    }
    offsets
}

/// Publishes `n` events `one-<i>`, then `n` events `two-<i>`; a clock
/// reading strictly between the two batches' publish times.
async fn two_batches(c: &mut Client, topic: &str, n: usize) -> SystemTime {
    publish_many(c, topic, evs("one", n)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let between = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    publish_many(c, topic, evs("two", n)).await;
    between
}

fn open_at(topic: &str, group: &str, credit: u32, pos: Position) -> pb::SubscribeRequest {
    open_from(topic, group, credit, false, Some(pos))
}

fn offsets(ds: &[pb::Delivery]) -> Vec<u64> {
    ds.iter().map(offset).collect()
}

fn publish_us(d: &pb::Delivery) -> i64 {
    micros(d.event.as_ref().unwrap().publish_time.as_ref().unwrap())
}

fn attr<'a>(d: &'a pb::Delivery, k: &str) -> Option<&'a str> {
    d.event
        .as_ref()?
        .event
        .as_ref()?
        .attributes
        .get(k)
        .map(String::as_str)
}

/// Exactly `n` deliveries, or a panic naming what was missing.
async fn take_exactly(s: &mut Sub, n: usize, what: &str) -> Vec<pb::Delivery> {
    let d = s.take(n, WAIT).await;
    assert_eq!(d.len(), n, "{what}: got {:?}", offsets(&d));
    d
}

/// Deliveries that arrive within `QUIET`: for asserting that none do.
async fn quiet(s: &mut Sub) -> Vec<pb::Delivery> {
    s.take(usize::MAX, QUIET).await
}

/// Reads until a CaughtUp marker; returns the deliveries before it and the
/// marker's head. Stream errors fail the test.
async fn until_caught_up(s: &mut Sub) -> (Vec<pb::Delivery>, u64) {
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match s.next(left).await {
            Some(Response::Deliveries(d)) => out.extend(d.deliveries),
            Some(Response::CaughtUp(c)) => return (out, c.head),
            Some(Response::Error(e)) => panic!("stream error: {e:?}"),
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("no CaughtUp within {WAIT:?}; got {:?}", offsets(&out)),
        }
    }
}

async fn send(s: &Sub, r: Request) {
    s.tx.send(pb::SubscribeRequest { request: Some(r) })
        .await
        .unwrap();
}

async fn seek(
    c: &mut Client,
    topic: &str,
    group: &str,
    pos: Position,
    dry_run: bool,
) -> pb::SeekGroupResponse {
    c.seek_group(pb::SeekGroupRequest {
        topic: topic.into(),
        group: group.into(),
        position: Some(pb::StartPosition {
            position: Some(pos),
        }),
        dry_run,
    })
    .await
    .unwrap()
    .into_inner()
}

/// RedriveDeadLetters of all the group's dead letters: how many went back.
async fn redrive(c: &mut Client, topic: &str, group: &str) -> u64 {
    c.redrive_dead_letters(pb::RedriveDeadLettersRequest {
        topic: topic.into(),
        group: group.into(),
        limit: 0,
    })
    .await
    .unwrap()
    .into_inner()
    .redriven
}

/// PurgeDeadLetters of the group: how many were dropped.
async fn purge(c: &mut Client, topic: &str, group: &str) -> u64 {
    c.purge_dead_letters(pb::PurgeDeadLettersRequest {
        topic: topic.into(),
        group: group.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .purged
}

// -------------------------------------------------------------------- tests

/// Scenario 1: Every group gets every event.
async fn fan_out_every_group_receives_every_event(b: Backend) {
    // Asserts first attempts only and nothing more after the acks.
    let mut e = env_on(b, no_deadlines).await;
    create_topic(&mut e.c, "orders").await;
    let mut a = Sub::open(&mut e.c, "orders", "billing", 100).await;
    let mut b = Sub::open(&mut e.c, "orders", "shipping", 100).await;
    let published = publish_many(&mut e.c, "orders", evs("o", 50)).await;

    for (s, name) in [(&mut a, "billing"), (&mut b, "shipping")] {
        let d = take_exactly(s, 50, name).await;
        let mut got = offsets(&d);
        got.sort_unstable();
        assert_eq!(got, published, "{name} got every event");
        assert!(d.iter().all(|d| d.delivery_attempt == 1));
        s.ack(offsets(&d)).await;
    }
    wait_committed(&e.c, "orders", "billing", 50).await;
    wait_committed(&e.c, "orders", "shipping", 50).await;
    assert!(quiet(&mut a).await.is_empty());
    assert!(quiet(&mut b).await.is_empty());
    drop((a, b));
    e.b.stop().await;
}

/// Scenario 2: Members of one group share its events: each event goes to one member.
async fn competing_consumers_share_the_work_without_overlap(b: Backend) {
    // No redelivery on a deadline may blur "exactly once per event" here.
    let mut e = env_on(b, no_deadlines).await;
    create_topic(&mut e.c, "work").await;
    let mut s1 = Sub::open(&mut e.c, "work", "g", 10).await;
    let mut s2 = Sub::open(&mut e.c, "work", "g", 10).await;
    let published = publish_many(&mut e.c, "work", evs("w", 100)).await;

    // Both are handed a full credit's worth, and no event is held by both.
    let d1 = take_exactly(&mut s1, 10, "first member").await;
    let d2 = take_exactly(&mut s2, 10, "second member").await;
    let h1: HashSet<u64> = offsets(&d1).into_iter().collect();
    let h2: HashSet<u64> = offsets(&d2).into_iter().collect();
    assert!(h1.is_disjoint(&h2), "overlap: {h1:?} {h2:?}");
    let info = describe(&mut e.c, "work", "g").await;
    assert_eq!(info.in_flight, 20);
    assert_eq!(info.members.len(), 2);
    assert!(
        info.members
            .iter()
            .all(|m| m.in_flight == 10 && m.credit == 0)
    );
    // Nothing more arrives while they hold their credit.
    assert!(quiet(&mut s1).await.is_empty());
    assert!(quiet(&mut s2).await.is_empty());

    // Both then work through the rest concurrently, acking as they go.
    let seen: Arc<Mutex<Vec<(usize, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    for (i, d) in [(1, &d1), (2, &d2)] {
        seen.lock()
            .unwrap()
            .extend(offsets(d).into_iter().map(|o| (i, o)));
    }
    s1.ack(offsets(&d1)).await;
    s2.ack(offsets(&d2)).await;
    let work = |mut s: Sub, who: usize, seen: Arc<Mutex<Vec<(usize, u64)>>>| async move {
        let deadline = Instant::now() + WAIT;
        while seen.lock().unwrap().len() < 100 && Instant::now() < deadline {
            if let Some(Response::Deliveries(d)) = s.next(Duration::from_millis(100)).await {
                let offs = offsets(&d.deliveries);
                seen.lock().unwrap().extend(offs.iter().map(|&o| (who, o)));
                s.ack(offs).await;
            }
        }
        s
    };
    let t1 = tokio::spawn(work(s1, 1, seen.clone()));
    let t2 = tokio::spawn(work(s2, 2, seen.clone()));
    let (s1, s2) = (t1.await.unwrap(), t2.await.unwrap());

    let seen = seen.lock().unwrap().clone();
    let mut all: Vec<u64> = seen.iter().map(|&(_, o)| o).collect();
    all.sort_unstable();
    // Union == everything, and no event was delivered twice (so never to
    // both members): with a 60 s deadline nothing is redelivered.
    assert_eq!(all, published, "each event exactly once");
    let by1 = seen.iter().filter(|(w, _)| *w == 1).count();
    assert!(
        by1 > 0 && by1 < 100,
        "both members got some: {by1} vs {}",
        100 - by1
    );
    wait_committed(&e.c, "work", "g", 100).await;
    drop((s1, s2));
    e.b.stop().await;
}

/// 3a. An event not acked within the ack deadline comes back.
async fn redelivery_after_the_ack_deadline(b: Backend) {
    let mut e = env_on(b, |c| {
        c.delivery.ack_deadline = Duration::from_millis(1_000)
    })
    .await;
    create_topic(&mut e.c, "t").await;
    let mut s = Sub::open(&mut e.c, "t", "g", 10).await;
    // Measured from before the publish: the first delivery (and so its
    // deadline) cannot start earlier, however slow the machine.
    let t0 = Instant::now();
    publish(&mut e.c, "t", vec![event("x", "", "1")]).await;
    let first = take_exactly(&mut s, 1, "first delivery").await;
    assert_eq!(first[0].delivery_attempt, 1);
    // Not acked: it comes back, but not before the deadline.
    let again = take_exactly(&mut s, 1, "redelivery").await;
    let gap = t0.elapsed();
    assert_eq!(offset(&again[0]), offset(&first[0]));
    assert_eq!(again[0].delivery_attempt, 2);
    assert!(
        gap >= Duration::from_millis(1_000),
        "redelivered {gap:?} after the publish, before the 1 s deadline"
    );
    s.ack(vec![offset(&again[0])]).await;
    wait_committed(&e.c, "t", "g", 1).await;
    let info = describe(&mut e.c, "t", "g").await;
    assert_eq!(info.redelivered, 1);
    assert_eq!(info.in_flight, 0);
    assert!(quiet(&mut s).await.is_empty());
    drop(s);
    e.b.stop().await;
}

/// 3b. A nack with a delay: not redelivered before it, redelivered after.
async fn redelivery_after_a_nack_delay(b: Backend) {
    // Only the nack may bring it back: a deadline passing on a slow
    // machine before the nack arrives would redeliver it early.
    let mut e = env_on(b, no_deadlines).await;
    create_topic(&mut e.c, "t").await;
    let mut s = Sub::open(&mut e.c, "t", "g", 10).await;
    publish(&mut e.c, "t", vec![event("x", "", "1")]).await;
    let first = take_exactly(&mut s, 1, "first delivery").await;
    let delay = Duration::from_millis(1_500);
    let t0 = Instant::now();
    s.nack(offsets(&first), delay, "later").await;
    // Nothing during (most of) the delay...
    let early = s.take(1, Duration::from_millis(1_000)).await;
    assert!(
        early.is_empty() || t0.elapsed() >= delay,
        "redelivered {:?} after only {:?}",
        offsets(&early),
        t0.elapsed()
    );
    // ...then it comes back.
    let again = if early.is_empty() {
        take_exactly(&mut s, 1, "redelivery").await
    } else {
        early
    };
    let gap = t0.elapsed();
    assert!(
        gap >= delay,
        "redelivered after {gap:?}, delay was {delay:?}"
    );
    assert_eq!(offset(&again[0]), offset(&first[0]));
    assert_eq!(again[0].delivery_attempt, 2);
    s.ack(offsets(&again)).await;
    wait_committed(&e.c, "t", "g", 1).await;
    drop(s);
    e.b.stop().await;
}

/// 3c. Repeated nacks without a delay back off exponentially.
async fn redelivery_backoff_grows_with_each_nack(b: Backend) {
    const MIN: u64 = 150;
    let mut e = env_on(b, |c| {
        no_deadlines(c);
        c.delivery.min_backoff = Duration::from_millis(MIN);
        c.delivery.max_backoff = Duration::from_millis(60_000);
    })
    .await;
    create_topic_with_attempts(&mut e.c, "t", 10).await;
    let mut s = Sub::open(&mut e.c, "t", "g", 10).await;
    publish(&mut e.c, "t", vec![event("x", "", "1")]).await;
    let mut times = Vec::new();
    for attempt in 1..=5u32 {
        let d = take_exactly(&mut s, 1, "delivery").await;
        times.push(Instant::now());
        assert_eq!(d[0].delivery_attempt, attempt);
        if attempt < 5 {
            s.nack(offsets(&d), Duration::ZERO, "again").await;
        } else {
            s.ack(offsets(&d)).await;
        }
    }
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // Each gap is at least the backoff for that attempt (MIN * 2^(k-1))...
    for (k, g) in gaps.iter().enumerate() {
        let floor = Duration::from_millis(MIN << k);
        assert!(
            *g >= floor,
            "gap {} was {g:?}, below {floor:?}: {gaps:?}",
            k + 1
        );
    }
    // ...and they grow (compared two apart: a 4x difference).
    assert!(gaps[2] > gaps[0], "{gaps:?}");
    assert!(gaps[3] > gaps[1], "{gaps:?}");
    wait_committed(&e.c, "t", "g", 1).await;
    drop(s);
    e.b.stop().await;
}

/// Scenario 4: Dead letters after max_delivery_attempts; list, redrive to that group
/// only, purge.
async fn dead_letters_list_redrive_to_one_group_and_purge(b: Backend) {
    let mut e = env_on(b, no_deadlines).await;
    create_topic_with_attempts(&mut e.c, "jobs", 2).await;
    let mut workers = Sub::open(&mut e.c, "jobs", "workers", 10).await;
    let mut audit = Sub::open(&mut e.c, "jobs", "audit", 10).await;
    publish(&mut e.c, "jobs", vec![event("bad", "", "1")]).await;

    // The other group simply handles it.
    let a = take_exactly(&mut audit, 1, "audit").await;
    audit.ack(offsets(&a)).await;
    wait_committed(&e.c, "jobs", "audit", 1).await;

    // Two failed attempts.
    for attempt in 1..=2u32 {
        let d = take_exactly(&mut workers, 1, "workers").await;
        assert_eq!((offset(&d[0]), d[0].delivery_attempt), (0, attempt));
        workers
            .nack(offsets(&d), Duration::ZERO, &format!("boom-{attempt}"))
            .await;
    }
    // Then it is done for the group and waits in its dead-letter topic.
    wait_committed(&e.c, "jobs", "workers", 1).await;
    let info = describe(&mut e.c, "jobs", "workers").await;
    assert_eq!(info.dead_letters, 1, "{info:?}");
    assert_eq!(info.dead_lettered, 1, "{info:?}");
    assert_eq!(info.in_flight, 0);
    assert!(quiet(&mut workers).await.is_empty(), "no third attempt");
    let list = dead_letters(&mut e.c, "jobs", "workers").await;
    assert_eq!(list.dead_letter_topic, "jobs.workers.dlq");
    assert_eq!(list.dead_letters.len(), 1);
    let dl = &list.dead_letters[0];
    assert_eq!(dl.original_offset, 0);
    assert_eq!(dl.delivery_attempts, 2);
    assert_eq!(dl.last_reason, "boom-2");
    let ev = dl.event.as_ref().unwrap();
    assert_eq!(ev.event.as_ref().unwrap().id, "bad");
    assert_eq!((ev.topic.as_str(), ev.offset), ("jobs", 0));
    assert_eq!(describe(&mut e.c, "jobs", "audit").await.dead_letters, 0);

    // Redrive: the group gets it again, marked as redriven...
    assert_eq!(redrive(&mut e.c, "jobs", "workers").await, 1);
    let d = take_exactly(&mut workers, 1, "redriven copy").await;
    assert_eq!(id(&d[0]), "bad");
    assert_eq!(attr(&d[0], "mesh.redrive.group"), Some("workers"));
    assert_eq!(d[0].delivery_attempt, 1);
    assert!(offset(&d[0]) >= 1, "a new copy in the topic");
    let redriven_at = offset(&d[0]);
    workers.ack(offsets(&d)).await;
    wait_committed(&e.c, "jobs", "workers", redriven_at + 1).await;
    assert_eq!(describe(&mut e.c, "jobs", "workers").await.dead_letters, 0);
    assert!(
        dead_letters(&mut e.c, "jobs", "workers")
            .await
            .dead_letters
            .is_empty()
    );

    // ...and the other group does not: it moves past the copy without a
    // delivery.
    let leaked = quiet(&mut audit).await;
    assert!(leaked.is_empty(), "audit got {leaked:?}");
    wait_committed(&e.c, "jobs", "audit", redriven_at + 1).await;
    let leaked = quiet(&mut audit).await;
    assert!(leaked.is_empty(), "audit got {leaked:?}");
    // Nor does a group that starts reading the topic only now.
    let mut late = Sub::open(&mut e.c, "jobs", "late", 10).await;
    let (d, head) = until_caught_up(&mut late).await;
    assert_eq!(head, redriven_at + 1);
    assert_eq!(offsets(&d), vec![0], "late group skips the redriven copy");
    drop(late);

    // A new dead letter, purged.
    publish(&mut e.c, "jobs", vec![event("bad2", "", "2")]).await;
    let a = take_exactly(&mut audit, 1, "audit").await;
    audit.ack(offsets(&a)).await;
    for attempt in 1..=2u32 {
        let d = take_exactly(&mut workers, 1, "workers").await;
        assert_eq!(
            (id(&d[0]), d[0].delivery_attempt),
            ("bad2".to_string(), attempt)
        );
        workers.nack(offsets(&d), Duration::ZERO, "boom").await;
    }
    wait_group(&e.c, "jobs", "workers", "second dead letter", |i| {
        i.dead_letters == 1
    })
    .await;
    let list = dead_letters(&mut e.c, "jobs", "workers").await;
    assert_eq!(list.dead_letters.len(), 1);
    assert_eq!(list.dead_letters[0].original_offset, redriven_at + 1);
    assert_eq!(purge(&mut e.c, "jobs", "workers").await, 1);
    assert_eq!(describe(&mut e.c, "jobs", "workers").await.dead_letters, 0);
    assert!(
        dead_letters(&mut e.c, "jobs", "workers")
            .await
            .dead_letters
            .is_empty()
    );
    // Purged means gone: a redrive now has nothing to send.
    assert_eq!(redrive(&mut e.c, "jobs", "workers").await, 0);
    assert!(quiet(&mut workers).await.is_empty());
    drop((workers, audit));
    e.b.stop().await;
}

/// 4b. An event that fails again after its dead letter was handled (purged
/// or redriven) and the group was sought back is dead-lettered again, not
/// swallowed.
async fn replayed_event_that_fails_again_is_dead_lettered_again(b: Backend) {
    let mut e = env_on(b, no_deadlines).await;
    create_topic_with_attempts(&mut e.c, "jobs", 1).await;
    let mut s = Sub::open(&mut e.c, "jobs", "g", 10).await;
    publish(&mut e.c, "jobs", vec![event("bad", "", "1")]).await;
    let d = take_exactly(&mut s, 1, "delivery").await;
    s.nack(offsets(&d), Duration::ZERO, "first").await;
    wait_committed(&e.c, "jobs", "g", 1).await;
    assert_eq!(describe(&mut e.c, "jobs", "g").await.dead_letters, 1);
    assert_eq!(purge(&mut e.c, "jobs", "g").await, 1);

    // Replay it; it fails again.
    let r = seek(&mut e.c, "jobs", "g", Position::Offset(0), false).await;
    assert_eq!(r.events_to_redeliver, 1);
    let d = take_exactly(&mut s, 1, "replayed").await;
    assert_eq!((offset(&d[0]), d[0].delivery_attempt), (0, 1));
    s.nack(offsets(&d), Duration::ZERO, "second").await;
    wait_committed(&e.c, "jobs", "g", 1).await;
    wait_group(&e.c, "jobs", "g", "second dead-lettering", |i| {
        i.dead_lettered == 2
    })
    .await;
    let list = dead_letters(&mut e.c, "jobs", "g").await;
    assert_eq!(list.dead_letters.len(), 1, "the second failure is listed");
    assert_eq!(list.dead_letters[0].original_offset, 0);
    assert_eq!(list.dead_letters[0].last_reason, "second");
    assert_eq!(describe(&mut e.c, "jobs", "g").await.dead_letters, 1);
    drop(s);
    e.b.stop().await;
}

/// Scenario 5: A group created late replays history: from earliest, or from a time.
async fn late_group_replays_from_earliest_and_from_a_time(b: Backend) {
    // Asserts exact deliveries: no redelivery may slip in.
    let mut e = env_on(b, no_deadlines).await;
    create_topic(&mut e.c, "hist").await;
    let between = two_batches(&mut e.c, "hist", 10).await;

    // An existing group consumes everything first; that changes nothing for
    // the late ones.
    let mut early = Sub::open(&mut e.c, "hist", "early", 100).await;
    let (d, head) = until_caught_up(&mut early).await;
    assert_eq!((d.len(), head), (20, 20));
    early.ack(offsets(&d)).await;
    wait_committed(&e.c, "hist", "early", 20).await;
    drop(early);

    let mut all = Sub::open_with(
        &mut e.c,
        open_at("hist", "late-all", 100, Position::Earliest(pb::Empty {})),
    )
    .await;
    assert_eq!(all.opened.committed, 0);
    let (d, head) = until_caught_up(&mut all).await;
    assert_eq!(head, 20);
    assert_eq!(offsets(&d), (0..20).collect::<Vec<_>>());
    // The clock reading really lies between the batches.
    let cut = micros(&system_time(between));
    assert!(publish_us(&d[9]) < cut && cut <= publish_us(&d[10]));

    let mut since = Sub::open_with(
        &mut e.c,
        open_at(
            "hist",
            "late-time",
            100,
            Position::Time(system_time(between)),
        ),
    )
    .await;
    assert_eq!(since.opened.committed, 10);
    let (d, head) = until_caught_up(&mut since).await;
    assert_eq!(head, 20);
    assert_eq!(offsets(&d), (10..20).collect::<Vec<_>>());
    assert!(d.iter().all(|d| id(d).starts_with("two-")));
    drop((all, since));
    e.b.stop().await;
}

/// Scenario 6: Publishing an id again returns the original offset and stores nothing.
async fn dedupe_returns_the_original_offset_and_delivers_once(b: Backend) {
    // "Delivers once": no redelivery on a deadline may slip in.
    let mut e = env_on(b, no_deadlines).await;
    create_topic(&mut e.c, "t").await;
    let first = publish(&mut e.c, "t", vec![event("x", "", "1")]).await;
    publish(&mut e.c, "t", vec![event("y", "", "2")]).await;
    let again = publish(&mut e.c, "t", vec![event("x", "", "1")]).await;
    assert_eq!((first[0].offset, first[0].duplicate), (0, false));
    assert_eq!((again[0].offset, again[0].duplicate), (0, true));
    // The same within one batch, next to a new id.
    let mixed = publish(
        &mut e.c,
        "t",
        vec![event("y", "", "2"), event("z", "", "3")],
    )
    .await;
    assert_eq!((mixed[0].offset, mixed[0].duplicate), (1, true));
    assert_eq!((mixed[1].offset, mixed[1].duplicate), (2, false));
    let info =
        e.c.describe_topic(pb::DescribeTopicRequest { name: "t".into() })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(info.head_offset, 3);

    let mut s = Sub::open(&mut e.c, "t", "g", 100).await;
    let (d, head) = until_caught_up(&mut s).await;
    assert_eq!(head, 3);
    let ids: Vec<String> = d.iter().map(id).collect();
    assert_eq!(ids, vec!["x", "y", "z"]);
    s.ack(offsets(&d)).await;
    wait_committed(&e.c, "t", "g", 3).await;
    assert!(quiet(&mut s).await.is_empty());
    drop(s);
    e.b.stop().await;
}

/// Scenario 7: A failing event holds back its own key and no other.
async fn per_key_order_holds_under_redelivery(b: Backend) {
    let mut e = env_on(b, no_deadlines).await;
    create_topic_with_attempts(&mut e.c, "t", 20).await;
    let mut s = Sub::open(&mut e.c, "t", "g", 10).await;
    let evs = vec![
        event("a1", "A", "1"),
        event("a2", "A", "2"),
        event("a3", "A", "3"),
        event("b1", "B", "1"),
        event("b2", "B", "2"),
    ];
    publish(&mut e.c, "t", evs).await;
    let key_of = |o: u64| if o < 3 { "A" } else { "B" };
    // Offsets in the order they were acked.
    let mut acked: Vec<u64> = Vec::new();

    // First the head of each key: a1 and b1.
    let d = take_exactly(&mut s, 2, "heads of A and B").await;
    let mut got = offsets(&d);
    got.sort_unstable();
    assert_eq!(got, vec![0, 3]);

    // a1 fails again and again; B flows meanwhile and A stays held.
    s.nack(vec![0], Duration::ZERO, "fail").await;
    s.ack(vec![3]).await;
    acked.push(3);
    let mut b_done = false;
    let mut a1_attempts = 1;
    let deadline = Instant::now() + WAIT;
    while (!b_done || a1_attempts < 4) && Instant::now() < deadline {
        for d in s.take(1, deadline - Instant::now()).await {
            match offset(&d) {
                0 => {
                    a1_attempts += 1;
                    assert_eq!(d.delivery_attempt, a1_attempts);
                    if a1_attempts < 4 {
                        s.nack(vec![0], Duration::ZERO, "fail").await;
                    }
                    // The 4th attempt stays in flight, unacked, for now.
                }
                4 => {
                    s.ack(vec![4]).await;
                    acked.push(4);
                    b_done = true;
                }
                o => panic!("offset {o} delivered while a1 is not acked"),
            }
        }
    }
    assert!(b_done, "B's events were held back by A's failures");
    assert_eq!(a1_attempts, 4);
    // Still nothing more of A while a1 is unacked.
    let held = quiet(&mut s).await;
    assert!(held.is_empty(), "A overtook its failing head: {held:?}");

    // Ack a1: then a2, and only after its ack a3.
    s.ack(vec![0]).await;
    acked.push(0);
    let d = take_exactly(&mut s, 1, "a2").await;
    assert_eq!((offset(&d[0]), d[0].delivery_attempt), (1, 1));
    assert!(quiet(&mut s).await.is_empty(), "a3 before a2's ack");
    s.ack(vec![1]).await;
    acked.push(1);
    let d = take_exactly(&mut s, 1, "a3").await;
    assert_eq!(offset(&d[0]), 2);
    s.ack(vec![2]).await;
    acked.push(2);

    let per_key =
        |k: &str| -> Vec<u64> { acked.iter().copied().filter(|&o| key_of(o) == k).collect() };
    assert_eq!(per_key("A"), vec![0, 1, 2]);
    assert_eq!(per_key("B"), vec![3, 4]);
    wait_committed(&e.c, "t", "g", 5).await;
    drop(s);
    e.b.stop().await;
}

/// Scenario 8: A stalled subscriber with a big backlog: bounded in flight and
/// bounded read-ahead.
async fn stalled_subscriber_holds_bounded_in_flight_and_buffer(b: Backend) {
    const WINDOW: usize = 100;
    let mut e = env_on(b, |c| {
        no_deadlines(c);
        c.limits.group_window = WINDOW;
        c.limits.max_credit = 50;
    })
    .await;
    create_topic(&mut e.c, "big").await;
    publish_many(&mut e.c, "big", evs("e", 5000)).await;
    let mut s = Sub::open(&mut e.c, "big", "slow", 10).await;

    let d = take_exactly(&mut s, 10, "first credit").await;
    assert_eq!(offsets(&d), (0..10).collect::<Vec<_>>());
    // The dispatcher reads ahead up to its window, and no further.
    let info = wait_group(&e.c, "big", "slow", "window never filled", |i| {
        i.buffered == WINDOW as u64
    })
    .await;
    assert_eq!(info.in_flight, 10);
    assert_eq!(info.members.len(), 1);
    assert_eq!((info.members[0].in_flight, info.members[0].credit), (10, 0));
    assert_eq!(info.lag_events, 5000);
    // Never more than credit in flight, however long it stalls.
    let more = quiet(&mut s).await;
    assert!(more.is_empty(), "beyond credit: {:?}", offsets(&more));
    let info = describe(&mut e.c, "big", "slow").await;
    assert_eq!(info.in_flight, 10);
    assert!(info.buffered <= WINDOW as u64, "{info:?}");

    // Extra credit lets exactly that many more through.
    send(&s, Request::Credit(pb::Credit { add: 5 })).await;
    let d = take_exactly(&mut s, 5, "extra credit").await;
    assert_eq!(offsets(&d), (10..15).collect::<Vec<_>>());
    let more = quiet(&mut s).await;
    assert!(more.is_empty(), "beyond credit: {:?}", offsets(&more));
    let info = describe(&mut e.c, "big", "slow").await;
    assert_eq!(info.in_flight, 15);
    assert_eq!(info.members[0].credit, 0);
    assert!(info.buffered <= WINDOW as u64, "{info:?}");
    drop(s);
    e.b.stop().await;
}

/// Scenario 9: A member that disconnects hands its in-flight events to the others at
/// once, not after the ack deadline.
async fn disconnected_members_events_go_to_another_member_at_once(b: Backend) {
    let mut e = env_on(b, no_deadlines).await;
    create_topic(&mut e.c, "t").await;
    let mut gone = Sub::open(&mut e.c, "t", "g", 10).await;
    let published = publish_many(&mut e.c, "t", evs("e", 10)).await;
    let held = take_exactly(&mut gone, 10, "first member").await;
    let mut stays = Sub::open(&mut e.c, "t", "g", 100).await;
    assert!(
        quiet(&mut stays).await.is_empty(),
        "all are in flight to the first"
    );

    let t0 = Instant::now();
    drop(gone);
    let d = take_exactly(&mut stays, 10, "handed over").await;
    let took = t0.elapsed();
    let mut got = offsets(&d);
    got.sort_unstable();
    assert_eq!(got, published);
    assert_eq!(offsets(&held).len(), 10);
    assert!(d.iter().all(|d| d.delivery_attempt == 2));
    // 60 s is the ack deadline; this is "at once" with a wide margin.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    stays.ack(got).await;
    wait_committed(&e.c, "t", "g", 10).await;
    let info = describe(&mut e.c, "t", "g").await;
    assert_eq!(info.members.len(), 1);
    drop(stays);
    e.b.stop().await;
}

/// Scenario 10: SeekGroup: the dry run's count is what is then redelivered; also by
/// time.
async fn seek_dry_run_matches_what_is_redelivered(b: Backend) {
    let mut e = env_on(b, no_deadlines).await;
    create_topic(&mut e.c, "t").await;
    let between = two_batches(&mut e.c, "t", 50).await;

    let mut s = Sub::open(&mut e.c, "t", "g", 200).await;
    let (d, _) = until_caught_up(&mut s).await;
    assert_eq!(d.len(), 100);
    s.ack(offsets(&d)).await;
    wait_committed(&e.c, "t", "g", 100).await;

    let dry = seek(&mut e.c, "t", "g", Position::Offset(40), true).await;
    assert_eq!(
        (dry.previous_offset, dry.new_offset, dry.events_to_redeliver),
        (100, 40, 60)
    );
    assert!(!dry.applied);
    assert!(quiet(&mut s).await.is_empty(), "a dry run changes nothing");
    assert_eq!(describe(&mut e.c, "t", "g").await.committed_offset, 100);

    let done = seek(&mut e.c, "t", "g", Position::Offset(40), false).await;
    assert!(done.applied);
    assert_eq!(done.events_to_redeliver, dry.events_to_redeliver);
    let (d, head) = until_caught_up(&mut s).await;
    assert_eq!(head, 100);
    assert_eq!(d.len() as u64, dry.events_to_redeliver);
    assert_eq!(offsets(&d), (40..100).collect::<Vec<_>>());
    s.ack(offsets(&d)).await;
    wait_committed(&e.c, "t", "g", 100).await;
    assert!(quiet(&mut s).await.is_empty(), "exactly 60");

    // By time: the second batch again.
    let second_batch = Position::Time(system_time(between));
    let dry = seek(&mut e.c, "t", "g", second_batch, true).await;
    assert_eq!((dry.new_offset, dry.events_to_redeliver), (50, 50));
    let done = seek(&mut e.c, "t", "g", second_batch, false).await;
    assert_eq!(done.new_offset, 50);
    let (d, _) = until_caught_up(&mut s).await;
    assert_eq!(offsets(&d), (50..100).collect::<Vec<_>>());
    assert!(d.iter().all(|d| id(d).starts_with("two-")));
    s.ack(offsets(&d)).await;
    wait_committed(&e.c, "t", "g", 100).await;
    drop(s);
    e.b.stop().await;
}

/// Scenario 11: CaughtUp once the backlog is handed out; Lag reported periodically.
async fn caught_up_after_the_backlog_and_periodic_lag(b: Backend) {
    let mut e = env_on(b, |c| {
        no_deadlines(c);
        c.delivery.lag_report_interval = Duration::from_millis(200);
    })
    .await;
    create_topic(&mut e.c, "t").await;
    publish_many(&mut e.c, "t", evs("one", 20)).await;
    // Credit 5 for a backlog of 20: CaughtUp only after the 20th delivery.
    let mut s = Sub::open(&mut e.c, "t", "g", 5).await;
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    let head = loop {
        match s.next_or_lag(deadline - Instant::now()).await {
            Some(Response::Deliveries(d)) => {
                let offs = offsets(&d.deliveries);
                got.extend(offs.iter().copied());
                s.ack(offs).await;
            }
            Some(Response::CaughtUp(c)) => break c.head,
            Some(Response::Lag(_)) => {}
            other => panic!("unexpected {other:?} after {got:?}"),
        }
    };
    assert_eq!(head, 20);
    assert_eq!(
        got,
        (0..20).collect::<Vec<_>>(),
        "CaughtUp before the backlog"
    );

    // Hold 5 unacked of 10 new: Lag keeps coming, counting them.
    publish_many(&mut e.c, "t", evs("two", 10)).await;
    let mut held = Vec::new();
    let mut lags = Vec::new();
    let deadline = Instant::now() + WAIT;
    while lags.len() < 3 && Instant::now() < deadline {
        match s.next_or_lag(deadline - Instant::now()).await {
            Some(Response::Deliveries(d)) => held.extend(offsets(&d.deliveries)),
            Some(Response::Lag(l)) if held.len() == 5 => lags.push(l),
            Some(Response::Lag(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(held, (20..25).collect::<Vec<_>>());
    assert_eq!(lags.len(), 3, "periodic lag reports");
    assert!(lags.iter().all(|l| l.events == 10), "{lags:?}");
    let age = |l: &pb::Lag| std_duration(&l.oldest_unacked_age.unwrap()).unwrap();
    assert!(age(&lags[0]) > Duration::ZERO && age(&lags[2]) > age(&lags[0]));

    // Ack everything: the rest arrives, then CaughtUp, then a lag of 0.
    s.ack(held.clone()).await;
    let mut rest = Vec::new();
    let mut caught_up = None;
    let mut zero = false;
    let deadline = Instant::now() + WAIT;
    while !(zero && caught_up.is_some()) && Instant::now() < deadline {
        match s.next_or_lag(deadline - Instant::now()).await {
            Some(Response::Deliveries(d)) => {
                let offs = offsets(&d.deliveries);
                rest.extend(offs.iter().copied());
                s.ack(offs).await;
            }
            Some(Response::CaughtUp(c)) => {
                assert_eq!(rest, (25..30).collect::<Vec<_>>(), "CaughtUp too early");
                caught_up = Some(c.head);
            }
            Some(Response::Lag(l)) => zero = caught_up.is_some() && l.events == 0,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(caught_up, Some(30));
    assert!(zero, "lag went back to 0 after the acks");
    drop(s);
    e.b.stop().await;
}

/// 11b. Events held back behind an unacked event of their key have not
/// been handed out yet: CaughtUp waits for them too.
async fn caught_up_waits_for_events_held_behind_their_key(b: Backend) {
    let mut e = env_on(b, no_deadlines).await;
    create_topic(&mut e.c, "t").await;
    let mut evs: Vec<Event> = (0..4).map(|i| event(&format!("a{i}"), "A", "x")).collect();
    evs.push(event("b0", "B", "x"));
    publish(&mut e.c, "t", evs).await;
    let mut s = Sub::open(&mut e.c, "t", "g", 100).await;
    // Only a0 and b0 can go out at first; a1..a3 wait for a0's ack.
    let d = take_exactly(&mut s, 2, "heads of A and B").await;
    let mut got = offsets(&d);
    got.sort_unstable();
    assert_eq!(got, vec![0, 4]);
    match s.next(QUIET).await {
        None => {}
        Some(Response::CaughtUp(c)) => {
            panic!("CaughtUp({}) while a1..a3 were never handed out", c.head)
        }
        Some(other) => panic!("unexpected {other:?}"),
    }
    // Acking one at a time hands out the rest of A; then it is caught up.
    s.ack(got).await;
    for next in 1..4u64 {
        match s.next(WAIT).await {
            Some(Response::Deliveries(d)) => {
                assert_eq!(offsets(&d.deliveries), vec![next]);
                s.ack(vec![next]).await;
            }
            other => panic!("expected a{next}, got {other:?}"),
        }
    }
    match s.next(WAIT).await {
        Some(Response::CaughtUp(c)) => assert_eq!(c.head, 5),
        other => panic!("expected CaughtUp, got {other:?}"),
    }
    wait_committed(&e.c, "t", "g", 5).await;
    drop(s);
    e.b.stop().await;
}

/// Scenario 12: Committed progress survives a consumer restart and a broker restart:
/// nothing acked comes back, nothing unacked is lost.
async fn committed_progress_survives_consumer_and_broker_restarts(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    // A long commit interval: what is durable at a clean stop is what the
    // broker commits when members leave and at shutdown.
    let tweak = |c: &mut BrokerConfig| {
        no_deadlines(c);
        c.delivery.commit_interval = Duration::from_millis(60_000);
    };
    let b = TestBroker::start_on(backend, dir.path(), tweak).await;
    let mut c = b.client().await;
    create_topic(&mut c, "t").await;
    publish_many(&mut c, "t", evs("e", 50)).await;

    // Consumer 1 is handed all 50 but acks only the first 20, then goes.
    let mut s = Sub::open(&mut c, "t", "g", 100).await;
    let d = take_exactly(&mut s, 50, "first consumer").await;
    assert_eq!(offsets(&d), (0..50).collect::<Vec<_>>());
    s.ack((0..20).collect()).await;
    wait_group(&c, "t", "g", "acks processed", |i| i.in_flight == 30).await;
    drop(s);
    wait_committed(&c, "t", "g", 20).await;

    // Consumer restart: the 30 unacked come back, none of the 20 acked.
    let mut s = Sub::open(&mut c, "t", "g", 100).await;
    assert_eq!(s.opened.committed, 20);
    let (d, head) = until_caught_up(&mut s).await;
    assert_eq!(head, 50);
    assert_eq!(offsets(&d), (20..50).collect::<Vec<_>>());
    // Ack ten more; the broker stops before its periodic commit.
    s.ack((20..30).collect()).await;
    wait_group(&c, "t", "g", "acks processed", |i| i.in_flight == 20).await;
    b.stop().await;
    drop(s);

    // Broker restart on the same data: resumes at 30.
    let b = TestBroker::start_on(backend, dir.path(), tweak).await;
    let mut c = b.client().await;
    assert_eq!(describe(&mut c, "t", "g").await.committed_offset, 30);
    let mut s = Sub::open(&mut c, "t", "g", 100).await;
    assert_eq!(s.opened.committed, 30);
    let (d, head) = until_caught_up(&mut s).await;
    assert_eq!(head, 50);
    assert_eq!(offsets(&d), (30..50).collect::<Vec<_>>());
    assert!(d.iter().all(|d| d.delivery_attempt == 1));
    s.ack(offsets(&d)).await;
    // Acks still queued client-side would be lost with the stream: wait
    // until the broker has them before leaving.
    wait_group(&c, "t", "g", "acks processed", |i| i.in_flight == 0).await;
    // The last member leaving commits (the periodic commit is far off).
    drop(s);
    wait_committed(&c, "t", "g", 50).await;
    b.stop().await;

    // And once more: nothing at all is left for the group.
    let b = TestBroker::start_on(backend, dir.path(), tweak).await;
    let mut c = b.client().await;
    let mut s = Sub::open(&mut c, "t", "g", 100).await;
    assert_eq!(s.opened.committed, 50);
    let (d, head) = until_caught_up(&mut s).await;
    assert_eq!((offsets(&d), head), (vec![], 50));
    drop(s);
    b.stop().await;
}

/// grpcurl's way (docs/broker-api.md, "Subscribe as group billing and ack
/// offset 0"):
/// `open` and an ack of offset 0 in one burst, before anything arrived.
/// The new member holds offset 0 by the time its ack is handled, so the ack
/// is taken and the group commits past it, with no in-stream error.
async fn an_ack_sent_right_behind_open_acks_the_first_delivery(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_on(b, dir.path(), no_deadlines).await;
    let mut c = b.client().await;
    create_topic(&mut c, "t").await;
    publish(&mut c, "t", vec![event("e0", "", "x")]).await;
    for round in 0..20 {
        let group = format!("g{round}");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(open_req("t", &group, 10)).await.unwrap();
        tx.send(pb::SubscribeRequest {
            request: Some(Request::Ack(pb::Ack { offsets: vec![0] })),
        })
        .await
        .unwrap();
        let mut s = c
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        // Opened, the delivery of offset 0, then CaughtUp (an ack that
        // came too early would be refused in-stream, and never commit).
        let mut seen = Vec::new();
        while let Some(m) = tokio::time::timeout(WAIT, s.message())
            .await
            .unwrap()
            .unwrap()
        {
            match m.response {
                Some(Response::Heartbeat(_)) | Some(Response::Lag(_)) => {}
                Some(Response::CaughtUp(_)) => break,
                Some(Response::Error(e)) => panic!("round {round}: in-stream error {e:?}"),
                other => seen.push(other),
            }
        }
        assert_eq!(seen.len(), 2, "round {round}: {seen:?}");
        wait_committed(&c, "t", &group, 1).await;
        drop(tx);
    }
    b.stop().await;
}

// Every scenario above, once on the embedded log and once on a real
// three-node NATS JetStream cluster (R3), shared by this test binary.
scenarios!(
    fan_out_every_group_receives_every_event,
    competing_consumers_share_the_work_without_overlap,
    redelivery_after_the_ack_deadline,
    redelivery_after_a_nack_delay,
    redelivery_backoff_grows_with_each_nack,
    dead_letters_list_redrive_to_one_group_and_purge,
    replayed_event_that_fails_again_is_dead_lettered_again,
    late_group_replays_from_earliest_and_from_a_time,
    dedupe_returns_the_original_offset_and_delivers_once,
    per_key_order_holds_under_redelivery,
    stalled_subscriber_holds_bounded_in_flight_and_buffer,
    disconnected_members_events_go_to_another_member_at_once,
    seek_dry_run_matches_what_is_redelivered,
    caught_up_after_the_backlog_and_periodic_lag,
    caught_up_waits_for_events_held_behind_their_key,
    committed_progress_survives_consumer_and_broker_restarts,
    an_ack_sent_right_behind_open_acks_the_first_delivery,
);
