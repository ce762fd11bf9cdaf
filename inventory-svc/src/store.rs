//! The stock and reservation tables' queries: the loading of a decision's state, the
//! writes of its plan, and the read API's queries. Writes run in the caller's transaction.

use chrono::{DateTime, Utc};
use events::catalog::StockItem;
use sqlx::PgConnection;
use uuid::Uuid;

use messaging::consumer::lock_saga;

use crate::saga::{InventoryInput, InventoryState, Reservation, ReservationState, StockLevels};

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub(crate) struct StockRow {
    pub sku: String,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    pub adjusted: i64,
    pub updated_at: DateTime<Utc>,
}

/// Loads what [`saga::decide`] reads for `input`, locking it for the transaction: the
/// order's saga lock and reservation, then the stock rows in SKU order (so two
/// transactions never wait on each other in a cycle).
pub(crate) async fn load(
    conn: &mut PgConnection,
    input: &InventoryInput,
) -> sqlx::Result<InventoryState> {
    let reservation = match input.order_id() {
        Some(order_id) => {
            lock_saga(conn, order_id).await?;
            lock_reservation(conn, order_id).await?
        }
        None => None,
    };
    if let InventoryInput::StockAdjusted(e) = input {
        // A SKU's first adjustment creates its row before locking it, so two first
        // adjustments queue on the row instead of both inserting. A refused adjustment
        // rolls the row back with the rest of the transaction.
        sqlx::query(
            "INSERT INTO stock (sku, available, adjusted) VALUES ($1, 0, 0) ON CONFLICT (sku) DO NOTHING",
        )
        .bind(&e.sku)
        .execute(&mut *conn)
        .await?;
    }
    let keys = input.stock_keys(reservation.as_ref());
    let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT sku, available, reserved, sold, adjusted FROM stock WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
    )
    .bind(&keys)
    .fetch_all(conn)
    .await?;
    let stock = rows
        .into_iter()
        .map(|(sku, available, reserved, sold, adjusted)| {
            let levels = StockLevels {
                available,
                reserved,
                sold,
                adjusted,
            };
            (sku, levels)
        })
        .collect();
    Ok(InventoryState { reservation, stock })
}

/// The reservation of an order, locked for the transaction.
async fn lock_reservation(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<Option<Reservation>> {
    let row: Option<(ReservationState, sqlx::types::Json<Vec<StockItem>>)> =
        sqlx::query_as("SELECT status, items FROM reservations WHERE order_id = $1 FOR UPDATE")
            .bind(order_id)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(state, items)| Reservation {
        state,
        items: items.0,
    }))
}

pub(crate) async fn upsert_reservation(
    conn: &mut PgConnection,
    order_id: Uuid,
    r: &Reservation,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO reservations (order_id, status, items) VALUES ($1, $2, $3)
         ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, items = EXCLUDED.items, updated_at = now()",
    )
    .bind(order_id)
    .bind(r.state)
    .bind(sqlx::types::Json(&r.items))
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores a SKU's new levels (its row was locked, or created, by [`load`]).
pub(crate) async fn set_stock(
    conn: &mut PgConnection,
    sku: &str,
    s: &StockLevels,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO stock (sku, available, reserved, sold, adjusted) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (sku) DO UPDATE SET available = EXCLUDED.available, reserved = EXCLUDED.reserved,
             sold = EXCLUDED.sold, adjusted = EXCLUDED.adjusted, updated_at = now()",
    )
    .bind(sku)
    .bind(s.available)
    .bind(s.reserved)
    .bind(s.sold)
    .bind(s.adjusted)
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) async fn get_stock(
    conn: &mut PgConnection,
    sku: &str,
) -> sqlx::Result<Option<StockRow>> {
    sqlx::query_as(
        "SELECT sku, available, reserved, sold, adjusted, updated_at FROM stock WHERE sku = $1",
    )
    .bind(sku)
    .fetch_optional(conn)
    .await
}

pub(crate) async fn list_stock(conn: &mut PgConnection) -> sqlx::Result<Vec<StockRow>> {
    sqlx::query_as("SELECT sku, available, reserved, sold, adjusted, updated_at FROM stock ORDER BY sku LIMIT 10000")
        .fetch_all(conn)
        .await
}

pub(crate) async fn get_reservation(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<Option<(ReservationState, sqlx::types::Json<Vec<StockItem>>)>> {
    sqlx::query_as("SELECT status, items FROM reservations WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(conn)
        .await
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub(crate) struct ReservationRow {
    pub order_id: Uuid,
    pub status: ReservationState,
    pub items: sqlx::types::Json<Vec<StockItem>>,
    pub updated_at: DateTime<Utc>,
}

/// Reservations, oldest first, after the order id `after` (keyset paging).
pub(crate) async fn list_reservations(
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
