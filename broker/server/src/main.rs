//! `broker [--config FILE]` runs the broker; `broker healthcheck [ADDR]`
//! asks a running broker's grpc.health.v1 service (for container
//! healthchecks, which have no shell in a scratch image).

use std::{path::PathBuf, process::ExitCode};

use broker::BrokerConfig;

fn usage() -> ExitCode {
    eprintln!(
        "usage: broker [--config FILE]\n       broker healthcheck [ADDR]   (default 127.0.0.1:50051)"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.first().map(String::as_str) {
        Some("healthcheck") => {
            let addr = args
                .get(1)
                .cloned()
                .unwrap_or_else(|| "127.0.0.1:50051".into());
            return rt.block_on(healthcheck(addr));
        }
        Some("--config") if args.len() == 2 => {}
        None => {}
        _ => return usage(),
    }
    let path = args.get(1).map(PathBuf::from);
    let cfg = match BrokerConfig::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("broker: {e}");
            return ExitCode::from(2);
        }
    };
    // The OTLP exporter's channel lives on this runtime, so build it inside.
    let telemetry = {
        let _rt = rt.enter();
        mesh_telemetry::init("broker", &cfg.log_format)
    };
    let code = rt.block_on(async {
        let listener = match tokio::net::TcpListener::bind(&cfg.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "broker: cannot listen on {} (key `listen`): {e}",
                    cfg.listen
                );
                return ExitCode::FAILURE;
            }
        };
        if let Ok(addr) = listener.local_addr() {
            // A line for scripts and tests that bind port 0.
            println!("broker listening on {addr}");
        }
        match broker::run(cfg, listener, broker::shutdown_signal()).await {
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

async fn healthcheck(addr: String) -> ExitCode {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let url = if addr.contains("://") {
        addr
    } else {
        format!("http://{addr}")
    };
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .ok()?
            .connect()
            .await
            .ok()?;
        let mut client = HealthClient::new(channel);
        let r = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        Some(r.into_inner().status == ServingStatus::Serving as i32)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), check).await {
        Ok(Some(true)) => ExitCode::SUCCESS,
        _ => {
            eprintln!("broker: not healthy");
            ExitCode::FAILURE
        }
    }
}
