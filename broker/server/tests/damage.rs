//! A damaged record in the log, end to end: the broker binary as a child
//! process, real gRPC clients over TCP on 127.0.0.1, a byte of one stored
//! event flipped on disk.
//!
//! Two places for the damage: a sealed segment (flipped while the broker is
//! stopped; sealed segments are not scanned at start, so it starts) and the
//! active, last segment (flipped while the broker runs: a restart would
//! refuse to start on it, by design). The broker reads segments with
//! `pread` through the page cache and keeps no copy of the records, so a
//! byte written through another file descriptor is what its next read
//! sees. Nothing has read the topic before the flip.
//!
//! With encryption at rest on, the same holds: the checksum over the
//! stored (encrypted) bytes finds the flip, and the error names the same
//! file, byte and offset (tests marked `encrypted`).
//!
//! Two readers: an ephemeral tail, and a consumer group of two members.
//! Each gets every intact event before the damage exactly once, nothing at
//! or after it, and a DATA_LOSS naming file, byte and offset once; the
//! group shows the block in DescribeGroup, a metric and the log, and
//! SeekGroup past the damage resumes it.

mod common;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use common::{BrokerProcess, Client, Sub, connect, event, eventually, offset, publish};
use mesh_log::record::{self, Decoded};
use mesh_proto::broker::v1::{self as pb, start_position::Position, subscribe_response::Response};
use mesh_test_support::{flip_byte, prometheus};
use tokio::time::Instant;
use tonic::Code;

/// Events in the topic.
const N: u64 = 3000;
/// Upper bound for anything that should happen "soon".
const WAIT: Duration = Duration::from_secs(20);
const TOPIC: &str = "t";
const GROUP: &str = "g";
const BLOCKED_LOG: &str = "consumer group blocked at a damaged record";

#[derive(Clone, Copy, Debug)]
enum Place {
    /// The middle of the second of several sealed segments.
    Sealed,
    /// The middle of the active (last) segment.
    Active,
}

struct Damaged {
    broker: BrokerProcess,
    c: Client,
    metrics: SocketAddr,
    /// The broker's log (stderr), JSON lines.
    log: PathBuf,
    /// The damaged record: its offset, file and byte position.
    offset: u64,
    file: PathBuf,
    position: u64,
    // Dropped last: the broker must stop before its directory goes away.
    _dir: tempfile::TempDir,
    /// The key file's directory when encrypted (outside the data dir).
    _keys: Option<tempfile::TempDir>,
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("topics").join(TOPIC))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// The records of a segment file: (byte position, offset, frame length).
fn records(path: &Path) -> Vec<(u64, u64, usize)> {
    let data = Bytes::from(std::fs::read(path).unwrap());
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        match record::decode(&data.slice(pos..), 1 << 24) {
            Decoded::Record(r, n) => {
                out.push((pos as u64, r.offset, n));
                pos += n;
            }
            other => panic!("{} at byte {pos}: {other:?}", path.display()),
        }
    }
    out
}

