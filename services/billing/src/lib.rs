//! Service B, `billing`: consumes OrderPlaced as consumer group `billing`,
//! decides payment with a deterministic rule (totals above
//! `decline_over_minor` are declined) and publishes PaymentAuthorized or
//! PaymentDeclined to `payments`. It never calls another service.
//!
//! The ledger (invoices by order) is built from the `payments` topic and
//! follows it for as long as billing runs ([`mesh_sdk::View`]), so every
//! replica holds every replica's invoices, and only what is in the log:
//! the handler never writes the ledger itself. The first payment event of
//! an order is its invoice; a later one is a duplicate. Billing serves its
//! API once the ledger has caught up with the topic.
//!
//! An order is billed once whichever replica its OrderPlaced reaches, and
//! however late a redelivery comes: the handler catches the ledger up to
//! the head of `payments` before it decides ([`handler`]).
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
use mesh_sdk::{CancellationToken, Consumer, Producer, SdkError, View, config::ServiceConfig};
use tokio::net::TcpListener;

pub use config::Config;

pub const SOURCE: &str = "/services/billing";
pub const GROUP: &str = "billing";

/// How long a payment publish may take before the handler gives up (and
/// its OrderPlaced comes back). Well inside the broker's dedupe window
/// (2 min by default): see [`handler`] for why that matters.
pub const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), SdkError> {
    let broker = cfg.broker()?;
    mesh_sdk::ensure_topics(&broker, &["orders", "payments"], &shutdown).await?;
    let ledger = Arc::new(Mutex::new(ledger::Ledger::default()));
    let (payments, ledger_task) = View::follow(
        &broker,
        PaymentAuthorized::TOPIC,
        ledger.clone(),
        |l, d| {
            let inv = d
                .decode::<PaymentAuthorized>()
                .map(|p| p.invoice)
                .or_else(|_| d.decode::<PaymentDeclined>().map(|p| p.invoice));
            if let Ok(Some(inv)) = inv {
                l.insert(inv);
            }
        },
        &shutdown,
    );
    // Serve nothing before the ledger holds what was billed so far.
    if !payments.caught_up().await {
        return Ok(());
    }
    tracing::info!(
        invoices = ledger.lock().expect("ledger lock").len(),
        "ledger caught up with the payments topic"
    );

    let h = handler::Billing {
        ledger: ledger.clone(),
        payments,
        producer: Producer::new(&broker, SOURCE)?.with_timeout(PUBLISH_TIMEOUT),
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
        vec![consumer, ledger_task],
    )
    .await
}
