//! Services A–D over the real broker, as processes: the scenarios.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::*;
use mesh_proto::{
    analytics::v1::GetStatsRequest,
    billing::v1::{GetInvoiceRequest, Invoice, ListInvoicesRequest},
    orders::v1::{GetOrderRequest, OrderStatus},
    shipping::v1::GetShipmentRequest,
};

const LONG: Duration = Duration::from_secs(60);
const PAYMENT_OK: &str = "mesh.billing.v1.PaymentAuthorized";
const PAYMENT_NO: &str = "mesh.billing.v1.PaymentDeclined";
const SHIPPED: &str = "mesh.shipping.v1.ShipmentScheduled";

async fn status(m: &Mesh, id: &str) -> OrderStatus {
    m.orders()
        .await
        .get_order(GetOrderRequest {
            order_id: id.into(),
        })
        .await
        .map(|r| r.into_inner().status())
        .unwrap_or(OrderStatus::Unspecified)
}

async fn all_final(m: &Mesh, ids: &[String]) -> bool {
    for id in ids {
        if !matches!(
            status(m, id).await,
            OrderStatus::Shipped | OrderStatus::Cancelled
        ) {
            return false;
        }
    }
    true
}

/// The invoice of `order_id`. Billing records it after its publish
/// returns, so the order can be final a moment before GetInvoice finds it.
async fn invoice_of(m: &Mesh, order_id: &str) -> Invoice {
    eventually_some(LONG, || async {
        m.billing()
            .await
            .get_invoice(GetInvoiceRequest {
                order_id: order_id.into(),
                ..Default::default()
            })
            .await
            .ok()
            .map(|r| r.into_inner())
    })
    .await
    .unwrap_or_else(|| panic!("no invoice for {order_id}:\n{}", m.logs()))
}

async fn place_n(m: &Mesh, prefix: &str, n: usize) -> Vec<String> {
    let mut c = m.orders().await;
    let mut ids = Vec::new();
    for i in 0..n {
        // Every fifth order is over the default decline limit (1000.00).
        let amount = if i % 5 == 4 {
            250_000
        } else {
            1_000 + i as i64
        };
        let o = c
            .place_order(order(
                &format!("{prefix}-{i}"),
                &format!("cust-{}", i % 3),
                amount,
            ))
            .await
            .unwrap();
        ids.push(o.into_inner().order_id);
    }
    ids
}

