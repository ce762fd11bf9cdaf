//! The stock and reservation tables' queries: the loading of a batch's rows, the storing
//! of what its decisions changed, and the read API's queries. Writes run in the caller's
//! transaction.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use events::catalog::StockItem;
use sqlx::PgConnection;
use uuid::Uuid;

use messaging::chunks::{STATEMENT_BYTES, UUIDS_PER_STATEMENT, by_size};
use messaging::consumer::saga_lock_keys;
use messaging::writes::Writes;
use platform::staged::changed;

use crate::saga::{InventoryInput, Reservation, ReservationState, StockLevels};
use crate::staging::InventoryTables;

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct StockRow {
    pub sku: String,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    pub adjusted: i64,
    pub updated_at: DateTime<Utc>,
}

/// Loads, and locks for the transaction, every row a batch's decisions read: the saga
/// lock and reservation of each order the inputs name, then the stock of every SKU they
/// name or a loaded reservation holds, in SKU order (so two transactions never wait on each
/// other in a cycle). A reservation created within the batch holds the SKUs of the
/// OrderCreated that created it, which are loaded too.
///
/// A SKU's first adjustment creates its row before locking it, so two first adjustments
/// queue on the row instead of both inserting; a row created so is left out of the tables
/// (the adjustment finds no stock, exactly as alone). A refused adjustment rolls the row
/// back with the rest of the transaction.
pub(crate) async fn load(
    conn: &mut PgConnection,
    inputs: &[InventoryInput],
) -> sqlx::Result<InventoryTables> {
    let order_ids: BTreeSet<Uuid> = inputs.iter().filter_map(InventoryInput::order_id).collect();
    // The saga locks come with the first statement, before it reads a row.
    let mut locks = saga_lock_keys(order_ids.iter().copied());
    let order_ids: Vec<Uuid> = order_ids.into_iter().collect();
    let mut tables = InventoryTables::default();
    for ids in order_ids.chunks(UUIDS_PER_STATEMENT) {
        let rows = messaging::saga_locks_taken!(sqlx::query!(
            r#"SELECT r.order_id, r.status AS "status: ReservationState",
                   r.items AS "items: sqlx::types::Json<Vec<StockItem>>"
               FROM UNNEST($1::uuid[]) AS k(id) CROSS JOIN LATERAL (
                   SELECT order_id, status, items FROM reservations WHERE order_id = k.id FOR UPDATE) r
               WHERE "#,
            ids,
            &std::mem::take(&mut locks),
        ))
        .fetch_all(&mut *conn)
        .await?;
        tables.reservations.extend(rows.into_iter().map(|r| {
            let reservation = Reservation {
                state: r.status,
                items: r.items.0,
            };
            (r.order_id, reservation)
        }));
    }
    let mut opening: BTreeSet<&str> = BTreeSet::new();
    let mut skus: BTreeSet<String> = BTreeSet::new();
    for input in inputs {
        if let InventoryInput::StockAdjusted(e) = input {
            opening.insert(&e.sku);
        }
        let reservation = input.order_id().and_then(|id| tables.reservations.get(&id));
        skus.extend(input.stock_keys(reservation));
    }
    let opening: Vec<&str> = opening.into_iter().collect();
    let mut opened: BTreeSet<String> = BTreeSet::new();
    for part in by_size(opening.iter().map(|s| s.len() + 4), STATEMENT_BYTES) {
        let rows = sqlx::query_scalar!(
            "INSERT INTO stock (sku, available, adjusted) SELECT s, 0, 0 FROM UNNEST($1::text[]) AS s
             ON CONFLICT (sku) DO NOTHING RETURNING sku",
            &opening[part] as &[&str],
        )
        .fetch_all(&mut *conn)
        .await?;
        opened.extend(rows);
    }
    let skus: Vec<String> = skus.into_iter().collect();
    for part in by_size(skus.iter().map(|s| s.len() + 4), STATEMENT_BYTES) {
        let rows = sqlx::query!(
            "SELECT s.* FROM UNNEST($1::text[]) AS k(sku) CROSS JOIN LATERAL (
                 SELECT sku, available, reserved, sold, adjusted FROM stock WHERE sku = k.sku FOR UPDATE) s",
            &skus[part],
        )
        .fetch_all(&mut *conn)
        .await?;
        let rows = rows.into_iter().filter(|r| !opened.contains(&r.sku));
        tables.stock.extend(rows.map(|r| {
            let levels = StockLevels {
                available: r.available,
                reserved: r.reserved,
                sold: r.sold,
                adjusted: r.adjusted,
            };
            (r.sku, levels)
        }));
    }
    Ok(tables)
}

