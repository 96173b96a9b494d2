//! The window on a fake clock: `t0` plus whatever a test advances.

use std::{sync::Arc, time::Duration};

use mesh_proto::events::v1::Event;
use prost::Message;
use tokio::time::Instant;

use super::{Effect, GroupWindow, ReadRequest};
use crate::{
    config::BrokerConfig,
    error::BrokerError,
    group::{
        Outbound,
        store::{ReadError, StoredRecord},
    },
};

pub fn test_cfg() -> Arc<BrokerConfig> {
    let mut c = BrokerConfig::default();
    c.limits.group_window = 6;
    c.limits.max_credit = 5;
    c.delivery.ack_deadline = Duration::from_millis(500);
    c.delivery.min_backoff = Duration::from_millis(10);
    c.delivery.max_backoff = Duration::from_millis(100);
    c.delivery.commit_interval = Duration::from_millis(50);
    c.delivery.lag_report_interval = Duration::from_millis(1_000);
    Arc::new(c)
}

/// A stored event at `offset` whose subject (its key) is `key`.
pub fn record(offset: u64, key: &str) -> StoredRecord {
    let ev = Event {
        subject: key.to_string(),
        ..Default::default()
    };
    StoredRecord {
        offset,
        timestamp_us: 1_000,
        payload: ev.encode_to_vec().into(),
        delivery: None,
    }
}

/// The offsets delivered to each member, in order.
fn deliveries(effects: &[Effect]) -> Vec<(u64, Vec<u64>)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(id, Outbound::Deliveries(d)) => Some((
                *id,
                d.iter().map(|d| d.event.as_ref().unwrap().offset).collect(),
            )),
            _ => None,
        })
        .collect()
}

fn errors(effects: &[Effect]) -> Vec<(u64, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(id, Outbound::Error(e)) => Some((*id, e.message.clone())),
            _ => None,
        })
        .collect()
}

/// A started group at `committed` with the head at `head`.
fn window(head: u64, t0: Instant) -> GroupWindow {
    let mut w = GroupWindow::new("t", "g", test_cfg(), 2, None, head, t0);
    w.started(0);
    w
}

/// Answers the window's read from a log holding `keys[i]` at offset i.
fn read(w: &mut GroupWindow, keys: &[&str], now: Instant) -> ReadRequest {
    let r = w.poll_read(now).expect("a read is due");
    assert!(w.poll_read(now).is_none(), "one read in flight at most");
    let end = (r.from as usize + r.max_records).min(keys.len());
    let records = (r.from as usize..end)
        .map(|o| record(o as u64, keys[o]))
        .collect();
    w.read_done(r.epoch, Ok(records), now);
    r
}

#[test]
fn reads_within_the_window_and_hands_out_within_credit() {
    let t0 = Instant::now();
    let mut w = window(10, t0);
    assert!(w.poll_read(t0).is_none(), "no member, no read-ahead");
    let a = w.join("a".into(), 2, false).member_id;
    let b = w.join("b".into(), 2, false).member_id;
    let r = read(&mut w, &[""; 10], t0);
    assert_eq!((r.from, r.max_records), (0, 6), "the window is 6 events");
    w.pump(t0, 0);
    let got = deliveries(&w.take_effects());
    assert_eq!(got, vec![(a, vec![0, 1]), (b, vec![2, 3])]);
    assert!(w.poll_read(t0).is_none(), "the window is full");
    w.ack(a, vec![0]);
    w.pump(t0, 0);
    assert_eq!(deliveries(&w.take_effects()), vec![(a, vec![4])]);
    assert_eq!(w.position(), 1);
    let r = read(&mut w, &[""; 10], t0);
    assert_eq!((r.from, r.max_records), (6, 1));
}

