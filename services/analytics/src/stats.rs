//! Order and revenue figures, built event by event.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use mesh_proto::{
    analytics::v1 as pb,
    billing::v1::{PaymentAuthorized, PaymentDeclined},
    orders::v1::{Money, OrderPlaced},
    shipping::v1::ShipmentScheduled,
};
use mesh_sdk::tail::TailEvent;

#[derive(Default)]
struct Customer {
    orders: u64,
    revenue: BTreeMap<String, i64>,
}

#[derive(Default)]
pub struct Stats {
    // Sets of order ids make every figure idempotent: an event seen twice
    // (a redriven dead letter, say) is counted once.
    orders: BTreeSet<String>,
    authorized: BTreeSet<String>,
    declined: BTreeSet<String>,
    shipped: BTreeSet<String>,
    revenue: BTreeMap<String, i64>,
    customers: BTreeMap<String, Customer>,
    /// Next offset to read, per topic.
    pub next: HashMap<String, u64>,
    /// Head last reported by the broker, per topic.
    pub head: HashMap<String, u64>,
    caught_up: BTreeSet<String>,
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
    pub fn apply(&mut self, topic: &str, e: TailEvent) {
        let d = match e {
            TailEvent::CaughtUp { head } => {
                self.head.insert(topic.to_string(), head);
                self.caught_up.insert(topic.to_string());
                return;
            }
            TailEvent::Event(d) => d,
        };
        self.next.insert(topic.to_string(), d.offset + 1);
        if let Ok(OrderPlaced { order: Some(o) }) = d.decode::<OrderPlaced>() {
            if self.orders.insert(o.order_id.clone()) {
                self.customers.entry(o.customer_id).or_default().orders += 1;
            }
        } else if let Ok(PaymentAuthorized { invoice: Some(inv) }) = d.decode::<PaymentAuthorized>()
        {
            if self.authorized.insert(inv.order_id.clone()) {
                let amount = inv.amount.unwrap_or_default();
                *self.revenue.entry(amount.currency.clone()).or_default() += amount.amount_minor;
                let c = self.customers.entry(inv.customer_id).or_default();
                *c.revenue.entry(amount.currency).or_default() += amount.amount_minor;
            }
        } else if let Ok(PaymentDeclined { invoice: Some(inv) }) = d.decode::<PaymentDeclined>() {
            self.declined.insert(inv.order_id);
        } else if let Ok(ShipmentScheduled { shipment: Some(s) }) = d.decode::<ShipmentScheduled>()
        {
            self.shipped.insert(s.order_id);
        }
    }

    pub fn caught_up(&self) -> bool {
        crate::TOPICS.iter().all(|t| self.caught_up.contains(*t))
    }

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
            caught_up: self.caught_up(),
            uptime: None,
        }
    }
}
