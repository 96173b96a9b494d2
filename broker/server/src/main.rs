//! `broker [--config FILE]` runs the broker; `broker healthcheck [ADDR]`
//! asks a running broker's grpc.health.v1 service (for container
//! healthchecks, which have no shell in a scratch image). The command line
//! is `mesh_runtime::cli`, the same for every binary of the mesh.

use std::process::ExitCode;

use clap::Parser;
use mesh_broker::BrokerConfig;
use mesh_runtime::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let args = Cli::parse();
    let Some(rt) = cli::tokio_runtime("broker") else {
        return ExitCode::FAILURE;
    };
    if let Some(Command::Healthcheck { addr }) = &args.command {
        // With the broker's own TLS settings: over TLS when it serves TLS.
        let tls = BrokerConfig::load(args.config.as_deref())
            .map(|c| c.tls)
            .unwrap_or_default();
        return cli::healthcheck(&rt, "broker", addr, &tls);
    }
    let cfg = match BrokerConfig::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("broker: {e}");
            return ExitCode::from(2);
        }
    };
    // The OTLP exporter's channel lives on this runtime, so build it inside.
    let telemetry = {
        let _rt = rt.enter();
        mesh_telemetry::init("broker", cfg.log_format.as_str())
    };
    let code = rt.block_on(async {
        let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "broker: cannot listen on {} (key `listen`): {e}",
                    cfg.listen
                );
                return ExitCode::FAILURE;
            }
        };
        // Before the line below: a SIGTERM right after it must drain the
        // broker, not kill it.
        let shutdown = mesh_runtime::shutdown_signal();
        if let Ok(addr) = listener.local_addr() {
            // A line for scripts and tests that bind port 0.
            println!("broker listening on {addr}");
        }
        match mesh_broker::run(cfg, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "broker failed");
                eprintln!("broker: {e}");
                ExitCode::FAILURE
            }
        }
    });
    // Flush spans still waiting for export (the runtime's workers are
    // still running, and the exporter needs them).
    telemetry.shutdown();
    code
}
