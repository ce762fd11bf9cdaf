//! Payment's part of the saga as one pure function: [`decide`] takes what the handler
//! loaded (the order's payment and the wallet the input concerns) and the input with its
//! payload, and returns the [`Plan`]: the payment and wallet to store and the events to
//! emit, or a [`Refusal`].
//!
//! The `match` in [`decide`] names every payment state × input pair.
//!
//! Late and reordered events:
//! - OrderCancelled before StockReserved leaves a `voided` tombstone; the StockReserved that
//!   arrives later charges nothing and answers PaymentFailed (`order_cancelled`).
//! - OrderCancelled after a capture refunds it, once.
//! - A repeated StockReserved, under any message id, finds the payment and charges nothing.

use events::Event;
use events::catalog::{
    FundsDeposited, PaymentDone, PaymentFailed, PaymentFailureReason, PaymentRefunded,
    StockReserved,
};
use platform::inputs::{Refusal, add};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A stored payment's state. An order payment-svc has not heard of has no payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum PaymentState {
    Captured,
    Failed,
    Refunded,
    /// The order was cancelled before any charge; nothing will be charged.
    Voided,
}

impl PaymentState {
    pub const ALL: [PaymentState; 4] = [
        PaymentState::Captured,
        PaymentState::Failed,
        PaymentState::Refunded,
        PaymentState::Voided,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentState::Captured => "captured",
            PaymentState::Failed => "failed",
            PaymentState::Refunded => "refunded",
            PaymentState::Voided => "voided",
        }
    }
}

platform::saga_inputs! {
    /// What payment-svc reacts to: the events it consumes, with their payloads.
    pub enum PaymentInput {
        events: [StockReserved, OrderCancelled, FundsDeposited],
    }
}

impl PaymentInput {
    /// The order the input is about; deposits concern none.
    pub(crate) fn order_id(&self) -> Option<Uuid> {
        match self {
            PaymentInput::StockReserved(e) => Some(e.order_id),
            PaymentInput::OrderCancelled(e) => Some(e.order_id),
            PaymentInput::FundsDeposited(_) => None,
        }
    }

    /// The customer whose wallet a decision on this input may read or write: the one the
    /// input names, or else the one the order's payment charged.
    pub(crate) fn wallet_key<'a>(&'a self, payment: Option<&'a Payment>) -> Option<&'a str> {
        match self {
            PaymentInput::StockReserved(e) => Some(&e.customer_id),
            PaymentInput::FundsDeposited(e) => Some(&e.customer_id),
            PaymentInput::OrderCancelled(_) => payment.map(|p| p.customer_id.as_str()),
        }
    }
}

/// One order's payment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub payment_id: Option<Uuid>,
    pub customer_id: String,
    pub amount: i64,
    pub currency: String,
    pub state: PaymentState,
    pub reason: Option<String>,
}

/// A customer's wallet: its balance and running totals (deposited = balance + captured -
/// refunded, always).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wallet {
    pub currency: String,
    pub balance: i64,
    pub deposited: i64,
    pub captured: i64,
    pub refunded: i64,
}

/// Everything a decision reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentContext {
    pub payment: Option<Payment>,
    /// The wallet the input concerns (its customer's, or the one the payment charged),
    /// if it exists.
    pub wallet: Option<Wallet>,
    /// The id a capture gets, if the decision makes one.
    pub new_payment_id: Uuid,
}

/// What a decision does, as data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The order's payment, as it is to be stored.
    pub payment: Option<(Uuid, Payment)>,
    /// The wallet, as it is to be stored, by customer.
    pub wallet: Option<(String, Wallet)>,
    pub emit: Vec<Event>,
}

