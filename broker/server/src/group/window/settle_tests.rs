//! The window with a store that settles deliveries (a JetStream durable
//! consumer), on a fake clock, with the store played by the test: what it
//! hands over, and what the window tells it.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{
    Effect, GroupWindow,
    tests::{record, test_cfg},
};
use crate::group::store::{Delivery, Settle, StoredRecord};

/// `record(offset, key)` as the consumer's `delivered`-th delivery of it.
fn delivered(offset: u64, key: &str, delivered: u32) -> StoredRecord {
    let mut r = record(offset, key);
    r.delivery = Some(Delivery {
        reply: Arc::from(format!("ack.{offset}.{delivered}")),
        delivered,
    });
    r
}

/// The settlements among `effects`, as (ack subject, how).
fn settles(effects: &[Effect]) -> Vec<(String, Settle)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Settle(reply, how) => Some((reply.to_string(), *how)),
            _ => None,
        })
        .collect()
}

fn delivered_offsets(effects: &[Effect]) -> Vec<(u64, u32)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(_, crate::group::Outbound::Deliveries(d)) => Some(d),
            _ => None,
        })
        .flatten()
        .map(|d| (d.event.as_ref().unwrap().offset, d.delivery_attempt))
        .collect()
}

fn settling_window(head: u64, t0: Instant) -> GroupWindow {
    let mut w = GroupWindow::new("t", "g", test_cfg(), 3, None, head, t0);
    w.settled_by_store();
    w.started(0);
    w
}

#[test]
fn a_nack_goes_to_the_store_and_the_event_comes_back_from_it() {
    let t0 = Instant::now();
    let mut w = settling_window(2, t0);
    let m = w.join("m".into(), 5, false).member_id;
    // The first read of the epoch rewinds the store to the start.
    let r = w.poll_read(t0).expect("a read");
    assert!(r.rewind && r.from == 0);
    w.read_done(
        r.epoch,
        Ok(vec![delivered(0, "k", 1), delivered(1, "k", 1)]),
        t0,
    );
    w.pump(t0, 0);
    assert_eq!(
        delivered_offsets(&w.take_effects()),
        [(0, 1)],
        "1 waits behind 0"
    );

    // The nack is the store's: a nak with the backoff as its delay.
    w.nack(m, vec![0], Duration::ZERO, "boom", t0);
    let s = settles(&w.take_effects());
    assert_eq!(
        s,
        [("ack.0.1".into(), Settle::Nak(Duration::from_millis(10)))]
    );

    // Its delay ends: not ready until the store hands it over again; the
    // window asks for it (no new events: the head is read).
    let t1 = t0 + Duration::from_millis(10);
    w.on_timers(t1, 0, || 0);
    w.pump(t1, 0);
    assert!(delivered_offsets(&w.take_effects()).is_empty());
    let r = w.poll_read(t1).expect("a read for the redelivery");
    assert!(!r.rewind, "rewound once per epoch");
    w.read_done(r.epoch, Ok(vec![delivered(0, "k", 2)]), t1);
    w.pump(t1, 0);
    assert_eq!(delivered_offsets(&w.take_effects()), [(0, 2)]);

    // The ack goes to the newest delivery; the key's next event follows.
    w.ack(m, vec![0]);
    w.pump(t1, 0);
    let e = w.take_effects();
    assert_eq!(settles(&e), [("ack.0.2".into(), Settle::Ack)]);
    assert_eq!(delivered_offsets(&e), [(1, 1)]);
}

#[test]
fn the_attempt_is_the_stores_count_and_the_last_one_is_termed() {
    let t0 = Instant::now();
    let mut w = settling_window(1, t0);
    let m = w.join("m".into(), 5, false).member_id;
    let r = w.poll_read(t0).expect("a read");
    // A delivery the store counts as its third (say, after a dispatcher
    // that vanished): the member sees attempt 3, the last of 3.
    w.read_done(r.epoch, Ok(vec![delivered(0, "", 3)]), t0);
    w.pump(t0, 0);
    assert_eq!(delivered_offsets(&w.take_effects()), [(0, 3)]);
    w.nack(m, vec![0], Duration::ZERO, "boom", t0);
    let e = w.take_effects();
    assert!(settles(&e).is_empty(), "no nak after the last attempt");
    assert!(matches!(e[..], [Effect::DeadLetter(0, _)]));
    // Only once the dead letter is durable is it termed at the store.
    w.dead_lettered(0, Ok(()), t0);
    assert_eq!(
        settles(&w.take_effects()),
        [("ack.0.3".into(), Settle::Term)]
    );
}

