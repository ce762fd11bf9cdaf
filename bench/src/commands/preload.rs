//! Filling the service databases with finished sagas, straight through SQL, so benchmarks
//! can measure whether cost stays flat as the tables grow. Each preloaded order is a
//! confirmed saga with everything the real one leaves behind: the order and its history,
//! the sold reservation and stock, the captured payment and wallet, and the inbox and
//! outbox rows of its messages (sent). The rows are consistent, so `sagactl verify`
//! passes on them.

use sqlx::PgPool;

/// The databases of the three services.
pub(super) struct Databases {
    pub orders: PgPool,
    pub inventory: PgPool,
    pub payments: PgPool,
}

/// Inserts `n` confirmed sagas for one SKU and one customer named after `run`, in batches.
pub(super) async fn preload(db: &Databases, run: &str, n: i64) -> anyhow::Result<()> {
    const BATCH: i64 = 20_000;
    let sku = format!("PRELOAD-{run}");
    let customer = format!("preload-{run}");
    let mut from = 1;
    while from <= n {
        let to = (from + BATCH - 1).min(n);
        preload_orders(&db.orders, run, &sku, &customer, from, to).await?;
        preload_inventory(&db.inventory, run, from, to).await?;
        preload_payments(&db.payments, run, &customer, from, to).await?;
        from = to + 1;
    }
    sqlx::query(
        "INSERT INTO stock (sku, available, reserved, sold, adjusted) VALUES ($1, 0, 0, $2, $2)
         ON CONFLICT (sku) DO UPDATE SET sold = stock.sold + $2, adjusted = stock.adjusted + $2",
    )
    .bind(&sku)
    .bind(n)
    .execute(&db.inventory)
    .await?;
    sqlx::query(
        "INSERT INTO wallets (customer_id, currency, balance, deposited, captured) VALUES ($1, 'EUR', 0, $2, $2)
         ON CONFLICT (customer_id) DO UPDATE SET deposited = wallets.deposited + $2, captured = wallets.captured + $2",
    )
    .bind(&customer)
    .bind(n * 100)
    .execute(&db.payments)
    .await?;
    for pool in [&db.orders, &db.inventory, &db.payments] {
        sqlx::query("ANALYZE").execute(pool).await?;
    }
    Ok(())
}

// Ids are derived from (run, kind, number) so the three databases agree on them.
const ORDER_ID: &str = "md5($1 || '-order-' || g)::uuid";

async fn preload_orders(
    pool: &PgPool,
    run: &str,
    sku: &str,
    customer: &str,
    from: i64,
    to: i64,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO orders (order_id, customer_id, status, items, total, currency, deadline, created_at, updated_at)
         SELECT {ORDER_ID}, $2, 'confirmed', jsonb_build_array(jsonb_build_object('sku', $3::text, 'quantity', 1, 'unit_price', 100)),
                100, 'EUR', now(), now(), now()
         FROM generate_series($4::bigint, $5::bigint) g"
    )))
    .bind(run)
    .bind(customer)
    .bind(sku)
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO order_history (order_id, event_type, message_id)
         SELECT {ORDER_ID}, t, md5($1 || '-' || t || '-' || g)::uuid
         FROM generate_series($2::bigint, $3::bigint) g,
              unnest(ARRAY['OrderCreated', 'StockReserved', 'PaymentDone', 'OrderConfirmed']) t"
    )))
    .bind(run)
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?;
    messaging_rows(
        &mut tx,
        run,
        from,
        to,
        "order-svc",
        &["OrderCreated", "OrderConfirmed"],
        &["StockReserved", "PaymentDone"],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn preload_inventory(pool: &PgPool, run: &str, from: i64, to: i64) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO reservations (order_id, status, items)
         SELECT {ORDER_ID}, 'sold', jsonb_build_array(jsonb_build_object('sku', 'PRELOAD-' || $1, 'quantity', 1))
         FROM generate_series($2::bigint, $3::bigint) g"
    )))
    .bind(run)
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?;
    messaging_rows(
        &mut tx,
        run,
        from,
        to,
        "inventory-svc",
        &["StockReserved"],
        &["OrderCreated", "OrderConfirmed"],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn preload_payments(
    pool: &PgPool,
    run: &str,
    customer: &str,
    from: i64,
    to: i64,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO payments (order_id, payment_id, customer_id, amount, currency, status)
         SELECT {ORDER_ID}, md5($1 || '-payment-' || g)::uuid, $2, 100, 'EUR', 'captured'
         FROM generate_series($3::bigint, $4::bigint) g"
    )))
    .bind(run)
    .bind(customer)
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await?;
    messaging_rows(
        &mut tx,
        run,
        from,
        to,
        "payment-svc",
        &["PaymentDone"],
        &["StockReserved"],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The outbox rows (sent) of what the service emitted and the inbox rows of what it
/// consumed, for orders `from..=to`.
async fn messaging_rows(
    tx: &mut sqlx::PgConnection,
    run: &str,
    from: i64,
    to: i64,
    service: &str,
    emitted: &[&str],
    consumed: &[&str],
) -> anyhow::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO outbox (message_id, event_type, routing_key, correlation_id, producer, occurred_at, body, sent_at)
         SELECT md5($1 || '-' || t || '-' || g)::uuid, t, 'preloaded', {ORDER_ID}::text, $4, now(), '{{}}', now()
         FROM generate_series($2::bigint, $3::bigint) g, unnest($5::text[]) t"
    )))
    .bind(run)
    .bind(from)
    .bind(to)
    .bind(service)
    .bind(emitted)
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO inbox (consumer, message_id, event_type, correlation_id, producer, occurred_at)
         SELECT $4, md5($1 || '-' || t || '-' || g)::uuid, t, {ORDER_ID}::text, 'preloaded', now()
         FROM generate_series($2::bigint, $3::bigint) g, unnest($5::text[]) t"
    )))
    .bind(run)
    .bind(from)
    .bind(to)
    .bind(service)
    .bind(consumed)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
