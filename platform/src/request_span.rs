//! Every HTTP request is a span: the root of a saga's trace, or a child of the caller's
//! when the request carries a W3C `traceparent`. Events written to the outbox while the
//! request is handled keep this span's context (see `messaging::trace`).

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// Runs the request inside a server span named after its method and route template (never
/// the raw path, which a client controls).
pub(crate) async fn trace_request(req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    messaging::trace::continue_trace(&span, &opentelemetry_http::HeaderExtractor(req.headers()));
    let response = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}
