//! `broker-bench`: the broker measured end to end over gRPC.
//!
//! ```text
//! cargo run --release -p broker --bin broker-bench -- [--quick] [--dir PATH]
//!     [--seconds N] [--events N] [--rounds N] [--prefill N] [--fsync always|interval]
//!     [--rate N] [--latency-seconds N] [--only publish,unary,baseline,consume,latency]
//! ```
//!
//! A real broker (`broker::run`, default config, `fsync = always`) runs in
//! this process on 127.0.0.1:0 with a fresh data directory, on its own
//! tokio runtime (threads named `broker`). The clients are real tonic
//! clients on a second runtime (threads named `client`), each stream on its
//! own TCP connection. Both runtimes have as many workers as the machine has
//! cores and share those cores, so every figure includes the clients' CPU;
//! the report shows how the CPU time split between broker and clients.
//!
//! Events are 1 KiB of data (`Event.data`, 1024 bytes) with a unique id,
//! a source and a type, and no subject.
//!
//! - **publish**: `streams` Publish streams, each keeping up to
//!   `in_flight / streams / batch` requests of `batch` events in flight.
//! - **unary**: PublishUnary, one event per call, one call at a time.
//! - **baseline**: the same records (the encoded events, with their ids)
//!   submitted straight to the broker's storage (`LocalStorage::submit`,
//!   no gRPC), pipelined like the Publish stream: what the disk and log
//!   allow in the same disk state.
//! - **consume**: a topic is filled with `--prefill` events, then one new
//!   group per run reads all of it from the start with 1 or 2 members,
//!   each acking every Deliveries message it receives with one Ack.
//! - **latency**: one publisher at a fixed rate (one event per request,
//!   the send time in the first 8 bytes of data) and one group member;
//!   publish to deliver latency, and publish to ack latency.
//!
//! Every load loop stops at a count or a time limit, whichever comes first.
//! The disk of the benchmark machine alternates between a fast and a
//! throttled state, so the scenarios are interleaved in rounds (each round
//! starts with a raw fdatasync probe) and ratios are taken within a round.
//!
//! Output is a markdown report on stdout; progress goes to stderr.

