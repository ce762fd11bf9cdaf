//! The explorer's dead-letter and audit API: each call is passed to the owning service's
//! operator API (`/dlq…`, `/audit`) with sagactl's identity, so the service does the work
//! and records who asked; the explorer itself never moves a dead letter.
//!
//! - `GET /api/dlq`: every service's groups (cause, type, count, first and last seen, an
//!   example); a service that cannot be reached is shown with its error, not hidden.
//! - `GET /api/dlq/{queue}/messages?…`: a page of the dead letters a filter matches.
//! - `POST /api/dlq/{queue}/redrive|purge|edit`: the service's answer as it is (a count
//!   for a dry run, a job otherwise, a 4xx with its code on a refusal).
//! - `GET /api/dlq/{queue}/jobs/{id}`: a job, for the page's progress bar.
//! - `GET /api/audit?…`: the services' audit records merged newest first, paged.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, Explorer, given, number};
use crate::commands::audit;
use crate::commands::dlq::api::{self as dlq, service};
use sagactl::context::{Context, Service, path};
use sagactl::dead_letters::{AuditCursor, Filter, owning_service, parse_time, with_query};

/// Most dead letters or audit records one page may ask for.
const MAX_PAGE: u32 = 500;
const DEFAULT_PAGE: u32 = 50;

fn queue_service(queue: &str) -> Result<Service, ApiError> {
    service(queue).map_err(|e| ApiError::not_found(e.to_string()))
}

/// A time given by the page (an instant or an age ago) as RFC 3339, or a 400 naming it.
fn time(value: &Option<String>, name: &str) -> Result<Option<String>, ApiError> {
    given(value)
        .map(|v| parse_time(v, chrono::Utc::now()))
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_time", format!("{name}: {e}")))
}

/// A filter as the page sends it: empty fields mean "any", times may be ages.
fn checked(filter: Filter) -> Result<Filter, ApiError> {
    let text = |v: Option<String>| given(&v).map(str::to_owned);
    Ok(Filter {
        since: time(&filter.since, "since")?,
        until: time(&filter.until, "until")?,
        event_type: text(filter.event_type),
        cause: text(filter.cause),
        order_id: text(filter.order_id),
        customer_id: text(filter.customer_id),
        message_id: text(filter.message_id),
    })
}

/// The service's answer passed on as it is: its 2xx or 4xx status and body. A 5xx (or an
/// answer that is not JSON) is the explorer's gateway failing: 502 with what it said.
async fn forward(
    ctx: &Context,
    service: Service,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Response, ApiError> {
    let (status, answer) = ctx.call(service, method, path, body, &[]).await?;
    let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    if status.is_server_error() || answer.is_null() {
        return Err(ApiError {
            status: StatusCode::BAD_GATEWAY,
            code: "service_failed",
            message: format!("{} answered {status}: {answer}", service.name()),
        });
    }
    Ok((status, Json(answer)).into_response())
}

/// `GET /api/dlq`: each service's dead letters grouped by cause and type.
pub(super) async fn groups(State(app): State<Explorer>) -> ApiResult {
    let mut queues = Vec::new();
    for s in Service::ALL {
        let queue = format!("{}.dlq", s.name());
        let entry = match dlq::groups(&app.ctx, s).await {
            Ok(mut g) => {
                g["service"] = json!(s.name());
                g
            }
            Err(e) => json!({"service": s.name(), "queue": queue, "error": format!("{e:#}")}),
        };
        queues.push(entry);
    }
    Ok(Json(json!({ "queues": queues })))
}

/// The listing's query: the filter's fields and the page, each as text so that a bad one
/// is answered with a JSON error naming it.
#[derive(Debug, Default, Deserialize)]
pub(super) struct MessagesQuery {
    #[serde(flatten)]
    filter: Filter,
    offset: Option<String>,
    limit: Option<String>,
}

/// `GET /api/dlq/{queue}/messages`: a page of the dead letters the filter matches.
pub(super) async fn messages(
    State(app): State<Explorer>,
    Path(queue): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> Result<Response, ApiError> {
    let service = queue_service(&queue)?;
    let filter = checked(q.filter)?;
    let offset = number(&q.offset, "offset", 0)?;
    let limit = number(&q.limit, "limit", DEFAULT_PAGE)?;
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_page",
            format!("limit must be 1 to {MAX_PAGE}"),
        ));
    }
    let (offset, limit) = (offset.to_string(), limit.to_string());
    let mut pairs = filter.pairs();
    pairs.extend([("offset", offset.as_str()), ("limit", limit.as_str())]);
    let path = with_query("/dlq/messages", &pairs);
    forward(&app.ctx, service, reqwest::Method::GET, &path, None).await
}

