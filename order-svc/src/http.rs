//! order-svc's HTTP API: place, read, list and cancel orders.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use events::catalog::OrderItem;
use messaging::audit::{self, HandAction, Via};
use messaging::outbox::{Emitter, Outbox};
use messaging::writes::Writes;
use platform::auth::Caller;
use platform::{ApiError, ApiJson};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::placing::{PlaceError, Placed, Placement, Placer};
use crate::saga::{self, IdempotencyKey, NewOrder, OrderInput, OrderRefusal, OrderStatus};
use crate::shedding::Admission;
use crate::{SERVICE, store};

/// Longest `Idempotency-Key` accepted.
pub(crate) const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

#[derive(Clone)]
pub(crate) struct OrderApi {
    pub pool: PgPool,
    /// Where commits hand their events to the relay.
    pub outbox: Outbox,
    pub deadline: std::time::Duration,
    /// Commits placements in groups ([`crate::placing`]).
    pub placer: Placer,
    /// Whether `POST /orders` may take one more order (load shedding).
    pub admission: Admission,
}

pub(crate) fn router(api: OrderApi) -> Router {
    Router::new()
        .route("/orders", post(place_order).get(list_orders))
        .route("/orders/{id}", get(show_order))
        .route("/orders/{id}/cancel", post(cancel_order))
        .with_state(api)
}

/// `POST /orders`: 1 to 100 items; `customer_id` 1 to 64 characters and, for a customer,
/// their own (`sub`); `currency` three upper-case letters (ISO 4217).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct PlaceOrder {
    // The limits as the catalog checks them (check_customer, CURRENCY_PATTERN, MAX_ITEMS);
    // utoipa takes literals only, so a test holds them to the constants.
    #[schema(min_length = 1, max_length = 64, pattern = "^[^\\x00]*$")]
    pub customer_id: String,
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    #[schema(value_type = Vec<crate::schema::OrderItemSchema>, min_items = 1, max_items = 100)]
    pub items: Vec<OrderItem>,
}

impl From<OrderRefusal> for ApiError {
    fn from(r: OrderRefusal) -> Self {
        match r {
            OrderRefusal::Invalid(m) => ApiError::bad_request("validation_failed", m),
            OrderRefusal::Unknown(id) => ApiError::not_found(format!("no order {id}")),
            closed @ (OrderRefusal::Closed { .. } | OrderRefusal::Exists(_)) => {
                let refusal = platform::inputs::Refusal::from(closed);
                ApiError::conflict(refusal.code, refusal.message)
            }
        }
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.chars().count() <= MAX_IDEMPOTENCY_KEY_CHARS)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters"),
            )
        })?;
    Ok(Some(key.to_owned()))
}

fn request_hash(req: &PlaceOrder) -> Result<String, ApiError> {
    // The parsed request re-serialised: the same order written with other spacing or key
    // order hashes the same.
    let canonical = serde_json::to_vec(req).map_err(ApiError::unavailable)?;
    Ok(hex::encode(Sha256::digest(canonical)))
}

#[utoipa::path(post, path = "/orders", tag = "orders",
    request_body = PlaceOrder,
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255,
        pattern = r"^[!-~]([\t -~]*[!-~])?$",
        description = "1 to 255 visible ASCII characters (spaces and tabs inside); the same key with the same body answers the same order")),
    responses(
        (status = 202, description = "Placed: the order is pending, the saga runs", body = crate::schema::OrderAccepted),
        (status = 400, description = "Invalid body or Idempotency-Key", body = platform::openapi::ErrorBody),
        (status = 413, description = "A body over 64 KiB", body = platform::openapi::ErrorBody),
        (status = 415, description = "A body that is not `application/json`", body = platform::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token", body = platform::openapi::ErrorBody),
        (status = 403, description = "A customer ordering for someone else", body = platform::openapi::ErrorBody),
        (status = 409, description = "The Idempotency-Key was used with another body", body = platform::openapi::ErrorBody),
        (status = 503, description = "`overloaded`: too many orders in progress, retry after `Retry-After` seconds with the same Idempotency-Key; or `unavailable`: the service cannot answer (its database away)",
            body = platform::openapi::ErrorBody,
            headers(("Retry-After" = u64, description = "Whole seconds to wait before retrying (with `overloaded`)"))),
    ))]
