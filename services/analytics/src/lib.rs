//! Service D, `analytics`: can start at any time. It follows the `orders`,
//! `payments` and `shipments` topics from the earliest offset
//! ([`mesh_sdk::View`]) and keeps order counts and revenue per customer and
//! in total, plus its lag. Its state lives in memory and is rebuilt from
//! the log on every start; it reads without a consumer group, so it never
//! disturbs other consumers, and any number of replicas answer alike once
//! caught up. It serves at once: GetStats says whether it has caught up.
//!
//! - [`stats`]: the figures, counted once per order even if an event is
//!   seen twice.
//! - [`api`]: the gRPC API (GetStats).

pub mod api;
pub mod stats;

use std::sync::{Arc, Mutex};

use mesh_proto::analytics::v1::analytics_server::AnalyticsServer;
use mesh_sdk::{CancellationToken, SdkError, View, config::ServiceConfig};
use tokio::net::TcpListener;

/// Settings: the SDK's `BasicConfig` from `analytics.toml` and `ANALYTICS__*`
/// environment overrides (`listen`, `broker`, `log_format`,
/// `metrics_listen`, `tls.*`, `token_file`), with this service's default ports.
pub use mesh_sdk::BasicConfig as Config;

pub const DEFAULTS: &[(&str, &str)] = &[
    ("listen", "127.0.0.1:50055"),
    ("metrics_listen", "127.0.0.1:9094"),
];

pub const TOPICS: [&str; 3] = ["orders", "payments", "shipments"];

pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), SdkError> {
    let broker = cfg.broker()?;
    mesh_sdk::ensure_topics(&broker, &TOPICS, &shutdown).await?;
    let stats = Arc::new(Mutex::new(stats::Stats::default()));
    let (mut views, mut readers) = (Vec::new(), Vec::new());
    for topic in TOPICS {
        let (view, task) =
            View::follow(&broker, topic, stats.clone(), |s, d| s.apply(d), &shutdown);
        views.push(view);
        readers.push(task);
    }
    let api = api::AnalyticsApi {
        stats,
        views,
        broker,
        started: std::time::Instant::now(),
    };
    mesh_sdk::server::serve_until(
        tonic::service::Routes::new(AnalyticsServer::new(api)),
        listener,
        &cfg.tls,
        shutdown,
        readers,
    )
    .await
}
