//! Starting and stopping the broker: read the TLS and access settings,
//! open storage, serve gRPC (with health and reflection, from
//! `mesh_runtime::grpc`), enforce retention, and drain on shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use mesh_log::{LocalStorage, LogError, Storage};
use mesh_proto::broker::v1::broker_server::BrokerServer;
use tokio::{net::TcpListener, sync::watch};
use tonic::{
    service::Routes,
    transport::{Server, server::TcpIncoming},
};

use crate::{
    auth::{Auth, AuthMode},
    cluster::Cluster,
    config::{Backend, BrokerConfig},
    error::Result,
    service::GrpcService,
    state::Shared,
};

/// The configured backend, opened: the embedded log in `data_dir`, or the
/// JetStream cluster with this broker's place among the others (its
/// group leases and its URL for them, `addr` being where it listens).
async fn open_storage(
    cfg: &BrokerConfig,
    addr: std::net::SocketAddr,
) -> Result<(Arc<dyn Storage>, Option<Cluster>)> {
    Ok(match cfg.storage.backend {
        Backend::Log => {
            let (dir, log_cfg) = (cfg.data_dir.clone(), cfg.log_config());
            let storage =
                tokio::task::spawn_blocking(move || LocalStorage::open(&dir, log_cfg)).await??;
            (Arc::new(storage), None)
        }
        Backend::Jetstream => {
            let js =
                Arc::new(mesh_jetstream::JetStreamStorage::open(cfg.jetstream_options()).await?);
            let leases = js.leases(cfg.jetstream.lease_ttl).await?;
            let url = crate::cluster::advertise_url(cfg, addr).await?;
            let peer_tls = cfg.tls.client("tls.", &cfg.jetstream.peer_tls_name)?;
            let me = mesh_jetstream::lease::Holder {
                id: crate::cluster::process_id(),
                url,
            };
            tracing::info!(url = %me.url, id = %me.id, "brokers forward group members here");
            let storage: Arc<dyn Storage> = js.clone();
            (storage, Some(Cluster::new(js, leases, me, peer_tls)))
        }
    })
}

/// Runs the broker on `listener` until `shutdown` resolves, then drains:
/// stops taking work, answers and syncs the appends in flight, ends
/// subscriber streams with UNAVAILABLE (clients reconnect), commits group
/// positions and closes the log, all within `drain_deadline`.
pub async fn run(
    cfg: BrokerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    cfg.validate()?;
    // Certificates and the ACL are read before anything opens, so a bad
    // file stops the start with its key named.
    let auth = Auth::from_config(&cfg)?;
    let tls = cfg
        .tls
        .server("tls.", crate::config::BROKER_CLIENT_AUTH)?
        .map(|t| t.timeout(cfg.limits.tls_handshake_timeout));
    // Before the storage opens, so its fsyncs are measured from the start.
    crate::metrics::install(cfg.metrics_listen, auth.mode() == AuthMode::None)?;
    let cfg = Arc::new(cfg);
    let (storage, cluster) = open_storage(&cfg, listener.local_addr()?).await?;
    for t in &cfg.topics {
        match storage
            .create_topic(&t.name, cfg.topic_spec_config(t))
            .await
        {
            Ok(_) => tracing::info!(topic = %t.name, "created configured topic"),
            Err(LogError::TopicExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let broker = Arc::new(Shared::new(
        storage.clone(),
        cfg.clone(),
        auth,
        stop_rx.clone(),
        cluster,
    ));
    let retention = tokio::spawn(crate::upkeep::retention_loop(
        storage.clone(),
        cfg.clone(),
        stop_rx.clone(),
    ));
    let metrics_refresh = cfg
        .metrics_listen
        .is_some()
        .then(|| tokio::spawn(crate::upkeep::refresh_loop(broker.clone(), stop_rx.clone())));

    let max_msg = cfg.limits.max_message_bytes;
    let svc = BrokerServer::new(GrpcService {
        broker: broker.clone(),
    })
    .max_decoding_message_size(max_msg)
    .max_encoding_message_size(max_msg);
    let svc = crate::limits::NamedMessageLimit::new(svc, max_msg);
    let (routes, health) =
        mesh_runtime::grpc::with_health_and_reflection(Routes::new(svc), cfg.reflection)?;
    health.set_serving::<BrokerServer<GrpcService>>().await;

    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %cfg.data_dir.display(), tls = tls.is_some(), "broker listening");
    let health_on_stop = health.clone();
    let sessions = broker.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutdown requested; draining");
        health_on_stop
            .set_not_serving::<BrokerServer<GrpcService>>()
            .await;
        let _ = stop_tx.send(true);
        // Let every session send its final UNAVAILABLE before the server
        // starts closing connections; otherwise a client can lose that
        // status to a connection reset and see a bare transport error.
        let settle = tokio::time::Instant::now() + Duration::from_secs(1);
        while !sessions.idle() && tokio::time::Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Then a moment for clients to read it and stop sending: closing a
        // socket with unread input makes the kernel send a reset, which
        // discards whatever the client had not read yet.
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let heartbeat = cfg.delivery.heartbeat_interval;
    // `Server::tcp_nodelay` only applies to listeners tonic binds itself,
    // so set it on the incoming stream: without it, Nagle's algorithm holds
    // back small Publish responses behind the client's delayed ACK (40 ms).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let limits = &cfg.limits;
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let server = builder
        // One span per call, continuing the caller's trace.
        .trace_fn(mesh_telemetry::grpc_span)
        // Detects half-open connections below the gRPC streams as well.
        .http2_keepalive_interval(Some(heartbeat))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .max_concurrent_streams(Some(limits.max_concurrent_requests_per_connection))
        .http2_max_header_list_size(Some(limits.max_header_bytes))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, signal);

    let drain = cfg.drain_deadline;
    let mut stopped = stop_rx.clone();
    let deadline = async move {
        let _ = stopped.wait_for(|s| *s).await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        r = server => r?,
        _ = deadline => tracing::warn!(deadline_ms = drain.as_millis() as u64, "drain deadline passed; closing the remaining connections"),
    }
    retention.abort();
    if let Some(m) = metrics_refresh {
        m.abort();
    }
    let groups = broker.groups.take(None);
    let flush = async {
        for g in groups {
            g.stop().await;
        }
        if let Some(c) = &broker.cluster {
            c.release_all().await;
        }
        storage.close().await;
    };
    if tokio::time::timeout(drain, flush).await.is_err() {
        tracing::warn!("closing storage took longer than the drain deadline");
    }
    tracing::info!("broker stopped");
    Ok(())
}
