//! The HTTP edge every service shares: paging, the JSON answers to unknown routes, request
//! metrics, and the operational routes `/healthz`, `/metrics` and `/messages` (the error
//! type and the JSON body extractor are in [`crate::api_error`]).

use std::sync::OnceLock;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;

use crate::api_error::ApiError;
use crate::health::Health;

/// `?after=<id>&limit=N`: one page of a list in id order (keyset paging, so a page costs
/// the same however deep it is).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Only entries after this id, in id order.
    pub after: Option<uuid::Uuid>,
    /// Page size, 1 to 1000 (default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

impl Page {
    /// The page size: [`MAX_PAGE`] unless asked, at most that.
    pub fn limit(&self) -> Result<i64, ApiError> {
        check_limit(self.limit.unwrap_or(MAX_PAGE))
    }
}

/// `?after=<key>&limit=N`: one page of a list in the order of a text key (a SKU, a
/// customer id), keyset paging as [`Page`].
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeyPage {
    /// Only entries whose key sorts after this one (at most 128 characters).
    #[param(max_length = 128, pattern = "^[^\\x00]*$")]
    pub after: Option<String>,
    /// Page size, 1 to 1000 (default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

impl KeyPage {
    /// The key to start after ("" for the first page): 400 when it is longer than any key
    /// or holds a NUL, which the database cannot compare.
    pub fn after(&self) -> Result<&str, ApiError> {
        let after = self.after.as_deref().unwrap_or("");
        if after.chars().count() > 128 || after.contains('\0') {
            return Err(ApiError::bad_request(
                "invalid_after",
                "after must be a key of at most 128 characters, without NUL",
            ));
        }
        Ok(after)
    }

    /// The page size, as [`Page::limit`].
    pub fn limit(&self) -> Result<i64, ApiError> {
        check_limit(self.limit.unwrap_or(MAX_PAGE))
    }
}

/// The largest page a list endpoint answers.
pub(crate) const MAX_PAGE: i64 = 1000;

/// `limit` unless it is outside 1..=[`MAX_PAGE`] (400).
pub fn check_limit(limit: i64) -> Result<i64, ApiError> {
    check_limit_up_to(limit, MAX_PAGE)
}

/// `limit` unless it is outside 1..=`max` (400).
pub fn check_limit_up_to(limit: i64, max: i64) -> Result<i64, ApiError> {
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be 1 to {max}"),
        ))
    }
}

/// Middleware answering every error in the contract's JSON shape. Handlers already do, but
/// axum's own rejections (an undecodable path segment, a query string that does not parse)
/// and the timeout layer answer plain text or nothing; their text becomes the message.
pub(crate) async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_else(|e| format!("the error body could not be read: {e}"));
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "unavailable",
        _ => "bad_request",
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    ApiError::new(status, code, message).into_response()
}

/// The recorder behind `/metrics`, installed once per process.
pub(crate) fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    // Real histograms (not summaries), so dashboards can aggregate quantiles across replicas.
    const BUCKETS: [f64; 16] = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        120.0,
    ];
    HANDLE
        .get_or_init(|| {
            let builder = || {
                PrometheusBuilder::new()
                    .set_buckets(&BUCKETS)
                    .unwrap_or_else(|_| PrometheusBuilder::new())
            };
            builder()
                .install_recorder()
                .unwrap_or_else(|_| builder().build_recorder().handle())
        })
        .clone()
}

/// `/healthz` and `/metrics`, plus the JSON 404/405 answers, around a service's own routes.
pub(crate) fn with_ops_routes(api: Router, health: Health) -> Router {
    let metrics = metrics_handle();
    let ops = Router::new()
        .route("/healthz", get(healthz))
        .route("/healthz/live", get(crate::health::live))
        .route("/healthz/ready", get(crate::health::ready))
        .route("/messages/{correlation_id}", get(messages))
        .with_state(health)
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        );
    api.merge(ops)
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method",
            )
        })
}

/// `GET /healthz`: 200 only when the database and every broker link are up.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses(
        (status = 200, description = "Database and broker reachable", body = crate::api_schema::HealthReport),
        (status = 503, description = "The database or a broker link is down, or the service drains (status `draining`)", body = crate::api_schema::HealthReport),
    ))]
async fn healthz(State(health): State<Health>) -> Response {
    let (ok, body) = health.check().await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /messages/{correlation_id}`: what this service consumed (inbox) and emitted
/// (outbox) about one saga, for `sagactl trace`.
#[utoipa::path(get, path = "/messages/{correlation_id}", tag = "operations",
    params(("correlation_id" = String, Path, description = "The saga id (the order id), or an operator event's SKU or customer")),
    responses(
        (status = 200, description = "What this service consumed and emitted about the saga", body = crate::api_schema::SagaMessages),
        (status = 401, description = "No valid bearer token", body = crate::api_schema::ErrorBody),
        (status = 403, description = "The caller is not an operator", body = crate::api_schema::ErrorBody),
    ))]
async fn messages(
    State(health): State<Health>,
    caller: crate::auth::Caller,
    axum::extract::Path(correlation_id): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_operator()?;
    // No message can be about an id with a NUL (the database could not store one): the
    // answer is known without asking it, which could not even compare one.
    if correlation_id.contains('\0') {
        return Ok(Json(
            json!({"correlation_id": correlation_id, "consumed": [], "emitted": []}),
        ));
    }
    let consumed = messaging::inbox::for_correlation(&health.pool, &correlation_id).await?;
    let emitted = messaging::outbox::for_correlation(&health.pool, &correlation_id).await?;
    Ok(Json(
        json!({"correlation_id": correlation_id, "consumed": consumed, "emitted": emitted}),
    ))
}

/// Counts and times every request by method, route template and status
/// (`saga_http_requests_total`, `saga_http_request_duration_seconds`).
pub(crate) async fn record_request(req: Request, next: axum::middleware::Next) -> Response {
    let method = crate::edge::method_label(req.method());
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("saga_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("saga_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