/// Payment's reaction to `input` given what was loaded for it.
pub fn decide(ctx: &PaymentContext, input: &PaymentInput) -> Result<Plan, Refusal> {
    use PaymentInput as I;
    use PaymentState as S;
    match (ctx.payment.as_ref(), input) {
        // Deposits concern no order, whatever its payment.
        (
            None
            | Some(Payment {
                state: S::Captured | S::Failed | S::Refunded | S::Voided,
                ..
            }),
            I::FundsDeposited(e),
        ) => deposit(ctx.wallet.as_ref(), e),
        (None, I::StockReserved(e)) => charge(ctx, e),
        (None, I::OrderCancelled(e)) => Ok(Plan {
            payment: Some((
                e.order_id,
                Payment {
                    payment_id: None,
                    customer_id: String::new(),
                    amount: 0,
                    currency: String::new(),
                    state: S::Voided,
                    reason: Some("order_cancelled".to_owned()),
                },
            )),
            ..Plan::default()
        }),
        (
            Some(
                p @ Payment {
                    state: S::Captured, ..
                },
            ),
            I::OrderCancelled(e),
        ) => refund(ctx.wallet.as_ref(), e.order_id, p),
        (
            Some(Payment {
                state: S::Voided, ..
            }),
            I::StockReserved(e),
        ) => Ok(fail(e, PaymentFailureReason::OrderCancelled)),
        // Decided already: a repeat changes nothing.
        (
            Some(Payment {
                state: S::Captured | S::Failed | S::Refunded,
                ..
            }),
            I::StockReserved(_),
        ) => Ok(Plan::default()),
        // Nothing kept for a failed, refunded or voided payment.
        (
            Some(Payment {
                state: S::Failed | S::Refunded | S::Voided,
                ..
            }),
            I::OrderCancelled(_),
        ) => Ok(Plan::default()),
    }
}

/// Debit the wallet → `captured` + PaymentDone, or `failed` + PaymentFailed.
fn charge(ctx: &PaymentContext, r: &StockReserved) -> Result<Plan, Refusal> {
    let wallet = match can_charge(ctx.wallet.as_ref(), r.total.amount, &r.total.currency) {
        Ok(w) => w,
        Err(reason) => return Ok(fail(r, reason)),
    };
    let payment_id = ctx.new_payment_id;
    Ok(Plan {
        wallet: Some((
            r.customer_id.clone(),
            Wallet {
                // can_charge checked that the balance covers the total.
                balance: wallet.balance - r.total.amount,
                captured: add("the captures' sum", wallet.captured, r.total.amount)?,
                ..wallet.clone()
            },
        )),
        payment: Some((
            r.order_id,
            Payment {
                payment_id: Some(payment_id),
                customer_id: r.customer_id.clone(),
                amount: r.total.amount,
                currency: r.total.currency.clone(),
                state: PaymentState::Captured,
                reason: None,
            },
        )),
        emit: vec![Event::PaymentDone(PaymentDone {
            order_id: r.order_id,
            payment_id,
            customer_id: r.customer_id.clone(),
            amount: r.total.amount,
            currency: r.total.currency.clone(),
        })],
    })
}

/// `failed` + PaymentFailed(`reason`); nothing charged.
fn fail(r: &StockReserved, reason: PaymentFailureReason) -> Plan {
    Plan {
        payment: Some((
            r.order_id,
            Payment {
                payment_id: None,
                customer_id: r.customer_id.clone(),
                amount: r.total.amount,
                currency: r.total.currency.clone(),
                state: PaymentState::Failed,
                reason: Some(failure_text(reason).to_owned()),
            },
        )),
        wallet: None,
        emit: vec![Event::PaymentFailed(PaymentFailed {
            order_id: r.order_id,
            customer_id: r.customer_id.clone(),
            amount: r.total.amount,
            currency: Some(r.total.currency.clone()),
            reason,
        })],
    }
}

/// The reason as stored in the payment row: its name in the event.
fn failure_text(reason: PaymentFailureReason) -> &'static str {
    match reason {
        PaymentFailureReason::InsufficientFunds => "insufficient_funds",
        PaymentFailureReason::UnknownCustomer => "unknown_customer",
        PaymentFailureReason::CurrencyMismatch => "currency_mismatch",
        PaymentFailureReason::OrderCancelled => "order_cancelled",
    }
}