use std::{
    fmt::Write as _,
    fs,
    net::SocketAddr,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use broker::BrokerConfig;
use bytes::Bytes;
use mesh_log::{AppendRecord, LocalStorage, Storage, TopicConfig};
use mesh_proto::{
    broker::v1::{
        self as pb, broker_client::BrokerClient, subscribe_request::Request,
        subscribe_response::Response,
    },
    events::v1::Event,
};
use prost::Message;
use tokio::{
    runtime::Runtime,
    sync::{Semaphore, mpsc, oneshot, watch},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

const PAYLOAD: usize = 1024;
const TOPIC: &str = "bench";
type Client = BrokerClient<Channel>;
type Res<T> = Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

// ------------------------------------------------------------------ args

#[derive(Clone)]
struct Args {
    quick: bool,
    dir: PathBuf,
    fsync: String,
    /// Time limit of one publish run.
    seconds: f64,
    /// Event limit of one publish run.
    events: u64,
    rounds: usize,
    probe_seconds: f64,
    /// Events written before the consume runs.
    prefill: u64,
    /// Time limit of the prefill and of one consume run.
    consume_seconds: f64,
    rate: u64,
    latency_seconds: f64,
    only: Vec<String>,
}

const USAGE: &str = "usage: broker-bench [--quick] [--dir PATH] [--fsync always|interval] \
[--seconds N] [--events N] [--rounds N] [--prefill N] [--consume-seconds N] [--rate N] \
[--latency-seconds N] [--only publish,unary,baseline,consume,latency]";

const PARTS: [&str; 5] = ["publish", "unary", "baseline", "consume", "latency"];

fn parse_args(mut raw: Vec<String>) -> Res<Args> {
    let quick = raw.iter().any(|a| a == "--quick");
    raw.retain(|a| a != "--quick");
    let mut a = Args {
        quick,
        dir: std::env::temp_dir(),
        fsync: "always".into(),
        seconds: if quick { 0.3 } else { 3.0 },
        events: if quick { 100_000 } else { 3_000_000 },
        rounds: if quick { 1 } else { 3 },
        probe_seconds: if quick { 0.1 } else { 1.0 },
        prefill: if quick { 30_000 } else { 1_000_000 },
        consume_seconds: if quick { 2.0 } else { 10.0 },
        rate: 5_000,
        latency_seconds: if quick { 0.5 } else { 5.0 },
        only: PARTS.iter().map(|s| s.to_string()).collect(),
    };
    let mut it = raw.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> Res<T> {
            v.parse().map_err(|_| format!("{flag}: not a number: {v}"))
        }
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(value()?),
            "--fsync" => {
                a.fsync = value()?;
                if a.fsync != "always" && a.fsync != "interval" {
                    return Err("--fsync: always or interval".into());
                }
            }
            "--seconds" => a.seconds = num(&flag, value()?)?,
            "--events" => a.events = num(&flag, value()?)?,
            "--rounds" => a.rounds = num(&flag, value()?)?,
            "--prefill" => a.prefill = num(&flag, value()?)?,
            "--consume-seconds" => a.consume_seconds = num(&flag, value()?)?,
            "--rate" => a.rate = num(&flag, value()?)?,
            "--latency-seconds" => a.latency_seconds = num(&flag, value()?)?,
            "--only" => {
                a.only = value()?.split(',').map(str::to_string).collect();
                if let Some(p) = a.only.iter().find(|p| !PARTS.contains(&p.as_str())) {
                    return Err(format!("--only: unknown part {p}"));
                }
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if a.seconds <= 0.0 || a.events == 0 || a.rounds == 0 || a.prefill == 0 || a.rate == 0 {
        return Err("--seconds, --events, --rounds, --prefill and --rate must be positive".into());
    }
    Ok(a)
}

impl Args {
    fn runs(&self, part: &str) -> bool {
        self.only.iter().any(|p| p == part)
    }
}

// ------------------------------------------------------------- utilities

/// A fresh, empty directory under the base dir, removed on drop.
struct RunDir(PathBuf);

impl RunDir {
    fn new(base: &Path, label: &str) -> Res<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("broker-bench-{}-{n}-{label}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).map_err(err)?;
        }
        fs::create_dir_all(&path).map_err(err)?;
        Ok(RunDir(path))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn data() -> Bytes {
    // Not compressible, like the log benchmark's payload.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..PAYLOAD)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn event(id: String, data: Bytes) -> Event {
    Event {
        id,
        source: "/bench".into(),
        r#type: "bench.Event".into(),
        data,
        ..Default::default()
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn fmt_list(v: &[f64], prec: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.prec$}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn ms(us: u32) -> String {
    format!("{:.2}", us as f64 / 1e3)
}

// SAFETY of use: `sysconf` has this signature in glibc and musl, and std
// already links the C library. `_SC_CLK_TCK` is 2 on Linux.
unsafe extern "C" {
    fn sysconf(name: i32) -> i64;
}

/// CPU time used so far, in seconds: (whole process, client runtime
/// threads). Read from /proc; the process total includes threads that have
/// exited, the client part only live threads (the client runtime's threads
/// live for the whole run).
fn cpu_now() -> (f64, f64) {
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { sysconf(2) }.max(1) as f64;
    let ticks = |stat: &str| -> Option<(String, f64)> {
        let (l, r) = (stat.find('(')?, stat.rfind(')')?);
        let comm = stat[l + 1..r].to_string();
        let f: Vec<&str> = stat[r + 2..].split_whitespace().collect();
        // Fields 14 and 15 (utime, stime); f[0] is field 3.
        let t = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some((comm, t / tck))
    };
    let total = fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| ticks(&s))
        .map_or(0.0, |t| t.1);
    let mut client = 0.0;
    if let Ok(dir) = fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            if let Some((comm, t)) = fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| ticks(&s))
                && comm.starts_with("client")
            {
                client += t;
            }
        }
    }
    (total, client)
}

/// CPU used between two `cpu_now` readings over `secs` of wall time, as
/// (broker cores, client cores).
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    broker: f64,
    client: f64,
}

impl Cpu {
    fn between(a: (f64, f64), b: (f64, f64), secs: f64) -> Cpu {
        let total = b.0 - a.0;
        let client = b.1 - a.1;
        Cpu {
            broker: (total - client).max(0.0) / secs,
            client: client / secs,
        }
    }
    fn show(&self) -> String {
        format!("{:.2} / {:.2}", self.broker, self.client)
    }
}

/// The disk without the log: pwrite 256 records' worth (272 KiB) and
/// fdatasync, in a loop. Returns (syncs/s, MB/s). As in log-bench.
fn raw_sync_probe(base: &Path, limit: Duration) -> Res<(f64, f64)> {
    let dir = RunDir::new(base, "probe")?;
    let f = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(dir.0.join("probe.dat"))
        .map_err(err)?;
    let buf = vec![0x5au8; 256 * mesh_log::record::encoded_len(PAYLOAD)];
    let start = Instant::now();
    let (mut n, mut pos) = (0u64, 0u64);
    while start.elapsed() < limit && n < 10_000 {
        f.write_all_at(&buf, pos).map_err(err)?;
        f.sync_data().map_err(err)?;
        pos += buf.len() as u64;
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((n as f64 / secs, pos as f64 / 1e6 / secs))
}

// ------------------------------------------------------- broker and client

struct RunningBroker {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), broker::BrokerError>>>,
    _dir: RunDir,
}

impl RunningBroker {
    fn start(rt: &Runtime, args: &Args, label: &str) -> Res<Self> {
        let dir = RunDir::new(&args.dir, label)?;
        let mut cfg = BrokerConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            // Several brokers start one after another; no fixed port.
            metrics_listen: None,
            data_dir: dir.0.clone(),
            ..Default::default()
        };
        cfg.storage.fsync = args.fsync.parse().map_err(err)?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .map_err(err)?;
        let addr = listener.local_addr().map_err(err)?;
        let (stop, rx) = oneshot::channel::<()>();
        let task = rt.spawn(broker::run(cfg, listener, async move {
            let _ = rx.await;
        }));
        Ok(RunningBroker {
            addr,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        })
    }

    /// Graceful stop; the data directory goes with `self`.
    fn stop(mut self, rt: &Runtime) -> Res<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), t).await })
                .map_err(|_| "the broker did not stop within 30 s".to_string())?
                .map_err(err)?
                .map_err(err)?;
        }
        Ok(())
    }
}

