//! The first payment of every order, from the `payments` topic: the one
//! that counts. A later payment event of the same order (a duplicate
//! stored past the broker's dedupe window) changes nothing.

use std::collections::BTreeMap;

use mesh_proto::billing::v1::{Invoice, PaymentAuthorized, PaymentDeclined};
use mesh_sdk::Delivered;

/// What shipping needs of an order's first payment.
#[derive(Clone, Debug)]
pub struct FirstPayment {
    /// The payment event's id: a shipment's id is derived from it, so
    /// every replica that ships the order publishes the same event.
    pub event_id: String,
    /// When it was paid; the shipment date follows from it.
    pub paid_at: prost_types::Timestamp,
    pub invoice: Invoice,
    pub authorized: bool,
}

/// First payments by order id.
#[derive(Default)]
pub struct Payments {
    by_order: BTreeMap<String, FirstPayment>,
}

impl Payments {
    /// Applies one event of `payments`; keeps an order's first payment.
    pub fn apply(&mut self, d: &Delivered) {
        let (invoice, authorized) = if let Ok(p) = d.decode::<PaymentAuthorized>() {
            (p.invoice, true)
        } else if let Ok(p) = d.decode::<PaymentDeclined>() {
            (p.invoice, false)
        } else {
            return;
        };
        let Some(invoice) = invoice else { return };
        self.by_order
            .entry(invoice.order_id.clone())
            .or_insert_with(|| FirstPayment {
                event_id: d.event.id.clone(),
                paid_at: d.event.time.unwrap_or_default(),
                invoice,
                authorized,
            });
    }

    pub fn first(&self, order_id: &str) -> Option<FirstPayment> {
        self.by_order.get(order_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use mesh_sdk::envelope;

    use super::*;

    #[test]
    fn an_orders_first_payment_is_kept() {
        let inv = Invoice {
            order_id: "o1".into(),
            ..Default::default()
        };
        let d = |offset, ev| Delivered {
            topic: "payments".into(),
            offset,
            attempt: 1,
            publish_time_us: 0,
            event: ev,
        };
        let mut p = Payments::default();
        let declined = PaymentDeclined {
            invoice: Some(inv.clone()),
        };
        p.apply(&d(0, envelope("first", "/t", "o1", &declined)));
        let authorized = PaymentAuthorized { invoice: Some(inv) };
        p.apply(&d(1, envelope("second", "/t", "o1", &authorized)));
        let first = p.first("o1").unwrap();
        assert_eq!(first.event_id, "first");
        assert!(!first.authorized);
        assert!(p.first("o2").is_none());
    }
}
