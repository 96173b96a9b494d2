//! Two replicas of every service against one real broker, as processes:
//! members of a group share the work, each event is handled once, and
//! every read API answers the same on both replicas, because each builds
//! its read model from the log and follows it.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::*;
use mesh_proto::{
    analytics::v1::{GetStatsRequest, Stats, analytics_client::AnalyticsClient},
    billing::v1::{GetInvoiceRequest, Invoice, billing_client::BillingClient},
    broker::v1::{
        CreateTopicRequest, DescribeGroupRequest, DescribeTopicRequest, SeekGroupRequest,
        StartPosition, start_position::Position,
    },
    events::v1::Event,
    orders::v1::{GetOrderRequest, Order, OrderStatus, orders_client::OrdersClient},
    shipping::v1::{GetShipmentRequest, Shipment, shipping_client::ShippingClient},
};

const LONG: Duration = Duration::from_secs(90);
const PLACED: &str = "mesh.orders.v1.OrderPlaced";
const PAYMENT_OK: &str = "mesh.billing.v1.PaymentAuthorized";
const PAYMENT_NO: &str = "mesh.billing.v1.PaymentDeclined";
const SHIPPED: &str = "mesh.shipping.v1.ShipmentScheduled";
/// Orders above this total are declined (billing's default rule).
const DECLINE_OVER: i64 = 100_000;

/// The two replicas of `service`, by process name.
fn replicas(service: &str) -> [String; 2] {
    [format!("{service}-a"), format!("{service}-b")]
}

fn start_replicas(m: &mut Mesh, services: &[&str]) {
    for s in services {
        for name in replicas(s) {
            m.start_as(s, &name);
        }
    }
}

/// Order `i` of a run: every fifth is over the decline limit.
fn amount(i: usize) -> i64 {
    if i % 5 == 4 {
        250_000
    } else {
        1_000 + i as i64
    }
}

/// Places `n` orders (`prefix-i`), alternating between the two orders
/// replicas. Returns their ids and amounts.
async fn place_alternating(m: &Mesh, prefix: &str, n: usize) -> Vec<(String, i64)> {
    let [a, b] = replicas("orders");
    let mut clients = [
        OrdersClient::new(m.channel(&m.url(&a)).await),
        OrdersClient::new(m.channel(&m.url(&b)).await),
    ];
    let mut placed = Vec::new();
    for i in 0..n {
        let req = order(
            &format!("{prefix}-{i}"),
            &format!("cust-{}", i % 3),
            amount(i),
        );
        let o = clients[i % 2]
            .place_order(req)
            .await
            .unwrap_or_else(|e| panic!("PlaceOrder {prefix}-{i}: {e}\n{}", m.logs()))
            .into_inner();
        placed.push((o.order_id, amount(i)));
    }
    placed
}

/// Everything a replica of each service answers about `ids`: replica `r`
/// (0 or 1) of orders, billing, shipping and analytics. Uptime, the one
/// figure that differs by nature, is left out.
#[derive(Debug, PartialEq)]
struct Answers {
    orders: Vec<Option<Order>>,
    invoices: Vec<Option<Invoice>>,
    shipments: Vec<Option<Shipment>>,
    stats: Option<Stats>,
}

async fn answers(m: &Mesh, r: usize, ids: &[String]) -> Answers {
    let url = |s: &str| m.url(&replicas(s)[r]);
    let mut o = OrdersClient::new(m.channel(&url("orders")).await);
    let mut b = BillingClient::new(m.channel(&url("billing")).await);
    let mut s = ShippingClient::new(m.channel(&url("shipping")).await);
    let mut a = AnalyticsClient::new(m.channel(&url("analytics")).await);
    let mut out = Answers {
        orders: Vec::new(),
        invoices: Vec::new(),
        shipments: Vec::new(),
        stats: None,
    };
    for id in ids {
        let by_order = id.clone();
        out.orders.push(
            o.get_order(GetOrderRequest { order_id: by_order })
                .await
                .ok()
                .map(|r| r.into_inner()),
        );
        out.invoices.push(
            b.get_invoice(GetInvoiceRequest {
                order_id: id.clone(),
                ..Default::default()
            })
            .await
            .ok()
            .map(|r| r.into_inner()),
        );
        out.shipments.push(
            s.get_shipment(GetShipmentRequest {
                order_id: id.clone(),
                ..Default::default()
            })
            .await
            .ok()
            .map(|r| r.into_inner()),
        );
    }
    out.stats = a
        .get_stats(GetStatsRequest::default())
        .await
        .ok()
        .map(|r| Stats {
            uptime: None,
            ..r.into_inner()
        });
    out
}

