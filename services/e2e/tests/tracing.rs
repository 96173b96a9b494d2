//! One order, one trace: a real OTLP/gRPC receiver (the collector service
//! from `opentelemetry-proto`) collects the spans every process exports,
//! and the test follows the order from the caller through orders, the
//! broker, billing, shipping and analytics.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
use mesh_proto::orders::v1::{GetOrderRequest, OrderStatus};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
};

#[derive(Clone, Debug)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(Span {
                        service: service.clone(),
                        name: s.name,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn start_receiver() -> (Receiver, u16) {
    let r = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let svc = TraceServiceServer::new(r.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream_incoming(listener)),
    );
    (r, port)
}

fn tokio_stream_incoming(l: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(l)
}

/// PlaceOrder as a caller whose span is CALLER_SPAN in trace TRACE.
async fn place_traced(m: &Mesh, key: &str, customer: &str, amount: i64) -> String {
    let mut req = tonic::Request::new(order(key, customer, amount));
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    req.metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    m.orders()
        .await
        .place_order(req)
        .await
        .unwrap()
        .into_inner()
        .order_id
}

/// Waits until the order is SHIPPED.
async fn shipped(m: &Mesh, id: &str) -> bool {
    eventually(Duration::from_secs(60), || async move {
        m.orders()
            .await
            .get_order(GetOrderRequest {
                order_id: id.to_string(),
            })
            .await
            .is_ok_and(|o| o.into_inner().status() == OrderStatus::Shipped)
    })
    .await
}

/// The spans of the order's trace received so far, in arrival order.
fn trace_spans(r: &Receiver) -> Vec<Span> {
    r.spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace_id == TRACE)
        .cloned()
        .collect()
}

/// Whether `spans` hold every span the assertions of
/// `one_order_is_one_trace_...` look up, and the parent of every span whose
/// parent's service they check. Each process exports on its own schedule,
/// so a span can arrive before its parent.
fn has_what_is_asserted(spans: &[Span]) -> bool {
    let has = |svc: &str, name: &str| spans.iter().any(|s| s.service == svc && s.name == name);
    let parent_there = |s: &Span| spans.iter().any(|p| p.span_id == s.parent);
    let named = [
        ("orders", "mesh.orders.v1.Orders/PlaceOrder"),
        ("orders", "send orders"),
        ("billing", "process orders"),
        ("billing", "send payments"),
        ("broker", "publish payments"),
        ("shipping", "process payments"),
        ("broker", "publish shipments"),
        ("orders", "process shipments"),
        // Analytics reads all three topics of the order.
        ("analytics", "process orders"),
        ("analytics", "process payments"),
        ("analytics", "process shipments"),
    ];
    // The broker's publish of the OrderPlaced that orders sent.
    let placed_published = spans
        .iter()
        .find(|s| s.service == "orders" && s.name == "send orders")
        .is_some_and(|send| {
            spans.iter().any(|s| {
                s.service == "broker" && s.name == "publish orders" && s.parent == send.span_id
            })
        });
    named.iter().all(|(svc, name)| has(svc, name))
        && placed_published
        && spans
            .iter()
            .filter(|s| {
                s.service == "analytics" || (s.service == "broker" && s.name == "publish shipments")
            })
            .all(parent_there)
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_across_every_service_and_the_broker() {
    let (receiver, port) = start_receiver().await;
    let mut m = Mesh::without_broker();
    m.env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            format!("http://127.0.0.1:{port}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
        ("BILLING__LOG_FORMAT".into(), "json".into()),
    ];
    m.start_broker();
    m.start_all();

    let id = place_traced(&m, "traced-1", "trace-customer", 1_234).await;
    assert!(shipped(&m, &id).await, "{}", m.logs());

    // Asserted on the very snapshot that had everything the assertions
    // look up: spans keep arriving (later events of the order on `orders`
    // are traced too), and one newer than the wait could miss its parent.
    let mut spans = Vec::new();
    let all_there = eventually(Duration::from_secs(30), || {
        spans = trace_spans(&receiver);
        let done = has_what_is_asserted(&spans);
        async move { done }
    })
    .await;
    assert!(all_there, "spans of the order's trace: {spans:#?}");

    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let parent_of = |s: &Span| by_id.get(s.parent.as_str()).copied();
    let find = |svc: &str, name: &str| {
        spans
            .iter()
            .find(|s| s.service == svc && s.name == name)
            .unwrap_or_else(|| panic!("no {name:?} span from {svc}: {spans:#?}"))
    };
    // The caller's span is the root; PlaceOrder continues it.
    let rpc = find("orders", "mesh.orders.v1.Orders/PlaceOrder");
    assert_eq!(rpc.parent, CALLER_SPAN);
    let send = find("orders", "send orders");
    assert_eq!(send.parent, rpc.span_id);
    let publish = spans
        .iter()
        .find(|s| s.service == "broker" && s.name == "publish orders" && s.parent == send.span_id)
        .expect("broker publish span under orders' send");
    // Billing's handling is a child of the broker's publish span ...
    let billed = find("billing", "process orders");
    assert_eq!(billed.parent, publish.span_id);
    // ... and what billing publishes continues the same trace.
    let pay_send = find("billing", "send payments");
    assert_eq!(pay_send.parent, billed.span_id);
    let pay_publish = find("broker", "publish payments");
    assert_eq!(pay_publish.parent, pay_send.span_id);
    let shipped = find("shipping", "process payments");
    assert_eq!(shipped.parent, pay_publish.span_id);
    let ship_publish = find("broker", "publish shipments");
    assert_eq!(
        parent_of(ship_publish).map(|p| p.service.as_str()),
        Some("shipping")
    );
    for a in spans.iter().filter(|s| s.service == "analytics") {
        assert_eq!(
            parent_of(a).map(|p| p.service.as_str()),
            Some("broker"),
            "analytics span {a:?}"
        );
    }
    // orders follows the payment and the shipment in the same trace.
    assert!(
        spans
            .iter()
            .any(|s| s.service == "orders" && s.name == "process shipments")
    );

    // JSON logs carry the trace id (and never the payload). Billing logs
    // after its publish returns, so the order can be SHIPPED first: wait
    // for the whole line.
    let log_path = &m.services["billing"].log;
    let billed_line = || {
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        log.split_inclusive('\n')
            .find(|l| l.ends_with('\n') && l.contains("order billed"))
            .map(str::to_string)
    };
    assert!(
        eventually(Duration::from_secs(30), || {
            let found = billed_line().is_some();
            async move { found }
        })
        .await,
        "billing never logged the order:\n{}",
        m.logs()
    );
    let line = billed_line().expect("billing logged the order");
    let line = line.trim_end();
    assert!(line.starts_with('{') && line.contains(TRACE), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_work_normally_with_no_collector_running() {
    // Nothing listens on this port.
    let dead = free_port();
    let mut m = Mesh::without_broker();
    m.env = vec![(
        "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
        format!("http://127.0.0.1:{dead}"),
    )];
    m.start_broker();
    m.start_all();
    let id = place_traced(&m, "untraced", "c", 100).await;
    assert!(shipped(&m, &id).await, "{}", m.logs());
}
