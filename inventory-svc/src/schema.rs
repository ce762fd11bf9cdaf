//! The bodies inventory-svc's routes answer, as OpenAPI schemas: the handlers of [`crate::http`]
//! name them in their `#[utoipa::path]`, and [`crate::openapi`] lists them in the document.

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
