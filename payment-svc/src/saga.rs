//! Payment's part of the saga as pure functions: what an order's payment does on each
//! event, and whether a wallet can pay.
//!
//! The `match` in [`decide`] names every state × input pair, with no wildcard.
//!
//! Late and reordered events:
//! - OrderCancelled before StockReserved leaves a `voided` tombstone; the StockReserved that
//!   arrives later charges nothing and answers PaymentFailed (`order_cancelled`).
//! - OrderCancelled after a capture refunds it, once.
//! - A repeated StockReserved, under any message id, finds the payment and charges nothing.

use events::catalog::PaymentFailureReason;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentState {
    /// Payment has not heard of the order.
    None,
    Captured,
    Failed,
    Refunded,
    /// The order was cancelled before any charge; nothing will be charged.
    Voided,
}

impl PaymentState {
    pub const ALL: [PaymentState; 5] = [
        PaymentState::None,
        PaymentState::Captured,
        PaymentState::Failed,
        PaymentState::Refunded,
        PaymentState::Voided,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentState::None => "none",
            PaymentState::Captured => "captured",
            PaymentState::Failed => "failed",
            PaymentState::Refunded => "refunded",
            PaymentState::Voided => "voided",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentInput {
    StockReserved,
    OrderCancelled,
}

impl PaymentInput {
    pub const ALL: [PaymentInput; 2] = [PaymentInput::StockReserved, PaymentInput::OrderCancelled];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Debit the wallet → `captured` + PaymentDone, or `failed` + PaymentFailed.
    TryCharge,
    /// Credit the capture back → `refunded` + PaymentRefunded.
    Refund,
    /// Record `voided`; nothing to give back, nothing emitted.
    Void,
    /// The order is already cancelled → `failed` + PaymentFailed(`order_cancelled`).
    RefuseCancelled,
    Ignore,
}

pub fn decide(state: PaymentState, input: PaymentInput) -> Step {
    use PaymentInput as I;
    use PaymentState as S;
    match (state, input) {
        (S::None, I::StockReserved) => Step::TryCharge,
        (S::None, I::OrderCancelled) => Step::Void,
        (S::Captured, I::OrderCancelled) => Step::Refund,
        (S::Voided, I::StockReserved) => Step::RefuseCancelled,
        // Decided already: a repeat changes nothing.
        (S::Captured | S::Failed | S::Refunded, I::StockReserved) => Step::Ignore,
        // Nothing kept for a failed, refunded or voided payment.
        (S::Failed | S::Refunded | S::Voided, I::OrderCancelled) => Step::Ignore,
    }
}

/// A wallet as the charge decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletView {
    pub currency: String,
    pub balance: i64,
}

/// Whether `wallet` can pay `amount` in `currency`.
pub fn can_charge(
    wallet: Option<&WalletView>,
    amount: i64,
    currency: &str,
) -> Result<(), PaymentFailureReason> {
    let Some(w) = wallet else {
        return Err(PaymentFailureReason::UnknownCustomer);
    };
    if w.currency != currency {
        return Err(PaymentFailureReason::CurrencyMismatch);
    }
    if w.balance < amount {
        return Err(PaymentFailureReason::InsufficientFunds);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_stock_reservation_charges_nothing() {
        assert_eq!(
            decide(PaymentState::None, PaymentInput::OrderCancelled),
            Step::Void
        );
        assert_eq!(
            decide(PaymentState::Voided, PaymentInput::StockReserved),
            Step::RefuseCancelled
        );
    }

    #[test]
    fn a_capture_is_refunded_once() {
        assert_eq!(
            decide(PaymentState::Captured, PaymentInput::OrderCancelled),
            Step::Refund
        );
        assert_eq!(
            decide(PaymentState::Refunded, PaymentInput::OrderCancelled),
            Step::Ignore
        );
    }

    #[test]
    fn charge_failures_have_reasons() {
        let w = WalletView {
            currency: "EUR".into(),
            balance: 100,
        };
        assert_eq!(
            can_charge(None, 1, "EUR"),
            Err(PaymentFailureReason::UnknownCustomer)
        );
        assert_eq!(
            can_charge(Some(&w), 1, "USD"),
            Err(PaymentFailureReason::CurrencyMismatch)
        );
        assert_eq!(
            can_charge(Some(&w), 101, "EUR"),
            Err(PaymentFailureReason::InsufficientFunds)
        );
        assert_eq!(can_charge(Some(&w), 100, "EUR"), Ok(()));
    }
}