#[test]
fn a_key_waits_for_its_earlier_event_and_no_other() {
    let t0 = Instant::now();
    let mut w = window(3, t0);
    let a = w.join("a".into(), 5, false).member_id;
    read(&mut w, &["k", "k", "j"], t0);
    w.pump(t0, 0);
    assert_eq!(deliveries(&w.take_effects()), vec![(a, vec![0, 2])]);
    w.report_caught_up();
    assert!(w.take_effects().is_empty(), "offset 1 is held behind 0");
    w.ack(a, vec![0]);
    w.pump(t0, 0);
    assert_eq!(deliveries(&w.take_effects()), vec![(a, vec![1])]);
    w.report_caught_up();
    assert!(matches!(
        w.take_effects()[..],
        [Effect::Send(_, Outbound::CaughtUp(3))]
    ));
}

#[test]
fn a_nack_redelivers_after_backoff_then_dead_letters_after_the_last_attempt() {
    let t0 = Instant::now();
    let mut w = window(2, t0);
    let a = w.join("a".into(), 5, false).member_id;
    read(&mut w, &["k", "k"], t0);
    w.pump(t0, 7);
    w.take_effects();
    w.nack(a, vec![0], Duration::ZERO, "bad", t0);
    // min_backoff = 10 ms after the first attempt.
    assert_eq!(w.next_wake(), t0 + Duration::from_millis(10));
    w.on_timers(t0 + Duration::from_millis(9), 0, || 0);
    w.pump(t0 + Duration::from_millis(9), 0);
    assert!(deliveries(&w.take_effects()).is_empty());
    let t1 = t0 + Duration::from_millis(10);
    w.on_timers(t1, 0, || 0);
    w.pump(t1, 0);
    assert_eq!(deliveries(&w.take_effects()), vec![(a, vec![0])]);
    w.nack(a, vec![0], Duration::ZERO, "still bad", t1);
    let letters: Vec<_> = w
        .take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::DeadLetter(off, l) => Some((off, l.attempts, l.reason, l.first_delivered_us)),
            _ => None,
        })
        .collect();
    assert_eq!(letters, vec![(0, 2, "still bad".to_string(), 7)]);
    // The key stays held until the dead letter is durable.
    w.pump(t1, 0);
    assert!(deliveries(&w.take_effects()).is_empty());
    w.dead_lettered(0, Ok(()), t1);
    w.pump(t1, 0);
    assert_eq!(deliveries(&w.take_effects()), vec![(a, vec![1])]);
    assert_eq!(w.snapshot().dead_lettered, 1);
}

#[test]
fn an_ack_deadline_that_passes_makes_the_event_ready_again() {
    let t0 = Instant::now();
    let mut w = window(1, t0);
    let a = w.join("a".into(), 1, false).member_id;
    read(&mut w, &[""], t0);
    w.pump(t0, 0);
    w.take_effects();
    let b = w.join("b".into(), 1, false).member_id;
    let t1 = t0 + Duration::from_millis(500);
    assert_eq!(w.next_wake(), t1);
    w.on_timers(t1, 0, || 0);
    // Redelivered after backoff: the first member got its credit back.
    let t2 = t1 + Duration::from_millis(10);
    w.on_timers(t2, 0, || 0);
    w.pump(t2, 0);
    let got = deliveries(&w.take_effects());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, vec![0]);
    // A late ack of the first holder is refused in-stream.
    let late = if got[0].0 == a { b } else { a };
    w.ack(late, vec![0]);
    assert_eq!(errors(&w.take_effects()).len(), 1);
}

#[test]
fn the_last_member_leaving_drops_the_window_and_a_stale_read_is_ignored() {
    let t0 = Instant::now();
    let mut w = window(4, t0);
    let a = w.join("a".into(), 5, false).member_id;
    read(&mut w, &[""; 4], t0);
    w.pump(t0, 0);
    w.take_effects();
    w.ack(a, vec![0]);
    w.join("b".into(), 5, false);
    let stale = w.poll_read(t0);
    assert!(stale.is_none(), "nothing left to read");
    w.leave(a);
    w.leave(2);
    assert_eq!((w.snapshot().buffered, w.position()), (0, 1));
    // The forced commit of the last leave is due now.
    assert_eq!(w.poll_commit(t0, false), Some(1));
    assert!(w.poll_commit(t0, true).is_none(), "one commit in flight");
    w.commit_done(1, Ok(()));
    assert_eq!(w.snapshot().committed, 1);
    let c = w.join("c".into(), 5, false).member_id;
    let r = w.poll_read(t0).unwrap();
    assert_eq!(r.from, 1);
    w.leave(c);
    w.join("d".into(), 5, false);
    // The read of the dropped window comes back: not inserted.
    w.read_done(r.epoch, Ok(vec![record(1, "")]), t0);
    assert_eq!(w.snapshot().buffered, 0);
    assert_eq!(w.poll_read(t0).unwrap().from, 1);
}

