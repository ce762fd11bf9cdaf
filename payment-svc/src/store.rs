//! The wallet and payment tables' queries: the loading of a batch's rows, the storing of
//! what its decisions changed, and the read API's queries. Writes run in the caller's
//! transaction.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use messaging::chunks::{STATEMENT_BYTES, UUIDS_PER_STATEMENT, by_size};
use messaging::consumer::saga_lock_keys;
use messaging::writes::Writes;
use platform::staged::changed;

use crate::saga::{Payment, PaymentInput, PaymentState, Wallet};
use crate::staging::PaymentTables;

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct WalletRow {
    pub customer_id: String,
    pub currency: String,
    pub balance: i64,
    pub deposited: i64,
    pub captured: i64,
    pub refunded: i64,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct PaymentRow {
    pub order_id: Uuid,
    pub payment_id: Option<Uuid>,
    pub customer_id: String,
    pub amount: i64,
    pub currency: String,
    pub status: PaymentState,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `sqlx::query_as!` of [`PaymentRow`]s: every column of `payments`, then the rest of the
/// statement (from `FROM` on) and its arguments.
macro_rules! select_payments {
    ($rest:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            PaymentRow,
            r#"SELECT order_id, payment_id, customer_id, amount, currency,
                   status AS "status: PaymentState", reason, created_at, updated_at "#
                + $rest
            $(, $arg)*
        )
    };
}

/// Loads, and locks for the transaction, every row a batch's decisions read: the saga
/// lock and payment of each order the inputs name, then the wallet of each customer they
/// name or a loaded payment charged, in customer order. A payment created within the batch
/// charges the customer of the StockReserved that created it, which is loaded too.
///
/// A first deposit opens its wallet before locking it, so two first deposits queue on the
/// row instead of both inserting; a wallet opened so is left out of the tables (the deposit
/// finds no wallet and opens it, exactly as alone). A refused deposit rolls the row back
/// with the rest of the transaction.
pub(crate) async fn load(
    conn: &mut PgConnection,
    inputs: &[PaymentInput],
) -> sqlx::Result<PaymentTables> {
    let order_ids: BTreeSet<Uuid> = inputs.iter().filter_map(PaymentInput::order_id).collect();
    // The saga locks come with the first statement, before it reads a row.
    let mut locks = saga_lock_keys(order_ids.iter().copied());
    let order_ids: Vec<Uuid> = order_ids.into_iter().collect();
    let mut tables = PaymentTables::default();
    for ids in order_ids.chunks(UUIDS_PER_STATEMENT) {
        let rows = messaging::saga_locks_taken!(sqlx::query!(
            r#"SELECT p.order_id, p.payment_id, p.customer_id, p.amount, p.currency,
                   p.status AS "status: PaymentState", p.reason
               FROM UNNEST($1::uuid[]) AS k(id) CROSS JOIN LATERAL (
                   SELECT order_id, payment_id, customer_id, amount, currency, status, reason
                   FROM payments WHERE order_id = k.id FOR UPDATE) p
               WHERE "#,
            ids,
            &std::mem::take(&mut locks),
        ))
        .fetch_all(&mut *conn)
        .await?;
        tables.payments.extend(rows.into_iter().map(|r| {
            let payment = Payment {
                payment_id: r.payment_id,
                customer_id: r.customer_id,
                amount: r.amount,
                currency: r.currency,
                state: r.status,
                reason: r.reason,
            };
            (r.order_id, payment)
        }));
    }
    let mut opening: BTreeMap<&str, &str> = BTreeMap::new();
    let mut customers: BTreeSet<&str> = BTreeSet::new();
    for input in inputs {
        if let PaymentInput::FundsDeposited(e) = input {
            opening.entry(&e.customer_id).or_insert(&e.currency);
        }
        let payment = input.order_id().and_then(|id| tables.payments.get(&id));
        customers.extend(input.wallet_key(payment));
    }
    let mut opened: BTreeSet<String> = BTreeSet::new();
    let opening: Vec<(&str, &str)> = opening.into_iter().collect();
    for part in by_size(
        opening.iter().map(|(c, cur)| c.len() + cur.len() + 8),
        STATEMENT_BYTES,
    ) {
        let (ids, currencies): (Vec<&str>, Vec<&str>) = opening[part].iter().copied().unzip();
        let rows = sqlx::query_scalar!(
            "INSERT INTO wallets (customer_id, currency, balance, deposited)
             SELECT c, cur, 0, 0 FROM UNNEST($1::text[], $2::text[]) AS u(c, cur)
             ON CONFLICT (customer_id) DO NOTHING RETURNING customer_id",
            &ids as &[&str],
            &currencies as &[&str],
        )
        .fetch_all(&mut *conn)
        .await?;
        opened.extend(rows);
    }
    let customers: Vec<&str> = customers.into_iter().collect();
    for part in by_size(customers.iter().map(|c| c.len() + 4), STATEMENT_BYTES) {
        let rows = sqlx::query!(
            "SELECT w.* FROM UNNEST($1::text[]) AS k(id) CROSS JOIN LATERAL (
                 SELECT customer_id, currency, balance, deposited, captured, refunded
                 FROM wallets WHERE customer_id = k.id FOR UPDATE) w",
            &customers[part] as &[&str],
        )
        .fetch_all(&mut *conn)
        .await?;
        tables.wallets.extend(
            rows.into_iter()
                .filter(|r| !opened.contains(&r.customer_id))
                .map(|r| {
                    let wallet = Wallet {
                        currency: r.currency,
                        balance: r.balance,
                        deposited: r.deposited,
                        captured: r.captured,
                        refunded: r.refunded,
                    };
                    (r.customer_id, wallet)
                }),
        );
    }
    Ok(tables)
}

