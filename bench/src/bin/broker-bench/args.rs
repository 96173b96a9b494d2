//! The command line of broker-bench: clap flags, resolved into [`Args`]
//! with the defaults that depend on `--quick`.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use mesh_bench::args::{OnOff, positive, positive_f64};

/// The broker measured end to end over gRPC. Prints a markdown report on
/// stdout and progress on stderr.
#[derive(Parser, Debug)]
#[command(name = "broker-bench", args_override_self = true)]
struct Cli {
    /// Smoke run (about 5 s): smaller defaults for every limit below.
    #[arg(long)]
    quick: bool,
    /// Where the fresh data directories are made [default: the temp dir].
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,
    /// The brokers' `storage.fsync`.
    #[arg(long, value_enum, default_value_t = Fsync::Always)]
    fsync: Fsync,
    /// Time limit of one publish run, in seconds [default: 3; --quick: 0.3].
    #[arg(long, value_name = "N", value_parser = positive_f64)]
    seconds: Option<f64>,
    /// Event limit of one publish run [default: 3000000; --quick: 100000].
    #[arg(long, value_name = "N", value_parser = positive::<u64>)]
    events: Option<u64>,
    /// Interleaved rounds of all scenarios [default: 3; --quick: 1].
    #[arg(long, value_name = "N", value_parser = positive::<usize>)]
    rounds: Option<usize>,
    /// Events written before the consume runs [default: 1000000; --quick: 30000].
    #[arg(long, value_name = "N", value_parser = positive::<u64>)]
    prefill: Option<u64>,
    /// Time limit of the prefill and of one consume run, in seconds
    /// [default: 10; --quick: 2].
    #[arg(long, value_name = "N")]
    consume_seconds: Option<f64>,
    /// Events per second of the latency run [default: 5000; with
    /// --vs-jetstream: 200, below what one nats-server with
    /// `sync_interval: always` stores (it fsyncs every message)].
    #[arg(long, value_name = "N", value_parser = positive::<u64>)]
    rate: Option<u64>,
    /// Length of the latency run, in seconds [default: 5; --quick: 0.5].
    #[arg(long, value_name = "N")]
    latency_seconds: Option<f64>,
    /// The scenarios to run, comma-separated [default: all of them].
    #[arg(long, value_enum, value_name = "PART,...", value_delimiter = ',')]
    only: Vec<Part>,
    /// TLS between the clients and the broker: off (plaintext, auth =
    /// "none"), on (mutual TLS with a dev PKI, auth = "mtls", every client
    /// as `admin`), or both, run back to back per scenario in every round.
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    tls: OnOff,
    /// Encryption at rest of the brokers' logs (`storage.encryption_key_file`
    /// = the dev PKI's log.key): off, on, or both, back to back per
    /// scenario in every round.
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    encryption: OnOff,
    /// Instead of the scenarios above: JetStream directly (async-nats)
    /// against the broker on JetStream, on nats-server clusters this run
    /// starts (`vs_jetstream.rs`). Uses --rounds, --seconds, --events,
    /// --prefill (default here 5000; --quick: 500), --consume-seconds,
    /// --rate and --latency-seconds.
    #[arg(long)]
    vs_jetstream: bool,
    /// Stream replicas of --vs-jetstream, comma-separated: 1 runs on one
    /// nats-server, 3 on a three-node cluster.
    #[arg(long, value_name = "N,...", value_delimiter = ',', default_value = "1,3", value_parser = replicas)]
    replicas: Vec<usize>,
}

/// 1 or 3: the cluster sizes the NATS harness starts.
fn replicas(v: &str) -> Result<usize, String> {
    match v {
        "1" => Ok(1),
        "3" => Ok(3),
        _ => Err(format!("{v}: must be 1 or 3")),
    }
}

/// The values of `--fsync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Fsync {
    Always,
    Interval,
}

impl Fsync {
    /// As in the broker's config file and the report.
    pub fn name(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Interval => "interval",
        }
    }
}

/// The scenarios, the values of `--only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Part {
    Publish,
    Unary,
    Baseline,
    Consume,
    Latency,
}

/// What one invocation runs, every default resolved.
#[derive(Clone, Debug)]
pub struct Args {
    /// Printed in the report's first line.
    pub quick: bool,
    /// Base directory of the brokers' data directories.
    pub dir: PathBuf,
    /// fsync policy of every broker and of the storage-only baseline.
    pub fsync: Fsync,
    /// Time limit of one publish run.
    pub seconds: f64,
    /// Event limit of one publish run.
    pub events: u64,
    /// How many times every scenario runs, interleaved.
    pub rounds: usize,
    /// Length of the raw disk probe at the start of each round.
    pub probe_seconds: f64,
    /// Events written before the consume runs.
    pub prefill: u64,
    /// Time limit of the prefill and of one consume run.
    pub consume_seconds: f64,
    /// Events per second of the latency run.
    pub rate: u64,
    /// Length of the latency run.
    pub latency_seconds: f64,
    /// The scenarios that run.
    pub only: Vec<Part>,
    /// TLS off (`false`), on (`true`), or both, in this order.
    pub tls: Vec<bool>,
    /// Encryption at rest off, on, or both, in this order.
    pub encryption: Vec<bool>,
    /// Run `vs_jetstream` instead of the scenarios.
    pub vs_jetstream: bool,
    /// The replicas `vs_jetstream` measures, in this order.
    pub replicas: Vec<usize>,
}

impl Args {
    /// The process's arguments; on a bad flag, prints clap's message
    /// (naming the flag) and exits with status 2.
    pub fn from_env() -> Args {
        Cli::parse().resolve()
    }

