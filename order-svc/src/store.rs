//! The order tables: named queries used by the HTTP routes, the handlers and the deadline
//! sweep. Every write happens inside a transaction the caller owns.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use events::catalog::OrderItem;
use sqlx::PgConnection;
use uuid::Uuid;

use messaging::chunks::{STATEMENT_BYTES, UUIDS_PER_STATEMENT, by_size};
use platform::staged::changed;

use crate::memory::OrderTables;
use crate::saga::{IdempotencyKey, Order, OrderStatus};

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct OrderRow {
    pub order_id: Uuid,
    pub customer_id: String,
    pub status: OrderStatus,
    pub reason: Option<String>,
    pub items: sqlx::types::Json<Vec<OrderItem>>,
    pub total: i64,
    pub currency: String,
    pub deadline: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<OrderRow> for Order {
    fn from(row: OrderRow) -> Self {
        Order {
            order_id: row.order_id,
            customer_id: row.customer_id,
            status: row.status,
            reason: row.reason,
            items: row.items.0,
            total: row.total,
            currency: row.currency,
            created_at: row.created_at,
        }
    }
}

const ORDER_COLUMNS: &str = "order_id, customer_id, status, reason, items, total, currency, deadline, created_at, updated_at";

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct HistoryRow {
    pub event_type: String,
    pub message_id: Uuid,
    pub at: DateTime<Utc>,
}

/// Inserts an order; with an idempotency key already used, inserts nothing and returns
/// `None` (the caller then reads the order that key made).
pub(crate) async fn insert_order(
    conn: &mut PgConnection,
    o: &Order,
    deadline: DateTime<Utc>,
    idempotency: Option<&IdempotencyKey>,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar(
        "INSERT INTO orders (order_id, customer_id, status, items, total, currency, deadline, idempotency_key, request_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (idempotency_key) DO NOTHING
         RETURNING order_id",
    )
    .bind(o.order_id)
    .bind(&o.customer_id)
    .bind(o.status)
    .bind(sqlx::types::Json(&o.items))
    .bind(o.total)
    .bind(&o.currency)
    .bind(deadline)
    .bind(idempotency.map(|k| &k.key))
    .bind(idempotency.map(|k| &k.request_hash))
    .fetch_optional(conn)
    .await
}

/// The order an idempotency key made, with the hash of the body it came with.
pub(crate) async fn find_by_idempotency_key(
    conn: &mut PgConnection,
    key: &str,
) -> sqlx::Result<Option<(Uuid, OrderStatus, Option<String>)>> {
    sqlx::query_as("SELECT order_id, status, request_hash FROM orders WHERE idempotency_key = $1")
        .bind(key)
        .fetch_optional(conn)
        .await
}

/// Locks the order row for the rest of the transaction and returns it. Events about one
/// order therefore apply one after the other.
pub(crate) async fn lock_order(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<Option<Order>> {
    let mut batch = lock_orders(conn, vec![order_id]).await?;
    Ok(batch.tables.orders.remove(&order_id))
}

/// A batch's orders and the history rows its decisions add, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct OrderBatch {
    pub tables: OrderTables,
    /// Where each loaded order's row is (its `ctid`, as text), to store it by.
    pub located: BTreeMap<Uuid, String>,
    /// (order, event type, message id): each message handled, then each event it emitted.
    pub history: Vec<(Uuid, String, Uuid)>,
}

/// Locks the orders of a batch, in order-id order (so two batches never wait on each
/// other in a cycle), and loads them.
pub(crate) async fn lock_orders(
    conn: &mut PgConnection,
    mut order_ids: Vec<Uuid>,
) -> sqlx::Result<OrderBatch> {
    order_ids.sort_unstable();
    order_ids.dedup();
    let mut batch = OrderBatch::default();
    for ids in order_ids.chunks(UUIDS_PER_STATEMENT) {
        let rows: Vec<LockedOrder> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT o.* FROM UNNEST($1::uuid[]) AS k(id) CROSS JOIN LATERAL (
                 SELECT ctid::text AS at, {ORDER_COLUMNS} FROM orders WHERE order_id = k.id FOR UPDATE) o"
        )))
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
        for LockedOrder { at, row } in rows {
            batch.located.insert(row.order_id, at);
            batch.tables.orders.insert(row.order_id, Order::from(row));
        }
    }
    Ok(batch)
}

/// An order row locked by [`lock_orders`], and where it is.
#[derive(sqlx::FromRow)]
struct LockedOrder {
    at: String,
    #[sqlx(flatten)]
    row: OrderRow,
}

