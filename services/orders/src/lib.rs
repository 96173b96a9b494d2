//! Service A, `orders`: takes orders over gRPC and publishes OrderPlaced; it
//! never calls another service. It follows the `payments` and `shipments`
//! topics (as consumer group `orders`) to move each order along PLACED →
//! PAID → SHIPPED, or to CANCELLED, publishing OrderStatusChanged.
//!
//! The order book is built from the `orders` topic (every order and status
//! change is an event there) and follows it for as long as the service
//! runs ([`mesh_sdk::View`]); neither the API nor the handlers write it
//! themselves. So every replica answers GetOrder alike, and nothing else
//! needs to be stored. Orders serves its API once the book has caught up.
//!
//! - [`book`]: the in-memory order book.
//! - [`validate`]: PlaceOrder input checks.
//! - [`api`]: the gRPC API.
//! - [`follow`]: handlers for payment and shipment events.

pub mod api;
pub mod book;
pub mod follow;
pub mod validate;

use std::sync::{Arc, Mutex};

use mesh_proto::{
    DomainEvent,
    orders::v1::{OrderPlaced, OrderStatusChanged, orders_server::OrdersServer},
};
use mesh_sdk::{CancellationToken, Consumer, Producer, SdkError, View, config::ServiceConfig};
use tokio::net::TcpListener;

/// Settings: the SDK's `BasicConfig` from `orders.toml` and `ORDERS__*`
/// environment overrides (`listen`, `broker`, `log_format`,
/// `metrics_listen`, `tls.*`, `token_file`), with this service's default ports.
pub use mesh_sdk::BasicConfig as Config;

pub const DEFAULTS: &[(&str, &str)] = &[
    ("listen", "127.0.0.1:50052"),
    ("metrics_listen", "127.0.0.1:9091"),
];

pub const SOURCE: &str = "/services/orders";
pub const GROUP: &str = "orders";

pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), SdkError> {
    let broker = cfg.broker()?;
    mesh_sdk::ensure_topics(&broker, &["orders", "payments", "shipments"], &shutdown).await?;
    let book = Arc::new(Mutex::new(book::Book::default()));
    let (orders, book_task) = View::follow(
        &broker,
        OrderPlaced::TOPIC,
        book.clone(),
        |book, d| {
            if let Ok(e) = d.decode::<OrderPlaced>() {
                if let Some(o) = e.order {
                    book.placed(o);
                }
            } else if let Ok(e) = d.decode::<OrderStatusChanged>() {
                book.advance(&e.order_id, e.status(), &e.reason);
            }
        },
        &shutdown,
    );
    // Serve nothing before the book holds every order placed so far.
    if !orders.caught_up().await {
        return Ok(());
    }
    tracing::info!(
        events = orders.position(),
        "order book caught up with the orders topic"
    );

    let producer = Producer::new(&broker, SOURCE)?;
    let mut consumers = Vec::new();
    for topic in [
        mesh_proto::billing::v1::PaymentAuthorized::TOPIC,
        mesh_proto::shipping::v1::ShipmentScheduled::TOPIC,
    ] {
        let f = follow::Follower {
            book: book.clone(),
            orders: orders.clone(),
            producer: producer.clone(),
        };
        let c = Consumer::new(&broker, topic, GROUP)?.name(SOURCE);
        consumers.push(tokio::spawn(
            c.run(move |d| f.clone().handle(d), shutdown.clone()),
        ));
    }

    consumers.push(book_task);
    let api = api::OrdersApi {
        book,
        orders,
        producer,
    };
    mesh_sdk::server::serve_until(
        tonic::service::Routes::new(OrdersServer::new(api)),
        listener,
        &cfg.tls,
        shutdown,
        consumers,
    )
    .await
}