async fn place_order(
    State(api): State<OrderApi>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PlaceOrder>,
) -> Result<impl IntoResponse, ApiError> {
    if !caller.may_act_for(&req.customer_id) {
        return Err(platform::auth::forbidden(
            "a customer may place orders only for themselves",
        ));
    }
    let key = idempotency_key(&headers);
    let hash = request_hash(&req)?;
    let placed_at = Utc::now();
    let new = NewOrder {
        order_id: Uuid::now_v7(),
        customer_id: req.customer_id,
        currency: req.currency,
        items: req.items,
        placed_at,
        deadline: placed_at
            + chrono::Duration::from_std(api.deadline).map_err(ApiError::unavailable)?,
        idempotency: key
            .as_ref()
            .ok()
            .cloned()
            .flatten()
            .map(|key| IdempotencyKey {
                key,
                request_hash: hash.clone(),
            }),
    };
    let (order_id, customer_id) = (new.order_id, new.customer_id.clone());
    // The body's rules first, then the key's.
    let plan = saga::decide(None, &OrderInput::Place(new))?;
    let key = key?;
    // Bad input is answered 4xx whatever the load; a valid order is shed before it costs
    // the database anything (the backlog is sampled in the background). Held to the end:
    // until this request has finished, the order counts on top of the last sample.
    let _admitted = api.admission.check()?;
    let trace = messaging::trace::current_traceparent();
    let placement = Placement {
        plan,
        key,
        trace: trace.clone(),
    };
    match api.placer.place(placement).await? {
        Placed::Existing(existing) => same_key_answer(existing, &hash),
        Placed::New => {
            tracing::info!(%order_id, traceparent = ?trace, %customer_id, "order placed");
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"order_id": order_id, "status": OrderStatus::Pending})),
            ))
        }
    }
}

impl From<PlaceError> for ApiError {
    fn from(e: PlaceError) -> Self {
        match e {
            PlaceError::Database(e) => e.into(),
            e @ (PlaceError::KeyVanished | PlaceError::Stopped) => ApiError::unavailable(e),
        }
    }
}

fn same_key_answer(
    (order_id, status, stored_hash): (Uuid, OrderStatus, Option<String>),
    hash: &str,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    if stored_hash.as_deref() != Some(hash) {
        return Err(ApiError::conflict(
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different body",
        ));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"order_id": order_id, "status": status})),
    ))
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::not_found(format!("no order {id:?}")))
}

fn order_json(row: &store::OrderRow) -> serde_json::Value {
    json!({
        "order_id": row.order_id,
        "customer_id": row.customer_id,
        "status": row.status,
        "reason": row.reason,
        "items": row.items.0,
        "total": row.total,
        "currency": row.currency,
        "deadline": row.deadline,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    })
}

/// The order if `caller` may see it; another customer's order is answered as if it did
/// not exist, so order ids cannot be probed.
async fn visible_order(
    conn: &mut sqlx::PgConnection,
    caller: &Caller,
    order_id: Uuid,
) -> Result<store::OrderRow, ApiError> {
    store::get_order(conn, order_id)
        .await?
        .filter(|row| caller.may_act_for(&row.customer_id))
        .ok_or_else(|| ApiError::not_found(format!("no order {order_id}")))
}

#[utoipa::path(get, path = "/orders/{id}", tag = "orders",
    params(("id" = Uuid, Path, description = "The order id")),
    responses(
        (status = 200, description = "The order and its history", body = crate::schema::OrderDetail),
        (status = 401, description = "No valid bearer token", body = platform::openapi::ErrorBody),
        (status = 404, description = "No such order, or another customer's", body = platform::openapi::ErrorBody),
    ))]
async fn show_order(
    State(api): State<OrderApi>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let order_id = parse_id(&id)?;
    let mut conn = api.pool.acquire().await?;
    let row = visible_order(&mut conn, &caller, order_id).await?;
    let history: Vec<_> = store::history(&mut conn, order_id)
        .await?
        .into_iter()
        .map(|h| json!({"type": h.event_type, "message_id": h.message_id, "at": h.at}))
        .collect();
    let mut body = order_json(&row);
    body["history"] = json!(history);
    Ok(Json(body))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only orders in this status (pending, reserved, confirmed, rejected, cancelled).
    #[param(pattern = "^(pending|reserved|confirmed|rejected|cancelled)?$")]
    status: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// With `after`, orders come in order-id order after that id (to walk them all);
    /// without it, newest first.
    after: Option<Uuid>,
}

#[utoipa::path(get, path = "/orders", tag = "orders",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of orders and the counts by status", body = crate::schema::OrderList),
        (status = 400, description = "Unknown status or limit out of range", body = platform::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token", body = platform::openapi::ErrorBody),
        (status = 403, description = "The caller is not an operator", body = platform::openapi::ErrorBody),
    ))]
