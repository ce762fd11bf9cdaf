//! The order tables: named queries used by the HTTP routes, the handlers and the deadline
//! sweep. Every write happens inside a transaction the caller owns.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use events::catalog::OrderItem;
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use messaging::chunks::{STATEMENT_BYTES, UUIDS_PER_STATEMENT, by_size};
use messaging::outbox::{Emitter, Outbox, OutboxRows};
use messaging::writes::Writes;

use crate::saga::{IdempotencyKey, Order, OrderStatus};
use crate::staging::{HistoryRecord, OrderTables};

#[derive(Debug, Clone)]
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

/// `sqlx::query_as!` of [`OrderRow`]s: every column of `orders`, then the rest of the
/// statement (from `FROM` on) and its arguments.
macro_rules! select_orders {
    ($rest:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            OrderRow,
            r#"SELECT order_id, customer_id, status AS "status: OrderStatus", reason,
                   items AS "items: sqlx::types::Json<Vec<OrderItem>>", total, currency, deadline,
                   created_at, updated_at "#
                + $rest
            $(, $arg)*
        )
    };
}

#[derive(Debug, Clone)]
pub(crate) struct HistoryRow {
    pub event_type: String,
    pub message_id: Uuid,
    pub at: DateTime<Utc>,
}

/// The order an idempotency key made, with the hash of the body it came with.
pub(crate) async fn find_by_idempotency_key(
    conn: &mut PgConnection,
    key: &str,
) -> sqlx::Result<Option<(Uuid, OrderStatus, Option<String>)>> {
    let row = sqlx::query!(
        r#"SELECT order_id, status AS "status: OrderStatus", request_hash FROM orders WHERE idempotency_key = $1"#,
        key,
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.order_id, r.status, r.request_hash)))
}

/// The orders the idempotency `keys` made, by key: one statement for them all, each key
/// looked up in the key's unique index.
pub(crate) async fn find_by_idempotency_keys(
    conn: &mut PgConnection,
    keys: &[&str],
) -> sqlx::Result<HashMap<String, (Uuid, OrderStatus, Option<String>)>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    // LIMIT 1 keeps the lookup a subquery of its own, run once per key through the index,
    // rather than a join whose plan a nearly empty table could make a scan.
    let rows = sqlx::query!(
        r#"SELECT k.key AS "key!", o.order_id, o.status AS "status: OrderStatus", o.request_hash
           FROM UNNEST($1::text[]) AS k(key) CROSS JOIN LATERAL (
               SELECT order_id, status, request_hash FROM orders WHERE idempotency_key = k.key LIMIT 1) o"#,
        keys as &[&str],
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.key, (r.order_id, r.status, r.request_hash)))
        .collect())
}

/// Adds the inserts of new orders (each with its deadline and idempotency key) to
/// `writes`. An idempotency key another order holds makes the statement fail.
fn add_new_orders(
    writes: &mut Writes,
    orders: &[(&Order, DateTime<Utc>, Option<&IdempotencyKey>)],
) -> sqlx::Result<()> {
    let items = orders
        .iter()
        .map(|(o, _, _)| serde_json::to_string(&o.items))
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let sizes: Vec<usize> = orders
        .iter()
        .zip(&items)
        .map(|((o, _, k), items)| {
            o.customer_id.len()
                + items.len()
                + k.as_ref().map_or(0, |k| k.key.len() + k.request_hash.len())
                + 80
        })
        .collect();
    for part in by_size(sizes.iter().copied(), STATEMENT_BYTES) {
        let bytes = sizes[part.clone()].iter().sum();
        let rows = &orders[part.clone()];
        writes.add(
            "INSERT INTO orders (order_id, customer_id, status, items, total, currency, deadline, idempotency_key, request_hash)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[]::jsonb[], $5::int8[], $6::text[], $7::timestamptz[], $8::text[], $9::text[])",
            bytes,
            |b| {
                b.add(rows.iter().map(|(o, _, _)| o.order_id).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(o, _, _)| o.customer_id.as_str()).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(o, _, _)| o.status.as_str()).collect::<Vec<_>>())?;
                b.add(&items[part])?;
                b.add(rows.iter().map(|(o, _, _)| o.total).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(o, _, _)| o.currency.as_str()).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, d, _)| *d).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, _, k)| k.as_ref().map(|k| k.key.as_str())).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, _, k)| k.as_ref().map(|k| k.request_hash.as_str())).collect::<Vec<_>>())
            },
        )?;
    }
    Ok(())
}

