//! inventory-svc's OpenAPI document: the routes of [`crate::http`] (described by the
//! `#[utoipa::path]` on each handler) and the bodies they answer, plus the shared ones of
//! [`platform::openapi`]. `docs/openapi/inventory-svc.json` is its committed copy.

use crate::schema::{Reservation, ReservationList, Stock, StockList};

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
