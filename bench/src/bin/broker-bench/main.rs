//! `broker-bench`: the broker measured end to end over gRPC.
//!
//! ```text
//! cargo run --release -p mesh-bench --bin broker-bench -- [--quick] [--dir PATH]
//!     [--fsync always|interval] [--rounds N] [--seconds N] [--events N]
//!     [--prefill N] [--consume-seconds N] [--rate N] [--latency-seconds N]
//!     [--only publish,unary,baseline,consume,latency]
//!     [--tls off|on|both] [--encryption off|on|both]
//! cargo run --release -p mesh-bench --bin broker-bench -- --vs-jetstream
//!     [--quick] [--replicas 1,3] [--rounds N] [--seconds N] [--prefill N] ...
//! ```
//!
//! A real broker (`mesh_broker::run`, default config, `fsync = always`) runs in
//! this process on 127.0.0.1:0 with a fresh data directory, on its own
//! tokio runtime (threads named `broker`). The clients are real tonic
//! clients on a second runtime (threads named `client`), each stream on its
//! own TCP connection. Both runtimes have as many workers as the machine has
//! cores and share those cores, so every figure includes the clients' CPU;
//! the report shows how the CPU time split between broker and clients.
//!
//! Events are 1 KiB of data (`Event.data`, 1024 bytes) with a unique id,
//! a source and a type, and no subject. One module per scenario:
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
//!   its due time on the schedule in the first 8 bytes of data) and one
//!   group member; publish to deliver latency, and publish to ack latency.
//!
//! Every load loop stops at a count or a time limit, whichever comes first.
//! The disk of the benchmark machine alternates between a fast and a
//! throttled state, so the scenarios are interleaved in rounds (each round
//! starts with a raw fdatasync probe) and ratios are taken within a round.
//!
//! `--vs-jetstream` (`vs_jetstream.rs`, `js_direct.rs`, `js_report.rs`)
//! runs none of the above but JetStream directly against the broker on
//! JetStream, on nats-server clusters it starts (`--replicas 1,3`).
//!
//! `--tls` and `--encryption` (`security.rs`) choose the security
//! variants: TLS on is mutual TLS with a development PKI made in a run
//! directory (`mesh_certs::write_dev_pki`), the broker with auth = "mtls"
//! and the repository's deploy/mesh/acl.toml, and every client connecting
//! as `admin` over https; off is plaintext with auth = "none".
//! Encryption on sets `storage.encryption_key_file` to the PKI's log.key.
//! With `both` (of either or of both flags) every scenario runs each
//! variant back to back within each round, and the report ends with the
//! per-round ratios on / off of those neighbours (`compare.rs`).
//!
//! Output is a markdown report on stdout (`report.rs`); progress goes to
//! stderr. Run directories, the event data, the raw disk probe and the
//! percentiles come from the mesh-bench library, shared with log-bench.

mod args;
mod baseline;
mod broker;
mod compare;
mod consume;
mod cpu;
mod js_direct;
mod js_report;
mod latency;
mod publish;
mod report;
mod rounds;
mod security;
mod stats;
mod unary;
mod vs_jetstream;

use std::time::Instant;

use bytes::Bytes;
use mesh_proto::events::v1::Event;

use crate::args::Args;

type Res<T> = Result<T, String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
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

