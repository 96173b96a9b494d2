//! The real `broker` binary dies in the middle of publish and subscribe
//! traffic, and no acknowledged event may be lost.
//!
//! - `sigkill_mid_traffic_keeps_every_acknowledged_event`: producers on the
//!   streaming Publish RPC and two consumer groups run while the broker is
//!   SIGKILLed at random moments and restarted on the same data directory
//!   (three times). Afterwards every acknowledged event must reach every
//!   group, no event id may sit at two offsets, and no group's committed
//!   position may ever go backwards.
//! - `sigterm_mid_traffic_drains_and_exits_zero`: SIGTERM during traffic
//!   makes the process exit 0 within the drain deadline, ends subscriber
//!   streams with UNAVAILABLE, and keeps every acknowledged event.
//!
//! Every loop here is bounded both in iterations and in time. The random
//! kill moments come from a seed printed at the start (set CRASH_SEED to
//! replay one).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use mesh_proto::{
    broker::v1::{self as pb, subscribe_request::Request, subscribe_response::Response},
    events::v1::Event,
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_stream::wrappers::ReceiverStream;

const TOPIC: &str = "crash";
const GROUPS: [&str; 2] = ["billing", "audit"];
const MEMBERS_PER_GROUP: usize = 2;
const PRODUCERS: usize = 3;
/// Publish requests one producer keeps in flight on its stream.
const MAX_IN_FLIGHT: usize = 16;
/// A producer tops its stream up to MAX_IN_FLIGHT requests this often.
const BURST_EVERY: Duration = Duration::from_millis(20);
/// A stream that answers nothing for this long is treated as broken.
const STALL: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------ tools

/// xorshift64*: enough randomness for kill timing, with no dependency.
struct Rng(u64);

