//! The rounds: every selected scenario once per round, after a raw disk
//! probe, with the figures kept per scenario and round for the report.

use std::time::Duration;

use mesh_bench::{TOPIC, disk::raw_sync_probe};
use tokio::runtime::Runtime;

use crate::{
    Res,
    args::{Args, Part},
    baseline::baseline_run,
    broker::{RunningBroker, create_topic, on_clients, on_fresh_broker, runtime},
    consume::consume_run,
    err,
    latency::{Latency, latency_run},
    publish::{Shape, publish_run},
    security::{Security, Variant},
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

/// What one security variant measured; `x[i]` lists scenario i's runs
/// in round order.
#[derive(Default)]
pub struct Runs {
    /// Runs of each Publish shape.
    pub publish: Vec<Vec<Run>>,
    /// Runs of each storage-only shape; empty for a TLS variant when TLS
    /// off runs too (storage has no TLS: the same figure twice).
    pub baseline: Vec<Vec<Run>>,
    /// PublishUnary runs.
    pub unary: Vec<Run>,
    /// The prefill of each round's consume broker.
    pub prefill: Vec<Run>,
    /// Runs of each consume shape.
    pub consume: Vec<Vec<Run>>,
    /// One latency run per round.
    pub latency: Vec<Latency>,
}

/// Everything the rounds measured.
pub struct Results {
    /// Tokio workers of each runtime.
    pub workers: usize,
    /// Cores of the machine, shared by both runtimes.
    pub cores: usize,
    /// Raw disk probe of each round: (fdatasync/s, MB/s).
    pub probes: Vec<(f64, f64)>,
    /// The Publish stream shapes.
    pub publish_shapes: Vec<Shape>,
    /// The storage-only shapes.
    pub baseline_shapes: Vec<Shape>,
    /// The consume shapes: (members, credit per member).
    pub consume_shapes: Vec<(usize, u32)>,
    /// The security variants, in the order they run within a scenario.
    pub variants: Vec<Variant>,
    /// `runs[v]`: the figures of `variants[v]`.
    pub runs: Vec<Runs>,
}

/// Progress on stderr; names the variant when there are several.
fn say(secs: &[Security], v: usize, what: std::fmt::Arguments) {
    if secs.len() > 1 {
        eprintln!("{what} [{}]", secs[v].variant.label());
    } else {
        eprintln!("{what}");
    }
}

pub fn run(args: &Args) -> Res<Results> {
    let broker_rt = runtime("broker")?;
    let client_rt = runtime("client")?;
    let limit = Duration::from_secs_f64(args.seconds);
    let secs = Security::all(args)?;
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
        runs: secs
            .iter()
            .map(|_| Runs {
                publish: vec![Vec::new(); publish_shapes.len()],
                baseline: vec![Vec::new(); baseline_shapes.len()],
                consume: vec![Vec::new(); consume_shapes.len()],
                ..Runs::default()
            })
            .collect(),
        variants: secs.iter().map(|s| s.variant).collect(),
        publish_shapes,
        baseline_shapes,
        consume_shapes,
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

        // Within each scenario the variants run back to back, so that
        // their ratios compare neighbours in time (the same disk state).
        if args.runs(Part::Publish) {
            for (i, &shape) in r.publish_shapes.iter().enumerate() {
                for (v, sec) in secs.iter().enumerate() {
                    let max = args.events;
                    let run = on_fresh_broker(rts, args, sec, "publish", move |t| {
                        publish_run(t, TOPIC, shape, max, limit)
                    })?;
                    say(
                        &secs,
                        v,
                        format_args!(
                            "round {round} publish {}: {} events in {:.2} s = {:.0}/s, ack {}, cpu broker/client {}",
                            shape.label(),
                            run.events,
                            run.secs,
                            run.rate(),
                            run.lat.show_us(),
                            run.cpu.show()
                        ),
                    );
                    r.runs[v].publish[i].push(run);
                }
            }
        }
        if args.runs(Part::Baseline) {
            for (i, &shape) in r.baseline_shapes.iter().enumerate() {
                for (v, sec) in secs.iter().enumerate() {
                    // Storage has no TLS: once per encryption setting.
                    if sec.variant.tls != args.tls[0] {
                        continue;
                    }
                    let run = baseline_run(&client_rt, args, sec, shape)?;
                    say(
                        &secs,
                        v,
                        format_args!(
                            "round {round} baseline {}: {} events in {:.2} s = {:.0}/s",
                            shape.label(),
                            run.events,
                            run.secs,
                            run.rate()
                        ),
                    );
                    r.runs[v].baseline[i].push(run);
                }
            }
        }
        if args.runs(Part::Unary) {
            for (v, sec) in secs.iter().enumerate() {
                let max = args.events;
                let run =
                    on_fresh_broker(rts, args, sec, "unary", move |t| unary_run(t, max, limit))?;
                say(
                    &secs,
                    v,
                    format_args!(
                        "round {round} unary: {} events in {:.2} s = {:.0}/s, {}",
                        run.events,
                        run.secs,
                        run.rate(),
                        run.lat.show_us()
                    ),
                );
                r.runs[v].unary.push(run);
            }
        }
        if args.runs(Part::Consume) {
            consume_round(rts, args, &secs, round, &mut r)?;
        }
        if args.runs(Part::Latency) {
            for (v, sec) in secs.iter().enumerate() {
                let (rate, length) = (args.rate, args.latency_seconds);
                let l = on_fresh_broker(rts, args, sec, "latency", move |t| {
                    latency_run(t, rate, length)
                })?;
                say(
                    &secs,
                    v,
                    format_args!(
                        "round {round} latency at {rate}/s: sent {} delivered {}, e2e {}, publish ack {}",
                        l.sent,
                        l.delivered,
                        l.e2e.show_us(),
                        l.publish.show_us()
                    ),
                );
                r.runs[v].latency.push(l);
            }
        }
    }
    Ok(r)
}

