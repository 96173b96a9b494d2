//! What every gRPC server of the mesh serves besides its own API:
//! grpc.health.v1 and server reflection, v1 and v1alpha (grpcurl 1.8 asks
//! for v1alpha), so that grpcurl needs no local .proto files; and the
//! client side of the health check, for container healthchecks in scratch
//! images, which have no shell.

use std::time::Duration;

use tonic::service::Routes;
use tonic_health::server::HealthReporter;

use crate::RuntimeError;

/// `routes` plus health and reflection of every mesh proto. The health
/// reporter starts with the whole server (`""`) SERVING; callers mark it
/// (or their own service) NOT_SERVING when they start draining.
pub fn with_health_and_reflection(
    routes: Routes,
) -> Result<(Routes, HealthReporter), RuntimeError> {
    let (health, health_svc) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(mesh_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection().build_v1()?;
    let v1alpha = reflection().build_v1alpha()?;
    let routes = routes
        .add_service(health_svc)
        .add_service(v1)
        .add_service(v1alpha);
    Ok((routes, health))
}

/// Whether the gRPC server at `addr` (`host:port` or a URL) answers
/// SERVING for the whole server within 3 seconds.
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
        tokio::time::timeout(Duration::from_secs(3), check).await,
        Ok(Some(true))
    )
}