/// Whether `a` is the settled state of `placed`: every order final (SHIPPED
/// if authorized, CANCELLED if declined), its invoice there, a shipment
/// exactly for the authorized ones, and analytics caught up with all of it.
fn settled(a: &Answers, placed: &[(String, i64)]) -> bool {
    let authorized = placed.iter().filter(|(_, x)| *x <= DECLINE_OVER).count() as u64;
    let orders_done = a.orders.iter().zip(placed).all(|(o, (_, x))| {
        let want = if *x <= DECLINE_OVER {
            OrderStatus::Shipped
        } else {
            OrderStatus::Cancelled
        };
        o.as_ref().is_some_and(|o| o.status() == want)
    });
    let invoices_done = a.invoices.iter().zip(placed).all(|(i, (_, x))| {
        i.as_ref()
            .is_some_and(|i| i.authorized == (*x <= DECLINE_OVER))
    });
    let shipments_done = a
        .shipments
        .iter()
        .zip(placed)
        .all(|(s, (_, x))| s.is_some() == (*x <= DECLINE_OVER));
    let stats_done = a.stats.as_ref().is_some_and(|s| {
        s.caught_up
            && s.orders == placed.len() as u64
            && s.payments_authorized == authorized
            && s.shipments == authorized
            && s.lag.values().all(|&l| l == 0)
    });
    orders_done && invoices_done && shipments_done && stats_done
}

/// Payment events (authorized or declined) per order in `payments`.
async fn payments_per_order(m: &Mesh) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for (ty, subject) in log_events(&m.broker_url(), "payments").await {
        if ty == PAYMENT_OK || ty == PAYMENT_NO {
            *n.entry(subject).or_insert(0) += 1;
        }
    }
    n
}