async fn connect(addr: SocketAddr) -> Res<Client> {
    let ch = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(err)?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(err)?;
    Ok(BrokerClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// Waits until the broker answers, then creates `topic`.
async fn create_topic(addr: SocketAddr, topic: &str) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = connect(addr).await {
            c.create_topic(pb::CreateTopicRequest {
                name: topic.into(),
                ..Default::default()
            })
            .await
            .map_err(err)?;
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the broker did not start within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `f` on the client runtime (never on the main thread, so that all
/// client CPU is on `client` threads) and waits for it.
fn on_clients<T: Send + 'static>(
    rt: &Runtime,
    f: impl Future<Output = Res<T>> + Send + 'static,
) -> Res<T> {
    rt.block_on(rt.spawn(f)).map_err(err)?
}

// -------------------------------------------------------------- publish

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    streams: usize,
    batch: usize,
    /// Events in flight over all streams.
    in_flight: usize,
}

impl Shape {
    fn requests_per_stream(&self) -> usize {
        (self.in_flight / self.streams / self.batch).clamp(1, 1024)
    }
    fn label(&self) -> String {
        format!(
            "{} × {} events × {} req",
            self.streams,
            self.batch,
            self.requests_per_stream()
        )
    }
}

#[derive(Clone, Debug, Default)]
struct Run {
    events: u64,
    secs: f64,
    p50_us: u32,
    p99_us: u32,
    max_us: u32,
    cpu: Cpu,
}

impl Run {
    fn rate(&self) -> f64 {
        self.events as f64 / self.secs
    }
    fn mb_s(&self) -> f64 {
        self.rate() * PAYLOAD as f64 / 1e6
    }
}

fn nanos_since(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

/// One Publish stream on its own connection: keeps up to `reqs` requests
/// of `batch` events in flight until `claimed` reaches `max_events` or the
/// deadline passes. Returns (events acknowledged, time of the last answer,
/// per-request ack latencies in us).
async fn publish_stream(
    addr: SocketAddr,
    topic: String,
    tag: String,
    (batch, reqs): (usize, usize),
    claimed: Arc<AtomicU64>,
    max_events: u64,
    deadline: Instant,
) -> Res<(u64, Instant, Vec<u32>)> {
    let mut client = connect(addr).await?;
    let (tx, rx) = mpsc::channel::<pb::PublishRequest>(reqs);
    let mut answers = client
        .publish(ReceiverStream::new(rx))
        .await
        .map_err(err)?
        .into_inner();
    let permits = Arc::new(Semaphore::new(reqs));
    let ring = 2 * reqs;
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..ring).map(|_| AtomicU64::new(0)).collect());
    let base = Instant::now();
    let sender = {
        let (permits, sent_at) = (permits.clone(), sent_at.clone());
        tokio::spawn(async move {
            let data = data();
            let mut seq = 0u64;
            loop {
                let p = permits.acquire().await.map_err(err)?;
                p.forget();
                if Instant::now() >= deadline
                    || claimed.fetch_add(batch as u64, Ordering::Relaxed) >= max_events
                {
                    break;
                }
                let events = (0..batch)
                    .map(|i| event(format!("{tag}-{seq}-{i}"), data.clone()))
                    .collect();
                sent_at[seq as usize % ring].store(nanos_since(base), Ordering::Relaxed);
                let req = pb::PublishRequest {
                    sequence: seq,
                    topic: topic.clone(),
                    events,
                };
                if tx.send(req).await.is_err() {
                    return Err("the publish stream closed".to_string());
                }
                seq += 1;
            }
            Ok::<_, String>(())
        })
    };
    let mut acked = 0u64;
    let mut last = Instant::now();
    let mut lat = Vec::new();
    while let Some(r) = answers.message().await.map_err(err)? {
        if let Some(e) = r.error {
            return Err(format!("publish failed: {} {}", e.code, e.message));
        }
        let sent = sent_at[r.sequence as usize % ring].load(Ordering::Relaxed);
        lat.push(((nanos_since(base) - sent) / 1000).min(u32::MAX as u64) as u32);
        acked += r.results.len() as u64;
        last = Instant::now();
        permits.add_permits(1);
    }
    sender.await.map_err(err)??;
    Ok((acked, last, lat))
}

/// Streamed publish of `shape` into `topic` until `max_events` or `limit`.
async fn publish_run(
    addr: SocketAddr,
    topic: &str,
    shape: Shape,
    max_events: u64,
    limit: Duration,
) -> Res<Run> {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let claimed = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_now();
    let start = Instant::now();
    let deadline = start + limit;
    let mut tasks = Vec::new();
    for s in 0..shape.streams {
        tasks.push(tokio::spawn(publish_stream(
            addr,
            topic.to_string(),
            format!("r{run}-s{s}"),
            (shape.batch, shape.requests_per_stream()),
            claimed.clone(),
            max_events,
            deadline,
        )));
    }
    let mut events = 0;
    let mut last = start;
    let mut lat = Vec::new();
    for t in tasks {
        let (n, l, v) = tokio::time::timeout(limit + Duration::from_secs(30), t)
            .await
            .map_err(|_| "publish run did not finish in time".to_string())?
            .map_err(err)??;
        events += n;
        last = last.max(l);
        lat.extend(v);
    }
    let secs = (last - start).as_secs_f64();
    lat.sort_unstable();
    Ok(Run {
        events,
        secs,
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        max_us: lat.last().copied().unwrap_or(0),
        cpu: Cpu::between(cpu0, cpu_now(), secs),
    })
}

/// PublishUnary, one event per call, sequentially.
async fn unary_run(addr: SocketAddr, max_events: u64, limit: Duration) -> Res<Run> {
    let mut c = connect(addr).await?;
    let data = data();
    let cpu0 = cpu_now();
    let start = Instant::now();
    let mut lat = Vec::new();
    let mut n = 0u64;
    while n < max_events && start.elapsed() < limit {
        let t = Instant::now();
        let r = c
            .publish_unary(pb::PublishRequest {
                sequence: n,
                topic: TOPIC.into(),
                events: vec![event(format!("unary-{n}"), data.clone())],
            })
            .await
            .map_err(err)?
            .into_inner();
        if let Some(e) = r.error {
            return Err(format!("publish failed: {} {}", e.code, e.message));
        }
        lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    Ok(Run {
        events: n,
        secs,
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        max_us: lat.last().copied().unwrap_or(0),
        cpu: Cpu::between(cpu0, cpu_now(), secs),
    })
}

/// The broker's storage without gRPC: the same encoded events (with ids)
/// submitted with the same pipelining as a Publish stream.
fn baseline_run(rt: &Runtime, args: &Args, shape: Shape) -> Res<Run> {
    let dir = RunDir::new(&args.dir, "baseline")?;
    let mut cfg = BrokerConfig::default();
    cfg.storage.fsync = args.fsync.parse().map_err(err)?;
    let storage: Arc<dyn Storage> =
        Arc::new(LocalStorage::open(&dir.0, cfg.log_config()).map_err(err)?);
    let limit = Duration::from_secs_f64(args.seconds);
    let max_events = args.events;
    let st = storage.clone();
    let run = on_clients(rt, async move {
        st.create_topic(TOPIC, TopicConfig::default())
            .await
            .map_err(err)?;
        let claimed = Arc::new(AtomicU64::new(0));
        let cpu0 = cpu_now();
        let start = Instant::now();
        let deadline = start + limit;
        let mut tasks = Vec::new();
        for s in 0..shape.streams {
            let (st, claimed) = (st.clone(), claimed.clone());
            let reqs = shape.requests_per_stream();
            tasks.push(tokio::spawn(async move {
                let data = data();
                let permits = Arc::new(Semaphore::new(reqs));
                let mut seq = 0u64;
                let mut acks = Vec::new();
                loop {
                    let p = permits.clone().acquire_owned().await.map_err(err)?;
                    if Instant::now() >= deadline
                        || claimed.fetch_add(shape.batch as u64, Ordering::Relaxed) >= max_events
                    {
                        break;
                    }
                    let records = (0..shape.batch)
                        .map(|i| {
                            let ev = event(format!("base-s{s}-{seq}-{i}"), data.clone());
                            AppendRecord {
                                id: Some(ev.id.clone()),
                                payload: Bytes::from(ev.encode_to_vec()),
                            }
                        })
                        .collect();
                    let pending = st.submit(TOPIC, records).await.map_err(err)?;
                    acks.push(tokio::spawn(async move {
                        let r = pending.await.map(|a| (a.len() as u64, Instant::now()));
                        drop(p);
                        r
                    }));
                    seq += 1;
                }
                let mut n = 0;
                let mut last = start;
                for a in acks {
                    let (k, t) = a.await.map_err(err)?.map_err(err)?;
                    n += k;
                    last = last.max(t);
                }
                Ok::<_, String>((n, last))
            }));
        }
        let mut events = 0;
        let mut last = start;
        for t in tasks {
            let (n, l) = t.await.map_err(err)??;
            events += n;
            last = last.max(l);
        }
        let secs = (last - start).as_secs_f64();
        let cpu = cpu_now();
        Ok(Run {
            events,
            secs,
            cpu: Cpu::between(cpu0, cpu, secs),
            ..Default::default()
        })
    })?;
    rt.block_on(storage.close());
    Ok(run)
}

// -------------------------------------------------------------- consume

async fn open_member(
    addr: SocketAddr,
    topic: &str,
    group: &str,
    credit: u32,
) -> Res<(
    mpsc::Sender<pb::SubscribeRequest>,
    tonic::Streaming<pb::SubscribeResponse>,
)> {
    let mut c = connect(addr).await?;
    let (tx, rx) = mpsc::channel(1024);
    tx.send(pb::SubscribeRequest {
        request: Some(Request::Open(pb::Open {
            topic: topic.into(),
            group: group.into(),
            max_in_flight: credit,
            member_name: "bench".into(),
            ..Default::default()
        })),
    })
    .await
    .map_err(err)?;
    let mut rx = c
        .subscribe(ReceiverStream::new(rx))
        .await
        .map_err(err)?
        .into_inner();
    match rx.message().await.map_err(err)?.and_then(|m| m.response) {
        Some(Response::Opened(_)) => Ok((tx, rx)),
        other => Err(format!("expected opened, got {other:?}")),
    }
}

fn ack(offsets: Vec<u64>) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        request: Some(Request::Ack(pb::Ack { offsets })),
    }
}

