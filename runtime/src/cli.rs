//! The command line of the broker and of every service binary:
//!
//! ```text
//! <bin> [--config FILE]         run, with settings from FILE
//! <bin> healthcheck [ADDR]      exit 0 if the gRPC server at ADDR is SERVING
//!                               (over TLS when the settings configure it)
//! ```
//!
//! `healthcheck` is for container healthchecks (exec form, scratch images
//! have no shell). A malformed command line exits with status 2.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Settings file (TOML); without it the binary's default file is read
    /// if it exists. Environment variables override either.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A subcommand instead of running.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Asks a running instance's grpc.health.v1 service; exits 0 if it is
    /// SERVING, 1 otherwise.
    Healthcheck {
        /// `host:port` or a URL of the instance.
        #[arg(default_value = "127.0.0.1:50051")]
        addr: String,
    },
}

/// Runs the `healthcheck` subcommand with the instance's own `[tls]`
/// settings (from the same `--config` and environment): the exit status,
/// with a line on stderr (prefixed with `who`) when the instance is not
/// healthy.
pub fn healthcheck(
    rt: &tokio::runtime::Runtime,
    who: &str,
    addr: &str,
    tls: &crate::tls::TlsConfig,
) -> ExitCode {
    if rt.block_on(crate::grpc::healthcheck(addr, tls)) {
        ExitCode::SUCCESS
    } else {
        eprintln!("{who}: not healthy: {addr}");
        ExitCode::FAILURE
    }
}

/// The multi-threaded Tokio runtime every binary runs on; a message on
/// stderr if it cannot start.
pub fn tokio_runtime(who: &str) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("{who}: cannot start the runtime: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_lines_of_today_parse() {
        let c = Cli::try_parse_from(["broker"]).unwrap();
        assert!(c.config.is_none() && c.command.is_none());
        let c = Cli::try_parse_from(["broker", "--config", "b.toml"]).unwrap();
        assert_eq!(c.config, Some(PathBuf::from("b.toml")));
        let c = Cli::try_parse_from(["billing", "healthcheck", "127.0.0.1:50053"]).unwrap();
        assert!(
            matches!(c.command, Some(Command::Healthcheck { addr }) if addr == "127.0.0.1:50053")
        );
        let c = Cli::try_parse_from(["broker", "healthcheck"]).unwrap();
        assert!(
            matches!(c.command, Some(Command::Healthcheck { addr }) if addr == "127.0.0.1:50051")
        );
        assert!(Cli::try_parse_from(["broker", "--config"]).is_err());
        assert!(Cli::try_parse_from(["broker", "extra"]).is_err());
    }
}
