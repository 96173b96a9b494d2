//! Service C, `shipping`: consumes PaymentAuthorized as consumer group
//! `shipping` and publishes ShipmentScheduled to `shipments`. It never calls
//! another service.
//!
//! Shipments are rebuilt from the `shipments` topic at start, so a
//! redelivered payment finds its shipment and none is scheduled twice.
//!
//! - [`handler`]: the PaymentAuthorized handler and the shipment register.
//! - [`api`]: the gRPC API (GetShipment).

pub mod api;
pub mod handler;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use mesh_proto::{
    DomainEvent,
    billing::v1::PaymentAuthorized,
    shipping::v1::{ShipmentScheduled, shipping_server::ShippingServer},
};
use mesh_sdk::{CancellationToken, Consumer, Producer, SdkError, config::ServiceConfig, tail};
use tokio::net::TcpListener;

/// Settings: the SDK's `BasicConfig` from `shipping.toml` and `SHIPPING__*`
/// environment overrides (`listen`, `broker`, `log_format`,
/// `metrics_listen`, `tls.*`, `token_file`), with this service's default ports.
pub use mesh_sdk::BasicConfig as Config;

pub const DEFAULTS: &[(&str, &str)] = &[
    ("listen", "127.0.0.1:50054"),
    ("metrics_listen", "127.0.0.1:9093"),
];

pub const SOURCE: &str = "/services/shipping";
pub const GROUP: &str = "shipping";

/// Shipments by order id.
pub type Register = Arc<Mutex<BTreeMap<String, mesh_proto::shipping::v1::Shipment>>>;

pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), SdkError> {
    let broker = cfg.broker()?;
    mesh_sdk::ensure_topics(&broker, &["payments", "shipments"], &shutdown).await?;
    let register: Register = Arc::default();
    let r = register.clone();
    tail::replay(&broker, ShipmentScheduled::TOPIC, &shutdown, move |d| {
        if let Ok(ShipmentScheduled { shipment: Some(s) }) = d.decode::<ShipmentScheduled>() {
            r.lock()
                .expect("register lock")
                .entry(s.order_id.clone())
                .or_insert(s);
        }
    })
    .await?;
    tracing::info!(
        shipments = register.lock().expect("register lock").len(),
        "shipments rebuilt from the shipments topic"
    );

    let h = handler::Shipping {
        register: register.clone(),
        producer: Producer::new(&broker, SOURCE)?,
    };
    let consumer = Consumer::new(&broker, PaymentAuthorized::TOPIC, GROUP)?.name(SOURCE);
    let consumer = tokio::spawn(consumer.run(move |d| h.clone().handle(d), shutdown.clone()));

    let api = api::ShippingApi { register };
    mesh_sdk::server::serve_until(
        tonic::service::Routes::new(ShippingServer::new(api)),
        listener,
        &cfg.tls,
        shutdown,
        vec![consumer],
    )
    .await
}
