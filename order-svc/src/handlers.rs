//! order-svc's reactions to the events it consumes, and the one function that applies a
//! saga decision to a locked order (used by the handlers, the cancel route and the
//! deadline sweep alike).

use chrono::{DateTime, Utc};
use events::Event;
use events::catalog::{OrderCancelled, OrderConfirmed};
use messaging::consumer::{Handler, IncomingEvent};
use messaging::outbox::Emitter;
use messaging::retry::HandlerError;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::saga::{self, Decision, OrderEmit, OrderInput, OrderStatus};
use crate::store;

pub struct OrderHandler;

impl Handler for OrderHandler {
    type Event = Event;

    async fn handle(
        &self,
        tx: &mut PgConnection,
        incoming: &IncomingEvent<Event>,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let (order_id, input, reason) = match &incoming.event {
            Event::StockReserved(e) => (e.order_id, OrderInput::StockReserved, None),
            Event::StockRejected(e) => (
                e.order_id,
                OrderInput::StockRejected,
                Some(e.reason.clone()),
            ),
            Event::PaymentDone(e) => (e.order_id, OrderInput::PaymentDone, None),
            Event::PaymentFailed(e) => (e.order_id, OrderInput::PaymentFailed, None),
            Event::StockReleased(e) => (e.order_id, OrderInput::StockReleased, None),
            Event::PaymentRefunded(e) => (e.order_id, OrderInput::PaymentRefunded, None),
            Event::OrderCreated(_)
            | Event::OrderConfirmed(_)
            | Event::OrderCancelled(_)
            | Event::StockAdjusted(_)
            | Event::FundsDeposited(_) => {
                return Err(HandlerError::permanent(
                    "unexpected_event",
                    format!(
                        "order-svc does not consume {}",
                        incoming.envelope.event_type
                    ),
                ));
            }
        };
        let Some((status, created_at)) = store::lock_status(tx, order_id).await? else {
            // Never drop an event about an order we do not know: an operator must look.
            return Err(HandlerError::permanent(
                "unknown_order",
                format!("no order {order_id} in order-svc"),
            ));
        };
        let cause = (
            incoming.envelope.event_type.as_str(),
            incoming.envelope.message_id,
        );
        apply(
            tx,
            out,
            order_id,
            status,
            created_at,
            input,
            Some(cause),
            reason.as_deref(),
        )
        .await?;
        Ok(())
    }
}

/// Applies `input` to the order (whose row the caller has locked and whose status is
/// `status`): records `cause` in the history, moves the order and emits what the saga says.
/// `rejection` is the reason a StockRejected gave.
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    tx: &mut PgConnection,
    out: &mut Emitter,
    order_id: Uuid,
    status: OrderStatus,
    created_at: DateTime<Utc>,
    input: OrderInput,
    cause: Option<(&str, Uuid)>,
    rejection: Option<&str>,
) -> sqlx::Result<Decision> {
    if let Some((event_type, message_id)) = cause {
        store::record_history(tx, order_id, event_type, message_id).await?;
    }
    let decision = saga::decide(status, input);
    if let Decision::Move { to, emit } = decision {
        let reason = match (to, emit) {
            (_, Some(OrderEmit::Cancelled(r))) => Some(r.as_str()),
            (OrderStatus::Rejected, _) => Some(rejection.unwrap_or("insufficient_stock")),
            _ => None,
        };
        store::set_status(tx, order_id, to, reason).await?;
        if let Some(emit) = emit {
            let event = match emit {
                OrderEmit::Confirmed => Event::OrderConfirmed(OrderConfirmed { order_id }),
                OrderEmit::Cancelled(reason) => {
                    Event::OrderCancelled(OrderCancelled { order_id, reason })
                }
            };
            let envelope = out.emit(event);
            let (t, id) = (envelope.event_type.clone(), envelope.message_id);
            store::record_history(tx, order_id, &t, id).await?;
        }
        if matches!(
            to,
            OrderStatus::Confirmed | OrderStatus::Rejected | OrderStatus::Cancelled
        ) && !matches!(status, OrderStatus::Confirmed)
        {
            metrics::counter!("saga_outcomes_total", "status" => to.as_str()).increment(1);
            let elapsed = (Utc::now() - created_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::histogram!("saga_duration_seconds", "status" => to.as_str()).record(elapsed);
        }
    }
    Ok(decision)
}
