//! Test harness: a real broker on an ephemeral 127.0.0.1 port (in-process
//! through `mesh_broker::run`, or as a child process), and thin real-gRPC
//! client helpers.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use bytes::Bytes;
use mesh_broker::BrokerConfig;
use mesh_proto::{
    broker::v1::{
        self as pb, broker_client::BrokerClient, subscribe_request::Request,
        subscribe_response::Response,
    },
    events::v1::Event,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Streaming, transport::Channel};

/// Shared by every test crate of the workspace. Allowed unused like the
/// rest of this module: not every test file polls.
#[allow(unused_imports)]
pub use mesh_test_support::eventually;

pub type Client = BrokerClient<Channel>;

/// How long a group may take to reach a state a test waits for: an upper
/// bound only, generous for a loaded 2-core machine.
pub const GROUP_WAIT: Duration = Duration::from_secs(20);

/// Settings that make timing-based behaviour quick in tests.
pub fn test_config(dir: &Path) -> BrokerConfig {
    let mut c = BrokerConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        // Many brokers run at once; tests/metrics.rs turns this on.
        metrics_listen: None,
        data_dir: dir.to_path_buf(),
        // Open on purpose: these tests are about delivery, not access
        // (tests/security.rs covers that).
        auth: Some(mesh_broker::auth::AuthMode::None),
        ..BrokerConfig::default()
    };
    c.delivery.ack_deadline = Duration::from_millis(1_000);
    c.delivery.min_backoff = Duration::from_millis(50);
    c.delivery.max_backoff = Duration::from_millis(2_000);
    c.delivery.heartbeat_interval = Duration::from_millis(500);
    c.delivery.idle_timeout = Duration::from_millis(3_000);
    c.delivery.lag_report_interval = Duration::from_millis(200);
    c.delivery.commit_interval = Duration::from_millis(20);
    c.drain_deadline = std::time::Duration::from_secs(3);
    c
}

/// For tests that assert exactly what was delivered: no ack deadline or
/// idle timeout can expire while a slow machine runs the test, so nothing
/// is redelivered and no member dropped behind the test's back.
pub fn no_deadlines(c: &mut BrokerConfig) {
    c.delivery.ack_deadline = Duration::from_millis(60_000);
    c.delivery.idle_timeout = Duration::from_millis(120_000);
}

/// A port for a child process to listen on. Not from `bind(0)`: a port the
/// kernel handed out and took back can go to any outgoing connection before
/// the child binds it. Each test process walks its own slice of
/// 20000..32000, below the kernel's ephemeral range, and never reuses one.
pub fn unused_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20000 + (std::process::id() % 60) as u16 * 200;
    for _ in 0..200 {
        let p = base + NEXT.fetch_add(1, Ordering::Relaxed) % 200;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port in {base}..{}", base + 200);
}

/// Which storage a test's broker runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    /// The embedded log in the test's directory.
    Log,
    /// The test binary's shared three-node JetStream cluster
    /// (`mesh_test_support::nats::shared_cluster`), R3, in a namespace
    /// named after the test's directory, so tests do not see each other
    /// and a restart on the same directory finds the same streams.
    Jetstream,
}

impl Backend {
    /// Points `c` at this backend.
    pub async fn apply(self, c: &mut BrokerConfig) {
        if let Backend::Jetstream = self {
            let cluster = mesh_test_support::nats::shared_cluster().await;
            jetstream_on(c, &cluster.urls(), 3);
        }
    }
}

/// Runs `c` on the JetStream cluster at `urls` with `replicas` copies, in
/// a namespace named after its data directory.
pub fn jetstream_on(c: &mut BrokerConfig, urls: &str, replicas: usize) {
    c.storage.backend = mesh_broker::config::Backend::Jetstream;
    c.jetstream.servers = urls.to_string();
    c.jetstream.replicas = replicas;
    c.jetstream.namespace = c
        .data_dir
        .file_name()
        .expect("a data directory name")
        .to_string_lossy()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
}