#[test]
fn damage_blocks_the_group_until_a_seek_moves_it() {
    let t0 = Instant::now();
    let mut w = window(5, t0);
    let a = w.join("a".into(), 5, false).member_id;
    let r = w.poll_read(t0).unwrap();
    w.read_done(r.epoch, Ok(vec![record(0, ""), record(1, "")]), t0);
    w.pump(t0, 0);
    assert_eq!(deliveries(&w.take_effects()), vec![(a, vec![0, 1])]);
    let r = w.poll_read(t0).unwrap();
    assert_eq!(r.from, 2);
    let damage = BrokerError::FailedPrecondition("bad bytes".into());
    w.read_done(r.epoch, Err(ReadError::Damaged(damage)), t0);
    let told = errors(&w.take_effects());
    assert_eq!(told.len(), 1);
    assert!(told[0].1.contains("blocked at offset 2"), "{told:?}");
    assert!(w.poll_read(t0 + Duration::from_secs(5)).is_none());
    let b = w.join("b".into(), 5, false).member_id;
    assert_eq!(errors(&w.take_effects()), vec![(b, told[0].1.clone())]);
    let outcome = w.seek_outcome(3);
    assert_eq!(
        (outcome.previous, outcome.to_skip, outcome.to_redeliver),
        (0, 3, 0)
    );
    w.begin_seek();
    assert!(w.poll_commit(t0 + Duration::from_secs(1), true).is_none());
    w.seek_applied(3);
    assert_eq!(w.snapshot().blocked, None);
    assert_eq!(w.poll_read(t0).unwrap().from, 3);
}

#[test]
fn a_failed_read_is_retried_after_a_second_and_members_are_told() {
    let t0 = Instant::now();
    let mut w = window(1, t0);
    w.join("a".into(), 5, false);
    let r = w.poll_read(t0).unwrap();
    let e = BrokerError::FailedPrecondition("disk".into());
    w.read_done(r.epoch, Err(ReadError::Failed(e)), t0);
    assert_eq!(errors(&w.take_effects()).len(), 1);
    assert!(w.poll_read(t0 + Duration::from_millis(999)).is_none());
    assert!(w.poll_read(t0 + Duration::from_secs(1)).is_some());
}

#[test]
fn credit_is_capped_at_max_credit_in_flight() {
    let t0 = Instant::now();
    let mut w = window(3, t0);
    let a = w.join("a".into(), 2, false).member_id;
    read(&mut w, &["", "", ""], t0);
    w.pump(t0, 0);
    w.take_effects();
    w.credit(a, 10);
    assert_eq!(errors(&w.take_effects()).len(), 1);
    assert_eq!(w.snapshot().members[0].credit, 3, "5 at most, 2 in flight");
}

#[test]
fn a_seek_counts_what_it_redelivers_and_skips() {
    let t0 = Instant::now();
    let mut w = window(6, t0);
    let a = w.join("a".into(), 5, false).member_id;
    read(&mut w, &[""; 6], t0);
    w.pump(t0, 0);
    w.take_effects();
    w.ack(a, vec![0, 1, 3]);
    // Done: 0, 1, 3. Pending: 2, 4, 5. Read up to 6.
    let back = w.seek_outcome(1);
    assert_eq!((back.to_redeliver, back.to_skip), (2, 0));
    let ahead = w.seek_outcome(8);
    assert_eq!((ahead.to_redeliver, ahead.to_skip), (0, 3 + 2));
}