/// Whether each order of `placed` has exactly one payment in the log, and
/// there is no other.
fn billed_once(payments: &BTreeMap<String, usize>, placed: &[(String, i64)]) -> bool {
    payments.len() == placed.len()
        && placed
            .iter()
            .all(|(id, _)| payments.get(id).copied() == Some(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_of_every_service_share_the_work_and_answer_alike() {
    let mut m = Mesh::new();
    start_replicas(
        &mut m,
        &[
            "orders",
            "billing",
            "shipping",
            "analytics",
            "notifications",
        ],
    );
    let placed = place_alternating(&m, "rep", 30).await;
    let ids: Vec<String> = placed.iter().map(|(id, _)| id.clone()).collect();

    // A retried PlaceOrder through the other replica is the same order:
    // that replica's book holds what the first one placed.
    let [a, b] = replicas("orders");
    let mut other = [
        OrdersClient::new(m.channel(&m.url(&b)).await),
        OrdersClient::new(m.channel(&m.url(&a)).await),
    ];
    for i in (0..placed.len()).step_by(3) {
        let again = other[i % 2]
            .place_order(order(
                &format!("rep-{i}"),
                &format!("cust-{}", i % 3),
                amount(i),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            again.order_id, ids[i],
            "retry of rep-{i} on the other replica"
        );
    }

    // Both replicas of every service settle on the same answers.
    let agreed = eventually_some(LONG, || async {
        let (a, b) = (answers(&m, 0, &ids).await, answers(&m, 1, &ids).await);
        (settled(&a, &placed) && a == b).then_some(a)
    })
    .await;
    let Some(agreed) = agreed else {
        panic!(
            "the replicas did not settle alike:\na: {:?}\nb: {:?}\n{}",
            answers(&m, 0, &ids).await,
            answers(&m, 1, &ids).await,
            m.logs()
        );
    };
    let stats = agreed.stats.as_ref().unwrap();
    assert_eq!(stats.payments_declined, 6);
    let revenue: i64 = placed
        .iter()
        .map(|(_, x)| *x)
        .filter(|&x| x <= DECLINE_OVER)
        .sum();
    assert_eq!(stats.revenue[0].amount_minor, revenue);

    // Each order was placed, billed and shipped exactly once, whichever
    // replica handled it.
    let b = m.broker_url();
    let placed_events = count_by_subject(&b, "orders", PLACED).await;
    assert!(
        placed_events.len() == ids.len() && placed_events.values().all(|&n| n == 1),
        "OrderPlaced per order: {placed_events:?}"
    );
    let payments = payments_per_order(&m).await;
    assert!(billed_once(&payments, &placed), "payments: {payments:?}");
    let shipments = count_by_subject(&b, "shipments", SHIPPED).await;
    assert!(
        shipments.len() == 24 && shipments.values().all(|&n| n == 1),
        "shipments: {shipments:?}"
    );

    // Both replicas are members of each group they share.
    let mut admin = m.broker_client().await;
    for (topic, group) in [
        ("orders", "billing"),
        ("payments", "shipping"),
        ("payments", "orders"),
        ("shipments", "orders"),
        ("shipments", "notifications"),
    ] {
        let g = admin
            .describe_group(DescribeGroupRequest {
                topic: topic.into(),
                group: group.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(g.members.len(), 2, "{topic}/{group}: {g:?}");
    }
}

/// Publishes the event `probe` to the topic `probe`; whether the broker
/// stored it (rather than dropping it as a duplicate).
async fn probe_stored(p: &mesh_sdk::Producer) -> bool {
    let ev = Event {
        id: "probe".into(),
        source: "/e2e".into(),
        spec_version: "1.0".into(),
        r#type: "e2e.Probe".into(),
        subject: "probe".into(),
        ..Default::default()
    };
    let r = p.publish("probe", vec![ev]).await.unwrap();
    !r[0].duplicate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_redelivered_past_the_dedupe_window_to_the_other_replica_is_not_billed_again() {
    let mut m = Mesh::without_broker();
    m.env = vec![("BROKER__STORAGE__DEDUPE_WINDOW".into(), "1s".into())];
    m.start_broker();
    start_replicas(&mut m, &["orders", "billing", "shipping"]);
    let placed = place_alternating(&m, "window", 6).await;
    let ids: Vec<String> = placed.iter().map(|(id, _)| id.clone()).collect();
    let b = m.broker_url();
    let shipped_once = |s: &BTreeMap<String, usize>| s.len() == 5 && s.values().all(|&n| n == 1);
    assert!(
        eventually(LONG, || async {
            billed_once(&payments_per_order(&m).await, &placed)
                && shipped_once(&count_by_subject(&b, "shipments", SHIPPED).await)
        })
        .await,
        "the orders were not billed and shipped:\n{}",
        m.logs()
    );

    // Past the dedupe window: an id published after every payment (this
    // probe) is no longer remembered, so neither is any payment's.
    let mut admin = m.broker_client().await;
    admin
        .create_topic(CreateTopicRequest {
            name: "probe".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let producer = mesh_sdk::Producer::new(&m.link(), "/e2e").unwrap();
    assert!(probe_stored(&producer).await);
    assert!(
        eventually(Duration::from_secs(30), || probe_stored(&producer)).await,
        "the broker's dedupe window did not pass"
    );

    // Only the replica that did not bill the first order is left to see
    // its OrderPlaced again.
    let billed_it = |name: &str| {
        std::fs::read_to_string(&m.services[name].log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("order billed") && l.contains(&ids[0]))
    };
    let [ba, bb] = replicas("billing");
    let (biller, survivor) = if billed_it(&ba) { (ba, bb) } else { (bb, ba) };
    assert!(billed_it(&biller), "nobody logged billing {}", ids[0]);
    let st = m.take(&biller).sigterm();
    assert!(st.success(), "{biller} exited with {st}");

    let seek = admin
        .seek_group(SeekGroupRequest {
            topic: "orders".into(),
            group: "billing".into(),
            position: Some(StartPosition {
                position: Some(Position::Earliest(Default::default())),
            }),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(seek.events_to_redeliver > 0, "{seek:?}");

    // The survivor has consumed everything again ...
    let consumed_again = eventually(LONG, || {
        let mut admin = admin.clone();
        async move {
            let head = admin
                .describe_topic(DescribeTopicRequest {
                    name: "orders".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .head_offset;
            let g = admin
                .describe_group(DescribeGroupRequest {
                    topic: "orders".into(),
                    group: "billing".into(),
                })
                .await
                .unwrap()
                .into_inner();
            g.committed_offset == head && g.in_flight == 0
        }
    })
    .await;
    assert!(consumed_again, "billing did not re-consume:\n{}", m.logs());
    // ... billed nothing twice ...
    let payments = payments_per_order(&m).await;
    assert!(billed_once(&payments, &placed), "payments: {payments:?}");
    // ... because it found the first order billed by the other replica.
    let survivor_log = std::fs::read_to_string(&m.services[&survivor].log).unwrap();
    assert!(
        survivor_log
            .lines()
            .any(|l| l.contains("already billed") && l.contains(&ids[0])),
        "{survivor} never saw {}'s OrderPlaced again:\n{survivor_log}",
        ids[0]
    );
    let shipments = count_by_subject(&b, "shipments", SHIPPED).await;
    assert!(shipped_once(&shipments), "shipments: {shipments:?}");
}

/// Whether `group` has consumed all of `topic`.
async fn group_done(m: &Mesh, topic: &str, group: &str) -> bool {
    let mut admin = m.broker_client().await;
    let head = admin
        .describe_topic(DescribeTopicRequest { name: topic.into() })
        .await
        .map(|t| t.into_inner().head_offset);
    let g = admin
        .describe_group(DescribeGroupRequest {
            topic: topic.into(),
            group: group.into(),
        })
        .await
        .map(|g| g.into_inner());
    matches!((head, g), (Ok(h), Ok(g)) if g.committed_offset == h && g.in_flight == 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_payment_of_an_order_changes_nothing_on_any_replica() {
    let mut m = Mesh::new();
    start_replicas(&mut m, &["orders", "billing", "shipping", "analytics"]);
    // One order authorized, one declined (amount(4) is over the limit).
    let placed = place_alternating(&m, "second", 5).await;
    let ids: Vec<String> = placed.iter().map(|(id, _)| id.clone()).collect();
    let before = eventually_some(LONG, || async {
        let (a, b) = (answers(&m, 0, &ids).await, answers(&m, 1, &ids).await);
        (settled(&a, &placed) && a == b).then_some(a)
    })
    .await
    .unwrap_or_else(|| panic!("the orders did not settle:\n{}", m.logs()));

    // What a payment stored twice past the dedupe window, with the other
    // outcome, would look like: a declined copy of an authorized order's
    // payment, and an authorized copy of the declined order's.
    let producer = mesh_sdk::Producer::new(&m.link(), "/e2e").unwrap();
    let (paid, declined) = (&ids[0], &ids[4]);
    let invoice = |id: &String| {
        let i = ids.iter().position(|x| x == id).unwrap();
        before.invoices[i].clone().unwrap()
    };
    let mut flipped = invoice(paid);
    flipped.authorized = false;
    producer
        .publish_event(
            "second/declined",
            paid,
            &mesh_proto::billing::v1::PaymentDeclined {
                invoice: Some(flipped),
            },
        )
        .await
        .unwrap();
    let mut flipped = invoice(declined);
    flipped.authorized = true;
    flipped.decline_reason.clear();
    producer
        .publish_event(
            "second/authorized",
            declined,
            &mesh_proto::billing::v1::PaymentAuthorized {
                invoice: Some(flipped),
            },
        )
        .await
        .unwrap();

    // Once shipping and orders have handled both copies and analytics has
    // read them, every replica still answers as before.
    let after = eventually_some(LONG, || async {
        let done = group_done(&m, "payments", "shipping").await
            && group_done(&m, "payments", "orders").await;
        let (a, b) = (answers(&m, 0, &ids).await, answers(&m, 1, &ids).await);
        let read = [&a, &b].iter().all(|x| {
            x.stats
                .as_ref()
                .is_some_and(|s| s.caught_up && s.lag.values().all(|&l| l == 0))
        });
        (done && read && a == b).then_some(a)
    })
    .await
    .unwrap_or_else(|| panic!("the copies were not consumed:\n{}", m.logs()));
    assert_eq!(after, before, "a second payment changed an answer");
    let shipments = count_by_subject(&m.broker_url(), "shipments", SHIPPED).await;
    assert!(
        shipments.len() == 4 && !shipments.contains_key(declined),
        "shipments: {shipments:?}"
    );
}
