//! The `mesh.orders.v1.Orders` gRPC API.

use std::sync::{Arc, Mutex};

use mesh_proto::orders::v1::{
    GetOrderRequest, ListOrdersRequest, ListOrdersResponse, Order, OrderPlaced, OrderStatus,
    PlaceOrderRequest, orders_server::Orders,
};
use mesh_sdk::{Producer, View};
use tonic::{Request, Response, Status};

use crate::{book::Book, validate};

pub struct OrdersApi {
    /// Written only by `orders`, which follows the topic.
    pub book: Arc<Mutex<Book>>,
    pub orders: View,
    pub producer: Producer,
}

/// The same customer and idempotency key always give the same order id, so
/// a retried PlaceOrder finds its order (on any replica: the book is synced
/// to the head of `orders` first), and a retry racing the first call
/// publishes an event the broker de-duplicates.
pub fn order_id(customer_id: &str, idempotency_key: &str) -> String {
    let h = xxhash_rust::xxh3::xxh3_64(format!("{customer_id}\0{idempotency_key}").as_bytes());
    format!("ord-{h:016x}")
}

#[tonic::async_trait]
impl Orders for OrdersApi {
    async fn place_order(
        &self,
        req: Request<PlaceOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let r = req.into_inner();
        let total = validate::place_order(&r)?;
        let id = order_id(&r.customer_id, &r.idempotency_key);
        // Every order placed so far, through any replica, is in the book.
        self.orders.sync().await.map_err(|e| {
            Status::unavailable(format!(
                "the order book cannot be brought up to date, retry with the same idempotency_key: {e}"
            ))
        })?;
        if let Some(o) = self.book.lock().expect("book lock").get(&id) {
            return Ok(Response::new(o));
        }
        let order = Order {
            order_id: id.clone(),
            customer_id: r.customer_id,
            items: r.items,
            total: Some(total),
            status: OrderStatus::Placed as i32,
            placed_at: Some(mesh_sdk::mesh_runtime::time::now()),
            cancel_reason: String::new(),
        };
        let event = OrderPlaced {
            order: Some(order.clone()),
        };
        let unavailable = |e: mesh_sdk::SdkError| {
            Status::unavailable(format!(
                "the order could not be recorded, retry with the same idempotency_key: {e}"
            ))
        };
        let published = self
            .producer
            .publish_event(format!("order-placed/{id}"), &id, &event)
            .await
            .map_err(unavailable)?;
        tracing::info!(order = %id, "order placed");
        // A GetOrder on this replica finds it once this returns.
        self.orders
            .include(published.offset)
            .await
            .map_err(unavailable)?;
        // A racing retry (through another replica) placed it first: its
        // OrderPlaced is the one that counts, and the book has it.
        let first = if published.duplicate {
            self.book.lock().expect("book lock").get(&id)
        } else {
            None
        };
        Ok(Response::new(first.unwrap_or(order)))
    }

    async fn get_order(&self, req: Request<GetOrderRequest>) -> Result<Response<Order>, Status> {
        let id = req.into_inner().order_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("order_id: required"));
        }
        self.book
            .lock()
            .expect("book lock")
            .get(&id)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("order_id: order {id:?} not found")))
    }

    async fn list_orders(
        &self,
        req: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let customer = req.into_inner().customer_id;
        let orders = self.book.lock().expect("book lock").list(&customer);
        Ok(Response::new(ListOrdersResponse { orders }))
    }
}