/// Locks the orders of a batch, in order-id order (so two batches never wait on each
/// other in a cycle), and loads them into staging tables.
pub(crate) async fn lock_orders(
    conn: &mut PgConnection,
    mut order_ids: Vec<Uuid>,
) -> sqlx::Result<OrderTables> {
    order_ids.sort_unstable();
    order_ids.dedup();
    let mut tables = OrderTables::default();
    for ids in order_ids.chunks(UUIDS_PER_STATEMENT) {
        let rows = select_orders!(
            "FROM UNNEST($1::uuid[]) AS k(id) CROSS JOIN LATERAL (
                 SELECT * FROM orders WHERE order_id = k.id FOR UPDATE) o",
            ids,
        )
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            let deadline = row.deadline;
            tables.load(Order::from(row), deadline);
        }
    }
    Ok(tables)
}

/// Adds the writes that store what the decisions staged in `now` changed since `loaded`:
/// the orders placed, the orders that moved, then the history rows in order (each
/// message once per order, see [`add_history_rows`]).
pub(crate) fn store_staged(
    writes: &mut Writes,
    loaded: &OrderTables,
    now: &OrderTables,
) -> sqlx::Result<()> {
    add_new_orders(writes, &now.placed_since(loaded))?;
    add_moved_orders(writes, &now.moved_since(loaded))?;
    add_history_rows(writes, now.history_since(loaded))
}

/// Writes what `now` staged since `loaded` and the events each emitter emitted (with the
/// trace context it runs in), and commits `tx`: for the decisions taken outside the
/// consumer (placements, cancellations, the deadline sweep).
pub(crate) async fn commit_staged(
    tx: Transaction<'_, Postgres>,
    loaded: &OrderTables,
    now: &OrderTables,
    emitted: Vec<(Emitter, Option<&str>)>,
    outbox: &Outbox,
) -> sqlx::Result<()> {
    commit_staged_with(tx, Writes::default(), loaded, now, emitted, outbox).await
}

/// [`commit_staged`] with `writes` of the caller's sent along (a cancellation's audit
/// record).
pub(crate) async fn commit_staged_with(
    tx: Transaction<'_, Postgres>,
    mut writes: Writes,
    loaded: &OrderTables,
    now: &OrderTables,
    emitted: Vec<(Emitter, Option<&str>)>,
    outbox: &Outbox,
) -> sqlx::Result<()> {
    store_staged(&mut writes, loaded, now)?;
    let mut rows = OutboxRows::default();
    for (out, traceparent) in emitted {
        out.add_to(&mut rows, traceparent)?;
    }
    rows.commit_with(tx, writes, outbox).await
}

/// Whether `error` is the insert of an order whose idempotency key another order took.
pub(crate) fn idempotency_key_taken(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.constraint() == Some("orders_idempotency_key_key"))
}

/// Adds the writes of orders whose status or reason changed.
fn add_moved_orders(writes: &mut Writes, moved: &[(&Order, DateTime<Utc>)]) -> sqlx::Result<()> {
    let items = moved
        .iter()
        .map(|(o, _)| serde_json::to_string(&o.items))
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let sizes: Vec<usize> = moved
        .iter()
        .zip(&items)
        .map(|((o, _), items)| {
            o.customer_id.len() + o.reason.as_ref().map_or(0, String::len) + items.len() + 80
        })
        .collect();
    for part in by_size(sizes.iter().copied(), STATEMENT_BYTES) {
        let bytes = sizes[part.clone()].iter().sum();
        let rows = &moved[part.clone()];
        // An upsert on the primary key: the rows exist (locked since `lock_orders`), so
        // each finds its row by the key's index and only status, reason and updated_at
        // change. Unlike an UPDATE joined to the batch's keys, it needs no plan that knows
        // the table's size: a plan cached while the table was nearly empty scans nothing.
        writes.add(
            "INSERT INTO orders AS o (order_id, customer_id, status, reason, items, total, currency, deadline)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[]::jsonb[], $6::int8[], $7::text[], $8::timestamptz[])
             ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, reason = EXCLUDED.reason, updated_at = now()",
            bytes,
            |b| {
                b.add(rows.iter().map(|(o, _)| o.order_id).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(o, _)| o.customer_id.as_str()).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(o, _)| o.status.as_str()).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(o, _)| o.reason.as_deref()).collect::<Vec<_>>())?;
                b.add(&items[part])?;
                b.add(rows.iter().map(|(o, _)| o.total).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(o, _)| o.currency.as_str()).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, d)| *d).collect::<Vec<_>>())
            },
        )?;
    }
    Ok(())
}

