//! Telemetry shared by the broker and every service.
//!
//! - [`init`]: logs to stderr (text, or JSON when configured) and, when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans exported over OTLP/gRPC.
//!   `OTEL_SERVICE_NAME` renames the service; `OTEL_TRACES_SAMPLER` (and
//!   `_ARG`) choose sampling; `OTEL_BSP_SCHEDULE_DELAY` the export period.
//!   Export runs on its own thread with a bounded queue, so a collector that
//!   is down never blocks or crashes the process (spans are dropped).
//! - [`Telemetry::shutdown`]: flushes spans on the way out.
//! - Propagation of W3C `traceparent`/`tracestate`: from gRPC metadata
//!   ([`grpc_span`], used as tonic's `trace_fn`), into and out of an event's
//!   attributes ([`inject`], [`extract`]).

use std::collections::HashMap;

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

/// Keeps the exporter alive; call [`Telemetry::shutdown`] before exiting.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether spans are exported. Hot paths skip per-event spans when not.
pub fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

fn endpoint() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok())
    .find(|v| !v.trim().is_empty())
}

/// Sets up logging and, if configured by the standard environment
/// variables, OTLP trace export. `service` is the default service name.
pub fn init(service: &str, log_format: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    type Base = tracing_subscriber::layer::Layered<EnvFilter, tracing_subscriber::Registry>;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // JSON logs include the current span's fields, among them `trace_id`.
    let fmt: Box<dyn tracing_subscriber::Layer<Base> + Send + Sync> = if log_format == "json" {
        Box::new(fmt.json().with_current_span(true).with_span_list(false))
    } else {
        Box::new(fmt)
    };
    let provider = endpoint().and_then(|ep| match build_provider(service, &ep) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("{service}: tracing export disabled: {e}");
            None
        }
    });
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("mesh")));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if provider.is_some() {
        ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            endpoint = endpoint().unwrap_or_default(),
            "exporting spans over OTLP/gRPC"
        );
    }
    Telemetry { provider }
}

fn build_provider(service: &str, endpoint: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| e.to_string())?;
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| service.to_string());
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(name).build())
        .build())
}

impl Telemetry {
    /// Flushes and stops the exporter (bounded by the SDK's own timeout).
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }
}

struct Attrs<'a>(&'a HashMap<String, String>);

impl Extractor for Attrs<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct AttrsMut<'a>(&'a mut HashMap<String, String>);

impl Injector for AttrsMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The trace context carried in an event's attributes.
pub fn extract(attributes: &HashMap<String, String>) -> Context {
    TraceContextPropagator::new().extract(&Attrs(attributes))
}

/// Writes `span`'s context into an event's attributes (`traceparent`,
/// `tracestate`), replacing what was there.
pub fn inject(span: &tracing::Span, attributes: &mut HashMap<String, String>) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut AttrsMut(attributes));
    }
}

/// Makes `span` a child of the context in `attributes`, if there is one.
pub fn continue_from(span: &tracing::Span, attributes: &HashMap<String, String>) {
    let cx = extract(attributes);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The trace id of `span`, hex, for logs; empty when not traced.
pub fn trace_id(span: &tracing::Span) -> String {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        sc.trace_id().to_string()
    } else {
        String::new()
    }
}

/// One server span per gRPC call, continuing the caller's trace from its
/// `traceparent` metadata. Use as `Server::builder().trace_fn(grpc_span)`.
pub fn grpc_span(req: &http::Request<()>) -> tracing::Span {
    let path = req.uri().path();
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        trace_id = tracing::field::Empty,
    );
    let cx = TraceContextPropagator::new().extract(&Headers(req.headers()));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
    if enabled() {
        span.record("trace_id", trace_id(&span));
    }
    span
}