/// A new group with `members` members, each with `credit`, reads `total`
/// events from the start of `topic`, acking every Deliveries message at
/// once. Stops at `total` or `limit`; then checks that the group committed
/// everything it acked (with the streams still open).
async fn consume_run(
    addr: SocketAddr,
    group: String,
    members: usize,
    credit: u32,
    total: u64,
    limit: Duration,
) -> Res<Run> {
    let got = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = watch::channel(false);
    let done_tx = Arc::new(done_tx);
    let cpu0 = cpu_now();
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + limit);
    let mut tasks = Vec::new();
    for _ in 0..members {
        let (got, done_tx, mut done_rx, group) =
            (got.clone(), done_tx.clone(), done_rx.clone(), group.clone());
        tasks.push(tokio::spawn(async move {
            let (tx, mut rx) = open_member(addr, TOPIC, &group, credit).await?;
            let mut last = Instant::now();
            loop {
                let m = tokio::select! {
                    m = rx.message() => m.map_err(err)?,
                    _ = done_rx.wait_for(|d| *d) => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                };
                match m.and_then(|m| m.response) {
                    Some(Response::Deliveries(d)) => {
                        let offsets: Vec<u64> = d
                            .deliveries
                            .iter()
                            .filter_map(|d| d.event.as_ref().map(|e| e.offset))
                            .collect();
                        let n = offsets.len() as u64;
                        tx.send(ack(offsets)).await.map_err(err)?;
                        last = Instant::now();
                        if got.fetch_add(n, Ordering::Relaxed) + n >= total {
                            let _ = done_tx.send(true);
                        }
                    }
                    Some(Response::Error(e)) => {
                        return Err(format!("subscriber error: {} {}", e.code, e.message));
                    }
                    Some(_) => {}
                    None => return Err("the subscribe stream ended".to_string()),
                }
            }
            Ok::<_, String>((last, tx, rx))
        }));
    }
    let mut last = start;
    let mut streams = Vec::new();
    for t in tasks {
        let (l, tx, rx) = t.await.map_err(err)??;
        last = last.max(l);
        streams.push((tx, rx));
    }
    let secs = (last - start).as_secs_f64();
    let cpu = Cpu::between(cpu0, cpu_now(), secs);
    let events = got.load(Ordering::Relaxed);
    // Every delivered event was acked: the group must commit past them.
    let mut c = connect(addr).await?;
    let check = Instant::now() + Duration::from_secs(10);
    loop {
        let g = c
            .describe_group(pb::DescribeGroupRequest {
                topic: TOPIC.into(),
                group: group.clone(),
            })
            .await
            .map_err(err)?
            .into_inner();
        if g.committed_offset >= events {
            break;
        }
        if Instant::now() > check {
            return Err(format!(
                "group {group} committed {} after {events} events were acked",
                g.committed_offset
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(streams);
    Ok(Run {
        events,
        secs,
        cpu,
        ..Default::default()
    })
}

// -------------------------------------------------------------- latency

struct Latency {
    sent: u64,
    delivered: u64,
    e2e: Run,
    publish_p50_us: u32,
    publish_p99_us: u32,
}

/// One member subscribes; one publisher sends `rate` events/s, one event
/// per request, for `secs`. Latency = delivery time - send time (carried
/// in the data). All in one process, so both use the same clock.
async fn latency_run(addr: SocketAddr, rate: u64, secs: f64) -> Res<Latency> {
    let base = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    let want = (rate as f64 * secs) as u64;
    let (ack_tx, mut sub_rx) = open_member(addr, TOPIC, "latency", 1000).await?;
    let receiver = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(want as usize);
        let deadline = tokio::time::Instant::now() + limit + Duration::from_secs(10);
        while (lat.len() as u64) < want {
            let m = tokio::select! {
                m = sub_rx.message() => m.map_err(err)?,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            if let Some(Response::Deliveries(d)) = m.and_then(|m| m.response) {
                let now = nanos_since(base);
                let mut offsets = Vec::with_capacity(d.deliveries.len());
                for d in &d.deliveries {
                    let Some(e) = &d.event else { continue };
                    offsets.push(e.offset);
                    if let Some(ev) = &e.event
                        && ev.data.len() >= 8
                    {
                        let sent = u64::from_le_bytes(ev.data[..8].try_into().expect("8 bytes"));
                        lat.push(((now.saturating_sub(sent)) / 1000) as u32);
                    }
                }
                ack_tx.send(ack(offsets)).await.map_err(err)?;
            }
        }
        Ok::<_, String>((lat, ack_tx, sub_rx))
    });

    let mut c = connect(addr).await?;
    let (tx, rx) = mpsc::channel::<pb::PublishRequest>(1024);
    let mut answers = c
        .publish(ReceiverStream::new(rx))
        .await
        .map_err(err)?
        .into_inner();
    let sent_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..want.max(1)).map(|_| AtomicU64::new(0)).collect());
    let acks = {
        let sent_at = sent_at.clone();
        tokio::spawn(async move {
            let mut lat = Vec::new();
            while let Some(r) = answers.message().await.map_err(err)? {
                if let Some(e) = r.error {
                    return Err(format!("publish failed: {} {}", e.code, e.message));
                }
                let sent = sent_at[r.sequence as usize].load(Ordering::Relaxed);
                lat.push(((nanos_since(base) - sent) / 1000) as u32);
            }
            Ok::<_, String>(lat)
        })
    };
    let mut payload = data().to_vec();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0u64;
    while sent < want && start.elapsed() < limit + Duration::from_secs(1) {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(want);
        while sent < due {
            let now = nanos_since(base);
            payload[..8].copy_from_slice(&now.to_le_bytes());
            sent_at[sent as usize].store(now, Ordering::Relaxed);
            let req = pb::PublishRequest {
                sequence: sent,
                topic: TOPIC.into(),
                events: vec![event(format!("lat-{sent}"), Bytes::from(payload.clone()))],
            };
            tx.send(req).await.map_err(err)?;
            sent += 1;
        }
    }
    drop(tx);
    let mut publish_lat = acks.await.map_err(err)??;
    let (mut lat, ack_tx, sub_rx) = receiver.await.map_err(err)??;
    drop((ack_tx, sub_rx));
    publish_lat.sort_unstable();
    lat.sort_unstable();
    Ok(Latency {
        sent,
        delivered: lat.len() as u64,
        e2e: Run {
            events: lat.len() as u64,
            secs,
            p50_us: percentile(&lat, 0.5),
            p99_us: percentile(&lat, 0.99),
            max_us: lat.last().copied().unwrap_or(0),
            ..Default::default()
        },
        publish_p50_us: percentile(&publish_lat, 0.5),
        publish_p99_us: percentile(&publish_lat, 0.99),
    })
}