#[test]
fn held_events_are_refreshed_and_skipped_records_acked() {
    let t0 = Instant::now();
    let mut w = settling_window(3, t0);
    w.join("m".into(), 1, false);
    let r = w.poll_read(t0).expect("a read");
    // Offset 1 is not an event: done at the store at once.
    let mut junk = delivered(1, "", 1);
    junk.payload = bytes::Bytes::from_static(b"\xff\xff");
    w.read_done(
        r.epoch,
        Ok(vec![delivered(0, "", 1), junk, delivered(2, "", 1)]),
        t0,
    );
    assert_eq!(
        settles(&w.take_effects()),
        [("ack.1.1".into(), Settle::Ack)]
    );
    w.pump(t0, 0);
    w.take_effects();
    // Half an ack deadline on, both held events (one in flight, one
    // waiting for credit) are refreshed so the store keeps them.
    let t1 = t0 + Duration::from_millis(250);
    w.on_timers(t0, 0, || 0);
    w.take_effects();
    w.on_timers(t1, 0, || 0);
    let mut s = settles(&w.take_effects());
    s.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        s,
        [
            ("ack.0.1".into(), Settle::Progress),
            ("ack.2.1".into(), Settle::Progress)
        ]
    );
}

#[test]
fn the_last_member_leaving_starts_a_new_epoch_that_rewinds() {
    let t0 = Instant::now();
    let mut w = settling_window(2, t0);
    let m = w.join("m".into(), 5, false).member_id;
    let r = w.poll_read(t0).expect("a read");
    w.read_done(
        r.epoch,
        Ok(vec![delivered(0, "", 1), delivered(1, "", 1)]),
        t0,
    );
    w.pump(t0, 0);
    w.ack(m, vec![0]);
    w.leave(m);
    w.take_effects();
    w.join("n".into(), 5, false);
    let r = w.poll_read(t0).expect("a read");
    assert!(r.rewind, "the new epoch rewinds the store");
    assert_eq!(r.from, 1, "to the first event not done");
}

#[test]
fn a_redelivery_the_store_never_sends_counts_as_done_after_twice_its_ack_wait() {
    let t0 = Instant::now();
    let mut w = settling_window(2, t0);
    let m = w.join("m".into(), 5, false).member_id;
    let r = w.poll_read(t0).expect("a read");
    w.read_done(
        r.epoch,
        Ok(vec![delivered(0, "k", 1), delivered(1, "k", 1)]),
        t0,
    );
    w.pump(t0, 0);
    w.nack(m, vec![0], Duration::ZERO, "boom", t0);
    let t1 = t0 + Duration::from_millis(10);
    w.on_timers(t1, 0, || 0);
    w.take_effects();
    // An ack from an earlier dispatcher took the event off the store: the
    // redelivery never comes. Until twice the ack_wait (2 × 2 × 500 ms)
    // the key waits for it ...
    let t2 = t1 + Duration::from_millis(1_900);
    w.on_timers(t2, 0, || 0);
    w.pump(t2, 0);
    assert!(delivered_offsets(&w.take_effects()).is_empty());
    // ... then, at the next refresh (every half deadline), the event is
    // done and its key goes on.
    let t3 = t2 + Duration::from_millis(250);
    w.on_timers(t3, 0, || 0);
    w.pump(t3, 0);
    let e = w.take_effects();
    assert!(settles(&e).contains(&("ack.0.1".into(), Settle::Ack)));
    assert_eq!(delivered_offsets(&e), [(1, 1)]);
    assert_eq!(w.position(), 1);
}

#[test]
fn a_failed_read_starts_over_from_the_first_event_not_done() {
    let t0 = Instant::now();
    let mut w = settling_window(4, t0);
    let m = w.join("m".into(), 5, false).member_id;
    let r = w.poll_read(t0).expect("a read");
    w.read_done(
        r.epoch,
        Ok(vec![delivered(0, "", 1), delivered(1, "", 1)]),
        t0,
    );
    w.pump(t0, 0);
    w.ack(m, vec![0]);
    w.take_effects();
    // The next fetch fails: some of its events may be lost on the way.
    let r = w.poll_read(t0).expect("a read of 2 and 3");
    let e = crate::error::BrokerError::Unavailable("fetch timed out".into());
    w.read_done(r.epoch, Err(crate::group::store::ReadError::Failed(e)), t0);
    // After the retry pause, the store is rewound to offset 1, the first
    // event not done, and what the member held is handed out again.
    let t1 = t0 + Duration::from_secs(1);
    let r = w.poll_read(t1).expect("a read after the pause");
    assert!(r.rewind && r.from == 1, "{r:?}");
    w.read_done(
        r.epoch,
        Ok(vec![delivered(1, "", 1), delivered(2, "", 1)]),
        t1,
    );
    w.pump(t1, 0);
    assert_eq!(delivered_offsets(&w.take_effects()), [(1, 1), (2, 1)]);
}
