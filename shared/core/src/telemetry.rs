//! One telemetry initialiser: `tracing` logs (pretty or JSON), the Prometheus recorder, and,
//! when `telemetry.otlp_endpoint` is set, spans exported over OTLP/HTTP.
//!
//! Traces cross the bus in the `traceparent` header: a message's span is the child of the span
//! that sent it (`adopt`), and what it sends carries its own span as the parent, so one saga is
//! one trace across intake, the coordinator and every worker.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use pvefleet_contracts::TraceContext;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetrySettings};

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static TRACER: OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> = OnceLock::new();

/// Installs the global log subscriber and metrics recorder, as process `pvefleet`. Safe to
/// call more than once (tests); only the first call takes effect.
pub fn init(settings: &TelemetrySettings) {
    init_named(settings, "pvefleet");
}

/// `init`, naming the process in exported spans (`service.name`): `pvefleet-saga`...
pub fn init_named(settings: &TelemetrySettings, service: &str) {
    // The log filter is the log's alone: exported spans are every `info` span and above,
    // whatever the log shows (the CLI keeps its log to warnings).
    let filter = || {
        EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(&settings.filter))
            .unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let spans = || EnvFilter::new("info");
    let registry = tracing_subscriber::registry();
    let result = match settings.format {
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter()),
            )
            .with(otlp_layer(settings, service).map(|l| l.with_filter(spans())))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr)
                    .with_filter(filter()),
            )
            .with(otlp_layer(settings, service).map(|l| l.with_filter(spans())))
            .try_init(),
    };
    drop(result);
    prometheus();
}

/// The span exporter's layer, when an endpoint is configured and this is the first init.
fn otlp_layer<S>(
    settings: &TelemetrySettings,
    service: &str,
) -> Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let endpoint = settings.otlp_endpoint.trim();
    if endpoint.is_empty() || TRACER.get().is_some() {
        return None;
    }
    // reqwest is built without a default TLS provider: ring, as the PVE client uses.
    let _ = rustls::crypto::CryptoProvider::install_default(rustls::crypto::ring::default_provider());
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("warning: spans are not exported: telemetry.otlp_endpoint {endpoint}: {e}");
            return None;
        }
    };
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build();
    let tracer = provider.tracer("pvefleet");
    if TRACER.set(provider).is_err() {
        return None;
    }
    Some(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Whether spans are exported.
pub fn exporting() -> bool {
    TRACER.get().is_some()
}

/// Sends the spans not yet exported and stops the exporter; call once, at the end of the
/// process, outside the async runtime (it waits for the export).
pub fn shutdown() {
    if let Some(p) = TRACER.get()
        && let Err(e) = p.shutdown()
    {
        eprintln!("warning: the last spans may not have been exported: {e}");
    }
}

/// Makes `span` (just created, not yet entered) the child of `parent`, the sender's span from
/// a `traceparent`, or a new root without one, and answers its own context: the `traceparent`
/// of what it sends. `None` when spans are not exported (the caller keeps its own ids).
pub fn adopt(span: &tracing::Span, parent: Option<TraceContext>) -> Option<TraceContext> {
    if !exporting() {
        return None;
    }
    let cx = match parent {
        Some(p) => opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(p.trace_id.to_be_bytes()),
            SpanId::from_bytes(p.span_id.to_be_bytes()),
            if p.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        )),
        None => opentelemetry::Context::new(),
    };
    let _ = span.set_parent(cx);
    let own = span.context();
    let sc = own.span().span_context().clone();
    sc.is_valid().then(|| TraceContext {
        trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
        sampled: sc.is_sampled(),
    })
}

/// The process's Prometheus handle, installing the recorder on first use.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "A metrics recorder is already installed; /metrics will be empty.");
                None
            }
        })
        .as_ref()
}
