//! Bills each placed order exactly once.

use std::sync::{Arc, Mutex};

use mesh_proto::{
    billing::v1::{Invoice, PaymentAuthorized, PaymentDeclined},
    orders::v1::OrderPlaced,
};
use mesh_sdk::{Delivered, HandlerError, Producer, derive_id};

use crate::ledger::Ledger;

#[derive(Clone)]
pub struct Billing {
    pub ledger: Arc<Mutex<Ledger>>,
    pub producer: Producer,
    pub decline_over_minor: i64,
}

impl Billing {
    pub async fn handle(self, d: Delivered) -> Result<(), HandlerError> {
        if !d.is::<OrderPlaced>() {
            return Ok(()); // status changes also flow on this topic
        }
        let order = d
            .decode::<OrderPlaced>()?
            .order
            .ok_or_else(|| HandlerError::new("OrderPlaced without an order"))?;
        if self
            .ledger
            .lock()
            .expect("ledger lock")
            .by_order(&order.order_id)
            .is_some()
        {
            return Ok(()); // already billed: a redelivery
        }
        let amount = order.total.clone().unwrap_or_default();
        let authorized = amount.amount_minor <= self.decline_over_minor;
        let invoice = Invoice {
            invoice_id: format!("inv-{}", order.order_id.trim_start_matches("ord-")),
            order_id: order.order_id.clone(),
            customer_id: order.customer_id.clone(),
            amount: Some(amount.clone()),
            authorized,
            decline_reason: if authorized {
                String::new()
            } else {
                format!(
                    "total {} {} exceeds the limit {}",
                    amount.amount_minor, amount.currency, self.decline_over_minor
                )
            },
            created_at: d.event.time,
        };
        let id = derive_id("payment", &d.event.id);
        if authorized {
            let ev = PaymentAuthorized {
                invoice: Some(invoice.clone()),
            };
            self.producer
                .publish_event(id, &order.order_id, &ev)
                .await?;
        } else {
            let ev = PaymentDeclined {
                invoice: Some(invoice.clone()),
            };
            self.producer
                .publish_event(id, &order.order_id, &ev)
                .await?;
        }
        tracing::info!(order = %order.order_id, authorized, "order billed");
        self.ledger.lock().expect("ledger lock").insert(invoice);
        Ok(())
    }
}
