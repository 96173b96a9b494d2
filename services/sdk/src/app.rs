//! The whole `main` of a service: the command line (`mesh_runtime::cli`:
//! `[--config FILE]`, `healthcheck [ADDR]`), config, logging and tracing,
//! the metrics endpoint, the listening socket, SIGTERM/SIGINT, then the
//! service's `run`.

use std::{future::Future, process::ExitCode};

use clap::Parser;
use mesh_runtime::cli::{self, Cli, Command};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::SdkError;
use crate::config::ServiceConfig;

/// Runs a service binary. `prefix` names its environment overrides
/// (`PREFIX__KEY`), `default_file` is read when no `--config` is given.
/// `<bin> healthcheck [ADDR]` probes a running instance instead, with the
/// same config (`--config`, environment) for its `[tls]` settings.
pub fn main<C, F, Fut>(prefix: &str, default_file: &str, run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), SdkError>>,
{
    main_with(prefix, default_file, &[], run)
}

/// [`main`] with per-service config defaults, for services that share a
/// config type (see [`crate::config::load_with`]).
pub fn main_with<C, F, Fut>(
    prefix: &str,
    default_file: &str,
    defaults: &[(&str, &str)],
    run: F,
) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), SdkError>>,
{
    let args = Cli::parse();
    let who = prefix.to_lowercase();
    let Some(rt) = cli::tokio_runtime(&who) else {
        return ExitCode::FAILURE;
    };
    let cfg: C =
        match crate::config::load_service(prefix, args.config.as_deref(), default_file, defaults) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
    if let Some(Command::Healthcheck { addr }) = &args.command {
        // The probe speaks to this service's own server as it serves:
        // TLS (presenting the service's certificate, which mTLS accepts)
        // exactly when it has a certificate.
        let tls = crate::server::own_tls(cfg.tls());
        return cli::healthcheck(&rt, &who, addr, &tls);
    }
    // The OTLP exporter's channel lives on this runtime, so build it inside.
    let telemetry = {
        let _rt = rt.enter();
        mesh_telemetry::init(&who, cfg.log_format().as_str())
    };
    let code = rt.block_on(async move {
        let listener = match TcpListener::bind(cfg.listen()).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot listen on {} (key `listen`): {e}", cfg.listen());
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = crate::metrics::install(cfg.metrics_listen()) {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
        // Before the line below: a SIGTERM right after it must stop the
        // service gracefully, not kill it.
        let shutdown = crate::shutdown_token();
        if let Ok(addr) = listener.local_addr() {
            // A line for scripts and tests that bind port 0.
            println!("listening on {addr}");
        }
        match run(cfg, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "service failed");
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        }
    });
    // Flush spans still waiting for export.
    telemetry.shutdown();
    code
}