/// Stores every row of `now` that differs from `loaded` (the rows were locked, or opened,
/// by [`load`]): one write per table and [`STATEMENT_BYTES`], added to `writes`.
pub(crate) fn store(
    writes: &mut Writes,
    loaded: &PaymentTables,
    now: &PaymentTables,
) -> sqlx::Result<()> {
    let wallets: Vec<(&String, &Wallet)> = changed(&loaded.wallets, &now.wallets);
    let sizes: Vec<usize> = wallets
        .iter()
        .map(|(c, w)| c.len() + w.currency.len() + 40)
        .collect();
    for part in by_size(sizes.iter().copied(), STATEMENT_BYTES) {
        let bytes = sizes[part.clone()].iter().sum();
        let rows = &wallets[part];
        writes.add(
            "INSERT INTO wallets (customer_id, currency, balance, deposited, captured, refunded)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::int8[])
             ON CONFLICT (customer_id) DO UPDATE SET currency = EXCLUDED.currency, balance = EXCLUDED.balance,
                 deposited = EXCLUDED.deposited, captured = EXCLUDED.captured,
                 refunded = EXCLUDED.refunded, updated_at = now()",
            bytes,
            |b| {
                b.add(rows.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, w)| w.currency.as_str()).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, w)| w.balance).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, w)| w.deposited).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, w)| w.captured).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, w)| w.refunded).collect::<Vec<_>>())
            },
        )?;
    }
    let payments: Vec<(&Uuid, &Payment)> = changed(&loaded.payments, &now.payments);
    let sizes: Vec<usize> = payments
        .iter()
        .map(|(_, p)| {
            p.customer_id.len() + p.currency.len() + p.reason.as_ref().map_or(0, String::len) + 80
        })
        .collect();
    for part in by_size(sizes.iter().copied(), STATEMENT_BYTES) {
        let bytes = sizes[part.clone()].iter().sum();
        let rows = &payments[part];
        writes.add(
            "INSERT INTO payments (order_id, payment_id, customer_id, amount, currency, status, reason)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int8[], $5::text[], $6::text[], $7::text[])
             ON CONFLICT (order_id) DO UPDATE SET payment_id = EXCLUDED.payment_id,
                 customer_id = EXCLUDED.customer_id, amount = EXCLUDED.amount, currency = EXCLUDED.currency,
                 status = EXCLUDED.status, reason = EXCLUDED.reason, updated_at = now()",
            bytes,
            |b| {
                b.add(rows.iter().map(|(id, _)| **id).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, p)| p.payment_id).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, p)| p.customer_id.as_str()).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, p)| p.amount).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, p)| p.currency.as_str()).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, p)| p.state.as_str()).collect::<Vec<_>>())?;
                b.add(rows.iter().map(|(_, p)| p.reason.as_deref()).collect::<Vec<_>>())
            },
        )?;
    }
    Ok(())
}

pub(crate) async fn get_wallet(
    conn: &mut PgConnection,
    customer_id: &str,
) -> sqlx::Result<Option<WalletRow>> {
    sqlx::query_as!(
        WalletRow,
        "SELECT customer_id, currency, balance, deposited, captured, refunded, updated_at FROM wallets WHERE customer_id = $1",
        customer_id,
    )
    .fetch_optional(conn)
        .await
}

/// Wallets after customer `after` in customer order, at most `limit` (keyset paging on
/// the primary key).
pub(crate) async fn list_wallets(
    conn: &mut PgConnection,
    after: &str,
    limit: i64,
) -> sqlx::Result<Vec<WalletRow>> {
    sqlx::query_as!(
        WalletRow,
        "SELECT customer_id, currency, balance, deposited, captured, refunded, updated_at \
         FROM wallets WHERE customer_id > $1 ORDER BY customer_id LIMIT $2",
        after,
        limit,
    )
    .fetch_all(conn)
    .await
}

pub(crate) async fn get_payment(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<Option<PaymentRow>> {
    select_payments!("FROM payments WHERE order_id = $1", order_id)
        .fetch_optional(conn)
        .await
}

/// Payments in order-id order, after the order id `after` (keyset paging).
pub(crate) async fn list_payments(
    conn: &mut PgConnection,
    after: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<PaymentRow>> {
    select_payments!(
        "FROM payments WHERE ($1::uuid IS NULL OR order_id > $1) ORDER BY order_id LIMIT $2",
        after,
        limit,
    )
    .fetch_all(conn)
    .await
}
