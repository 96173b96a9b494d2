//! Moves orders along as payment and shipment events arrive.
//!
//! The handler syncs the book to the head of `orders` before deciding, so
//! it sees every status change published so far by any replica, and after
//! publishing waits until the book holds its own change before acking. The
//! broker holds the next event of an order (its key) until that ack, so
//! each payment or shipment event of an order is decided on a book that
//! holds the effects of the ones before it.
//!
//! The first payment event of an order counts: a payment moves an order
//! only while it is PLACED. A second payment of the same order (a
//! duplicate stored past the broker's dedupe window) finds it PAID,
//! CANCELLED or SHIPPED and changes nothing.

use std::sync::{Arc, Mutex};

use mesh_proto::{
    billing::v1::{PaymentAuthorized, PaymentDeclined},
    orders::v1::{OrderStatus, OrderStatusChanged},
    shipping::v1::ShipmentScheduled,
};
use mesh_sdk::{Delivered, HandlerError, Producer, View, derive_id};

use crate::book::Book;

#[derive(Clone)]
pub struct Follower {
    /// Written only by `orders`, which follows the topic.
    pub book: Arc<Mutex<Book>>,
    pub orders: View,
    pub producer: Producer,
}

impl Follower {
    pub async fn handle(self, d: Delivered) -> Result<(), HandlerError> {
        let (order_id, status, reason) = if let Ok(p) = d.decode::<PaymentAuthorized>() {
            (
                p.invoice.unwrap_or_default().order_id,
                OrderStatus::Paid,
                String::new(),
            )
        } else if let Ok(p) = d.decode::<PaymentDeclined>() {
            let inv = p.invoice.unwrap_or_default();
            (
                inv.order_id,
                OrderStatus::Cancelled,
                format!("payment declined: {}", inv.decline_reason),
            )
        } else if let Ok(s) = d.decode::<ShipmentScheduled>() {
            (
                s.shipment.unwrap_or_default().order_id,
                OrderStatus::Shipped,
                String::new(),
            )
        } else {
            return Ok(()); // not an event this service follows
        };
        // Every change published so far, by any replica, is in the book.
        self.orders.sync().await?;
        {
            let book = self.book.lock().expect("book lock");
            let Some(order) = book.get(&order_id) else {
                return Err(HandlerError::new(format!(
                    "order {order_id} is not known (yet)"
                )));
            };
            let payment = status != OrderStatus::Shipped;
            if payment && order.status() != OrderStatus::Placed {
                return Ok(()); // not the order's first payment
            }
            if !book.would_advance(&order_id, status) {
                return Ok(()); // already there: a redelivery or a late event
            }
        }
        let change = OrderStatusChanged {
            order_id: order_id.clone(),
            status: status as i32,
            reason: reason.clone(),
        };
        // Derived from the input event: a crash after publishing and before
        // the ack republishes the same id, which the broker drops.
        let id = derive_id(
            &format!("order-status-{}", status.as_str_name()),
            &d.event.id,
        );
        let published = self.producer.publish_event(id, &order_id, &change).await?;
        // Ack only once the book (the API's answer) holds the change.
        self.orders.include(published.offset).await?;
        tracing::info!(order = %order_id, status = status.as_str_name(), "order status changed");
        Ok(())
    }
}
