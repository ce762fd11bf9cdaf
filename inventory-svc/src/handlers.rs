//! inventory-svc's consumer: every event it consumes is loaded, decided and applied the
//! same way, in the consumer's transaction.

use events::Event;
use messaging::consumer::{Handler, IncomingEvent};
use messaging::outbox::Emitter;
use messaging::retry::HandlerError;
use platform::inputs::unexpected_event;
use sqlx::PgConnection;

use crate::saga::{self, InventoryInput};
use crate::{SERVICE, apply, store};

pub(crate) struct InventoryHandler;

impl Handler for InventoryHandler {
    type Event = Event;

    async fn handle(
        &self,
        tx: &mut PgConnection,
        incoming: &IncomingEvent<Event>,
        out: &mut Emitter,
    ) -> Result<(), HandlerError> {
        let input =
            InventoryInput::try_from(&incoming.event).map_err(|t| unexpected_event(SERVICE, t))?;
        let state = store::load(tx, &input).await?;
        let plan = saga::decide(&state, &input)?;
        apply::apply(tx, out, plan).await?;
        Ok(())
    }
}
