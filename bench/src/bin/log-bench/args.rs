//! The command line of log-bench: clap flags, resolved into [`Args`] with
//! the defaults that depend on `--quick`.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use mesh_bench::args::{OnOff, positive, positive_f64};
use mesh_log::FsyncPolicy;

use crate::INTERVAL;

/// Append throughput and recovery time of mesh-log. Prints a markdown
/// report on stdout and progress on stderr.
#[derive(Parser, Debug)]
#[command(name = "log-bench", args_override_self = true)]
struct Cli {
    /// Smoke run (about 2 s): smaller defaults for every limit below.
    #[arg(long)]
    quick: bool,
    /// Where the fresh run directories are made [default: the temp dir].
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,
    /// Time limit of one throughput run, in seconds [default: 5; --quick: 0.4].
    #[arg(long, value_name = "N", value_parser = positive_f64)]
    seconds: Option<f64>,
    /// Record limit of one throughput run [default: 2000000; --quick: 20000].
    #[arg(long, value_name = "N", value_parser = positive::<u64>)]
    records: Option<u64>,
    /// Interleaved rounds of all throughput scenarios [default: 3; --quick: 1].
    #[arg(long, value_name = "N", value_parser = positive::<usize>)]
    rounds: Option<usize>,
    /// Appender counts of the throughput scenarios, comma-separated.
    #[arg(
        long,
        value_name = "N,N,...",
        value_delimiter = ',',
        default_value = "1,16,256",
        value_parser = positive::<usize>
    )]
    appenders: Vec<usize>,
    /// fsync policies of the throughput scenarios (interval = 100 ms).
    #[arg(long, value_enum, default_value_t = FsyncChoice::Both)]
    fsync: FsyncChoice,
    /// Size of the large recovery log, in MiB [default: 1024; --quick: 128].
    #[arg(long, value_name = "N", value_parser = positive::<u64>)]
    recovery_mib: Option<u64>,
    /// Size of the small recovery log, in MiB [default: 64; --quick: 16].
    #[arg(long, value_name = "N", value_parser = positive::<u64>)]
    small_mib: Option<u64>,
    /// Encryption at rest in the throughput scenarios: off, on (a key file
    /// with one AES-256-GCM-SIV key), or both, each scenario run plain
    /// and then encrypted back to back in every round, for a side-by-side.
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    encryption: OnOff,
    /// Skip the append throughput scenarios.
    #[arg(long)]
    no_throughput: bool,
    /// Skip the recovery scenarios.
    #[arg(long)]
    no_recovery: bool,
}

/// The values of `--fsync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FsyncChoice {
    Always,
    Interval,
    Both,
}

/// What one invocation runs, every default resolved.
#[derive(Clone, Debug)]
pub struct Args {
    /// Printed in the report's first line, and shortens the recovery fill limit.
    pub quick: bool,
    /// Base directory of the run directories.
    pub dir: PathBuf,
    /// Time limit of one throughput run.
    pub seconds: f64,
    /// Record limit of one throughput run.
    pub records: u64,
    /// How many times every throughput scenario runs, interleaved.
    pub rounds: usize,
    /// Appender counts of the throughput scenarios.
    pub appenders: Vec<usize>,
    /// fsync policies of the throughput scenarios.
    pub fsync: Vec<FsyncPolicy>,
    /// Whether each throughput scenario runs plain (`false`), encrypted
    /// (`true`), or both, in this order.
    pub encryption: Vec<bool>,
    /// Length of the raw disk probe at the start of each round.
    pub probe_seconds: f64,
    /// Size of the large recovery log.
    pub recovery_mib: u64,
    /// Size of the small recovery log.
    pub small_mib: u64,
    /// Whether the throughput scenarios run.
    pub throughput: bool,
    /// Whether the recovery scenarios run.
    pub recovery: bool,
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
}

