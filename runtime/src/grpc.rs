//! What every gRPC server of the mesh serves besides its own API:
//! grpc.health.v1 and server reflection, v1 and v1alpha (grpcurl 1.8 asks
//! for v1alpha), so that grpcurl needs no local .proto files; and the
//! client side of the health check, for container healthchecks in scratch
//! images, which have no shell.

use std::time::Duration;

use tonic::service::Routes;
use tonic_health::server::HealthReporter;

use crate::RuntimeError;

/// `routes` plus health and (when `reflection`) reflection of every mesh
/// proto. The health reporter starts with the whole server (`""`)
/// SERVING; callers mark it (or their own service) NOT_SERVING when they
/// start draining.
pub fn with_health_and_reflection(
    routes: Routes,
    reflection_on: bool,
) -> Result<(Routes, HealthReporter), RuntimeError> {
    let (health, health_svc) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(mesh_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let mut routes = routes.add_service(health_svc);
    if reflection_on {
        routes = routes
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?);
    }
    Ok((routes, health))
}

/// Whether the gRPC server at `addr` (`host:port` or a URL) answers
/// SERVING for the whole server within 3 seconds. With `tls` on, a bare
/// `host:port` is reached over https, presenting this process's own
/// certificate (a server that demands client certificates accepts it).
pub async fn healthcheck(addr: &str, tls: &crate::tls::TlsConfig) -> bool {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let url = if addr.contains("://") {
        addr.to_string()
    } else if tls.enabled() {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    };
    let check = async {
        let channel = match crate::tls::endpoint("healthcheck address", &url, tls) {
            Ok(ep) => ep.connect().await.ok()?,
            Err(e) => {
                eprintln!("{e}");
                return None;
            }
        };
        let r = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        Some(r.into_inner().status == ServingStatus::Serving as i32)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), check).await,
        Ok(Some(true))
    )
}