/// Each scenario `name(b: Backend)` as two tests, `log::name` and
/// `jetstream::name`.
#[macro_export]
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        mod log {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Log).await
                }
            )*
        }
        mod jetstream {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Jetstream).await
                }
            )*
        }
    };
}

pub struct TestBroker {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), mesh_broker::BrokerError>>>,
}

impl TestBroker {
    /// Starts a broker in this process on a fresh ephemeral port.
    pub async fn start(dir: &Path, tweak: impl FnOnce(&mut BrokerConfig)) -> TestBroker {
        Self::start_on(Backend::Log, dir, tweak).await
    }

    /// Likewise, on `backend`.
    pub async fn start_on(
        backend: Backend,
        dir: &Path,
        tweak: impl FnOnce(&mut BrokerConfig),
    ) -> TestBroker {
        let mut cfg = test_config(dir);
        backend.apply(&mut cfg).await;
        tweak(&mut cfg);
        let mut b = Self::spawn(cfg).await;
        // Wait until it answers: bounded in time, and generously, since
        // many brokers start at once on a loaded 2-core machine.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            if b.task.as_ref().is_some_and(|t| t.is_finished()) {
                let r = b.task.take().expect("checked").await;
                panic!("broker stopped while starting: {r:?}");
            }
            if let Ok(mut c) = b.try_client().await
                && c.list_topics(pb::ListTopicsRequest {}).await.is_ok()
            {
                return b;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("broker did not start within 30 s");
    }

    /// Runs `cfg` in this process on a fresh ephemeral port (its `listen`
    /// is not used), without waiting for it to answer: the caller waits in
    /// its own way (plaintext or TLS).
    pub async fn spawn(cfg: BrokerConfig) -> TestBroker {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = cfg.data_dir.clone();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(mesh_broker::run(cfg, listener, async move {
            let _ = rx.await;
        }));
        TestBroker {
            addr,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn try_client(&self) -> Result<Client, tonic::transport::Error> {
        connect(self.addr).await
    }

    pub async fn client(&self) -> Client {
        self.try_client().await.unwrap()
    }

    /// Graceful stop (what SIGTERM does).
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("broker drained in time")
                .unwrap()
                .unwrap();
        }
    }
}

/// A broker in this process on a data directory of its own, and a client.
pub struct Env {
    /// The broker; `b.stop().await` ends a test that drained cleanly.
    pub b: TestBroker,
    /// A client of `b`, cloned wherever a test needs a second handle.
    pub c: Client,
    /// Dropped last: the broker must stop before its directory goes away.
    _dir: tempfile::TempDir,
}

/// Starts a broker (test settings, then `tweak`) on a fresh directory.
pub async fn env(tweak: impl FnOnce(&mut BrokerConfig)) -> Env {
    env_on(Backend::Log, tweak).await
}

