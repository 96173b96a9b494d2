//! Bills each placed order exactly once, whichever replica handles it.
//!
//! Before deciding, the handler syncs the ledger to the head of `payments`
//! ([`View::sync`]): every payment published before that moment, by any
//! replica, is then in the ledger, and an order that has one is not billed
//! again, whether the OrderPlaced is a redelivery seconds or days later
//! (past the broker's dedupe window). After publishing, it waits until the
//! ledger holds the payment, then acks: the next event of the order, which
//! the broker holds until this ack, sees it.
//!
//! What is left: two replicas handling the same OrderPlaced at the same
//! time (its ack deadline passed while the first was still at it). Both
//! may find no payment and both publish; the payment's id is derived from
//! the OrderPlaced's, so the broker stores the second as a duplicate of the
//! first as long as both land within its dedupe window of each other. The
//! producer's timeout (`PUBLISH_TIMEOUT`) keeps a stalled publish from
//! landing minutes later. Only a handler stalled between its sync and its
//! publish for longer than the dedupe window can still store a second
//! payment; it carries the same invoice (the decision is deterministic),
//! and every reader of `payments` counts the first payment of an order
//! only.

use std::sync::{Arc, Mutex};

use mesh_proto::{
    billing::v1::{Invoice, PaymentAuthorized, PaymentDeclined},
    orders::v1::OrderPlaced,
};
use mesh_sdk::{Delivered, HandlerError, Producer, View, derive_id};

use crate::ledger::Ledger;

#[derive(Clone)]
pub struct Billing {
    /// Written only by `payments`, which follows the topic.
    pub ledger: Arc<Mutex<Ledger>>,
    /// The ledger's view of `payments`: synced before every decision.
    pub payments: View,
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
        // Every payment published so far, by any replica, is in the ledger.
        self.payments.sync().await?;
        if self
            .ledger
            .lock()
            .expect("ledger lock")
            .by_order(&order.order_id)
            .is_some()
        {
            // A redelivery, or a copy; billed here or by another replica.
            tracing::info!(order = %order.order_id, "already billed; not billing again");
            return Ok(());
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
        let published = if authorized {
            let ev = PaymentAuthorized {
                invoice: Some(invoice),
            };
            self.producer
                .publish_event(id, &order.order_id, &ev)
                .await?
        } else {
            let ev = PaymentDeclined {
                invoice: Some(invoice),
            };
            self.producer
                .publish_event(id, &order.order_id, &ev)
                .await?
        };
        tracing::info!(
            order = %order.order_id,
            authorized,
            duplicate = published.duplicate,
            "order billed"
        );
        // Ack only once the ledger (the API's answer) holds the payment.
        self.payments.include(published.offset).await?;
        Ok(())
    }
}
