//! The rounds: every selected scenario once per round, after a raw disk
//! probe, with the figures kept per scenario and round for the report.

use std::time::Duration;

use mesh_bench::{TOPIC, disk::raw_sync_probe};

use crate::{
    Res,
    args::{Args, Part},
    baseline::baseline_run,
    broker::{RunningBroker, create_topic, on_clients, on_fresh_broker, runtime},
    consume::consume_run,
    err,
    latency::{Latency, latency_run},
    publish::{Shape, publish_run},
    stats::Run,
    unary::unary_run,
};

fn shapes(list: &[(usize, usize, usize)]) -> Vec<Shape> {
    list.iter()
        .map(|&(streams, batch, in_flight)| Shape {
            streams,
            batch,
            in_flight,
        })
        .collect()
}

/// Everything the rounds measured; `x[i]` lists scenario i's runs in
/// round order.
pub struct Results {
    /// Tokio workers of each runtime.
    pub workers: usize,
    /// Cores of the machine, shared by both runtimes.
    pub cores: usize,
    /// Raw disk probe of each round: (fdatasync/s, MB/s).
    pub probes: Vec<(f64, f64)>,
    /// The Publish stream shapes.
    pub publish_shapes: Vec<Shape>,
    /// Runs of each Publish shape.
    pub publish: Vec<Vec<Run>>,
    /// The storage-only shapes.
    pub baseline_shapes: Vec<Shape>,
    /// Runs of each storage-only shape.
    pub baseline: Vec<Vec<Run>>,
    /// PublishUnary runs.
    pub unary: Vec<Run>,
    /// The prefill of each round's consume broker.
    pub prefill: Vec<Run>,
    /// The consume shapes: (members, credit per member).
    pub consume_shapes: Vec<(usize, u32)>,
    /// Runs of each consume shape.
    pub consume: Vec<Vec<Run>>,
    /// One latency run per round.
    pub latency: Vec<Latency>,
}

pub fn run(args: &Args) -> Res<Results> {
    let broker_rt = runtime("broker")?;
    let client_rt = runtime("client")?;
    let limit = Duration::from_secs_f64(args.seconds);
    let publish_shapes = shapes(&[
        (1, 1, 64),
        (1, 1, 1024),
        (4, 1, 1024),
        (1, 10, 1024),
        (4, 10, 1024),
        (1, 100, 1000),
        (4, 100, 1000),
        (4, 100, 4000),
    ]);
    let baseline_shapes = shapes(&[(1, 1, 1024), (1, 100, 1000)]);
    let consume_shapes: Vec<(usize, u32)> = vec![(1, 1000), (1, 10_000), (2, 1000), (2, 5000)];
    let mut r = Results {
        workers: broker_rt.metrics().num_workers(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        probes: Vec::new(),
        publish: vec![Vec::new(); publish_shapes.len()],
        publish_shapes,
        baseline: vec![Vec::new(); baseline_shapes.len()],
        baseline_shapes,
        unary: Vec::new(),
        prefill: Vec::new(),
        consume: vec![Vec::new(); consume_shapes.len()],
        consume_shapes,
        latency: Vec::new(),
    };

    let rts = (&broker_rt, &client_rt);
    for round in 1..=args.rounds {
        let probe =
            raw_sync_probe(&args.dir, Duration::from_secs_f64(args.probe_seconds)).map_err(err)?;
        eprintln!(
            "round {round} raw probe: {:.0} fdatasync/s of 272 KiB, {:.0} MB/s",
            probe.0, probe.1
        );
        r.probes.push(probe);

        if args.runs(Part::Publish) {
            for (i, &shape) in r.publish_shapes.iter().enumerate() {
                let max = args.events;
                let run = on_fresh_broker(rts, args, "publish", move |addr| {
                    publish_run(addr, TOPIC, shape, max, limit)
                })?;
                eprintln!(
                    "round {round} publish {}: {} events in {:.2} s = {:.0}/s, ack {}, cpu broker/client {}",
                    shape.label(),
                    run.events,
                    run.secs,
                    run.rate(),
                    run.lat.show_us(),
                    run.cpu.show()
                );
                r.publish[i].push(run);
            }
        }
        if args.runs(Part::Baseline) {
            for (i, &shape) in r.baseline_shapes.iter().enumerate() {
                let run = baseline_run(&client_rt, args, shape)?;
                eprintln!(
                    "round {round} baseline {}: {} events in {:.2} s = {:.0}/s",
                    shape.label(),
                    run.events,
                    run.secs,
                    run.rate()
                );
                r.baseline[i].push(run);
            }
        }
        if args.runs(Part::Unary) {
            let max = args.events;
            let run = on_fresh_broker(rts, args, "unary", move |addr| unary_run(addr, max, limit))?;
            eprintln!(
                "round {round} unary: {} events in {:.2} s = {:.0}/s, {}",
                run.events,
                run.secs,
                run.rate(),
                run.lat.show_us()
            );
            r.unary.push(run);
        }
        if args.runs(Part::Consume) {
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
            r.prefill.push(fill);
            for (i, &(members, credit)) in r.consume_shapes.iter().enumerate() {
                let group = format!("g{round}-{members}x{credit}");
                let run = on_clients(&client_rt, async move {
                    consume_run(addr, group, members, credit, total, climit).await
                })?;
                eprintln!(
                    "round {round} consume {members} member(s) credit {credit}: {} events in {:.2} s = {:.0}/s, cpu broker/client {}",
                    run.events,
                    run.secs,
                    run.rate(),
                    run.cpu.show()
                );
                r.consume[i].push(run);
            }
            b.stop(&broker_rt)?;
        }
        if args.runs(Part::Latency) {
            let (rate, secs) = (args.rate, args.latency_seconds);
            let l = on_fresh_broker(rts, args, "latency", move |addr| {
                latency_run(addr, rate, secs)
            })?;
            eprintln!(
                "round {round} latency at {rate}/s: sent {} delivered {}, e2e {}, publish ack {}",
                l.sent,
                l.delivered,
                l.e2e.show_us(),
                l.publish.show_us()
            );
            r.latency.push(l);
        }
    }
    Ok(r)
}
