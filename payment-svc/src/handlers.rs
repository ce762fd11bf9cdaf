//! payment-svc's reactions: StockReserved charges, OrderCancelled refunds or voids, and
//! FundsDeposited fills a wallet.

use events::Event;
use events::catalog::{
    FundsDeposited, PaymentDone, PaymentFailed, PaymentFailureReason, PaymentRefunded,
    StockReserved,
};
use messaging::consumer::{Handler, IncomingEvent, lock_saga};
use messaging::outbox::Emitter;
use messaging::retry::HandlerError;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::saga::{self, PaymentInput, PaymentState, Step};
use crate::store::{self, PaymentRecord, PaymentRow};

pub struct PaymentHandler;

impl Handler for PaymentHandler {
    type Event = Event;

    async fn handle(
        &self,
        tx: &mut PgConnection,
        incoming: &IncomingEvent<Event>,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let (order_id, input, reserved) = match &incoming.event {
            Event::FundsDeposited(e) => return deposit(tx, e).await,
            Event::StockReserved(e) => (e.order_id, PaymentInput::StockReserved, Some(e)),
            Event::OrderCancelled(e) => (e.order_id, PaymentInput::OrderCancelled, None),
            Event::OrderCreated(_)
            | Event::StockRejected(_)
            | Event::PaymentDone(_)
            | Event::PaymentFailed(_)
            | Event::OrderConfirmed(_)
            | Event::StockReleased(_)
            | Event::PaymentRefunded(_)
            | Event::StockAdjusted(_) => {
                return Err(HandlerError::permanent(
                    "unexpected_event",
                    format!(
                        "payment-svc does not consume {}",
                        incoming.envelope.event_type
                    ),
                ));
            }
        };
        lock_saga(tx, order_id).await?;
        let payment = store::lock_payment(tx, order_id).await?;
        let state = store::state_of(payment.as_ref());
        match (saga::decide(state, input), reserved, payment) {
            (Step::TryCharge, Some(r), _) => charge(tx, out, r).await?,
            (Step::RefuseCancelled, Some(r), _) => {
                fail(tx, out, r, PaymentFailureReason::OrderCancelled).await?
            }
            (Step::Refund, _, Some(p)) => refund(tx, out, &p).await?,
            (Step::Void, _, _) => {
                store::upsert_payment(
                    tx,
                    &PaymentRecord {
                        order_id,
                        payment_id: None,
                        customer_id: "",
                        amount: 0,
                        currency: "",
                        state: PaymentState::Voided,
                        reason: Some("order_cancelled"),
                    },
                )
                .await?
            }
            (step, _, _) => {
                tracing::debug!(%order_id, state = state.as_str(), ?input, ?step, "nothing to do");
            }
        }
        Ok(())
    }
}

async fn charge(tx: &mut PgConnection, out: &mut Emitter, r: &StockReserved) -> sqlx::Result<()> {
    let wallet = store::lock_wallet(tx, &r.customer_id).await?;
    if let Err(reason) = saga::can_charge(wallet.as_ref(), r.total, &r.currency) {
        return fail(tx, out, r, reason).await;
    }
    let payment_id = Uuid::now_v7();
    store::debit(tx, &r.customer_id, r.total).await?;
    store::upsert_payment(
        tx,
        &PaymentRecord {
            order_id: r.order_id,
            payment_id: Some(payment_id),
            customer_id: &r.customer_id,
            amount: r.total,
            currency: &r.currency,
            state: PaymentState::Captured,
            reason: None,
        },
    )
    .await?;
    out.emit(Event::PaymentDone(PaymentDone {
        order_id: r.order_id,
        payment_id,
        customer_id: r.customer_id.clone(),
        amount: r.total,
        currency: r.currency.clone(),
    }));
    Ok(())
}

async fn fail(
    tx: &mut PgConnection,
    out: &mut Emitter,
    r: &StockReserved,
    reason: PaymentFailureReason,
) -> sqlx::Result<()> {
    let reason_text = serde_json::to_value(reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned));
    store::upsert_payment(
        tx,
        &PaymentRecord {
            order_id: r.order_id,
            payment_id: None,
            customer_id: &r.customer_id,
            amount: r.total,
            currency: &r.currency,
            state: PaymentState::Failed,
            reason: reason_text.as_deref(),
        },
    )
    .await?;
    out.emit(Event::PaymentFailed(PaymentFailed {
        order_id: r.order_id,
        customer_id: r.customer_id.clone(),
        amount: r.total,
        reason,
    }));
    Ok(())
}

async fn refund(tx: &mut PgConnection, out: &mut Emitter, p: &PaymentRow) -> sqlx::Result<()> {
    store::credit_refund(tx, &p.customer_id, p.amount).await?;
    store::upsert_payment(
        tx,
        &PaymentRecord {
            order_id: p.order_id,
            payment_id: p.payment_id,
            customer_id: &p.customer_id,
            amount: p.amount,
            currency: &p.currency,
            state: PaymentState::Refunded,
            reason: Some("order_cancelled"),
        },
    )
    .await?;
    out.emit(Event::PaymentRefunded(PaymentRefunded {
        order_id: p.order_id,
        payment_id: p.payment_id.unwrap_or_default(),
        amount: p.amount,
        currency: p.currency.clone(),
    }));
    Ok(())
}

async fn deposit(tx: &mut PgConnection, e: &FundsDeposited) -> Result<(), HandlerError> {
    match store::deposit(tx, &e.customer_id, e.amount, &e.currency).await? {
        Some(balance) => {
            tracing::info!(customer_id = %e.customer_id, amount = e.amount, balance, "funds deposited");
            Ok(())
        }
        None => Err(HandlerError::permanent(
            "currency_mismatch",
            format!("the wallet of {} is not in {}", e.customer_id, e.currency),
        )),
    }
}
