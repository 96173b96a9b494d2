//! The broker under test, the clients' connections (plaintext or TLS), and
//! the two runtimes.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use mesh_broker::{BrokerConfig, config};
use mesh_proto::broker::v1::{self as pb, broker_client::BrokerClient};
use mesh_runtime::tls::TlsConfig;
use tokio::{runtime::Runtime, sync::oneshot};
use tonic::transport::{Channel, Endpoint};

use mesh_bench::{TOPIC, disk::RunDir};

use crate::{
    Res,
    args::{Args, Fsync},
    err,
    security::Security,
};

pub type Client = BrokerClient<Channel>;

/// The one place that builds the `BrokerConfig` of a run: the defaults,
/// `--fsync`, loopback with no fixed port and no metrics endpoint, the
/// run's data directory, and the variant's security settings. The
/// storage-only baseline uses its `log_config()`.
pub fn broker_config(args: &Args, sec: &Security, data_dir: PathBuf) -> BrokerConfig {
    let mut cfg = BrokerConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        // Several brokers start one after another; no fixed port.
        metrics_listen: None,
        data_dir,
        ..Default::default()
    };
    cfg.storage.fsync = match args.fsync {
        Fsync::Always => config::Fsync::Always,
        Fsync::Interval => config::Fsync::Interval,
    };
    sec.apply(&mut cfg);
    cfg
}

/// A multi-thread runtime with one worker per core; its threads are named
/// `name` (the CPU split in the report relies on it).
pub fn runtime(name: &str) -> Res<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(err)
}

/// `mesh_broker::run` on the broker runtime, with a fresh data directory.
pub struct RunningBroker {
    /// Where and how the clients connect.
    pub target: Target,
    /// Tells the broker to shut down gracefully.
    stop: Option<oneshot::Sender<()>>,
    /// The broker's task; joined by `stop`.
    task: Option<tokio::task::JoinHandle<Result<(), mesh_broker::BrokerError>>>,
    /// The data directory, removed when the broker is dropped.
    _dir: RunDir,
}

impl RunningBroker {
    pub fn start(rt: &Runtime, args: &Args, sec: &Security, label: &str) -> Res<Self> {
        Self::start_with(rt, args, sec, label, |_| {})
    }

    /// As [`RunningBroker::start`], with `edit` applied to the config last
    /// (`--vs-jetstream` points it at a NATS cluster).
    pub fn start_with(
        rt: &Runtime,
        args: &Args,
        sec: &Security,
        label: &str,
        edit: impl FnOnce(&mut BrokerConfig),
    ) -> Res<Self> {
        let dir = RunDir::new(&args.dir, label).map_err(err)?;
        let mut cfg = broker_config(args, sec, dir.0.clone());
        edit(&mut cfg);
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .map_err(err)?;
        let addr = listener.local_addr().map_err(err)?;
        let target = sec.target(addr)?;
        let (stop, rx) = oneshot::channel::<()>();
        let task = rt.spawn(mesh_broker::run(cfg, listener, async move {
            let _ = rx.await;
        }));
        Ok(RunningBroker {
            target,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        })
    }

    /// Graceful stop; the data directory goes with `self`.
    pub fn stop(mut self, rt: &Runtime) -> Res<()> {
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

/// A broker as its clients reach it: the endpoint with the variant's TLS
/// settings, read from their files once and not per connection.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http://` or `https://` with the client certificate; every
    /// `connect` opens a new connection from it.
    endpoint: Endpoint,
}

impl Target {
    /// With `tls` enabled the clients connect over https, presenting its
    /// certificate; else in plaintext.
    pub fn new(addr: SocketAddr, tls: &TlsConfig) -> Res<Target> {
        let scheme = if tls.enabled() { "https" } else { "http" };
        let endpoint = mesh_runtime::tls::endpoint("broker", &format!("{scheme}://{addr}"), tls)
            .map_err(err)?
            .tcp_nodelay(true);
        Ok(Target { endpoint })
    }
}

/// A new connection to the broker (its own TCP connection, and TLS
/// session when on).
pub async fn connect(target: &Target) -> Res<Client> {
    let ch = target.endpoint.clone().connect().await.map_err(err)?;
    Ok(BrokerClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// Waits until the broker answers, then creates `topic`.
pub async fn create_topic(target: &Target, topic: &str) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = connect(target).await {
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

/// One scenario run against its own broker: a fresh broker of variant
/// `sec` on the broker runtime (`rts.0`), `TOPIC` created, `run(target)`
/// on the client runtime (`rts.1`), then a graceful stop.
pub fn on_fresh_broker<T, F, Fut>(
    (broker_rt, client_rt): (&Runtime, &Runtime),
    args: &Args,
    sec: &Security,
    label: &str,
    run: F,
) -> Res<T>
where
    T: Send + 'static,
    F: FnOnce(Target) -> Fut + Send + 'static,
    Fut: Future<Output = Res<T>> + Send + 'static,
{
    let b = RunningBroker::start(broker_rt, args, sec, label)?;
    let target = b.target.clone();
    let out = on_clients(client_rt, async move {
        create_topic(&target, TOPIC).await?;
        run(target).await
    })?;
    b.stop(broker_rt)?;
    Ok(out)
}

/// Runs `f` on the client runtime (never on the main thread, so that all
/// client CPU is on `client` threads) and waits for it.
pub fn on_clients<T: Send + 'static>(
    rt: &Runtime,
    f: impl Future<Output = Res<T>> + Send + 'static,
) -> Res<T> {
    rt.block_on(rt.spawn(f)).map_err(err)?
}
