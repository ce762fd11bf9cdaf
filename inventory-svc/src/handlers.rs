//! inventory-svc's reactions: OrderCreated, OrderConfirmed and OrderCancelled drive a
//! reservation through the saga; StockAdjusted changes what is on hand.

use events::Event;
use events::catalog::{OrderCreated, StockAdjusted, StockRejected, StockReleased, StockReserved};
use messaging::consumer::{Handler, IncomingEvent, lock_saga};
use messaging::outbox::Emitter;
use messaging::retry::HandlerError;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::saga::{self, InventoryInput, ReservationState, Step};
use crate::store;

pub struct InventoryHandler;

impl Handler for InventoryHandler {
    type Event = Event;

    async fn handle(
        &self,
        tx: &mut PgConnection,
        incoming: &IncomingEvent<Event>,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let (order_id, input, created) = match &incoming.event {
            Event::StockAdjusted(e) => return adjust_stock(tx, e).await,
            Event::OrderCreated(e) => (e.order_id, InventoryInput::OrderCreated, Some(e)),
            Event::OrderConfirmed(e) => (e.order_id, InventoryInput::OrderConfirmed, None),
            Event::OrderCancelled(e) => (e.order_id, InventoryInput::OrderCancelled, None),
            Event::StockReserved(_)
            | Event::StockRejected(_)
            | Event::PaymentDone(_)
            | Event::PaymentFailed(_)
            | Event::StockReleased(_)
            | Event::PaymentRefunded(_)
            | Event::FundsDeposited(_) => {
                return Err(HandlerError::permanent(
                    "unexpected_event",
                    format!(
                        "inventory-svc does not consume {}",
                        incoming.envelope.event_type
                    ),
                ));
            }
        };
        lock_saga(tx, order_id).await?;
        let (state, held) = store::lock_reservation(tx, order_id).await?;
        match saga::decide(state, input) {
            Step::TryReserve => {
                // `decide` only answers TryReserve to an OrderCreated.
                if let Some(order) = created {
                    try_reserve(tx, out, order).await?;
                }
            }
            Step::Sell => {
                store::move_stock(tx, &held, store::SELL).await?;
                store::upsert_reservation(tx, order_id, ReservationState::Sold, &held).await?;
            }
            Step::ReleaseReserved => {
                release(tx, out, order_id, held, store::RELEASE_RESERVED).await?
            }
            Step::ReturnSold => release(tx, out, order_id, held, store::RETURN_SOLD).await?,
            Step::ReleaseNothing => {
                release(tx, out, order_id, Vec::new(), store::RELEASE_RESERVED).await?
            }
            Step::Ignore => {
                tracing::debug!(%order_id, state = state.as_str(), ?input, "nothing to do");
            }
        }
        Ok(())
    }
}

async fn try_reserve(
    tx: &mut PgConnection,
    out: &mut Emitter,
    order: &OrderCreated,
) -> sqlx::Result<()> {
    let wanted = saga::merge_items(&order.items);
    let skus: Vec<String> = wanted.iter().map(|w| w.sku.clone()).collect();
    let on_hand = store::lock_available(tx, &skus).await?;
    let available = |sku: &str| {
        on_hand
            .iter()
            .find(|(s, _)| s == sku)
            .map_or(0, |(_, n)| *n)
    };
    match saga::plan_reservation(&wanted, available) {
        Ok(()) => {
            store::move_stock(tx, &wanted, store::RESERVE).await?;
            store::upsert_reservation(tx, order.order_id, ReservationState::Reserved, &wanted)
                .await?;
            out.emit(Event::StockReserved(StockReserved {
                order_id: order.order_id,
                customer_id: order.customer_id.clone(),
                items: wanted,
                total: order.total,
                currency: order.currency.clone(),
            }));
        }
        Err(unavailable) => {
            store::upsert_reservation(tx, order.order_id, ReservationState::Rejected, &wanted)
                .await?;
            out.emit(Event::StockRejected(StockRejected {
                order_id: order.order_id,
                reason: "insufficient_stock".to_owned(),
                unavailable,
            }));
        }
    }
    Ok(())
}

async fn release(
    tx: &mut PgConnection,
    out: &mut Emitter,
    order_id: Uuid,
    items: Vec<events::catalog::StockItem>,
    movement: store::Movement,
) -> sqlx::Result<()> {
    store::move_stock(tx, &items, movement).await?;
    store::upsert_reservation(tx, order_id, ReservationState::Released, &items).await?;
    out.emit(Event::StockReleased(StockReleased { order_id, items }));
    Ok(())
}

async fn adjust_stock(tx: &mut PgConnection, e: &StockAdjusted) -> Result<(), HandlerError> {
    match store::adjust(tx, &e.sku, e.delta).await? {
        Some(available) => {
            tracing::info!(sku = %e.sku, delta = e.delta, available, "stock adjusted");
            Ok(())
        }
        None => Err(HandlerError::permanent(
            "negative_stock",
            format!(
                "adjusting {} by {} would make its available stock negative",
                e.sku, e.delta
            ),
        )),
    }
}
