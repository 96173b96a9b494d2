//! The tokio task that runs one group's [`GroupWindow`].
//!
//! Sessions send it [`Cmd`]s; it answers on each member's bounded
//! channel. Its loop never awaits storage: reads, commits, dead-letter
//! appends, age lookups and the storage calls of a first join or a seek
//! are spawned futures that report back on the actor's own channel
//! (`Done`), so a slow disk delays no ack and no credit. It keeps:
//!
//! - one read in flight, one commit in flight (the window tracks both);
//! - a seek's reset waits for the commit in flight, and no commit starts
//!   until the reset is applied;
//! - while a first join or a seek waits on storage, the actor takes no
//!   session command (they wait in its bounded channel), so none sees the
//!   group half-changed;
//! - a new member is handed its first events before any command queued
//!   behind its join: a client that acks at once (grpcurl with its
//!   requests in -d) acks an offset it already holds.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};

use super::{
    GroupHandle, JoinRequest, Joined, Outbound, SeekOutcome, Snapshot,
    consumer::{Settler, spawn_settler},
    store::{GroupStore, ReadError, StoredRecord, resolve_start},
    window::{Effect, GroupWindow},
};
use crate::{
    config::BrokerConfig,
    convert,
    error::{BrokerError, Result},
};

/// Commands handled in a row before the actor reads and pumps again.
const MAX_CMDS_PER_STEP: usize = 256;

/// What sessions and admin calls ask of a group.
pub enum Cmd {
    Join(JoinRequest, oneshot::Sender<Result<Joined>>),
    Leave(u64),
    Ack(u64, Vec<u64>),
    Nack {
        member: u64,
        offsets: Vec<u64>,
        delay: Duration,
        reason: String,
    },
    Credit(u64, u32),
    /// Deliveries to an auto-ack member reached its stream's outbox: they
    /// count as acked now, not when they were handed to the session, so a
    /// reader that stalls holds at most its credit (and the window keeps
    /// the events until then).
    Sent(u64, Vec<u64>),
    Describe(oneshot::Sender<Snapshot>),
    Seek {
        target: u64,
        dry_run: bool,
        reply: oneshot::Sender<Result<SeekOutcome>>,
    },
    Stop(oneshot::Sender<()>),
}

/// A storage call the actor started, finished.
enum Done {
    Read(u64, std::result::Result<Vec<StoredRecord>, ReadError>),
    Committed(u64, Result<()>),
    DeadLettered(u64, std::result::Result<(), String>),
    Aged(u64, Duration),
    /// A first join's start position is resolved and durable.
    Started(Result<u64>, JoinRequest, oneshot::Sender<Result<Joined>>),
    /// A seek's reset is durable (or failed).
    Reset(
        Result<()>,
        u64,
        SeekOutcome,
        oneshot::Sender<Result<SeekOutcome>>,
    ),
}

/// Why the actor takes no session command for now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    /// A first join is resolving and committing where the group starts.
    Start,
    /// A seek's reset waits for the commit in flight, or is under way.
    Seek,
    /// A member joined then: the reads after it are pumped before the
    /// commands queued behind the join, until one brings events, there is
    /// nothing to read, or [`JOIN_READ_MAX`] passed.
    JoinRead(Instant),
}

/// A JetStream consumer may answer a first read with nothing for a moment.
const JOIN_READ_MAX: Duration = Duration::from_secs(1);

