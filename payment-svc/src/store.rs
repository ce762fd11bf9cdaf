//! The wallet and payment tables' queries: the loading of a decision's context, the
//! writes of its plan, and the read API's queries. Writes run in the caller's transaction.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use messaging::consumer::lock_saga;

use crate::saga::{Payment, PaymentContext, PaymentInput, PaymentState, Wallet};

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub(crate) struct WalletRow {
    pub customer_id: String,
    pub currency: String,
    pub balance: i64,
    pub deposited: i64,
    pub captured: i64,
    pub refunded: i64,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
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

const PAYMENT_COLUMNS: &str =
    "order_id, payment_id, customer_id, amount, currency, status, reason, created_at, updated_at";

/// Loads what [`saga::decide`](crate::saga::decide) reads for `input`, locking it for the
/// transaction: the order's saga lock and payment, then the wallet.
pub(crate) async fn load(
    conn: &mut PgConnection,
    input: &PaymentInput,
) -> sqlx::Result<PaymentContext> {
    let payment = match input.order_id() {
        Some(order_id) => {
            lock_saga(conn, order_id).await?;
            sqlx::query_as(
                "SELECT payment_id, customer_id, amount, currency, status, reason
                 FROM payments WHERE order_id = $1 FOR UPDATE",
            )
            .bind(order_id)
            .fetch_optional(&mut *conn)
            .await?
        }
        None => None,
    };
    if let PaymentInput::FundsDeposited(e) = input {
        // A first deposit opens the wallet before locking it, so two first deposits queue
        // on the row instead of both inserting. A refused deposit rolls the row back with
        // the rest of the transaction.
        sqlx::query(
            "INSERT INTO wallets (customer_id, currency, balance, deposited) VALUES ($1, $2, 0, 0)
             ON CONFLICT (customer_id) DO NOTHING",
        )
        .bind(&e.customer_id)
        .bind(&e.currency)
        .execute(&mut *conn)
        .await?;
    }
    let wallet = match input.wallet_key(payment.as_ref()) {
        Some(customer_id) => {
            sqlx::query_as(
                "SELECT currency, balance, deposited, captured, refunded FROM wallets
                 WHERE customer_id = $1 FOR UPDATE",
            )
            .bind(customer_id)
            .fetch_optional(conn)
            .await?
        }
        None => None,
    };
    Ok(PaymentContext {
        payment,
        wallet,
        new_payment_id: Uuid::now_v7(),
    })
}

pub(crate) async fn set_payment(
    conn: &mut PgConnection,
    order_id: Uuid,
    p: &Payment,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO payments (order_id, payment_id, customer_id, amount, currency, status, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (order_id) DO UPDATE SET payment_id = EXCLUDED.payment_id,
             customer_id = EXCLUDED.customer_id, amount = EXCLUDED.amount, currency = EXCLUDED.currency,
             status = EXCLUDED.status, reason = EXCLUDED.reason, updated_at = now()",
    )
    .bind(order_id)
    .bind(p.payment_id)
    .bind(&p.customer_id)
    .bind(p.amount)
    .bind(&p.currency)
    .bind(p.state)
    .bind(&p.reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores a wallet (its row was locked, or opened, by [`load`]).
pub(crate) async fn set_wallet(
    conn: &mut PgConnection,
    customer_id: &str,
    w: &Wallet,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO wallets (customer_id, currency, balance, deposited, captured, refunded)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (customer_id) DO UPDATE SET currency = EXCLUDED.currency, balance = EXCLUDED.balance,
             deposited = EXCLUDED.deposited, captured = EXCLUDED.captured,
             refunded = EXCLUDED.refunded, updated_at = now()",
    )
    .bind(customer_id)
    .bind(&w.currency)
    .bind(w.balance)
    .bind(w.deposited)
    .bind(w.captured)
    .bind(w.refunded)
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) async fn get_wallet(
    conn: &mut PgConnection,
    customer_id: &str,
) -> sqlx::Result<Option<WalletRow>> {
    sqlx::query_as("SELECT customer_id, currency, balance, deposited, captured, refunded, updated_at FROM wallets WHERE customer_id = $1")
        .bind(customer_id)
        .fetch_optional(conn)
        .await
}

pub(crate) async fn list_wallets(conn: &mut PgConnection) -> sqlx::Result<Vec<WalletRow>> {
    sqlx::query_as("SELECT customer_id, currency, balance, deposited, captured, refunded, updated_at FROM wallets ORDER BY customer_id LIMIT 10000")
        .fetch_all(conn)
        .await
}

pub(crate) async fn get_payment(
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
pub(crate) async fn list_payments(
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
