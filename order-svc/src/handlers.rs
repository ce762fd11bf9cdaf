//! order-svc's consumer: every event it consumes is loaded, decided and applied the same
//! way, in the consumer's transaction, and recorded in the order's history.

use events::Event;
use messaging::consumer::{Handler, IncomingEvent};
use messaging::outbox::Emitter;
use messaging::retry::HandlerError;
use platform::inputs::{Refusal, unexpected_event};
use sqlx::PgConnection;

use crate::saga::{self, OrderInput};
use crate::{SERVICE, apply, store};

pub(crate) struct OrderHandler;

impl Handler for OrderHandler {
    type Event = Event;

    async fn handle(
        &self,
        tx: &mut PgConnection,
        incoming: &IncomingEvent<Event>,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let input =
            OrderInput::try_from(&incoming.event).map_err(|t| unexpected_event(SERVICE, t))?;
        let order = store::lock_order(tx, input.order_id()).await?;
        // Never drop an event about an order we do not know: `decide` refuses it, and the
        // dead letter waits for an operator.
        let plan = saga::decide(order.as_ref(), &input).map_err(Refusal::from)?;
        let cause = (
            incoming.envelope.event_type.as_str(),
            incoming.envelope.message_id,
        );
        apply::apply(tx, out, plan, Some(cause)).await?;
        Ok(())
    }
}
