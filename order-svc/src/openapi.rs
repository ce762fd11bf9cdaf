//! order-svc's OpenAPI document: the routes of [`crate::http`] (described by the
//! `#[utoipa::path]` on each handler) and the bodies they answer, plus the shared ones of
//! [`platform::openapi`]. `docs/openapi/order-svc.json` is its committed copy.

use crate::schema::{Order, OrderAccepted, OrderDetail, OrderList};

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        crate::http::place_order,
        crate::http::list_orders,
        crate::http::show_order,
        crate::http::cancel_order,
    ),
    components(schemas(OrderAccepted, Order, OrderDetail, OrderList, crate::http::PlaceOrder)),
    tags((name = "orders", description = "Place, read, list and cancel orders")),
)]
struct OrderApiDoc;

/// The whole document, as `GET /openapi.json` answers it.
pub fn document() -> utoipa::openapi::OpenApi {
    platform::openapi::document(
        crate::SERVICE,
        "Owns orders: the only HTTP entry point for customers. Placing an order starts the \
         saga; its outcome arrives through events (docs/http.md, docs/events.md).",
        <OrderApiDoc as utoipa::OpenApi>::openapi(),
    )
}

#[cfg(test)]
mod tests {
    use events::catalog::{CURRENCY_PATTERN, MAX_CUSTOMER_ID_CHARS, MAX_ITEMS};
    use serde_json::Value;

    /// utoipa takes literals only: the limits POST /orders states are held here to the
    /// constants the catalog checks with.
    #[test]
    fn the_placement_states_the_limits_the_catalog_checks() {
        let doc = serde_json::to_value(super::document()).unwrap();
        let field = |name: &str| -> &Value {
            &doc["components"]["schemas"]["PlaceOrder"]["properties"][name]
        };
        assert_eq!(field("customer_id")["minLength"], 1);
        assert_eq!(field("customer_id")["maxLength"], MAX_CUSTOMER_ID_CHARS);
        assert_eq!(field("currency")["pattern"], CURRENCY_PATTERN);
        assert_eq!(field("items")["minItems"], 1);
        assert_eq!(field("items")["maxItems"], MAX_ITEMS);
    }
}
