//! Limits at the HTTP edge that hold for the whole process: one concurrency limit shared by
//! every route, and metric labels from closed sets.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
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
