//! Service D, `analytics`: can start at any time. It replays the `orders`,
//! `payments` and `shipments` topics from the earliest offset and keeps
//! order counts and revenue per customer and in total, plus its lag. Its
//! state lives in memory and is rebuilt from the log on every start; it
//! reads without a consumer group, so it never disturbs other consumers.
//!
//! - [`stats`]: the figures, counted once per order even if an event is
//!   seen twice.
//! - [`api`]: the gRPC API (GetStats).

pub mod api;
pub mod stats;

use std::sync::{Arc, Mutex};

use mesh_proto::analytics::v1::analytics_server::AnalyticsServer;
use mesh_sdk::{CancellationToken, SdkError, config::ServiceConfig, tail};
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
    let mut readers = Vec::new();
    for topic in TOPICS {
        let (s, broker, stop) = (stats.clone(), broker.clone(), shutdown.clone());
        readers.push(tokio::spawn(async move {
            tail::tail(&broker, topic, 0, &stop, |e| {
                let span = match &e {
                    tail::TailEvent::Event(d) => mesh_sdk::events::process_span(d, ""),
                    tail::TailEvent::CaughtUp { .. } => tracing::Span::none(),
                };
                let _in = span.enter();
                s.lock().expect("stats lock").apply(topic, e);
                true
            })
            .await
        }));
    }
    let api = api::AnalyticsApi {
        stats,
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
