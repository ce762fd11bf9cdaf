//! Logs and traces.
//!
//! Logs: human-readable by default, one JSON object per line with `SAGA_LOG_FORMAT=json`;
//! the filter comes from `SAGA_LOG` (or `RUST_LOG`), `info` by default.
//!
//! Traces: every HTTP request, outbox publish and handled message is a span, and one saga
//! is one trace (see `messaging::trace`). Spans always carry a trace context, so the
//! `traceparent` headers chain even when nothing is exported. When the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the spans are also exported over OTLP/HTTP
//! (protobuf) with the standard `OTEL_*` settings, under the service's name.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Keeps the trace exporter alive; dropping it flushes the spans not yet sent.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("trace export did not flush at shutdown: {e}");
        }
    }
}

/// Installs logging, and OTLP trace export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub fn init(service: &'static str) -> Telemetry {
    let filter = std::env::var("SAGA_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,sqlx=warn,lapin=warn".to_owned());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if std::env::var("SAGA_LOG_FORMAT").as_deref() == Ok("json") {
        fmt.json().with_current_span(true).boxed()
    } else {
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed()
    };
    let (provider, otel_error) = match otlp_provider(service) {
        Ok(p) => (p, None),
        Err(e) => (None, Some(e)),
    };
    // Without an exporter the spans still get ids, so trace contexts propagate.
    let tracer = provider.as_ref().map_or_else(
        || SdkTracerProvider::builder().build().tracer(service),
        |p| p.tracer(service),
    );
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        // The project's own spans (requests, publishes, handled messages); the libraries'
        // spans and every log event stay out.
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            m.is_span() && is_own_target(m.target())
        }));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    if installed.is_err() {
        // Only a test that starts several services in one process gets here: the first
        // subscriber stays and serves them all.
        tracing::debug!("a tracing subscriber was already installed; keeping it");
    }
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    if let Some(e) = otel_error {
        tracing::warn!(error = %e, "OTLP trace export is off: the exporter could not be built");
    }
    Telemetry { provider }
}

/// Whether a span comes from one of the project's crates.
fn is_own_target(target: &str) -> bool {
    const OWN: [&str; 6] = [
        "messaging",
        "events",
        "platform",
        "order_svc",
        "inventory_svc",
        "payment_svc",
    ];
    OWN.iter().any(|own| {
        target
            .strip_prefix(own)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

fn otlp_provider(service: &'static str) -> anyhow::Result<Option<SdkTracerProvider>> {
    if std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").map_or(true, |v| v.trim().is_empty()) {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}
