//! `/dlq…`: the service's dead-letter queue for operators: grouped by cause, listed with a
//! filter, redriven or purged (a dry run first if wished), one message corrected and
//! replayed, and the jobs that do it. Every action is recorded in the audit log with the
//! caller's `sub`.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use messaging::audit::{HandAction, Via, actions};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::OperatorState;
use super::dead_letter::{DeadLetter, Filter, Selection};
use super::jobs::{self, Job};
use super::runners;
use super::scan::Scan;
use crate::ApiError;
use crate::api_error::ApiJson;
use crate::auth::Caller;

/// Most dead letters one page lists.
const MAX_LIST: i64 = 500;

pub(super) fn router(state: OperatorState) -> Router {
    Router::new()
        .route("/dlq", get(summary))
        .route("/dlq/messages", get(list))
        .route("/dlq/redrive", post(redrive))
        .route("/dlq/purge", post(purge))
        .route("/dlq/edit", post(edit))
        .route("/dlq/jobs", get(list_jobs))
        .route("/dlq/jobs/{id}", get(show_job))
        .with_state(state)
}

/// The dead letters of one cause and event type.
#[derive(Debug, Serialize, ToSchema)]
pub struct Group {
    pub cause: String,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub count: u64,
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    /// The first dead letter of the group.
    pub example: DeadLetter,
}

/// The service's dead-letter queue by cause.
#[derive(Debug, Serialize, ToSchema)]
pub struct Summary {
    pub queue: String,
    /// Messages in the queue when it was read.
    pub messages: u32,
    /// Messages read (fewer when another reader held some).
    pub scanned: u32,
    /// Largest group first.
    pub groups: Vec<Group>,
}

fn broker_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(format!("the broker: {e}"))
}

#[utoipa::path(get, path = "/dlq", tag = "dead letters",
    responses(
        (status = 200, description = "The dead-letter queue grouped by cause and event type, with counts, first and last seen and an example of each", body = Summary),
        (status = 401, description = "No valid bearer token", body = crate::api_schema::ErrorBody),
        (status = 403, description = "The caller is not an operator", body = crate::api_schema::ErrorBody),
    ))]
pub async fn summary(
    State(state): State<OperatorState>,
    caller: Caller,
) -> Result<Json<Summary>, ApiError> {
    caller.require_operator()?;
    let mut scan = Scan::open(&state, "summary").await.map_err(broker_error)?;
    let mut groups: BTreeMap<(String, Option<String>), Group> = BTreeMap::new();
    while let Some(delivery) = scan.next().await.map_err(broker_error)? {
        let d = DeadLetter::describe(&delivery);
        let group = groups
            .entry((d.cause.clone(), d.event_type.clone()))
            .or_insert_with(|| Group {
                cause: d.cause.clone(),
                event_type: d.event_type.clone(),
                count: 0,
                first_seen: d.failed_at,
                last_seen: d.failed_at,
                example: d.clone(),
            });
        group.count += 1;
        group.first_seen = group.first_seen.min(d.failed_at).or(d.failed_at);
        group.last_seen = group.last_seen.max(d.failed_at);
    }
    let (messages, scanned) = (scan.total, scan.seen());
    scan.close().await;
    let mut groups: Vec<Group> = groups.into_values().collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.count));
    Ok(Json(Summary {
        queue: state.dead_letter_queue(),
        messages,
        scanned,
        groups,
    }))
}

/// `?offset=&limit=` over the dead letters a filter takes, in queue order.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Window {
    /// Skip this many matching dead letters.
    #[param(minimum = 0, maximum = 4294967295_u64)]
    pub offset: Option<u64>,
    /// At most this many, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u64>,
}

/// One page of the dead letters a filter takes.
#[derive(Debug, Serialize, ToSchema)]
pub struct Listing {
    pub queue: String,
    pub messages: u32,
    /// How many the filter takes in all.
    pub matched: u64,
    pub offset: u64,
    pub limit: u64,
    pub dead_letters: Vec<DeadLetter>,
}

#[utoipa::path(get, path = "/dlq/messages", tag = "dead letters",
    params(Filter, Window),
    responses(
        (status = 200, description = "One page of the dead letters the filter takes, in queue order, and how many it takes in all", body = Listing),
        (status = 400, description = "A time that is not RFC 3339, or limit out of range", body = crate::api_schema::ErrorBody),
        (status = 401, description = "No valid bearer token", body = crate::api_schema::ErrorBody),
        (status = 403, description = "The caller is not an operator", body = crate::api_schema::ErrorBody),
    ))]
