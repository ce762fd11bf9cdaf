//! order-svc's consumer: a batch of events (one, at low load) locks and loads its orders
//! with one statement into the staging tables ([`OrderTables`], the same the property
//! tests run), is decided and applied in order on them, and stores the orders that moved
//! and every history row with one write each, sent with the batch's outbox rows in the
//! consumer's transaction.

use events::Event;
use messaging::consumer::Handling;
use messaging::retry::HandlerError;
use messaging::writes::Writes;
use platform::inputs::{Refusal, unexpected_event};
use platform::staged::Staged;
use sqlx::PgConnection;

use crate::saga::{self, OrderInput, OrderWrite};
use crate::staging::OrderTables;
use crate::{SERVICE, store};

pub(crate) struct OrderHandler;

impl Staged for OrderHandler {
    type Event = Event;
    type Input = OrderInput;
    type Tables = OrderTables;

    fn input(&self, event: &Event) -> Result<OrderInput, HandlerError> {
        Ok(OrderInput::try_from(event).map_err(|t| unexpected_event(SERVICE, t))?)
    }

    fn load(
        &self,
        tx: &mut PgConnection,
        inputs: &[OrderInput],
    ) -> impl Future<Output = sqlx::Result<OrderTables>> + Send {
        store::lock_orders(tx, inputs.iter().map(OrderInput::order_id).collect())
    }

    fn decide(
        &self,
        tables: &mut OrderTables,
        input: &OrderInput,
        h: &mut Handling<'_, Event>,
    ) -> Result<(), HandlerError> {
        let order_id = input.order_id();
        // Never drop an event about an order we do not know: `decide` refuses it, and the
        // dead letter waits for an operator.
        let plan = saga::decide(tables.orders.get(&order_id), input).map_err(Refusal::from)?;
        // Events only move orders; an order is inserted by `POST /orders` alone.
        if let Some(OrderWrite::Insert { .. }) = plan.write {
            return Err(HandlerError::permanent(
                "unexpected_insert",
                format!("an event may not create order {order_id}"),
            ));
        }
        let envelope = &h.incoming.envelope;
        let cause = (envelope.event_type.as_str(), envelope.message_id);
        tables.apply(plan, Some(cause), h.out);
        Ok(())
    }

    fn store(
        &self,
        writes: &mut Writes,
        loaded: &OrderTables,
        now: &OrderTables,
    ) -> sqlx::Result<()> {
        store::store_staged(writes, loaded, now)
    }
}