/// Appends (order, event type, message id) rows to the orders' histories, in order. Once
/// per message: a message redelivered after its inbox row was purged is not a new event,
/// and the unique index on (order, message) drops it.
fn add_history_rows(writes: &mut Writes, rows: &[HistoryRecord]) -> sqlx::Result<()> {
    let sizes: Vec<usize> = rows.iter().map(|(_, t, _)| t.len() + 40).collect();
    for part in by_size(sizes.iter().copied(), STATEMENT_BYTES) {
        let bytes = sizes[part.clone()].iter().sum();
        let rows = &rows[part];
        writes.add(
            "INSERT INTO order_history (order_id, event_type, message_id)
             SELECT o, t, m FROM UNNEST($1::uuid[], $2::text[], $3::uuid[]) WITH ORDINALITY AS u(o, t, m, n)
             ORDER BY n
             ON CONFLICT (order_id, message_id) DO NOTHING",
            bytes,
            |b| {
                b.add(rows.iter().map(|(o, _, _)| *o).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, t, _)| t.as_str()).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, _, m)| *m).collect::<Vec<_>>())
            },
        )?;
    }
    Ok(())
}

pub(crate) async fn get_order(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<Option<OrderRow>> {
    select_orders!("FROM orders WHERE order_id = $1", order_id)
        .fetch_optional(conn)
        .await
}

pub(crate) async fn history(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<Vec<HistoryRow>> {
    sqlx::query_as!(
        HistoryRow,
        "SELECT event_type, message_id, at FROM order_history WHERE order_id = $1 ORDER BY id",
        order_id,
    )
    .fetch_all(conn)
    .await
}

/// Orders, newest first, optionally of one status.
pub(crate) async fn list_orders(
    conn: &mut PgConnection,
    status: Option<OrderStatus>,
    limit: i64,
) -> sqlx::Result<Vec<OrderRow>> {
    select_orders!(
        "FROM orders WHERE ($1::text IS NULL OR status = $1) ORDER BY created_at DESC LIMIT $2",
        status as Option<OrderStatus>,
        limit,
    )
    .fetch_all(conn)
    .await
}

/// Count of orders by status.
pub(crate) async fn count_by_status(
    conn: &mut PgConnection,
) -> sqlx::Result<Vec<(OrderStatus, i64)>> {
    let rows = sqlx::query!(
        r#"SELECT status AS "status: OrderStatus", count(*) AS "count!" FROM orders GROUP BY status"#
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.status, r.count)).collect())
}

/// Open orders whose deadline has passed, locked; rows another sweeper holds are skipped.
pub(crate) async fn lock_overdue(conn: &mut PgConnection, limit: i64) -> sqlx::Result<OrderTables> {
    let rows = select_orders!(
        "FROM orders WHERE status = ANY($1) AND deadline <= now()
         ORDER BY deadline LIMIT $2 FOR UPDATE SKIP LOCKED",
        &OrderStatus::OPEN[..] as &[OrderStatus],
        limit,
    )
    .fetch_all(conn)
    .await?;
    let mut tables = OrderTables::default();
    for row in rows {
        let deadline = row.deadline;
        tables.load(Order::from(row), deadline);
    }
    Ok(tables)
}

/// How many seconds the most overdue open order is past its deadline (0 when none is),
/// from the first entry of the partial index `orders_open_by_deadline`. The statuses are
/// written out so the planner can match the index's predicate (`OrderStatus::OPEN`).
pub(crate) async fn most_overdue_seconds(conn: &mut PgConnection) -> sqlx::Result<f64> {
    sqlx::query_scalar!(
        r#"SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(deadline)), 0)::float8 AS "seconds!" FROM orders
           WHERE status IN ('pending', 'reserved') AND deadline <= now()"#
    )
    .fetch_one(conn)
    .await
}

/// Orders in order-id order after `after` (keyset paging, for walking every order).
pub(crate) async fn page_orders(
    conn: &mut PgConnection,
    status: Option<OrderStatus>,
    after: Uuid,
    limit: i64,
) -> sqlx::Result<Vec<OrderRow>> {
    select_orders!(
        "FROM orders WHERE ($1::text IS NULL OR status = $1) AND order_id > $2
         ORDER BY order_id LIMIT $3",
        status as Option<OrderStatus>,
        after,
        limit,
    )
    .fetch_all(conn)
    .await
}
