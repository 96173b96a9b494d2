//! Service B, `billing`: consumes OrderPlaced as consumer group `billing`,
//! decides payment with a deterministic rule (totals above
//! `decline_over_minor` are declined) and publishes PaymentAuthorized or
//! PaymentDeclined to `payments`. It never calls another service.
//!
//! Invoices are rebuilt from the `payments` topic at start, so an order is
//! never billed twice: a redelivered OrderPlaced finds its invoice, and a
//! crash between publishing and acking republishes the same event id,
//! which the broker drops.
//!
//! - [`config`] holds the settings.
//! - [`ledger`]: invoices by order.
//! - [`api`]: the gRPC API (GetInvoice, ListInvoices).
//! - [`handler`]: the OrderPlaced handler.

pub mod api;
pub mod config;
pub mod handler;
pub mod ledger;

use std::sync::{Arc, Mutex};

use mesh_proto::{
    DomainEvent,
    billing::v1::{PaymentAuthorized, PaymentDeclined, billing_server::BillingServer},
    orders::v1::OrderPlaced,
};
use mesh_sdk::{CancellationToken, Consumer, Producer, SdkError, config::ServiceConfig, tail};
use tokio::net::TcpListener;

pub use config::Config;

pub const SOURCE: &str = "/services/billing";
pub const GROUP: &str = "billing";

pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), SdkError> {
    let broker = cfg.broker()?;
    mesh_sdk::ensure_topics(&broker, &["orders", "payments"], &shutdown).await?;
    let ledger = Arc::new(Mutex::new(ledger::Ledger::default()));
    let l = ledger.clone();
    tail::replay(&broker, PaymentAuthorized::TOPIC, &shutdown, move |d| {
        let inv = d
            .decode::<PaymentAuthorized>()
            .map(|p| p.invoice)
            .or_else(|_| d.decode::<PaymentDeclined>().map(|p| p.invoice));
        if let Ok(Some(inv)) = inv {
            l.lock().expect("ledger lock").insert(inv);
        }
    })
    .await?;
    tracing::info!(
        invoices = ledger.lock().expect("ledger lock").len(),
        "ledger rebuilt from the payments topic"
    );

    let h = handler::Billing {
        ledger: ledger.clone(),
        producer: Producer::new(&broker, SOURCE)?,
        decline_over_minor: cfg.decline_over_minor,
    };
    let consumer = Consumer::new(&broker, OrderPlaced::TOPIC, GROUP)?.name(SOURCE);
    let consumer = tokio::spawn(consumer.run(move |d| h.clone().handle(d), shutdown.clone()));

    let api = api::BillingApi { ledger };
    mesh_sdk::server::serve_until(
        tonic::service::Routes::new(BillingServer::new(api)),
        listener,
        &cfg.tls,
        shutdown,
        vec![consumer],
    )
    .await
}
