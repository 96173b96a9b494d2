//! The mesh with TLS and authentication on, as processes with real
//! certificates from the development PKI: the order flow over mutual TLS
//! under the demo's least-privilege ACL, bearer tokens, and a service that
//! does not trust the broker's CA.

mod common;

use std::{path::Path, process::Command, time::Duration};

use common::*;
use mesh_proto::{
    analytics::v1::GetStatsRequest,
    billing::v1::{GetInvoiceRequest, PaymentAuthorized},
    broker::v1::DescribeTopicRequest,
    orders::v1::{GetOrderRequest, Money, Order, OrderPlaced, OrderStatus},
    shipping::v1::GetShipmentRequest,
};
use mesh_sdk::{Producer, mesh_runtime::tls::TlsConfig};

const LONG: Duration = Duration::from_secs(60);

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

/// `<bin> healthcheck ADDR` with `env`: whether it exited 0, and what it
/// said.
fn healthcheck(bin: &str, addr: &str, env: &[(String, String)]) -> (bool, String) {
    let out = Command::new(bin_dir().join(bin))
        .args(["healthcheck", addr])
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_flow_over_mutual_tls_with_least_privilege() {
    let mut m = Mesh::secure_without_broker();
    m.start_broker();
    m.start_all();
    // The tutorial consumer too: BasicConfig gets [tls] like the others.
    m.start("notifications");
    let pki = m.pki.clone().unwrap();

    let mut orders = m.orders().await;
    let ok = orders
        .place_order(order("s-ok", "alice", 4_200))
        .await
        .unwrap()
        .into_inner();
    let big = orders
        .place_order(order("s-big", "bob", 500_000))
        .await
        .unwrap()
        .into_inner();
    let settled = eventually(LONG, || async {
        status(&m, &ok.order_id).await == OrderStatus::Shipped
            && status(&m, &big.order_id).await == OrderStatus::Cancelled
    })
    .await;
    assert!(settled, "orders did not settle:\n{}", m.logs());

    let invoice = |id: String| {
        let m = &m;
        async move {
            eventually_some(LONG, || async {
                m.billing()
                    .await
                    .get_invoice(GetInvoiceRequest {
                        order_id: id.clone(),
                        ..Default::default()
                    })
                    .await
                    .ok()
                    .map(|r| r.into_inner())
            })
            .await
            .unwrap_or_else(|| panic!("no invoice for {id}:\n{}", m.logs()))
        }
    };
    let inv = invoice(ok.order_id.clone()).await;
    assert!(inv.authorized);
    assert_eq!(inv.amount.unwrap().amount_minor, 4_200);
    assert!(!invoice(big.order_id.clone()).await.authorized);
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

    let a = m.analytics().await;
    let stats = eventually_some(LONG, || async {
        let s = a
            .clone()
            .get_stats(GetStatsRequest::default())
            .await
            .ok()?
            .into_inner();
        (s.caught_up && s.orders == 2 && s.shipments == 1 && s.lag.values().all(|&l| l == 0))
            .then_some(s)
    })
    .await
    .unwrap_or_else(|| panic!("analytics did not count both orders:\n{}", m.logs()));
    assert_eq!(stats.payments_authorized, 1);
    assert_eq!(stats.payments_declined, 1);

    // The log, read as admin over mTLS: one OrderPlaced per order, one
    // shipment.
    let link = m.link();
    let placed = log_events_via(&link, "orders").await;
    let placed = placed
        .iter()
        .filter(|(t, _)| t == "mesh.orders.v1.OrderPlaced")
        .count();
    assert_eq!(placed, 2);
    assert_eq!(log_events_via(&link, "shipments").await.len(), 1);

    let notified = m.services["notifications"].log.clone();
    let notified = eventually(LONG, || async {
        std::fs::read_to_string(&notified)
            .unwrap_or_default()
            .contains("notify: your order ships soon")
    })
    .await;
    assert!(notified, "notifications saw no shipment:\n{}", m.logs());

    // The container healthcheck: the service's own config (its [tls]
    // from the environment) reaches its mTLS server; a probe without a
    // certificate does not.
    let addr = m.services["billing"].addr.to_string();
    let mut env = tls_env("BILLING", &pki, "billing");
    env.push(("BILLING__BROKER".into(), m.broker_url()));
    let (healthy, said) = healthcheck("billing", &addr, &env);
    assert!(healthy, "{said}");
    let (healthy, _) = healthcheck("billing", &addr, &[]);
    assert!(!healthy, "a probe without the service's certificate passed");
}

/// A second, unrelated PKI: its CA never signed the broker's certificate.
fn foreign_pki(dir: &Path) -> std::path::PathBuf {
    let other = dir.join("other-pki");
    mesh_certs::write_dev_pki(&other, &mesh_certs::Options::default()).unwrap();
    other
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_does_not_trust_the_brokers_ca_cannot_reach_it() {
    let mut m = Mesh::secure_without_broker();
    m.start_broker();
    let other = foreign_pki(m.dir.path());
    // Started after the mesh's own TLS settings, so these win.
    m.env = tls_env("BILLING", &other, "billing");
    m.start("billing");
    let log = m.services["billing"].log.clone();
    let refused = eventually(LONG, || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("broker not ready") && text.contains("invalid peer certificate")
    })
    .await;
    assert!(
        refused,
        "billing did not report the untrusted broker:\n{}",
        m.logs()
    );
    // It published nothing and joined no group.
    let mut b = m.broker_client().await;
    let payments = b
        .describe_topic(DescribeTopicRequest {
            name: "payments".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(payments.head_offset, 0, "{payments:?}");
    assert!(
        log_events_via(&m.link(), "payments").await.is_empty(),
        "{}",
        m.logs()
    );
}

fn money(amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency: "EUR".into(),
        amount_minor,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_authenticate_services_and_a_wrong_token_is_refused() {
    let mut m = Mesh::secure_without_broker();
    let pki = m.pki.clone().unwrap();
    for name in ["billing", "admin"] {
        mesh_certs::write_token(&pki, name, None).unwrap();
    }
    let wrong = pki.join("wrong.token");
    std::fs::write(&wrong, mesh_certs::Token::generate().unwrap().as_str()).unwrap();
    m.env = vec![
        ("BROKER__AUTH".into(), "token".into()),
        // Token clients present no certificate. (Any [tls] key given
        // makes the section's own default, "required", apply.)
        ("BROKER__TLS__CLIENT_AUTH".into(), "optional".into()),
        (
            "BROKER__TOKEN_FILE".into(),
            pki.join(mesh_certs::TOKENS_FILE).display().to_string(),
        ),
    ];
    m.start_broker();
    // Token clients trust the CA and present no certificate.
    let ca_only = TlsConfig {
        ca: Some(pki.join("ca.crt")),
        ..Default::default()
    };
    let url = m.broker_url();
    let link = |token: &Path| mesh_sdk::Broker::new(&url, &ca_only, Some(token)).unwrap();
    let admin = link(&pki.join("admin.token"));

    // billing as a service with a token file and no certificate.
    m.env = vec![
        (
            "BILLING__TLS__CA".into(),
            pki.join("ca.crt").display().to_string(),
        ),
        ("BILLING__TLS__CERT".into(), String::new()),
        ("BILLING__TLS__KEY".into(), String::new()),
        (
            "BILLING__TOKEN_FILE".into(),
            pki.join("billing.token").display().to_string(),
        ),
    ];
    m.start("billing");
    let orders = Producer::new(&admin, "/tests/secure").unwrap();
    let placed = OrderPlaced {
        order: Some(Order {
            order_id: "ord-tok-1".into(),
            customer_id: "carol".into(),
            total: money(1_500),
            ..Default::default()
        }),
    };
    orders
        .publish_event("placed-tok-1", "ord-tok-1", &placed)
        .await
        .unwrap_or_else(|e| panic!("admin's publish over its token: {e}\n{}", m.logs()));
    let billed = eventually(LONG, || async {
        log_events_via(&admin, "payments")
            .await
            .iter()
            .any(|(t, s)| t == "mesh.billing.v1.PaymentAuthorized" && s == "ord-tok-1")
    })
    .await;
    assert!(billed, "billing did not bill over its token:\n{}", m.logs());

    // A producer with billing's token may publish payments, not orders.
    let billing = Producer::new(&link(&pki.join("billing.token")), "/tests/secure")
        .unwrap()
        .with_timeout(LONG);
    let paid = PaymentAuthorized::default();
    billing
        .publish_event("pay-tok-2", "ord-tok-2", &paid)
        .await
        .unwrap();
    let e = billing
        .publish_event("placed-tok-2", "ord-tok-2", &placed)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, mesh_sdk::SdkError::Refused { code, .. } if *code == tonic::Code::PermissionDenied),
        "{e}"
    );

    // A wrong token: refused as UNAUTHENTICATED, not retried until the
    // timeout.
    let stranger = Producer::new(&link(&wrong), "/tests/secure")
        .unwrap()
        .with_timeout(LONG);
    let e = stranger
        .publish_event("pay-tok-3", "ord-tok-3", &paid)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, mesh_sdk::SdkError::Refused { code, .. } if *code == tonic::Code::Unauthenticated),
        "{e}"
    );

    // No token appears in any log.
    let logs = m.logs();
    for name in ["billing.token", "admin.token", "wrong.token"] {
        let token = std::fs::read_to_string(pki.join(name)).unwrap();
        assert!(!logs.contains(token.trim()), "{name} leaked:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_that_may_not_create_their_topics_wait_for_them() {
    let mut m = Mesh::secure_without_broker();
    // No [[topics]]: nothing exists until admin creates it.
    std::fs::remove_file(m.dir.path().join("broker.toml")).unwrap();
    m.start_broker();
    m.start("billing");
    m.start("shipping");
    let log = m.services["billing"].log.clone();
    let warned = eventually(LONG, || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("does not exist and this service may not create it")
    })
    .await;
    assert!(warned, "billing did not say why it waits:\n{}", m.logs());
    // Waiting, it still shuts down on SIGTERM.
    let st = m.take("shipping").sigterm();
    assert!(st.success(), "shipping exited with {st}:\n{}", m.logs());
    // Once admin has created the topics, billing goes on.
    let mut b = m.broker_client().await;
    for t in ["orders", "payments"] {
        b.create_topic(mesh_proto::broker::v1::CreateTopicRequest {
            name: t.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let started = eventually(LONG, || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ledger caught up with the payments topic")
    })
    .await;
    assert!(
        started,
        "billing did not start once its topics existed:\n{}",
        m.logs()
    );
}