/// Stores every row of `now` that differs from `loaded` (the rows were locked, or
/// created, by [`load`]): one write per table and [`STATEMENT_BYTES`], added to `writes`.
pub(crate) fn store(
    writes: &mut Writes,
    loaded: &InventoryTables,
    now: &InventoryTables,
) -> sqlx::Result<()> {
    let stock: Vec<(&String, &StockLevels)> = changed(&loaded.stock, &now.stock);
    let sizes: Vec<usize> = stock.iter().map(|(sku, _)| sku.len() + 40).collect();
    for part in by_size(sizes.iter().copied(), STATEMENT_BYTES) {
        let bytes = sizes[part.clone()].iter().sum();
        let rows = &stock[part];
        writes.add(
            "INSERT INTO stock (sku, available, reserved, sold, adjusted)
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[])
             ON CONFLICT (sku) DO UPDATE SET available = EXCLUDED.available, reserved = EXCLUDED.reserved,
                 sold = EXCLUDED.sold, adjusted = EXCLUDED.adjusted, updated_at = now()",
            bytes,
            |b| {
                b.add(rows.iter().map(|(sku, _)| sku.as_str()).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, s)| s.available).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, s)| s.reserved).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, s)| s.sold).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, s)| s.adjusted).collect::<Vec<_>>())
            },
        )?;
    }
    let reservations: Vec<(&Uuid, &Reservation)> = changed(&loaded.reservations, &now.reservations);
    let items = reservations
        .iter()
        .map(|(_, r)| serde_json::to_string(&r.items))
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let sizes: Vec<usize> = items.iter().map(|i| i.len() + 40).collect();
    for part in by_size(sizes.iter().copied(), STATEMENT_BYTES) {
        let bytes = sizes[part.clone()].iter().sum();
        let rows = &reservations[part.clone()];
        writes.add(
            "INSERT INTO reservations (order_id, status, items)
             SELECT o, s, i::jsonb FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS u(o, s, i)
             ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, items = EXCLUDED.items, updated_at = now()",
            bytes,
            |b| {
                b.add(rows.iter().map(|(id, _)| **id).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, r)| r.state.as_str()).collect::<Vec<_>>())?;
                b.add(&items[part])
            },
        )?;
    }
    Ok(())
}

pub(crate) async fn get_stock(
    conn: &mut PgConnection,
    sku: &str,
) -> sqlx::Result<Option<StockRow>> {
    sqlx::query_as!(
        StockRow,
        "SELECT sku, available, reserved, sold, adjusted, updated_at FROM stock WHERE sku = $1",
        sku,
    )
    .fetch_optional(conn)
    .await
}

/// SKUs after `after` in SKU order, at most `limit` (keyset paging on the primary key).
pub(crate) async fn list_stock(
    conn: &mut PgConnection,
    after: &str,
    limit: i64,
) -> sqlx::Result<Vec<StockRow>> {
    sqlx::query_as!(
        StockRow,
        "SELECT sku, available, reserved, sold, adjusted, updated_at FROM stock \
         WHERE sku > $1 ORDER BY sku LIMIT $2",
        after,
        limit,
    )
    .fetch_all(conn)
    .await
}

pub(crate) async fn get_reservation(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<Option<(ReservationState, sqlx::types::Json<Vec<StockItem>>)>> {
    let row = sqlx::query!(
        r#"SELECT status AS "status: ReservationState", items AS "items: sqlx::types::Json<Vec<StockItem>>"
           FROM reservations WHERE order_id = $1"#,
        order_id,
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.status, r.items)))
}

#[derive(Debug, Clone, serde::Serialize)]
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
    sqlx::query_as!(
        ReservationRow,
        r#"SELECT order_id, status AS "status: ReservationState",
               items AS "items: sqlx::types::Json<Vec<StockItem>>", updated_at
           FROM reservations WHERE ($1::uuid IS NULL OR order_id > $1) ORDER BY order_id LIMIT $2"#,
        after,
        limit,
    )
    .fetch_all(conn)
    .await
}