pub async fn list(
    State(state): State<OperatorState>,
    caller: Caller,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Listing>, ApiError> {
    caller.require_operator()?;
    let (filter, window) = from_query(params)?;
    let selection = filter.select()?;
    let limit = window.limit.unwrap_or(50);
    crate::http::check_limit_up_to(i64::try_from(limit).unwrap_or(i64::MAX), MAX_LIST)?;
    let offset = window.offset.unwrap_or(0);
    let (messages, matched, dead_letters) = select(&state, &selection, offset, limit).await?;
    Ok(Json(Listing {
        queue: state.dead_letter_queue(),
        messages,
        matched,
        offset,
        limit,
        dead_letters,
    }))
}

/// The filter and window of a listing's query; 400 on a parameter it does not know (a
/// misspelt filter must not quietly list everything).
fn from_query(
    params: std::collections::HashMap<String, String>,
) -> Result<(Filter, Window), ApiError> {
    let (mut filter, mut window) = (
        Filter::default(),
        Window {
            offset: None,
            limit: None,
        },
    );
    let number = |name: &str, v: &str| {
        v.parse::<u64>().map_err(|_| {
            ApiError::bad_request("invalid_query", format!("{name} must be a whole number"))
        })
    };
    for (name, value) in params {
        match name.as_str() {
            "type" => filter.event_type = Some(value),
            "cause" => filter.cause = Some(value),
            "since" => filter.since = Some(value),
            "until" => filter.until = Some(value),
            "order_id" => filter.order_id = Some(value),
            "customer_id" => filter.customer_id = Some(value),
            "message_id" => filter.message_id = Some(value),
            "offset" => {
                let offset = number("offset", &value)?;
                if offset > u64::from(u32::MAX) {
                    return Err(ApiError::bad_request(
                        "invalid_query",
                        format!("offset must be at most {}", u32::MAX),
                    ));
                }
                window.offset = Some(offset);
            }
            "limit" => window.limit = Some(number("limit", &value)?),
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "unknown parameter {other:?}: the filters are type, cause, since, until, order_id, customer_id, message_id; paging is offset and limit"
                    ),
                ));
            }
        }
    }
    Ok((filter, window))
}

/// Counts what `selection` takes and keeps `limit` of them after `offset`.
async fn select(
    state: &OperatorState,
    selection: &Selection,
    offset: u64,
    limit: u64,
) -> Result<(u32, u64, Vec<DeadLetter>), ApiError> {
    let mut scan = Scan::open(state, "list").await.map_err(broker_error)?;
    let (mut matched, mut page) = (0u64, Vec::new());
    while let Some(delivery) = scan.next().await.map_err(broker_error)? {
        let d = DeadLetter::describe(&delivery);
        if selection.matches(&d) {
            if matched >= offset && (page.len() as u64) < limit {
                page.push(d);
            }
            matched += 1;
        }
    }
    let total = scan.total;
    scan.close().await;
    Ok((total, matched, page))
}

/// A redrive or a purge: which dead letters, and whether only to count them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Action {
    #[serde(default)]
    pub filter: Filter,
    /// Only say how many would be taken.
    #[serde(default)]
    pub dry_run: bool,
    /// Required (`true`) to purge: deleted dead letters cannot be brought back.
    #[serde(default)]
    pub confirm: bool,
}

/// What a dry run found.
#[derive(Debug, Serialize, ToSchema)]
pub struct DryRun {
    /// How many the action would take.
    pub matched: u64,
    /// Messages in the queue.
    pub messages: u32,
}

type Started = (StatusCode, Json<Value>);

fn subjects_of(filter: &Filter) -> Vec<String> {
    [&filter.order_id, &filter.customer_id, &filter.message_id]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
}

