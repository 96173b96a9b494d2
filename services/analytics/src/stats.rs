//! Order and revenue figures, built event by event.

use std::collections::{BTreeMap, BTreeSet};

use mesh_proto::{
    analytics::v1 as pb,
    billing::v1::{PaymentAuthorized, PaymentDeclined},
    orders::v1::{Money, OrderPlaced},
    shipping::v1::ShipmentScheduled,
};
use mesh_sdk::Delivered;

#[derive(Default)]
struct Customer {
    orders: u64,
    revenue: BTreeMap<String, i64>,
}

#[derive(Default)]
pub struct Stats {
    // Sets of order ids make every figure idempotent: an event seen twice
    // (a redriven dead letter, say) is counted once, and of an order's
    // payments only the first counts.
    orders: BTreeSet<String>,
    authorized: BTreeSet<String>,
    declined: BTreeSet<String>,
    shipped: BTreeSet<String>,
    revenue: BTreeMap<String, i64>,
    customers: BTreeMap<String, Customer>,
}

fn money(m: &BTreeMap<String, i64>) -> Vec<Money> {
    m.iter()
        .map(|(c, a)| Money {
            currency: c.clone(),
            amount_minor: *a,
        })
        .collect()
}

impl Stats {
    /// Whether `order_id` has a payment counted already: only the first
    /// payment event of an order counts, whatever it says.
    fn paid(&self, order_id: &str) -> bool {
        self.authorized.contains(order_id) || self.declined.contains(order_id)
    }

    /// Applies one event of `orders`, `payments` or `shipments`.
    pub fn apply(&mut self, d: &Delivered) {
        if let Ok(OrderPlaced { order: Some(o) }) = d.decode::<OrderPlaced>() {
            if self.orders.insert(o.order_id.clone()) {
                self.customers.entry(o.customer_id).or_default().orders += 1;
            }
        } else if let Ok(PaymentAuthorized { invoice: Some(inv) }) = d.decode::<PaymentAuthorized>()
        {
            if !self.paid(&inv.order_id) {
                self.authorized.insert(inv.order_id.clone());
                let amount = inv.amount.unwrap_or_default();
                *self.revenue.entry(amount.currency.clone()).or_default() += amount.amount_minor;
                let c = self.customers.entry(inv.customer_id).or_default();
                *c.revenue.entry(amount.currency).or_default() += amount.amount_minor;
            }
        } else if let Ok(PaymentDeclined { invoice: Some(inv) }) = d.decode::<PaymentDeclined>() {
            if !self.paid(&inv.order_id) {
                self.declined.insert(inv.order_id);
            }
        } else if let Ok(ShipmentScheduled { shipment: Some(s) }) = d.decode::<ShipmentScheduled>()
        {
            self.shipped.insert(s.order_id);
        }
    }

    /// The figures (of `customer`, or everyone's); lag, caught-up and
    /// uptime are the API's to fill in.
    pub fn snapshot(&self, customer: &str) -> pb::Stats {
        let customers = self
            .customers
            .iter()
            .filter(|(id, _)| customer.is_empty() || id.as_str() == customer)
            .map(|(id, c)| pb::CustomerStats {
                customer_id: id.clone(),
                orders: c.orders,
                revenue: money(&c.revenue),
            })
            .collect();
        pb::Stats {
            orders: self.orders.len() as u64,
            payments_authorized: self.authorized.len() as u64,
            payments_declined: self.declined.len() as u64,
            shipments: self.shipped.len() as u64,
            revenue: money(&self.revenue),
            customers,
            lag: Default::default(),
            caught_up: false,
            uptime: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use mesh_proto::billing::v1::Invoice;
    use mesh_sdk::envelope;

    use super::*;

    fn delivered(offset: u64, ev: mesh_proto::events::v1::Event) -> Delivered {
        Delivered {
            topic: "payments".into(),
            offset,
            attempt: 1,
            publish_time_us: 0,
            event: ev,
        }
    }

    #[test]
    fn only_the_first_payment_of_an_order_counts() {
        let inv = Invoice {
            order_id: "o1".into(),
            customer_id: "c".into(),
            amount: Some(Money {
                currency: "EUR".into(),
                amount_minor: 500,
            }),
            ..Default::default()
        };
        let declined = PaymentDeclined {
            invoice: Some(inv.clone()),
        };
        let authorized = PaymentAuthorized { invoice: Some(inv) };
        let mut s = Stats::default();
        s.apply(&delivered(0, envelope("p1", "/t", "o1", &declined)));
        s.apply(&delivered(1, envelope("p2", "/t", "o1", &authorized)));
        s.apply(&delivered(2, envelope("p2", "/t", "o1", &authorized)));
        let snap = s.snapshot("");
        assert_eq!(snap.payments_declined, 1);
        assert_eq!(snap.payments_authorized, 0);
        assert!(snap.revenue.is_empty());
    }
}