fn nanos_since(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

fn main() {
    let args = Args::from_env();
    let run = || -> Res<()> {
        if args.vs_jetstream {
            let results = vs_jetstream::run(&args)?;
            println!("{}", js_report::write(&args, &results));
            return Ok(());
        }
        let results = rounds::run(&args)?;
        println!("{}", report::write(&args, &results));
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("broker-bench: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesh_bench::{TOPIC, disk::raw_sync_probe};

    use super::*;
    use crate::{
        baseline::baseline_run,
        broker::{RunningBroker, create_topic, on_clients, on_fresh_broker, runtime},
        consume::consume_run,
        latency::latency_run,
        publish::{Shape, publish_run},
        security::Security,
        unary::unary_run,
    };

    /// Keeps the benchmark from rotting: a tiny run of every scenario
    /// against a real broker.
    #[test]
    fn tiny_runs_complete() {
        let mut args = Args::try_parse_from(["broker-bench", "--quick"]).unwrap();
        args.events = 300;
        let (broker_rt, client_rt) = (runtime("broker").unwrap(), runtime("client").unwrap());
        let limit = Duration::from_secs(20);
        let plain = Security::plain();

        let b = RunningBroker::start(&broker_rt, &args, &plain, "test").unwrap();
        let t = b.target.clone();
        let (p, u, c) = on_clients(&client_rt, async move {
            create_topic(&t, TOPIC).await?;
            let shape = Shape {
                streams: 2,
                batch: 10,
                in_flight: 40,
            };
            let p = publish_run(t.clone(), TOPIC, shape, 300, limit).await?;
            let u = unary_run(t.clone(), 20, limit).await?;
            let c = consume_run(t, "g".into(), 2, 50, 320, limit).await?;
            Ok((p, u, c))
        })
        .unwrap();
        b.stop(&broker_rt).unwrap();
        assert_eq!((p.events, u.events, c.events), (300, 20, 320));
        assert!(p.lat.p50 > 0 && p.lat.p50 <= p.lat.p99 && p.lat.p99 <= p.lat.max);

        let shape = Shape {
            streams: 1,
            batch: 10,
            in_flight: 100,
        };
        assert_eq!(
            baseline_run(&client_rt, &args, &plain, shape)
                .unwrap()
                .events,
            300
        );

        let l = on_fresh_broker((&broker_rt, &client_rt), &args, &plain, "test", |t| {
            latency_run(t, 1000, 0.2)
        })
        .unwrap();
        assert_eq!((l.sent, l.delivered), (200, 200));
        assert!(l.e2e.p50 > 0 && l.e2e.p50 <= l.e2e.max);
        assert!(
            raw_sync_probe(&args.dir, Duration::from_millis(20))
                .unwrap()
                .0
                > 0.0
        );
    }

    /// `--vs-jetstream --quick` against one real nats-server: every
    /// workload runs on both sides, the consumers read the whole prefill,
    /// and the report has the ratios.
    #[test]
    fn vs_jetstream_quick_run_completes() {
        let args = Args::try_parse_from([
            "broker-bench",
            "--vs-jetstream",
            "--quick",
            "--replicas",
            "1",
            "--latency-seconds",
            "0.2",
        ])
        .unwrap();
        let r = vs_jetstream::run(&args).unwrap();
        let p = &r.per_replicas[0];
        assert_eq!(p.replicas, 1);
        assert!(p.a_publish[0].run.events > 0);
        assert!(p.b_publish.iter().all(|runs| runs[0].run.events > 0));
        assert!(p.a_consume[0].run.events >= args.prefill);
        assert!(p.b_consume[0].run.events >= args.prefill);
        assert_eq!((p.a_latency[0].sent, p.a_latency[0].delivered), (40, 40));
        assert_eq!((p.b_latency[0].sent, p.b_latency[0].delivered), (40, 40));
        let text = js_report::write(&args, &r);
        assert!(
            text.contains("### R1") && text.contains("B/A per round"),
            "{text}"
        );
    }

    /// The security variants end to end: a quick run of publish and
    /// consume with `--tls both --encryption both` (a real dev PKI, mutual
    /// TLS as `admin` with the repository's ACL, an encrypted log), and
    /// the report compares every pair.
    #[test]
    fn tls_and_encryption_variants_run_side_by_side() {
        let mut args = Args::try_parse_from([
            "broker-bench",
            "--quick",
            "--only",
            "publish,consume",
            "--tls",
            "both",
            "--encryption",
            "both",
            "--prefill",
            "2000",
        ])
        .unwrap();
        // Bounded by count, not by --quick's 0.3 s: on a loaded machine
        // an encrypted, TLS publish run may not reach 500 events in 0.3 s,
        // and the assertions below count them.
        args.events = 500;
        args.seconds = 60.0;
        let r = rounds::run(&args).unwrap();
        assert_eq!(r.variants.len(), 4);
        for (v, runs) in r.variants.iter().zip(&r.runs) {
            for (shape, p) in r.publish_shapes.iter().zip(&runs.publish) {
                assert_eq!(p.len(), 1, "{} {shape:?}", v.label());
                assert_eq!(p[0].events, 500, "{} {shape:?}", v.label());
            }
            assert_eq!(runs.prefill[0].events, 2000, "{}", v.label());
            for c in &runs.consume {
                assert_eq!(c[0].events, 2000, "{}", v.label());
            }
        }
        let text = report::write(&args, &r);
        for title in [
            "TLS on / off, encryption off",
            "TLS on / off, encryption on",
            "Encryption at rest on / off, TLS off",
            "Encryption at rest on / off, TLS on",
            "aim: TLS costs streamed publish under 15%",
            "aim: TLS costs consume under 15%",
        ] {
            assert!(text.contains(title), "no {title:?} in\n{text}");
        }
    }
}