/// One round of consume: a broker per variant, each filled with up to
/// `--prefill` events (the variants one after another), then every
/// consume shape with the variants back to back. The brokers idle while
/// another variant runs.
fn consume_round(
    (broker_rt, client_rt): (&Runtime, &Runtime),
    args: &Args,
    secs: &[Security],
    round: usize,
    r: &mut Results,
) -> Res<()> {
    let (n, climit) = (args.prefill, Duration::from_secs_f64(args.consume_seconds));
    let mut brokers = Vec::new();
    let mut totals = Vec::new();
    for (v, sec) in secs.iter().enumerate() {
        let b = RunningBroker::start(broker_rt, args, sec, "consume")?;
        let target = b.target.clone();
        brokers.push(b);
        let fill = on_clients(client_rt, async move {
            create_topic(&target, TOPIC).await?;
            let shape = Shape {
                streams: 4,
                batch: 100,
                in_flight: 4000,
            };
            publish_run(target, TOPIC, shape, n, climit).await
        })?;
        say(
            secs,
            v,
            format_args!(
                "round {round} prefill: {} events in {:.2} s = {:.0}/s",
                fill.events,
                fill.secs,
                fill.rate()
            ),
        );
        totals.push(fill.events);
        r.runs[v].prefill.push(fill);
    }
    for (i, &(members, credit)) in r.consume_shapes.iter().enumerate() {
        for (v, b) in brokers.iter().enumerate() {
            let group = format!("g{round}-{members}x{credit}");
            let (target, total) = (b.target.clone(), totals[v]);
            let run = on_clients(client_rt, async move {
                consume_run(target, group, members, credit, total, climit).await
            })?;
            say(
                secs,
                v,
                format_args!(
                    "round {round} consume {members} member(s) credit {credit}: {} events in {:.2} s = {:.0}/s, cpu broker/client {}",
                    run.events,
                    run.secs,
                    run.rate(),
                    run.cpu.show()
                ),
            );
            r.runs[v].consume[i].push(run);
        }
    }
    for b in brokers {
        b.stop(broker_rt)?;
    }
    Ok(())
}
