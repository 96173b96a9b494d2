//! The whole `main` of a service: `healthcheck` subcommand, config, logging
//! and tracing,
//! listening socket, SIGTERM/SIGINT, then the service's `run`.

use std::{future::Future, process::ExitCode};

use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{SdkError, config::Validate};

/// What the bootstrap needs from a service's config.
pub trait ServiceConfig: DeserializeOwned + Validate {
    fn listen(&self) -> &str;
    fn log_format(&self) -> &str;
    /// Where to serve Prometheus metrics; empty disables them.
    fn metrics_listen(&self) -> &str;
}

/// Runs a service binary. `prefix` names its environment overrides
/// (`PREFIX__KEY`), `default_file` is read when no `--config` is given.
/// `<bin> healthcheck [ADDR]` probes a running instance instead.
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
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("healthcheck") {
        let addr = args
            .get(1)
            .cloned()
            .unwrap_or_else(|| "127.0.0.1:50051".into());
        return if rt.block_on(crate::server::healthcheck(&addr)) {
            ExitCode::SUCCESS
        } else {
            eprintln!("not healthy: {addr}");
            ExitCode::FAILURE
        };
    }
    let cfg: C = match crate::config::config_path_from_args()
        .and_then(|p| crate::config::load_with(prefix, p.as_deref(), default_file, defaults))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // The OTLP exporter's channel lives on this runtime, so build it inside.
    let telemetry = {
        let _rt = rt.enter();
        mesh_telemetry::init(&prefix.to_lowercase(), cfg.log_format())
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
        if let Ok(addr) = listener.local_addr() {
            // A line for scripts and tests that bind port 0.
            println!("listening on {addr}");
        }
        match run(cfg, listener, crate::shutdown_token()).await {
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
