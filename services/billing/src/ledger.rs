//! Invoices, one per order.

use std::collections::BTreeMap;

use mesh_proto::billing::v1::Invoice;

#[derive(Default)]
pub struct Ledger {
    by_order: BTreeMap<String, Invoice>,
}

impl Ledger {
    /// Keeps the first invoice of an order; later copies are duplicates.
    pub fn insert(&mut self, inv: Invoice) {
        self.by_order.entry(inv.order_id.clone()).or_insert(inv);
    }

    pub fn by_order(&self, order_id: &str) -> Option<Invoice> {
        self.by_order.get(order_id).cloned()
    }

    pub fn by_id(&self, invoice_id: &str) -> Option<Invoice> {
        self.by_order
            .values()
            .find(|i| i.invoice_id == invoice_id)
            .cloned()
    }

    pub fn list(&self, customer: &str) -> Vec<Invoice> {
        self.by_order
            .values()
            .filter(|i| customer.is_empty() || i.customer_id == customer)
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_order.is_empty()
    }
}
