//! inventory-svc's OpenAPI document: the routes of [`crate::http`] (described by the
//! `#[utoipa::path]` on each handler) and the bodies they answer, plus the shared ones of
//! [`platform::openapi`]. `docs/openapi/inventory-svc.json` is its committed copy.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::saga::ReservationState;

platform::catalog_schema!(StockItemSchema, events::catalog::StockItem, "StockItem");

fn reservation_state() -> utoipa::openapi::Object {
    platform::openapi::one_of_strings(ReservationState::ALL.map(ReservationState::as_str))
}

/// `GET /stock/{sku}`: one SKU's stock; `available + reserved + sold` is everything ever
/// adjusted in.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Stock {
    pub sku: String,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

/// One SKU in `GET /stock`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StockRow {
    pub sku: String,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    /// The sum of every StockAdjusted delta.
    pub adjusted: i64,
    pub updated_at: DateTime<Utc>,
}

/// `GET /stock`: every SKU ever adjusted.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StockList {
    pub stock: Vec<StockRow>,
}

/// `GET /reservations/{order_id}`: what inventory holds, or held, for one order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Reservation {
    pub order_id: Uuid,
    #[schema(schema_with = reservation_state)]
    pub status: String,
    #[schema(value_type = Vec<StockItemSchema>)]
    pub items: Vec<serde_json::Value>,
}

/// One reservation in `GET /reservations`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReservationRow {
    pub order_id: Uuid,
    #[schema(schema_with = reservation_state)]
    pub status: String,
    #[schema(value_type = Vec<StockItemSchema>)]
    pub items: Vec<serde_json::Value>,
    pub updated_at: DateTime<Utc>,
}

/// `GET /reservations`: one page, in order-id order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReservationList {
    pub reservations: Vec<ReservationRow>,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        crate::http::show_stock,
        crate::http::list_stock,
        crate::http::show_reservation,
        crate::http::list_reservations,
    ),
    components(schemas(Stock, StockList, Reservation, ReservationList)),
    tags((name = "stock", description = "Stock per SKU and reservations per order")),
)]
struct InventoryApiDoc;

/// The whole document, as `GET /openapi.json` answers it.
pub fn document() -> utoipa::openapi::OpenApi {
    platform::openapi::document(
        crate::SERVICE,
        "Owns stock and reservations. Stock changes only through events (StockAdjusted from \
         operators, the saga's reservations); this API reads it (docs/http.md).",
        <InventoryApiDoc as utoipa::OpenApi>::openapi(),
    )
}