/// A redrive or a purge as the page asks it.
#[derive(Debug, Deserialize)]
pub(super) struct BulkRequest {
    #[serde(default)]
    filter: Filter,
    #[serde(default)]
    dry_run: bool,
    /// A purge's confirmation (the page asked the operator); the service refuses a purge
    /// without it.
    #[serde(default)]
    confirm: bool,
}

/// `POST /api/dlq/{queue}/redrive`.
pub(super) async fn redrive(
    State(app): State<Explorer>,
    Path(queue): Path<String>,
    Json(request): Json<BulkRequest>,
) -> Result<Response, ApiError> {
    let service = queue_service(&queue)?;
    let body = json!({"filter": checked(request.filter)?, "dry_run": request.dry_run});
    forward(
        &app.ctx,
        service,
        reqwest::Method::POST,
        "/dlq/redrive",
        Some(&body),
    )
    .await
}

/// `POST /api/dlq/{queue}/purge`.
pub(super) async fn purge(
    State(app): State<Explorer>,
    Path(queue): Path<String>,
    Json(request): Json<BulkRequest>,
) -> Result<Response, ApiError> {
    let service = queue_service(&queue)?;
    let body = json!({
        "filter": checked(request.filter)?,
        "dry_run": request.dry_run,
        "confirm": request.confirm,
    });
    forward(
        &app.ctx,
        service,
        reqwest::Method::POST,
        "/dlq/purge",
        Some(&body),
    )
    .await
}

#[derive(Debug, Deserialize)]
pub(super) struct EditRequest {
    message_id: String,
    payload: Value,
}

/// `POST /api/dlq/{queue}/edit`: a corrected copy of one dead letter.
pub(super) async fn edit(
    State(app): State<Explorer>,
    Path(queue): Path<String>,
    Json(request): Json<EditRequest>,
) -> Result<Response, ApiError> {
    let service = queue_service(&queue)?;
    if !request.payload.is_object() {
        return Err(ApiError::bad_request(
            "invalid_payload",
            "the corrected payload must be a JSON object",
        ));
    }
    let body = json!({"message_id": request.message_id, "payload": request.payload});
    forward(
        &app.ctx,
        service,
        reqwest::Method::POST,
        "/dlq/edit",
        Some(&body),
    )
    .await
}

/// `GET /api/dlq/{queue}/jobs/{id}`.
pub(super) async fn job(
    State(app): State<Explorer>,
    Path((queue, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let service = queue_service(&queue)?;
    let path = path(&["dlq", "jobs", &id]);
    forward(&app.ctx, service, reqwest::Method::GET, &path, None).await
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct AuditQuery {
    service: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    subject: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// Where the previous page ended (its `next`).
    before: Option<String>,
    limit: Option<String>,
}

/// `GET /api/audit`: as `sagactl audit --json`, `next` the `before` of the older page.
pub(super) async fn audit_log(
    State(app): State<Explorer>,
    Query(q): Query<AuditQuery>,
) -> ApiResult {
    let service = given(&q.service)
        .map(owning_service)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_service", e))?;
    let action = given(&q.action).map(str::to_owned);
    if let Some(a) = &action
        && !messaging::audit::actions::ALL.contains(&a.as_str())
    {
        return Err(ApiError::bad_request(
            "invalid_action",
            format!(
                "action is one of {}",
                messaging::audit::actions::ALL.join(", ")
            ),
        ));
    }
    let limit = number(&q.limit, "limit", DEFAULT_PAGE)?;
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_page",
            format!("limit must be 1 to {MAX_PAGE}"),
        ));
    }
    let cursor = given(&q.before)
        .map(AuditCursor::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_before", e))?;
    let query = audit::Query {
        service,
        actor: given(&q.actor).map(str::to_owned),
        action,
        subject: given(&q.subject).map(str::to_owned),
        since: time(&q.since, "since")?,
        until: time(&q.until, "until")?,
    };
    Ok(Json(audit::read(&app.ctx, &query, limit, cursor).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pages_filter_drops_empty_fields_and_reads_ages() {
        let f = checked(Filter {
            cause: Some(" ".into()),
            event_type: Some("OrderCreated".into()),
            since: Some("15m".into()),
            ..Filter::default()
        })
        .unwrap();
        assert_eq!(f.cause, None);
        assert_eq!(f.event_type.as_deref(), Some("OrderCreated"));
        assert!(f.since.is_some_and(|s| s.ends_with('Z')));
        let e = checked(Filter {
            until: Some("soon".into()),
            ..Filter::default()
        })
        .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.starts_with("until:"), "{}", e.message);
        assert_eq!(
            queue_service("bank").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
    }
}
