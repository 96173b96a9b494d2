//! Moves orders along as payment and shipment events arrive.

use std::sync::{Arc, Mutex};

use mesh_proto::{
    billing::v1::{PaymentAuthorized, PaymentDeclined},
    orders::v1::{OrderStatus, OrderStatusChanged},
    shipping::v1::ShipmentScheduled,
};
use mesh_sdk::{Delivered, HandlerError, Producer, derive_id};

use crate::book::Book;

#[derive(Clone)]
pub struct Follower {
    pub book: Arc<Mutex<Book>>,
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
        {
            let book = self.book.lock().expect("book lock");
            if book.get(&order_id).is_none() {
                return Err(HandlerError::new(format!(
                    "order {order_id} is not known (yet)"
                )));
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
        self.producer.publish_event(id, &order_id, &change).await?;
        self.book
            .lock()
            .expect("book lock")
            .advance(&order_id, status, &reason);
        tracing::info!(order = %order_id, status = status.as_str_name(), "order status changed");
        Ok(())
    }
}