/// Runs a dry run, or opens the job of `action` and starts it in the background.
async fn start(
    state: OperatorState,
    caller: Caller,
    request: Action,
    action: &'static str,
) -> Result<Started, ApiError> {
    caller.require_operator()?;
    let selection = request.filter.select()?;
    if request.dry_run {
        let (messages, matched, _) = select(&state, &selection, 0, 0).await?;
        return Ok((StatusCode::OK, Json(json!(DryRun { matched, messages }))));
    }
    if action == actions::PURGE && !request.confirm {
        return Err(ApiError::conflict(
            "confirmation_required",
            "a purge deletes dead letters for good: send \"confirm\": true (a dry run says how many it would take)",
        ));
    }
    let filter = json!(selection.filter());
    let hand = HandAction {
        actor: caller.sub.clone(),
        via: Via::Http,
        broker_user: None,
        action,
        subjects: subjects_of(selection.filter()),
        detail: json!({"queue": state.dead_letter_queue(), "filter": filter}),
    };
    let kind = if action == actions::PURGE {
        "purge"
    } else {
        "redrive"
    };
    let job = jobs::open(state.pool(), kind, &hand, &filter).await?;
    let answer = json!(job);
    tokio::spawn(async move {
        let result = if action == actions::PURGE {
            runners::purge(&state, &job, &selection).await
        } else {
            runners::redrive(&state, &job, &selection).await
        };
        runners::finish(&state, &job, result).await;
    });
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

#[utoipa::path(post, path = "/dlq/redrive", tag = "dead letters",
    request_body = Action,
    responses(
        (status = 200, description = "Dry run: how many dead letters the filter takes", body = DryRun),
        (status = 202, description = "The redrive started; follow it at /dlq/jobs/{id}", body = Job),
        (status = 400, description = "A bad body or filter", body = crate::api_schema::ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = crate::api_schema::ErrorBody),
        (status = 401, description = "No valid bearer token", body = crate::api_schema::ErrorBody),
        (status = 403, description = "The caller is not an operator", body = crate::api_schema::ErrorBody),
    ))]
pub async fn redrive(
    State(state): State<OperatorState>,
    caller: Caller,
    ApiJson(body): ApiJson<Value>,
) -> Result<Started, ApiError> {
    start(state, caller, object_body(body)?, actions::REPLAY).await
}

#[utoipa::path(post, path = "/dlq/purge", tag = "dead letters",
    request_body = Action,
    responses(
        (status = 200, description = "Dry run: how many dead letters the filter takes", body = DryRun),
        (status = 202, description = "The purge started; follow it at /dlq/jobs/{id}", body = Job),
        (status = 400, description = "A bad body or filter", body = crate::api_schema::ErrorBody),
        (status = 409, description = "`confirmation_required`: a purge needs `\"confirm\": true`", body = crate::api_schema::ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = crate::api_schema::ErrorBody),
        (status = 401, description = "No valid bearer token", body = crate::api_schema::ErrorBody),
        (status = 403, description = "The caller is not an operator", body = crate::api_schema::ErrorBody),
    ))]
pub async fn purge(
    State(state): State<OperatorState>,
    caller: Caller,
    ApiJson(body): ApiJson<Value>,
) -> Result<Started, ApiError> {
    start(state, caller, object_body(body)?, actions::PURGE).await
}

/// `T` from a JSON body that must be an object, as must its `filter` if it has one (serde
/// would read a struct from an array too, and an array filter would take everything).
fn object_body<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, ApiError> {
    let objects = body.is_object() && body.get("filter").is_none_or(Value::is_object);
    if !objects {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the body must be a JSON object (and its filter one too)",
        ));
    }
    serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("a bad body: {e}")))
}

/// A dead letter to replay with a corrected payload.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Edit {
    /// The dead letter's message id.
    pub message_id: Uuid,
    /// The corrected payload (the envelope's `payload`).
    #[schema(value_type = Object)]
    pub payload: Value,
}

#[utoipa::path(post, path = "/dlq/edit", tag = "dead letters",
    request_body = Edit,
    responses(
        (status = 202, description = "The corrected message (a new message id, `causation_id` the original's) was started; the original stays until it is applied", body = Job),
        (status = 400, description = "A bad body: the payload must be an object", body = crate::api_schema::ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = crate::api_schema::ErrorBody),
        (status = 401, description = "No valid bearer token", body = crate::api_schema::ErrorBody),
        (status = 403, description = "The caller is not an operator", body = crate::api_schema::ErrorBody),
        (status = 404, description = "No such dead letter", body = crate::api_schema::ErrorBody),
        (status = 409, description = "The dead letter's body is not an envelope: there is no payload to correct", body = crate::api_schema::ErrorBody),
    ))]
