//! The wallet and payment tables' queries. Writes run in the caller's transaction.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::saga::{PaymentState, WalletView};

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct WalletRow {
    pub customer_id: String,
    pub currency: String,
    pub balance: i64,
    pub deposited: i64,
    pub captured: i64,
    pub refunded: i64,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct PaymentRow {
    pub order_id: Uuid,
    pub payment_id: Option<Uuid>,
    pub customer_id: String,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const PAYMENT_COLUMNS: &str =
    "order_id, payment_id, customer_id, amount, currency, status, reason, created_at, updated_at";

/// The payment of an order, locked for the transaction.
pub async fn lock_payment(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<Option<PaymentRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1 FOR UPDATE"
    )))
    .bind(order_id)
    .fetch_optional(conn)
    .await
}

pub fn state_of(payment: Option<&PaymentRow>) -> PaymentState {
    payment.map_or(PaymentState::None, |p| {
        PaymentState::parse(&p.status).unwrap_or(PaymentState::Failed)
    })
}

pub struct PaymentRecord<'a> {
    pub order_id: Uuid,
    pub payment_id: Option<Uuid>,
    pub customer_id: &'a str,
    pub amount: i64,
    pub currency: &'a str,
    pub state: PaymentState,
    pub reason: Option<&'a str>,
}

pub async fn upsert_payment(conn: &mut PgConnection, p: &PaymentRecord<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO payments (order_id, payment_id, customer_id, amount, currency, status, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (order_id) DO UPDATE SET payment_id = COALESCE(EXCLUDED.payment_id, payments.payment_id),
             customer_id = EXCLUDED.customer_id, amount = EXCLUDED.amount, currency = EXCLUDED.currency,
             status = EXCLUDED.status, reason = EXCLUDED.reason, updated_at = now()",
    )
    .bind(p.order_id)
    .bind(p.payment_id)
    .bind(p.customer_id)
    .bind(p.amount)
    .bind(p.currency)
    .bind(p.state.as_str())
    .bind(p.reason)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn lock_wallet(
    conn: &mut PgConnection,
    customer_id: &str,
) -> sqlx::Result<Option<WalletView>> {
    let row: Option<(String, i64)> =
        sqlx::query_as("SELECT currency, balance FROM wallets WHERE customer_id = $1 FOR UPDATE")
            .bind(customer_id)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(currency, balance)| WalletView { currency, balance }))
}

pub async fn debit(conn: &mut PgConnection, customer_id: &str, amount: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE wallets SET balance = balance - $2, captured = captured + $2, updated_at = now() WHERE customer_id = $1")
        .bind(customer_id)
        .bind(amount)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn credit_refund(
    conn: &mut PgConnection,
    customer_id: &str,
    amount: i64,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE wallets SET balance = balance + $2, refunded = refunded + $2, updated_at = now() WHERE customer_id = $1")
        .bind(customer_id)
        .bind(amount)
        .execute(conn)
        .await?;
    Ok(())
}

/// Adds a deposit (creating the wallet in that currency); `None` when the wallet exists in
/// another currency, and then nothing changed.
pub async fn deposit(
    conn: &mut PgConnection,
    customer_id: &str,
    amount: i64,
    currency: &str,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "INSERT INTO wallets (customer_id, currency, balance, deposited) VALUES ($1, $3, $2, $2)
         ON CONFLICT (customer_id) DO UPDATE SET balance = wallets.balance + $2,
             deposited = wallets.deposited + $2, updated_at = now()
             WHERE wallets.currency = $3
         RETURNING balance",
    )
    .bind(customer_id)
    .bind(amount)
    .bind(currency)
    .fetch_optional(conn)
    .await
}

pub async fn get_wallet(
    conn: &mut PgConnection,
    customer_id: &str,
) -> sqlx::Result<Option<WalletRow>> {
    sqlx::query_as("SELECT customer_id, currency, balance, deposited, captured, refunded, updated_at FROM wallets WHERE customer_id = $1")
        .bind(customer_id)
        .fetch_optional(conn)
        .await
}

pub async fn list_wallets(conn: &mut PgConnection) -> sqlx::Result<Vec<WalletRow>> {
    sqlx::query_as("SELECT customer_id, currency, balance, deposited, captured, refunded, updated_at FROM wallets ORDER BY customer_id LIMIT 10000")
        .fetch_all(conn)
        .await
}

pub async fn get_payment(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> sqlx::Result<Option<PaymentRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1"
    )))
    .bind(order_id)
    .fetch_optional(conn)
    .await
}

/// Payments in order-id order, after the order id `after` (keyset paging).
pub async fn list_payments(
    conn: &mut PgConnection,
    after: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<PaymentRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE ($1::uuid IS NULL OR order_id > $1) ORDER BY order_id LIMIT $2"
    )))
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}
