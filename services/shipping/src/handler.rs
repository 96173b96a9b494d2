//! Schedules one shipment per order whose first payment is authorized.
//!
//! Every replica follows `payments` and `shipments` ([`mesh_sdk::View`]).
//! For a PaymentAuthorized, the handler waits until its payments view
//! holds that event, looks up the order's first payment (the one that
//! counts: a declined first payment ships nothing, whatever comes after
//! it), syncs the shipments view to the topic's head, and ships only if no
//! shipment of the order exists yet. The shipment is derived from the
//! first payment alone, its id included, so two replicas racing on the
//! same order publish the same event and the broker drops the second
//! within its dedupe window.

use mesh_proto::{
    billing::v1::PaymentAuthorized,
    shipping::v1::{Shipment, ShipmentScheduled},
};
use mesh_sdk::{Delivered, HandlerError, Producer, View, derive_id};

use crate::{Register, payments::Payments};

/// Shipments go out the day after payment.
const SHIP_AFTER_SECS: i64 = 24 * 3600;

#[derive(Clone)]
pub struct Shipping {
    /// Written only by `shipments_view`, which follows `shipments`.
    pub register: Register,
    pub shipments_view: View,
    /// Written only by `payments_view`, which follows `payments`.
    pub payments: std::sync::Arc<std::sync::Mutex<Payments>>,
    pub payments_view: View,
    pub producer: Producer,
}

impl Shipping {
    pub async fn handle(self, d: Delivered) -> Result<(), HandlerError> {
        if !d.is::<PaymentAuthorized>() {
            return Ok(()); // declined payments ship nothing
        }
        let order_id = d
            .decode::<PaymentAuthorized>()?
            .invoice
            .ok_or_else(|| HandlerError::new("PaymentAuthorized without an invoice"))?
            .order_id;
        self.payments_view.include(d.offset).await?;
        let first = self
            .payments
            .lock()
            .expect("payments lock")
            .first(&order_id)
            .ok_or_else(|| HandlerError::new(format!("no payment of {order_id} in the view")))?;
        if !first.authorized {
            return Ok(()); // its first payment was declined: that one counts
        }
        // Every shipment published so far, by any replica, is registered.
        self.shipments_view.sync().await?;
        if self
            .register
            .lock()
            .expect("register lock")
            .contains_key(&order_id)
        {
            return Ok(()); // already scheduled: a redelivery or a duplicate
        }
        let shipment = Shipment {
            shipment_id: format!("shp-{}", order_id.trim_start_matches("ord-")),
            order_id: order_id.clone(),
            customer_id: first.invoice.customer_id.clone(),
            scheduled_for: Some(prost_types::Timestamp {
                seconds: first.paid_at.seconds + SHIP_AFTER_SECS,
                nanos: 0,
            }),
        };
        let ev = ShipmentScheduled {
            shipment: Some(shipment),
        };
        let published = self
            .producer
            .publish_event(derive_id("shipment", &first.event_id), &order_id, &ev)
            .await?;
        tracing::info!(order = %order_id, "shipment scheduled");
        // Ack only once the register (the API's answer) holds it.
        self.shipments_view.include(published.offset).await?;
        Ok(())
    }
}
