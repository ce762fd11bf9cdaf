//! `GET /audit`: the service's record of hands on the system, newest first, a page at a
//! time, for operators only. There is no route that writes it.

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use messaging::audit::{self, AuditQuery, actions};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::OperatorState;
use super::dead_letter::parse_time;
use crate::ApiError;
use crate::auth::Caller;

pub(super) fn router(state: OperatorState) -> Router {
    Router::new()
        .route("/audit", get(list_audit))
        .with_state(state)
}

/// The filters and page of `GET /audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Who acted (a JWT `sub`, or an operator's name over AMQP).
    #[param(max_length = 256, pattern = "^[^\\x00]*$")]
    pub actor: Option<String>,
    /// stock_adjustment, deposit, cancel, replay, edit or purge.
    #[param(pattern = "^(stock_adjustment|deposit|cancel|replay|edit|purge)?$")]
    pub action: Option<String>,
    /// An id the record names: an order, customer, SKU or message id.
    #[param(max_length = 256, pattern = "^[^\\x00]*$")]
    pub subject: Option<String>,
    /// At or after this time (RFC 3339).
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Before this time (RFC 3339).
    #[param(format = DateTime)]
    pub until: Option<String>,
    /// Records older than this id: the `next_before` of the previous page.
    #[param(minimum = 1)]
    pub before: Option<i64>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// One record of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// The service that recorded it (this one).
    pub service: String,
    pub at: DateTime<Utc>,
    pub actor: String,
    /// http or amqp.
    pub via: String,
    /// Over AMQP: the broker user that published the message.
    pub broker_user: Option<String>,
    pub action: String,
    pub subjects: Vec<String>,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    /// running, or how it ended.
    pub outcome: String,
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One page of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub records: Vec<AuditEntry>,
    /// The `before` of the next (older) page, when there may be one.
    pub next_before: Option<i64>,
}

fn text(name: &str, v: Option<String>) -> Result<Option<String>, ApiError> {
    match v.filter(|s| !s.is_empty()) {
        Some(s) if s.chars().count() > 256 || s.contains('\0') => Err(ApiError::bad_request(
            "invalid_query",
            format!("{name} must be at most 256 characters, without NUL"),
        )),
        other => Ok(other),
    }
}

#[utoipa::path(get, path = "/audit", tag = "audit",
    params(AuditParams),
    responses(
        (status = 200, description = "The changes made by hand on this service, newest first", body = AuditPage),
        (status = 400, description = "A bad filter or page", body = crate::api_schema::ErrorBody),
        (status = 401, description = "No valid bearer token", body = crate::api_schema::ErrorBody),
        (status = 403, description = "The caller is not an operator", body = crate::api_schema::ErrorBody),
    ))]
pub async fn list_audit(
    State(state): State<OperatorState>,
    caller: Caller,
    Query(p): Query<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    caller.require_operator()?;
    let limit = crate::http::check_limit_up_to(p.limit.unwrap_or(50), 500)?;
    let action = p.action.filter(|a| !a.is_empty());
    if let Some(a) = &action
        && !actions::ALL.contains(&a.as_str())
    {
        return Err(ApiError::bad_request(
            "invalid_action",
            format!("action must be one of {}", actions::ALL.join(", ")),
        ));
    }
    if p.before.is_some_and(|b| b < 1) {
        return Err(ApiError::bad_request(
            "invalid_before",
            "before must be a record id (1 or more)",
        ));
    }
    let q = AuditQuery {
        actor: text("actor", p.actor)?,
        action,
        subject: text("subject", p.subject)?,
        since: parse_time("since", p.since.as_deref())?,
        until: parse_time("until", p.until.as_deref())?,
        before: p.before,
        limit,
    };
    let mut conn = state.pool().acquire().await?;
    let rows = audit::list(&mut conn, &q).await?;
    let next_before = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let records = rows
        .into_iter()
        .map(|r| AuditEntry {
            id: r.id,
            service: state.service().to_owned(),
            at: r.at,
            actor: r.actor,
            via: r.via,
            broker_user: r.broker_user,
            action: r.action,
            subjects: r.subjects,
            detail: r.detail,
            outcome: r.outcome,
            result: r.result,
            finished_at: r.finished_at,
        })
        .collect();
    Ok(Json(AuditPage {
        records,
        next_before,
    }))
}