/// Stores a batch: the orders whose status or reason changed, then its history rows in
/// order (each message once per order, as [`record_history`] does).
pub(crate) async fn store_batch(
    conn: &mut PgConnection,
    loaded: &OrderBatch,
    now: &OrderBatch,
) -> sqlx::Result<()> {
    let moved = changed(&loaded.tables.orders, &now.tables.orders);
    let sizes = moved
        .iter()
        .map(|(_, o)| o.reason.as_ref().map_or(0, String::len) + 40);
    for part in by_size(sizes, STATEMENT_BYTES) {
        let rows = &moved[part];
        let at = rows
            .iter()
            .map(|(id, _)| {
                loaded.located.get(*id).map(String::as_str).ok_or_else(|| {
                    sqlx::Error::Protocol(format!("order {id} was stored without being locked"))
                })
            })
            .collect::<sqlx::Result<Vec<&str>>>()?;
        // By the rows' addresses (locked since `lock_orders`, so they have not moved): a
        // scan by address needs no index lookup. Planned at each call, never cached: a
        // plan made while the table was nearly empty reads the whole table to find the
        // addresses, at every call after, however large the table has grown
        // (docs/architecture.md, "Statements and their plans").
        sqlx::query(
            "UPDATE orders o SET status = u.s, reason = u.r, updated_at = now()
             FROM UNNEST($1::text[]::tid[], $2::text[], $3::text[]) AS u(at, s, r)
             WHERE o.ctid = ANY($1::text[]::tid[]) AND o.ctid = u.at",
        )
        .bind(at)
        .bind(
            rows.iter()
                .map(|(_, o)| o.status.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|(_, o)| o.reason.as_deref())
                .collect::<Vec<_>>(),
        )
        .persistent(false)
        .execute(&mut *conn)
        .await?;
    }
    record_history_rows(conn, &now.history[loaded.history.len()..]).await
}

pub(crate) async fn set_status(
    conn: &mut PgConnection,
    order_id: Uuid,
    status: OrderStatus,
    reason: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE orders SET status = $2, reason = COALESCE($3, reason), updated_at = now() WHERE order_id = $1")
        .bind(order_id)
        .bind(status)
        .bind(reason)
        .execute(conn)
        .await?;
    Ok(())
}

pub(crate) async fn record_history(
    conn: &mut PgConnection,
    order_id: Uuid,
    event_type: &str,
    message_id: Uuid,
) -> sqlx::Result<()> {
    record_history_rows(conn, &[(order_id, event_type.to_owned(), message_id)]).await
}

/// Appends (order, event type, message id) rows to the orders' histories, in order. Once
/// per message: a message redelivered after its inbox row was purged is not a new event,
/// and the unique index on (order, message) drops it.
pub(crate) async fn record_history_rows(
    conn: &mut PgConnection,
    rows: &[(Uuid, String, Uuid)],
) -> sqlx::Result<()> {
    for part in by_size(rows.iter().map(|(_, t, _)| t.len() + 40), STATEMENT_BYTES) {
        let rows = &rows[part];
        sqlx::query(
            "INSERT INTO order_history (order_id, event_type, message_id)
             SELECT o, t, m FROM UNNEST($1::uuid[], $2::text[], $3::uuid[]) WITH ORDINALITY AS u(o, t, m, n)
             ORDER BY n
             ON CONFLICT (order_id, message_id) DO NOTHING",
        )
        .bind(rows.iter().map(|(o, _, _)| *o).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, t, _)| t.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, m)| *m).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

pub(crate) async fn get_order(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<Option<OrderRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = $1"
    )))
    .bind(order_id)
    .fetch_optional(conn)
    .await
}

pub(crate) async fn history(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<Vec<HistoryRow>> {
    sqlx::query_as(
        "SELECT event_type, message_id, at FROM order_history WHERE order_id = $1 ORDER BY id",
    )
    .bind(order_id)
    .fetch_all(conn)
    .await
}

/// Orders, newest first, optionally of one status.
pub(crate) async fn list_orders(
    conn: &mut PgConnection,
    status: Option<OrderStatus>,
    limit: i64,
) -> sqlx::Result<Vec<OrderRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE ($1::text IS NULL OR status = $1)
         ORDER BY created_at DESC LIMIT $2"
    )))
    .bind(status)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Count of orders by status.
pub(crate) async fn count_by_status(
    conn: &mut PgConnection,
) -> sqlx::Result<Vec<(OrderStatus, i64)>> {
    sqlx::query_as("SELECT status, count(*) FROM orders GROUP BY status")
        .fetch_all(conn)
        .await
}

/// Open orders whose deadline has passed, locked; rows another sweeper holds are skipped.
pub(crate) async fn lock_overdue(conn: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<Order>> {
    let rows: Vec<OrderRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders
         WHERE status = ANY($1) AND deadline <= now()
         ORDER BY deadline LIMIT $2 FOR UPDATE SKIP LOCKED"
    )))
    .bind(&OrderStatus::OPEN[..])
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Order::from).collect())
}

/// Orders in order-id order after `after` (keyset paging, for walking every order).
pub(crate) async fn page_orders(
    conn: &mut PgConnection,
    status: Option<OrderStatus>,
    after: Uuid,
    limit: i64,
) -> sqlx::Result<Vec<OrderRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE ($1::text IS NULL OR status = $1) AND order_id > $2
         ORDER BY order_id LIMIT $3"
    )))
    .bind(status)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}
