//! Limits at the HTTP edge that hold for the whole process: one concurrency limit shared by
//! every route, the time a request may take, and metric labels from closed sets.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

/// The label for an HTTP method: a standard method's name, or `other`. A client may send
/// any token as a method; each new one would otherwise become a time series.
pub(crate) fn method_label(method: &Method) -> &'static str {
    static KNOWN: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    KNOWN
        .iter()
        .find(|m| *m == method)
        .map_or("other", |m| m.as_str())
}

/// Requests handled at once by the whole process. `Router::layer` wraps every route on its
/// own, so a tower limit layer there would be one limit per route; this middleware shares
/// one semaphore. It sits inside the request timeout, so a request waiting for a slot is
/// answered 408 when its time is up instead of waiting without end.
pub(crate) async fn limit_concurrency(
    State(slots): State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    // The semaphore is never closed, so acquiring fails never; answer anyway if it does.
    let _slot = slots.acquire().await;
    next.run(request).await
}

/// Longest time one HTTP request may take before it is answered 408 (the dead-letter
/// routes have [`DLQ_REQUEST_TIMEOUT`]).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest time a request to the dead-letter routes (`/dlq…`) may take: they read the
/// whole dead-letter queue, whose size nothing bounds (100,000 messages took 5–10 s in a
/// debug build on a busy 2-core machine).
pub const DLQ_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Answers 408 for a request past its time: [`REQUEST_TIMEOUT`], or
/// [`DLQ_REQUEST_TIMEOUT`] on the dead-letter routes.
pub(crate) async fn time_limit(request: Request, next: Next) -> Response {
    let limit = if request.uri().path().starts_with("/dlq") {
        DLQ_REQUEST_TIMEOUT
    } else {
        REQUEST_TIMEOUT
    };
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => StatusCode::REQUEST_TIMEOUT.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        let made_up = Method::from_bytes(b"FROB123").unwrap();
        assert_eq!(method_label(&made_up), "other");
    }
}