/// A broker whose topic holds `N` events, one of them damaged at `place`;
/// encrypted at rest if `encrypted`.
async fn damaged(place: Place, encrypted: bool) -> Damaged {
    let dir = tempfile::tempdir().unwrap();
    let metrics = SocketAddr::from(([127, 0, 0, 1], common::unused_port()));
    let listen = metrics.to_string();
    let keys = encrypted.then(|| tempfile::tempdir().unwrap());
    let key_file = keys.as_ref().map(|k| {
        let p = k.path().join("keys");
        std::fs::write(&p, format!("1 {}\n", "5a".repeat(32))).unwrap();
        p.display().to_string()
    });
    let mut env = vec![
        (
            "BROKER__STORAGE__ENCRYPTION_KEY_FILE",
            key_file.as_deref().unwrap_or(""),
        ),
        ("BROKER__METRICS_LISTEN", listen.as_str()),
        ("BROKER__LOG_FORMAT", "json"),
        // Several segments for 3,000 small events.
        ("BROKER__STORAGE__SEGMENT_BYTES", "65536"),
        // "Exactly once" below must not depend on acking within a
        // deadline on a loaded machine.
        ("BROKER__DELIVERY__ACK_DEADLINE_MS", "60000"),
        ("BROKER__DELIVERY__LAG_REPORT_INTERVAL_MS", "100"),
    ];
    env.retain(|(_, v)| !v.is_empty());
    let log = dir.path().join("broker.log");
    let broker = BrokerProcess::spawn_logging_to(dir.path(), &env, &log);
    let mut c = connect(broker.addr).await.unwrap();
    c.create_topic(pb::CreateTopicRequest {
        name: TOPIC.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    for batch in 0..N / 250 {
        let events = (batch * 250..(batch + 1) * 250)
            .map(|i| event(&format!("e{i}"), "", &format!("payload {i:0>40}")))
            .collect();
        publish(&mut c, TOPIC, events).await;
    }
    // Every publish above returned once its events were fsynced.
    let segs = segments(dir.path());
    assert!(segs.len() >= 4, "want several sealed segments: {segs:?}");
    let file = match place {
        Place::Sealed => segs[1].clone(),
        Place::Active => segs.last().unwrap().clone(),
    };
    let damage = || {
        let recs = records(&file);
        assert!(recs.len() >= 3, "{}: {recs:?}", file.display());
        let (position, offset, len) = recs[recs.len() / 2];
        // A payload byte: the frame header (length, checksum) stays intact.
        flip_byte(&file, position + len as u64 / 2);
        (position, offset)
    };
    let (broker, c, (position, offset)) = match place {
        Place::Sealed => {
            drop(c);
            assert!(broker.sigterm().success());
            let at = damage();
            let broker = BrokerProcess::spawn_logging_to(dir.path(), &env, &log);
            let c = connect(broker.addr).await.unwrap();
            (broker, c, at)
        }
        Place::Active => {
            let at = damage();
            (broker, c, at)
        }
    };
    Damaged {
        broker,
        c,
        metrics,
        log,
        offset,
        file,
        position,
        _dir: dir,
        _keys: keys,
    }
}

impl Damaged {
    /// Asserts that `message` names the damaged file, byte and offset.
    fn assert_names_the_damage(&self, message: &str) {
        let file = self.file.display().to_string();
        for part in [
            file.as_str(),
            &format!("at byte {}", self.position),
            &format!("offset {}", self.offset),
        ] {
            assert!(message.contains(part), "{part:?} missing in {message:?}");
        }
    }

    async fn blocked_gauge(&self) -> Option<f64> {
        let samples = prometheus::scrape(self.metrics).ok()?;
        let labels = [("topic", TOPIC), ("group", GROUP)];
        prometheus::sample(&samples, "mesh_broker_group_blocked", &labels)
    }

    /// Lines of the broker's log saying the group was blocked.
    fn blocked_log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter(|l| l.contains(BLOCKED_LOG))
            .map(str::to_string)
            .collect()
    }

    fn stop(self) {
        let Damaged { broker, c, .. } = self;
        drop(c);
        // (sigterm blocks this thread; the runtime's other thread drives
        // whatever is left of the client.)
        assert!(broker.sigterm().success());
    }
}

fn tail_open(start: Position) -> pb::SubscribeRequest {
    common::open_from(TOPIC, "", 256, true, Some(start))
}

// ------------------------------------------------------------------ tail

async fn a_tail_gets_every_intact_event_then_data_loss(place: Place, encrypted: bool) {
    let mut d = damaged(place, encrypted).await;
    let damaged_at = d.offset;
    let mut sub = Sub::open_with(&mut d.c, tail_open(Position::Earliest(pb::Empty {}))).await;
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    // A tail's stream ends at the damage with the error as its status.
    let status = loop {
        let m = tokio::time::timeout_at(deadline, sub.rx.message())
            .await
            .expect("the tail ended in time");
        match m {
            Ok(Some(pb::SubscribeResponse {
                response: Some(Response::Deliveries(ds)),
            })) => got.extend(ds.deliveries.iter().map(offset)),
            Ok(Some(pb::SubscribeResponse {
                response: Some(Response::CaughtUp(c)),
            })) => panic!("caught up at {} past the damage at {damaged_at}", c.head),
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(got, (0..damaged_at).collect::<Vec<_>>());
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    d.assert_names_the_damage(status.message());

    // Past the damage, a tail gets the rest exactly once, then catches up.
    let mut sub = Sub::open_with(&mut d.c, tail_open(Position::Offset(damaged_at + 1))).await;
    let mut got = Vec::new();
    let head = loop {
        match sub.next(WAIT).await {
            Some(Response::Deliveries(ds)) => got.extend(ds.deliveries.iter().map(offset)),
            Some(Response::CaughtUp(c)) => break c.head,
            other => panic!("{other:?} after {} events", got.len()),
        }
    };
    assert_eq!(head, N);
    assert_eq!(got, (damaged_at + 1..N).collect::<Vec<_>>());
    drop(sub);
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_segment_damage_a_tail_gets_every_intact_event_then_data_loss() {
    a_tail_gets_every_intact_event_then_data_loss(Place::Sealed, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_segment_damage_a_tail_gets_every_intact_event_then_data_loss() {
    a_tail_gets_every_intact_event_then_data_loss(Place::Active, false).await;
}

// ------------------------------------------------------------------ group

/// What the members of the group received, per member.
#[derive(Default)]
struct Seen {
    offsets: BTreeSet<u64>,
    errors: Vec<Vec<pb::Error>>,
    caught_up: Vec<bool>,
}

/// Reads every member until `done` holds (or `WAIT` passes), acking every
/// delivery at once. Panics on a delivery at or after `stop_at` or one
/// seen twice.
async fn drain(
    subs: &mut [Sub],
    seen: &mut Seen,
    stop_at: u64,
    done: impl Fn(&Seen) -> bool,
) -> bool {
    seen.errors.resize(subs.len(), Vec::new());
    seen.caught_up.resize(subs.len(), false);
    let deadline = Instant::now() + WAIT;
    while !done(seen) {
        if Instant::now() >= deadline {
            return false;
        }
        // Whichever member has a message first.
        let (i, r) = {
            let futs = subs.iter_mut().enumerate().map(|(i, s)| {
                Box::pin(async move { (i, s.next(Duration::from_millis(50)).await) })
            });
            first_of(futs).await
        };
        match r {
            Some(Response::Deliveries(ds)) => {
                let offs: Vec<u64> = ds.deliveries.iter().map(offset).collect();
                for &o in &offs {
                    assert!(
                        o < stop_at,
                        "offset {o} delivered; nothing at or after {stop_at} may be"
                    );
                    assert!(seen.offsets.insert(o), "offset {o} delivered twice");
                }
                subs[i].ack(offs).await;
            }
            Some(Response::Error(e)) => seen.errors[i].push(e),
            Some(Response::CaughtUp(_)) => seen.caught_up[i] = true,
            Some(other) => panic!("member {i}: {other:?}"),
            None => {}
        }
    }
    true
}

/// The first of `futs` to finish (a tiny `select_all`: the workspace has no
/// `futures` crate).
async fn first_of<F, T>(futs: impl Iterator<Item = std::pin::Pin<Box<F>>>) -> T
where
    F: std::future::Future<Output = T>,
{
    let mut futs: Vec<_> = futs.collect();
    std::future::poll_fn(|cx| {
        for f in futs.iter_mut() {
            if let std::task::Poll::Ready(t) = f.as_mut().poll(cx) {
                return std::task::Poll::Ready(t);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

async fn describe(c: &mut Client) -> pb::GroupInfo {
    common::describe(c, TOPIC, GROUP).await
}

async fn seek(c: &mut Client, to: u64, dry_run: bool) -> pb::SeekGroupResponse {
    c.seek_group(pb::SeekGroupRequest {
        topic: TOPIC.into(),
        group: GROUP.into(),
        position: Some(pb::StartPosition {
            position: Some(Position::Offset(to)),
        }),
        dry_run,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn a_group_stops_at_the_damage_until_seeked_past(place: Place, encrypted: bool) {
    let mut d = damaged(place, encrypted).await;
    let damaged_at = d.offset;
    let mut subs = vec![
        Sub::open(&mut d.c, TOPIC, GROUP, 100).await,
        Sub::open(&mut d.c, TOPIC, GROUP, 100).await,
    ];

    // Every intact event before the damage, across both members, and the
    // error once to each.
    let mut seen = Seen::default();
    let want: BTreeSet<u64> = (0..damaged_at).collect();
    let ok = drain(&mut subs, &mut seen, damaged_at, |s| {
        s.offsets == want && s.errors.iter().all(|e| !e.is_empty())
    })
    .await;
    assert!(
        ok,
        "got {} of {damaged_at} events, errors {:?}",
        seen.offsets.len(),
        seen.errors
    );
    for e in seen.errors.iter().flatten() {
        assert_eq!(e.code(), pb::Code::DataLoss, "{e:?}");
        d.assert_names_the_damage(&e.message);
    }

    // The admin API says where and why it stopped, once the acks are
    // committed.
    let c = &mut d.c;
    assert!(
        eventually(WAIT, || {
            let mut c = c.clone();
            async move {
                let g = describe(&mut c).await;
                g.committed_offset == damaged_at && g.blocked_at == Some(damaged_at)
            }
        })
        .await,
        "{:?}",
        describe(&mut d.c).await
    );
    let g = describe(&mut d.c).await;
    assert_eq!(g.lag_events, N - damaged_at);
    d.assert_names_the_damage(&g.blocked_reason);
    let listed =
        d.c.list_groups(pb::ListGroupsRequest {
            topic: TOPIC.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.groups[0].blocked_at, Some(damaged_at));
    // So do the metric and the log.
    assert!(
        eventually(WAIT, || async { d.blocked_gauge().await == Some(1.0) }).await,
        "gauge {:?}",
        d.blocked_gauge().await
    );
    let lines = d.blocked_log_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    d.assert_names_the_damage(&lines[0]);
    assert!(
        lines[0].contains(&format!("\"offset\":{damaged_at}")),
        "{}",
        lines[0]
    );

    // A member joining the blocked group hears why nothing comes, once.
    subs.push(Sub::open(&mut d.c, TOPIC, GROUP, 100).await);
    assert!(
        drain(&mut subs, &mut seen, damaged_at, |s| !s.errors[2]
            .is_empty())
        .await
    );
    d.assert_names_the_damage(&seen.errors[2][0].message);
    // Nothing more comes: no event, no repeated error. Before, the
    // dispatcher retried the failed read every second and sent the error
    // each time; 1.5 s covers such a retry.
    let quiet_until = Instant::now() + Duration::from_millis(1500);
    drain(&mut subs, &mut seen, damaged_at, |_| {
        Instant::now() >= quiet_until
    })
    .await;
    assert_eq!(seen.offsets, want);
    assert_eq!(
        seen.errors.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![1, 1, 1]
    );
    assert_eq!(d.blocked_log_lines().len(), 1);
    assert_eq!(seen.caught_up, vec![false; 3], "caught up while blocked");

    // The way out: a dry run says exactly the damaged event is skipped,
    // then the seek past it unblocks the group.
    let dry = seek(&mut d.c, damaged_at + 1, true).await;
    assert_eq!(
        (
            dry.previous_offset,
            dry.events_to_skip,
            dry.events_to_redeliver,
            dry.applied
        ),
        (damaged_at, 1, 0, false)
    );
    assert_eq!(describe(&mut d.c).await.blocked_at, Some(damaged_at));
    let done = seek(&mut d.c, damaged_at + 1, false).await;
    assert_eq!((done.events_to_skip, done.applied), (1, true));
    let g = describe(&mut d.c).await;
    assert_eq!((g.blocked_at, g.blocked_reason.as_str()), (None, ""));
    assert!(
        eventually(WAIT, || async { d.blocked_gauge().await == Some(0.0) }).await,
        "gauge {:?}",
        d.blocked_gauge().await
    );

    // Delivery resumes after the damage: the rest exactly once, until
    // every member has been told it is caught up (each member's deliveries
    // come before its CaughtUp, so nothing is still on the way).
    let mut rest = Seen::default();
    let want: BTreeSet<u64> = (damaged_at + 1..N).collect();
    let ok = drain(&mut subs, &mut rest, N, |s| {
        s.offsets == want && s.caught_up.iter().all(|&c| c)
    })
    .await;
    assert!(
        ok,
        "got {} of {} events after the seek, caught up {:?}",
        rest.offsets.len(),
        want.len(),
        rest.caught_up
    );
    assert!(rest.errors.iter().all(Vec::is_empty), "{:?}", rest.errors);
    let c = &mut d.c;
    assert!(
        eventually(WAIT, || {
            let mut c = c.clone();
            async move { describe(&mut c).await.committed_offset == N }
        })
        .await
    );
    drop(subs);
    d.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_segment_damage_a_group_stops_there_until_seeked_past() {
    a_group_stops_at_the_damage_until_seeked_past(Place::Sealed, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_segment_damage_a_group_stops_there_until_seeked_past() {
    a_group_stops_at_the_damage_until_seeked_past(Place::Active, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_sealed_segment_damage_a_tail_gets_every_intact_event_then_data_loss() {
    a_tail_gets_every_intact_event_then_data_loss(Place::Sealed, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_active_segment_damage_a_group_stops_there_until_seeked_past() {
    a_group_stops_at_the_damage_until_seeked_past(Place::Active, true).await;
}