/// Credit the capture back → `refunded` + PaymentRefunded. A capture always has its id and
/// its wallet; a row without them is corrupt and refused rather than refunded blindly.
fn refund(wallet: Option<&Wallet>, order_id: Uuid, p: &Payment) -> Result<Plan, Refusal> {
    let corrupt = |what: &str| {
        Refusal::new(
            "corrupt_payment",
            format!("the capture of order {order_id} has no {what}"),
        )
    };
    let payment_id = p.payment_id.ok_or_else(|| corrupt("payment id"))?;
    let wallet = wallet.ok_or_else(|| corrupt("wallet"))?;
    Ok(Plan {
        wallet: Some((
            p.customer_id.clone(),
            Wallet {
                balance: add("the balance", wallet.balance, p.amount)?,
                refunded: add("the refunds' sum", wallet.refunded, p.amount)?,
                ..wallet.clone()
            },
        )),
        payment: Some((
            order_id,
            Payment {
                state: PaymentState::Refunded,
                reason: Some("order_cancelled".to_owned()),
                ..p.clone()
            },
        )),
        emit: vec![Event::PaymentRefunded(PaymentRefunded {
            order_id,
            payment_id,
            amount: p.amount,
            currency: p.currency.clone(),
        })],
    })
}

/// Adds a deposit (opening the wallet in that currency); refused when the wallet is in
/// another currency.
fn deposit(wallet: Option<&Wallet>, e: &FundsDeposited) -> Result<Plan, Refusal> {
    let opened = Wallet {
        currency: e.currency.clone(),
        balance: 0,
        deposited: 0,
        captured: 0,
        refunded: 0,
    };
    let w = wallet.unwrap_or(&opened);
    if w.currency != e.currency {
        return Err(Refusal::new(
            "currency_mismatch",
            format!("the wallet of {} is not in {}", e.customer_id, e.currency),
        ));
    }
    Ok(Plan {
        wallet: Some((
            e.customer_id.clone(),
            Wallet {
                balance: add("the balance", w.balance, e.amount)?,
                deposited: add("the deposits' sum", w.deposited, e.amount)?,
                ..w.clone()
            },
        )),
        ..Plan::default()
    })
}