async fn list_orders(
    State(api): State<OrderApi>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_operator()?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(OrderStatus::parse(s).ok_or_else(|| {
            let all: Vec<&str> = OrderStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad_request(
                "invalid_status",
                format!("status must be one of {}", all.join(", ")),
            )
        })?),
    };
    let limit = platform::http::check_limit(q.limit.unwrap_or(100))?;
    let mut conn = api.pool.acquire().await?;
    let rows = match q.after {
        Some(after) => store::page_orders(&mut conn, status, after, limit).await?,
        None => store::list_orders(&mut conn, status, limit).await?,
    };
    let orders: Vec<_> = rows.iter().map(order_json).collect();
    let counts: serde_json::Map<_, _> = store::count_by_status(&mut conn)
        .await?
        .into_iter()
        .map(|(s, n)| (s.as_str().to_owned(), json!(n)))
        .collect();
    Ok(Json(json!({"orders": orders, "counts": counts})))
}

#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders",
    params(("id" = Uuid, Path, description = "The order id")),
    responses(
        (status = 202, description = "Cancelled: refund and restock follow as events", body = crate::schema::OrderAccepted),
        (status = 401, description = "No valid bearer token", body = platform::openapi::ErrorBody),
        (status = 404, description = "No such order, or another customer's", body = platform::openapi::ErrorBody),
        (status = 409, description = "The order is already rejected or cancelled", body = platform::openapi::ErrorBody),
    ))]
async fn cancel_order(
    State(api): State<OrderApi>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let order_id = parse_id(&id)?;
    let mut tx = api.pool.begin().await?;
    let loaded = store::lock_orders(&mut tx, vec![order_id]).await?;
    let record = cancel_record(&caller, order_id, loaded.orders.get(&order_id));
    // Another customer's order is answered as if it did not exist.
    let order = loaded
        .orders
        .get(&order_id)
        .filter(|o| caller.may_act_for(&o.customer_id));
    let plan = match saga::decide(order, &OrderInput::Cancel(order_id)) {
        Ok(plan) => plan,
        Err(refusal) => {
            let refused = ApiError::from(refusal);
            record_refusal(tx, &record, &refused).await;
            return Err(refused);
        }
    };
    let mut now = loaded.clone();
    let mut out = Emitter::new(SERVICE, None);
    now.apply(plan, None, &mut out);
    let trace = messaging::trace::current_traceparent();
    // The record commits with the cancellation, or neither does.
    let mut writes = Writes::default();
    audit::record_with_writes(&mut writes, &[&record], CANCELLED)?;
    store::commit_staged_with(
        tx,
        writes,
        &loaded,
        &now,
        vec![(out, trace.as_deref())],
        &api.outbox,
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"order_id": order_id, "status": OrderStatus::Cancelled})),
    ))
}

/// The outcome of a cancellation that was made.
const CANCELLED: &str = "cancelled";

/// The audit record of a cancellation asked by `caller`: the order and, when it exists,
/// its customer (even another customer's, which the caller is answered 404 for).
fn cancel_record(caller: &Caller, order_id: Uuid, order: Option<&saga::Order>) -> HandAction {
    let mut subjects = vec![order_id.to_string()];
    subjects.extend(order.map(|o| o.customer_id.clone()));
    let role = if caller.operator {
        "operator"
    } else {
        "customer"
    };
    HandAction {
        actor: caller.sub.clone(),
        via: Via::Http,
        broker_user: None,
        action: audit::actions::CANCEL,
        subjects,
        detail: json!({"role": role}),
    }
}

/// Records a refused cancellation (who tried, and the answer) and ends `tx`. Best effort:
/// the refusal is answered whatever becomes of its record.
async fn record_refusal(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    record: &HandAction,
    refused: &ApiError,
) {
    let result = json!({
        "status": refused.status.as_u16(),
        "code": refused.code,
        "message": refused.message,
    });
    let recorded = async {
        audit::record(&mut tx, record, audit::REFUSED, Some(&result)).await?;
        tx.commit().await
    };
    if let Err(e) = recorded.await {
        tracing::warn!(error = %e, "could not record a refused cancellation");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_hash_ignores_formatting() {
        let a: PlaceOrder = serde_json::from_str(
            r#"{"customer_id":"c","currency":"EUR","items":[{"sku":"A","quantity":1,"unit_price":5}]}"#,
        )
        .unwrap();
        let b: PlaceOrder = serde_json::from_str(
            r#"{ "items": [ {"unit_price": 5, "quantity": 1, "sku": "A"} ], "currency": "EUR", "customer_id": "c" }"#,
        )
        .unwrap();
        assert_eq!(request_hash(&a).unwrap(), request_hash(&b).unwrap());
    }
}