impl Rng {
    fn from_env_or_clock() -> Rng {
        let seed = std::env::var("CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
            | 1;
        println!("CRASH_SEED={seed}");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

/// The broker child process; killed if the test panics, so no broker
/// outlives a failed test.
struct Proc(Option<BrokerProcess>);

impl Proc {
    async fn spawn(dir: &Path, env: &[(&'static str, &'static str)]) -> Proc {
        let dir = dir.to_path_buf();
        let env = env.to_vec();
        let p = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::task::spawn_blocking(move || BrokerProcess::spawn(&dir, &env)),
        )
        .await
        .expect("the broker printed its address within 30 s")
        .unwrap();
        Proc(Some(p))
    }

    fn addr(&self) -> SocketAddr {
        self.0.as_ref().expect("running").addr
    }

    async fn sigkill(&mut self) {
        let p = self.0.take().expect("running");
        tokio::task::spawn_blocking(move || p.sigkill())
            .await
            .unwrap();
    }

    /// Sends SIGTERM; returns the exit status and how long the exit took.
    async fn sigterm(&mut self) -> (std::process::ExitStatus, Duration) {
        let mut p = self.0.take().expect("running");
        let pid = p.child.id();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let sent = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap();
            assert!(sent.success());
            // Bounded wait: poll, and SIGKILL after 30 s.
            for _ in 0..3_000 {
                if let Some(status) = p.child.try_wait().unwrap() {
                    return (status, started.elapsed());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
            panic!("the broker did not exit within 30 s of SIGTERM");
        })
        .await
        .unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(p) = &mut self.0 {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// What producers and consumers saw, shared by all tasks of a test.
#[derive(Default)]
struct Ledger {
    /// Every event whose publish was acknowledged: id -> offset.
    acked: Mutex<HashMap<String, u64>>,
    /// Ids acknowledged at two different offsets.
    ack_conflicts: Mutex<Vec<String>>,
    acked_count: AtomicU64,
    /// Acknowledgements marked duplicate: resent batches the broker had
    /// stored before the stream broke.
    duplicates: AtomicU64,
    /// Per group: id -> every offset it was delivered at.
    delivered: [Mutex<HashMap<String, BTreeSet<u64>>>; 2],
}

impl Ledger {
    fn record_ack(&self, id: &str, offset: u64, duplicate: bool) {
        if duplicate {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        let mut acked = self.acked.lock().unwrap();
        match acked.get(id) {
            Some(&o) if o != offset => self
                .ack_conflicts
                .lock()
                .unwrap()
                .push(format!("{id}: acknowledged at {o} and at {offset}")),
            Some(_) => {}
            None => {
                acked.insert(id.to_string(), offset);
                self.acked_count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn acked(&self) -> u64 {
        self.acked_count.load(Ordering::Relaxed)
    }

    fn delivered_count(&self, g: usize) -> usize {
        self.delivered[g].lock().unwrap().len()
    }

    /// Acknowledged ids group `g` has not received yet.
    fn missing(&self, g: usize) -> Vec<String> {
        let acked = self.acked.lock().unwrap();
        let got = self.delivered[g].lock().unwrap();
        let mut v: Vec<String> = acked
            .keys()
            .filter(|id| !got.contains_key(*id))
            .cloned()
            .collect();
        v.sort();
        v
    }
}

async fn try_connect(addr: SocketAddr) -> Option<Client> {
    tokio::time::timeout(Duration::from_secs(2), connect(addr))
        .await
        .ok()?
        .ok()
}

/// A client of the broker `addr` names now; `None` while none runs or it
/// does not answer, after a short pause so that a retry loop does not spin.
async fn connect_current(addr: &watch::Receiver<Option<SocketAddr>>) -> Option<Client> {
    let Some(addr) = *addr.borrow() else {
        tokio::time::sleep(Duration::from_millis(20)).await;
        return None;
    };
    let client = try_connect(addr).await;
    if client.is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
}

/// Waits for `task` for at most `within`: what it returned. Panics naming
/// `what` if it did not finish in time or panicked itself.
async fn finished<T>(task: JoinHandle<T>, within: Duration, what: &str) -> T {
    tokio::time::timeout(within, task)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {within:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

// -------------------------------------------------------------- producers

#[derive(Debug, Default)]
struct ProducerReport {
    streams: usize,
    requests_acked: usize,
    /// In-stream errors (code: message) for valid requests.
    errors: Vec<String>,
    /// How each stream ended ("ok" or the status code).
    ends: Vec<tonic::Code>,
    /// Batches still unacknowledged when the producer stopped.
    abandoned: usize,
}

struct ProducerCtl {
    addr: watch::Receiver<Option<SocketAddr>>,
    /// Set: send no new batches; finish (or retry) the outstanding ones.
    stop: watch::Receiver<bool>,
    /// Reconnect (and resend unacknowledged batches) when a stream breaks.
    reconnect: bool,
    deadline: Instant,
}

/// Publishes small batches with unique ids over the streaming Publish RPC,
/// MAX_IN_FLIGHT requests at a time, and records every acknowledgement. A
/// broken stream's unacknowledged batches are resent, with the same ids, on
/// the next stream: the broker's dedupe window must answer those that were
/// stored after all with their original offsets.
async fn producer(p: usize, ctl: ProducerCtl, ledger: Arc<Ledger>) -> ProducerReport {
    let mut report = ProducerReport::default();
    let mut retry: VecDeque<Vec<Event>> = VecDeque::new();
    let mut next_batch = 0u64;
    let mut new_batch = || {
        let b = next_batch;
        next_batch += 1;
        let n = 1 + (b % 4) as usize;
        (0..n)
            .map(|i| {
                let id = format!("p{p}-b{b}-e{i}");
                event(&id, &format!("key-{}", (b as usize + i) % 32), &id)
            })
            .collect::<Vec<_>>()
    };
    'outer: for _ in 0..100_000 {
        if Instant::now() > ctl.deadline {
            break;
        }
        if *ctl.stop.borrow() && retry.is_empty() {
            break;
        }
        let Some(mut client) = connect_current(&ctl.addr).await else {
            continue;
        };
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT * 2);
        let mut responses = match tokio::time::timeout(
            Duration::from_secs(3),
            client.publish(ReceiverStream::new(rx)),
        )
        .await
        {
            Ok(Ok(r)) => r.into_inner(),
            _ => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        report.streams += 1;
        let mut outstanding: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
        let mut seq = 0u64;
        let mut last_burst = Instant::now() - BURST_EVERY;
        let mut last_answer = Instant::now();
        let end = loop {
            if Instant::now() > ctl.deadline {
                break None;
            }
            let stopping = *ctl.stop.borrow();
            if last_burst.elapsed() >= BURST_EVERY {
                last_burst = Instant::now();
                while outstanding.len() < MAX_IN_FLIGHT {
                    let batch = match retry.pop_front() {
                        Some(b) => b,
                        None if !stopping => new_batch(),
                        None => break,
                    };
                    seq += 1;
                    let req = pb::PublishRequest {
                        sequence: seq,
                        topic: TOPIC.into(),
                        events: batch.clone(),
                    };
                    outstanding.insert(seq, batch);
                    if tx.send(req).await.is_err() {
                        break;
                    }
                }
            }
            if outstanding.is_empty() {
                if stopping {
                    // Done: close our side and let the stream end.
                    break Some(tonic::Code::Ok);
                }
                tokio::time::sleep(BURST_EVERY).await;
                continue;
            }
            if last_answer.elapsed() > STALL {
                break Some(tonic::Code::DeadlineExceeded);
            }
            match tokio::time::timeout(BURST_EVERY, responses.message()).await {
                Err(_) => {}
                Ok(Ok(Some(r))) => {
                    last_answer = Instant::now();
                    let batch = outstanding
                        .remove(&r.sequence)
                        .unwrap_or_else(|| panic!("answer to unknown sequence {}", r.sequence));
                    if let Some(e) = r.error {
                        report.errors.push(format!("{:?}: {}", e.code(), e.message));
                        retry.push_back(batch);
                        continue;
                    }
                    assert_eq!(r.results.len(), batch.len(), "one result per event");
                    for (ev, res) in batch.iter().zip(&r.results) {
                        ledger.record_ack(&ev.id, res.offset, res.duplicate);
                    }
                    report.requests_acked += 1;
                }
                Ok(Ok(None)) => break Some(tonic::Code::Ok),
                Ok(Err(status)) => break Some(status.code()),
            }
        };
        // Whatever was not answered may or may not be stored: resend it.
        retry.extend(std::mem::take(&mut outstanding).into_values());
        drop(tx);
        match end {
            None => break 'outer,
            Some(code) => report.ends.push(code),
        }
        if !ctl.reconnect {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.abandoned = retry.len();
    report
}

// -------------------------------------------------------------- consumers

#[derive(Debug, Default)]
struct ConsumerReport {
    sessions: usize,
    delivered: usize,
    /// In-stream errors (code: message).
    errors: Vec<String>,
    /// How each session ended: the status code (Ok for a clean end).
    ends: Vec<tonic::Code>,
}

struct ConsumerCtl {
    addr: watch::Receiver<Option<SocketAddr>>,
    /// Set: leave now.
    done: watch::Receiver<bool>,
    reconnect: bool,
    deadline: Instant,
}

/// A group member that records and acks everything it receives, and
/// rejoins when its stream breaks.
async fn consumer(g: usize, m: usize, ctl: ConsumerCtl, ledger: Arc<Ledger>) -> ConsumerReport {
    let mut report = ConsumerReport::default();
    'outer: for _ in 0..100_000 {
        if Instant::now() > ctl.deadline || *ctl.done.borrow() {
            break;
        }
        let Some(mut client) = connect_current(&ctl.addr).await else {
            continue;
        };
        let open = pb::SubscribeRequest {
            request: Some(Request::Open(pb::Open {
                topic: TOPIC.into(),
                group: GROUPS[g].into(),
                max_in_flight: 64,
                member_name: format!("{}-{m}", GROUPS[g]),
                ..Default::default()
            })),
        };
        let mut sub = match tokio::time::timeout(
            Duration::from_secs(3),
            Sub::try_open_with(&mut client, open),
        )
        .await
        {
            Ok(Ok(s)) => s,
            _ => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        report.sessions += 1;
        let end = loop {
            if Instant::now() > ctl.deadline || *ctl.done.borrow() {
                break None;
            }
            match tokio::time::timeout(Duration::from_millis(100), sub.rx.message()).await {
                Err(_) => {}
                Ok(Ok(Some(pb::SubscribeResponse { response }))) => match response {
                    Some(Response::Deliveries(d)) => {
                        let mut offsets = Vec::with_capacity(d.deliveries.len());
                        {
                            let mut got = ledger.delivered[g].lock().unwrap();
                            for d in &d.deliveries {
                                got.entry(id(d)).or_default().insert(offset(d));
                                offsets.push(offset(d));
                            }
                        }
                        report.delivered += offsets.len();
                        let ack = pb::SubscribeRequest {
                            request: Some(Request::Ack(pb::Ack { offsets })),
                        };
                        if sub.tx.send(ack).await.is_err() {
                            // The call is already over (the broker ended it
                            // while these were on their way): its status is
                            // still there to read.
                            let last = tokio::time::timeout(Duration::from_secs(5), async {
                                loop {
                                    match sub.rx.message().await {
                                        Ok(Some(_)) => continue,
                                        Ok(None) => break tonic::Code::Ok,
                                        Err(status) => break status.code(),
                                    }
                                }
                            })
                            .await;
                            break Some(last.unwrap_or(tonic::Code::Unknown));
                        }
                    }
                    Some(Response::Error(e)) => {
                        report.errors.push(format!("{:?}: {}", e.code(), e.message))
                    }
                    _ => {}
                },
                Ok(Ok(None)) => break Some(tonic::Code::Ok),
                Ok(Err(status)) => break Some(status.code()),
            }
        };
        match end {
            None => break 'outer,
            Some(code) => report.ends.push(code),
        }
        if !ctl.reconnect {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report
}

// ---------------------------------------------------------------- traffic

/// What a test flips for its producers and consumers.
struct Switches {
    /// The broker's address; `None` while it is down.
    addr: watch::Sender<Option<SocketAddr>>,
    /// Producers: send no new batches, finish the outstanding ones.
    stop: watch::Sender<bool>,
    /// Consumers: leave now.
    done: watch::Sender<bool>,
}

/// The tasks of a test's producers and consumers.
struct Traffic {
    producers: Vec<JoinHandle<ProducerReport>>,
    /// `MEMBERS_PER_GROUP` members of the first group, then of the next.
    consumers: Vec<JoinHandle<ConsumerReport>>,
}

/// Starts `producers` producers and `MEMBERS_PER_GROUP` members of every
/// group against the broker on `addr`, all of them giving up at
/// `deadline`, and reconnecting when their stream breaks if `reconnect`.
fn start_traffic(
    addr: SocketAddr,
    producers: usize,
    reconnect: bool,
    deadline: Instant,
    ledger: &Arc<Ledger>,
) -> (Switches, Traffic) {
    let switches = Switches {
        addr: watch::channel(Some(addr)).0,
        stop: watch::channel(false).0,
        done: watch::channel(false).0,
    };
    let producers = (0..producers)
        .map(|p| {
            let ctl = ProducerCtl {
                addr: switches.addr.subscribe(),
                stop: switches.stop.subscribe(),
                reconnect,
                deadline,
            };
            tokio::spawn(producer(p, ctl, ledger.clone()))
        })
        .collect();
    let mut consumers = Vec::new();
    for g in 0..GROUPS.len() {
        for m in 0..MEMBERS_PER_GROUP {
            let ctl = ConsumerCtl {
                addr: switches.addr.subscribe(),
                done: switches.done.subscribe(),
                reconnect,
                deadline,
            };
            consumers.push(tokio::spawn(consumer(g, m, ctl, ledger.clone())));
        }
    }
    (
        switches,
        Traffic {
            producers,
            consumers,
        },
    )
}

/// Waits (up to 20 s) until at least `n` events are acknowledged.
async fn acked_at_least(ledger: &Arc<Ledger>, n: u64) -> bool {
    eventually(Duration::from_secs(20), || {
        let l = ledger.clone();
        async move { l.acked() >= n }
    })
    .await
}

// ---------------------------------------------------------------- checks

async fn describe_group(addr: SocketAddr, group: &str) -> Result<pb::GroupInfo, String> {
    let mut c = try_connect(addr).await.ok_or("cannot connect")?;
    tokio::time::timeout(
        Duration::from_secs(5),
        c.describe_group(pb::DescribeGroupRequest {
            topic: TOPIC.into(),
            group: group.into(),
        }),
    )
    .await
    .map_err(|_| "DescribeGroup timed out".to_string())?
    .map(|r| r.into_inner())
    .map_err(|s| s.to_string())
}

async fn head(addr: SocketAddr) -> u64 {
    let mut c = try_connect(addr).await.expect("connect");
    c.describe_topic(pb::DescribeTopicRequest { name: TOPIC.into() })
        .await
        .unwrap()
        .into_inner()
        .head_offset
}

/// Appends every group's committed offset to its sample list.
async fn sample_committed(addr: SocketAddr, samples: &mut [Vec<(String, u64)>; 2], when: &str) {
    for (g, group) in GROUPS.iter().enumerate() {
        let info = describe_group(addr, group)
            .await
            .unwrap_or_else(|e| panic!("DescribeGroup {group} {when}: {e}"));
        samples[g].push((when.to_string(), info.committed_offset));
    }
}

fn assert_never_backwards(samples: &[Vec<(String, u64)>; 2]) {
    for (g, s) in samples.iter().enumerate() {
        println!("{} committed: {s:?}", GROUPS[g]);
        for w in s.windows(2) {
            assert!(
                w[1].1 >= w[0].1,
                "group {}'s committed offset went backwards: {} ({}) -> {} ({})",
                GROUPS[g],
                w[0].1,
                w[0].0,
                w[1].1,
                w[1].0
            );
        }
    }
}

/// Reads the whole topic with an ephemeral auto-ack tail: offset -> id.
async fn read_log(addr: SocketAddr) -> BTreeMap<u64, String> {
    let head = head(addr).await;
    let mut c = try_connect(addr).await.expect("connect");
    let mut tail = Sub::open_with(
        &mut c,
        pb::SubscribeRequest {
            request: Some(Request::Open(pb::Open {
                topic: TOPIC.into(),
                auto_ack: true,
                max_in_flight: 1000,
                ..Default::default()
            })),
        },
    )
    .await;
    let mut log = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..1_000_000 {
        if (log.len() as u64) >= head || Instant::now() > deadline {
            break;
        }
        match tail.next(Duration::from_secs(10)).await {
            Some(Response::Deliveries(d)) => {
                for d in &d.deliveries {
                    let prev = log.insert(offset(d), id(d));
                    assert!(prev.is_none(), "offset {} read twice", offset(d));
                }
            }
            Some(Response::CaughtUp(_)) => {}
            Some(other) => panic!("unexpected message on the tail: {other:?}"),
            None => break,
        }
    }
    assert_eq!(
        log.len() as u64,
        head,
        "the tail read every offset below the head"
    );
    log
}

/// Every acknowledged id is in the log at its acknowledged offset, and no
/// id is stored at two offsets.
fn check_log(log: &BTreeMap<u64, String>, ledger: &Ledger) -> HashMap<String, u64> {
    let mut by_id: HashMap<String, u64> = HashMap::new();
    for (&off, id) in log {
        if let Some(first) = by_id.insert(id.clone(), off) {
            panic!("event id {id} is stored at two offsets: {first} and {off}");
        }
    }
    let acked = ledger.acked.lock().unwrap();
    let mut lost = Vec::new();
    for (id, &off) in acked.iter() {
        match by_id.get(id) {
            Some(&o) if o == off => {}
            Some(&o) => panic!("{id} was acknowledged at offset {off} but is stored at {o}"),
            None => lost.push(id.clone()),
        }
    }
    lost.sort();
    assert!(
        lost.is_empty(),
        "{} acknowledged events are missing from the log, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    by_id
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_traffic_keeps_every_acknowledged_event() {
    sigkill_mid_traffic(None).await;
}

/// The same with encryption at rest: recovery tells torn sealed records by
/// their checksum alone, and every acknowledged one decrypts afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_traffic_keeps_every_acknowledged_event_encrypted() {
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("keys");
    std::fs::write(&key_file, format!("1 {}\n", "a5".repeat(32))).unwrap();
    // `Proc::spawn` takes 'static pairs; one small string per test run.
    let path: &'static str = Box::leak(key_file.display().to_string().into_boxed_str());
    sigkill_mid_traffic(Some(path)).await;
}

async fn sigkill_mid_traffic(key_file: Option<&'static str>) {
    const KILLS: usize = 3;
    let mut rng = Rng::from_env_or_clock();
    let dir = tempfile::tempdir().unwrap();
    // fsync = always (the default); small segments, so that kills also
    // land around segment rolls and recovery spans sealed segments.
    let mut env: Vec<(&'static str, &'static str)> =
        vec![("BROKER__STORAGE__SEGMENT_BYTES", "65536")];
    env.extend(key_file.map(|k| ("BROKER__STORAGE__ENCRYPTION_KEY_FILE", k)));
    let env = env.as_slice();
    let mut proc = Proc::spawn(dir.path(), env).await;
    let mut c = connect(proc.addr()).await.unwrap();
    create_topic(&mut c, TOPIC).await;

    let deadline = Instant::now() + Duration::from_secs(150);
    let ledger = Arc::new(Ledger::default());
    let (switches, traffic) = start_traffic(proc.addr(), PRODUCERS, true, deadline, &ledger);

    // Both groups exist and consume before the first kill.
    assert!(
        eventually(Duration::from_secs(20), || {
            let l = ledger.clone();
            async move { (0..GROUPS.len()).all(|g| l.delivered_count(g) > 0) }
        })
        .await,
        "both groups received events"
    );

    let mut samples: [Vec<(String, u64)>; 2] = Default::default();
    for round in 1..=KILLS {
        assert!(
            acked_at_least(&ledger, ledger.acked() + 300).await,
            "publishing made progress before kill {round}"
        );
        tokio::time::sleep(rng.millis(0, 500)).await;
        sample_committed(proc.addr(), &mut samples, &format!("before kill {round}")).await;
        proc.sigkill().await;
        switches.addr.send_replace(None);
        println!(
            "kill {round}: {} events acknowledged so far",
            ledger.acked()
        );
        tokio::time::sleep(rng.millis(0, 300)).await;
        proc = Proc::spawn(dir.path(), env).await;
        sample_committed(proc.addr(), &mut samples, &format!("after restart {round}")).await;
        switches.addr.send_replace(Some(proc.addr()));
    }
    assert!(
        acked_at_least(&ledger, ledger.acked() + 300).await,
        "publishing made progress after the last restart"
    );

    // Drain: producers finish what they have in flight (and resend what
    // was never answered), then the groups catch up to the head.
    switches.stop.send_replace(true);
    let mut preports = Vec::new();
    for p in traffic.producers {
        preports.push(finished(p, Duration::from_secs(60), "producer").await);
    }
    for (p, r) in preports.iter().enumerate() {
        println!(
            "producer {p}: {} streams, {} requests acknowledged, ends {:?}, {} errors",
            r.streams,
            r.requests_acked,
            r.ends,
            r.errors.len()
        );
        assert!(
            r.streams > KILLS,
            "producer {p} reconnected after each kill"
        );
        assert!(
            r.errors.is_empty(),
            "producer {p}: valid requests refused: {:?}",
            r.errors
        );
        assert_eq!(
            r.abandoned, 0,
            "producer {p} got every batch acknowledged in the end"
        );
    }
    let addr = proc.addr();
    let head_now = head(addr).await;
    let drained = eventually(Duration::from_secs(60), || {
        let l = ledger.clone();
        async move {
            if (0..GROUPS.len()).any(|g| !l.missing(g).is_empty()) {
                return false;
            }
            for group in GROUPS {
                match describe_group(addr, group).await {
                    Ok(i) if i.committed_offset == head_now => {}
                    _ => return false,
                }
            }
            true
        }
    })
    .await;
    for (g, group) in GROUPS.iter().enumerate() {
        let missing = ledger.missing(g);
        assert!(
            missing.is_empty(),
            "group {group} never received {} acknowledged events, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }
    sample_committed(addr, &mut samples, "drained").await;
    assert!(
        drained,
        "every group committed up to the head {head_now}: {samples:?}"
    );
    switches.done.send_replace(true);
    let mut consumers_delivered = [0usize; 2];
    for (i, h) in traffic.consumers.into_iter().enumerate() {
        let r = finished(h, Duration::from_secs(10), "consumer").await;
        println!(
            "consumer {i}: {} sessions, {} deliveries, {} in-stream errors",
            r.sessions,
            r.delivered,
            r.errors.len()
        );
        assert!(r.sessions > KILLS, "consumer {i} rejoined after each kill");
        consumers_delivered[i / MEMBERS_PER_GROUP] += r.delivered;
    }

    let conflicts = ledger.ack_conflicts.lock().unwrap().clone();
    assert!(
        conflicts.is_empty(),
        "ids acknowledged at two offsets: {conflicts:?}"
    );
    let log = read_log(addr).await;
    let by_id = check_log(&log, &ledger);
    // Deliveries agree with the log: an id only ever arrives at its one
    // offset.
    for (g, group) in GROUPS.iter().enumerate() {
        for (id, offsets) in ledger.delivered[g].lock().unwrap().iter() {
            let stored = by_id.get(id).copied();
            assert!(
                offsets.len() == 1 && stored == offsets.first().copied(),
                "group {group} got {id} at offsets {offsets:?}; the log has it at {stored:?}"
            );
        }
    }
    assert_never_backwards(&samples);
    let redelivered: Vec<usize> = (0..GROUPS.len())
        .map(|g| {
            let n: usize = ledger.delivered[g].lock().unwrap().len();
            consumers_delivered[g] - n
        })
        .collect();
    println!(
        "{} events acknowledged ({} of them as duplicates of resent batches), {} stored; redelivered per group: {redelivered:?}",
        ledger.acked(),
        ledger.duplicates.load(Ordering::Relaxed),
        log.len()
    );
    let (status, _) = proc.sigterm().await;
    assert!(status.success(), "final shutdown: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_traffic_drains_and_exits_zero() {
    const DRAIN: Duration = Duration::from_millis(5_000);
    let dir = tempfile::tempdir().unwrap();
    let env: &[(&str, &str)] = &[("BROKER__DRAIN_DEADLINE_MS", "5000")];
    let mut proc = Proc::spawn(dir.path(), env).await;
    let mut c = connect(proc.addr()).await.unwrap();
    create_topic(&mut c, TOPIC).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let ledger = Arc::new(Ledger::default());
    // No reconnecting here: each client reports how its one stream ended.
    let (_switches, traffic) = start_traffic(proc.addr(), 2, false, deadline, &ledger);
    assert!(
        eventually(Duration::from_secs(20), || {
            let l = ledger.clone();
            async move { l.acked() >= 300 && (0..GROUPS.len()).all(|g| l.delivered_count(g) > 0) }
        })
        .await,
        "traffic is flowing"
    );
    // A client that opened a Subscribe stream but has not sent `open` yet
    // (it connected just as the shutdown began) must not hold the drain up.
    let mut lc = connect(proc.addr()).await.unwrap();
    let lurker = tokio::spawn(async move {
        let (tx, rx) = mpsc::channel::<pb::SubscribeRequest>(1);
        let r = lc.subscribe(ReceiverStream::new(rx)).await;
        drop(tx);
        match r {
            Ok(resp) => resp.into_inner().message().await.err().map(|s| s.code()),
            Err(s) => Some(s.code()),
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut samples: [Vec<(String, u64)>; 2] = Default::default();
    sample_committed(proc.addr(), &mut samples, "before SIGTERM").await;

    let (status, took) = proc.sigterm().await;
    println!("SIGTERM: {status:?} after {took:?}");
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    assert!(
        took < DRAIN,
        "the broker exited {took:?} after SIGTERM; the drain deadline is {DRAIN:?}"
    );

    let lurked = tokio::time::timeout(Duration::from_secs(10), lurker)
        .await
        .expect("the unopened Subscribe stream ended")
        .unwrap();
    assert_eq!(
        lurked,
        Some(tonic::Code::Unavailable),
        "a Subscribe stream still waiting for `open` ended with UNAVAILABLE"
    );
    for (i, h) in traffic.consumers.into_iter().enumerate() {
        let r = finished(h, Duration::from_secs(10), "consumer").await;
        println!("consumer {i}: {r:?}");
        assert_eq!(
            r.ends,
            vec![tonic::Code::Unavailable],
            "subscriber {i}'s stream ended with UNAVAILABLE"
        );
    }
    for (p, h) in traffic.producers.into_iter().enumerate() {
        let r = finished(h, Duration::from_secs(10), "producer").await;
        println!(
            "producer {p}: {} requests acknowledged, ends {:?}, errors {:?}",
            r.requests_acked, r.ends, r.errors
        );
        // Requests in flight were answered, then the stream ended with
        // UNAVAILABLE (reconnect elsewhere), not with a broken connection.
        assert_eq!(
            r.ends,
            vec![tonic::Code::Unavailable],
            "producer {p}'s stream ended with UNAVAILABLE"
        );
        assert!(r.errors.is_empty(), "producer {p}: {:?}", r.errors);
    }

    // Everything acknowledged before the shutdown is there after a restart.
    let proc = Proc::spawn(dir.path(), env).await;
    sample_committed(proc.addr(), &mut samples, "after restart").await;
    let log = read_log(proc.addr()).await;
    check_log(&log, &ledger);
    assert_never_backwards(&samples);
    println!(
        "{} events acknowledged, {} stored",
        ledger.acked(),
        log.len()
    );
    let mut proc = proc;
    let (status, _) = proc.sigterm().await;
    assert!(status.success());
}
