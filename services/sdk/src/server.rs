//! The gRPC server every service runs: its own API plus grpc.health.v1 and
//! server reflection (v1 and v1alpha, since grpcurl 1.8 asks for v1alpha),
//! stopped gracefully when `shutdown` resolves.

use std::future::Future;

use tokio::net::TcpListener;
use tonic::{service::Routes, transport::Server};

use crate::error::SdkError;

pub async fn serve(
    routes: Routes,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SdkError> {
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(mesh_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| SdkError::Io(std::io::Error::other(e)))?;
    let v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| SdkError::Io(std::io::Error::other(e)))?;
    let routes = routes
        .add_service(health_svc)
        .add_service(v1)
        .add_service(v1alpha);
    let signal = async move {
        shutdown.await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    };
    // tonic's own `tcp_nodelay` does not reach a listener passed in; without
    // it small responses wait for the client's delayed ACK (40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        // One span per call, continuing the caller's trace.
        .trace_fn(mesh_telemetry::grpc_span)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, signal)
        .await?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// `<binary> healthcheck [ADDR]`: exits 0 if the gRPC server at ADDR
/// reports SERVING. For container healthchecks without a shell.
pub async fn healthcheck(addr: &str) -> bool {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .ok()?
            .connect()
            .await
            .ok()?;
        let r = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        Some(r.into_inner().status == ServingStatus::Serving as i32)
    };
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(3), check).await,
        Ok(Some(true))
    )
}

/// Serves `routes` until `shutdown` is cancelled (or the server fails),
/// then cancels `shutdown` for everyone else and waits for `workers`
/// (consumers, readers) to finish their drain: the tail of every service's
/// `run`.
pub async fn serve_until<T>(
    routes: Routes,
    listener: TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
    workers: Vec<tokio::task::JoinHandle<T>>,
) -> Result<(), SdkError> {
    let stop = shutdown.clone();
    let served = serve(routes, listener, async move { stop.cancelled().await }).await;
    shutdown.cancel();
    for w in workers {
        let _ = w.await;
    }
    served
}