/// Whether `wallet` can pay `amount` in `currency`; the wallet when it can.
fn can_charge<'w>(
    wallet: Option<&'w Wallet>,
    amount: i64,
    currency: &str,
) -> Result<&'w Wallet, PaymentFailureReason> {
    let Some(w) = wallet else {
        return Err(PaymentFailureReason::UnknownCustomer);
    };
    if w.currency != currency {
        return Err(PaymentFailureReason::CurrencyMismatch);
    }
    if w.balance < amount {
        return Err(PaymentFailureReason::InsufficientFunds);
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use events::catalog::{CancelReason, Money, OrderCancelled};

    use super::*;

    fn wallet(currency: &str, balance: i64) -> Wallet {
        Wallet {
            currency: currency.into(),
            balance,
            deposited: balance,
            captured: 0,
            refunded: 0,
        }
    }

    fn ctx(payment: Option<PaymentState>, wallet: Option<Wallet>) -> PaymentContext {
        PaymentContext {
            payment: payment.map(|state| Payment {
                payment_id: Some(Uuid::from_u128(7)),
                customer_id: "c".into(),
                amount: 30,
                currency: "EUR".into(),
                state,
                reason: None,
            }),
            wallet,
            new_payment_id: Uuid::from_u128(9),
        }
    }

    fn reserved(total: i64, currency: &str) -> PaymentInput {
        PaymentInput::StockReserved(StockReserved {
            order_id: Uuid::nil(),
            customer_id: "c".into(),
            items: Vec::new(),
            total: Money::new(total, currency),
        })
    }

    fn cancelled() -> PaymentInput {
        PaymentInput::OrderCancelled(OrderCancelled {
            order_id: Uuid::nil(),
            reason: CancelReason::Timeout,
        })
    }

    fn failure(plan: &Plan) -> Option<PaymentFailureReason> {
        match plan.emit.first() {
            Some(Event::PaymentFailed(f)) => Some(f.reason),
            _ => None,
        }
    }

    #[test]
    fn a_late_stock_reservation_charges_nothing() {
        let voided = decide(&ctx(None, None), &cancelled()).unwrap();
        assert_eq!(voided.payment.unwrap().1.state, PaymentState::Voided);
        let late = decide(
            &ctx(Some(PaymentState::Voided), Some(wallet("EUR", 100))),
            &reserved(1, "EUR"),
        )
        .unwrap();
        assert_eq!(failure(&late), Some(PaymentFailureReason::OrderCancelled));
        assert_eq!(late.wallet, None);
    }

    #[test]
    fn a_capture_is_refunded_once() {
        let w = Some(wallet("EUR", 0));
        let refund = decide(&ctx(Some(PaymentState::Captured), w.clone()), &cancelled()).unwrap();
        assert_eq!(refund.wallet.unwrap().1.balance, 30);
        let again = decide(&ctx(Some(PaymentState::Refunded), w), &cancelled()).unwrap();
        assert_eq!(again, Plan::default());
    }

    #[test]
    fn a_capture_without_its_id_is_refused_not_refunded_with_a_nil_id() {
        let mut c = ctx(Some(PaymentState::Captured), Some(wallet("EUR", 0)));
        if let Some(p) = c.payment.as_mut() {
            p.payment_id = None;
        }
        assert_eq!(
            decide(&c, &cancelled()).unwrap_err().code,
            "corrupt_payment"
        );
    }

    #[test]
    fn a_deposit_past_the_64_bit_range_is_refused_before_anything_is_written() {
        let full = Wallet {
            currency: "EUR".into(),
            balance: i64::MAX,
            deposited: i64::MAX,
            captured: 0,
            refunded: 0,
        };
        let deposit = FundsDeposited {
            customer_id: "rich".into(),
            amount: 1,
            currency: "EUR".into(),
        };
        let refused = super::deposit(Some(&full), &deposit).unwrap_err();
        assert_eq!(refused.code, "invalid_value", "{refused:?}");
    }

    #[test]
    fn charge_failures_have_reasons() {
        let w = Some(wallet("EUR", 100));
        let charge = |w: Option<Wallet>, total, cur| decide(&ctx(None, w), &reserved(total, cur));
        let cases = [
            (None, 1, "EUR", Some(PaymentFailureReason::UnknownCustomer)),
            (
                w.clone(),
                1,
                "USD",
                Some(PaymentFailureReason::CurrencyMismatch),
            ),
            (
                w.clone(),
                101,
                "EUR",
                Some(PaymentFailureReason::InsufficientFunds),
            ),
            (w.clone(), 100, "EUR", None),
        ];
        for (w, total, cur, expected) in cases {
            assert_eq!(failure(&charge(w, total, cur).unwrap()), expected);
        }
        let done = charge(w, 100, "EUR").unwrap();
        assert_eq!(done.wallet.unwrap().1.balance, 0);
    }

    #[test]
    fn a_deposit_in_another_currency_is_refused() {
        let deposit = PaymentInput::FundsDeposited(FundsDeposited {
            customer_id: "c".into(),
            amount: 5,
            currency: "USD".into(),
        });
        let refused = decide(&ctx(None, Some(wallet("EUR", 1))), &deposit).unwrap_err();
        assert_eq!(refused.code, "currency_mismatch");
        let opened = decide(&ctx(None, None), &deposit).unwrap();
        assert_eq!(opened.wallet.unwrap().1.balance, 5);
    }

    #[test]
    fn stored_failure_reasons_are_the_events_names() {
        for reason in [
            PaymentFailureReason::InsufficientFunds,
            PaymentFailureReason::UnknownCustomer,
            PaymentFailureReason::CurrencyMismatch,
            PaymentFailureReason::OrderCancelled,
        ] {
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::json!(failure_text(reason))
            );
        }
    }

    #[test]
    fn each_state_is_stored_and_shown_under_its_name() {
        for s in PaymentState::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
