//! Trace context across the bus, through the OpenTelemetry propagator.
//!
//! One saga is one trace: the HTTP request's span is the root, the outbox row keeps the
//! context of the span that wrote it, the relay's publish span is a child of that context
//! and puts its own into the message's `traceparent` header, the consumer's handling span
//! is a child of the publish, and the events a handler emits are written under the
//! handling span. Contexts are read and written only by the globally installed
//! propagator (W3C trace context), never formatted by hand.

use std::collections::HashMap;

use lapin::BasicProperties;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::envelope::{TRACEPARENT_HEADER, header_str};

/// Header carrying vendor-specific trace state next to `traceparent` (W3C).
pub(crate) const TRACESTATE_HEADER: &str = "tracestate";

/// The trace context of `span` as a `traceparent` value, or `None` when the span is not
/// part of a trace (no OpenTelemetry layer installed, or the span is filtered out).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier.remove(TRACEPARENT_HEADER)
}

/// The trace context of the span the caller runs in, for an outbox row written there.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// Makes `span` a child of the context in `carrier` (`traceparent`, `tracestate`: HTTP
/// headers, say). A missing or malformed context leaves the span where it is (a new trace
/// when it is a root).
pub fn continue_trace(span: &tracing::Span, carrier: &dyn opentelemetry::propagation::Extractor) {
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(carrier));
    let valid = opentelemetry::trace::TraceContextExt::span(&parent)
        .span_context()
        .is_valid();
    if valid && let Err(e) = span.set_parent(parent) {
        tracing::debug!(error = %e, "the span keeps no parent");
    }
}

/// Makes `span` a child of a stored `traceparent` (an outbox row's).
pub(crate) fn continue_from_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(tp) = traceparent {
        continue_trace(
            span,
            &HashMap::from([(TRACEPARENT_HEADER.to_owned(), tp.to_owned())]),
        );
    }
}

/// Makes `span` a child of the trace context a message carries in its headers.
pub(crate) fn continue_from_message(span: &tracing::Span, properties: &BasicProperties) {
    let carrier: HashMap<String, String> = [TRACEPARENT_HEADER, TRACESTATE_HEADER]
        .into_iter()
        .filter_map(|h| header_str(properties, h).map(|v| (h.to_owned(), v)))
        .collect();
    continue_trace(span, &carrier);
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn a_child_span_keeps_the_trace_and_gets_its_own_span_id() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
            let span = tracing::info_span!("handling");
            continue_from_traceparent(&span, Some(incoming));
            let own = traceparent_of(&span).unwrap();
            assert!(
                own.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
                "{own}"
            );
            assert_ne!(own, incoming);

            let root = tracing::info_span!("root");
            continue_from_traceparent(&root, Some("junk"));
            let fresh = traceparent_of(&root).unwrap();
            assert!(
                !fresh.contains("0af7651916cd43dd8448eb211c80319c"),
                "{fresh}"
            );
        });
    }
}
