//! The gRPC server every service runs: its own API plus grpc.health.v1 and
//! server reflection (`mesh_runtime::grpc`), over TLS when the service's
//! `[tls]` section has a certificate (mutual TLS with the mesh CA unless
//! `tls.client_auth` says otherwise), stopped gracefully when `shutdown`
//! resolves.

use std::future::Future;

use mesh_runtime::tls::TlsConfig;
use tokio::net::TcpListener;
use tonic::{service::Routes, transport::Server};

use crate::error::SdkError;

/// The part of `tls` this service's own server uses: all of it when it
/// has a certificate, nothing (plaintext) otherwise. A service with only
/// `tls.ca` (a token client of a TLS broker) still serves plaintext.
pub fn own_tls(tls: &TlsConfig) -> TlsConfig {
    if tls.cert.is_some() {
        tls.clone()
    } else {
        TlsConfig::default()
    }
}

/// Serves `routes` (plus health and reflection) on `listener` until
/// `shutdown` resolves; over TLS when `tls.cert` is set.
pub async fn serve(
    routes: Routes,
    listener: TcpListener,
    tls: &TlsConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SdkError> {
    let tls = own_tls(tls).server("tls.", mesh_runtime::tls::ClientAuth::Required)?;
    let (routes, health) = mesh_runtime::grpc::with_health_and_reflection(routes, true)?;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let signal = async move {
        shutdown.await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    };
    // tonic's own `tcp_nodelay` does not reach a listener passed in; without
    // it small responses wait for the client's delayed ACK (40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        tracing::info!("serving gRPC over TLS");
        builder = builder.tls_config(tls)?;
    }
    builder
        // One span per call, continuing the caller's trace.
        .trace_fn(mesh_telemetry::grpc_span)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, signal)
        .await?;
    Ok(())
}

/// Serves `routes` until `shutdown` is cancelled (or the server fails),
/// then cancels `shutdown` for everyone else and waits for `workers`
/// (consumers, readers) to finish their drain: the tail of every service's
/// `run`. A worker that panicked fails the service ([`SdkError::Task`])
/// unless the server failed first.
pub async fn serve_until<T>(
    routes: Routes,
    listener: TcpListener,
    tls: &TlsConfig,
    shutdown: tokio_util::sync::CancellationToken,
    workers: Vec<tokio::task::JoinHandle<T>>,
) -> Result<(), SdkError> {
    let stop = shutdown.clone();
    let served = serve(routes, listener, tls, async move { stop.cancelled().await }).await;
    shutdown.cancel();
    let mut failed = None;
    for w in workers {
        if let Err(e) = w.await {
            tracing::error!(error = %e, "a background task of the service failed");
            failed.get_or_insert(e);
        }
    }
    served?;
    failed.map_or(Ok(()), |e| Err(SdkError::Task(e)))
}
