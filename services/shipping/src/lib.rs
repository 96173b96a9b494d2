//! Service C, `shipping`: consumes PaymentAuthorized as consumer group
//! `shipping` and publishes ShipmentScheduled to `shipments`. It never calls
//! another service.
//!
//! Every replica follows the `shipments` topic (the register of shipments
//! by order, which GetShipment answers from) and the `payments` topic (the
//! first payment of each order, the one that counts) for as long as it
//! runs ([`mesh_sdk::View`]); the handler never writes either itself. So
//! every replica answers alike, and a payment redelivered to any replica
//! finds its shipment: none is scheduled twice. Shipping serves its API
//! once both have caught up with their topics.
//!
//! - [`handler`]: the PaymentAuthorized handler.
//! - [`payments`]: the first payment of each order.
//! - [`api`]: the gRPC API (GetShipment).

pub mod api;
pub mod handler;
pub mod payments;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use mesh_proto::{
    DomainEvent,
    billing::v1::PaymentAuthorized,
    shipping::v1::{ShipmentScheduled, shipping_server::ShippingServer},
};
use mesh_sdk::{CancellationToken, Consumer, Producer, SdkError, View, config::ServiceConfig};
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
    let (shipments_view, shipments_task) = View::follow(
        &broker,
        ShipmentScheduled::TOPIC,
        register.clone(),
        |r, d| {
            if let Ok(ShipmentScheduled { shipment: Some(s) }) = d.decode::<ShipmentScheduled>() {
                r.entry(s.order_id.clone()).or_insert(s);
            }
        },
        &shutdown,
    );
    let payments = Arc::new(Mutex::new(payments::Payments::default()));
    let (payments_view, payments_task) = View::follow(
        &broker,
        PaymentAuthorized::TOPIC,
        payments.clone(),
        |p, d| p.apply(d),
        &shutdown,
    );
    // Serve nothing before the register holds what was shipped so far.
    if !shipments_view.caught_up().await || !payments_view.caught_up().await {
        return Ok(());
    }
    tracing::info!(
        shipments = register.lock().expect("register lock").len(),
        "shipments caught up with the shipments topic"
    );

    let h = handler::Shipping {
        register: register.clone(),
        shipments_view,
        payments,
        payments_view,
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
        vec![consumer, shipments_task, payments_task],
    )
    .await
}
