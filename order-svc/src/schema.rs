//! The bodies order-svc's routes answer, as OpenAPI schemas: the handlers of [`crate::http`]
//! name them in their `#[utoipa::path]`, and [`crate::openapi`] lists them in the document.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::saga::OrderStatus;

platform::catalog_schema!(OrderItemSchema, events::catalog::OrderItem, "OrderItem");

fn order_status() -> utoipa::openapi::Object {
    platform::openapi::one_of_strings(OrderStatus::ALL.map(OrderStatus::as_str))
}

/// `202` to `POST /orders` and `POST /orders/{id}/cancel`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OrderAccepted {
    pub order_id: Uuid,
    /// `pending` after a placement, `cancelled` after a cancellation (the events follow).
    #[schema(schema_with = order_status)]
    pub status: String,
}

/// One order, as `GET /orders` lists it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Order {
    pub order_id: Uuid,
    pub customer_id: String,
    #[schema(schema_with = order_status)]
    pub status: String,
    /// Why a `rejected` or `cancelled` order ended so (`payment_failed`, `timeout`,
    /// `customer_request`, `out_of_stock`); `null` otherwise.
    pub reason: Option<String>,
    #[schema(value_type = Vec<OrderItemSchema>)]
    pub items: Vec<serde_json::Value>,
    /// The sum of quantity × unit_price, in minor units of `currency`.
    pub total: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// When an order still `pending` or `reserved` is cancelled with reason `timeout`.
    pub deadline: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One event of an order's history.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HistoryEntry {
    /// The event type (`OrderCreated`, `StockReserved`, ...).
    #[schema(rename = "type")]
    pub event_type: String,
    pub message_id: Uuid,
    pub at: DateTime<Utc>,
}

/// `GET /orders/{id}`: the order and the events that moved it, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OrderDetail {
    #[serde(flatten)]
    pub order: Order,
    pub history: Vec<HistoryEntry>,
}

/// `GET /orders`: one page of orders and the number of orders in each status.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OrderList {
    pub orders: Vec<Order>,
    /// Orders by status, over all orders (not only this page).
    pub counts: BTreeMap<String, i64>,
}
