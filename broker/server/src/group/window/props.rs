//! Property tests: random sequences of joins, leaves, acks, nacks, credit,
//! time passing, publishes and storage completions, with the window's
//! guarantees checked after every step.

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use proptest::prelude::*;
use tokio::time::Instant;

use super::{Effect, GroupWindow, ReadRequest, entry::State, tests};
use crate::{
    error::BrokerError,
    group::{Outbound, store::ReadError},
};

#[derive(Clone, Debug)]
enum Op {
    Join {
        credit: u32,
        auto_ack: bool,
    },
    Leave(usize),
    /// The member's `n`-th delivery it still holds, acked (or, for an
    /// auto-ack member, reported sent).
    Ack(usize, usize),
    Nack(usize, usize),
    /// An offset the member never held.
    AckStranger(usize, u64),
    Credit(usize, u32),
    Advance(u64),
    Publish(u8),
    ReadDone {
        fail: bool,
    },
    CommitDone {
        ok: bool,
    },
    DeadLetterDone {
        ok: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u32..4, any::<bool>()).prop_map(|(credit, auto_ack)| Op::Join { credit, auto_ack }),
        1 => (0usize..4).prop_map(Op::Leave),
        3 => (0usize..4, 0usize..4).prop_map(|(m, n)| Op::Ack(m, n)),
        1 => (0usize..4, 0usize..4).prop_map(|(m, n)| Op::Nack(m, n)),
        1 => (0usize..4, 0u64..20).prop_map(|(m, o)| Op::AckStranger(m, o)),
        1 => (0usize..4, 0u32..4).prop_map(|(m, n)| Op::Credit(m, n)),
        1 => (0u64..700).prop_map(Op::Advance),
        1 => (1u8..4).prop_map(Op::Publish),
        4 => (0u8..6).prop_map(|f| Op::ReadDone { fail: f == 0 }),
        1 => any::<bool>().prop_map(|ok| Op::CommitDone { ok }),
        1 => (0u8..4).prop_map(|f| Op::DeadLetterDone { ok: f != 0 }),
    ]
}

const KEYS: [&str; 4] = ["", "a", "b", ""];

/// The window plus a fake log and fake storage calls.
struct Harness {
    w: GroupWindow,
    now: Instant,
    /// The key of each published offset.
    log: Vec<&'static str>,
    read: Option<ReadRequest>,
    commit: Option<u64>,
    dead_letters: Vec<u64>,
    /// Offsets acked or durably dead-lettered: done for good.
    done: BTreeSet<u64>,
    /// Credit each member may hold at most: what it opened with plus what
    /// it added, capped at `limits.max_credit`.
    budget: HashMap<u64, u32>,
    /// What each member holds, as its session saw it.
    holds: HashMap<u64, Vec<u64>>,
    /// The position durably committed.
    durable: u64,
}

impl Harness {
    fn member(&self, i: usize) -> Option<u64> {
        let mut ids: Vec<u64> = self.w.members.keys().copied().collect();
        ids.sort();
        (!ids.is_empty()).then(|| ids[i % ids.len()])
    }

    fn held(&self, i: usize, n: usize) -> Option<(u64, u64)> {
        let m = self.member(i)?;
        let h = self.holds.get(&m)?;
        (!h.is_empty()).then(|| (m, h[n % h.len()]))
    }

    fn apply(&mut self, op: Op) {
        let now = self.now;
        match op {
            Op::Join { credit, auto_ack } => {
                let id = self.w.join(String::new(), credit, auto_ack).member_id;
                self.budget.insert(id, credit);
            }
            Op::Leave(i) => {
                if let Some(m) = self.member(i) {
                    self.w.leave(m);
                    self.holds.remove(&m);
                }
            }
            Op::Ack(i, n) | Op::Nack(i, n) if self.held(i, n).is_none() => {}
            Op::Ack(i, n) => {
                let (m, off) = self.held(i, n).expect("checked");
                self.holds.get_mut(&m).expect("held").retain(|&o| o != off);
                if self.w.members[&m].in_flight.contains(&off) {
                    self.done.insert(off);
                }
                if self.w.members[&m].auto_ack {
                    self.w.sent(m, vec![off]);
                } else {
                    self.w.ack(m, vec![off]);
                }
            }
            Op::Nack(i, n) => {
                let (m, off) = self.held(i, n).expect("checked");
                self.holds.get_mut(&m).expect("held").retain(|&o| o != off);
                self.w.nack(m, vec![off], Duration::ZERO, "nack", now);
            }
            Op::AckStranger(i, off) => {
                if let Some(m) = self.member(i)
                    && !self.w.members[&m].in_flight.contains(&off)
                {
                    self.w.ack(m, vec![off]);
                    let refused = self.w.take_effects();
                    assert!(matches!(refused[..], [Effect::Send(_, Outbound::Error(_))]));
                }
            }
            Op::Credit(i, add) => {
                if let Some(m) = self.member(i) {
                    self.w.credit(m, add);
                    let b = self.budget.get_mut(&m).expect("joined");
                    *b = (*b + add).min(self.w.cfg.limits.max_credit);
                }
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(ms);
                let measure = self.w.on_timers(self.now, 0, || 0);
                if let Some((_, offset)) = measure {
                    assert_eq!(offset, self.w.position());
                }
            }
            Op::Publish(n) => {
                for _ in 0..n {
                    self.log.push(KEYS[self.log.len() % KEYS.len()]);
                }
                self.w.set_head(self.log.len() as u64);
            }
            Op::ReadDone { fail } => {
                let Some(r) = self.read.take() else { return };
                let result = if fail {
                    Err(ReadError::Failed(BrokerError::ShuttingDown))
                } else {
                    let end = (r.from as usize + r.max_records).min(self.log.len());
                    Ok((r.from as usize..end)
                        .map(|o| tests::record(o as u64, self.log[o]))
                        .collect())
                };
                self.w.read_done(r.epoch, result, now);
            }
            Op::CommitDone { ok } => {
                let Some(pos) = self.commit.take() else {
                    return;
                };
                if ok {
                    self.durable = pos;
                    self.w.commit_done(pos, Ok(()));
                } else {
                    self.w.commit_done(pos, Err(BrokerError::ShuttingDown));
                }
            }
            Op::DeadLetterDone { ok } => {
                if self.dead_letters.is_empty() {
                    return;
                }
                let off = self.dead_letters.remove(0);
                let current = self
                    .w
                    .pending
                    .get(&off)
                    .is_some_and(|e| e.state == State::DeadLettering);
                if ok {
                    if current {
                        self.done.insert(off);
                    }
                    self.w.dead_lettered(off, Ok(()), now);
                } else {
                    self.w.dead_lettered(off, Err("disk".into()), now);
                }
            }
        }
        self.step();
    }

