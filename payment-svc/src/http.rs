//! payment-svc's read API: one wallet, all wallets, and one order's payment.

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
        .route("/wallets", get(list_wallets))
        .route("/wallets/{customer_id}", get(show_wallet))
        .route("/payments", get(list_payments))
        .route("/payments/{order_id}", get(show_payment))
        .with_state(pool)
}

#[utoipa::path(get, path = "/wallets/{customer_id}", tag = "payments",
    params(("customer_id" = String, Path, min_length = 1, max_length = 64, pattern = "^[^\\x00]*$", description = "The customer id")),
    responses(
        (status = 200, description = "The customer's wallet", body = crate::schema::Wallet),
        (status = 401, description = "No valid bearer token", body = platform::openapi::ErrorBody),
        (status = 404, description = "The customer never deposited, or is not the caller", body = platform::openapi::ErrorBody),
    ))]
async fn show_wallet(
    State(pool): State<PgPool>,
    caller: Caller,
    Path(customer_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // An id no customer can have never deposited; the database is not asked (it could not
    // even compare a NUL).
    if events::catalog::check_customer(&customer_id).is_err() || customer_id.contains('\0') {
        return Err(ApiError::not_found(format!(
            "customer {customer_id:?} never deposited"
        )));
    }
    let mut conn = pool.acquire().await?;
    // Another customer's wallet is answered as if it did not exist.
    let w = store::get_wallet(&mut conn, &customer_id)
        .await?
        .filter(|_| caller.may_act_for(&customer_id))
        .ok_or_else(|| ApiError::not_found(format!("customer {customer_id:?} never deposited")))?;
    Ok(Json(json!({
        "customer_id": w.customer_id, "balance": w.balance, "captured": w.captured,
        "refunded": w.refunded, "currency": w.currency
    })))
}

#[utoipa::path(get, path = "/wallets", tag = "payments",
    params(platform::http::KeyPage),
    responses(
        (status = 200, description = "Wallets in customer order, a page at a time (the next page starts after the last customer)", body = crate::schema::WalletList),
        (status = 400, description = "after or limit out of range", body = platform::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token", body = platform::openapi::ErrorBody),
        (status = 403, description = "The caller is not an operator", body = platform::openapi::ErrorBody),
    ))]
async fn list_wallets(
    State(pool): State<PgPool>,
    caller: Caller,
    Query(page): Query<KeyPage>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_operator()?;
    let (after, limit) = (page.after()?, page.limit()?);
    let mut conn = pool.acquire().await?;
    let rows = store::list_wallets(&mut conn, after, limit).await?;
    Ok(Json(json!({ "wallets": rows })))
}

#[utoipa::path(get, path = "/payments/{order_id}", tag = "payments",
    params(("order_id" = Uuid, Path, description = "The order id")),
    responses(
        (status = 200, description = "The order's payment", body = crate::schema::Payment),
        (status = 401, description = "No valid bearer token", body = platform::openapi::ErrorBody),
        (status = 403, description = "The caller is not an operator", body = platform::openapi::ErrorBody),
        (status = 404, description = "No payment for that order", body = platform::openapi::ErrorBody),
    ))]
async fn show_payment(
    State(pool): State<PgPool>,
    caller: Caller,
    Path(order_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_operator()?;
    let not_found =
        || ApiError::not_found(format!("payment-svc has no payment for order {order_id:?}"));
    let id = Uuid::parse_str(&order_id).map_err(|_| not_found())?;
    let mut conn = pool.acquire().await?;
    let p = store::get_payment(&mut conn, id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(json!(p)))
}

#[utoipa::path(get, path = "/payments", tag = "payments",
    params(platform::http::Page),
    responses(
        (status = 200, description = "One page of payments", body = crate::schema::PaymentList),
        (status = 400, description = "limit out of range", body = platform::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token", body = platform::openapi::ErrorBody),
        (status = 403, description = "The caller is not an operator", body = platform::openapi::ErrorBody),
    ))]
async fn list_payments(
    State(pool): State<PgPool>,
    caller: Caller,
    Query(page): Query<Page>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_operator()?;
    let limit = page.limit()?;
    let mut conn = pool.acquire().await?;
    let rows = store::list_payments(&mut conn, page.after, limit).await?;
    Ok(Json(json!({ "payments": rows })))
}