/// Likewise, on `backend`.
pub async fn env_on(backend: Backend, tweak: impl FnOnce(&mut BrokerConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start_on(backend, dir.path(), tweak).await;
    let c = b.client().await;
    Env { b, c, _dir: dir }
}

pub async fn connect(addr: SocketAddr) -> Result<Client, tonic::transport::Error> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await?;
    Ok(BrokerClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// The broker binary as a child process; environment overrides configure it.
pub struct BrokerProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl BrokerProcess {
    pub fn spawn(dir: &Path, env: &[(&str, &str)]) -> BrokerProcess {
        Self::spawn_bin(env!("CARGO_BIN_EXE_broker").as_ref(), dir, env)
    }

    /// Like `spawn`, with another build of the broker binary (to measure an
    /// older one side by side).
    pub fn spawn_bin(bin: &Path, dir: &Path, env: &[(&str, &str)]) -> BrokerProcess {
        Self::spawn_with_stderr(bin, dir, env, Stdio::inherit())
    }

    /// Like `spawn`, appending the broker's log (stderr) to `log`, for tests
    /// that check what it logs.
    pub fn spawn_logging_to(dir: &Path, env: &[(&str, &str)], log: &Path) -> BrokerProcess {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let bin = env!("CARGO_BIN_EXE_broker").as_ref();
        Self::spawn_with_stderr(bin, dir, env, Stdio::from(f))
    }

    fn spawn_with_stderr(
        bin: &Path,
        dir: &Path,
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> BrokerProcess {
        let mut cmd = Command::new(bin);
        cmd.env("BROKER__LISTEN", "127.0.0.1:0")
            // Open on purpose, unless `env` says otherwise (tests/security.rs).
            .env("BROKER__AUTH", "none")
            // Off unless `env` sets it: many brokers run at once.
            .env("BROKER__METRICS_LISTEN", "")
            .env("BROKER__DATA_DIR", dir)
            .env("BROKER__DELIVERY__ACK_DEADLINE_MS", "1000")
            .env("BROKER__DELIVERY__COMMIT_INTERVAL_MS", "20")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr);
        // Run from the data dir so no broker.toml in the source tree is read.
        cmd.current_dir(dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("broker listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        BrokerProcess { child, addr }
    }

    pub fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn sigterm(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

/// A test that fails must not leave its broker running (holding the test
/// runner's output pipe open, and its port and CPU).
impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn event(id: &str, subject: &str, data: &str) -> Event {
    Event {
        id: id.into(),
        source: "/tests".into(),
        r#type: "test.Event".into(),
        subject: subject.into(),
        data: Bytes::from(data.to_string()),
        ..Default::default()
    }
}

pub async fn create_topic(c: &mut Client, name: &str) {
    c.create_topic(pb::CreateTopicRequest {
        name: name.into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

pub async fn publish(c: &mut Client, topic: &str, events: Vec<Event>) -> Vec<pb::PublishResult> {
    let r = c
        .publish_unary(pb::PublishRequest {
            sequence: 0,
            topic: topic.into(),
            events,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.error.is_none(), "{:?}", r.error);
    r.results
}

/// A subscriber stream with helpers to read deliveries and send acks.
pub struct Sub {
    pub tx: mpsc::Sender<pb::SubscribeRequest>,
    pub rx: Streaming<pb::SubscribeResponse>,
    pub opened: pb::Opened,
}

pub fn open_req(topic: &str, group: &str, credit: u32) -> pb::SubscribeRequest {
    open_from(topic, group, credit, false, None)
}

/// An `open` with `auto_ack` and a start position as well (with no group
/// and `auto_ack`, an ephemeral tail).
pub fn open_from(
    topic: &str,
    group: &str,
    credit: u32,
    auto_ack: bool,
    start: Option<pb::start_position::Position>,
) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        request: Some(Request::Open(pb::Open {
            topic: topic.into(),
            group: group.into(),
            max_in_flight: credit,
            auto_ack,
            start: start.map(|p| pb::StartPosition { position: Some(p) }),
            ..Default::default()
        })),
    }
}

impl Sub {
    pub async fn open(c: &mut Client, topic: &str, group: &str, credit: u32) -> Sub {
        Self::open_with(c, open_req(topic, group, credit)).await
    }

    pub async fn open_with(c: &mut Client, open: pb::SubscribeRequest) -> Sub {
        Self::try_open_with(c, open).await.unwrap()
    }

    pub async fn try_open_with(
        c: &mut Client,
        open: pb::SubscribeRequest,
    ) -> Result<Sub, tonic::Status> {
        let (tx, rx) = mpsc::channel(1024);
        tx.send(open).await.unwrap();
        let mut rx = c.subscribe(ReceiverStream::new(rx)).await?.into_inner();
        match rx.message().await?.and_then(|m| m.response) {
            Some(Response::Opened(opened)) => Ok(Sub { tx, rx, opened }),
            other => panic!("expected opened, got {other:?}"),
        }
    }

    /// Next message of any kind but heartbeats (lag reports included), or
    /// `None` when the stream ended or `timeout` passed.
    pub async fn next_or_lag(&mut self, timeout: Duration) -> Option<Response> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let m = tokio::time::timeout_at(deadline, self.rx.message())
                .await
                .ok()?;
            match m {
                Ok(Some(pb::SubscribeResponse {
                    response: Some(Response::Heartbeat(_)),
                })) => continue,
                Ok(Some(pb::SubscribeResponse { response: Some(r) })) => return Some(r),
                _ => return None,
            }
        }
    }

    /// Next message that is not a heartbeat or lag report.
    pub async fn next(&mut self, timeout: Duration) -> Option<Response> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_or_lag(left).await? {
                Response::Lag(_) => continue,
                r => return Some(r),
            }
        }
    }

    /// Collects deliveries until `n` arrived or `timeout` passed.
    pub async fn take(&mut self, n: usize, timeout: Duration) -> Vec<pb::Delivery> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Response::Deliveries(d)) => out.extend(d.deliveries),
                Some(_) => {}
                None => break,
            }
        }
        out
    }

    pub async fn ack(&self, offsets: Vec<u64>) {
        self.tx
            .send(pb::SubscribeRequest {
                request: Some(Request::Ack(pb::Ack { offsets })),
            })
            .await
            .unwrap();
    }

    pub async fn nack(&self, offsets: Vec<u64>, delay: Duration, reason: &str) {
        self.tx
            .send(pb::SubscribeRequest {
                request: Some(Request::Nack(pb::Nack {
                    offsets,
                    delay: Some(mesh_runtime::time::duration(delay)),
                    reason: reason.into(),
                })),
            })
            .await
            .unwrap();
    }
}

