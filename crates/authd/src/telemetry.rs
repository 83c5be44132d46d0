//! Logs and traces. Logs go to stderr (text, or JSON with
//! `AUTHD_LOG_FORMAT=json`), filtered by `RUST_LOG`. When
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set, spans are also exported over OTLP HTTP/protobuf (`{endpoint}/v1/traces`)
//! in batches, and incoming W3C `traceparent` headers are honoured. The other
//! standard `OTEL_*` variables (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`, ...) are read by the
//! OpenTelemetry SDK itself.

use std::time::Duration;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// What must be flushed at exit.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs the global subscriber. Call inside the Tokio runtime: the span
/// exporter runs on it.
pub fn init(log_json: bool, otel_traces: bool) -> anyhow::Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if log_json { fmt.json().flatten_event(true).boxed() } else { fmt.boxed() };
    let mut provider = None;
    let otel = if otel_traces {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build()
            .context("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the OTLP exporter")?;
        let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
        let p = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(Resource::builder().with_service_name("authd").build())
            .build();
        let tracer = p.tracer("authd");
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        provider = Some(p);
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    } else {
        None
    };
    tracing_subscriber::registry().with(filter).with(fmt).with(otel).try_init().context("cannot install logging")?;
    Ok(Telemetry { provider })
}

impl Telemetry {
    /// Exports the spans still buffered, bounded in time (the pod is being
    /// stopped; a collector that does not answer must not hold it).
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else { return };
        // The SDK blocks while it flushes; keep that off the async workers.
        let done = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(Duration::from_secs(5)));
        match tokio::time::timeout(Duration::from_secs(6), done).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("authd: flushing traces failed: {e}"),
            _ => eprintln!("authd: flushing traces timed out"),
        }
    }
}
