//! `--vs-jetstream`: JetStream directly (A, `js_direct.rs`) against the
//! broker with `storage.backend = "jetstream"` (B, the broker-bench
//! workloads) on the same nats-server cluster, from this one process.
//!
//! For each `--replicas` setting one cluster is started with the test
//! harness (`mesh_test_support::NatsCluster`: 1 standalone node for R1, 3
//! clustered nodes for R3, `sync_interval: always`), then every round runs
//! A then B of each workload back to back, after a raw disk probe:
//!
//! 1. publish: A with 1000 acks in flight; B with 1 stream of 1000
//!    one-event requests, and with 1 stream of 10 requests of 100 events.
//! 2. consume: both streams are topped up to `--prefill` events; a new
//!    durable consumer (A) or group with one member of credit 1000 (B)
//!    reads from the start as many events as both streams hold, acking
//!    each; the clock runs from before the consumer is made (A) or the
//!    member connects (B).
//! 3. latency: a fresh stream (A) or topic (B), one subscriber, `--rate`
//!    events/s for `--latency-seconds`.
//!
//! B runs on a fresh broker with a namespace of its own per round and
//! workload; every stream of the cluster is deleted after each workload.
//! Besides the in-process CPU split, every run records the nats-server
//! processes' CPU.

use std::time::Duration;

use async_nats::jetstream::Context;
use mesh_bench::{TOPIC, disk::raw_sync_probe};
use mesh_broker::{BrokerConfig, config::Backend};
use mesh_test_support::NatsCluster;
use tokio::runtime::Runtime;

use crate::{
    Res,
    args::Args,
    broker::{RunningBroker, Target, create_topic, on_clients, runtime},
    consume::consume_run,
    cpu::processes_cpu,
    err, js_direct,
    latency::{Latency, latency_run},
    publish::{Shape, publish_run},
    security::Security,
    stats::Run,
};

/// Acks in flight of the direct publish, and of the topping-up publishes.
pub const IN_FLIGHT: usize = 1000;
/// Credit of the consumers (`max_ack_pending` for A).
pub const CREDIT: u32 = 1000;

/// The broker's publish shapes (B).
pub fn b_shapes() -> Vec<Shape> {
    vec![
        Shape {
            streams: 1,
            batch: 1,
            in_flight: IN_FLIGHT,
        },
        Shape {
            streams: 1,
            batch: 100,
            in_flight: IN_FLIGHT,
        },
    ]
}

/// A run with the nats-server processes' CPU over it.
#[derive(Clone, Debug, Default)]
pub struct JsRun {
    pub run: Run,
    /// Cores used by all nats-server nodes together over `run.secs`.
    pub nats: f64,
}

/// What one replicas setting measured; every list is in round order.
#[derive(Default)]
pub struct PerReplicas {
    pub replicas: usize,
    /// Raw disk probe of each round: (fdatasync/s, MB/s).
    pub probes: Vec<(f64, f64)>,
    pub a_publish: Vec<JsRun>,
    /// `b_publish[i]`: the runs of `b_shapes()[i]`.
    pub b_publish: Vec<Vec<JsRun>>,
    pub a_consume: Vec<JsRun>,
    pub b_consume: Vec<JsRun>,
    pub a_latency: Vec<Latency>,
    pub b_latency: Vec<Latency>,
}

/// Everything `--vs-jetstream` measured.
pub struct Results {
    /// Tokio workers of each runtime.
    pub workers: usize,
    pub cores: usize,
    pub per_replicas: Vec<PerReplicas>,
}

/// The two runtimes, the cluster's pids and connection, and the flags:
/// what every run of one replicas setting needs.
struct Ctx<'a> {
    broker_rt: &'a Runtime,
    client_rt: &'a Runtime,
    args: &'a Args,
    urls: String,
    pids: Vec<u32>,
    js: Context,
    replicas: usize,
}

