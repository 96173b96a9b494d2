//! PlaceOrder input checks; every error names the field.

use mesh_proto::orders::v1::{Money, PlaceOrderRequest};
use tonic::Status;

fn bad(field: impl std::fmt::Display, reason: &str) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

/// Checks the request and returns the order total.
pub fn place_order(r: &PlaceOrderRequest) -> Result<Money, Status> {
    if r.idempotency_key.trim().is_empty() {
        return Err(bad(
            "idempotency_key",
            "required, so that a retried call does not place a second order",
        ));
    }
    if r.idempotency_key.len() > 200 {
        return Err(bad("idempotency_key", "at most 200 characters"));
    }
    if r.customer_id.trim().is_empty() {
        return Err(bad("customer_id", "required"));
    }
    if r.items.is_empty() {
        return Err(bad("items", "at least one item is required"));
    }
    let mut currency: Option<&str> = None;
    let mut total: i64 = 0;
    for (i, item) in r.items.iter().enumerate() {
        if item.sku.trim().is_empty() {
            return Err(bad(format_args!("items[{i}].sku"), "required"));
        }
        if item.quantity <= 0 {
            return Err(bad(
                format_args!("items[{i}].quantity"),
                "must be greater than 0",
            ));
        }
        let Some(price) = &item.unit_price else {
            return Err(bad(format_args!("items[{i}].unit_price"), "required"));
        };
        let c = price.currency.as_str();
        if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(bad(
                format_args!("items[{i}].unit_price.currency"),
                "must be an ISO 4217 code such as EUR",
            ));
        }
        if currency.is_some_and(|cur| cur != c) {
            return Err(bad(
                format_args!("items[{i}].unit_price.currency"),
                "all items of an order must use the same currency",
            ));
        }
        currency = Some(c);
        if price.amount_minor < 0 {
            return Err(bad(
                format_args!("items[{i}].unit_price.amount_minor"),
                "must not be negative",
            ));
        }
        total = price
            .amount_minor
            .checked_mul(item.quantity as i64)
            .and_then(|line| total.checked_add(line))
            .ok_or_else(|| bad("items", "the order total overflows"))?;
    }
    Ok(Money {
        currency: currency.unwrap_or_default().to_string(),
        amount_minor: total,
    })
}

#[cfg(test)]
mod tests {
    use mesh_proto::orders::v1::OrderItem;

    use super::*;

    fn req(items: Vec<OrderItem>) -> PlaceOrderRequest {
        PlaceOrderRequest {
            idempotency_key: "k".into(),
            customer_id: "c".into(),
            items,
        }
    }

    fn item(q: i32, cur: &str, amount: i64) -> OrderItem {
        OrderItem {
            sku: "s".into(),
            quantity: q,
            unit_price: Some(Money {
                currency: cur.into(),
                amount_minor: amount,
            }),
        }
    }

    #[test]
    fn totals_and_field_names() {
        assert_eq!(
            place_order(&req(vec![item(2, "EUR", 150), item(1, "EUR", 100)]))
                .unwrap()
                .amount_minor,
            400
        );
        let msg = |r: PlaceOrderRequest| place_order(&r).unwrap_err().message().to_string();
        assert!(msg(req(vec![])).starts_with("items:"));
        assert!(msg(req(vec![item(-1, "EUR", 1)])).starts_with("items[0].quantity:"));
        assert!(msg(req(vec![item(1, "eur", 1)])).starts_with("items[0].unit_price.currency:"));
        assert!(
            msg(req(vec![item(1, "EUR", 1), item(1, "USD", 1)]))
                .starts_with("items[1].unit_price.currency:")
        );
        assert!(
            msg(req(vec![item(1, "EUR", -5)])).starts_with("items[0].unit_price.amount_minor:")
        );
        assert!(msg(req(vec![item(i32::MAX, "EUR", i64::MAX)])).starts_with("items:"));
        let mut r = req(vec![item(1, "EUR", 1)]);
        r.idempotency_key.clear();
        assert!(msg(r).starts_with("idempotency_key:"));
    }
}
