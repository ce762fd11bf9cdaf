//! The stock and reservation tables' queries. Writes run in the caller's transaction.

use chrono::{DateTime, Utc};
use events::catalog::StockItem;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::saga::ReservationState;

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct StockRow {
    pub sku: String,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    pub adjusted: i64,
    pub updated_at: DateTime<Utc>,
}

/// The reservation of an order, locked for the transaction.
pub async fn lock_reservation(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<(ReservationState, Vec<StockItem>)> {
    let row: Option<(String, sqlx::types::Json<Vec<StockItem>>)> =
        sqlx::query_as("SELECT status, items FROM reservations WHERE order_id = $1 FOR UPDATE")
            .bind(order_id)
            .fetch_optional(conn)
            .await?;
    Ok(match row {
        None => (ReservationState::None, Vec::new()),
        Some((status, items)) => (
            ReservationState::parse(&status).unwrap_or(ReservationState::Released),
            items.0,
        ),
    })
}

pub async fn upsert_reservation(
    conn: &mut PgConnection,
    order_id: Uuid,
    state: ReservationState,
    items: &[StockItem],
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO reservations (order_id, status, items) VALUES ($1, $2, $3)
         ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, items = EXCLUDED.items, updated_at = now()",
    )
    .bind(order_id)
    .bind(state.as_str())
    .bind(sqlx::types::Json(items))
    .execute(conn)
    .await?;
    Ok(())
}

/// What is on hand for each SKU, with the rows locked in SKU order (callers pass SKUs
/// sorted, so two reservations never wait on each other in a cycle).
pub async fn lock_available(
    conn: &mut PgConnection,
    skus: &[String],
) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as("SELECT sku, available FROM stock WHERE sku = ANY($1) ORDER BY sku FOR UPDATE")
        .bind(skus)
        .fetch_all(conn)
        .await
}

/// Where stock moves between the three buckets, per unit.
#[derive(Debug, Clone, Copy)]
pub struct Movement {
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

pub const RESERVE: Movement = Movement {
    available: -1,
    reserved: 1,
    sold: 0,
};
pub const SELL: Movement = Movement {
    available: 0,
    reserved: -1,
    sold: 1,
};
pub const RELEASE_RESERVED: Movement = Movement {
    available: 1,
    reserved: -1,
    sold: 0,
};
pub const RETURN_SOLD: Movement = Movement {
    available: 1,
    reserved: 0,
    sold: -1,
};

/// Moves each item's quantity between buckets, all items in one statement.
pub async fn move_stock(
    conn: &mut PgConnection,
    items: &[StockItem],
    m: Movement,
) -> sqlx::Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let skus: Vec<&str> = items.iter().map(|i| i.sku.as_str()).collect();
    let qty: Vec<i64> = items.iter().map(|i| i.quantity).collect();
    sqlx::query(
        "UPDATE stock s SET available = s.available + v.q * $3, reserved = s.reserved + v.q * $4,
                sold = s.sold + v.q * $5, updated_at = now()
         FROM UNNEST($1::text[], $2::bigint[]) AS v(sku, q) WHERE s.sku = v.sku",
    )
    .bind(&skus)
    .bind(&qty)
    .bind(m.available)
    .bind(m.reserved)
    .bind(m.sold)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds `delta` to a SKU's available stock (creating the SKU on a first positive delta);
/// `None` when that would make it negative, and then nothing changed.
pub async fn adjust(conn: &mut PgConnection, sku: &str, delta: i64) -> sqlx::Result<Option<i64>> {
    let query = if delta >= 0 {
        sqlx::query_scalar(
            "INSERT INTO stock (sku, available, adjusted) VALUES ($1, $2, $2)
             ON CONFLICT (sku) DO UPDATE SET available = stock.available + $2,
                 adjusted = stock.adjusted + $2, updated_at = now()
             RETURNING available",
        )
    } else {
        sqlx::query_scalar(
            "UPDATE stock SET available = available + $2, adjusted = adjusted + $2, updated_at = now()
             WHERE sku = $1 AND available + $2 >= 0
             RETURNING available",
        )
    };
    query.bind(sku).bind(delta).fetch_optional(conn).await
}

pub async fn get_stock(conn: &mut PgConnection, sku: &str) -> sqlx::Result<Option<StockRow>> {
    sqlx::query_as(
        "SELECT sku, available, reserved, sold, adjusted, updated_at FROM stock WHERE sku = $1",
    )
    .bind(sku)
    .fetch_optional(conn)
    .await
}

pub async fn list_stock(conn: &mut PgConnection) -> sqlx::Result<Vec<StockRow>> {
    sqlx::query_as("SELECT sku, available, reserved, sold, adjusted, updated_at FROM stock ORDER BY sku LIMIT 10000")
        .fetch_all(conn)
        .await
}

pub async fn get_reservation(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<Option<(String, sqlx::types::Json<Vec<StockItem>>)>> {
    sqlx::query_as("SELECT status, items FROM reservations WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(conn)
        .await
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct ReservationRow {
    pub order_id: Uuid,
    pub status: String,
    pub items: sqlx::types::Json<Vec<StockItem>>,
    pub updated_at: DateTime<Utc>,
}

/// Reservations, oldest first, after the order id `after` (keyset paging).
pub async fn list_reservations(
    conn: &mut PgConnection,
    after: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<ReservationRow>> {
    sqlx::query_as(
        "SELECT order_id, status, items, updated_at FROM reservations
         WHERE ($1::uuid IS NULL OR order_id > $1) ORDER BY order_id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}