    /// Parses `argv` (program name first) without exiting.
    #[cfg(test)]
    pub fn try_parse_from<I, T>(argv: I) -> Result<Args, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Cli::try_parse_from(argv).map(Cli::resolve)
    }

    pub fn runs(&self, part: Part) -> bool {
        self.only.contains(&part)
    }
}

impl Cli {
    fn resolve(self) -> Args {
        let q = self.quick;
        let secs = |quick, full| if q { quick } else { full };
        let count = |quick, full| if q { quick } else { full };
        Args {
            quick: q,
            dir: self.dir.unwrap_or_else(std::env::temp_dir),
            fsync: self.fsync,
            seconds: self.seconds.unwrap_or(secs(0.3, 3.0)),
            events: self.events.unwrap_or(count(100_000, 3_000_000)),
            rounds: self.rounds.unwrap_or(if q { 1 } else { 3 }),
            probe_seconds: secs(0.1, 1.0),
            // --vs-jetstream fills two streams per round and replicas
            // setting, at JetStream's rate: fewer events.
            prefill: self.prefill.unwrap_or(if self.vs_jetstream {
                count(500, 5_000)
            } else {
                count(30_000, 1_000_000)
            }),
            consume_seconds: self.consume_seconds.unwrap_or(secs(2.0, 10.0)),
            rate: self
                .rate
                .unwrap_or(if self.vs_jetstream { 200 } else { 5_000 }),
            latency_seconds: self.latency_seconds.unwrap_or(secs(0.5, 5.0)),
            only: if self.only.is_empty() {
                Part::value_variants().to_vec()
            } else {
                self.only
            },
            tls: self.tls.values(),
            encryption: self.encryption.values(),
            vs_jetstream: self.vs_jetstream,
            replicas: self.replicas,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::try_parse_from(std::iter::once("broker-bench").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_depend_on_quick_wherever_it_is() {
        let full = parse(&[]).unwrap();
        assert_eq!(
            (full.seconds, full.events, full.rounds),
            (3.0, 3_000_000, 3)
        );
        assert_eq!((full.prefill, full.consume_seconds), (1_000_000, 10.0));
        assert_eq!((full.rate, full.latency_seconds), (5_000, 5.0));
        assert_eq!(full.fsync, Fsync::Always);
        assert_eq!(full.only.len(), 5);
        assert_eq!(full.dir, std::env::temp_dir());
        assert_eq!(
            (&full.tls[..], &full.encryption[..]),
            (&[false][..], &[false][..])
        );

        let quick = parse(&["--rounds", "2", "--quick"]).unwrap();
        assert_eq!(
            (quick.seconds, quick.events, quick.rounds),
            (0.3, 100_000, 2)
        );
        assert_eq!((quick.prefill, quick.consume_seconds), (30_000, 2.0));
        assert_eq!(quick.latency_seconds, 0.5);
        assert!(quick.quick);
        assert!(!full.vs_jetstream);
        assert_eq!(full.replicas, [1, 3]);

        let js = parse(&["--vs-jetstream", "--replicas", "3"]).unwrap();
        assert!(js.vs_jetstream);
        assert_eq!((js.prefill, &js.replicas[..]), (5_000, &[3][..]));
        assert_eq!(js.rate, 200);
        let js = parse(&["--vs-jetstream", "--quick"]).unwrap();
        assert_eq!(js.prefill, 500);
    }

    #[test]
    fn every_documented_flag_parses() {
        let a = parse(&[
            "--dir",
            "/x",
            "--fsync",
            "interval",
            "--rounds",
            "5",
            "--seconds",
            "1.5",
            "--events",
            "7",
            "--prefill",
            "300000",
            "--consume-seconds",
            "4",
            "--rate",
            "100",
            "--latency-seconds",
            "2",
            "--only",
            "consume,latency",
            "--tls",
            "both",
            "--encryption",
            "on",
        ])
        .unwrap();
        assert_eq!(a.dir, PathBuf::from("/x"));
        assert_eq!(a.fsync, Fsync::Interval);
        assert_eq!((a.rounds, a.seconds, a.events), (5, 1.5, 7));
        assert_eq!((a.prefill, a.consume_seconds), (300_000, 4.0));
        assert_eq!((a.rate, a.latency_seconds), (100, 2.0));
        assert_eq!(a.only, [Part::Consume, Part::Latency]);
        assert_eq!(
            (&a.tls[..], &a.encryption[..]),
            (&[false, true][..], &[true][..])
        );
        assert!(a.runs(Part::Latency) && !a.runs(Part::Publish));
        let all = parse(&["--only", "publish,unary,baseline,consume,latency"]).unwrap();
        assert_eq!(all.only, Part::value_variants());
    }

    /// As with the old hand-written parser: a repeated flag is no error,
    /// the last value counts.
    #[test]
    fn the_last_of_a_repeated_flag_counts() {
        let a = parse(&["--quick", "--events", "5", "--quick", "--events", "6"]).unwrap();
        assert!(a.quick);
        assert_eq!(a.events, 6);
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, flag) in [
            (&["--seconds", "0"][..], "--seconds"),
            (&["--events", "0"], "--events"),
            (&["--rounds", "x"], "--rounds"),
            (&["--prefill", "0"], "--prefill"),
            (&["--rate", "0"], "--rate"),
            (&["--fsync", "never"], "--fsync"),
            (&["--tls", "yes"], "--tls"),
            (&["--encryption", "aes"], "--encryption"),
            (&["--only", "publish,foo"], "--only"),
            (&["--replicas", "2"], "--replicas"),
            (&["--dir"], "--dir"),
            (&["--bogus"], "--bogus"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(flag), "{args:?}: {e}");
        }
    }
}
