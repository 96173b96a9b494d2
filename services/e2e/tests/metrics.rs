//! Prometheus metrics of the services, scraped over real HTTP from the
//! processes: billing counts every event it handled, and its counts agree
//! with the broker's.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::*;
use mesh_proto::orders::v1::{GetOrderRequest, OrderStatus};
use mesh_test_support::prometheus::{scrape, value};

/// A port for a child's metrics listener. Not from `bind(0)`: a port the
/// kernel handed out and took back can go to any other connection before
/// the child binds it.
fn free_addr() -> SocketAddr {
    format!("127.0.0.1:{}", broker_port()).parse().unwrap()
}

#[test]
fn the_operations_doc_lists_every_service_metric() {
    use mesh_sdk::metrics::{FAILED, HANDLED, HANDLER_SECONDS};
    let doc = mesh_test_support::doc("docs/operations.md");
    let section = doc.section("## Metrics");
    for name in [HANDLED, FAILED, HANDLER_SECONDS] {
        assert!(section.contains(&format!("| `{name}` |")), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_counts_every_event_it_handled_and_agrees_with_the_broker() {
    let mut m = Mesh::without_broker();
    let (broker_metrics, billing_metrics) = (free_addr(), free_addr());
    let env = |kv: &[(&str, String)]| -> Vec<(String, String)> {
        kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    };
    m.broker = Some(Proc::spawn(
        "broker",
        "broker",
        m.dir.path(),
        &env(&[
            ("BROKER__LISTEN", format!("127.0.0.1:{}", m.broker_port)),
            (
                "BROKER__DATA_DIR",
                m.dir.path().join("broker").display().to_string(),
            ),
            ("BROKER__METRICS_LISTEN", broker_metrics.to_string()),
            ("BROKER__DELIVERY__LAG_REPORT_INTERVAL", "100ms".into()),
        ]),
    ));
    m.start("orders");
    m.start("shipping");
    let billing = Proc::spawn(
        "billing",
        "billing",
        m.dir.path(),
        &env(&[
            ("BILLING__LISTEN", "127.0.0.1:0".into()),
            ("BILLING__BROKER", m.broker_url()),
            ("BILLING__METRICS_LISTEN", billing_metrics.to_string()),
        ]),
    );
    m.services.insert("billing".into(), billing);

    // Nothing handled yet: the endpoint is up and the counter absent or 0.
    let s = scrape(billing_metrics).unwrap();
    let ob = [("topic", "orders"), ("group", "billing")];
    assert_eq!(value(&s, "mesh_service_events_handled_total", &ob), 0.0);

    // Four orders, one of them declined; each reaches its final status.
    let mut c = m.orders().await;
    let mut ids = Vec::new();
    for (i, amount) in [1_000, 2_000, 250_000, 3_000].into_iter().enumerate() {
        let o = c
            .place_order(order(&format!("m-{i}"), "alice", amount))
            .await
            .unwrap();
        ids.push(o.into_inner().order_id);
    }
    let settled = eventually(Duration::from_secs(60), || {
        let (mut c, ids) = (c.clone(), ids.clone());
        async move {
            for id in ids {
                let st = c
                    .get_order(GetOrderRequest { order_id: id })
                    .await
                    .map(|r| r.into_inner().status());
                if !matches!(st, Ok(OrderStatus::Shipped | OrderStatus::Cancelled)) {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert!(settled, "orders did not settle:\n{}", m.logs());

    // Billing has then seen every event of the `orders` topic: 4 placed,
    // and the status changes (PAID/SHIPPED, CANCELLED).
    let in_log = log_events(&m.broker_url(), "orders").await.len() as f64;
    assert!(in_log >= 4.0 + 4.0, "{in_log} events in `orders`");
    let mut last = (Vec::new(), Vec::new());
    let done = eventually(Duration::from_secs(30), || {
        let s = (
            scrape(billing_metrics).unwrap_or_default(),
            scrape(broker_metrics).unwrap_or_default(),
        );
        let handled = value(&s.0, "mesh_service_events_handled_total", &ob);
        // Everything asserted below: the counter and the histogram are
        // two updates, and a redelivery is counted by the broker before
        // billing handles it.
        let ok = handled >= in_log
            && value(&s.1, "mesh_broker_group_lag_events", &ob) == 0.0
            && value(&s.1, "mesh_broker_events_acked_total", &ob) >= in_log
            && value(&s.0, "mesh_service_handler_duration_seconds_count", &ob) == handled
            && value(&s.1, "mesh_broker_events_delivered_total", &ob) == handled;
        last = s;
        async move { ok }
    })
    .await;
    let (svc, brk) = last;
    let handled = value(&svc, "mesh_service_events_handled_total", &ob);
    assert!(done, "billing handled {handled} of {in_log} events");
    assert_eq!(value(&svc, "mesh_service_events_failed_total", &ob), 0.0);
    assert_eq!(
        value(&svc, "mesh_service_handler_duration_seconds_count", &ob),
        handled
    );
    // Every delivery the broker made to the group was handled once.
    assert_eq!(
        value(&brk, "mesh_broker_events_delivered_total", &ob),
        handled
    );
    assert_eq!(
        value(
            &brk,
            "mesh_broker_events_published_total",
            &[("topic", "orders")]
        ),
        in_log
    );
    if value(&brk, "mesh_broker_events_redelivered_total", &ob) == 0.0 {
        // The usual case, without a missed ack deadline: exactly once each.
        assert_eq!(handled, in_log);
        assert_eq!(value(&brk, "mesh_broker_events_acked_total", &ob), in_log);
    }
}