// ----------------------------------------------------------------- main

fn main() {
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return;
    }
    let args = match parse_args(std::env::args().skip(1).collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("broker-bench: {e}");
        std::process::exit(1);
    }
}

/// Median run by rate, and the per-round rates.
fn summarize(runs: &[Run]) -> (Run, Vec<f64>) {
    let rates: Vec<f64> = runs.iter().map(Run::rate).collect();
    let mut v = runs.to_vec();
    v.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    (v[v.len() / 2].clone(), rates)
}

fn ratios(a: &[Run], b: &[Run]) -> String {
    let v: Vec<f64> = a.iter().zip(b).map(|(x, y)| x.rate() / y.rate()).collect();
    format!("{} (median {:.2})", fmt_list(&v, 2), median(&v))
}

/// A multi-thread runtime with one worker per core; its threads are named
/// `name` (the CPU split in the report relies on it).
fn runtime(name: &str) -> Res<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(err)
}

fn run(args: &Args) -> Res<()> {
    let broker_rt = runtime("broker")?;
    let client_rt = runtime("client")?;
    let workers = broker_rt.metrics().num_workers();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let limit = Duration::from_secs_f64(args.seconds);

    let publish_shapes: Vec<Shape> = [
        (1, 1, 64),
        (1, 1, 1024),
        (4, 1, 1024),
        (1, 10, 1024),
        (4, 10, 1024),
        (1, 100, 1000),
        (4, 100, 1000),
        (4, 100, 4000),
    ]
    .into_iter()
    .map(|(streams, batch, in_flight)| Shape {
        streams,
        batch,
        in_flight,
    })
    .collect();
    let baseline_shapes: Vec<Shape> = [(1, 1, 1024), (1, 100, 1000)]
        .into_iter()
        .map(|(streams, batch, in_flight)| Shape {
            streams,
            batch,
            in_flight,
        })
        .collect();
    let consume_shapes: Vec<(usize, u32)> = vec![(1, 1000), (1, 10_000), (2, 1000), (2, 5000)];

    let mut probes = Vec::new();
    let mut publish: Vec<Vec<Run>> = vec![Vec::new(); publish_shapes.len()];
    let mut baseline: Vec<Vec<Run>> = vec![Vec::new(); baseline_shapes.len()];
    let mut unary: Vec<Run> = Vec::new();
    let mut prefill: Vec<Run> = Vec::new();
    let mut consume: Vec<Vec<Run>> = vec![Vec::new(); consume_shapes.len()];
    let mut latency: Vec<Latency> = Vec::new();

    for round in 1..=args.rounds {
        let probe = raw_sync_probe(&args.dir, Duration::from_secs_f64(args.probe_seconds))?;
        eprintln!(
            "round {round} raw probe: {:.0} fdatasync/s of 272 KiB, {:.0} MB/s",
            probe.0, probe.1
        );
        probes.push(probe);

        if args.runs("publish") {
            for (i, &shape) in publish_shapes.iter().enumerate() {
                let b = RunningBroker::start(&broker_rt, args, "publish")?;
                let addr = b.addr;
                let max = args.events;
                let r = on_clients(&client_rt, async move {
                    create_topic(addr, TOPIC).await?;
                    publish_run(addr, TOPIC, shape, max, limit).await
                })?;
                b.stop(&broker_rt)?;
                eprintln!(
                    "round {round} publish {}: {} events in {:.2} s = {:.0}/s, ack p50 {} us p99 {} us, cpu broker/client {}",
                    shape.label(),
                    r.events,
                    r.secs,
                    r.rate(),
                    r.p50_us,
                    r.p99_us,
                    r.cpu.show()
                );
                publish[i].push(r);
            }
        }
        if args.runs("baseline") {
            for (i, &shape) in baseline_shapes.iter().enumerate() {
                let r = baseline_run(&client_rt, args, shape)?;
                eprintln!(
                    "round {round} baseline {}: {} events in {:.2} s = {:.0}/s",
                    shape.label(),
                    r.events,
                    r.secs,
                    r.rate()
                );
                baseline[i].push(r);
            }
        }
        if args.runs("unary") {
            let b = RunningBroker::start(&broker_rt, args, "unary")?;
            let addr = b.addr;
            let max = args.events;
            let r = on_clients(&client_rt, async move {
                create_topic(addr, TOPIC).await?;
                unary_run(addr, max, limit).await
            })?;
            b.stop(&broker_rt)?;
            eprintln!(
                "round {round} unary: {} events in {:.2} s = {:.0}/s, p50 {} us p99 {} us",
                r.events,
                r.secs,
                r.rate(),
                r.p50_us,
                r.p99_us
            );
            unary.push(r);
        }
        if args.runs("consume") {
            let b = RunningBroker::start(&broker_rt, args, "consume")?;
            let addr = b.addr;
            let (n, climit) = (args.prefill, Duration::from_secs_f64(args.consume_seconds));
            let fill = on_clients(&client_rt, async move {
                create_topic(addr, TOPIC).await?;
                let shape = Shape {
                    streams: 4,
                    batch: 100,
                    in_flight: 4000,
                };
                publish_run(addr, TOPIC, shape, n, climit).await
            })?;
            eprintln!(
                "round {round} prefill: {} events in {:.2} s = {:.0}/s",
                fill.events,
                fill.secs,
                fill.rate()
            );
            let total = fill.events;
            prefill.push(fill);
            for (i, &(members, credit)) in consume_shapes.iter().enumerate() {
                let group = format!("g{round}-{members}x{credit}");
                let r = on_clients(&client_rt, async move {
                    consume_run(addr, group, members, credit, total, climit).await
                })?;
                eprintln!(
                    "round {round} consume {members} member(s) credit {credit}: {} events in {:.2} s = {:.0}/s, cpu broker/client {}",
                    r.events,
                    r.secs,
                    r.rate(),
                    r.cpu.show()
                );
                consume[i].push(r);
            }
            b.stop(&broker_rt)?;
        }
        if args.runs("latency") {
            let b = RunningBroker::start(&broker_rt, args, "latency")?;
            let addr = b.addr;
            let (rate, secs) = (args.rate, args.latency_seconds);
            let r = on_clients(&client_rt, async move {
                create_topic(addr, TOPIC).await?;
                latency_run(addr, rate, secs).await
            })?;
            b.stop(&broker_rt)?;
            eprintln!(
                "round {round} latency at {rate}/s: sent {} delivered {}, e2e p50 {} us p99 {} us max {} us, publish ack p50 {} us p99 {} us",
                r.sent,
                r.delivered,
                r.e2e.p50_us,
                r.e2e.p99_us,
                r.e2e.max_us,
                r.publish_p50_us,
                r.publish_p99_us
            );
            latency.push(r);
        }
    }

    // ---- report ----
    let mut out = String::new();
    let _ = writeln!(
        out,
        "broker-bench{}: broker::run in-process on 127.0.0.1, default BrokerConfig with \
         fsync = {}, {} round(s); tokio runtimes: broker {workers} workers, clients {workers} \
         workers, on {cores} cores shared by both; 1 KiB events (data 1024 B, unique id, no \
         subject); dir {}\n",
        if args.quick { " --quick" } else { "" },
        args.fsync,
        args.rounds,
        args.dir.display()
    );
    let _ = writeln!(
        out,
        "Raw disk probe at the start of each round (272 KiB pwrite + fdatasync in a loop): \
         {} fdatasync/s, {} MB/s.\n",
        fmt_list(&probes.iter().map(|p| p.0).collect::<Vec<_>>(), 0),
        fmt_list(&probes.iter().map(|p| p.1).collect::<Vec<_>>(), 0)
    );
    if args.runs("publish") || args.runs("baseline") || args.runs("unary") {
        let _ = writeln!(
            out,
            "### Publish\n\nEach run: a fresh broker and topic; stop at {} events or {} s. \
             Median of the rounds; per round in order. Latency: request sent to its \
             response received. CPU in cores (of {cores}), broker / clients.\n",
            args.events, args.seconds
        );
        let _ = writeln!(
            out,
            "| API | streams × events per request × requests in flight per stream | events in flight | events/s (median) | MB/s | per round, events/s | ack p50 / p99 (ms) | CPU broker / client |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---|---:|---:|");
        for (i, s) in publish_shapes.iter().enumerate() {
            if publish[i].is_empty() {
                continue;
            }
            let (m, rates) = summarize(&publish[i]);
            let _ = writeln!(
                out,
                "| Publish stream | {} | {} | {:.0} | {:.1} | {} | {} / {} | {} |",
                s.label(),
                s.streams * s.batch * s.requests_per_stream(),
                m.rate(),
                m.mb_s(),
                fmt_list(&rates, 0),
                ms(m.p50_us),
                ms(m.p99_us),
                m.cpu.show()
            );
        }
        if !unary.is_empty() {
            let (m, rates) = summarize(&unary);
            let _ = writeln!(
                out,
                "| PublishUnary, sequential | 1 × 1 × 1 | 1 | {:.0} | {:.1} | {} | {} / {} | {} |",
                m.rate(),
                m.mb_s(),
                fmt_list(&rates, 0),
                ms(m.p50_us),
                ms(m.p99_us),
                m.cpu.show()
            );
        }
        for (i, s) in baseline_shapes.iter().enumerate() {
            if baseline[i].is_empty() {
                continue;
            }
            let (m, rates) = summarize(&baseline[i]);
            let c = m.cpu.broker + m.cpu.client;
            let _ = writeln!(
                out,
                "| storage only, no gRPC (baseline) | {} | {} | {:.0} | {:.1} | {} | | {c:.2} total |",
                s.label(),
                s.streams * s.batch * s.requests_per_stream(),
                m.rate(),
                m.mb_s(),
                fmt_list(&rates, 0),
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "Ratios within each round (same disk state):\n");
        let find = |v: &[Shape], s: (usize, usize, usize)| {
            v.iter()
                .position(|x| (x.streams, x.batch, x.in_flight) == s)
        };
        let pairs = [
            ((4, 100, 1000), (1, 1, 1024), "4 × 100 vs 1 × 1 (batching)"),
            (
                (4, 100, 1000),
                (1, 100, 1000),
                "4 streams vs 1, 100 per request",
            ),
            ((4, 1, 1024), (1, 1, 1024), "4 streams vs 1, 1 per request"),
            (
                (4, 100, 4000),
                (4, 100, 1000),
                "4 × 100, 4000 vs 1000 in flight",
            ),
        ];
        for (a, b, text) in pairs {
            if let (Some(a), Some(b)) = (find(&publish_shapes, a), find(&publish_shapes, b))
                && !publish[a].is_empty()
                && !publish[b].is_empty()
            {
                let _ = writeln!(out, "- {text}: {}", ratios(&publish[a], &publish[b]));
            }
        }
        for (bs, ps) in [
            ((1, 100, 1000), (1, 100, 1000)),
            ((1, 1, 1024), (1, 1, 1024)),
        ] {
            if let (Some(a), Some(b)) = (find(&publish_shapes, ps), find(&baseline_shapes, bs))
                && !publish[a].is_empty()
                && !baseline[b].is_empty()
            {
                let _ = writeln!(
                    out,
                    "- gRPC vs storage only, {} per request: {}",
                    ps.1,
                    ratios(&publish[a], &baseline[b])
                );
            }
        }
        let best = publish
            .iter()
            .filter(|r| !r.is_empty())
            .map(|r| summarize(r).0.rate())
            .fold(0.0, f64::max);
        if best > 0.0 {
            let _ = writeln!(
                out,
                "- target >= 300000 events/s streamed publish, fsync = {}: {} (best median {:.0})",
                args.fsync,
                if best >= 300_000.0 { "met" } else { "NOT met" },
                best
            );
        }
        let _ = writeln!(out);
    }
    if !prefill.is_empty() {
        let (pm, _) = summarize(&prefill);
        let _ = writeln!(
            out,
            "### Consume\n\nThe topic is filled with up to {} events by 4 Publish streams \
             of 100 events per request ({} events/s, per round {}); then each run is a new \
             group reading it from the start (events in the page cache), every Deliveries \
             message acked with one Ack. A run ends when all events were delivered or after \
             {} s, and counts only if the group then commits every acked event.\n",
            args.prefill,
            pm.rate() as u64,
            fmt_list(&prefill.iter().map(Run::rate).collect::<Vec<_>>(), 0),
            args.consume_seconds
        );
        let _ = writeln!(
            out,
            "| members | credit per member | events | events/s consumed + acked (median) | MB/s | per round, events/s | CPU broker / client |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---|---:|");
        for (i, (members, credit)) in consume_shapes.iter().enumerate() {
            let (m, rates) = summarize(&consume[i]);
            let _ = writeln!(
                out,
                "| {members} | {credit} | {} | {:.0} | {:.1} | {} | {} |",
                m.events,
                m.rate(),
                m.mb_s(),
                fmt_list(&rates, 0),
                m.cpu.show()
            );
        }
        let best = consume
            .iter()
            .map(|r| summarize(r).0.rate())
            .fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "\n- target >= 370000 events/s consumed + acked: {} (best median {:.0})\n",
            if best >= 370_000.0 { "met" } else { "NOT met" },
            best
        );
    }
    if !latency.is_empty() {
        let _ = writeln!(
            out,
            "### End-to-end latency\n\nOne Publish stream sends {} events/s (one event per \
             request, paced every 1 ms) for {} s while one group member (credit 1000) \
             receives and acks them. Publish → deliver = delivery received minus the send \
             time carried in the event's data.\n",
            args.rate, args.latency_seconds
        );
        let _ = writeln!(
            out,
            "| round | sent | delivered | publish → deliver p50 / p99 / max (ms) | publish → ack p50 / p99 (ms) |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|");
        for (i, l) in latency.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} / {} / {} | {} / {} |",
                i + 1,
                l.sent,
                l.delivered,
                ms(l.e2e.p50_us),
                ms(l.e2e.p99_us),
                ms(l.e2e.max_us),
                ms(l.publish_p50_us),
                ms(l.publish_p99_us)
            );
        }
    }
    println!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps the benchmark from rotting: a tiny run of every scenario
    /// against a real broker.
    #[test]
    fn tiny_runs_complete() {
        let mut args = parse_args(vec!["--quick".into()]).unwrap();
        args.events = 300;
        let (broker_rt, client_rt) = (runtime("broker").unwrap(), runtime("client").unwrap());
        let limit = Duration::from_secs(20);

        let b = RunningBroker::start(&broker_rt, &args, "test").unwrap();
        let addr = b.addr;
        let (p, u, c) = on_clients(&client_rt, async move {
            create_topic(addr, TOPIC).await?;
            let shape = Shape {
                streams: 2,
                batch: 10,
                in_flight: 40,
            };
            let p = publish_run(addr, TOPIC, shape, 300, limit).await?;
            let u = unary_run(addr, 20, limit).await?;
            let c = consume_run(addr, "g".into(), 2, 50, 320, limit).await?;
            Ok((p, u, c))
        })
        .unwrap();
        b.stop(&broker_rt).unwrap();
        assert_eq!((p.events, u.events, c.events), (300, 20, 320));
        assert!(p.p50_us > 0 && p.p50_us <= p.p99_us);

        let shape = Shape {
            streams: 1,
            batch: 10,
            in_flight: 100,
        };
        assert_eq!(baseline_run(&client_rt, &args, shape).unwrap().events, 300);

        let b = RunningBroker::start(&broker_rt, &args, "test").unwrap();
        let addr = b.addr;
        let l = on_clients(&client_rt, async move {
            create_topic(addr, TOPIC).await?;
            latency_run(addr, 1000, 0.2).await
        })
        .unwrap();
        b.stop(&broker_rt).unwrap();
        assert_eq!((l.sent, l.delivered), (200, 200));
        assert!(l.e2e.p50_us > 0 && l.e2e.p50_us <= l.e2e.max_us);
        assert!(
            raw_sync_probe(&args.dir, Duration::from_millis(20))
                .unwrap()
                .0
                > 0.0
        );
    }
}
