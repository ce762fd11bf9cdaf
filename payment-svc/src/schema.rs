//! The bodies payment-svc's routes answer, as OpenAPI schemas: the handlers of [`crate::http`]
//! name them in their `#[utoipa::path]`, and [`crate::openapi`] lists them in the document.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::saga::PaymentState;

fn payment_state() -> utoipa::openapi::Object {
    platform::openapi::one_of_strings(PaymentState::ALL.map(PaymentState::as_str))
}

/// `GET /wallets/{customer_id}`: one customer's wallet, in minor units of `currency`;
/// deposits = `balance + captured - refunded`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Wallet {
    pub customer_id: String,
    pub balance: i64,
    pub captured: i64,
    pub refunded: i64,
    /// ISO 4217 code, set by the first deposit.
    pub currency: String,
}

/// One wallet in `GET /wallets`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WalletRow {
    pub customer_id: String,
    pub currency: String,
    pub balance: i64,
    /// The sum of every FundsDeposited amount.
    pub deposited: i64,
    pub captured: i64,
    pub refunded: i64,
    pub updated_at: DateTime<Utc>,
}

/// `GET /wallets`: every customer who ever deposited.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WalletList {
    pub wallets: Vec<WalletRow>,
}

/// `GET /payments/{order_id}`, and one entry of `GET /payments`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Payment {
    pub order_id: Uuid,
    /// Set once the payment was captured.
    pub payment_id: Option<Uuid>,
    pub customer_id: String,
    /// In minor units of `currency`.
    pub amount: i64,
    pub currency: String,
    #[schema(schema_with = payment_state)]
    pub status: String,
    /// Why the payment failed (`insufficient_funds`, `unknown_customer`,
    /// `currency_mismatch`, `order_cancelled`); `null` otherwise.
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `GET /payments`: one page, in order-id order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PaymentList {
    pub payments: Vec<Payment>,
}