/// Starts the actor for `group` on `topic`, on any [`GroupStore`].
pub fn spawn_on(
    store: Arc<dyn GroupStore>,
    topic: &str,
    group: &str,
    cfg: Arc<BrokerConfig>,
) -> Result<GroupHandle> {
    let committed = store.load_committed()?;
    let max_attempts = store
        .max_delivery_attempts()?
        .unwrap_or(cfg.delivery.max_delivery_attempts);
    let head_rx = store.topic_store().watch_head()?;
    let (tx, rx) = mpsc::channel(1024);
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let mut window = GroupWindow::new(
        topic,
        group,
        cfg,
        max_attempts,
        committed,
        *head_rx.borrow(),
        Instant::now(),
    );
    let settles = store.settles().then(|| {
        window.settled_by_store();
        spawn_settler(store.clone())
    });
    let actor = Actor {
        window,
        settles,
        store,
        outs: HashMap::new(),
        done: done_tx,
        hold: None,
        waiting_seek: None,
        aging: false,
    };
    tokio::spawn(actor.run(rx, done_rx, head_rx));
    Ok(GroupHandle { tx })
}

struct Actor {
    /// The group's delivery state; all decisions are its.
    window: GroupWindow,
    /// Where settlements go, when the store settles deliveries (its
    /// batches are unbounded in count but each holds events of the
    /// bounded window).
    settles: Option<Settler>,
    /// Where the group's events, position and dead letters are.
    store: Arc<dyn GroupStore>,
    /// Each member's channel to its session.
    outs: HashMap<u64, mpsc::Sender<Outbound>>,
    /// Where spawned storage calls report back.
    done: mpsc::UnboundedSender<Done>,
    /// Set while session commands must wait (see [`Hold`]).
    hold: Option<Hold>,
    /// A seek waiting for the commit in flight to finish first.
    waiting_seek: Option<(u64, SeekOutcome, oneshot::Sender<Result<SeekOutcome>>)>,
    /// An age lookup is in flight: one at a time, so a hung disk does not
    /// pile them up.
    aging: bool,
}

/// Whether the actor may take the next queued command before pumping.
#[derive(PartialEq, Eq)]
enum Flow {
    Go,
    EndBurst,
}