impl Cli {
    fn resolve(self) -> Args {
        let q = self.quick;
        let pick = |quick, full| if q { quick } else { full };
        Args {
            quick: q,
            dir: self.dir.unwrap_or_else(std::env::temp_dir),
            seconds: self.seconds.unwrap_or(pick(0.4, 5.0)),
            records: self.records.unwrap_or(if q { 20_000 } else { 2_000_000 }),
            rounds: self.rounds.unwrap_or(if q { 1 } else { 3 }),
            appenders: self.appenders,
            fsync: match self.fsync {
                FsyncChoice::Always => vec![FsyncPolicy::Always],
                FsyncChoice::Interval => vec![INTERVAL],
                FsyncChoice::Both => vec![FsyncPolicy::Always, INTERVAL],
            },
            encryption: self.encryption.values(),
            probe_seconds: pick(0.2, 1.0),
            recovery_mib: self.recovery_mib.unwrap_or(if q { 128 } else { 1024 }),
            small_mib: self.small_mib.unwrap_or(if q { 16 } else { 64 }),
            throughput: !self.no_throughput,
            recovery: !self.no_recovery,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::try_parse_from(std::iter::once("log-bench").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_depend_on_quick_wherever_it_is() {
        let full = parse(&[]).unwrap();
        assert_eq!(
            (full.seconds, full.records, full.rounds),
            (5.0, 2_000_000, 3)
        );
        assert_eq!((full.recovery_mib, full.small_mib), (1024, 64));
        assert_eq!(full.appenders, [1, 16, 256]);
        assert_eq!(full.fsync, [FsyncPolicy::Always, INTERVAL]);
        assert_eq!(full.encryption, [false]);
        assert!(full.throughput && full.recovery && !full.quick);
        assert_eq!(full.dir, std::env::temp_dir());

        let quick = parse(&["--rounds", "2", "--quick"]).unwrap();
        assert_eq!(
            (quick.seconds, quick.records, quick.rounds),
            (0.4, 20_000, 2)
        );
        assert_eq!((quick.recovery_mib, quick.small_mib), (128, 16));
        assert!(quick.quick);
    }

    #[test]
    fn every_documented_flag_parses() {
        let a = parse(&[
            "--dir",
            "/x",
            "--seconds",
            "1.5",
            "--records",
            "7",
            "--rounds",
            "4",
            "--appenders",
            "2,8",
            "--fsync",
            "interval",
            "--recovery-mib",
            "9",
            "--small-mib",
            "3",
            "--no-throughput",
            "--no-recovery",
        ])
        .unwrap();
        assert_eq!(a.dir, PathBuf::from("/x"));
        assert_eq!((a.seconds, a.records, a.rounds), (1.5, 7, 4));
        assert_eq!(a.appenders, [2, 8]);
        assert_eq!(a.fsync, [INTERVAL]);
        assert_eq!((a.recovery_mib, a.small_mib), (9, 3));
        assert!(!a.throughput && !a.recovery);
        assert_eq!(
            parse(&["--fsync", "always"]).unwrap().fsync,
            [FsyncPolicy::Always]
        );
        assert_eq!(parse(&["--fsync", "both"]).unwrap().fsync.len(), 2);
        assert_eq!(parse(&["--encryption", "on"]).unwrap().encryption, [true]);
        assert_eq!(
            parse(&["--encryption", "both"]).unwrap().encryption,
            [false, true]
        );
    }

    /// As with the old hand-written parser: a repeated flag is no error,
    /// the last value counts.
    #[test]
    fn the_last_of_a_repeated_flag_counts() {
        let a = parse(&["--quick", "--records", "5", "--quick", "--records", "6"]).unwrap();
        assert!(a.quick);
        assert_eq!(a.records, 6);
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, flag) in [
            (&["--seconds", "0"][..], "--seconds"),
            (&["--seconds", "x"], "--seconds"),
            (&["--records", "0"], "--records"),
            (&["--rounds", "0"], "--rounds"),
            (&["--appenders", "1,0"], "--appenders"),
            (&["--recovery-mib", "0"], "--recovery-mib"),
            (&["--small-mib", "0"], "--small-mib"),
            (&["--fsync", "never"], "--fsync"),
            (&["--dir"], "--dir"),
            (&["--bogus"], "--bogus"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(flag), "{args:?}: {e}");
        }
    }
}
