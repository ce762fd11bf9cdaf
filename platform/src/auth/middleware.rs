//! The HTTP side of identity: the middleware that verifies the bearer token of every
//! request but the open ones, the extractor that hands handlers the [`Caller`], and the
//! 401 for a token that is missing or refused.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::ApiError;

use super::caller::Caller;
use super::verify::{Authenticator, TokenError};

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Put there by `require_bearer`; a route outside it has no caller.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| unauthorized("a bearer token is required"))
    }
}

/// 401 with `WWW-Authenticate: Bearer` and the contract's error body.
fn unauthorized(message: impl Into<String>) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"order-saga\""),
    );
    response
}

/// Whether `path` is open without a token: the probes, the metrics scrape, and the API
/// reference page with its assets (which hold no data; see [`crate::openapi`]).
pub fn is_open(path: &str) -> bool {
    path == "/healthz"
        || path.starts_with("/healthz/")
        || path == "/metrics"
        || crate::api_schema::is_open_page(path)
}

/// Middleware: verifies the bearer token of every request but the open ones and hands the
/// [`Caller`] to the handlers; anything wrong with the token is a 401.
pub(crate) async fn require_bearer(
    State(auth): State<Authenticator>,
    mut request: Request,
    next: Next,
) -> Response {
    if is_open(request.uri().path()) {
        return next.run(request).await;
    }
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let verified = match token {
        Some(token) => auth.verify(token).await,
        None if auth.is_off() => auth.verify("").await,
        None => Err(TokenError::Missing),
    };
    match verified {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => unauthorized(e.to_string()),
    }
}