impl Actor {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Cmd>,
        mut done_rx: mpsc::UnboundedReceiver<Done>,
        mut head_rx: watch::Receiver<u64>,
    ) {
        let mut stop_reply = None;
        loop {
            // Cached: the head is needed on every step of the hot path.
            self.window.set_head(*head_rx.borrow_and_update());
            self.step();
            let wake = self.window.next_wake();
            let held = self.hold.is_some();
            tokio::select! {
                biased;
                // First: at most a handful are in flight, and a busy
                // command channel must not starve the read-ahead.
                done = done_rx.recv() => {
                    if let Some(d) = done {
                        self.done(d);
                    }
                }
                cmd = rx.recv(), if !held => match cmd {
                    None => break,
                    Some(Cmd::Stop(reply)) => { stop_reply = Some(reply); break; }
                    Some(cmd) => match self.burst(cmd, &mut rx) {
                        Ok(()) => {}
                        Err(reply) => { stop_reply = reply; break; }
                    },
                },
                changed = head_rx.changed() => {
                    if changed.is_err() {
                        let e = BrokerError::NotFound(format!("topic {:?} was deleted", self.store.topic_store().topic()));
                        self.window.broadcast_error(&e);
                        self.flush();
                        break;
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
            self.on_timers();
        }
        // Storage calls that move the position finish first, so the last
        // commit cannot race them.
        while self.window.commit_in_flight() || matches!(self.hold, Some(Hold::Start | Hold::Seek))
        {
            match done_rx.recv().await {
                Some(d) => self.done(d),
                None => break,
            }
        }
        if let Some(pos) = self.window.poll_commit(Instant::now(), true) {
            let r = self.store.commit(pos).await;
            self.window.commit_done(pos, r);
        }
        self.window.stopped();
        if let Some(r) = stop_reply {
            let _ = r.send(());
        }
    }

    /// Hands out what is ready, starts the read-ahead and a due commit,
    /// and sends what the window decided.
    fn step(&mut self) {
        let now = Instant::now();
        self.window.pump(now, convert::now_us());
        self.flush();
        if let Some(r) = self.window.poll_read(now) {
            let (store, done) = (self.store.clone(), self.done.clone());
            tokio::spawn(async move {
                let records = store.read_group(r).await;
                let _ = done.send(Done::Read(r.epoch, records));
            });
        }
        if let Some(Hold::JoinRead(since)) = self.hold
            && !self.window.reading()
            && (!self.window.has_unread() || since.elapsed() >= JOIN_READ_MAX)
        {
            self.hold = None; // nothing (more) to read for the new member
        }
        self.window.report_caught_up();
        if let Some(pos) = self.window.poll_commit(now, false) {
            let (store, done) = (self.store.clone(), self.done.clone());
            tokio::spawn(async move {
                let _ = done.send(Done::Committed(pos, store.commit(pos).await));
            });
        }
        self.flush();
    }

    /// Does what the window asked for.
    fn flush(&mut self) {
        loop {
            let effects = self.window.take_effects();
            if effects.is_empty() {
                return;
            }
            let mut gone = Vec::new();
            let mut settled = Vec::new();
            for effect in effects {
                match effect {
                    Effect::Send(id, msg) => {
                        let Some(out) = self.outs.get(&id) else {
                            continue;
                        };
                        let deliveries = matches!(msg, Outbound::Deliveries(_));
                        // Credit bounds what a member can have queued, so a
                        // full channel means the session is gone.
                        if out.try_send(msg).is_err() && deliveries {
                            gone.push(id);
                        }
                    }
                    Effect::Settle(reply, how) => settled.push((reply, how)),
                    Effect::DeadLetter(off, letter) => {
                        let (store, done) = (self.store.clone(), self.done.clone());
                        tokio::spawn(async move {
                            let r = store.dead_letter(*letter).await.map_err(|e| e.to_string());
                            let _ = done.send(Done::DeadLettered(off, r));
                        });
                    }
                }
            }
            if let Some(tx) = &self.settles
                && !settled.is_empty()
            {
                let _ = tx.send(settled);
            }
            if gone.is_empty() {
                continue;
            }
            for id in gone {
                self.outs.remove(&id);
                self.window.leave(id);
            }
            // What they held goes to the others.
            self.window.pump(Instant::now(), convert::now_us());
        }
    }

    /// Handles `first` and the commands already queued behind it (mostly
    /// acks): one read-ahead per burst instead of one per ack. `Err` means
    /// stop (with the reply to a Stop, if it was one).
    fn burst(
        &mut self,
        first: Cmd,
        rx: &mut mpsc::Receiver<Cmd>,
    ) -> std::result::Result<(), Option<oneshot::Sender<()>>> {
        if self.handle(first) == Flow::EndBurst {
            return Ok(());
        }
        for _ in 0..MAX_CMDS_PER_STEP {
            if self.hold.is_some() {
                break;
            }
            match rx.try_recv() {
                Ok(Cmd::Stop(reply)) => return Err(Some(reply)),
                Ok(cmd) => {
                    if self.handle(cmd) == Flow::EndBurst {
                        break;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return Err(None),
            }
        }
        Ok(())
    }

    fn handle(&mut self, cmd: Cmd) -> Flow {
        match cmd {
            Cmd::Join(req, reply) => {
                if self.window.needs_start() {
                    self.hold = Some(Hold::Start);
                    let (store, done) = (self.store.clone(), self.done.clone());
                    tokio::spawn(async move {
                        let start = async {
                            let start = resolve_start(store.topic_store(), req.start).await?;
                            store.commit(start).await?;
                            Ok(start)
                        }
                        .await;
                        let _ = done.send(Done::Started(start, req, reply));
                    });
                } else {
                    self.join(req, reply);
                }
                // The new member is handed its events before any command
                // queued behind its join.
                return Flow::EndBurst;
            }
            Cmd::Leave(id) => {
                self.outs.remove(&id);
                self.window.leave(id);
            }
            Cmd::Ack(id, offsets) => self.window.ack(id, offsets),
            Cmd::Nack {
                member,
                offsets,
                delay,
                reason,
            } => self
                .window
                .nack(member, offsets, delay, &reason, Instant::now()),
            Cmd::Credit(id, add) => self.window.credit(id, add),
            Cmd::Sent(id, offsets) => self.window.sent(id, offsets),
            Cmd::Describe(reply) => {
                let _ = reply.send(self.window.snapshot());
            }
            Cmd::Seek {
                target,
                dry_run,
                reply,
            } => {
                let outcome = self.window.seek_outcome(target);
                if dry_run {
                    let _ = reply.send(Ok(outcome));
                } else {
                    self.hold = Some(Hold::Seek);
                    self.window.begin_seek();
                    self.waiting_seek = Some((target, outcome, reply));
                    self.start_reset();
                }
            }
            Cmd::Stop(_) => unreachable!("handled by the loop"),
        }
        Flow::Go
    }

    fn join(&mut self, req: JoinRequest, reply: oneshot::Sender<Result<Joined>>) {
        if self.window.member_count() >= req.max_members {
            let _ = reply.send(Err(crate::error::BrokerError::ResourceExhausted(format!(
                "limits.max_group_members = {} members of group {:?} are already connected",
                req.max_members,
                self.window.group()
            ))));
            return;
        }
        let joined = self.window.join(req.name, req.credit, req.auto_ack);
        self.outs.insert(joined.member_id, req.out);
        self.hold = Some(Hold::JoinRead(Instant::now()));
        let _ = reply.send(Ok(joined));
    }

    /// Starts the waiting seek's reset once no commit is in flight.
    fn start_reset(&mut self) {
        if self.window.commit_in_flight() {
            return;
        }
        let Some((target, outcome, reply)) = self.waiting_seek.take() else {
            return;
        };
        let (store, done) = (self.store.clone(), self.done.clone());
        tokio::spawn(async move {
            let r = store.reset(target).await;
            let _ = done.send(Done::Reset(r, target, outcome, reply));
        });
    }

    fn done(&mut self, d: Done) {
        let now = Instant::now();
        match d {
            Done::Read(epoch, records) => {
                let current = epoch == self.window.epoch();
                let empty = matches!(&records, Ok(r) if r.is_empty());
                self.window.read_done(epoch, records, now);
                if let Some(Hold::JoinRead(since)) = self.hold
                    && current
                    && (!empty || !self.window.has_unread() || since.elapsed() >= JOIN_READ_MAX)
                {
                    self.hold = None;
                }
            }
            Done::Committed(pos, r) => {
                self.window.commit_done(pos, r);
                self.start_reset();
            }
            Done::DeadLettered(off, r) => self.window.dead_lettered(off, r, now),
            Done::Aged(events, age) => {
                self.aging = false;
                self.window.set_lag_metric(events, age);
            }
            Done::Started(start, req, reply) => {
                self.hold = None;
                match start {
                    Ok(start) => {
                        self.window.started(start);
                        self.join(req, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Done::Reset(r, target, outcome, reply) => {
                self.hold = None;
                match r {
                    Ok(()) => {
                        self.window.seek_applied(target);
                        let _ = reply.send(Ok(outcome));
                    }
                    Err(e) => {
                        self.window.seek_failed();
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }

    fn on_timers(&mut self) {
        let topic = self.store.topic_store();
        let earliest = || topic.bounds().map(|b| b.earliest).unwrap_or(0);
        let measure = self
            .window
            .on_timers(Instant::now(), convert::now_us(), earliest);
        if let Some((events, offset)) = measure
            && !self.aging
        {
            self.aging = true;
            let (store, done) = (self.store.clone(), self.done.clone());
            tokio::spawn(async move {
                let age = store.age_at(offset).await;
                let _ = done.send(Done::Aged(events, age));
            });
        }
    }
}