    /// What the actor does after every command, checking each delivery.
    fn step(&mut self) {
        self.w.pump(self.now, 1);
        match self.w.poll_read(self.now) {
            Some(r) => {
                assert!(self.read.is_none(), "two reads in flight");
                self.read = Some(r);
            }
            None => assert!(self.read.is_none() || self.w.reading),
        }
        self.w.report_caught_up();
        if let Some(pos) = self.w.poll_commit(self.now, false) {
            assert!(self.commit.is_none(), "two commits in flight");
            self.commit = Some(pos);
        }
        for e in self.w.take_effects() {
            match e {
                Effect::Send(m, Outbound::Deliveries(d)) => {
                    for d in d {
                        let off = d.event.expect("an event").offset;
                        self.delivered(m, off);
                    }
                }
                Effect::DeadLetter(off, _) => self.dead_letters.push(off),
                // The log's records carry no deliveries to settle.
                Effect::Send(..) => {}
                Effect::Settle(..) => panic!("a window on the log settled a delivery"),
            }
        }
        self.check();
    }

    fn delivered(&mut self, m: u64, off: u64) {
        let key = KEYS[off as usize % KEYS.len()];
        assert!(!self.done.contains(&off) || off >= self.durable);
        if !key.is_empty() {
            // Per-key order: every earlier event of the key is done.
            for earlier in (0..off).filter(|&o| KEYS[o as usize % KEYS.len()] == key) {
                assert!(
                    !self.w.pending.contains_key(&earlier),
                    "offset {off} of key {key:?} delivered before {earlier}"
                );
            }
        }
        for (other, h) in &mut self.holds {
            if *other != m {
                // The other session's copy went back (deadline or leave).
                h.retain(|&o| o != off);
            }
        }
        self.holds.entry(m).or_default().push(off);
    }

    fn check(&self) {
        let mut owner = HashMap::new();
        for (&id, m) in &self.w.members {
            let budget = self.budget[&id];
            assert!(m.in_flight.len() as u32 <= budget, "credit exceeded");
            assert_eq!(m.in_flight.len() as u32 + m.credit, budget);
            for &off in &m.in_flight {
                assert!(owner.insert(off, id).is_none(), "{off} held twice");
                let e = &self.w.pending[&off];
                assert_eq!(e.state.in_flight_to(), Some(id));
            }
        }
        for (off, e) in &self.w.pending {
            if let Some(m) = e.state.in_flight_to() {
                assert_eq!(owner.get(off), Some(&m));
            }
        }
        // The position never passes an event that is not done.
        let committed = self.w.committed.expect("started");
        for c in [committed, self.durable, self.commit.unwrap_or(0)] {
            let undone = (0..c).find(|o| !self.done.contains(o));
            assert_eq!(undone, None, "position {c} passes unacked event");
        }
        assert_eq!(self.w.keys.held(), self.held_by_key());
    }

    fn held_by_key(&self) -> usize {
        let mut per_key: HashMap<&str, usize> = HashMap::new();
        for e in self.w.pending.values() {
            if let Some(k) = &e.key {
                *per_key.entry(k).or_default() += 1;
            }
        }
        per_key.values().map(|n| n - 1).sum()
    }
}

impl State {
    fn in_flight_to(&self) -> Option<u64> {
        match self {
            State::InFlight { member, .. } => Some(*member),
            _ => None,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn the_window_keeps_its_guarantees(ops in proptest::collection::vec(op(), 1..120)) {
        let t0 = Instant::now();
        let mut w = GroupWindow::new("t", "g", tests::test_cfg(), 3, None, 0, t0);
        w.started(0);
        let mut h = Harness {
            w,
            now: t0,
            log: Vec::new(),
            read: None,
            commit: None,
            dead_letters: Vec::new(),
            done: BTreeSet::new(),
            budget: HashMap::new(),
            holds: HashMap::new(),
            durable: 0,
        };
        for op in ops {
            h.apply(op);
        }
    }
}
