//! The order book: every order and its status, built from the `orders`
//! topic and following it (its first OrderPlaced of an order counts).

use std::collections::BTreeMap;

use mesh_proto::orders::v1::{Order, OrderStatus};

#[derive(Default)]
pub struct Book {
    orders: BTreeMap<String, Order>,
}

/// Statuses only move forward: PLACED → PAID → SHIPPED, or PLACED →
/// CANCELLED. A shipment seen before its payment still ends at SHIPPED.
fn rank(s: OrderStatus) -> u8 {
    match s {
        OrderStatus::Unspecified => 0,
        OrderStatus::Placed => 1,
        OrderStatus::Paid => 2,
        OrderStatus::Shipped => 3,
        OrderStatus::Cancelled => 3,
    }
}

impl Book {
    pub fn get(&self, id: &str) -> Option<Order> {
        self.orders.get(id).cloned()
    }

    pub fn list(&self, customer: &str) -> Vec<Order> {
        self.orders
            .values()
            .filter(|o| customer.is_empty() || o.customer_id == customer)
            .cloned()
            .collect()
    }

    /// Records a placed order unless it is already known (a replayed or
    /// duplicated event).
    pub fn placed(&mut self, order: Order) {
        self.orders.entry(order.order_id.clone()).or_insert(order);
    }

    /// Applies a status change if it moves the order forward. Returns
    /// whether it did.
    pub fn advance(&mut self, id: &str, status: OrderStatus, reason: &str) -> bool {
        let Some(o) = self.orders.get_mut(id) else {
            return false;
        };
        if rank(status) <= rank(o.status()) {
            return false;
        }
        o.set_status(status);
        if status == OrderStatus::Cancelled {
            o.cancel_reason = reason.to_string();
        }
        true
    }

    pub fn would_advance(&self, id: &str, status: OrderStatus) -> bool {
        self.orders
            .get(id)
            .is_some_and(|o| rank(status) > rank(o.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_only_moves_forward() {
        let mut b = Book::default();
        b.placed(Order {
            order_id: "o".into(),
            status: OrderStatus::Placed as i32,
            ..Default::default()
        });
        assert!(b.advance("o", OrderStatus::Shipped, ""));
        assert!(!b.advance("o", OrderStatus::Paid, ""));
        assert!(!b.advance("o", OrderStatus::Cancelled, "late"));
        assert_eq!(b.get("o").unwrap().status(), OrderStatus::Shipped);
        assert!(!b.advance("missing", OrderStatus::Paid, ""));
    }
}
