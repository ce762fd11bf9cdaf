//! order-svc's consumer: a batch of events (one, at low load) locks and loads its orders
//! with one statement, is decided in order on them in memory ([`OrderTables`], the same the
//! property tests run), and stores the orders that moved and every history row with one
//! write each, sent with the batch's outbox rows in the consumer's transaction.

use events::Event;
use messaging::consumer::Handling;
use messaging::retry::HandlerError;
use messaging::writes::Writes;
use platform::inputs::{Refusal, unexpected_event};
use platform::staged::Staged;
use sqlx::PgConnection;

use crate::saga::{self, OrderInput, OrderWrite};
use crate::store::OrderBatch;
use crate::{SERVICE, apply, store};

pub(crate) struct OrderHandler;

impl Staged for OrderHandler {
    type Event = Event;
    type Input = OrderInput;
    type Tables = OrderBatch;

    fn input(&self, event: &Event) -> Result<OrderInput, HandlerError> {
        Ok(OrderInput::try_from(event).map_err(|t| unexpected_event(SERVICE, t))?)
    }

    fn load(
        &self,
        tx: &mut PgConnection,
        inputs: &[OrderInput],
    ) -> impl Future<Output = sqlx::Result<OrderBatch>> + Send {
        store::lock_orders(tx, inputs.iter().map(OrderInput::order_id).collect())
    }

    fn decide(
        &self,
        batch: &mut OrderBatch,
        input: &OrderInput,
        h: &mut Handling<'_, Event>,
    ) -> Result<(), HandlerError> {
        let order_id = input.order_id();
        // Never drop an event about an order we do not know: `decide` refuses it, and the
        // dead letter waits for an operator.
        let plan =
            saga::decide(batch.tables.orders.get(&order_id), input).map_err(Refusal::from)?;
        // Events only move orders; an order is inserted by `POST /orders` alone.
        if let Some(OrderWrite::Insert { .. }) = plan.write {
            return Err(HandlerError::permanent(
                "unexpected_insert",
                format!("an event may not create order {order_id}"),
            ));
        }
        if let Some(outcome) = plan.outcome {
            h.out.after_commit(move || apply::record_outcome(outcome));
        }
        let envelope = &h.incoming.envelope;
        batch
            .history
            .push((order_id, envelope.event_type.clone(), envelope.message_id));
        for event in batch.tables.apply(plan) {
            let emitted = h.out.emit(event);
            batch
                .history
                .push((order_id, emitted.event_type.clone(), emitted.message_id));
        }
        Ok(())
    }

    fn store(
        &self,
        writes: &mut Writes,
        loaded: &OrderBatch,
        now: &OrderBatch,
    ) -> sqlx::Result<()> {
        store::store_batch(writes, loaded, now)
    }
}
