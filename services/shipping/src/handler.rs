//! Schedules one shipment per authorized payment.

use mesh_proto::{
    billing::v1::PaymentAuthorized,
    shipping::v1::{Shipment, ShipmentScheduled},
};
use mesh_sdk::{Delivered, HandlerError, Producer, derive_id};

use crate::Register;

/// Shipments go out the day after payment.
const SHIP_AFTER_SECS: i64 = 24 * 3600;

#[derive(Clone)]
pub struct Shipping {
    pub register: Register,
    pub producer: Producer,
}

impl Shipping {
    pub async fn handle(self, d: Delivered) -> Result<(), HandlerError> {
        if !d.is::<PaymentAuthorized>() {
            return Ok(()); // declined payments ship nothing
        }
        let inv = d
            .decode::<PaymentAuthorized>()?
            .invoice
            .ok_or_else(|| HandlerError::new("PaymentAuthorized without an invoice"))?;
        if self
            .register
            .lock()
            .expect("register lock")
            .contains_key(&inv.order_id)
        {
            return Ok(()); // already scheduled: a redelivery
        }
        let paid_at = d.event.time.unwrap_or_default();
        let shipment = Shipment {
            shipment_id: format!("shp-{}", inv.order_id.trim_start_matches("ord-")),
            order_id: inv.order_id.clone(),
            customer_id: inv.customer_id.clone(),
            scheduled_for: Some(prost_types::Timestamp {
                seconds: paid_at.seconds + SHIP_AFTER_SECS,
                nanos: 0,
            }),
        };
        let ev = ShipmentScheduled {
            shipment: Some(shipment.clone()),
        };
        self.producer
            .publish_event(derive_id("shipment", &d.event.id), &inv.order_id, &ev)
            .await?;
        tracing::info!(order = %inv.order_id, "shipment scheduled");
        self.register
            .lock()
            .expect("register lock")
            .entry(inv.order_id)
            .or_insert(shipment);
        Ok(())
    }
}