pub fn offset(d: &pb::Delivery) -> u64 {
    d.event.as_ref().unwrap().offset
}

pub fn id(d: &pb::Delivery) -> String {
    d.event.as_ref().unwrap().event.as_ref().unwrap().id.clone()
}

pub async fn describe(c: &mut Client, topic: &str, group: &str) -> pb::GroupInfo {
    try_describe(c, topic, group).await.unwrap()
}

/// DescribeGroup, for tests that expect it to be refused.
pub async fn try_describe(
    c: &mut Client,
    topic: &str,
    group: &str,
) -> Result<pb::GroupInfo, tonic::Status> {
    c.describe_group(pb::DescribeGroupRequest {
        topic: topic.into(),
        group: group.into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

/// Polls DescribeGroup until `f` holds of its answer, for at most
/// `GROUP_WAIT`, and returns that answer; panics with `what` and the last
/// answer if it never came. `f` checks what the caller then asserts.
pub async fn wait_group(
    c: &Client,
    topic: &str,
    group: &str,
    what: &str,
    f: impl Fn(&pb::GroupInfo) -> bool,
) -> pb::GroupInfo {
    let f = &f;
    let held = mesh_test_support::eventually_some(GROUP_WAIT, || {
        let mut c = c.clone();
        async move {
            let info = describe(&mut c, topic, group).await;
            f(&info).then_some(info)
        }
    })
    .await;
    match held {
        Some(info) => info,
        None => {
            let now = describe(&mut c.clone(), topic, group).await;
            panic!("{topic}/{group}: {what}: {now:?}")
        }
    }
}

/// Waits until the group has committed exactly `committed`.
pub async fn wait_committed(c: &Client, topic: &str, group: &str, committed: u64) {
    let what = format!("committed_offset never reached {committed}");
    wait_group(c, topic, group, &what, |i| i.committed_offset == committed).await;
}

pub async fn dead_letters(c: &mut Client, topic: &str, group: &str) -> pb::ListDeadLettersResponse {
    c.list_dead_letters(pb::ListDeadLettersRequest {
        topic: topic.into(),
        group: group.into(),
        limit: 0,
    })
    .await
    .unwrap()
    .into_inner()
}
