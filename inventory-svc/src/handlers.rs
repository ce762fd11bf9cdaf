//! inventory-svc's consumer: a batch of events (one, at low load) is loaded with one
//! statement per table, decided in order on the staging tables ([`InventoryTables`], the
//! same the property tests run), and what changed is stored with one write per table,
//! sent with the batch's outbox rows in the consumer's transaction.

use events::Event;
use messaging::consumer::Handling;
use messaging::retry::HandlerError;
use messaging::writes::Writes;
use platform::inputs::unexpected_event;
use platform::staged::Staged;
use sqlx::PgConnection;

use crate::saga::{self, InventoryInput};
use crate::staging::InventoryTables;
use crate::{SERVICE, store};

pub(crate) struct InventoryHandler;

impl Staged for InventoryHandler {
    type Event = Event;
    type Input = InventoryInput;
    type Tables = InventoryTables;

    fn input(&self, event: &Event) -> Result<InventoryInput, HandlerError> {
        Ok(InventoryInput::try_from(event).map_err(|t| unexpected_event(SERVICE, t))?)
    }

    fn load(
        &self,
        tx: &mut PgConnection,
        inputs: &[InventoryInput],
    ) -> impl Future<Output = sqlx::Result<InventoryTables>> + Send {
        store::load(tx, inputs)
    }

    fn decide(
        &self,
        tables: &mut InventoryTables,
        input: &InventoryInput,
        h: &mut Handling<'_, Event>,
    ) -> Result<(), HandlerError> {
        let plan = saga::decide(&tables.load(input), input)?;
        for event in tables.apply(plan) {
            h.out.emit(event);
        }
        Ok(())
    }

    fn store(
        &self,
        writes: &mut Writes,
        loaded: &InventoryTables,
        now: &InventoryTables,
    ) -> sqlx::Result<()> {
        store::store(writes, loaded, now)
    }
}
