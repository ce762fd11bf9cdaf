//! inventory-svc's read API: stock per SKU, all stock, and one order's reservation.

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use platform::ApiError;
use platform::auth::Caller;
use platform::http::{KeyPage, Page};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::store;

pub(crate) fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/stock", get(list_stock))
        .route("/stock/{sku}", get(show_stock))
        .route("/reservations", get(list_reservations))
        .route("/reservations/{order_id}", get(show_reservation))
        .with_state(pool)
}

#[utoipa::path(get, path = "/stock/{sku}", tag = "stock",
    params(("sku" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$", description = "The SKU")),
    responses(
        (status = 200, description = "The SKU's stock", body = crate::schema::Stock),
        (status = 401, description = "No valid bearer token", body = platform::openapi::ErrorBody),
        (status = 403, description = "The token grants no role", body = platform::openapi::ErrorBody),
        (status = 404, description = "The SKU was never adjusted", body = platform::openapi::ErrorBody),
    ))]
async fn show_stock(
    State(pool): State<PgPool>,
    caller: Caller,
    Path(sku): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_any_role()?;
    let never = || ApiError::not_found(format!("SKU {sku:?} was never adjusted"));
    // A name no SKU can have was never adjusted either; the database is not asked (it
    // could not even compare a NUL).
    if events::catalog::check_sku(&sku).is_err() {
        return Err(never());
    }
    let mut conn = pool.acquire().await?;
    let row = store::get_stock(&mut conn, &sku).await?.ok_or_else(never)?;
    Ok(Json(json!({
        "sku": row.sku, "available": row.available, "reserved": row.reserved, "sold": row.sold
    })))
}

#[utoipa::path(get, path = "/stock", tag = "stock",
    params(platform::http::KeyPage),
    responses(
        (status = 200, description = "SKUs ever adjusted, in SKU order, a page at a time (the next page starts after the last SKU)", body = crate::schema::StockList),
        (status = 400, description = "after or limit out of range", body = platform::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token", body = platform::openapi::ErrorBody),
        (status = 403, description = "The caller is not an operator", body = platform::openapi::ErrorBody),
    ))]
async fn list_stock(
    State(pool): State<PgPool>,
    caller: Caller,
    Query(page): Query<KeyPage>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_operator()?;
    let (after, limit) = (page.after()?, page.limit()?);
    let mut conn = pool.acquire().await?;
    let rows = store::list_stock(&mut conn, after, limit).await?;
    Ok(Json(json!({ "stock": rows })))
}

#[utoipa::path(get, path = "/reservations/{order_id}", tag = "stock",
    params(("order_id" = Uuid, Path, description = "The order id")),
    responses(
        (status = 200, description = "What inventory holds or held for the order", body = crate::schema::Reservation),
        (status = 401, description = "No valid bearer token", body = platform::openapi::ErrorBody),
        (status = 403, description = "The caller is not an operator", body = platform::openapi::ErrorBody),
        (status = 404, description = "No reservation for that order", body = platform::openapi::ErrorBody),
    ))]
async fn show_reservation(
    State(pool): State<PgPool>,
    caller: Caller,
    Path(order_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_operator()?;
    let not_found = || {
        ApiError::not_found(format!(
            "inventory holds no reservation for order {order_id:?}"
        ))
    };
    let id = Uuid::parse_str(&order_id).map_err(|_| not_found())?;
    let mut conn = pool.acquire().await?;
    let (status, items) = store::get_reservation(&mut conn, id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(
        json!({ "order_id": id, "status": status, "items": items.0 }),
    ))
}

#[utoipa::path(get, path = "/reservations", tag = "stock",
    params(platform::http::Page),
    responses(
        (status = 200, description = "One page of reservations", body = crate::schema::ReservationList),
        (status = 400, description = "limit out of range", body = platform::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token", body = platform::openapi::ErrorBody),
        (status = 403, description = "The caller is not an operator", body = platform::openapi::ErrorBody),
    ))]
async fn list_reservations(
    State(pool): State<PgPool>,
    caller: Caller,
    Query(page): Query<Page>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_operator()?;
    let limit = page.limit()?;
    let mut conn = pool.acquire().await?;
    let rows = store::list_reservations(&mut conn, page.after, limit).await?;
    Ok(Json(json!({ "reservations": rows })))
}