pub async fn edit(
    State(state): State<OperatorState>,
    caller: Caller,
    ApiJson(body): ApiJson<Value>,
) -> Result<Started, ApiError> {
    caller.require_operator()?;
    let request: Edit = object_body(body)?;
    if !request.payload.is_object() {
        return Err(ApiError::bad_request(
            "invalid_payload",
            "payload must be a JSON object: the corrected payload of the event",
        ));
    }
    let original_id = request.message_id.to_string();
    let original = runners::find(&state, &original_id)
        .await
        .map_err(broker_error)?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no dead letter {original_id} in {}",
                state.dead_letter_queue()
            ))
        })?;
    let mut envelope: Value = serde_json::from_slice::<Value>(&original.body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| {
            ApiError::conflict(
                "not_an_envelope",
                "the dead letter's body is not an envelope, so it has no payload to correct; purge it",
            )
        })?;
    let corrected_id = Uuid::now_v7();
    let old_payload = envelope.get("payload").cloned().unwrap_or(Value::Null);
    let diff = json!(jobs::diff(&old_payload, &request.payload));
    envelope["message_id"] = json!(corrected_id);
    envelope["causation_id"] = json!(request.message_id);
    envelope["payload"] = request.payload;
    let d = &original.dead_letter;
    let mut subjects = vec![original_id.clone(), corrected_id.to_string()];
    subjects.extend(d.order_id.iter().chain(&d.customer_id).cloned());
    let hand = HandAction {
        actor: caller.sub.clone(),
        via: Via::Http,
        broker_user: None,
        action: actions::EDIT,
        subjects,
        detail: json!({
            "queue": state.dead_letter_queue(),
            "message_id": original_id,
            "corrected_message_id": corrected_id,
            "type": d.event_type,
            "diff": diff,
        }),
    };
    let filter = json!({"message_id": original_id});
    let job = jobs::open(state.pool(), "edit", &hand, &filter).await?;
    let props = original
        .properties
        .clone()
        .with_message_id(corrected_id.to_string().into());
    let body = serde_json::to_vec(&envelope).unwrap_or_default();
    let corrected = runners::replay_copy(state.service(), &props, body, job.id);
    let answer = json!(job);
    tokio::spawn(async move {
        let result = runners::edit(&state, &job, &original, corrected, corrected_id, &diff).await;
        runners::finish(&state, &job, result).await;
    });
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// `?limit=`: how many of the newest jobs.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Recent {
    /// 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

/// The newest jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
}

#[utoipa::path(get, path = "/dlq/jobs", tag = "dead letters",
    params(Recent),
    responses(
        (status = 200, description = "The newest dead-letter jobs of this service", body = JobList),
        (status = 400, description = "limit out of range", body = crate::api_schema::ErrorBody),
        (status = 401, description = "No valid bearer token", body = crate::api_schema::ErrorBody),
        (status = 403, description = "The caller is not an operator", body = crate::api_schema::ErrorBody),
    ))]
pub async fn list_jobs(
    State(state): State<OperatorState>,
    caller: Caller,
    Query(recent): Query<Recent>,
) -> Result<Json<JobList>, ApiError> {
    caller.require_operator()?;
    let limit = crate::http::check_limit_up_to(recent.limit.unwrap_or(20), 100)?;
    Ok(Json(JobList {
        jobs: jobs::recent(state.pool(), limit).await?,
    }))
}

#[utoipa::path(get, path = "/dlq/jobs/{id}", tag = "dead letters",
    params(("id" = Uuid, Path, description = "The job id")),
    responses(
        (status = 200, description = "The job: how far it got and how its messages ended", body = Job),
        (status = 401, description = "No valid bearer token", body = crate::api_schema::ErrorBody),
        (status = 403, description = "The caller is not an operator", body = crate::api_schema::ErrorBody),
        (status = 404, description = "No such job", body = crate::api_schema::ErrorBody),
    ))]
pub async fn show_job(
    State(state): State<OperatorState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    caller.require_operator()?;
    let not_found = || ApiError::not_found(format!("no dead-letter job {id:?}"));
    let uuid = Uuid::parse_str(&id).map_err(|_| not_found())?;
    jobs::load(state.pool(), uuid)
        .await?
        .map(Json)
        .ok_or_else(not_found)
}