/// A mesh of orders, billing and shipping in which `n` orders (`prefix-i`)
/// were placed and every one reached its final status.
async fn settled_orders(prefix: &str, n: usize) -> Mesh {
    let mut m = Mesh::new();
    for s in ["orders", "billing", "shipping"] {
        m.start(s);
    }
    let ids = place_n(&m, prefix, n).await;
    assert!(
        eventually(LONG, || all_final(&m, &ids)).await,
        "orders did not settle:\n{}",
        m.logs()
    );
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_and_declined_order() {
    let mut m = Mesh::new();
    m.start_all();
    let mut orders = m.orders().await;
    let ok = orders
        .place_order(order("k-ok", "alice", 4_200))
        .await
        .unwrap()
        .into_inner();
    let big = orders
        .place_order(order("k-big", "bob", 500_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.status(), OrderStatus::Placed);
    // A retried call with the same idempotency key is the same order.
    let again = orders
        .place_order(order("k-ok", "alice", 4_200))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.order_id, ok.order_id);

    let ids = vec![ok.order_id.clone(), big.order_id.clone()];
    assert!(
        eventually(LONG, || all_final(&m, &ids)).await,
        "orders did not settle:\n{}",
        m.logs()
    );
    assert_eq!(status(&m, &ok.order_id).await, OrderStatus::Shipped);
    let cancelled = m
        .orders()
        .await
        .get_order(GetOrderRequest {
            order_id: big.order_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.status(), OrderStatus::Cancelled);
    assert!(
        cancelled.cancel_reason.contains("declined"),
        "{}",
        cancelled.cancel_reason
    );

    let inv = invoice_of(&m, &ok.order_id).await;
    assert!(inv.authorized);
    assert_eq!(inv.amount.unwrap().amount_minor, 4_200);
    let declined = invoice_of(&m, &big.order_id).await;
    assert!(!declined.authorized);
    // Shipping, too, records its shipment after the publish returns.
    let ship = eventually_some(LONG, || async {
        m.shipping()
            .await
            .get_shipment(GetShipmentRequest {
                order_id: ok.order_id.clone(),
                ..Default::default()
            })
            .await
            .ok()
            .map(|r| r.into_inner())
    })
    .await
    .unwrap_or_else(|| panic!("no shipment for {}:\n{}", ok.order_id, m.logs()));
    assert_eq!(ship.customer_id, "alice");
    let none = m
        .shipping()
        .await
        .get_shipment(GetShipmentRequest {
            order_id: big.order_id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        none.unwrap_err().code(),
        tonic::Code::NotFound,
        "a declined order must not ship"
    );

    // The log holds exactly one payment and one shipment per order.
    let b = m.broker_url();
    assert_eq!(
        count_by_subject(&b, "orders", "mesh.orders.v1.OrderPlaced")
            .await
            .values()
            .sum::<usize>(),
        2
    );
    assert_eq!(
        count_by_subject(&b, "shipments", SHIPPED).await,
        BTreeMap::from([(ok.order_id.clone(), 1)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_down_then_back_bills_every_order_exactly_once() {
    let mut m = Mesh::new();
    m.start_all();
    let st = m.take("billing").sigterm();
    assert!(st.success(), "billing exits cleanly on SIGTERM: {st:?}");
    let ids = place_n(&m, "offline", 50).await;
    // Nothing can be billed while billing is down.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&m, &ids[0]).await, OrderStatus::Placed);
    m.start("billing");
    assert!(
        eventually(LONG, || all_final(&m, &ids)).await,
        "orders did not settle:\n{}",
        m.logs()
    );
    // Billing records an invoice after its publish returns: the last
    // order can be final before its invoice is listed.
    let mut invoices = Vec::new();
    for _ in 0..600 {
        invoices = m
            .billing()
            .await
            .list_invoices(ListInvoicesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .invoices;
        if invoices.len() >= 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(invoices.len(), 50);
    let b = m.broker_url();
    let mut payments = count_by_subject(&b, "payments", PAYMENT_OK).await;
    payments.extend(count_by_subject(&b, "payments", PAYMENT_NO).await);
    assert_eq!(payments.len(), 50);
    assert!(
        payments.values().all(|&n| n == 1),
        "an order was billed twice: {payments:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_shipping_mid_stream_loses_and_doubles_nothing() {
    let mut m = Mesh::new();
    m.start_all();
    let ship = m.take("shipping").sigterm();
    assert!(ship.success());
    let ids = place_n(&m, "kill", 60).await;
    // Wait until billing has paid them, so shipping has a backlog.
    let b = m.broker_url();
    assert!(
        eventually(LONG, || async {
            count_by_subject(&b, "payments", PAYMENT_OK).await.len() == 48
        })
        .await,
        "billing did not finish:\n{}",
        m.logs()
    );
    m.start("shipping");
    // Kill it as soon as it has shipped some but (probably) not all.
    assert!(
        eventually(LONG, || async {
            !count_by_subject(&b, "shipments", SHIPPED).await.is_empty()
        })
        .await
    );
    m.take("shipping").sigkill();
    m.start("shipping");
    assert!(
        eventually(LONG, || all_final(&m, &ids)).await,
        "orders did not settle:\n{}",
        m.logs()
    );
    let shipments = count_by_subject(&b, "shipments", SHIPPED).await;
    assert_eq!(shipments.len(), 48, "every paid order ships");
    assert!(
        shipments.values().all(|&n| n == 1),
        "a shipment was doubled: {shipments:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_started_late_matches_the_orders_placed() {
    let mut m = settled_orders("late", 100).await;
    m.start("analytics");
    let mut a = m.analytics().await;
    let deadline = tokio::time::Instant::now() + LONG;
    let (stats, done) = loop {
        let s = a
            .get_stats(GetStatsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let done =
            s.caught_up && s.orders == 100 && s.shipments == 80 && s.lag.values().all(|&l| l == 0);
        if done || tokio::time::Instant::now() > deadline {
            break (s, done);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(done, "analytics did not catch up: {stats:?}");
    assert_eq!(stats.payments_authorized, 80);
    assert_eq!(stats.payments_declined, 20);
    // Revenue: the 80 authorized orders, amounts 1000 + i for i % 5 != 4.
    let expected: i64 = (0..100)
        .filter(|i| i % 5 != 4)
        .map(|i| 1_000 + i as i64)
        .sum();
    assert_eq!(stats.revenue[0].amount_minor, expected);
    let cust0: i64 = (0..100)
        .filter(|i| i % 5 != 4 && i % 3 == 0)
        .map(|i| 1_000 + i as i64)
        .sum();
    let c0 = a
        .get_stats(GetStatsRequest {
            customer_id: "cust-0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c0.customers.len(), 1);
    assert_eq!(c0.customers[0].orders, 34);
    assert_eq!(c0.customers[0].revenue[0].amount_minor, cust0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_while_everything_runs() {
    let mut m = Mesh::new();
    m.start_all();
    let before = place_n(&m, "pre", 20).await;
    m.broker.take().unwrap().sigkill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // While the broker is down, PlaceOrder cannot record anything.
    let down = m
        .orders()
        .await
        .place_order(order("during", "carol", 100))
        .await;
    // ... and says so with UNAVAILABLE, as docs/architecture.md promises.
    assert_eq!(
        down.map(|_| ()).unwrap_err().code(),
        tonic::Code::Unavailable,
        "an order cannot be accepted without the broker"
    );
    m.start_broker();
    let after = place_n(&m, "post", 20).await;
    let all: Vec<String> = before.into_iter().chain(after).collect();
    assert!(
        eventually(LONG, || all_final(&m, &all)).await,
        "orders did not settle after the broker restart:\n{}",
        m.logs()
    );
    let b = m.broker_url();
    let shipments = count_by_subject(&b, "shipments", SHIPPED).await;
    assert!(shipments.values().all(|&n| n == 1), "{shipments:?}");
    assert_eq!(shipments.len(), 32);
    // The services were never restarted.
    for s in SERVICES {
        assert!(
            m.services
                .get_mut(s)
                .unwrap()
                .child
                .try_wait()
                .unwrap()
                .is_none(),
            "{s} exited"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_the_field() {
    let mut m = Mesh::new();
    m.start("orders");
    m.start("billing");
    m.start("shipping");
    let mut c = m.orders().await;
    let mut no_items = order("k", "c", 1);
    no_items.items.clear();
    let e = c.place_order(no_items).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("items:"), "{}", e.message());
    let mut neg = order("k", "c", 1);
    neg.items[0].quantity = -2;
    let e = c.place_order(neg).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().starts_with("items[0].quantity:"),
        "{}",
        e.message()
    );
    let e = c
        .get_order(GetOrderRequest {
            order_id: "ord-nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("order_id"), "{}", e.message());
    let e = m
        .billing()
        .await
        .get_invoice(GetInvoiceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = m
        .shipping()
        .await
        .get_shipment(GetShipmentRequest {
            order_id: "ord-nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tutorial_consumer_receives_events() {
    let mut m = settled_orders("tut", 4).await;
    m.start("notifications");
    let mut b = m.broker_client().await;
    let done = eventually(LONG, || {
        let mut b = b.clone();
        async move {
            let g = b
                .describe_group(mesh_proto::broker::v1::DescribeGroupRequest {
                    topic: "shipments".into(),
                    group: "notifications".into(),
                })
                .await;
            g.is_ok_and(|g| g.into_inner().committed_offset == 4)
        }
    })
    .await;
    assert!(
        done,
        "notifications did not consume the shipments:\n{}",
        m.logs()
    );
    let log = std::fs::read_to_string(&m.services["notifications"].log).unwrap();
    assert_eq!(
        log.matches("notify: your order ships soon").count(),
        4,
        "{log}"
    );
    let _ = b
        .list_topics(mesh_proto::broker::v1::ListTopicsRequest {})
        .await
        .unwrap();
}

#[test]
fn the_tutorial_is_the_tested_crate_and_its_compose_entry() {
    let tutorial = mesh_test_support::doc("docs/tutorial.md");
    let main = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../notifications/src/main.rs"
    ))
    .unwrap();
    assert_eq!(
        mesh_test_support::code_blocks(tutorial.text(), "rust"),
        std::slice::from_ref(&main),
        "docs/tutorial.md's main.rs differs from services/notifications/src/main.rs"
    );
    assert!(
        main.lines().count() <= 40,
        "the tutorial consumer should stay small"
    );
    // Its compose step is the entry in docker-compose.yml, whole.
    let compose = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docker-compose.yml"
    ))
    .unwrap();
    let entry = mesh_test_support::code_blocks(tutorial.section("## Run it in Docker"), "yaml");
    assert_eq!(entry.len(), 1, "{entry:?}");
    assert!(
        compose.contains(&format!("\n{}\n", entry[0])),
        "docs/tutorial.md's compose entry is not the one in docker-compose.yml:\n{}",
        entry[0]
    );
}

#[test]
fn no_service_knows_another_services_address() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let ports = [
        ("orders", "50052"),
        ("billing", "50053"),
        ("shipping", "50054"),
        ("analytics", "50055"),
        ("notifications", "50060"),
    ];
    for (svc, _) in ports {
        let mut files = vec![];
        let mut stack = vec![std::path::PathBuf::from(format!("{root}/{svc}"))];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).unwrap().flatten() {
                let path = e.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            for (other, port) in ports {
                if other != svc {
                    assert!(
                        !text.contains(port),
                        "{} mentions {other}'s port {port}",
                        f.display()
                    );
                    // A URL or host:port naming the other service.
                    for host in [format!("//{other}"), format!("{other}:5")] {
                        assert!(
                            !text.contains(&host),
                            "{} mentions the host {other}",
                            f.display()
                        );
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_started_before_the_broker_wait_for_it() {
    let mut m = Mesh::without_broker();
    m.start_all();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for s in SERVICES {
        let p = m.services.get_mut(s).unwrap();
        assert!(
            p.child.try_wait().unwrap().is_none(),
            "{s} gave up without the broker:\n{}",
            m.logs()
        );
    }
    m.start_broker();
    let ids = place_n(&m, "early", 5).await;
    assert!(
        eventually(LONG, || all_final(&m, &ids)).await,
        "{}",
        m.logs()
    );
}