impl Ctx<'_> {
    /// `f` on the client runtime, with the nats-server CPU around it.
    fn measured(&self, f: impl Future<Output = Res<Run>> + Send + 'static) -> Res<JsRun> {
        let n0 = processes_cpu(&self.pids);
        let run = on_clients(self.client_rt, f)?;
        let nats = (processes_cpu(&self.pids) - n0) / run.secs.max(1e-9);
        Ok(JsRun { run, nats })
    }

    /// A fresh broker on the cluster, its namespace `ns`, `TOPIC` created.
    fn broker(&self, ns: &str) -> Res<RunningBroker> {
        let (urls, replicas) = (self.urls.clone(), self.replicas);
        let ns = ns.to_string();
        let b = RunningBroker::start_with(
            self.broker_rt,
            self.args,
            &Security::plain(),
            &ns.clone(),
            move |cfg: &mut BrokerConfig| {
                cfg.storage.backend = Backend::Jetstream;
                cfg.jetstream.servers = urls;
                cfg.jetstream.namespace = ns;
                cfg.jetstream.replicas = replicas;
            },
        )?;
        let t = b.target.clone();
        on_clients(self.client_rt, async move { create_topic(&t, TOPIC).await })?;
        Ok(b)
    }

    fn delete_all_streams(&self) -> Res<()> {
        let js = self.js.clone();
        on_clients(self.client_rt, async move {
            js_direct::delete_all_streams(&js).await
        })
    }

    fn round(&self, round: usize, r: &mut PerReplicas) -> Res<()> {
        let args = self.args;
        let limit = Duration::from_secs_f64(args.seconds);
        // One nats-server with `sync_interval: always` fsyncs every
        // message: filling is slow on a throttled disk.
        let fill_limit = Duration::from_secs(120);
        let consume_limit = Duration::from_secs_f64(args.consume_seconds);
        let tag = format!("r{}x{round}", self.replicas);

        // 1. publish, A then B.
        let stream = format!("direct_{tag}");
        let (js, s) = (self.js.clone(), stream.clone());
        let replicas = self.replicas;
        on_clients(self.client_rt, async move {
            js_direct::create_stream(&js, &s, replicas).await
        })?;
        let (js, s, events) = (self.js.clone(), stream.clone(), args.events);
        let a = self.measured(async move {
            js_direct::publish_run(js, &s, "pub", IN_FLIGHT, events, limit).await
        })?;
        eprintln!(
            "R{} round {round}: publish A (direct, {IN_FLIGHT} in flight): {:.0} events/s",
            self.replicas,
            a.run.rate()
        );
        let mut a_published = a.run.events;
        r.a_publish.push(a);
        let b = self.broker(&format!("b{tag}p"))?;
        let mut b_published = 0;
        for (i, shape) in b_shapes().into_iter().enumerate() {
            let t: Target = b.target.clone();
            let run =
                self.measured(async move { publish_run(t, TOPIC, shape, events, limit).await })?;
            eprintln!(
                "R{} round {round}: publish B (broker, {}): {:.0} events/s",
                self.replicas,
                shape.label(),
                run.run.rate()
            );
            b_published += run.run.events;
            r.b_publish[i].push(run);
        }

        // 2. consume: top both up to --prefill (untimed), then A then B.
        let prefill = args.prefill;
        if a_published < prefill {
            let (js, s) = (self.js.clone(), stream.clone());
            let more = prefill - a_published;
            a_published += on_clients(self.client_rt, async move {
                js_direct::publish_run(js, &s, "fill", IN_FLIGHT, more, fill_limit).await
            })?
            .events;
        }
        if b_published < prefill {
            let t = b.target.clone();
            let shape = b_shapes()[1];
            let more = prefill - b_published;
            b_published += on_clients(self.client_rt, async move {
                publish_run(t, TOPIC, shape, more, fill_limit).await
            })?
            .events;
        }
        if a_published < prefill || b_published < prefill {
            return Err(format!(
                "could not fill the streams to {prefill} events within {fill_limit:?} (A {a_published}, B {b_published})"
            ));
        }
        // Both read all that both have (at least --prefill): the publish
        // runs leave far more than a fill would, and a longer read weighs
        // the group's start less.
        let total = a_published.min(b_published);
        let (js, s) = (self.js.clone(), stream.clone());
        let a = self.measured(async move {
            js_direct::consume_run(js, &s, CREDIT, total, consume_limit).await
        })?;
        let t = b.target.clone();
        let bc = self.measured(async move {
            consume_run(t, "bench".into(), 1, CREDIT, total, consume_limit).await
        })?;
        eprintln!(
            "R{} round {round}: consume A {:.0} / B {:.0} events/s",
            self.replicas,
            a.run.rate(),
            bc.run.rate()
        );
        r.a_consume.push(a);
        r.b_consume.push(bc);
        b.stop(self.broker_rt)?;
        self.delete_all_streams()?;

        // 3. latency, A then B, each on an empty stream.
        let (rate, secs) = (args.rate, args.latency_seconds);
        let stream = format!("latency_{tag}");
        let (js, s) = (self.js.clone(), stream.clone());
        let a = on_clients(self.client_rt, async move {
            js_direct::create_stream(&js, &s, replicas).await?;
            js_direct::latency_run(js, &s, rate, secs).await
        })?;
        let b = self.broker(&format!("b{tag}l"))?;
        let t = b.target.clone();
        let bl = on_clients(
            self.client_rt,
            async move { latency_run(t, rate, secs).await },
        )?;
        b.stop(self.broker_rt)?;
        self.delete_all_streams()?;
        eprintln!(
            "R{} round {round}: latency A {} / B {}",
            self.replicas,
            a.e2e.show_us(),
            bl.e2e.show_us()
        );
        r.a_latency.push(a);
        r.b_latency.push(bl);
        Ok(())
    }
}

pub fn run(args: &Args) -> Res<Results> {
    let broker_rt = runtime("broker")?;
    let client_rt = runtime("client")?;
    let mut out = Results {
        workers: broker_rt.metrics().num_workers(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        per_replicas: Vec::new(),
    };
    for &replicas in &args.replicas {
        eprintln!("R{replicas}: starting {replicas} nats-server node(s)");
        // The harness panics with the nodes' logs if they do not come up.
        let cluster = client_rt.block_on(NatsCluster::start(if replicas == 1 { 1 } else { 3 }));
        let urls = cluster.urls();
        let u = urls.clone();
        let (_client, js) = on_clients(&client_rt, async move { js_direct::connect(&u).await })?;
        let ctx = Ctx {
            broker_rt: &broker_rt,
            client_rt: &client_rt,
            args,
            urls,
            pids: cluster.pids(),
            js,
            replicas,
        };
        let mut r = PerReplicas {
            replicas,
            b_publish: vec![Vec::new(); b_shapes().len()],
            ..Default::default()
        };
        for round in 1..=args.rounds {
            let probe = raw_sync_probe(&args.dir, Duration::from_secs_f64(args.probe_seconds))
                .map_err(err)?;
            eprintln!(
                "R{replicas} round {round}: disk probe {:.0} fdatasync/s, {:.0} MB/s",
                probe.0, probe.1
            );
            r.probes.push(probe);
            ctx.round(round, &mut r)?;
        }
        drop(ctx);
        drop(cluster);
        out.per_replicas.push(r);
    }
    Ok(out)
}
